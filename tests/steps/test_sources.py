"""``source``: every format reads the same rows with the same stable ids."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from datasets import Dataset, DatasetDict, load_from_disk

from dataforge.engine.runner import build
from dataforge.engine.store import Store

ROWS = [
    {"uid": "a1", "when": "2024-01-02T03:04:05Z", "text": "first row", "n": 1},
    {"uid": "b2", "when": "2024-02-03T00:00:00+02:00", "text": "second row", "n": 2},
    {"uid": "c3", "when": "2024-03-04T12:00:00Z", "text": "third row", "n": 3},
]


def _write(fmt: str, root: Path) -> dict:
    df = pl.DataFrame(ROWS)
    if fmt == "jsonl":
        (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
        return {"path": "d.jsonl"}
    if fmt == "jsonl.gz":
        (root / "d.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))
        return {"path": "d.jsonl.gz"}
    if fmt == "json":
        (root / "d.json").write_text(json.dumps(ROWS))
        return {"path": "d.json"}
    if fmt == "parquet":
        df.write_parquet(root / "d.parquet")
        return {"path": "d.parquet"}
    if fmt == "csv":
        df.write_csv(root / "d.csv")
        return {"path": "d.csv"}
    if fmt == "hf_disk":
        DatasetDict({"train": Dataset.from_list(ROWS)}).save_to_disk(str(root / "hfds"))
        return {"path": "hfds", "split": "train"}
    if fmt == "hub":  # datasets.load_dataset, here on a local file through the json builder
        (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
        return {"hub": "json", "data_files": str(root / "d.jsonl"), "split": "train"}
    raise AssertionError(fmt)


def _run(ws, origin: dict, **extra) -> pl.DataFrame:
    body = {"kind": "source", **origin, "name": "demo", **extra}
    recipe = ws.recipe(yaml.safe_dump({"name": "src", "steps": {"src": body}}))
    build(recipe, ws.out, show_progress=False)
    from dataforge.engine.plan import plan_recipe

    fp = plan_recipe(recipe).steps[0].fingerprint
    return Store(ws.out).read_table("src", fp, "data")


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "json", "parquet", "csv", "hf_disk", "hub"])
def test_every_format_gives_same_rows_and_ids(ws, fmt):
    df = _run(ws, _write(fmt, ws.root), timestamp_column="when", id_column="uid")
    assert df["_id"].to_list() == ["demo:a1", "demo:b2", "demo:c3"]
    assert df["text"].to_list() == ["first row", "second row", "third row"]
    assert df.schema["_ts"] == pl.Datetime("us", "UTC")
    assert df["_ts"].dt.hour().to_list() == [3, 22, 12]  # +02:00 converted to UTC
    assert df.columns[:2] == ["_id", "_ts"]


def _times(ws, values: list, **extra) -> pl.Series:
    (ws.root / "t.jsonl").write_text(
        "".join(json.dumps({"text": f"row {i}", "when": v}) + "\n" for i, v in enumerate(values))
    )
    return _run(ws, {"path": "t.jsonl"}, timestamp_column="when", **extra)["_ts"]


def test_timestamps_are_read_only_where_their_reading_is_certain(ws):
    """Time splits cut on ``_ts``, so a timestamp is never guessed. "01/02/2024" was read as the
    1st of February (day first, inferred from the values) where a US file means the 2nd of
    January; now it is an error naming it, and ``timestamp_format`` says how to read it. ISO 8601
    values are read each alone (with and without an offset or seconds in one column failed), a
    blank one is missing, and a number past the year 2200 (milliseconds read as seconds) is an
    error that names the unit that fits."""
    from datetime import datetime, timezone

    from dataforge.errors import StepError

    def utc(*a: int) -> datetime:
        return datetime(*a, tzinfo=timezone.utc)

    iso = [
        "2024-01-01T10:00:00+02:00",
        "2024-01-01T10:00:00",
        "2024-01-02",
        "2024-01-02 03:04",
        "2024-01-02T03:04:05Z",
        "",
    ]
    assert _times(ws, iso).to_list() == [
        utc(2024, 1, 1, 8),
        utc(2024, 1, 1, 10),
        utc(2024, 1, 2),
        utc(2024, 1, 2, 3, 4),
        utc(2024, 1, 2, 3, 4, 5),
        None,
    ]
    with pytest.raises(
        StepError, match=r"timestamp column 'when', row 1: '01/02/2024' is not an ISO 8601 time; give timestamp_format"
    ):
        _times(ws, ["2024-01-05", "01/02/2024", "13/02/2024"])
    assert _times(ws, ["01/02/2024", "12/31/2023"], timestamp_format="%m/%d/%Y").to_list() == [
        utc(2024, 1, 2),
        utc(2023, 12, 31),
    ]
    with pytest.raises(StepError, match=r"row 1: '13/02/2024' does not read as '%m/%d/%Y'"):
        _times(ws, ["01/02/2024", "13/02/2024"], timestamp_format="%m/%d/%Y")
    assert _times(ws, [1704067200, 1704067200.5, None]).to_list() == [
        utc(2024, 1, 1),
        utc(2024, 1, 1, 0, 0, 0, 500000),
        None,
    ]
    with pytest.raises(
        StepError, match=r"row 0: 1704067200000 read in s is after 2200; if it counts ms, set timestamp_unit: ms"
    ):
        _times(ws, [1704067200000])
    assert _times(ws, [1704067200000], timestamp_unit="ms").to_list() == [utc(2024, 1, 1)]


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "json", "csv"])
@pytest.mark.parametrize("batch_rows", [None, 1])
def test_a_utf8_byte_order_mark_is_no_part_of_the_first_record(ws, fmt, batch_rows):
    """Windows tools start a UTF-8 file with a byte-order mark. A JSONL file that had one failed
    at line 1 ("malformed JSON line", advising on_error: skip, which would have dropped the row);
    read whole or in batches, it now reads as the file without it."""
    origin = _write(fmt, ws.root)
    path = ws.root / origin["path"]
    if fmt == "jsonl.gz":
        path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + gzip.decompress(path.read_bytes())))
    else:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    body = {"kind": "source", **origin, "name": "demo", "timestamp_column": "when", "id_column": "uid"}
    recipe = ws.recipe(yaml.safe_dump({"name": "src", "steps": {"src": body}}))
    build(recipe, ws.out, show_progress=False, batch_rows=batch_rows)
    from dataforge.engine.plan import plan_recipe

    df = Store(ws.out).read_table("src", plan_recipe(recipe).steps[0].fingerprint, "data")
    assert df["_id"].to_list() == ["demo:a1", "demo:b2", "demo:c3"]
    assert df["text"].to_list() == ["first row", "second row", "third row"]


@pytest.mark.parametrize("batch_rows", [None, 2])
def test_a_csv_id_column_is_read_as_written(ws, batch_rows):
    """CSV type inference read the ids "007", "0008", "1e3" as numbers: the _ids were "demo:7.0",
    "demo:8.0", "demo:1000.0" and the user's column held 7.0. The id column is text, as written
    (under its name in the file when it is renamed); the other columns are inferred as before."""
    (ws.root / "ids.csv").write_text("code,q,n\n007,first,1\n0008,second,2\n1e3,third,3\n")
    body = {"kind": "source", "path": "ids.csv", "name": "demo", "rename": {"code": "uid"}, "id_column": "uid"}
    recipe = ws.recipe(yaml.safe_dump({"name": "src", "steps": {"src": body}}))
    build(recipe, ws.out, show_progress=False, batch_rows=batch_rows)
    from dataforge.engine.plan import plan_recipe

    df = Store(ws.out).read_table("src", plan_recipe(recipe).steps[0].fingerprint, "data")
    assert df["_id"].to_list() == ["demo:007", "demo:0008", "demo:1e3"]
    assert df["uid"].to_list() == ["007", "0008", "1e3"] and df.schema["n"] == pl.Int64


def test_ordinal_ids_rename_and_select(ws):
    df = _run(ws, _write("jsonl", ws.root), rename={"text": "body"}, columns=["body", "n"])
    assert df.columns == ["_id", "body", "n"]
    assert df["_id"].to_list() == ["demo:0", "demo:1", "demo:2"]


def test_duplicate_id_column_values_are_an_error(ws):
    (ws.root / "d.jsonl").write_text("".join(json.dumps({**r, "uid": "same"}) + "\n" for r in ROWS))
    from dataforge.errors import StepError

    with pytest.raises(StepError, match="repeats value 'same'"):
        _run(ws, {"path": "d.jsonl"}, id_column="uid")


def test_limit(ws):
    df = _run(ws, _write("parquet", ws.root), limit=2)
    assert df.height == 2


ENC_RECIPE = """
name: enc
steps:
  raw:
    kind: source
    path: FILE
