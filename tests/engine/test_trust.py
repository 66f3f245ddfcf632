"""Trust under real use: one writer per output folder, lineage readable during a build, killed
runs marked, verified reuse (artifacts, exported splits, trace), honest failure accounting.

Concurrency tests run real `dataforge build` processes against a scripted model server on
loopback whose answers are slow, so a build is certainly running while the test acts."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest
from datasets import load_from_disk
from rich.console import Console

from dataforge.engine.runner import build
from dataforge.errors import RecipeError, StepError
from tests.conftest import QA_RECIPE
from tests.steps.test_generate import RESUME_RECIPE

# the resume test's recipe, against the scripted server: one prompt per request, one at a time
SLOW_RECIPE = RESUME_RECIPE.replace("name: resume", "name: slow").replace(
    "model: tiny,", "model: scripted, max_retries: 0,"
)
assert SLOW_RECIPE.count("scripted") == 1

PROMPTS = 12


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dataforge.cli", *args]


@pytest.fixture
def slow(qa, scripted_model):
    """(workspace, QA recipe, slow recipe): the slow one answers each of its 12 prompts in 0.25 s."""
    ws, qa_recipe = qa

    def answer(messages):
        time.sleep(0.25)
        return "an answer"

    spec = scripted_model(answer)
    ws.jsonl("prompts.jsonl", [{"text": f"prompt {i}"} for i in range(PROMPTS)])
    return ws, qa_recipe, ws.recipe(SLOW_RECIPE.replace("URL", spec["base_url"]), "slow.yaml")


def _wait_for_lock(out: Path, pid: int, timeout: float = 60) -> None:
    lock = out / ".dataforge.lock"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads(lock.read_text() or "{}").get("pid") == pid and (out / "lineage.duckdb").exists():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("the first build never took the lock")


def _runs(out: Path) -> list[tuple[str, str]]:
    con = duckdb.connect(str(out / "lineage.duckdb"), read_only=True)
    try:
        return con.execute("SELECT recipe_path, status FROM runs ORDER BY started_at").fetchall()
    finally:
        con.close()


def test_two_builds_on_one_out_lose_nothing(slow):
    ws, qa_recipe, slow_recipe = slow
    first = subprocess.Popen(_cli("build", str(slow_recipe), "--out", str(ws.out), "--quiet"), stderr=subprocess.PIPE)
    try:
        _wait_for_lock(ws.out, first.pid)
        # a second build of another recipe stops at once, naming the holder, and touches nothing
        refused = subprocess.run(_cli("build", str(qa_recipe), "--out", str(ws.out), "--quiet"), capture_output=True)
        assert refused.returncode == 1
        message = refused.stderr.decode()
        assert f"pid {first.pid}" in message and "slow.yaml" in message and "--wait" in message
        assert "Traceback" not in message
        # the lineage answers while the build runs (no lock error)
        query = subprocess.run(
            _cli("query", "--out", str(ws.out), "--format", "csv", "SELECT status FROM runs"), capture_output=True
        )
        assert query.returncode == 0, query.stderr.decode()
        assert "running" in query.stdout.decode()
        # --wait waits for the first build, then builds
        waiting = subprocess.Popen(
            _cli("build", str(qa_recipe), "--out", str(ws.out), "--quiet", "--wait"), stderr=subprocess.PIPE
        )
        assert first.wait(timeout=120) == 0, first.stderr.read().decode()
        assert waiting.wait(timeout=120) == 0, waiting.stderr.read().decode()
        assert "waiting for build pid" in waiting.stderr.read().decode()
    finally:
        first.kill()
    assert load_from_disk(str(ws.out / "datasets" / "out"))["train"].num_rows == PROMPTS
    assert load_from_disk(str(ws.out / "datasets" / "qa_sft"))["train"].num_rows == 3
    assert [(Path(r).name, s) for r, s in _runs(ws.out)] == [("slow.yaml", "succeeded"), ("recipe.yaml", "succeeded")]


def test_why_answers_during_a_running_build(slow):
    ws, _, slow_recipe = slow
    build_proc = subprocess.Popen(_cli("build", str(slow_recipe), "--out", str(ws.out), "--quiet"))
    try:
        _wait_for_lock(ws.out, build_proc.pid)
        deadline = time.time() + 60
        while True:  # once the source step is committed, its rows have a history
            why = subprocess.run(_cli("why", "raw:3", "--out", str(ws.out)), capture_output=True, text=True)
            if why.returncode == 0 or time.time() > deadline:
                break
            time.sleep(0.1)
        assert why.returncode == 0, why.stderr
        assert "raw:3" in why.stdout and build_proc.poll() is None, "the build had already finished"
    finally:
        build_proc.wait(timeout=120)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGKILL, -9), (signal.SIGTERM, 130)])
def test_a_killed_build_is_marked_interrupted(slow, sig, code):
    ws, qa_recipe, slow_recipe = slow
    proc = subprocess.Popen(_cli("build", str(slow_recipe), "--out", str(ws.out), "--quiet"), stderr=subprocess.PIPE)
    _wait_for_lock(ws.out, proc.pid)
    time.sleep(0.5)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    if sig == signal.SIGKILL:
        assert _runs(ws.out) == [(str(slow_recipe), "running")]  # nobody could record its death
    console = Console(file=io.StringIO(), width=200)
    build(qa_recipe, ws.out, show_progress=False, console=console)
    assert [s for _, s in _runs(ws.out)] == ["interrupted", "succeeded"]
    if sig == signal.SIGKILL:
        assert "marked interrupted" in console.file.getvalue()


def _split_file(out: Path) -> Path:
    return next((out / "datasets" / "qa_sft" / "train").glob("*.arrow"))


def test_an_edited_exported_split_is_rebuilt(qa):
    ws, recipe = qa
    first = build(recipe, ws.out, show_progress=False)
    path = _split_file(ws.out)
    original = path.read_bytes()
    path.write_bytes(original + b"tampered")  # another file put in its place
    console = Console(file=io.StringIO(), width=300)
    second = build(recipe, ws.out, show_progress=False, console=console)
    said = console.file.getvalue()
    assert f"dataset 'qa_sft' split 'train': {path} changed size (1,800 → 1,808 bytes)" in said
    assert path.read_bytes() == original  # rewritten from the artifacts, byte-identical
    meta = json.loads((ws.out / "datasets" / "qa_sft" / "dataforge.json").read_text())
    assert meta["run_id"] == second.run_id != first.run_id
    assert load_from_disk(str(ws.out / "datasets" / "qa_sft"))["train"].num_rows == 3


def test_a_same_size_edit_with_the_old_mtime_is_caught_by_verify(qa):
    ws, recipe = qa
    build(recipe, ws.out, show_progress=False)
    path = _split_file(ws.out)
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    build(recipe, ws.out, show_progress=False)
    assert path.read_bytes() == bytes(data)  # size and mtime unchanged: not hashed by default
    console = Console(file=io.StringIO(), width=300)
    build(recipe, ws.out, show_progress=False, console=console, verify=True)
    assert "sha256 differs" in console.file.getvalue()
    assert path.read_bytes() != bytes(data)


def test_a_replaced_artifact_is_reported_and_rebuilt(qa):
    ws, recipe = qa
    first = build(recipe, ws.out, show_progress=False)
    fps = {s.name: s.fingerprint for s in first.steps}
    clean = ws.out / "artifacts" / "clean" / fps["clean"] / "data" / "part-00000.parquet"
    raw = ws.out / "artifacts" / "raw" / fps["raw"] / "data" / "part-00000.parquet"
    pl.read_parquet(raw).head(1).write_parquet(clean)  # a valid Parquet file, the wrong one
    (ws.out / "artifacts" / "parsed" / fps["parsed"] / "meta.json").write_text("{not json")
    console = Console(file=io.StringIO(), width=300)
    second = build(recipe, ws.out, show_progress=False, console=console)
    text = console.file.getvalue()
    assert f"step 'clean': {clean}" in text and "re-executing" in text
    assert "step 'parsed'" in text and "meta.json is damaged" in text
    assert set(second.executed) == {"clean", "parsed"}
    assert pl.read_parquet(clean).height == 4


def test_an_added_or_missing_shard_is_reported_and_rebuilt(qa):
    ws, recipe = qa
    first = build(recipe, ws.out, show_progress=False)
    fps = {s.name: s.fingerprint for s in first.steps}
    clean = ws.out / "artifacts" / "clean" / fps["clean"] / "data"
    parsed = ws.out / "artifacts" / "parsed" / fps["parsed"] / "data"
    pl.read_parquet(clean / "part-00000.parquet").write_parquet(clean / "part-00001.parquet")  # rows twice
    (parsed / "part-00000.parquet").unlink()
    console = Console(file=io.StringIO(), width=300)
    second = build(recipe, ws.out, show_progress=False, console=console)
    text = console.file.getvalue()
    assert f"step 'clean': {clean / 'part-00001.parquet'} is not one it stored" in text
    assert f"step 'parsed': {parsed / 'part-00000.parquet'} is missing" in text
    assert set(second.executed) == {"clean", "parsed"}
    assert [f.name for f in clean.iterdir()] == ["part-00000.parquet"]


def test_force_rewrites_the_exported_dataset(qa):
    ws, recipe = qa
    build(recipe, ws.out, show_progress=False)
    forced = build(recipe, ws.out, show_progress=False, force=["sft"])
    meta = json.loads((ws.out / "datasets" / "qa_sft" / "dataforge.json").read_text())
    assert meta["run_id"] == forced.run_id


def test_trace_compares_the_bytes(qa, tmp_path):
    from trainers.provenance import trace

    ws, recipe = qa
    build(recipe, ws.out, show_progress=False)
    data = ws.out / "datasets" / "qa_sft"
    meta = json.loads((data / "dataforge.json").read_text())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    dataset = {"path": str(data.resolve()), "built_by_dataforge": True, "lineage": str(ws.out / "lineage.duckdb")}
    dataset |= {k: meta[k] for k in ("dataset", "fingerprint", "run_id", "recipe", "recipe_sha256", "splits", "steps")}
    (model_dir / "dataforge_provenance.json").write_text(
        json.dumps({"trainer": "sft", "model": "x", "dataset": dataset})
    )
    assert "unchanged since training" in dict(trace(model_dir).findings)["dataset"]
    path = _split_file(ws.out)
    st = path.stat()
    data_bytes = bytearray(path.read_bytes())
    data_bytes[-20] ^= 0xFF
    path.write_bytes(bytes(data_bytes))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime, same dataforge.json
    assert "differ from those trained on" in dict(trace(model_dir).findings)["dataset"]


def test_a_damaged_dataset_is_a_clear_error_for_query_and_why(qa, capsys):
    from dataforge.cli import main

    ws, recipe = qa
    build(recipe, ws.out, show_progress=False)
    _split_file(ws.out).write_bytes(b"not arrow at all")
    for argv in (["query", "--out", str(ws.out), "SELECT 1"], ["why", "raw:0", "--out", str(ws.out)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "split 'train' is damaged" in err and "next build writes it again" in err


def test_disk_full_names_the_step_and_path(qa, monkeypatch, capsys):
    import errno

    from dataforge.cli import main

    ws, recipe = qa
    real = pl.DataFrame.write_parquet

    def full(self, file, *args, **kwargs):
        if "parsed" in str(file):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real(self, file, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", full)
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "step 'parsed': storing its output failed" in err and "No space left on device" in err
    assert "artifacts/parsed" in err and "Traceback" not in err


def test_an_out_path_with_a_quote_works(qa, capsys):
    from dataforge.cli import main

    ws, recipe = qa
    out = ws.root / "it's here"
    assert main(["build", str(recipe), "--out", str(out), "--quiet"]) == 0
    assert main(["query", "--out", str(out), "--format", "csv", "SELECT count(*) AS n FROM artifact_sft_data"]) == 0
    assert main(["why", "raw:0", "--out", str(out)]) == 0
    assert "n\r\n3" in capsys.readouterr().out


def test_why_names_the_recipe_of_each_dataset_sharing_an_out(qa):
    from dataforge.why import row_history

    ws, recipe = qa
    other = ws.recipe(QA_RECIPE.replace("name: qa", "name: qa2").replace("qa_sft:", "qa_other:"), "other.yaml")
    first = build(recipe, ws.out, show_progress=False)
    second = build(other, ws.out, show_progress=False)
    fate = row_history(ws.out, "raw:0").fate
    assert f"dataset qa_other split train (recipe {other}, build {second.run_id})" in fate
    assert f"dataset qa_sft split train (recipe {recipe}, build {first.run_id})" in fate


# -- plan-time mistakes ----------------------------------------------------------------------------


def test_an_unknown_model_override_is_an_error_listing_the_models(slow):
    from dataforge.engine.plan import plan_recipe

    _, _, slow_recipe = slow
    with pytest.raises(RecipeError, match=r"no model 'polciy' \(did you mean 'policy'\?\); its models: policy"):
        plan_recipe(slow_recipe, {"polciy": {"backend": "openai", "model": "x", "base_url": "http://127.0.0.1:1/v1"}})
    with pytest.raises(RecipeError, match=r"no step 'slove' \(did you mean 'solve'\? its steps: raw, solve\)"):
        plan_recipe(slow_recipe, settings=["slove.n=2"])


def test_two_sources_with_one_name_are_an_error(qa):
    from dataforge.engine.plan import plan_recipe

    ws, _ = qa
    text = QA_RECIPE.replace(
        "  clean:\n",
        "  raw_again:\n    kind: source\n    path: qa.jsonl\n    name: raw\n  clean:\n",
    )
    with pytest.raises(RecipeError, match=r"step 'raw_again', key 'name': source name 'raw' is already used by step"):
        plan_recipe(ws.recipe(text, "dup.yaml"))


# -- failure accounting of model steps -------------------------------------------------------------


def test_failed_requests_are_asked_again_and_too_many_fail_the_step(slow, scripted_model):
    ws, _, _ = slow
    asked: list[str] = []

    def flaky(messages):
        asked.append(messages[-1]["content"])
        return 503 if messages[-1]["content"] in ("prompt 1", "prompt 2") else "fine"

    spec = scripted_model(flaky)
    recipe = ws.recipe(SLOW_RECIPE.replace("URL", spec["base_url"]), "flaky.yaml")
    report = build(recipe, ws.out, show_progress=False)
    solve = next(s for s in report.steps if s.name == "solve")
    assert solve.failed_requests == 2 and solve.outputs == {"data": 10, "failed": 2}
    assert solve.drops == {"generation_failed:http_503": 2}
    asked.clear()
    again = build(recipe, ws.out, show_progress=False)  # the failures are not reused from the artifact
    assert "solve" in again.executed and sorted(asked) == ["prompt 1", "prompt 2"]

    spec = scripted_model(lambda messages: 503)
    dead = ws.recipe(SLOW_RECIPE.replace("URL", spec["base_url"]), "dead.yaml")
    with pytest.raises(StepError, match=r"12 of 12 model requests failed \(http_503: 12\), above max_failure_rate 0.5"):
        build(dead, ws.root / "dead", show_progress=False)
    assert not (ws.root / "dead" / "datasets").exists()  # nothing exported
