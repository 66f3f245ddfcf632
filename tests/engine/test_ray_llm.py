"""Model requests gathered for ``ray.data.llm`` (engine.ray_llm).

Without Ray: a collecting model pool stops a step at its first call with unstored answers and
loads no model (that every step that gathers its requests gives the same rows gathered round by
round as sending them itself is in tests/engine/test_partitioning.py).

On a real local Ray instance: a generating recipe built with ``--ray-llm all`` sends its requests
through ray.data.llm's HTTP processor (aiohttp, seen by the server on loopback) and none through the
step's own client (httpx), batch by batch or whole, with the local build's datasets; a server that
fails requests stops the processor and the step's own backend sends the rest, failures counted as
without it; a step run whole in the driver (leakage.check with a judge) has each call answered
through ray.data.llm as it asks, and runs once. The vLLM processor is built and its rows checked;
running it needs vLLM and a GPU.
"""

from __future__ import annotations

import json
import sys

import httpx
import polars as pl
import pytest
from datasets import load_from_disk

from dataforge.engine import ray_llm
from dataforge.engine.runner import build
from dataforge.errors import DataforgeError
from dataforge.llm import client as llm_client
from dataforge.llm.base import Request
from dataforge.llm.client import ModelPool, Unanswered, cache_key
from dataforge.llm.spec import ModelSpec, SamplingParams
from tests.engine.test_runner import _tree_hashes
from tests.engine.test_trust import PROMPTS, SLOW_RECIPE


def _no_model(spec: ModelSpec):
    raise AssertionError(f"a model was loaded: {spec.model}")


def test_a_collecting_pool_stops_at_the_first_call_with_unstored_answers_and_loads_no_model(
    tmp_path, scripted_model, monkeypatch
):
    spec = ModelSpec(**scripted_model(lambda messages: "stored"))
    params = SamplingParams(max_tokens=8)
    asked = [Request(params, messages=({"role": "user", "content": f"q{i}"},)) for i in range(3)]
    ModelPool(tmp_path / "llm.sqlite").client(spec).generate(asked[:1])  # one answer stored
    monkeypatch.setattr(llm_client, "load_backend", _no_model)
    pool = ModelPool(tmp_path / "llm.sqlite", collect=True)
    with pytest.raises(Unanswered) as stopped:
        pool.client(spec).generate(asked)
    assert [r for _, r in stopped.value.requests] == asked[1:]  # the stored one is not asked again
    assert pool.client(spec).generate(asked[:1])[0].texts == ["stored"]
    with pytest.raises(Unanswered):
        pool.client(spec).logprobs(["a"], ["b"])  # scores are never stored
    assert not pool.client(spec).loaded
    pool.close()


def _served(spec: dict) -> dict[str, int]:
    """Requests the scripted server took so far, by User-Agent."""
    return httpx.get(spec["base_url"].removesuffix("/v1") + "/stats").json()["agents"]


def _new(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}


