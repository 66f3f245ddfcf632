"""``generate`` end to end in recipes, on a tiny random model (plumbing, not quality): n samples
per row with lineage, plan-time template errors, failed requests recorded, and resume after a
kill that re-sends only what had not come back."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time

import duckdb
import httpx
import polars as pl
import pytest

from dataforge.engine.plan import plan_recipe
from dataforge.engine.runner import build
from dataforge.errors import DataError, RecipeError, StepError
from dataforge.llm import openai_compat
from dataforge.llm.client import load_backend
from dataforge.llm.server import ModelServer
from dataforge.llm.spec import ModelSpec
from tests.conftest import QA_ROWS, start_server

RECIPE = """
name: gen
models:
  policy: {backend: vllm, model: some/instruct-model}
steps:
  raw:
    kind: source
    path: qa.jsonl
  parsed:
    kind: parse.gsm8k
    inputs: {data: raw}
  solve:
    kind: generate
    inputs: {data: parsed}
    model: policy
    template: "Question: {{ question }}"
    system: Answer briefly.
    reasoning: true
    n: 2
    max_tokens: 8
    temperature: 1.0
  graded:
    kind: verify
    inputs: {data: solve}
    graders: [{name: math, inputs: {answer: final_answer}}, {name: format}]
datasets:
  out:
    splits: {train: graded}
