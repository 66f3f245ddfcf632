"""``source``: read rows from JSONL (also .gz), JSON, Parquet, CSV, a local HF dataset directory
(``load_from_disk``) or a hub name (``datasets.load_dataset``), and give each an ``_id``.

Produces: ``_id`` = ``<name>:<id column value, or the row's 0-based ordinal>``, ``_ts`` (UTC)
when ``timestamp_column`` is set, then the source's columns (after ``rename``/``columns``).

Timestamps (what time splits cut on) are read only where their reading is certain: a time
column as it is (naive: UTC); text in ISO 8601 (``2024-01-02``, ``2024-01-02T03:04:05+02:00``;
without an offset: UTC), or in ``timestamp_format`` (strftime, e.g. ``"%m/%d/%Y"``) — any other
text is an error naming a value and its row, never a guess ("01/02/2024" is the 1st of February
to one reader and the 2nd of January to another); numbers as seconds since 1970 or
``timestamp_unit`` (``ms``, ``us``, ``ns``), and a number that would read past the year 2200 is an
error saying which unit fits. A null or blank timestamp is a missing one (``_ts`` null).

Example::

    train_raw:
      kind: source
      path: data/gsm8k/train.jsonl
      name: gsm8k_train          # the _id prefix (default: the step name)
      on_error: fail             # or skip: a malformed line becomes a `dropped` event (parse_error)
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import model_validator

from dataforge.engine.events import events
from dataforge.engine.fingerprint import canonical_json, hash_text, path_fingerprint
from dataforge.engine.step import Columns, Context, PlanInfo, StepConfig, StepResult, step
from dataforge.engine.streaming import key_hashes
from dataforge.errors import DataError, RecipeError, StepError

Format = Literal["auto", "jsonl", "json", "parquet", "csv", "hf_disk"]
PEEK_LINES = 100  # records read at plan time to learn a JSON(L) source's columns


class SourceConfig(StepConfig):
    path: str | None = None
    hub: str | None = None
    hub_config: str | None = None
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    split: str | None = None
    revision: str | None = None
    format: Format = "auto"
    name: str | None = None
    id_column: str | None = None
    timestamp_column: str | None = None
    timestamp_format: str | None = None  # strftime of a text timestamp column; default: ISO 8601 only
    timestamp_unit: Literal["s", "ms", "us", "ns"] = "s"  # of a numeric timestamp column (since 1970)
    rename: dict[str, str] = {}
    columns: list[str] | None = None
    on_error: Literal["fail", "skip"] = "fail"
    encoding: str = "utf-8"
    limit: int | None = None
    allow_empty: bool = False
    license: str | list[str] | None = None  # the Hub licence id(s) of this data, for the cards

    CARD_ONLY = frozenset({"license"})

    @model_validator(mode="after")
    def _one_origin(self) -> SourceConfig:
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"unknown encoding '{self.encoding}'") from None
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of 'path' (a local file or directory) or 'hub' (a dataset name)")
        if self.limit is not None and self.limit < 1:
            raise ValueError("'limit' must be a positive number of rows")
        return self


def _format_of(cfg: SourceConfig, path: Path) -> str:
    if cfg.format != "auto":
        return cfg.format
    if path.is_dir():
        return "hf_disk"
    name = path.name.lower().removesuffix(".gz")
    for ext, fmt in (
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".json", "json"),
        (".parquet", "parquet"),
        (".csv", "csv"),
    ):
        if name.endswith(ext):
            return fmt
    raise RecipeError(
        f"cannot tell the format of {path.name}; set 'format' (jsonl, json, parquet, csv, hf_disk)", key="format"
    )


def _existing(cfg: SourceConfig, info: PlanInfo | Context) -> Path:
    assert cfg.path is not None
    path = info.resolve(cfg.path)
    if not path.exists():
        raise RecipeError(f"file not found: {path}", key="path")
    return path


def _read_bytes(path: Path) -> bytes:
    """A file's bytes (decompressed when it is gzipped), without a UTF-8 byte-order mark at the
    start: Windows tools write one, and it is no part of the first record (JSON refused it)."""
    data = path.read_bytes()
    return (gzip.decompress(data) if path.name.endswith(".gz") else data).removeprefix(codecs.BOM_UTF8)


def _decode(data: bytes, path: Path, encoding: str, hint: str = "") -> str:
    """``data`` as text, strictly: a byte that is not ``encoding`` is an error naming the file,
    line and byte, never a silent ``\ufffd``."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start : exc.end].hex(" ")
        raise DataError(
            f"{path}:{line}: not valid {encoding} (byte {bad} at column {column}); "
            f"set the source's encoding: (e.g. latin-1){hint}"
        ) from None


def _text_lines(data: bytes, path: Path, encoding: str, on_error: str) -> tuple[list[str], list[tuple[int, str]]]:
    """The file's lines as text, and the (line number, error) of lines that do not decode, which
    are left out (as empty lines) with ``on_error: skip`` and an error otherwise."""
    try:
        return _decode(data, path, encoding, " or on_error: skip").splitlines(), []
    except DataError:
        if on_error != "skip":
            raise
    lines, bad = [], []
    for lineno, raw in enumerate(data.splitlines(), start=1):
        try:
            lines.append(raw.decode(encoding))
        except UnicodeDecodeError as exc:
            bad.append(
                (lineno, f"not valid {encoding}: byte {raw[exc.start : exc.end].hex(' ')} at column {exc.start + 1}")
            )
            lines.append("")
    return lines, bad


# -- plan time: columns without reading the data -----------------------------------------------