EXTRA
datasets:
  d:
    splits: {train: raw}
"""


def _enc_recipe(root: Path, file: str, extra: str = "") -> Path:
    path = root / f"{file}.yaml"
    path.write_text(ENC_RECIPE.replace("FILE", file).replace("EXTRA", extra))
    return path


def _lines(n: int, bad_at: int | None = None) -> list[bytes]:
    """n JSONL lines; the one at index ``bad_at`` holds a Latin-1 byte (0xe9), not UTF-8."""
    lines = [json.dumps({"text": f"row number {i}"}).encode() for i in range(n)]
    if bad_at is not None:
        lines[bad_at] = b'{"text": "caf\xe9"}'
    return lines


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_a_non_utf8_byte_past_the_peek_is_an_error_naming_file_and_line(tmp_path):
    from dataforge.errors import StepError

    _write_lines(tmp_path / "late.jsonl", _lines(300, bad_at=250))
    with pytest.raises(StepError, match=r"late.jsonl:251: not valid utf-8 \(byte e9 at column 14\)"):
        build(_enc_recipe(tmp_path, "late.jsonl"), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out" / "datasets").exists()  # nothing with U+FFFD was exported


def test_a_non_utf8_byte_near_the_top_is_a_plan_error_naming_file_and_line(tmp_path):
    from dataforge.errors import RecipeError

    _write_lines(tmp_path / "top.jsonl", _lines(5, bad_at=1))
    with pytest.raises(RecipeError, match=r"key 'encoding': .*top.jsonl:2: not valid utf-8"):
        build(_enc_recipe(tmp_path, "top.jsonl"), tmp_path / "out", show_progress=False)
    (tmp_path / "top.csv").write_bytes(b"text\nok\ncaf\xe9\n")
    with pytest.raises(Exception, match=r"top.csv:3: not valid utf-8"):
        build(_enc_recipe(tmp_path, "top.csv"), tmp_path / "out2", show_progress=False)


@pytest.mark.parametrize("file", ["skip.jsonl", "skip.csv"])
def test_on_error_skip_drops_undecodable_rows_with_a_reason(tmp_path, file):
    import duckdb

    if file.endswith(".jsonl"):
        lines = _lines(300, bad_at=250)
    else:
        lines = [b"text"] + [f"row number {i}".encode() for i in range(300)]
        lines[251] = b"caf\xe9"
    _write_lines(tmp_path / file, lines)
    out = tmp_path / "out"
    build(_enc_recipe(tmp_path, file, "    on_error: skip"), out, show_progress=False)
    con = duckdb.connect(str(out / "lineage.duckdb"), read_only=True)
    row_id, reason, detail = con.execute("SELECT row_id, reason, detail_json FROM events").fetchone()
    assert (row_id, reason, json.loads(detail)["line"]) == ("raw:250", "decode_error", 251 if "jsonl" in file else 252)
    ids = pl.read_parquet(next((out / "artifacts" / "raw").glob("*/data/part-00000.parquet")))["_id"].to_list()
    assert len(ids) == 299 and "raw:249" in ids and "raw:251" in ids and "raw:250" not in ids


def test_encoding_reads_other_encodings(tmp_path):
    (tmp_path / "l1.jsonl").write_bytes('{"text": "café crème"}\n'.encode("latin-1"))
    (tmp_path / "l1.csv").write_bytes("text\ncafé crème\n".encode("cp1252"))
    for file, enc in (("l1.jsonl", "latin-1"), ("l1.csv", "cp1252")):
        out = tmp_path / f"out-{file}"
        build(_enc_recipe(tmp_path, file, f"    encoding: {enc}"), out, show_progress=False)
        assert load_from_disk(str(out / "datasets" / "d"))["train"]["text"] == ["café crème"]
    with pytest.raises(Exception, match="unknown encoding 'klingon'"):
        build(_enc_recipe(tmp_path, "l1.jsonl", "    encoding: klingon"), tmp_path / "x", show_progress=False)


def test_seen_ids_find_every_repeat_across_batches_as_a_set_would():
    """The source's id check across batches keeps 128-bit hashes in merged sorted runs: each
    batch's repeats of any earlier batch are found, exactly where a set of the ids finds them."""
    from dataforge.steps.sources import _SeenIds

    rng = np.random.default_rng(5)
    seen, ids, added = _SeenIds(), set(), 0
    for b in range(37):
        batch = list(dict.fromkeys(f"src:{v}" for v in rng.integers(0, 40_000, 700)))
        got = seen.add(pl.Series(batch, dtype=pl.String))
        assert got.tolist() == [i in ids for i in batch], b
        ids.update(batch)
        added += len(batch)
    assert sum(len(r[0]) for r in seen.runs) == added and len(seen.runs) <= 6  # log-many runs
    assert got.sum() > 100  # the last batch repeats many earlier ids: the test has signal