def test_generation_on_ray_goes_through_ray_data_llm_and_gives_the_local_datasets(
    qa, scripted_model, ray_local, capsys
):
    from dataforge.cli import main

    ws, _ = qa
    spec = scripted_model(lambda messages: f"answer to {messages[-1]['content']}")
    ws.jsonl("prompts.jsonl", [{"text": f"prompt {i}"} for i in range(PROMPTS)])
    recipe = ws.recipe(SLOW_RECIPE.replace("URL", spec["base_url"]), "gen.yaml")

    build(recipe, ws.root / "local", show_progress=False)
    local = _served(spec)
    assert list(local) and all("httpx" in agent for agent in local)  # the step's own client

    for out, rows in (("batches", 3), ("whole", 1000)):  # tasks per batch; the step in the driver
        before = _served(spec)
        report = build(recipe, ws.root / out, show_progress=False, batch_rows=rows, executor="ray", ray_llm="all")
        sent = _new(_served(spec), before)
        assert list(sent) and all("aiohttp" in agent for agent in sent), sent  # none from the step's client
        assert sum(sent.values()) == PROMPTS
        assert report.llm["solve"] == {"rounds": 1, "sent": PROMPTS, "stored": PROMPTS, "failed": {}, "left": {}}
        assert _tree_hashes(ws.root / out / "datasets") == _tree_hashes(ws.root / "local" / "datasets")
        # batch by batch: a round that gathered the requests, one that found none left
        assert report.tasks.get("collect", 0) == (2 * PROMPTS // 3 if rows == 3 else 0)

    before = _served(spec)
    args = ["build", str(recipe), "--out", str(ws.root / "batches"), "--quiet", "--batch-rows", "3"]
    assert main([*args, "--executor", "ray", "--ray-llm", "all", "--force", "solve"]) == 0
    assert _new(_served(spec), before) == {}  # every answer stored: nothing sent, no model loaded
    assert "ray.data.llm, step solve: 0 requests in 0 round(s), 0 answers stored" in capsys.readouterr().out

    before = _served(spec)
    report = build(recipe, ws.root / "off", show_progress=False, batch_rows=3, executor="ray", ray_llm="off")
    assert report.llm == {} and all("httpx" in agent for agent in _new(_served(spec), before))


def test_requests_the_processor_could_not_answer_are_sent_by_the_step_and_failures_count_as_without_it(
    qa, scripted_model, ray_local
):
    ws, _ = qa

    def flaky(messages):
        return 503 if messages[-1]["content"] in ("prompt 1", "prompt 7") else "fine"

    spec = scripted_model(flaky)
    ws.jsonl("prompts.jsonl", [{"text": f"prompt {i}"} for i in range(PROMPTS)])
    recipe = ws.recipe(SLOW_RECIPE.replace("URL", spec["base_url"]), "flaky.yaml")
    report = build(recipe, ws.out, show_progress=False, batch_rows=3, executor="ray", ray_llm="all")
    sent = report.llm["solve"]
    assert sent["rounds"] == 1 and sent["sent"] == PROMPTS and sent["stored"] < PROMPTS - 1 and not sent["failed"]
    assert sum(sent["left"].values()) == PROMPTS - sent["stored"]
    assert all(why.startswith("processor: ") for why in sent["left"])
    solve = next(s for s in report.steps if s.name == "solve")  # as in a build without ray.data.llm
    assert solve.failed_requests == 2 and solve.outputs == {"data": PROMPTS - 2, "failed": 2}
    assert solve.drops == {"generation_failed:http_503": 2}
    agents = _served(spec)
    own = sum(n for agent, n in agents.items() if "httpx" in agent)
    assert own == PROMPTS - sent["stored"]  # the step's own client sent exactly what was not stored


def test_the_vllm_processor_is_built_with_its_replicas_and_reads_one_row_per_sample(tiny_lm, ray_local):
    spec = ModelSpec(backend="vllm", model=str(tiny_lm), max_model_len=512, dtype="bfloat16")
    config = ray_llm.processor_config(spec, chat=True, replicas=3)
    assert config.concurrency == 3 and config.model_source == str(tiny_lm)
    assert config.engine_kwargs["max_model_len"] == 512 and config.engine_kwargs["dtype"] == "bfloat16"
    assert config.should_continue_on_error and config.batch_size == spec.batch_size
    assert ray_llm.build(spec, chat=False, replicas=1) is not None  # its stages built (vLLM runs them)

    params = SamplingParams(n=2, seed=5, max_tokens=4, stop=["END"], temperature=0.3)
    request = Request(params, messages=({"role": "user", "content": "hi"},))
    row = {"key": "k", "request": json.dumps(request.payload())}
    first, second = (ray_llm._vllm_input({**row, "k": k}) for k in (0, 1))
    assert first["messages"] == [{"role": "user", "content": "hi"}]
    assert (first["sampling_params"]["seed"], second["sampling_params"]["seed"]) == (5, 6)
    assert first["sampling_params"]["n"] == 1 and first["sampling_params"]["stop"] == ["END"]
    outs = [
        ray_llm._vllm_output({**row, "k": 1, "generated_text": "b END c", "num_generated_tokens": 4}),
        ray_llm._vllm_output({**row, "k": 0, "generated_text": "a", "num_generated_tokens": 1}),
    ]
    stored = ray_llm._combined({int(o["k"]): json.loads(o["answer"]) for o in outs})
    assert stored == {"texts": ["a", "b "], "finish_reasons": ["stop", "length"], "completion_tokens": 5}


def test_the_settings_come_from_the_option_or_the_environment_and_are_checked(monkeypatch):
    monkeypatch.delenv(ray_llm.MODE_ENV, raising=False)
    monkeypatch.delenv(ray_llm.REPLICAS_ENV, raising=False)
    assert ray_llm.mode_setting(None) == "vllm" and ray_llm.replicas_setting(None, 0.0) == 1
    assert ray_llm.replicas_setting(None, 4.0) == 4 and ray_llm.replicas_setting(2, 4.0) == 2
    monkeypatch.setenv(ray_llm.MODE_ENV, "all")
    monkeypatch.setenv(ray_llm.REPLICAS_ENV, "3")
    assert ray_llm.mode_setting(None) == "all" and ray_llm.mode_setting("off") == "off"
    assert ray_llm.replicas_setting(None, 8.0) == 3
    with pytest.raises(DataforgeError, match=r"--ray-llm is 'gpu': one of vllm, all, off"):
        ray_llm.mode_setting("gpu")
    monkeypatch.setenv(ray_llm.REPLICAS_ENV, "zero")
    with pytest.raises(DataforgeError, match=r"\$DATAFORGE_RAY_LLM_REPLICAS is 'zero'"):
        ray_llm.replicas_setting(None, 1.0)
    vllm = ModelSpec(backend="vllm", model="m")
    served = ModelSpec(backend="openai", model="m", base_url="http://127.0.0.1:1/v1")
    local = ModelSpec(backend="transformers", model="m")
    assert [ray_llm.sent_through(s, "vllm") for s in (vllm, served, local)] == [True, False, False]
    assert [ray_llm.sent_through(s, "all") for s in (vllm, served, local)] == [True, True, False]
    assert not any(ray_llm.sent_through(s, "off") for s in (vllm, served, local))


def test_requests_that_failed_in_ray_data_llm_are_answered_as_failed_and_not_sent(
    tmp_path, scripted_model, monkeypatch
):
    spec = ModelSpec(**scripted_model(lambda messages: "sent"))
    params = SamplingParams(max_tokens=8)
    asked = [Request(params, messages=({"role": "user", "content": f"q{i}"},)) for i in range(2)]
    monkeypatch.setattr(llm_client, "load_backend", _no_model)
    failed = {cache_key(spec, asked[0]): "engine_error"}
    collecting = ModelPool(tmp_path / "llm.sqlite", collect=True)
    collecting.failed.update(failed)
    with pytest.raises(Unanswered) as stopped:
        collecting.client(spec).generate(asked)
    assert [r for _, r in stopped.value.requests] == asked[1:]  # the failed one does not stop the step
    assert collecting.client(spec).generate(asked[:1])[0].error == "engine_error"
    assert collecting.failure_counts() == (0, {})  # a collecting pool counts nothing
    pool = ModelPool(tmp_path / "llm.sqlite")
    pool.failed.update(failed)
    (gen,) = pool.client(spec).generate(asked[:1])
    assert gen.error == "engine_error" and not gen.texts and not pool.client(spec).loaded
    assert pool.failure_counts() == (1, {"engine_error": 1})  # counted as the step's failure
    collecting.close()
    pool.close()


FAILING_PROMPT = "prompt 5"


def _emulated_vllm(row: dict) -> dict:
    """ray.data.llm's vLLM processor as it treats a row, its engine emulated (vLLM cannot run
    here): the rows ``_vllm_input`` makes, answered with the prompt and the sample's seed, or (the
    second sample of FAILING_PROMPT) an error row as ``should_continue_on_error`` gives it."""
    given = ray_llm._vllm_input(row)
    content = given["messages"][-1]["content"]
    if content == FAILING_PROMPT and given["k"] == 1:
        return {**given, "__inference_error__": "CUDA error: an emulated engine failure"}
    text = f"{content} #{given['sampling_params']['seed']}"
    return ray_llm._vllm_output({**given, "generated_text": text, "num_generated_tokens": 3})


VLLM_RECIPE = SLOW_RECIPE.replace(
    "backend: openai, model: scripted, max_retries: 0, base_url: URL", "backend: vllm, model: MODEL"
)


def test_a_vllm_models_requests_on_ray_are_answered_through_the_processor_and_no_worker_loads_vllm(
    qa, tiny_lm, ray_local, monkeypatch
):
    """The vLLM path end to end on Ray with its engine emulated (``_emulated_vllm``, in a real Ray
    Data map): each sample a row of its own, the samples of a request stored together, a request
    whose sample failed recorded as the step's failed generation. Nothing loads vLLM (it is not
    installed here: loading it would fail the build)."""
    ws, _ = qa
    assert "backend: vllm" in VLLM_RECIPE
    ws.jsonl("prompts.jsonl", [{"text": f"prompt {i}"} for i in range(PROMPTS)])
    recipe = ws.recipe(VLLM_RECIPE.replace("MODEL", str(tiny_lm)).replace("n: 1", "n: 2"), "vllm.yaml")
    monkeypatch.setattr(ray_llm, "build", lambda spec, chat, replicas: lambda ds: ds.map(_emulated_vllm))
    report = build(recipe, ws.out, show_progress=False, batch_rows=3, executor="ray")  # --ray-llm vllm: the default
    assert report.llm["solve"] == {
        "rounds": 1,
        "sent": PROMPTS,
        "stored": PROMPTS - 1,
        "failed": {"engine_error": 1},
        "left": {},
    }
    solve = next(s for s in report.steps if s.name == "solve")
    assert solve.failed_requests == 1 and solve.outputs == {"data": 2 * PROMPTS - 2, "failed": 2}
    assert solve.drops == {"generation_failed:engine_error": 2}  # its two completions, as in a local build
    train = load_from_disk(str(ws.out / "datasets" / "out"))["train"]
    made = sorted(zip(train["completion"], train["sample"], strict=True))
    expected = [(f"prompt {i} #{k}", k) for i in range(PROMPTS) if f"prompt {i}" != FAILING_PROMPT for k in (0, 1)]
    assert made == sorted(expected)  # sample k of a request: the row with seed 0 + k


def test_gathered_requests_are_written_once_per_key_by_processor_and_only_those_sent_that_way(tmp_path):
    served = ModelSpec(backend="openai", model="m", base_url="http://127.0.0.1:1/v1")
    engine = ModelSpec(backend="vllm", model="m")
    local = ModelSpec(backend="transformers", model="m")
    chat = Request(SamplingParams(n=3), messages=({"role": "user", "content": "q"},))
    plain = Request(SamplingParams(n=3), prompt="q")
    other = Request(SamplingParams(n=1), prompt="another")
    asked = [(engine, chat), (engine, chat), (engine, plain), (engine, other), (served, chat), (local, chat)]
    skip = {cache_key(engine, other)}
    written = ray_llm.write_requests(tmp_path / "round-00", asked, "vllm", skip)
    assert written.keys() == {ray_llm.group_name(engine, True), ray_llm.group_name(engine, False)}
    path, requests, rows = written[ray_llm.group_name(engine, True)]
    table = pl.read_parquet(path)
    assert (requests, rows) == (1, 3) and table["key"].to_list() == [cache_key(engine, chat)]
    assert json.loads(table["request"][0]) == chat.payload()  # (a vLLM request: a row per sample)
    assert written[ray_llm.group_name(engine, False)][1:] == (1, 3)  # `other` was skipped
    everything = ray_llm.write_requests(tmp_path / "round-01", asked, "all", set())
    assert len(everything) == 3 and everything[ray_llm.group_name(served, True)][1:] == (1, 1)


def test_a_request_in_two_files_of_a_round_is_sent_once_and_a_file_left_with_none_is_dropped(tmp_path):
    engine = ModelSpec(backend="vllm", model="m")
    asked = [Request(SamplingParams(n=2), prompt=f"q{i}") for i in range(4)]

    def written(name: str, picked: list[int]) -> tuple[str, int, int]:
        files = ray_llm.write_requests(tmp_path / name, [(engine, asked[i]) for i in picked], "vllm", set())
        return files[ray_llm.group_name(engine, False)]

    parts = [written("a", [0, 1]), written("b", [1, 2]), written("c", [0, 2]), written("d", [3, 0])]
    unique = ray_llm.unique_requests(parts, engine)
    assert [p for p, _, _ in unique] == [parts[0][0], parts[1][0], parts[3][0]]  # c held only repeats
    assert [(n, rows) for _, n, rows in unique] == [(2, 4), (1, 2), (1, 2)]  # rows: a row per sample
    keys = [pl.read_parquet(p)["key"].to_list() for p, _, _ in unique]
    assert keys == [
        [cache_key(engine, asked[0]), cache_key(engine, asked[1])],
        [cache_key(engine, asked[2])],
        [cache_key(engine, asked[3])],
    ]
    assert ray_llm.unique_requests(parts[:1], engine) == parts[:1]


def test_a_prompt_asked_by_several_batches_goes_through_ray_data_llm_once(qa, scripted_model, ray_local):
    ws, _ = qa
    asked: list[str] = []

    def answer(messages):
        asked.append(messages[-1]["content"])
        return f"answer to {messages[-1]['content']}"

    spec = scripted_model(answer)
    ws.jsonl("prompts.jsonl", [{"text": f"prompt {i % 4}"} for i in range(PROMPTS)])  # each in 3 batches of 3
    recipe = ws.recipe(SLOW_RECIPE.replace("URL", spec["base_url"]), "repeats.yaml")
    build(recipe, ws.root / "local", show_progress=False)
    assert sorted(asked) == sorted(f"prompt {i}" for i in range(4))  # the step's client: once per prompt too
    asked.clear()
    report = build(recipe, ws.out, show_progress=False, batch_rows=3, executor="ray", ray_llm="all")
    assert sorted(asked) == sorted(f"prompt {i}" for i in range(4))
    assert report.llm["solve"] == {"rounds": 1, "sent": 4, "stored": 4, "failed": {}, "left": {}}
    assert _tree_hashes(ws.out / "datasets") == _tree_hashes(ws.root / "local" / "datasets")


def test_ray_llm_options_without_ray_and_a_ray_without_ray_data_llm_are_told_what_to_do(qa, monkeypatch):
    ws, recipe = qa
    monkeypatch.delenv("DATAFORGE_EXECUTOR", raising=False)
    with pytest.raises(DataforgeError, match=r"--ray-llm and --ray-llm-replicas are for the ray executor"):
        build(recipe, ws.out, show_progress=False, ray_llm="all")
    assert not (ws.out / "datasets").exists()  # refused before anything ran
    monkeypatch.setitem(sys.modules, "ray.data.llm", None)  # as if it failed to import
    spec = ModelSpec(backend="vllm", model="m")
    with pytest.raises(DataforgeError, match=r"needs ray.data.llm.*pip install 'dataforge\[ray\]'.*--ray-llm off"):
        ray_llm.processor_config(spec, chat=True, replicas=1)


SCRIPTED = "{backend: openai, model: scripted, max_retries: 0, base_url: URL, max_concurrency: 4}"  # at URL

FEEDBACK_RECIPE = f"""
name: feedback
models:
  policy: {SCRIPTED}
"""
FEEDBACK_RECIPE += """steps:
  raw: {kind: source, path: prompts.jsonl}
  solve: {kind: generate, inputs: {data: raw}, model: policy, prompt: text, n: 3, max_tokens: 24}
  judged: {kind: ai_feedback, inputs: {data: solve}, model: policy}
datasets:
  out:
    splits: {train: judged}
"""


def test_a_key_steps_requests_on_ray_go_through_ray_data_llm_bucket_by_bucket_or_whole(qa, scripted_model, ray_local):
    """ai_feedback (a key step) after a generate step: on Ray with ``--ray-llm all`` both send
    every request through ray.data.llm, the judge's gathered from the buckets of its shuffle (or
    from the whole step in the driver), and the datasets are a local build's."""
    from tests.engine.test_partitioning import _policy

    ws, _ = qa
    spec = scripted_model(_policy)
    ws.jsonl("prompts.jsonl", [{"text": f"prompt {i}"} for i in range(PROMPTS)])
    recipe = ws.recipe(FEEDBACK_RECIPE.replace("URL", spec["base_url"]), "feedback.yaml")
    local = build(recipe, ws.root / "local", show_progress=False)
    judged = next(s for s in local.steps if s.name == "judged")
    assert judged.outputs["verdicts"] == PROMPTS * 3  # three pairs a prompt
    for out, rows in (("buckets", 6), ("whole", 1000)):
        before = _served(spec)
        report = build(recipe, ws.root / out, show_progress=False, batch_rows=rows, executor="ray", ray_llm="all")
        sent = _new(_served(spec), before)
        assert list(sent) and all("aiohttp" in agent for agent in sent), sent
        # one distinct judge request a prompt: the scripted model gives its three samples alike,
        # so every pair, in both orders, asks the same: gathered once (the step itself sends each copy)
        assert report.llm["judged"]["sent"] == report.llm["judged"]["stored"] == PROMPTS
        assert report.llm["solve"]["stored"] == PROMPTS
        if rows == 6:  # the judge ran bucket by bucket: its requests gathered from the buckets
            assert report.tasks["bucket"] and report.tasks["collect"] >= 2 * report.tasks["bucket"]
        assert _tree_hashes(ws.root / out / "datasets") == _tree_hashes(ws.root / "local" / "datasets")


JUDGE_RECIPE = f"""
name: judged_leakage
models:
  judge: {SCRIPTED}
"""
JUDGE_RECIPE += """steps:
  train_raw: {kind: source, path: train.jsonl}
  test_raw: {kind: source, path: test.jsonl}
  parsed: {kind: parse.gsm8k, inputs: {train: train_raw, test: test_raw}}
  leakage:
    kind: leakage.check
    inputs: {train: parsed.train, gsm8k_test: parsed.test}
    train_fields: [question]
    eval_fields: [question]
    train_answer: final_answer
    eval_answer: final_answer
    judge: judge
datasets:
  out:
    splits: {train: leakage}
"""


def test_a_step_run_in_the_driver_has_each_call_answered_through_ray_data_llm_and_runs_once(
    ws, scripted_model, ray_local, monkeypatch
):
    """leakage.check with an LLM judge runs whole in the driver: on Ray with ``--ray-llm all``
    its judge calls go through ray.data.llm as it makes them (none through the step's own
    client), the step runs once, and the datasets are a local build's."""
    import dataclasses
    import functools

    from dataforge.engine.step import REGISTRY
    from tests.conftest import GSM8K

    test = pl.read_ndjson(GSM8K / "test.jsonl").head(20)
    similar = test["question"][0].replace("16", "22").replace("three", "five").replace("$2", "$3")
    train = pl.read_ndjson(GSM8K / "train.jsonl").head(150).to_dicts()
    ws.jsonl("train.jsonl", [*train, {"question": similar, "answer": "22-5-4=13\n13*3=39\n#### 39"}])
    ws.jsonl("test.jsonl", test.to_dicts())
    spec = scripted_model(lambda messages: "[[YES]]" if "Janet" in messages[-1]["content"] else "[[NO]]")
    recipe = ws.recipe(JUDGE_RECIPE.replace("URL", spec["base_url"]), "judged.yaml")

    local = build(recipe, ws.root / "local", show_progress=False)
    asked = _served(spec)
    assert list(asked) and all("httpx" in agent for agent in asked)
    calls = sum(asked.values())
    assert next(s for s in local.steps if s.name == "leakage").drops == {"leakage:judge": 1}

    runs = []
    check = REGISTRY["leakage.check"]

    @functools.wraps(check.fn)  # (with its card section)
    def counted(*args, **kwargs):
        runs.append(1)
        return check.fn(*args, **kwargs)

    monkeypatch.setitem(REGISTRY, "leakage.check", dataclasses.replace(check, fn=counted))
    report = build(recipe, ws.root / "ray", show_progress=False, batch_rows=40, executor="ray", ray_llm="all")
    sent = _new(_served(spec), asked)
    assert list(sent) and all("aiohttp" in agent for agent in sent), sent  # none from the step's client
    assert sum(sent.values()) == calls and len(runs) == 1
    assert report.llm["leakage"] == {"rounds": 1, "sent": calls, "stored": calls, "failed": {}, "left": {}}
    assert _tree_hashes(ws.root / "ray" / "datasets") == _tree_hashes(ws.root / "local" / "datasets")
