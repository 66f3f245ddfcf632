"""The artifact store: one directory per executed step, written under a temporary name and
renamed into place, so a crash never leaves a half-written artifact that looks finished.

Layout under the build directory::

    .dataforge.json                         marks the directory as dataforge's
    .tmp/<step>/                            artifacts being written (outside the shard glob)
    artifacts/<step>/<fingerprint>/
        <output>/part-00000.parquet …       each step output: Parquet shards (zstd), in row
                                            order, one or more per batch the step ran on
        lineage/events-00000.parquet …      the step's decisions: shards of the contract
        lineage/edges-00000.parquet …       tables, read by lineage.duckdb's views
        meta.json                           written last: its presence means "complete"

An output's sha256 is that of its shards' sha256s in order. Artifacts written before outputs
became shard folders hold ``<output>.parquet`` (its sha256 the file's) and, before decisions
became shards, ``events.parquet`` and ``edges.parquet``: both are still read
(``upgrade_decisions`` turns the old decisions into shards).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from dataforge import __version__
from dataforge.engine.events import (
    DECISION_SCHEMAS,
    DECISIONS_DIR,
    concat_edges,
    concat_events,
    decision_shard,
    has_decisions,
    keyed,
    reason_counts,
    write_decisions,
    write_shard,
)
from dataforge.engine.fingerprint import file_sha256, hash_text
from dataforge.engine.lock import LOCK_NAME
from dataforge.engine.step import StepResult
from dataforge.errors import OutputDirError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(value: str | Path) -> bool:
    """Whether ``value`` is a URI (``scheme://…``) rather than a folder path."""
    return bool(_URI.match(str(value)))


def finished_marker(step: str, fingerprint: str) -> str:
    """The file whose presence means a step's artifact is complete, relative to the build folder
    (``artifacts/<step>/<fingerprint>/meta.json``; what ``Store.has`` checks, and ``dataforge
    plan`` looks for in a published build's manifest)."""
    return f"artifacts/{step}/{fingerprint}/meta.json"


def local_folder(value: str | Path, what: str = "the build folder") -> Path:
    """``value`` as a folder path, refusing an object-store or other URI (``s3://…``, ``gs://…``,
    ``file://…``), which would otherwise become a local folder named ``s3:``: builds, reports and
    lineage are written to a path (on a Ray cluster, one every node mounts). ``what``: what the
    folder is, for the error."""
    text = str(value)
    if is_uri(text):
        raise OutputDirError(
            f"{text}: a URI is not supported as {what} here; give a folder path (on a Ray cluster, one every "
            "node mounts). `dataforge build`, `query`, `why`, `plan`, `export` and `report` take an object-store URI "
            "(s3://, gs://) as --out, and `train` as --data."
        )
    return Path(value)


MARKER = ".dataforge.json"
SCRATCH = ".tmp"  # under the build folder: where artifacts are written before their rename
STEP_SCRATCH = "scratch"  # under the build folder: each step's (and the export's) files for its jobs


def step_scratch(out: Path, name: str) -> Path:
    """The scratch folder of step ``name`` (or ``export``) of the build in ``out``
    (``Context.scratch_dir``), where it stages files for its jobs."""
    return out / STEP_SCRATCH / name


@dataclass(frozen=True)
class StoredOutput:
    output: str
    path: Path
    rows: int
    sha256: str


@contextmanager
def atomic_directory(final: Path, scratch: Path | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory in ``scratch`` (default: beside ``final``, on the same
    filesystem either way); when the block ends without error, it replaces ``final`` by rename
    (atomic on one filesystem), else it is removed. Readers see the old directory or the
    complete new one, never a half-written one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = scratch if scratch is not None else final.parent
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = scratch / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():  # a forced or changed rewrite: move the old one aside, then drop it
            trash = scratch / f".tmp-old-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if scratch != final.parent:
            with suppress(OSError):  # an emptied scratch folder goes; one still in use stays
                scratch.rmdir()


class Store:
    """Reads and writes step artifacts under ``<out>/artifacts``."""

    def __init__(self, out: Path):
        self.out = out
        self.root = out / "artifacts"

    @classmethod
    def open(cls, out: Path, create: bool = True) -> Store:
        """Open a build directory; refuse one that exists, is not empty and is not dataforge's.
        A build calls it only while it holds the folder's ``BuildLock``: it removes stale
        temporary folders, which are then nobody's."""
        out = Path(out)
        marker = out / MARKER
        cls.check(out)
        if not out.exists() and not create:
            raise OutputDirError(f"no build found at {out} (run `dataforge build` first or pass --out)")
        if create and not marker.exists():
            out.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"dataforge": __version__}) + "\n")
        store = cls(out)
        if create:
            store._remove_stale_temps()
        return store

    @staticmethod
    def check(out: Path) -> None:
        """Refuse an output path that is a file, or a non-empty folder dataforge did not make
        (touches nothing)."""
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise OutputDirError(f"output path {out} exists and is not a directory")
        if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()) and not (out / MARKER).exists():
            raise OutputDirError(
                f"output directory {out} is not empty and was not made by dataforge (no {MARKER}); "
                "choose another --out or empty it"
            )

    def _remove_stale_temps(self) -> None:
        for pattern in (f"{SCRATCH}/*/.tmp-*", "artifacts/*/.tmp-*", "datasets/.tmp-*"):
            for tmp in self.out.glob(pattern):
                shutil.rmtree(tmp, ignore_errors=True)

    def artifact_dir(self, step: str, fingerprint: str) -> Path:
        return self.root / step / fingerprint

    def has(self, step: str, fingerprint: str) -> bool:
        return (self.out / finished_marker(step, fingerprint)).exists()

    def meta(self, step: str, fingerprint: str) -> dict:
        return json.loads((self.artifact_dir(step, fingerprint) / "meta.json").read_text())

    @contextmanager
    def writer(self, step: str, fingerprint: str, run_id: str) -> Iterator[ArtifactWriter]:
        """An ``ArtifactWriter`` over a temporary folder; when the block ends after its
        ``finish``, the folder is renamed into place; on an error it is removed."""
        final = self.artifact_dir(step, fingerprint)
        with atomic_directory(final, self.out / SCRATCH / step) as tmp:
            w = ArtifactWriter(tmp, final, step, fingerprint, run_id)
            yield w
            if not w.finished:
                raise RuntimeError(f"artifact {final} was left without finish()")

    def write(
        self, step: str, fingerprint: str, result: StepResult, run_id: str, extra_meta: dict | None = None
    ) -> list[StoredOutput]:
        """Write a whole result at once: every output table plus the decisions (marked as
        decided by ``run_id``)."""
        with self.writer(step, fingerprint, run_id) as w:
            w.add(result)
            return w.finish(extra_meta)

    def verify(
        self, step: str, fingerprint: str, recorded: dict[str, str] | None = None, full: bool = False
    ) -> tuple[dict | None, list[str]]:
        """(``meta.json``, what is wrong with the stored artifact as sentences naming each file;
        empty: it is as stored). Each output's size and mtime are compared with ``meta.json``;
        where they changed, or with ``full``, its sha256 with ``recorded`` (output → sha256, what
        the lineage recorded) or else ``meta.json``'s. A damaged ``meta.json`` gives None."""
        d = self.artifact_dir(step, fingerprint)
        try:
            meta = self.meta(step, fingerprint)
            outputs = {o: m["sha256"] for o, m in meta["outputs"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return None, [f"{d / 'meta.json'} is damaged ({type(exc).__name__}: {exc})"]
        problems = []
        stamps = meta.get("files", {})
        for output, sha in outputs.items():
            expected = (recorded or {}).get(output, sha)
            problems += verify_output(d, output, stamps, expected, full)
        return meta, problems

    def forget(self, step: str, fingerprint: str) -> None:
        """Mark a damaged artifact as not stored (its ``meta.json`` goes), so it is rebuilt."""
        (self.artifact_dir(step, fingerprint) / "meta.json").unlink(missing_ok=True)

    def stored_outputs(self, step: str, fingerprint: str, meta: dict | None = None) -> list[StoredOutput]:
        """The outputs ``meta.json`` lists (pass ``meta`` when it has been read already)."""
        d = self.artifact_dir(step, fingerprint)
        meta = meta if meta is not None else self.meta(step, fingerprint)
        return [StoredOutput(o, output_path(d, o), m["rows"], m["sha256"]) for o, m in meta["outputs"].items()]

    def output_files(self, step: str, fingerprint: str, output: str) -> list[Path]:
        return output_files(self.artifact_dir(step, fingerprint), output)

    def read_table(self, step: str, fingerprint: str, output: str) -> pl.DataFrame:
        """A stored output, whole."""
        files = self.output_files(step, fingerprint, output)
        if len(files) == 1:
            return pl.read_parquet(files[0])
        return pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")

    def iter_batches(self, step: str, fingerprint: str, output: str, batch_rows: int) -> Iterator[pl.DataFrame]:
        """A stored output in row order, in frames of at most ``batch_rows`` rows (a frame
        never spans two shards), each with the output's column types (``Table.batches``). An
        output of no rows gives one empty frame."""
        from dataforge.engine.table import Table

        table = Table(files=self.output_files(step, fingerprint, output), batch_rows=batch_rows)
        empty = True
        for batch in table.batches():
            empty = False
            yield batch
        if empty:
            yield table.empty()

    def upgrade_decisions(self, step: str, fingerprint: str, run_id: str) -> None:
        """Give an artifact stored before decisions became shards (``events.parquet`` and
        ``edges.parquet`` beside its outputs) its shards, marked as decided by ``run_id``: the
        lineage's views read only shards. Does nothing to an artifact that has them."""
        folder = self.artifact_dir(step, fingerprint)
        if has_decisions(folder):
            return
        for table, schema in DECISION_SCHEMAS.items():
            old = folder / f"{table}.parquet"
            if old.exists():
                frame = pl.read_parquet(old).select(list(schema)).cast(schema)  # type: ignore[arg-type]
                write_shard(keyed(frame, table, run_id, step, fingerprint), decision_shard(folder, table))


def file_stamp(path: Path) -> dict[str, int]:
    """A file's size and mtime (ns): the cheap check that a stored file was not touched."""
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def stamp_changed(path: Path, stamp: dict[str, int]) -> bool:
    """Whether a file's size or mtime differ from the ``stamp`` taken when it was written."""
    return file_stamp(path) != stamp


SHARD_ROWS = 1_000_000  # rows per output shard at most (a batch's output may give several)


def output_path(folder: Path, output: str) -> Path:
    """Where an output lives in an artifact folder: its shard folder (or, in an artifact from
    before shards, its one Parquet file)."""
    shards = folder / output
    return shards if shards.is_dir() or not (folder / f"{output}.parquet").exists() else folder / f"{output}.parquet"


def output_shard(folder: Path, output: str, index: int) -> Path:
    return folder / output / f"part-{index:05d}.parquet"


def output_files(folder: Path, output: str) -> list[Path]:
    """An output's Parquet files in row order (its shards, or its one file)."""
    path = output_path(folder, output)
    return sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]


def files_sha256(files: list[Path]) -> str:
    """The sha256 of data stored as several files: of their sha256s, in the given order."""
    return hash_text("".join(file_sha256(f) for f in files))


def output_sha256(folder: Path, output: str) -> str:
    """An output's sha256: a shard folder's is ``files_sha256`` of its shards; a single file
    from before shards keeps its own."""
    path = output_path(folder, output)
    return files_sha256(output_files(folder, output)) if path.is_dir() else file_sha256(path)


def output_schema(files: list[Path]) -> dict[str, pl.DataType]:
    """The column types of an output stored in ``files``: each column's first type that is not
    Null (a batch whose column held only nulls wrote it as Null)."""
    schema: dict[str, pl.DataType] = {}
    for f in files:
        for name, dtype in pl.read_parquet_schema(f).items():
            if schema.get(name, pl.Null) == pl.Null:
                schema[name] = dtype
    return schema


def with_schema(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    nulls = {c: schema[c] for c, t in df.schema.items() if t == pl.Null and schema.get(c, pl.Null) != pl.Null}
    return df.cast(nulls) if nulls else df  # type: ignore[arg-type]


def verify_files(
    base: Path,
    files: list[Path],
    stamps: dict[str, dict[str, int]] | None,
    sha256: str,
    digest: Callable[[], str],
    full: bool = False,
) -> list[str]:
    """[] if ``files`` are the ones stored, else one sentence saying what differs. ``stamps``
    (file name relative to ``base`` → size and mtime when written) must list exactly these
    files; where a size or mtime differs, or with ``full`` or no stamps, ``digest()`` must give
    ``sha256``."""
    names = {str(f.relative_to(base)) for f in files}
    if stamps is not None and names != set(stamps):
        missing, extra = sorted(set(stamps) - names), sorted(names - set(stamps))
        return [f"{base / missing[0]} is missing" if missing else f"{base / extra[0]} is not one it stored"]
    changed = []
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:
            return [f"{f} is missing"]
        stamp = (stamps or {}).get(str(f.relative_to(base)))
        if stamp is not None and st.st_size != stamp["bytes"]:
            return [f"{f} changed size ({stamp['bytes']:,} → {st.st_size:,} bytes)"]
        if stamp is None or stamp_changed(f, stamp):
            changed.append(f)
    if (full or changed or not files) and digest() != sha256:
        return [f"{changed[0] if changed else base} changed (sha256 differs from the one recorded)"]
    return []


def verify_output(folder: Path, output: str, stamps: dict[str, dict[str, int]], sha256: str, full: bool) -> list[str]:
    """``verify_files`` for one output of an artifact (``stamps``: the artifact's, all outputs)."""
    path = output_path(folder, output)
    if not path.exists():
        return [f"{path} is missing"]
    mine = {n: v for n, v in stamps.items() if n == f"{output}.parquet" or n.startswith(f"{output}/")}
    files = output_files(folder, output)
    return verify_files(folder, files, mine or None, sha256, lambda: output_sha256(folder, output), full)


@dataclass
class WrittenBatch:
    """A batch of a step's result as ``write_batch`` wrote it into ``folder``: rows and shards
    per output, the columns of an output with no rows (a frame of none), the batch's index, and
    its rows dropped and flagged per reason."""

    folder: Path
    index: int
    rows: dict[str, int]
    shards: dict[str, int]
    empty: dict[str, pl.DataFrame]
    drops: dict[str, int]  # rows dropped per reason
    flags: dict[str, int]  # rows flagged per reason


def write_batch(
    folder: Path,
    result: StepResult,
    run_id: str,
    step: str,
    fingerprint: str,
    index: int,
    first: dict[str, int] | None = None,
) -> WrittenBatch:
    """Write one batch of a step's result into ``folder`` as an artifact holds it: each output as
    shards of at most ``SHARD_ROWS`` rows numbered from ``first[output]`` (0), its decisions as
    shard ``index``. The local runner writes into its artifact's folder; a Ray worker into a
    folder of its own, which the runner's ``ArtifactWriter.adopt`` then renames into place."""
    rows, shards, empty = {}, {}, {}
    for name, df in result.tables.items():
        rows[name], shards[name] = df.height, 0
        if df.height == 0:
            empty[name] = df.clear()
        start_at = (first or {}).get(name, 0)
        for start in range(0, df.height, SHARD_ROWS):
            path = output_shard(folder, name, start_at + shards[name])
            path.parent.mkdir(parents=True, exist_ok=True)
            df.slice(start, SHARD_ROWS).write_parquet(path, compression="zstd", compression_level=1, statistics=True)
            shards[name] += 1
    events, edges = concat_events(result.events), concat_edges(result.edges)
    write_decisions(folder, run_id, step, fingerprint, events, edges, index)
    drops, flags = reason_counts(events, "dropped"), reason_counts(events, "flagged")
    return WrittenBatch(folder, index, rows, shards, empty, drops, flags)


class ArtifactWriter:
    """Writes one step artifact into a temporary folder, batch by batch: each ``add`` appends a
    batch's output tables (as shards of at most ``SHARD_ROWS`` rows, in order) and its
    decisions (one events and one edges shard per batch); ``finish`` writes ``meta.json``."""

    def __init__(self, tmp: Path, final: Path, step: str, fingerprint: str, run_id: str):
        self.tmp, self.final, self.step, self.fingerprint, self.run_id = tmp, final, step, fingerprint, run_id
        self.rows: dict[str, int] = {}
        self.shards: dict[str, int] = {}
        self.empty: dict[str, pl.DataFrame] = {}  # the columns of an output that got no row yet
        self.batches = 0
        self.finished = False

    def add(self, result: StepResult) -> WrittenBatch:
        """Write one batch's result (``write_batch``) after the ones before it."""
        written = write_batch(self.tmp, result, self.run_id, self.step, self.fingerprint, self.batches, self.shards)
        return self._count(written)

    def adopt(self, batch: WrittenBatch) -> None:
        """Append a batch a worker wrote (``write_batch`` into ``batch.folder``, decisions shard
        numbered as this writer's next batch) by renaming its files into place, its output shards
        numbered after this writer's; the worker's folder goes."""
        if batch.index != self.batches:
            raise RuntimeError(f"batch {batch.index} of {self.step} came as batch {self.batches}")
        for name, count in batch.shards.items():
            for i in range(count):
                target = output_shard(self.tmp, name, self.shards.get(name, 0) + i)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(output_shard(batch.folder, name, i), target)
        decisions = batch.folder / DECISIONS_DIR
        if decisions.is_dir():
            (self.tmp / DECISIONS_DIR).mkdir(exist_ok=True)
            for shard in decisions.iterdir():
                os.replace(shard, self.tmp / DECISIONS_DIR / shard.name)
        shutil.rmtree(batch.folder, ignore_errors=True)
        self._count(batch)

    def _count(self, batch: WrittenBatch) -> WrittenBatch:
        for name, rows in batch.rows.items():
            self.rows[name] = self.rows.get(name, 0) + rows
            self.shards[name] = self.shards.get(name, 0) + batch.shards[name]
            if name in batch.empty:
                self.empty.setdefault(name, batch.empty[name])
        self.batches += 1
        return batch

    def finish(self, extra_meta: dict | None = None) -> list[StoredOutput]:
        """Write ``meta.json`` (an output that got no row gets one empty shard with its columns);
        returns the outputs as they will be once renamed into place."""
        outputs = []
        stamps: dict[str, dict[str, int]] = {}
        for name, rows in self.rows.items():
            if self.shards[name] == 0:
                path = output_shard(self.tmp, name, 0)
                path.parent.mkdir(parents=True, exist_ok=True)
                self.empty[name].write_parquet(path, compression="zstd", compression_level=1, statistics=True)
            files = output_files(self.tmp, name)
            stamps.update({str(f.relative_to(self.tmp)): file_stamp(f) for f in files})
            outputs.append(StoredOutput(name, self.final / name, rows, output_sha256(self.tmp, name)))
        meta = {
            "step": self.step,
            "fingerprint": self.fingerprint,
            "outputs": {o.output: {"rows": o.rows, "sha256": o.sha256} for o in outputs},
            "files": stamps,
            **(extra_meta or {}),
        }
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        self.finished = True
        return outputs
