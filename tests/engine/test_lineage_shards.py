"""Decisions as Parquet shards: each step's events and edges are written beside its outputs and
``lineage.duckdb`` reads them through views, so no row goes through the database; older
databases (events and edges as tables) and older artifacts (``events.parquet`` beside the
outputs) are converted without losing a row; a moved build folder still reads."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest

from dataforge.engine.events import EVENT_SCHEMA, decision_shard
from dataforge.engine.runner import build
from dataforge.lineage import open_read


def _connect(out: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(out / "lineage.duckdb"), read_only=True)


def _filter_dir(out: Path) -> Path:
    (folder,) = (out / "artifacts" / "filtered").iterdir()
    return folder


def _dropped(con: duckdb.DuckDBPyConnection, table: str = "events") -> list[tuple]:
    return con.execute(f"SELECT run_id, step, row_id, reason FROM {table} WHERE action = 'dropped'").fetchall()


def test_decisions_are_shards_behind_views(qa):
    ws, recipe = qa
    build(recipe, ws.out, show_progress=False)
    con = _connect(ws.out)
    (run_id,) = con.execute("SELECT run_id FROM runs").fetchone()
    kinds = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables").fetchall())
    assert kinds["events"] == kinds["edges"] == "VIEW"
    assert kinds["runs"] == kinds["steps"] == kinds["artifacts"] == "BASE TABLE"
    assert _dropped(con) == [(run_id, "filtered", "raw:2", "filter:min_length")]
    con.close()
    shard = decision_shard(_filter_dir(ws.out), "events")
    stored = pl.read_parquet(shard)
    assert stored.columns == ["run_id", "step", "fingerprint", *EVENT_SCHEMA]
    assert stored["row_id"].to_list() == ["raw:2"] and stored["fingerprint"][0] == _filter_dir(ws.out).name
    # a second shard of the same artifact (one per batch, for a streaming executor) is read too
    stored.with_columns(pl.lit("raw:9").alias("row_id")).write_parquet(decision_shard(_filter_dir(ws.out), "events", 1))
    con = _connect(ws.out)
    assert sorted(r[2] for r in _dropped(con, "latest_events")) == ["raw:2", "raw:9"]


def _make_legacy(out: Path) -> None:
    """Turn a build folder into what an older dataforge left: events and edges as tables in
    lineage.duckdb, no shards, no schema shard, each artifact's events.parquet beside it."""
    con = duckdb.connect(str(out / "lineage.duckdb"))
    for table in ("events", "edges"):
        con.execute(f"CREATE TABLE old_{table} AS SELECT * FROM {table}")
        con.execute(f"DROP VIEW latest_{table}")
        con.execute(f"DROP VIEW {table}")
        con.execute(f"ALTER TABLE old_{table} RENAME TO {table}")
    # a decision of an artifact deleted since: it must survive the conversion
    con.execute(
        "INSERT INTO events VALUES ('old-run', 'gone', 'ffff', 'x:1', 'dropped', 'filter:min_length', NULL, 1.0, NULL)"
    )
    con.close()
    for shard_dir in (out / "artifacts").glob("*/*/lineage"):
        for shard in shard_dir.glob("events-*.parquet"):
            pl.read_parquet(shard).select(list(EVENT_SCHEMA)).write_parquet(shard_dir.parent / "events.parquet")
        shutil.rmtree(shard_dir)
    shutil.rmtree(out / "artifacts" / ".schema")


def test_older_database_is_converted_without_losing_a_row(qa):
    ws, recipe = qa
    build(recipe, ws.out, show_progress=False)
    with _connect(ws.out) as con:
        first = _dropped(con)
    _make_legacy(ws.out)
    # readers take the old tables as they are
    assert _dropped(open_read(ws.out)) == [*first, ("old-run", "gone", "x:1", "filter:min_length")]
    assert build(recipe, ws.out, show_progress=False).executed == []
    con = _connect(ws.out)
    assert con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'events'").fetchone() == (
        "VIEW",
    )
    # the decision keeps the run that made it; the orphan is kept where its artifact was
    assert sorted(_dropped(con)) == sorted([*first, ("old-run", "gone", "x:1", "filter:min_length")])
    assert [r[2] for r in _dropped(con, "latest_events")] == ["raw:2"]
    assert decision_shard(ws.out / "artifacts" / "gone" / "ffff", "events").exists()
    assert not (ws.out / "artifacts" / "gone" / "ffff" / "meta.json").exists()  # still not a stored artifact


def test_older_artifact_gets_shards_when_the_database_was_lost(qa):
    ws, recipe = qa
    build(recipe, ws.out, show_progress=False)
    _make_legacy(ws.out)
    (ws.out / "lineage.duckdb").unlink()
    assert build(recipe, ws.out, show_progress=False).executed == []
    con = _connect(ws.out)
    (run_id,) = con.execute("SELECT run_id FROM latest_run").fetchone()
    assert _dropped(con, "latest_events") == [(run_id, "filtered", "raw:2", "filter:min_length")]


def test_moved_build_folder_reads_its_decisions(qa, tmp_path):
    ws, recipe = qa
    build(recipe, ws.out, show_progress=False)
    moved = tmp_path / "moved"
    shutil.move(ws.out, moved)
    assert [r[2] for r in _dropped(open_read(moved), "latest_events")] == ["raw:2"]
    with _connect(moved) as con, pytest.raises(duckdb.IOException, match="No files found"):
        con.execute("SELECT count(*) FROM events").fetchall()  # its views still name the old place …
    build(recipe, moved, show_progress=False)
    with _connect(moved) as con:  # … until the next build there rewrites them
        assert [r[2] for r in _dropped(con, "latest_events")] == ["raw:2"]