def _peek_columns(cfg: SourceConfig, info: PlanInfo) -> Columns:
    if cfg.hub is not None:
        return None
    path = _existing(cfg, info)
    fmt = _format_of(cfg, path)
    if fmt == "parquet":
        try:
            return list(pl.read_parquet_schema(path))
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise RecipeError(f"{path}: not a readable Parquet file: {exc}", key="path") from None
    if fmt == "csv":
        with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
            head = f.readline(1 << 16).split(b"\n", 1)[0]  # the header line: not the whole file
        return pl.read_csv(io.BytesIO(head.decode(cfg.encoding, errors="replace").encode()), n_rows=0).columns
    if fmt == "hf_disk":
        return list(_load_hf_disk(cfg, path).column_names)
    if fmt == "json":
        try:
            if _is_utf8(cfg.encoding):  # the first records, read as the batches read them
                with suppress(OSError, EOFError, ValueError):  # else the whole read says what is wrong
                    return _keys(list(islice(_json_document_records(path), PEEK_LINES)))
            records = _json_records(path, cfg.encoding)
        except DataError as exc:
            raise RecipeError(str(exc), key="encoding") from None
        return _keys(records[:PEEK_LINES])
    opener = gzip.open if path.name.endswith(".gz") else open
    records = []
    unread: tuple[int, str] | None = None  # the first line that is no JSON object
    with opener(path, "rb") as fh:  # type: ignore[operator]
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = (raw.removeprefix(codecs.BOM_UTF8) if lineno == 1 else raw).decode(cfg.encoding)
            except UnicodeDecodeError as exc:
                if cfg.on_error == "skip":
                    continue  # a decode_error event when the step runs
                raise RecipeError(
                    f"{path}:{lineno}: not valid {cfg.encoding} (byte {raw[exc.start : exc.end].hex(' ')} at column "
                    f"{exc.start + 1}); set the source's encoding: (e.g. latin-1) or on_error: skip",
                    key="encoding",
                ) from None
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    unread = unread or (lineno, f"malformed JSON line: {exc}")
                    continue  # reported with its line number when the step runs
                if isinstance(obj, dict):
                    records.append(obj)
                else:
                    unread = unread or (lineno, f"a JSON {type(obj).__name__}, not an object")
                if len(records) >= PEEK_LINES:
                    break
    if not records and unread and cfg.on_error != "skip":  # not "no rows": a file of lines that are not objects
        raise RecipeError(f"{path}:{unread[0]}: {unread[1]} (set on_error: skip to drop such lines)", key="path")
    if not records and not cfg.allow_empty:
        skipped = f" once the lines that are no JSON object are skipped (the first: line {unread[0]})" if unread else ""
        raise RecipeError(f"{path} has no rows{skipped} (set allow_empty: true if that is expected)", key="path")
    return _keys(records) if records else None


def _keys(records: list[Any]) -> list[str]:
    keys: dict[str, None] = {}
    for r in records:
        if isinstance(r, dict):
            keys.update(dict.fromkeys(r))
    return list(keys)


def source_columns(cfg: SourceConfig, inputs: dict[str, Columns], info: PlanInfo) -> dict[str, Columns]:
    cols = _peek_columns(cfg, info)
    if cols is None:
        return {"data": None}
    for old in cfg.rename:
        if old not in cols:
            raise RecipeError(
                f"renames column '{old}', which the source does not have (it has: {', '.join(cols)})",
                key=f"rename.{old}",
            )
    renamed = [cfg.rename.get(c, c) for c in cols]  # (all at once, as the read renames them)
    for old, new in cfg.rename.items():
        if renamed.count(new) > 1:
            other = next(c for c in cols if c != old and cfg.rename.get(c, c) == new)
            raise RecipeError(
                f"renames column '{old}' to '{new}', which column '{other}' of the source "
                + ("is renamed to as well" if other in cfg.rename else "already is")
                + f"; give it another name, or rename '{other}' too",
                key=f"rename.{old}",
            )
    cols = renamed
    if cfg.columns is not None:
        for c in cfg.columns:
            if c not in cols:
                raise RecipeError(f"column '{c}' is not in the source (it has: {', '.join(cols)})", key="columns")
        cols = list(cfg.columns)
    for key, c in (("id_column", cfg.id_column), ("timestamp_column", cfg.timestamp_column)):
        if c is not None and c not in cols:
            raise RecipeError(f"column '{c}' is not in the source (it has: {', '.join(cols)})", key=key)
    return {"data": ["_id"] + (["_ts"] if cfg.timestamp_column else []) + [c for c in cols if not c.startswith("_")]}


def source_fingerprint(cfg: SourceConfig, info: PlanInfo) -> str:
    """The source's own content: its file bytes (or hub coordinates) and the _id prefix."""
    name = cfg.name or info.step
    if cfg.path is not None:
        return hash_text(f"{name}:{path_fingerprint(_existing(cfg, info))}")
    coords = {
        "hub": cfg.hub,
        "config": cfg.hub_config,
        "split": cfg.split,
        "revision": cfg.revision,
        "files": cfg.data_files,
    }
    return hash_text(f"{name}:{canonical_json(coords)}")


# -- run time -----------------------------------------------------------------------------------


