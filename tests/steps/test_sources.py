"""``source``: every format reads the same rows with the same stable ids."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from datasets import Dataset, DatasetDict

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