"""


@pytest.fixture
def gen_ws(ws):
    ws.jsonl("qa.jsonl", QA_ROWS)
    return ws, ws.recipe(RECIPE)


def tiny(tiny_lm) -> dict:
    return {"policy": {"backend": "transformers", "model": str(tiny_lm), "device": "cpu"}}


def test_n_completions_per_row_with_lineage(gen_ws, tiny_lm):
    ws, recipe = gen_ws
    report = build(recipe, ws.out, show_progress=False, models=tiny(tiny_lm))
    by = {s.name: s for s in report.steps}
    assert by["solve"].rows_in == 4 and by["solve"].rows_out == 8
    con = duckdb.connect(str(ws.out / "lineage.duckdb"), read_only=True)
    out = pl.read_parquet(next((ws.out / "artifacts" / "graded").glob("*/data/part-00000.parquet")))
    assert sorted(out["_id"]) == sorted(f"solve:raw:{i}:{k}" for i in range(4) for k in range(2))
    assert {"completion", "prompt", "_parent_id", "sample", "think", "stated_answer", "score_math"} <= set(out.columns)
    first = out.filter(pl.col("_id") == "solve:raw:0:0").row(0, named=True)
    assert first["prompt"][0]["role"] == "system" and "Answer briefly." in first["prompt"][0]["content"]
    assert first["prompt"][1] == {"role": "user", "content": "Question: " + QA_ROWS[0]["question"]}
    edges = con.execute(
        "SELECT child_id, parent_id FROM latest_edges WHERE relation = 'generated_from' ORDER BY 1"
    ).fetchall()
    assert len(edges) == 8 and all(c.startswith(p.replace("raw:", "solve:raw:")) for c, p in edges)
    assert con.execute("SELECT count(*) FROM latest_events WHERE action = 'generated'").fetchone() == (8,)
    # a completion cut at max_tokens (8 here: the random model rarely stops) is flagged, not silent
    cut = out.filter(pl.col("finish_reason") == "length")["_id"].sort().to_list()
    flagged = con.execute(
        "SELECT row_id FROM latest_events WHERE reason = 'generation:truncated' AND action = 'flagged' ORDER BY 1"
    ).fetchall()
    assert cut and [r for (r,) in flagged] == cut
    con.close()
    card = (ws.out / "datasets" / "out" / "card.md").read_text()
    assert "8 completions, 0 failed" in card and f"{len(cut)} of them cut at `max_tokens`" in card
    # the requests are cached: a forced rebuild sends none and gives the same completions
    again = build(recipe, ws.out, show_progress=False, models=tiny(tiny_lm), force=["solve"])
    assert again.executed == ["solve", "graded"]
    out2 = pl.read_parquet(next((ws.out / "artifacts" / "graded").glob("*/data/part-00000.parquet")))
    assert out2.sort("_id")["completion"].to_list() == out.sort("_id")["completion"].to_list()
    # truncated: drop keeps only completions that ended, each dropped one with its reason (last in
    # this test: it adds a second artifact of `graded`, which the glob above would also find)
    dropped = build(recipe, ws.out, show_progress=False, models=tiny(tiny_lm), settings=["solve.truncated=drop"])
    assert {s.name: s for s in dropped.steps}["solve"].rows_out == 8 - len(cut)
    con = duckdb.connect(str(ws.out / "lineage.duckdb"), read_only=True)
    gone = con.execute(
        "SELECT row_id FROM latest_events WHERE reason = 'generation:truncated' AND action = 'dropped' ORDER BY 1"
    ).fetchall()
    con.close()
    assert [r for (r,) in gone] == cut


def test_template_variables_are_checked_at_plan_time(gen_ws):
    ws, _ = gen_ws
    bad = ws.recipe(RECIPE.replace("{{ question }}", "{{ questoin }}"), "bad.yaml")
    with pytest.raises(RecipeError, match=r"step 'solve', key 'template'.*questoin") as err:
        plan_recipe(bad)
    assert err.value.line is not None
    broken = ws.recipe(RECIPE.replace("{{ question }}", "{{ question "), "broken.yaml")
    with pytest.raises(RecipeError, match="template syntax error"):
        plan_recipe(broken)


def test_several_samples_at_temperature_zero_are_refused(gen_ws):
    """n: 2 at temperature 0 gave one greedy completion twice: duplicate rows, a rejection-sampling
    step that could never find a second answer."""
    ws, _ = gen_ws
    greedy = ws.recipe(RECIPE.replace("temperature: 1.0", "temperature: 0"), "greedy.yaml")
    with pytest.raises(RecipeError, match=r"step 'solve'.*n: 2 samples at temperature 0 are one greedy completion"):
        plan_recipe(greedy)
    plan_recipe(ws.recipe(RECIPE.replace("temperature: 1.0", "temperature: 0").replace("n: 2", "n: 1"), "one.yaml"))


def test_a_null_the_template_prints_is_an_error_naming_the_row(ws, tiny_lm):
    """A row whose hint is null rendered as "Question: … None" and went to the model; it is an
    error naming the row and how to drop such rows. A template that tests for it renders."""
    rows = [dict(r, hint="Think.") for r in QA_ROWS]
    rows[2]["hint"] = None  # (a null question is dropped before: parse.gsm8k's parse:gsm8k_no_question)
    ws.jsonl("qa.jsonl", rows)
    hinted = RECIPE.replace("{{ question }}", "{{ question }} {{ hint }}")
    recipe = ws.recipe(hinted)
    with pytest.raises(StepError, match=r"step 'solve': row raw:2: the template prints a null value \(hint\)"):
        build(recipe, ws.out, show_progress=False, models=tiny(tiny_lm))
    # the same for a prompt column: a blank prompt went to the model as it was
    from dataforge.steps.generate import GenerateConfig
    from dataforge.steps.prompting import row_messages

    cfg = GenerateConfig(model=ModelSpec(backend="transformers", model="m"), prompt="question")
    for blank in ("", "  ", None, []):
        with pytest.raises(DataError, match=r"row q:1: prompt column 'question' is empty.*required: \[question\]"):
            row_messages(cfg, {"_id": "q:1", "question": blank}, None)
    guarded = RECIPE.replace("{{ question }}", "{{ question }}{% if hint %} {{ hint }}{% endif %}")
    report = build(ws.recipe(guarded, "guarded.yaml"), ws.out, show_progress=False, models=tiny(tiny_lm))
    assert {s.name: s for s in report.steps}["solve"].rows_out == 8


def test_model_references_are_checked(gen_ws, tiny_lm):
    ws, recipe = gen_ws
    with pytest.raises(RecipeError, match=r"unknown model 'critic' \(the recipe's models: policy\)"):
        plan_recipe(ws.recipe(RECIPE.replace("model: policy", "model: critic"), "m.yaml"))
    with pytest.raises(RecipeError, match="backend 'openai' needs 'base_url'"):
        plan_recipe(recipe, {"policy": {"backend": "openai", "model": "x"}})
    # the model is part of the fingerprint: swapping it re-plans the step
    a = {s.name: s.fingerprint for s in plan_recipe(recipe, tiny(tiny_lm)).steps}
    b = {s.name: s.fingerprint for s in plan_recipe(recipe).steps}
    assert a["parsed"] == b["parsed"] and a["solve"] != b["solve"]
    c = {s.name: s.fingerprint for s in plan_recipe(recipe, settings=["solve.n=3"]).steps}
    assert c["solve"] != b["solve"]
    with pytest.raises(RecipeError, match="no step 'nope'"):
        plan_recipe(recipe, settings=["nope.n=3"])


def test_failed_requests_are_recorded_and_the_build_finishes(gen_ws, tiny_lm, monkeypatch):
    monkeypatch.setattr(openai_compat, "BACKOFF_SECONDS", 0.01)
    ws, recipe = gen_ws
    backend = load_backend(ModelSpec(backend="transformers", model=str(tiny_lm), device="cpu"))
    # the server fails every request about the second question; the others are answered
    hook = lambda path, body, n: (503, b"{}") if "legs" in str(body.get("messages")) else None  # noqa: E731
    server = ModelServer(("127.0.0.1", 0), backend, "tiny", fault=hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        models = {"policy": {"backend": "openai", "model": "tiny", "base_url": server.url, "max_retries": 1}}
        report = build(recipe, ws.out, show_progress=False, models=models)
    finally:
        server.shutdown()
        server.server_close()
    solve = next(s for s in report.steps if s.name == "solve")
    assert solve.drops == {"generation_failed:http_503": 2}
    art = ws.out / "artifacts" / "solve" / solve.fingerprint
    assert pl.read_parquet(art / "data" / "part-00000.parquet").height == 6
    assert pl.read_parquet(art / "failed" / "part-00000.parquet")["error"].to_list() == ["http_503", "http_503"]
    con = duckdb.connect(str(ws.out / "lineage.duckdb"), read_only=True)
    rows = con.execute(
        "SELECT row_id, related_id FROM latest_events WHERE reason = 'generation_failed:http_503' ORDER BY 1"
    ).fetchall()
    assert rows == [("solve:raw:1:0", "raw:1"), ("solve:raw:1:1", "raw:1")]
    card = (ws.out / "datasets" / "out" / "card.md").read_text()
    assert "6 completions, 2 failed" in card and "| http_503 | 2 |" in card


RESUME_RECIPE = """
name: resume
models:
  policy: {backend: openai, model: tiny, base_url: URL, max_concurrency: 1}