@step(
    "source",
    version=2,  # 2: a text timestamp is ISO 8601 or in timestamp_format (others were inferred: "01/02/2024" read
    # day first); a number past the year 2200 is an error (timestamp_unit); a blank timestamp is a missing one;
    # a UTF-8 byte-order mark opening a JSON(L) file is read past (it failed line 1); a CSV id column is text as
    # written ("007" was read as 7.0: the _id was "raw:7.0"); a text timestamp column streams (it was read whole)
    inputs=(),
    columns=source_columns,
    data_fingerprint=source_fingerprint,
    partition="rows",
)
def source(inputs: dict[str, pl.DataFrame], cfg: SourceConfig, ctx: Context) -> StepResult:
    """Read a file, directory or hub dataset into rows with stable ``_id``s."""
    name = cfg.name or ctx.step
    dropped: list[pl.DataFrame] = []
    if cfg.hub is not None:
        df, where = _arrow_frame(_hub_dataset(cfg)), f"hub dataset {cfg.hub}"
    else:
        path = _existing(cfg, ctx)
        where = str(path)
        fmt = _format_of(cfg, path)
        if fmt == "jsonl":
            df, bad = _read_jsonl(path, cfg.on_error, cfg.encoding)
            for reason in sorted({b[3] for b in bad}):
                these = [b for b in bad if b[3] == reason]
                ids = pl.Series([f"{name}:{o}" for o, *_ in these], dtype=pl.String)
                details = pl.Series(
                    [json.dumps({"file": str(path), "line": line, "error": err}) for _, line, err, _ in these],
                    dtype=pl.String,
                )
                dropped.append(events(ids, "dropped", reason, detail=details))
        elif fmt == "json":
            df = _frame(_json_records(path, cfg.encoding), where)
            df = df.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_ordinal"))
        elif fmt == "parquet":
            with _reading(path, fmt):
                df = pl.read_parquet(path).with_row_index("_ordinal")
        elif fmt == "csv":
            with _reading(path, fmt):
                df, bad_lines = _read_csv(path, cfg)
            if bad_lines:
                ids = pl.Series([f"{name}:{o}" for o, _, _ in bad_lines], dtype=pl.String)
                details = pl.Series(
                    [json.dumps({"file": str(path), "line": line, "error": err}) for _, line, err in bad_lines],
                    dtype=pl.String,
                )
                dropped.append(events(ids, "dropped", "decode_error", detail=details))
        else:
            df = _arrow_frame(_load_hf_disk(cfg, path))
    if "_ordinal" not in df.columns:
        df = df.with_row_index("_ordinal")
    if cfg.limit is not None:
        df = df.head(cfg.limit)
    if df.is_empty() and not cfg.allow_empty:
        raise StepError(ctx.step, f"{where} has no rows (set allow_empty: true if that is expected)")
    data = _shaped(df, cfg, ctx, name, where)
    if cfg.id_column:
        _check_ids(data, cfg.id_column, ctx.step, where)
    return StepResult({"data": data.drop(ID_VALUE, strict=False)}, events=dropped)


def _shaped(df: pl.DataFrame, cfg: SourceConfig, ctx: Context, name: str, where: str) -> pl.DataFrame:
    """Rows read from a source (with ``_ordinal``, their index in it) as the step's output:
    renamed, the chosen columns, ``_id`` and ``_ts`` first (and, with an ``id_column``, its value
    as ``ID_VALUE`` for ``_check_ids``). Row by row: a batch gives its part of the whole."""
    df = df.rename(cfg.rename) if cfg.rename else df
    user_cols = [c for c in (cfg.columns or df.columns) if c != "_ordinal" and not c.startswith("_")]
    for c in user_cols:
        if c not in df.columns:
            raise StepError(ctx.step, f"{where} has no column '{c}' (it has: {', '.join(df.columns)})")
    id_expr = pl.col(cfg.id_column).cast(pl.String) if cfg.id_column else pl.col("_ordinal").cast(pl.String)
    df = df.with_columns((pl.lit(f"{name}:") + id_expr).alias("_id"))
    lead = ["_id"]
    if cfg.timestamp_column:
        df = df.with_columns(_to_utc(df[cfg.timestamp_column], df["_ordinal"], cfg, ctx.step).alias("_ts"))
        lead.append("_ts")
    checked = [pl.col(cfg.id_column).alias(ID_VALUE)] if cfg.id_column else []
    return df.select(*lead, *user_cols, *checked)


ID_VALUE = "_id_value"  # an id column's own value, kept until the ids are checked


def _source_batches(cfg: SourceConfig, ctx: Context, batch_rows: int) -> Iterator[StepResult] | None:
    """The source read ``batch_rows`` rows at a time, each batch shaped as the whole table
    would be (ordinals go on across batches; ``limit`` ends the reading), or None where it is
    read whole: a source of one batch or fewer, a JSON document that is not a list of objects (or
    an object whose one key holds one) or is malformed, a JSON, JSONL or CSV file
    with a byte that is not UTF-8 or a line that is not a JSON object (the whole read reports its
    bad lines). A timestamp column of text streams too: each value is read alone (``_to_utc``), so
    a batch reads it as the whole read does. A JSON document (or a gzipped JSONL file) is
    first rewritten one record a line to a scratch file, streaming. Ids are checked over every
    batch: a repeat across batches fails the step as in a whole read."""
    import pyarrow.parquet as pq

    if cfg.hub is not None:
        return _dataset_batches(_hub_dataset(cfg), cfg, ctx, batch_rows, f"hub dataset {cfg.hub}")
    assert cfg.path is not None
    path = _existing(cfg, ctx)
    fmt = _format_of(cfg, path)
    if fmt == "jsonl":
        return _jsonl_batches(path, cfg, ctx, batch_rows)
    if fmt == "json":
        return _json_batches(path, cfg, ctx, batch_rows)
    if fmt == "hf_disk":
        return _dataset_batches(_load_hf_disk(cfg, path), cfg, ctx, batch_rows, str(path))
    if fmt == "csv":
        return _csv_batches(path, cfg, ctx, batch_rows)
    if fmt != "parquet":
        return None
    with _reading(path, fmt):
        pf = pq.ParquetFile(path)
    total = pf.metadata.num_rows if cfg.limit is None else min(pf.metadata.num_rows, cfg.limit)
    if total <= batch_rows:
        return None
    return _shaped_batches(_guarded(_parquet_frames(pf, batch_rows), path, fmt), cfg, ctx, total, str(path))


