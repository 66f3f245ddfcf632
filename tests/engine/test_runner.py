"""The runner: caching, partial re-runs, --force, failures that leave nothing half-written,
byte-identical rebuilds, and the lineage rows a build records."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import polars as pl
import pytest
from datasets import load_from_disk

from dataforge.engine.runner import build
from dataforge.engine.step import REGISTRY, Context, StepConfig, StepResult, step
from dataforge.errors import StepError


class ExplodeConfig(StepConfig):
    explode: bool = True


if "test.explode" not in REGISTRY:

    @step("test.explode", version=1, inputs=None, per_table_columns=lambda cfg, cols, info: cols, partition="global")
    def _explode(inputs: dict[str, pl.DataFrame], cfg: ExplodeConfig, ctx: Context) -> StepResult:
        if cfg.explode:
            raise ValueError("boom on purpose")
        return StepResult(dict(inputs))


def _latest_steps(out: Path) -> dict[str, bool]:
    con = duckdb.connect(str(out / "lineage.duckdb"), read_only=True)
    rows = con.execute("SELECT step, cache_hit FROM latest_steps").fetchall()
    con.close()
    return dict(rows)


def test_build_exports_and_records_lineage(qa):
    ws, recipe = qa
    report = build(recipe, ws.out, show_progress=False)
    assert report.executed == ["raw", "clean", "filtered", "parsed", "sft"]
    ds = load_from_disk(str(ws.out / "datasets" / "qa_sft"))
    assert ds["train"].num_rows == 3
    assert set(ds["train"].column_names) == {"_id", "prompt", "completion"}
    con = duckdb.connect(str(ws.out / "lineage.duckdb"), read_only=True)
    assert con.execute("SELECT status FROM runs").fetchall() == [("succeeded",)]
    drop = con.execute("SELECT row_id, reason, score FROM events WHERE action = 'dropped'").fetchall()
    assert drop == [("raw:2", "filter:min_length", 6.0)]
    steps = con.execute("SELECT step, rows_in, rows_out FROM steps ORDER BY position").fetchall()
    assert steps[2] == ("filtered", 4, 3)
    arts = con.execute("SELECT count(*) FROM artifacts WHERE step = 'sft'").fetchone()
    assert arts == (1,)


def test_rerun_executes_nothing(qa):
    ws, recipe = qa
    build(recipe, ws.out, show_progress=False)
    report = build(recipe, ws.out, show_progress=False)
    assert report.executed == []
    assert all(_latest_steps(ws.out).values())
    con = duckdb.connect(str(ws.out / "lineage.duckdb"), read_only=True)
    # decisions are stored once, and the newest build still sees them
    assert con.execute("SELECT count(*) FROM events WHERE action = 'dropped'").fetchone() == (1,)
    assert con.execute("SELECT count(*) FROM latest_events WHERE action = 'dropped'").fetchone() == (1,)


def test_config_change_reruns_step_and_descendants_only(qa):
    ws, recipe = qa
    build(recipe, ws.out, show_progress=False)
    recipe.write_text(recipe.read_text().replace("min_length: 10", "min_length: 3"))
    report = build(recipe, ws.out, show_progress=False)
    assert report.executed == ["filtered", "parsed", "sft"]
    assert load_from_disk(str(ws.out / "datasets" / "qa_sft"))["train"].num_rows == 4


def test_force_reruns_step_and_descendants(qa):
    ws, recipe = qa
    build(recipe, ws.out, show_progress=False)
    report = build(recipe, ws.out, force=["parsed"], show_progress=False)
    assert report.executed == ["parsed", "sft"]
    con = duckdb.connect(str(ws.out / "lineage.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM events WHERE action = 'dropped'").fetchone() == (1,)


def test_failing_step_leaves_no_artifact_and_marks_run_failed(qa):
    ws, recipe = qa
    text = recipe.read_text().replace(
        "  sft:\n    kind: format\n    type: prompt_completion\n    inputs: {data: parsed}",
        "  boom:\n    kind: test.explode\n    inputs: {data: parsed}\n  sft:\n    kind: format\n"
        "    type: prompt_completion\n    inputs: {data: boom}",
    )
    recipe.write_text(text)
    with pytest.raises(StepError, match="step 'boom': ValueError: boom on purpose"):
        build(recipe, ws.out, show_progress=False)
    assert not (ws.out / "artifacts" / "boom").exists() or not any((ws.out / "artifacts" / "boom").iterdir())
    con = duckdb.connect(str(ws.out / "lineage.duckdb"), read_only=True)
    run = con.execute("SELECT status, error FROM runs").fetchone()
    assert run[0] == "failed" and "boom on purpose" in run[1]
    assert con.execute("SELECT status FROM steps WHERE step = 'boom'").fetchone() == ("failed",)
    con.close()
    # the finished artifacts are reused once the step is fixed
    recipe.write_text(text.replace("kind: test.explode", "kind: test.explode\n    explode: false"))
    report = build(recipe, ws.out, show_progress=False)
    assert report.executed == ["boom", "sft"]


def test_crash_while_writing_leaves_no_partial_artifact(qa, monkeypatch):
    ws, recipe = qa
    real = pl.DataFrame.write_parquet
    calls = {"n": 0}

    def flaky(self, path, *a, **kw):
        if "/sft/" in str(path).replace("\\", "/"):
            calls["n"] += 1
            if calls["n"] == 1:
                real(self, path, *a, **kw)  # the table lands in the temp dir …
                raise OSError("disk full")  # … and then the write fails
        return real(self, path, *a, **kw)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", flaky)
    with pytest.raises(StepError, match="disk full"):
        build(recipe, ws.out, show_progress=False)
    sft_dir = ws.out / "artifacts" / "sft"
    assert list(sft_dir.iterdir()) == []  # neither a finished-looking artifact …
    assert not (ws.out / ".tmp" / "sft").exists()  # … nor a temp dir
    monkeypatch.undo()
    assert build(recipe, ws.out, show_progress=False).executed == ["sft"]


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "dataforge.json"  # holds the run id, by design
    }


def test_two_fresh_builds_are_byte_identical(qa, tmp_path):
    _ws, recipe = qa
    a, b = tmp_path / "a", tmp_path / "b"
    build(recipe, a, show_progress=False)
    build(recipe, b, show_progress=False)
    ha, hb = _tree_hashes(a / "datasets"), _tree_hashes(b / "datasets")
    assert ha and ha == hb
    assert any(k.endswith(".arrow") for k in ha)


def test_lineage_recovered_from_artifact_when_db_lost(qa):
    ws, recipe = qa
    build(recipe, ws.out, show_progress=False)
    (ws.out / "lineage.duckdb").unlink()
    report = build(recipe, ws.out, show_progress=False)
    assert report.executed == []
    con = duckdb.connect(str(ws.out / "lineage.duckdb"), read_only=True)
    assert con.execute("SELECT row_id FROM latest_events WHERE action = 'dropped'").fetchall() == [("raw:2",)]


def test_stale_temp_dirs_are_cleaned(qa):
    ws, recipe = qa
    build(recipe, ws.out, show_progress=False)
    stale = ws.out / "artifacts" / "sft" / ".tmp-deadbeef-1234"
    stale.mkdir()
    build(recipe, ws.out, show_progress=False)
    assert not stale.exists()


def test_every_step_module_is_a_builtin_family():
    """A module of dataforge/steps that registers kinds must be in FAMILIES, or its kinds would
    be unknown to recipes."""
    from pathlib import Path

    import dataforge.steps
    from dataforge.steps import FAMILIES

    folder = Path(dataforge.steps.__file__).parent
    registering = {p.stem for p in folder.glob("*.py") if "@step(" in p.read_text()}
    assert registering == set(FAMILIES)
