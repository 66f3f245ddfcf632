"""Batch streaming under the partitioning contract: which steps the runner runs batch by batch,
and the batches.

A ``rows`` step (``f(a ∪ b) = f(a) ∪ f(b)``) runs on its divided inputs in batches of at most
``batch_rows`` rows, read in row order from the stored shards (or sliced from a table already
in memory); its undivided inputs are passed whole to every batch; each batch's outputs and
decisions are appended to the artifact as shards as soon as they are made, so a step's output
is never held whole. A step whose divided inputs all fit in one batch runs as before, on whole
tables kept in memory for the next step (the same result; no shard round trip). Batches follow
row order, so the concatenated output is the one a
whole-table call gives, row for row (tests: byte-identical exports of every shipped recipe
at tiny batches).

A source streams where its function has ``batches`` and can read its format in batches: a
Parquet file, a UTF-8 JSONL file of objects, plain or gzipped (typed by a schema inferred over
the whole file first; a gzipped one is decompressed to a scratch file), a UTF-8 JSON document
(a list of objects, or an object whose one key holds one; rewritten a record a line to a
scratch file, one record held, then read as JSONL), a UTF-8 CSV file (typed as a whole read
types it), a hub dataset or a ``save_to_disk`` folder (memory-mapped Arrow; ``steps.sources``).
Files with bad lines or of another shape (their errors are reported by the whole read) and
sources of one batch or fewer are read whole, then stored in shards.

A ``key`` step with one divided input larger than a batch runs bucket by bucket
(``keyed_streams``) when its outputs are rows of its input (``keeps_input_rows``:
``dedup.exact``) or made group by group (``group_outputs``: the pairs of ``preference.pairs``
— by revision each row its own group —, the groups of ``rollout``, the verdicts of
``ai_feedback``). Rows go to buckets in ``<out>/.tmp``: hashed by key into about one bucket
per batch, or — with group outputs — whole groups in order of each group's first row, about a
batch of rows a bucket (``group_buckets``).
The step runs on each bucket (all rows of a key meet there) and its decisions are stored as each
bucket is done; output rows that are rows of the input are written back in input order a window
of positions at a time, and group outputs bucket after bucket, which is the order a whole call
gives them.

A ``global`` step registered ``out_of_core`` (``dedup.minhash``, ``split``, ``split.audit``,
``dedup.semantic``) on an
input larger than a batch reads its inputs through ``engine.table.Table`` (the columns it needs
whole, the rest a batch at a time or for the rows it names) and gives its outputs as
``Streamed`` batches; the export writes each split from its shards a batch at a time
(``export.write_split``).

``leakage.check`` is a ``rows`` step on its ``train`` input, its eval inputs whole in every batch
(run whole with an LLM judge, whose calls are capped over the step).

Not streamed: the card's reads of side tables (leakage scores), and the eval side of a leakage
check (whole in every batch; its numbers and vectors kept per process from one batch to the next).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dataforge.engine.plan import PlannedStep
from dataforge.errors import DataforgeError

DEFAULT_BATCH_ROWS = 100_000
BATCH_ROWS_ENV = "DATAFORGE_BATCH_ROWS"


def batch_rows_setting(value: int | None = None) -> int:
    """Rows per batch for a build: ``value`` if given, else ``$DATAFORGE_BATCH_ROWS``, else
    ``DEFAULT_BATCH_ROWS``; 0 means whole tables (no streaming)."""
    if value is None:
        raw = os.environ.get(BATCH_ROWS_ENV, "").strip()
        if not raw:
            return DEFAULT_BATCH_ROWS
        try:
            value = int(raw)
        except ValueError:
            raise DataforgeError(f"{BATCH_ROWS_ENV}={raw!r} is not a whole number of rows") from None
    if value < 0:
        raise DataforgeError(f"batch rows must be 0 (whole tables) or more, not {value}")
    return value


def divided_inputs(ps: PlannedStep) -> list[str]:
    """The inputs a step's batches divide (``partitioned``; None: all of them)."""
    chosen = ps.stepdef.partitioned
    return [name for name in ps.inputs if chosen is None or name in chosen]


def streams(ps: PlannedStep, batch_rows: int) -> bool:
    """Whether the runner runs ``ps`` batch by batch: a ``rows`` step that is not a source, with
    one divided input, or a per-table step (each input divided on its own), unless its
    configuration needs every row at once (``whole_when``)."""
    d = ps.stepdef
    if not batch_rows or d.partition != "rows" or d.is_source:
        return False
    if d.whole_when is not None and d.whole_when(ps.cfg):
        return False
    return len(divided_inputs(ps)) == 1 or d.inputs is None


POSITION = "_stream_position"  # a row's index in a key step's input, while it is partitioned
BUCKET = "_stream_bucket"
KEY = "_stream_key"  # a row's partition key, kept with it in its bucket


def keyed_streams(ps: PlannedStep, batch_rows: int) -> bool:
    """Whether the runner may run ``ps`` bucket by bucket: a ``key`` step with one divided input
    whose outputs are rows of that input or made group by group (``group_outputs``). Other key
    steps make rows whose order only a whole call gives."""
    d = ps.stepdef
    if not batch_rows or d.partition != "key" or len(divided_inputs(ps)) != 1:
        return False
    return group_outputs(ps) is not None