def first_rows(cfg: SourceConfig, ctx: Context, rows: int) -> pl.DataFrame:
    """The source's first ``rows`` rows as the step reads them, without reading a large file whole:
    a JSONL, CSV or JSON file's first records are read as a file of their own (``_write_head``; an
    error names the file and line as in the whole read; their column types are inferred over
    those records), a hub dataset's streamed (``datasets.load_dataset(streaming=True)``: nothing
    is downloaded whole), others a batch at a time where the source streams."""
    if cfg.hub is not None:
        from datasets import IterableDatasetDict, load_dataset

        where = f"hub dataset {cfg.hub}"
        ds = load_dataset(
            cfg.hub, cfg.hub_config, split=cfg.split, revision=cfg.revision, data_files=cfg.data_files, streaming=True
        )
        if isinstance(ds, IterableDatasetDict):
            raise DataError(f"{where} has splits {', '.join(ds)}: name one with 'split'")
        df = _frame(list(islice(ds, rows)), where).with_row_index("_ordinal")
        return _shaped(df, cfg, ctx, cfg.name or ctx.step, where)
    path = _existing(cfg, ctx) if cfg.path is not None else None
    fmt = _format_of(cfg, path) if path is not None else None
    if path is not None and fmt in ("jsonl", "json", "csv") and (fmt == "jsonl" or _is_utf8(cfg.encoding)):
        head = _scratch_file(ctx, "first-rows", "csv" if fmt == "csv" else "jsonl")
        try:
            if _write_head(path, fmt, head, rows):
                read = {"path": str(head), "format": "csv" if fmt == "csv" else "jsonl"}
                return source({}, cfg.model_copy(update=read), ctx).tables["data"]
        except DataError as exc:
            raise DataError(str(exc).replace(str(head), str(path))) from None
        finally:
            head.unlink(missing_ok=True)
    cfg = cfg.model_copy(update={"limit": rows + 1 if cfg.limit is None else min(rows + 1, cfg.limit)})
    batches = _source_batches(cfg, ctx, rows)
    if batches is None:
        return source({}, cfg, ctx).tables["data"].head(rows)
    try:
        return next(iter(batches)).tables["data"].head(rows)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _write_head(path: Path, fmt: str, head: Path, rows: int) -> bool:
    """The first ``rows`` records of file ``path`` written to ``head`` as a file of their own: a
    JSONL file's first lines, a CSV file's header and first records (``_csv_chunks``), a JSON
    document's first records one a line (``_json_document_records``: read up to them). False
    where the file is no JSON document of records or no UTF-8 (a whole read says what is wrong)."""
    if fmt == "csv" and not path.name.endswith(".gz"):
        head.write_bytes(next(_csv_chunks(path, rows), b""))
        return True
    if fmt == "json":
        try:
            records = list(islice(_json_document_records(path), rows))
        except (OSError, EOFError, ValueError):  # not of that shape, not JSON, not UTF-8
            return False
        head.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        return True
    if fmt == "jsonl":
        with gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb") as f, head.open("wb") as out:
            for line in islice((line for line in f if line.strip()), rows):
                out.write(line if line.endswith(b"\n") else line + b"\n")
        return True
    return False


@contextmanager
def _reading(path: Path, fmt: str) -> Iterator[None]:
    """Turn a reader's failure on ``path`` (a corrupt Parquet page, a CSV field that does not
    parse) into an error naming the file, with the reader's first line of explanation (it was a
    polars or Arrow error naming neither)."""
    import pyarrow as pa

    try:
        yield
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError, EOFError) as exc:
        said = " ".join(str(exc).split("\n\n", 1)[0].split())
        raise DataError(f"{path}: cannot be read as {fmt.upper()}: {said}") from None


def _guarded(frames: Iterator[pl.DataFrame], path: Path, fmt: str) -> Iterator[pl.DataFrame]:
    """``frames`` read from ``path``, a reader's failure named as ``_reading`` names it."""
    with _reading(path, fmt):
        yield from frames


def _parquet_frames(pf: Any, batch_rows: int) -> Iterator[pl.DataFrame]:
    """The rows of a ``pyarrow.parquet.ParquetFile`` in frames of ``batch_rows`` (the last one
    shorter), read a row group at a time. ``ParquetFile.iter_batches`` over the whole file held
    more of it the longer the file was (pyarrow 26, row groups of 30 MB: Arrow's pool peaked at
    184 MB over 8 of them and 305 MB over 15); over one row group at a time at 80 MB for both
    (tests/steps/test_sources.py)."""
    pending: list[pl.DataFrame] = []
    have = 0
    for group in range(pf.num_row_groups):
        for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group]):
            pending.append(pl.from_arrow(batch))  # type: ignore[arg-type]
            have += batch.num_rows
            while have >= batch_rows:
                joined = pl.concat(pending, rechunk=False)
                yield joined.head(batch_rows).rechunk()
                rest = joined.slice(batch_rows)
                pending, have = ([rest] if rest.height else []), rest.height
    if have:
        yield pl.concat(pending).rechunk()


def _csv_batches(path: Path, cfg: SourceConfig, ctx: Context, batch_rows: int) -> Iterator[StepResult] | None:
    """A UTF-8 CSV file ``batch_rows`` rows at a time, typed as a whole read types it (the same
    inference, over its first 10,000 rows); None (read whole) where a byte is not UTF-8 (the
    whole read reports the line) or the file is one batch or fewer. A pass to check the bytes and
    one to count the rows come before the first batch."""
    if not _is_utf8(cfg.encoding) or _utf8_records(path) is None:
        return None
    with _reading(path, "csv"):
        scan = pl.scan_csv(path, infer_schema_length=10_000, schema_overrides=_csv_as_written(cfg))
        rows = int(scan.select(pl.len()).collect().item())
        total = rows if cfg.limit is None else min(rows, cfg.limit)
        if total <= batch_rows:
            return None
        schema = scan.collect_schema()
    frames = (pl.read_csv(io.BytesIO(chunk), schema=schema) for chunk in _csv_chunks(path, batch_rows))
    return _shaped_batches(_guarded(frames, path, "csv"), cfg, ctx, total, str(path))


