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
Parquet file, or a plain UTF-8 JSONL file of objects (typed by a schema inferred over the whole
file first; ``steps.sources``); other formats (JSON, CSV, gzipped JSONL), hub datasets, files
with bad lines (their errors are reported by the whole read) and sources of one batch or fewer
are read whole, then stored in shards.

A ``key`` step whose outputs are rows of its input (``keeps_input_rows``: ``dedup.exact``) and
whose input is larger than a batch runs bucket by bucket: rows hash-partitioned by key into
about one bucket per batch in ``<out>/.tmp``, the step on each bucket (all rows of a key meet
there), its decisions stored as each bucket is done, and its output rows written back in input
order a window of positions at a time (each bucket's rows sorted by position, so a window reads
only the row groups it needs).

A ``global`` step registered ``out_of_core`` (``dedup.minhash``, ``split``, ``split.audit``) on an
input larger than a batch reads its inputs through ``engine.table.Table`` (the columns it needs
whole, the rest a batch at a time or for the rows it names) and gives its outputs as
``Streamed`` batches; the export writes each split from its shards a batch at a time
(``export.write_split``).

Not streamed yet (they read their inputs whole, as before): the other sources (JSON, CSV,
gzipped JSONL, hub datasets), other ``key`` steps (pairs, rollouts, feedback: their new rows' order is the whole
call's), the other ``global`` steps (``dedup.semantic``, ``leakage.check``), and the card's
reads of side tables (leakage scores).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

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
    one divided input, or a per-table step (each input divided on its own)."""
    d = ps.stepdef
    if not batch_rows or d.partition != "rows" or d.is_source:
        return False
    return len(divided_inputs(ps)) == 1 or d.inputs is None


POSITION = "_stream_position"  # a row's index in a key step's input, while it is partitioned
BUCKET = "_stream_bucket"
KEY = "_stream_key"  # a row's partition key, kept with it in its bucket


def keyed_streams(ps: PlannedStep, batch_rows: int) -> bool:
    """Whether the runner may run ``ps`` bucket by bucket: a ``key`` step with one divided input
    whose outputs are rows of that input (``keeps_input_rows``), so they can be put back in
    input order; other key steps make rows whose order only a whole call gives."""
    d = ps.stepdef
    return bool(batch_rows) and d.partition == "key" and d.keeps_input_rows and len(divided_inputs(ps)) == 1


def slices(df: pl.DataFrame, batch_rows: int) -> Iterator[pl.DataFrame]:
    """``df`` in row order, ``batch_rows`` rows at a time (an empty table: itself, once)."""
    if df.height == 0:
        yield df
        return
    for start in range(0, df.height, batch_rows):
        yield df.slice(start, batch_rows)