def group_outputs(ps: PlannedStep) -> tuple[str, ...] | None:
    """The outputs of key step ``ps`` made group by group, in order of each group's first row
    (its other outputs are rows of its divided input; none for a ``keeps_input_rows`` step), or
    None where its configuration makes rows in another order (it cannot run by bucket)."""
    d = ps.stepdef
    if d.keeps_input_rows:
        return ()
    return d.group_outputs(ps.cfg, ps.outputs) if d.group_outputs is not None else None


def key_hashes(keys: pl.Series) -> pl.DataFrame:
    """Each key as a 128-bit hash: columns ``h0`` and ``h1``, the two halves of the XXH3-128 of
    its UTF-8 text (xxHash's own code, compiled into ``text._kernels``: the ``xxhash`` package's
    values, tested; a value that is not text hashed as its text, a null key as a value of its
    own). Keys are compared by these where holding them would cost too much (source ids, split
    group keys, key-step groups, the audit's prompts), and a key step's bucket is
    ``h0`` modulo the buckets: two different keys share a hash with probability about n² / 2¹²⁹
    (10⁻²⁵ at ten million keys). The hash is the same on every machine and every version of the
    libraries (polars' own ``hash`` promises neither: its value may differ between builds of
    polars and CPU architectures), so the workers of a cluster file a key to the same bucket and
    hashes made on different nodes compare."""
    from dataforge.text.minhash import _arrow_bytes, _kernels

    text = _as_text(keys)
    valid = text.is_not_null().to_numpy().astype(np.uint8)
    n, data, offsets = _arrow_bytes(text.to_arrow())
    halves = np.empty((n, 2), dtype=np.uint64)
    _kernels.key_hashes(data, offsets, valid, n, NULL_KEY_SEED, halves)  # compiled: xxHash's own XXH3-128
    return pl.DataFrame({"h0": halves[:, 0], "h1": halves[:, 1]}, schema={"h0": pl.UInt64, "h1": pl.UInt64})


NULL_KEY_SEED = 0x6E756C6C  # "null": a null key's hash is the empty text's under this seed, not the empty text's


def _as_text(keys: pl.Series) -> pl.Series:
    """The keys as text: text as it is, other values as polars writes them (numbers, dates), nested
    ones (lists, structs) as their JSON (a null one as ``{"k":null}``); other nulls stay null."""
    if keys.dtype == pl.String:
        return keys
    if isinstance(keys.dtype, pl.List | pl.Array | pl.Struct):
        return keys.to_frame("k").select(pl.struct("k").struct.json_encode())["k"]
    return keys.cast(pl.String)


def group_buckets(keys: Iterable[pl.Series], batch_rows: int) -> np.ndarray:
    """Each row's bucket when rows (their keys given a batch at a time, in order) are divided
    into buckets of whole groups taken in order of each group's first row, about ``batch_rows``
    rows a bucket (a bucket starts where the rows before it reach a multiple of ``batch_rows``;
    one group is never divided). Keys are compared by ``key_hashes`` (16 bytes a row held);
    null keys are one group, as in a whole call's ``partition_by``."""
    hashed = [key_hashes(k) for k in keys]
    frame = pl.concat(hashed) if hashed else pl.DataFrame(schema={"h0": pl.UInt64, "h1": pl.UInt64})
    frame = frame.with_row_index("pos")
    groups = frame.group_by("h0", "h1").agg(pl.col("pos").min().alias("first"), pl.len().alias("rows")).sort("first")
    groups = groups.with_columns(((pl.col("rows").cum_sum() - pl.col("rows")) // batch_rows).alias("bucket"))
    placed = frame.join(groups.select("h0", "h1", "bucket"), on=["h0", "h1"], how="left", maintain_order="left")
    return placed["bucket"].to_numpy()


class AppendedFiles:
    """Parquet files in ``folder`` grown part by part, one per number, each part a row group: the
    keyed runner's buckets and windows, one file each however many batches fill them (a file per
    batch and bucket made the number of files grow with the square of the batches: 20,000 small
    files at ten million rows). A part whose types differ from its file's is cast to them; where
    that cannot be (a column all null in the first part, text in a later one), the number's file
    is finished and another begun, and ``take`` reads them together with relaxed types."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.writers: dict[int, Any] = {}
        self.files: dict[int, list[Path]] = {}

    def append(self, number: int, frame: pl.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = frame.to_arrow()
        writer = self.writers.get(number)
        if writer is not None and not table.schema.equals(writer.schema, check_metadata=False):
            try:
                table = table.cast(writer.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                writer.close()
                writer = None
        if writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            files = self.files.setdefault(number, [])
            files.append(self.folder / f"{number:05d}-{len(files)}.parquet")
            writer = self.writers[number] = pq.ParquetWriter(files[-1], table.schema, compression="lz4")
        writer.write_table(table)

    def close(self) -> None:
        """Finish every file (their footers written); they can be read after this."""
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()

    def take(self, number: int) -> pl.DataFrame | None:
        """The rows appended to ``number`` (None where no part went to it), its files then removed."""
        files = self.files.pop(number, [])
        if not files:
            return None
        rows = pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")
        for f in files:
            f.unlink()
        return rows


def slices(df: pl.DataFrame, batch_rows: int) -> Iterator[pl.DataFrame]:
    """``df`` in row order, ``batch_rows`` rows at a time (an empty table: itself, once)."""
    if df.height == 0:
        yield df
        return
    for start in range(0, df.height, batch_rows):
        yield df.slice(start, batch_rows)