def _csv_chunks(path: Path, records: int) -> Iterator[bytes]:
    """A CSV file (comma-separated, ``"`` quoting) as CSV texts of its header and ``records``
    records each, read a line at a time: a line ends a record where the quotes seen so far pair
    up (a quoted field may hold line breaks; ``""`` inside one is a quote). Over ``scan_csv``,
    ``LazyFrame.collect_batches`` held more of the file the longer it was (polars 2.1, 400-row
    batches of 80 kB rows: 772 MB for a 240 MB file, 1,134 MB for 480 MB, anonymous memory);
    this holds one chunk (the build peaked at 402 and 412 MB while reading the two files)."""
    with path.open("rb") as f:
        header, quoted = b"", False
        for raw in f:
            header += raw
            quoted ^= raw.count(b'"') % 2 == 1
            if not quoted:
                break
        if not header.endswith(b"\n"):
            header += b"\n"
        chunk: list[bytes] = []
        held = 0
        for raw in f:
            chunk.append(raw)
            quoted ^= raw.count(b'"') % 2 == 1
            if not quoted:  # a blank line too: polars reads it as a row of nulls
                held += 1
                if held == records:
                    yield header + b"".join(chunk)
                    chunk, held = [], 0
        if chunk:  # (a record whose quote never closes too: the reader says so, as a whole read does)
            yield header + b"".join(chunk)


def _utf8_records(path: Path) -> int | None:
    """The number of non-blank lines of a file read line by line (one line held), or None where a
    byte is not UTF-8 (the whole read reports where)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    records = 0
    try:
        with path.open("rb") as f:
            for raw in f:
                decoder.decode(raw)
                records += bool(raw.strip())
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return None
    return records


def _dataset_batches(
    ds: Any, cfg: SourceConfig, ctx: Context, batch_rows: int, where: str
) -> Iterator[StepResult] | None:
    """A ``datasets.Dataset`` (hub or ``save_to_disk``: memory-mapped Arrow) ``batch_rows`` rows
    at a time, each as its slice of the whole read; None (read whole) where it is one batch or
    fewer."""
    total = len(ds) if cfg.limit is None else min(len(ds), cfg.limit)
    if total <= batch_rows:
        return None
    arrow = ds.with_format("arrow")
    frames = (pl.from_arrow(arrow[start : start + batch_rows]) for start in range(0, total, batch_rows))
    return _shaped_batches(frames, cfg, ctx, total, where)  # type: ignore[arg-type]


def _jsonl_batches(path: Path, cfg: SourceConfig, ctx: Context, batch_rows: int) -> Iterator[StepResult] | None:
    """A UTF-8 JSONL file in batches of ``batch_rows`` records (``_plain_jsonl_batches``); a
    gzipped one is first decompressed, streaming, to a file in the step's scratch folder (removed
    when the batches end), so it reads as the whole read reads its decompressed bytes."""
    if not _is_utf8(cfg.encoding):
        return None
    if not path.name.endswith(".gz"):
        return _plain_jsonl_batches(path, path, cfg, ctx, batch_rows)
    plain = _scratch_file(ctx, path.name[:-3], "plain")
    try:
        with gzip.open(path, "rb") as src, plain.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        batches = _plain_jsonl_batches(plain, path, cfg, ctx, batch_rows)
    except (OSError, EOFError):  # not gzip after all, or cut short: the whole read says so
        batches = None
    return _removing(batches, plain)


def _json_batches(path: Path, cfg: SourceConfig, ctx: Context, batch_rows: int) -> Iterator[StepResult] | None:
    """A UTF-8 JSON document (plain or gzipped) in batches of ``batch_rows`` records: its records
    are first rewritten one a line (``_json_lines``: one record held) to a file in the step's
    scratch folder, which is then read as a JSONL file is (``_plain_jsonl_batches``, typed by one
    schema inferred over every record, as the whole read infers it) and removed when the batches
    end. None (read whole) where the document is not a list of objects or an object whose one key
    holds one, or is malformed or not UTF-8 — the whole read reports what is wrong."""
    if not _is_utf8(cfg.encoding):
        return None
    lines = _scratch_file(ctx, path.name, "jsonl")
    try:
        records = _json_lines(path, lines)
    except (OSError, EOFError, ValueError):  # not of that shape, not JSON, not UTF-8
        return _removing(None, lines)
    return _removing(_plain_jsonl_batches(lines, path, cfg, ctx, batch_rows, records), lines)


def _scratch_file(ctx: Context, stem: str, suffix: str) -> Path:
    """A file of this process in the step's scratch folder."""
    ctx.scratch_dir.mkdir(parents=True, exist_ok=True)
    return ctx.scratch_dir / f"{stem}.{os.getpid()}.{suffix}"


def _removing(batches: Iterator[StepResult] | None, scratch: Path) -> Iterator[StepResult] | None:
    """``batches``, the scratch file they read removed when they end (at once where None)."""
    if batches is None:
        scratch.unlink(missing_ok=True)
        return None

    def removing() -> Iterator[StepResult]:
        try:
            yield from batches
        finally:
            scratch.unlink(missing_ok=True)

    return removing()


_BLANK = " \t\n\r"


class _JsonText:
    """A JSON document read a chunk at a time: its next character past whitespace, and its next
    value (``json.JSONDecoder.raw_decode`` over what has been read, reading on where the value
    is cut by the chunk's end)."""

    def __init__(self, src: Any, chunk: int):
        self.src, self.chunk, self.buf, self.pos = src, chunk, "", 0
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        data = self.src.read(self.chunk)
        if not data:
            return False
        self.buf, self.pos = self.buf[self.pos :] + data, 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end), not consumed."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _BLANK:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def take(self, char: str) -> bool:
        """Consume ``char`` if it is the next character past whitespace."""
        if self.peek() != char:
            return False
        self.pos += 1
        return True

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, self.pos = self.decoder.raw_decode(self.buf, self.pos)
                return value
            except json.JSONDecodeError:
                if not self._more():
                    raise


