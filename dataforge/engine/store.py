"""The artifact store: one directory per executed step, written under a temporary name and
renamed into place, so a crash never leaves a half-written artifact that looks finished.

Layout under the build directory::

    .dataforge.json                         marks the directory as dataforge's
    artifacts/<step>/<fingerprint>/
        <output>.parquet                    one per step output (zstd Parquet)
        events.parquet, edges.parquet       the step's lineage, so it can be re-recorded
        meta.json                           written last: its presence means "complete"
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from dataforge import __version__
from dataforge.engine.events import EDGE_SCHEMA, EVENT_SCHEMA, concat_edges, concat_events
from dataforge.engine.fingerprint import file_sha256
from dataforge.engine.lock import LOCK_NAME
from dataforge.engine.step import StepResult
from dataforge.errors import OutputDirError

MARKER = ".dataforge.json"


@dataclass(frozen=True)
class StoredOutput:
    output: str
    path: Path
    rows: int
    sha256: str


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``final``; when the block ends without error,
    it replaces ``final`` by rename (atomic on one filesystem), else it is removed. Readers see
    the old directory or the complete new one, never a half-written one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():  # a forced or changed rewrite: move the old one aside, then drop it
            trash = final.parent / f".tmp-old-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
        for pattern in ("artifacts/*/.tmp-*", "datasets/.tmp-*"):
            for tmp in self.out.glob(pattern):
                shutil.rmtree(tmp, ignore_errors=True)

    def artifact_dir(self, step: str, fingerprint: str) -> Path:
        return self.root / step / fingerprint

    def has(self, step: str, fingerprint: str) -> bool:
        return (self.artifact_dir(step, fingerprint) / "meta.json").exists()

    def meta(self, step: str, fingerprint: str) -> dict:
        return json.loads((self.artifact_dir(step, fingerprint) / "meta.json").read_text())

    def write(
        self, step: str, fingerprint: str, result: StepResult, extra_meta: dict | None = None
    ) -> list[StoredOutput]:
        """Write every output table plus events and edges; rename into place when all are on disk."""
        final = self.artifact_dir(step, fingerprint)
        with atomic_directory(final) as tmp:
            outputs = []
            for name, df in result.tables.items():
                path = tmp / f"{name}.parquet"
                df.write_parquet(path, compression="zstd", compression_level=1, statistics=True)
                outputs.append(StoredOutput(name, final / path.name, df.height, file_sha256(path)))
            for name, frame in (("events", concat_events(result.events)), ("edges", concat_edges(result.edges))):
                if frame.height:  # an absent file reads as no rows
                    frame.write_parquet(tmp / f"{name}.parquet", compression="zstd", compression_level=1)
            meta = {
                "step": step,
                "fingerprint": fingerprint,
                "outputs": {o.output: {"rows": o.rows, "sha256": o.sha256} for o in outputs},
                "files": file_stamps(tmp, [o.output for o in outputs]),
                **(extra_meta or {}),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        return outputs

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
        for output, sha in outputs.items():
            path = d / f"{output}.parquet"
            expected = (recorded or {}).get(output, sha)
            problems += verify_file(path, meta.get("files", {}).get(path.name), expected, full)
        return meta, problems

    def forget(self, step: str, fingerprint: str) -> None:
        """Mark a damaged artifact as not stored (its ``meta.json`` goes), so it is rebuilt."""
        (self.artifact_dir(step, fingerprint) / "meta.json").unlink(missing_ok=True)

    def stored_outputs(self, step: str, fingerprint: str, meta: dict | None = None) -> list[StoredOutput]:
        """The outputs ``meta.json`` lists (pass ``meta`` when it has been read already)."""
        d = self.artifact_dir(step, fingerprint)
        meta = meta if meta is not None else self.meta(step, fingerprint)
        return [StoredOutput(o, d / f"{o}.parquet", m["rows"], m["sha256"]) for o, m in meta["outputs"].items()]

    def read_table(self, step: str, fingerprint: str, output: str) -> pl.DataFrame:
        return pl.read_parquet(self.artifact_dir(step, fingerprint) / f"{output}.parquet")

    def read_events(self, step: str, fingerprint: str) -> pl.DataFrame:
        path = self.artifact_dir(step, fingerprint) / "events.parquet"
        return pl.read_parquet(path) if path.exists() else pl.DataFrame(schema=EVENT_SCHEMA)

    def read_edges(self, step: str, fingerprint: str) -> pl.DataFrame:
        path = self.artifact_dir(step, fingerprint) / "edges.parquet"
        return pl.read_parquet(path) if path.exists() else pl.DataFrame(schema=EDGE_SCHEMA)


def file_stamp(path: Path) -> dict[str, int]:
    """A file's size and mtime (ns): the cheap check that a stored file was not touched."""
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def stamp_changed(path: Path, stamp: dict[str, int]) -> bool:
    """Whether a file's size or mtime differ from the ``stamp`` taken when it was written."""
    return file_stamp(path) != stamp


def file_stamps(folder: Path, outputs: list[str]) -> dict[str, dict[str, int]]:
    """The stamp of each output's Parquet file, by file name."""
    return {f"{name}.parquet": file_stamp(folder / f"{name}.parquet") for name in outputs}


def verify_file(path: Path, stamp: dict[str, int] | None, sha256: str, full: bool = False) -> list[str]:
    """[] if ``path`` is the file that was stored, else one sentence saying what differs. The
    sha256 is read only when the size or mtime differ from ``stamp`` (or there is none), or
    with ``full``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return [f"{path} is missing"]
    if stamp is not None and st.st_size != stamp["bytes"]:
        return [f"{path} changed size ({stamp['bytes']:,} → {st.st_size:,} bytes)"]
    if full or stamp is None or stamp_changed(path, stamp):
        if file_sha256(path) != sha256:
            return [f"{path} changed (sha256 differs from the one recorded)"]
    return []