steps:
  raw:
    kind: source
    path: prompts.jsonl
  solve:
    kind: generate
    inputs: {data: raw}
    model: policy
    prompt: text
    n: 1
    max_tokens: 24
    temperature: 1.0
datasets:
  out:
    splits: {train: solve}
"""


def test_a_killed_build_resends_only_the_requests_that_had_not_come_back(ws, tiny_lm):
    total = 40
    ws.jsonl("prompts.jsonl", [{"text": f"prompt number {i}"} for i in range(total)])
    proc, url = start_server(tiny_lm)
    try:
        recipe = ws.recipe(RESUME_RECIPE.replace("URL", url))

        def served() -> int:
            return httpx.get(url.removesuffix("/v1") + "/stats").json()["requests"]

        cmd = [sys.executable, "-m", "dataforge.cli", "build", str(recipe), "--out", str(ws.out), "--quiet"]
        build_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while served() < 12 and time.time() < deadline:
            time.sleep(0.02)
        build_proc.send_signal(signal.SIGKILL)
        build_proc.wait()
        before = served()
        assert 12 <= before < total, "the build finished before it could be killed"
        db = sqlite3.connect(ws.out / "cache" / "llm.sqlite")
        cached = db.execute("SELECT count(*) FROM responses").fetchone()[0]
        db.close()
        assert before - 1 <= cached < total  # each answer committed as it arrived (one request in flight)
        assert not any((ws.out / "datasets").glob("*")), "a killed build exported nothing"

        rerun = subprocess.run(cmd, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        assert served() - before == total - cached  # only the requests that had not come back
        out = pl.read_parquet(next((ws.out / "artifacts" / "solve").glob("*/data/part-00000.parquet")))
        assert out.height == total
    finally:
        proc.terminate()
        proc.wait(timeout=10)