def _json_document_records(path: Path, chunk: int = 1 << 20) -> Iterator[dict[str, Any]]:
    """The records of UTF-8 JSON document ``path`` (plain or gzipped; a list of objects, or an
    object whose one key holds one — what ``_json_records`` accepts), one at a time, reading a
    chunk at a time; ValueError where the document is not of that shape or not JSON (from the
    record where that shows), UnicodeDecodeError where it is not UTF-8."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig") as src:  # type: ignore[operator]  (a BOM is no text)
        text = _JsonText(src, chunk)
        wrapped = text.take("{")
        if wrapped and not (isinstance(text.value(), str) and text.take(":")):
            raise ValueError("not a list of objects")
        if not text.take("["):
            raise ValueError("not a list of objects")
        if not text.take("]"):
            while True:
                record = text.value()
                if not isinstance(record, dict):
                    raise ValueError("not a list of objects")
                yield record
                if text.take("]"):
                    break
                if not text.take(","):
                    raise ValueError("not a list of objects")
        if (wrapped and not text.take("}")) or text.peek() != "":
            raise ValueError("not a list of objects")


def _json_lines(path: Path, out: Path, chunk: int = 1 << 20) -> int:
    """Write the records of JSON document ``path`` to ``out``, one a line
    (``_json_document_records``: one record held); returns how many (its errors as there)."""
    records = 0
    with out.open("w", encoding="utf-8") as dst:
        for record in _json_document_records(path, chunk):
            dst.write(json.dumps(record, ensure_ascii=False) + "\n")
            records += 1
    return records


def _plain_jsonl_batches(
    path: Path, where: Path, cfg: SourceConfig, ctx: Context, batch_rows: int, records: int | None = None
) -> Iterator[StepResult] | None:
    """A plain UTF-8 JSONL file (read from ``path``, named ``where`` in messages) in batches of
    ``batch_rows`` records, typed by one schema inferred over the whole file as a whole read
    infers it; None (read whole) where the file has a line that is not UTF-8 or not a JSON
    object, or is one batch or fewer. Two passes over the file
    before the first batch, each holding one line (one, where ``records`` — the file's record
    count, of a file this module wrote one record a line — is given)."""
    records = records if records is not None else _utf8_records(path)
    if records is None:
        return None
    total = records if cfg.limit is None else min(records, cfg.limit)
    if total <= batch_rows:
        return None
    try:  # every line parsed once, only the schema kept
        schema = pl.scan_ndjson(path, infer_schema_length=None).collect_schema()
    except Exception:
        return None

    def frames() -> Iterator[pl.DataFrame]:
        chunk: list[bytes] = []
        with path.open("rb") as f:
            for raw in f:
                if raw.strip():
                    chunk.append(raw if raw.endswith(b"\n") else raw + b"\n")
                if len(chunk) == batch_rows:
                    yield pl.read_ndjson(io.BytesIO(b"".join(chunk)), schema=schema)
                    chunk = []
        if chunk:
            yield pl.read_ndjson(io.BytesIO(b"".join(chunk)), schema=schema)

    return _shaped_batches(frames(), cfg, ctx, total, str(where))


def _shaped_batches(
    frames: Iterator[pl.DataFrame], cfg: SourceConfig, ctx: Context, total: int, where: str
) -> Iterator[StepResult]:
    """Frames read from a source in order, each shaped as its part of the whole read: ordinals
    go on across frames, ids are checked over all of them. With a ``limit`` reading ends at
    ``total`` rows; without one every frame is read (a row count taken before the read is not
    trusted to end it: a CSV record whose quote never closes was left out of polars' count, and so
    out of the source without a word, where the whole read fails on it)."""
    name = cfg.name or ctx.step
    seen = _SeenIds()
    offset = 0
    for df in frames:
        if cfg.limit is not None:
            df = df.head(total - offset)
        df = df.with_row_index("_ordinal", offset=offset)
        offset += df.height
        data = _shaped(df, cfg, ctx, name, where)
        if cfg.id_column:
            ids = data.select("_id", ID_VALUE)
            _check_ids(ids, cfg.id_column, ctx.step, where)
            again = seen.add(ids["_id"])
            if again.any():
                repeat = ids[ID_VALUE].filter(pl.Series(again))[0]
                raise StepError(ctx.step, f"{where}: id column '{cfg.id_column}' repeats value {repeat!r}")
        yield StepResult({"data": data.drop(ID_VALUE, strict=False)})
        if cfg.limit is not None and offset >= total:
            break


class _SeenIds:
    """The ids of the batches read so far, as their ``key_hashes`` (16 bytes an id, not the ids)
    in sorted runs of about doubling length, merged as a binary counter: a batch is looked up in
    O(log batches) runs. A repeat is two equal 128-bit hashes."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (h0 sorted, h1 in the same order)

    def add(self, ids: pl.Series) -> np.ndarray:
        """Record ``ids`` (distinct among themselves); a mask of those recorded before."""
        hashed = key_hashes(ids)
        h0, h1 = hashed["h0"].to_numpy(), hashed["h1"].to_numpy()
        order = np.argsort(h0, kind="stable")
        run = (h0[order], h1[order])  # looked up sorted: the searches walk each run in order
        found = np.zeros(len(ids), dtype=bool)
        for r0, r1 in self.runs:
            at = np.minimum(np.searchsorted(r0, run[0]), len(r0) - 1)
            for k in np.flatnonzero(r0[at] == run[0]):  # equal first halves: rare unless an id repeats
                end = np.searchsorted(r0, run[0][k], "right")
                found[k] |= bool((r1[at[k] : end] == run[1][k]).any())
        again = np.empty(len(ids), dtype=bool)
        again[order] = found
        while self.runs and len(self.runs[-1][0]) <= len(run[0]):
            run = _merged(self.runs.pop(), run)
        self.runs.append(run)
        return again