PARQUET_PEAK = """
import sys
import pyarrow as pa
import pyarrow.parquet as pq
from dataforge.steps.sources import _parquet_frames

frames = _parquet_frames(pq.ParquetFile(sys.argv[1]), int(sys.argv[2]))
print(sum(f.height for f in frames), pa.default_memory_pool().max_memory())
"""


@pytest.mark.parametrize("groups", [6, 24])
def test_a_parquet_source_holds_about_two_batches_however_long_the_file(tmp_path, groups):
    """A parquet source read in batches holds the same few of them in Arrow's pool whether the
    file has 6 row groups of 2 MB or 24 (``_parquet_frames`` reads a row group at a time: 6.8 MB
    at its peak for both; ``ParquetFile.iter_batches`` over the whole file held more the longer
    the file was: 11.2 MB for 6 groups, 30.1 MB for 24, pyarrow 26). Each subprocess's pool
    starts at zero."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    text = [rng.bytes(1000).hex() for _ in range(1000 * groups)]  # 2 kB a row, 1,000 rows a group
    pl.DataFrame({"text": text}).write_parquet(tmp_path / "rows.parquet", row_group_size=1000)
    run = subprocess.run(
        [sys.executable, "-c", PARQUET_PEAK, str(tmp_path / "rows.parquet"), "700"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows, peak = map(int, run.stdout.split())
    assert rows == 1000 * groups
    assert peak < 4 * 2_000_000, peak  # four row groups' worth: not the file


@pytest.mark.parametrize(
    "text",
    [
        'a,b,c\n1,"x, y",2.5\n\n2,"multi\nline ""quoted""",\n3,,true\n4,"a\n\nb",1\n5,z,2\n6,w,3\n7,v,4\n\n',
        "a,b\r\n1,x\r\n2,y\r\n3,z\r\n4,w\r\n5,v",  # CRLF, no line break at the end
        '"a\nb",c\n1,2\n3,4\n5,6\n',  # a header field holding a line break
    ],
)
def test_csv_chunks_cut_only_between_records_and_read_as_the_whole_file(tmp_path, text):
    """``_csv_chunks`` (a CSV source read in batches) cuts the file only where a record ends, so
    quoted line breaks, doubled quotes and blank lines (a row of nulls to polars) read as in a
    whole read, in chunks of the header and ``records`` records each."""
    import io

    from dataforge.steps.sources import _csv_chunks

    path = tmp_path / "t.csv"
    path.write_bytes(text.encode())
    schema = pl.scan_csv(path, infer_schema_length=10_000).collect_schema()
    parts = [pl.read_csv(io.BytesIO(c), schema=schema) for c in _csv_chunks(path, 2)]
    whole = pl.read_csv(path, infer_schema_length=10_000)
    assert pl.concat(parts).equals(whole)
    assert [p.height for p in parts] == [2] * (whole.height // 2) + [whole.height % 2] * (whole.height % 2)


def test_planning_a_csv_source_reads_its_header_line_only(ws, monkeypatch):
    """The plan names a CSV source's columns from its first line; it read the whole file into
    memory before (464 MB more for a 960 MB file, bench/driver_memory.py)."""
    import dataforge.steps.sources as sources
    from dataforge.engine.plan import plan_recipe
    from dataforge.errors import RecipeError

    (ws.root / "rows.csv").write_text("question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(100)))
    recipe = ws.recipe(
        """
        name: c
        steps:
          raw: {kind: source, path: rows.csv}
          f: {kind: format, type: prompt_completion, inputs: {data: raw}, prompt: question, completion: nope}
        """
    )

    def whole(path):
        raise AssertionError(f"{path} read whole at plan time")

    monkeypatch.setattr(sources, "_read_bytes", whole)
    with pytest.raises(RecipeError, match=r"nope.*(question|answer)"):  # the columns were named from the header
        plan_recipe(recipe, None, [])


def test_a_field_of_text_and_of_lists_is_read_as_text_and_other_mixes_fail_naming_the_file(tmp_path):
    """An OpenAI conversation whose user turn gives its content as a list of parts and whose
    assistant turn gives text failed to read ("rows do not share a consistent schema"), though
    polars reads the same mix across rows as text; both now read alike, the parts as JSON text,
    which parse.chat reads back."""
    from dataforge.engine.step import Context
    from dataforge.errors import DataError
    from dataforge.steps.parse import ChatConfig, parse_chat
    from dataforge.steps.sources import SourceConfig, source

    parts = [{"type": "text", "text": "Hi"}]
    rows = [
        {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": "Hello"}], "n": 1},
        {"messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}], "n": "two"},
    ]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctx = Context(step="src", fingerprint="0" * 16, base_dir=tmp_path, scratch_dir=tmp_path / "scratch")
    df = source({}, SourceConfig(path="mixed.jsonl"), ctx).tables["data"]
    assert df["messages"][0].to_list()[0] == {"role": "user", "content": json.dumps(parts)}
    assert df["n"].to_list() == ["1", "two"]
    read = parse_chat({"data": df}, ChatConfig(), ctx).tables["data"]
    assert read["messages"][0].to_list()[0] == {"role": "user", "content": "Hi"}

    (tmp_path / "odd.jsonl").write_text(json.dumps({"a": {"b": 1}}) + "\n" + json.dumps({"a": [1]}) + "\n")
    with pytest.raises(DataError, match=r"odd.jsonl: rows do not share a consistent schema"):
        source({}, SourceConfig(path="odd.jsonl"), ctx)
