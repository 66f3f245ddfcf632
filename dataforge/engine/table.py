"""Tables a ``global`` step reads without holding them whole, and outputs it gives batch by batch.

A step registered with ``out_of_core=True`` reads each input through a ``Table``: the columns it
needs whole (``select``: ids, keys, timestamps), the rows in order a batch at a time
(``batches``: text to hash, rows to filter) and some rows by position (``take``: the text of
candidate pairs). An output may be a ``Streamed``: a recipe for its batches (e.g. the input's
rows filtered by a mask), which the runner writes shard by shard. So such a step holds the
compact columns of its input (and whatever it computes from them), never the whole input or
output.

Behind a ``Table`` is a step output stored as Parquet shards (what the streaming runner gives
a step whose input is larger than a batch) or a polars frame (a small input, or a direct call
in a test). A step function called with frames gets frames back: ``out_of_core_step``
collects its ``Streamed`` outputs, so the step has one code path for both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dataforge.engine.store import output_schema
from dataforge.engine.store import with_schema as _typed

# runs ``fn`` on each job where the executor has workers, the values in job order (Ray tasks,
# ``engine.ray_runner``; ``Context.mapper``): ``fn`` must be picklable and depend only on its job
Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], Iterator[Any]]


@dataclass(frozen=True)
class Part:
    """Rows ``offset`` to ``offset + rows`` of one stored shard: a batch a worker reads itself."""

    path: str
    offset: int
    rows: int

    def read(self, schema: dict[str, pl.DataType], columns: list[str] | None = None) -> pl.DataFrame:
        scan = pl.scan_parquet(self.path)
        frame = (scan if columns is None else scan.select(columns)).slice(self.offset, self.rows).collect()
        return _typed(frame, schema)


DEFAULT_BATCH = 100_000


class Table:
    """A step's input, read in parts: see the module doc. ``batch_rows``: the rows of a batch
    the runner chose (steps may ask for their own in ``batches``)."""

    def __init__(
        self,
        frame: pl.DataFrame | None = None,
        files: Sequence[Path] = (),
        batch_rows: int = DEFAULT_BATCH,
    ):
        self.frame, self.files, self.batch_rows = frame, list(files), batch_rows or DEFAULT_BATCH
        if frame is not None:
            self.schema: dict[str, pl.DataType] = dict(frame.schema)
            self._starts = np.array([0, frame.height], dtype=np.int64)
        else:
            import pyarrow.parquet as pq

            self.schema = output_schema(self.files)
            counts = [pq.ParquetFile(f).metadata.num_rows for f in self.files]
            self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])

    @classmethod
    def of(cls, value: pl.DataFrame | Table) -> Table:
        """``value`` as a Table (a frame is wrapped; a Table is itself)."""
        return value if isinstance(value, Table) else cls(frame=value)

    @property
    def height(self) -> int:
        return int(self._starts[-1])

    def shard_rows(self) -> list[int]:
        """The rows of each stored shard, in order (a frame: one "shard", itself)."""
        return np.diff(self._starts).tolist()

    @property
    def columns(self) -> list[str]:
        return list(self.schema)

    def empty(self) -> pl.DataFrame:
        """No rows, this table's columns and types."""
        return pl.DataFrame(schema=self.schema)

    def _read(self, path: Path, columns: Sequence[str] | None) -> pl.DataFrame:
        df = pl.read_parquet(path, columns=list(columns) if columns is not None else None)
        return _typed(df, self.schema)

    def select(self, columns: Sequence[str]) -> pl.DataFrame:
        """These columns of every row, in row order (the only columns held whole)."""
        if self.frame is not None:
            return self.frame.select(columns)
        parts = [self._read(f, columns) for f in self.files]
        return pl.concat(parts, how="vertical_relaxed") if len(parts) != 1 else parts[0]

    def collect(self) -> pl.DataFrame:
        """The whole table (for a step on a table known to be small)."""
        return self.select(self.columns)

    def batches(self, rows: int | None = None, columns: Sequence[str] | None = None) -> Iterator[pl.DataFrame]:
        """The rows in order, at most ``rows`` (default ``batch_rows``) at a time, each batch with
        ``columns`` (default all). A table of no rows gives no batch."""
        rows = rows or self.batch_rows
        if self.frame is not None:
            frame = self.frame if columns is None else self.frame.select(columns)
            for start in range(0, frame.height, rows):
                yield frame.slice(start, rows)
            return
        import pyarrow.parquet as pq

        for path in self.files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns):
                if batch.num_rows:
                    yield _typed(pl.from_arrow(batch), self.schema)  # type: ignore[arg-type]

    def map_batches(
        self,
        fn: Callable[[pl.DataFrame], Any],
        columns: Sequence[str],
        rows: int | None = None,
        mapper: Mapper | None = None,
    ) -> Iterator[Any]:
        """``fn`` on each batch (``batches(rows, columns)``), the results in row order: the work a
        global step can divide (signatures, hashes). ``mapper`` (``Context.mapper``) runs it
        where the executor has workers, one job per slice of the stored shards
        (``shard_slices``), so ``fn`` must depend only on its batch and be picklable (a
        module-level function, or a ``functools.partial`` of one); batch boundaries may differ
        there, the rows and their order do not. Without a mapper, or on a frame: here, in order."""
        if mapper is None or self.frame is not None:
            return (fn(batch) for batch in self.batches(rows, columns))
        schema = self._schema_of(columns)
        return mapper(
            functools.partial(_on_part, fn, schema, list(columns)), shard_slices(self, rows or self.batch_rows)
        )

    def take(self, index: np.ndarray, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """The rows at positions ``index`` (in that order), with ``columns``; reads only the
        Parquet row groups that hold them, one at a time, so only the rows asked for are held
        together."""
        import pyarrow.parquet as pq

        index = np.asarray(index, dtype=np.int64)
        if self.frame is not None:
            frame = self.frame if columns is None else self.frame.select(columns)
            return frame[index]
        wanted = list(columns) if columns is not None else self.columns
        order = np.argsort(index, kind="stable")
        ranked = index[order]
        shard = np.searchsorted(self._starts, ranked, side="right") - 1
        parts = []
        for s in np.unique(shard):
            local = ranked[shard == s] - self._starts[s]
            pf = pq.ParquetFile(self.files[s])
            sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
            group_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
            group = np.searchsorted(group_starts, local, side="right") - 1
            for g in np.unique(group):
                # Arrow's take copies the rows asked for into buffers of their own: a polars gather
                # of text keeps the whole row group's text buffers alive (its strings are views)
                picked = pf.read_row_group(int(g), columns=wanted).take(local[group == g] - group_starts[g])
                rows = pl.from_arrow(picked)
                assert isinstance(rows, pl.DataFrame)
                parts.append(_typed(rows, self.schema))
        got = pl.concat(parts, how="vertical_relaxed") if parts else pl.DataFrame(schema=self._schema_of(wanted))
        if not len(index) or (index[1:] >= index[:-1]).all():  # asked in order: no copy to put them back
            return got
        back = np.empty(len(index), dtype=np.int64)
        back[order] = np.arange(len(index))
        return got[back]

    def _schema_of(self, columns: Sequence[str]) -> dict[str, pl.DataType]:
        return {c: self.schema[c] for c in columns}

    def where(self, keep: np.ndarray, added: dict[str, pl.Series] | None = None) -> Streamed:
        """The rows where ``keep`` (a bool per row) holds, in order, with ``added`` columns (one
        value per row of the table, taken for the rows kept), as a ``Streamed`` output."""
        added = added or {}
        empty = self.empty().with_columns(pl.Series(n, [], dtype=s.dtype) for n, s in added.items())

        def batches() -> Iterator[pl.DataFrame]:
            start = 0
            for batch in self.batches():
                mask = keep[start : start + batch.height]
                extra = [s.slice(start, batch.height).alias(n) for n, s in added.items()]
                start += batch.height
                if mask.any():
                    yield batch.with_columns(extra).filter(pl.Series(mask))

        return Streamed(batches, empty)


def shard_slices(table: Table, rows: int) -> list[Part]:
    """A table's stored shards as slices of at most ``rows`` rows, in row order (a slice never
    spans two shards; a shard of no rows gives none, as ``Table.batches`` gives no batch)."""
    return [
        Part(str(f), o, min(rows, n - o))
        for f, n in zip(table.files, table.shard_rows(), strict=True)
        for o in range(0, n, rows)
    ]


def _on_part(fn: Callable[[pl.DataFrame], Any], schema: dict[str, pl.DataType], columns: list[str], part: Part) -> Any:
    """``fn`` on the batch ``part`` holds (what ``Table.map_batches`` runs on a worker)."""
    return fn(part.read(schema, columns))


@dataclass
class Streamed:
    """An output given batch by batch: ``batches()`` yields its rows in order (each call starts
    again); ``empty`` has its columns and types (the output when no batch comes)."""

    batches: Callable[[], Iterator[pl.DataFrame]]
    empty: pl.DataFrame

    def collect(self) -> pl.DataFrame:
        parts = [self.empty, *self.batches()]
        return pl.concat(parts, how="vertical_relaxed") if len(parts) > 1 else self.empty


def collected(value: pl.DataFrame | Streamed) -> pl.DataFrame:
    """An output as one frame."""
    return value.collect() if isinstance(value, Streamed) else value


def out_of_core_step(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an out-of-core step function: called with frames (no input a ``Table``), it returns
    frames, its ``Streamed`` outputs collected; called by the runner with Tables, it returns
    them as they are."""

    @functools.wraps(fn)
    def call(inputs: dict[str, Any], cfg: Any, ctx: Any) -> Any:
        result = fn(inputs, cfg, ctx)
        if any(isinstance(v, Table) for v in inputs.values()):
            return result
        result.tables = {name: collected(t) for name, t in result.tables.items()}
        return result

    return call