def _merged(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two runs sorted by their first array, merged into one (linear: each of ``b`` goes after the
    entries of ``a`` not greater than it)."""
    into = np.searchsorted(a[0], b[0], side="right") + np.arange(len(b[0]))
    rest = np.ones(len(a[0]) + len(b[0]), dtype=bool)
    rest[into] = False
    merged = []
    for x, y in zip(a, b, strict=True):
        out = np.empty(len(rest), dtype=x.dtype)
        out[into], out[rest] = y, x
        merged.append(out)
    return merged[0], merged[1]


source.batches = _source_batches  # type: ignore[attr-defined]


def _read_jsonl(
    path: Path, on_error: str, encoding: str = "utf-8"
) -> tuple[pl.DataFrame, list[tuple[int, int, str, str]]]:
    """Rows with ``_ordinal`` (the record's index among non-blank lines), plus the bad lines
    as (ordinal, line number, error, reason) when ``on_error`` is skip: ``parse_error`` for
    malformed JSON, ``decode_error`` for bytes that are not ``encoding``."""
    data = _read_bytes(path)
    if _is_utf8(encoding):
        try:
            data.decode("utf-8")  # polars would replace bad bytes with U+FFFD without a word
            df = pl.read_ndjson(data, infer_schema_length=None)
            return df.with_row_index("_ordinal"), []
        except Exception:
            pass
    lines, undecodable = _text_lines(data, path, encoding, on_error)
    bad_decode = dict(undecodable)
    records: list[dict[str, Any]] = []
    ordinals: list[int] = []
    bad: list[tuple[int, int, str, str]] = []
    ordinal = 0
    for lineno, line in enumerate(lines, start=1):
        if lineno in bad_decode:
            bad.append((ordinal, lineno, bad_decode[lineno], "decode_error"))
            ordinal += 1
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"a JSONL line must be an object, found {type(obj).__name__}")
        except ValueError as exc:
            if on_error == "fail":
                raise DataError(
                    f"{path}:{lineno}: malformed JSON line: {exc} (set on_error: skip to drop such lines)"
                ) from None
            bad.append((ordinal, lineno, str(exc), "parse_error"))
        else:
            records.append(obj)
            ordinals.append(ordinal)
        ordinal += 1
    df = _frame(records, str(path))
    return df.with_columns(pl.Series("_ordinal", ordinals, dtype=pl.UInt32)), bad


def _csv_as_written(cfg: SourceConfig) -> dict[str, Any]:
    """The CSV columns read as text, never typed by inference: the id column (by its name in the
    file), so "007" is the id 007 (inference read it as the number 7, and the _id as "raw:7")."""
    if not cfg.id_column:
        return {}
    named = {new: old for old, new in cfg.rename.items()}.get(cfg.id_column, cfg.id_column)
    return {named: pl.String}


def _read_csv(path: Path, cfg: SourceConfig) -> tuple[pl.DataFrame, list[tuple[int, int, str]]]:
    """A CSV file decoded strictly (``cfg.encoding``; its id column as written: ``_csv_as_written``).
    With ``on_error: skip`` a line that does not decode becomes a row left out, returned as
    (ordinal, line number, error); the other rows keep their ordinals (one line per row assumed
    for the placeholder: quoted line breaks before a bad line shift it)."""
    data, encoding, text = _read_bytes(path), cfg.encoding, _csv_as_written(cfg)
    if _is_utf8(encoding):
        try:
            data.decode("utf-8")  # polars would replace bad bytes without a word
            return pl.read_csv(data, infer_schema_length=10_000, schema_overrides=text).with_row_index("_ordinal"), []
        except UnicodeDecodeError:
            pass
    lines, bad = _text_lines(data, path, encoding, cfg.on_error)
    if bad:
        width = lines[0].count(",") if lines else 0
        for lineno, _ in bad:
            lines[lineno - 1] = "," * width  # a placeholder row, removed below
    df = pl.read_csv("\n".join(lines).encode(), infer_schema_length=10_000, schema_overrides=text)
    df = df.with_row_index("_ordinal")
    skipped = [(lineno - 2, lineno, err) for lineno, err in bad if lineno > 1]
    if skipped:
        df = df.filter(~pl.col("_ordinal").is_in([o for o, _, _ in skipped]))
    return df, skipped


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name == "utf-8"


def _frame(records: list[dict[str, Any]], where: str) -> pl.DataFrame:
    """Records as one table. A field that holds text in some places and lists, objects or numbers
    in others (an OpenAI conversation whose user turn gives its content as a list of parts, its
    assistant turn as text) is read as text, the others written as JSON (``_as_text_where_mixed``),
    as polars' own reader does across rows; other mixes are an error."""
    try:
        return pl.DataFrame(records, infer_schema_length=None)
    except Exception as exc:
        error = exc
    kinds: dict[tuple[str, ...], set[str]] = {}
    for record in records:
        _kinds(record, (), kinds)
    mixed = {path for path, seen in kinds.items() if "str" in seen and len(seen) > 1}
    if mixed:
        try:
            return pl.DataFrame([_as_text_where_mixed(r, (), mixed) for r in records], infer_schema_length=None)
        except Exception:
            pass
    raise DataError(f"{where}: rows do not share a consistent schema: {error}") from None


def _kinds(value: Any, path: tuple[str, ...], kinds: dict[tuple[str, ...], set[str]]) -> None:
    """The kinds of value (text, object, list, other) found at each path of a record."""
    if value is None:
        return
    kind = {str: "str", dict: "dict", list: "list"}.get(type(value), "scalar")
    kinds.setdefault(path, set()).add(kind)
    if isinstance(value, dict):
        for key, item in value.items():
            _kinds(item, (*path, key), kinds)
    elif isinstance(value, list):
        for item in value:
            _kinds(item, (*path, "[]"), kinds)


def _as_text_where_mixed(value: Any, path: tuple[str, ...], mixed: set[tuple[str, ...]]) -> Any:
    if value is None or isinstance(value, str):
        return value
    if path in mixed:
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return {key: _as_text_where_mixed(item, (*path, key), mixed) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_text_where_mixed(item, (*path, "[]"), mixed) for item in value]
    return value


def _json_records(path: Path, encoding: str = "utf-8") -> list[dict[str, Any]]:
    text = _decode(_read_bytes(path), path, encoding)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{path}: malformed JSON: {exc}") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: a JSON source must hold a list of objects")
    return data


def _load_hf_disk(cfg: SourceConfig, path: Path) -> Any:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise RecipeError(f"{path}: not a dataset saved with save_to_disk ({exc})", key="path") from None
    if isinstance(ds, DatasetDict):
        if cfg.split is None or cfg.split not in ds:
            raise RecipeError(f"{path} holds splits {', '.join(ds)}: name one with 'split'", key="split")
        ds = ds[cfg.split]
    return ds


def _hub_dataset(cfg: SourceConfig) -> Any:
    """The hub dataset (``datasets.load_dataset``; cached after the first read) of one split."""
    from datasets import DatasetDict, load_dataset

    ds = load_dataset(cfg.hub, cfg.hub_config, split=cfg.split, revision=cfg.revision, data_files=cfg.data_files)
    if isinstance(ds, DatasetDict):
        raise DataError(f"hub dataset {cfg.hub} has splits {', '.join(ds)}: name one with 'split'")
    return ds


def _arrow_frame(ds: Any) -> pl.DataFrame:
    table = ds.with_format("arrow")[:]
    return pl.from_arrow(table)  # type: ignore[return-value]


def _check_ids(df: pl.DataFrame, column: str, step_name: str, where: str) -> None:
    """An id column (its values in ``ID_VALUE``) must have no empty value and no repeat."""
    if df[ID_VALUE].null_count():
        raise StepError(step_name, f"{where}: id column '{column}' has empty values")
    if df["_id"].n_unique() != df.height:
        dup = df.filter(pl.col("_id").is_duplicated())[ID_VALUE].head(1).to_list()
        raise StepError(step_name, f"{where}: id column '{column}' repeats value {dup[0]!r}")


# ISO 8601: a date, then optionally a time (fractions of a second too) and a UTC offset
_ISO_TIME = r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?$"
_MICROS = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}
_LAST_YEAR = 2200  # a numeric timestamp read past this is in another unit


