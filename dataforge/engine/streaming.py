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
Parquet file (``steps.sources``); other formats, hub datasets and sources of one batch or fewer
are read whole, then stored in shards.

Not streamed yet (they read their inputs whole, as before): the other sources, ``key`` steps,
``global`` steps, and the export.
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


def slices(df: pl.DataFrame, batch_rows: int) -> Iterator[pl.DataFrame]:
    """``df`` in row order, ``batch_rows`` rows at a time (an empty table: itself, once)."""
    if df.height == 0:
        yield df
        return
    for start in range(0, df.height, batch_rows):
        yield df.slice(start, batch_rows)