def _to_utc(series: pl.Series, ordinals: pl.Series, cfg: SourceConfig, step_name: str) -> pl.Series:
    """A timestamp column as UTC microseconds, read as the module doc says; a StepError names a value
    that has no certain reading and its row."""
    column = cfg.timestamp_column

    def refuse(bad: pl.Series, why: str) -> StepError:
        at = int(bad.arg_true()[0])
        return StepError(step_name, f"timestamp column '{column}', row {ordinals[at]}: {series[at]!r} {why}")

    try:
        if series.dtype == pl.String:
            text = series.str.strip_chars().replace("", None)  # a blank timestamp is a missing one
            if cfg.timestamp_format is None:
                odd = text.is_not_null() & ~text.str.contains(_ISO_TIME)
                if odd.any():
                    raise refuse(odd, "is not an ISO 8601 time; give timestamp_format (e.g. '%m/%d/%Y %H:%M')")
                return _iso_utc(text)
            read = text.str.to_datetime(cfg.timestamp_format, time_unit="us", strict=False)
            if (read.is_null() & text.is_not_null()).any():
                raise refuse(read.is_null() & text.is_not_null(), f"does not read as '{cfg.timestamp_format}'")
            return _as_utc(read)
        if series.dtype.is_numeric():
            micros = series.cast(pl.Float64).fill_nan(None) * _MICROS[cfg.timestamp_unit]
            late = micros > (datetime(_LAST_YEAR, 1, 1, tzinfo=timezone.utc).timestamp() * 1_000_000)
            if late.any():
                fits = next((u for u in ("ms", "us", "ns") if _MICROS[u] < _MICROS[cfg.timestamp_unit]), None)
                hint = f"; if it counts {fits}, set timestamp_unit: {fits}" if fits else ""
                raise refuse(late.fill_null(False), f"read in {cfg.timestamp_unit} is after {_LAST_YEAR}{hint}")
            return micros.round(0).cast(pl.Int64).cast(pl.Datetime("us", "UTC"))
        if isinstance(series.dtype, pl.Datetime):
            return _as_utc(series.dt.cast_time_unit("us"))
    except StepError:
        raise
    except Exception as exc:
        raise StepError(step_name, f"timestamp column '{column}' does not parse as a time: {exc}") from None
    raise StepError(step_name, f"timestamp column '{column}' has type {series.dtype}, not a time, a number or text")


def _iso_utc(text: pl.Series) -> pl.Series:
    """ISO 8601 texts (``_ISO_TIME``) as UTC times, each read alone: with and without an offset in
    one column, and with and without seconds (polars infers one format for the whole column)."""
    full = (
        text.str.replace(r"^(\d{4}-\d{2}-\d{2})$", "${1}T00:00")
        .str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T")
        .str.replace(r"T(\d{2}:\d{2})($|Z|[+-])", "T${1}:00${2}")
        .str.replace(r"Z$", "+00:00")
        .str.replace(r"([+-]\d{2})(\d{2})$", "${1}:${2}")
    )
    full = full.zip_with(full.str.contains(r"[+-]\d{2}:\d{2}$").fill_null(True), full + "+00:00")  # naive: UTC
    return full.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", time_unit="us").dt.convert_time_zone("UTC")


def _as_utc(times: pl.Series) -> pl.Series:
    """Times in UTC: naive ones read as UTC, others converted."""
    zone = times.dtype.time_zone  # type: ignore[union-attr]
    return times.dt.replace_time_zone("UTC") if zone is None else times.dt.convert_time_zone("UTC")
