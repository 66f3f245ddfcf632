"""The partitioning contract (``partition=`` in ``@step``): every step declares how its work
divides, and every ``rows`` and ``key`` step gives, on random batchings of real data (GSM8K,
HH-RLHF), the same rows and the same events as one call on the whole table. ``rows`` batches
take rows at random; ``key`` batches keep every row of a key together. A ``rows`` step on
contiguous slices also gives the whole call's rows in the same order (what streaming needs).

The steps that call a model run against a scripted OpenAI-compatible server on loopback (real
HTTP, client and cache; the answer a deterministic function of the messages), and
``score.reward_model`` with the tiny local reward model. A step that gathers its requests for
``ray.data.llm`` (``engine.ray_llm``) gives the same rows and events when they are gathered
round by round and answered ahead as when it sends them itself."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from dataforge.engine.step import PARTITIONS, REGISTRY, StepDef, StepResult, get_step
from dataforge.llm import client as llm_client
from dataforge.llm.client import ModelPool, Unanswered
from tests.conftest import GSM8K, HH, REPO, make_ctx
from tests.steps.test_critique_feedback import CONSTITUTION

SEEDS = (0, 1, 2)
REPHRASES = REPO / "bench" / "data" / "decontamination-rephrases"  # the development half


def _with_ids(df: pl.DataFrame, prefix: str) -> pl.DataFrame:
    return df.with_columns(pl.format(prefix + ":{}", pl.int_range(pl.len())).alias("_id")).select(
        "_id", pl.exclude("_id")
    )


def _run(kind: str, inputs: dict[str, pl.DataFrame], cfg: dict, ctx) -> StepResult:
    defn = get_step(kind)
    return defn.fn(inputs, defn.config(**cfg), ctx)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, pl.DataFrame]:
    """Real rows: 400 GSM8K train problems plus 60 exact copies under new ids, 300 HH-RLHF
    conversations, and what the parse steps make of them."""
    ctx = make_ctx(tmp_path_factory.mktemp("partition-data"))
    gsm = _with_ids(pl.read_ndjson(GSM8K / "train.jsonl").head(400), "g")
    copies = gsm.head(60).with_columns(pl.format("copy:{}", pl.int_range(pl.len())).alias("_id"))
    gsm = pl.concat([gsm, copies])
    hh_raw = _with_ids(pl.read_ndjson(HH / "test.jsonl.gz").head(300), "h")
    parsed = _run("parse.gsm8k", {"data": gsm}, {}, ctx).tables["data"]
    # a completion per problem, every third one with a wrong final answer
    wrong = pl.int_range(pl.len()) % 3 == 0
    parsed = parsed.with_columns(
        pl.when(wrong)
        .then(pl.format("{}\n#### {}1", "reasoning", "final_answer"))
        .otherwise(pl.format("{}\n#### {}", "reasoning", "final_answer"))
        .alias("completion")
    )
    hh = _run("parse.hh_rlhf", {"data": hh_raw}, {}, ctx).tables["data"]
    # leakage: 240 GSM8K train rows with 40 test items planted in them — 10 verbatim, 30 as
    # GPT-4 rephrases (development half) with their worked answers — against 120 test items
    tests = _with_ids(pl.read_ndjson(GSM8K / "test.jsonl").head(240).gather_every(2), "test")
    rephrased = pl.read_ndjson(REPHRASES / "gsm8k_test_rephrased.dev.jsonl").head(30)
    planted = pl.concat(
        [
            tests.head(10).select("question", "answer"),
            rephrased.select(pl.col("rephrased_question").alias("question"), "answer"),
        ]
    )
    leak_train = _with_ids(pl.concat([gsm.head(240).select("question", "answer"), planted]), "lt")
    responses = _run("preference.responses", {"data": hh}, {"responses": ["chosen", "rejected"]}, ctx).tables["data"]
    # the HH conversations whole (UltraFeedback's form), and in ShareGPT form with every fifth
    # request given as content parts, every seventh with an image part (dropped)
    whole = hh.select(
        "_id",
        pl.concat_list("prompt", "chosen").alias("chosen"),
        pl.concat_list("prompt", "rejected").alias("rejected"),
    )
    sharegpt = []
    for k, turns in enumerate(whole["chosen"].to_list()):
        said = [{"from": {"user": "human", "assistant": "gpt"}[t["role"]], "value": t["content"]} for t in turns]
        if k % 5 == 0:
            parts = [{"type": "text", "text": said[0]["value"]}] + (
                [{"type": "image_url", "text": None}] if k % 7 == 0 else []
            )
            said[0]["value"] = json.dumps(parts)  # as polars reads parts beside plain text
        sharegpt.append(said)
    sharegpt = hh.select("_id").with_columns(pl.Series("conversations", sharegpt))
    verified = _run(
        "verify", {"data": parsed}, {"graders": [{"name": "math", "inputs": {"answer": "final_answer"}}]}, ctx
    )
    return {
        "gsm": gsm,
        "hh_raw": hh_raw,
        "parsed": parsed,
        "hh": hh,
        "responses": responses,
        "whole": whole,
        "sharegpt": sharegpt,
        "verified": verified.tables["data"],
        "leak_train": leak_train.sample(fraction=1.0, shuffle=True, seed=3),  # the plants spread out
        "leak_eval": tests,
    }


# (step kind, its config, the table its divided input reads[, {input: table} passed whole])
CASES = [
    ("parse.gsm8k", {}, "gsm"),
    ("parse.hh_rlhf", {}, "hh_raw"),
    ("parse.chat", {"fields": ["conversations"]}, "sharegpt"),
    ("parse.chat", {"fields": ["chosen", "rejected"]}, "hh_raw"),
    ("clean.normalize", {"fields": ["question"], "lowercase": True}, "gsm"),
    ("clean.filter", {"fields": ["question"], "min_length": 150, "drop_regex": {"question": r"\$"}}, "gsm"),
    ("verify", {"graders": [{"name": "math", "inputs": {"answer": "final_answer"}}, {"name": "format"}]}, "parsed"),
    ("filter", {"column": "score_math", "min": 1.0}, "verified"),
    ("format.reasoning", {}, "parsed"),
    ("format", {"type": "preference", "prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}, "hh"),
    ("format", {"type": "preference", "chosen": "chosen", "rejected": "rejected"}, "whole"),
    ("format", {"type": "prompt_completion", "messages": "chosen"}, "whole"),
    ("preference.responses", {"responses": ["chosen", "rejected"]}, "hh"),
    ("preference.pairs", {"rule": "ranking", "column": "rank"}, "responses"),
    ("preference.pairs", {"rule": "revision", "chosen": "chosen", "rejected": "rejected"}, "hh"),
    ("preference.rm_pairs", {}, "hh"),
    ("dedup.exact", {"fields": ["question"]}, "gsm"),
    ("time.synthetic", {"start": "2024-01-01", "end": "2025-01-01"}, "gsm"),
    (
        "leakage.check",
        {"train_fields": ["question", "answer"], "eval_fields": ["question"], "max_tokens": 64},
        "leak_train",
        {"gsm8k_test": "leak_eval"},
    ),
]


def _batches(defn: StepDef, cfg, df: pl.DataFrame, seed: int, n: int = 3) -> pl.Series:
    """Each row's batch: at random (``rows``), or by a seeded hash of its key (``key``)."""
    if defn.partition == "key":
        return (defn.partition_key(cfg, df).hash(seed=seed) % n).alias("batch")
    rng = np.random.default_rng(seed)
    return pl.Series("batch", rng.integers(0, n, df.height))


def _sorted(df: pl.DataFrame) -> pl.DataFrame:
    sortable = [c for c, t in df.schema.items() if not isinstance(t, (pl.List, pl.Struct, pl.Array, pl.Object))]
    return df.sort(sortable, nulls_last=True) if sortable else df


def _events(result: StepResult) -> pl.DataFrame | None:
    return _sorted(pl.concat(result.events, how="diagonal_relaxed")) if result.events else None


def _assert_same(whole: StepResult, parts: list[StepResult]) -> None:
    """The batches' outputs, joined, are the whole call's: every table's rows and the events."""
    for name, table_whole in whole.tables.items():
        joined = pl.concat([p.tables[name] for p in parts], how="vertical_relaxed")
        assert_frame_equal(_sorted(joined), _sorted(table_whole), check_dtypes=False)
    merged = StepResult({}, events=[e for p in parts for e in p.events])
    if whole.events or merged.events:
        assert_frame_equal(_events(merged), _events(whole), check_dtypes=False)


def _slices(df: pl.DataFrame, n: int = 3) -> list[pl.DataFrame]:
    """``df`` cut into ``n`` contiguous slices in row order: the batches of the streaming executor."""
    size = -(-df.height // n)
    return [df.slice(start, size) for start in range(0, df.height, size)]


def _assert_in_order(whole: StepResult, parts: list[StepResult]) -> None:
    """A ``rows`` step on contiguous slices: its outputs, concatenated, are the whole call's row
    for row, in order (the streaming executor writes them so)."""
    for name, table_whole in whole.tables.items():
        joined = pl.concat([p.tables[name] for p in parts], how="vertical_relaxed")
        assert_frame_equal(joined, table_whole, check_dtypes=False)


def _assert_in_group_order(defn: StepDef, cfg, df: pl.DataFrame, call) -> None:
    """A ``key`` step with ``group_outputs`` on buckets of whole groups in order of their first
    row (``group_buckets``, as the streaming executor makes them): its group outputs,
    concatenated bucket after bucket, are the whole call's row for row; its other outputs are
    the whole call's once put back in input order."""
    from dataforge.engine.streaming import group_buckets

    grouped = defn.group_outputs(cfg, ("data",)) if defn.group_outputs else None
    if grouped is None:
        return
    bucket = pl.Series(group_buckets([defn.partition_key(cfg, df)], max(2, df.height // 5)))
    assert bucket.n_unique() > 2, "buckets of one group each or one bucket prove nothing"
    whole = call(df)
    parts = [call(df.filter(bucket == b)) for b in range(bucket.max() + 1)]
    order = df.select("_id").with_row_index("at")
    for name, table_whole in whole.tables.items():
        joined = pl.concat([p.tables[name] for p in parts], how="vertical_relaxed")
        if name not in grouped:
            joined = joined.join(order, on="_id", how="left").sort("at").drop("at")
        assert_frame_equal(joined, table_whole, check_dtypes=False)


@pytest.mark.parametrize(
    ("kind", "options", "table", "others"), [(*c, {})[:4] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_rows_or_key_step_gives_the_same_rows_and_events_in_any_batching(
    kind, options, table, others, data, tmp_path
):
    defn = get_step(kind)
    assert defn.partition in ("rows", "key")
    cfg = defn.config(**options)
    ctx = make_ctx(tmp_path)
    df = data[table]
    (divided,) = defn.partitioned or ("data",)
    call = lambda part: defn.fn({divided: part, **{k: data[v] for k, v in others.items()}}, cfg, ctx)  # noqa: E731
    whole = call(df)
    for seed in SEEDS:
        batch = _batches(defn, cfg, df, seed)
        assert batch.n_unique() > 1, "a batching of one batch proves nothing"
        parts = [call(df.filter(batch == b)) for b in sorted(batch.unique().to_list())]
        _assert_same(whole, parts)
    if defn.partition == "rows":
        _assert_in_order(whole, [call(part) for part in _slices(df)])
    _assert_in_group_order(defn, cfg, df, call)


def test_the_leakage_case_exercises_every_stage_it_claims(data, tmp_path):
    """The leakage case above proves something only if its plants are found, by the word
    detectors and by the similarity stages (static vectors, MiniLM) alike."""
    defn = get_step("leakage.check")
    cfg = defn.config(**CASES[-1][1])
    result = defn.fn({"train": data["leak_train"], "gsm8k_test": data["leak_eval"]}, cfg, make_ctx(tmp_path))
    detectors = set(result.tables["matches"]["detector"].to_list())
    assert {"ngram", "embedding"} <= detectors and detectors & {"dense", "canonical"}, detectors
    assert result.tables["matches"].height >= 35 and result.tables["scores"].height > result.tables["matches"].height


def _policy(messages) -> str:
    """A deterministic scripted model: its answer depends only on the request."""
    text = messages[-1]["content"]
    if "Response A:" in text:  # a pairwise judge: the longer response
        a, b = text.split("Response A:")[1].split("Response B:")
        return "[[A]]" if len(a) >= len(b) else "[[B]]"
    if text.startswith("CRITIQUE"):
        return "No violation." if len(messages[-2]["content"]) % 2 else "A problem."
    return f"Score: [[{len(text) % 10 + 1}]] reply {len(text)}"


MODEL_CASES = ["generate", "score.judge", "critique_revise", "ai_feedback", "score.reward_model", "rollout"]


@pytest.mark.parametrize("kind", MODEL_CASES)
def test_a_model_step_gives_the_same_rows_and_events_in_any_batching(kind, data, tmp_path, scripted_model, tiny_rm):
    model = scripted_model(_policy)
    (tmp_path / "constitution.yaml").write_text(CONSTITUTION)
    responses = data["responses"].head(120)  # 60 prompts, chosen and rejected each
    samples = (
        data["verified"]
        .head(90)
        .with_columns(
            pl.format("p:{}", pl.int_range(pl.len()) // 3).alias("_parent_id"),
            pl.col("question").alias("prompt"),
            pl.col("score_math").alias("reward"),
        )
    )
    options, df = {
        "generate": ({"model": model, "prompt": "prompt", "n": 2}, data["hh"].head(60)),
        "score.judge": ({"model": model, "template": "Rate: {{ completion }}"}, responses),
        "critique_revise": ({"model": model, "constitution": str(tmp_path / "constitution.yaml")}, responses),
        "ai_feedback": ({"model": model}, responses),
        "score.reward_model": ({"reward_model": str(tiny_rm)}, responses),
        "rollout": ({}, samples),
    }[kind]
    defn = get_step(kind)
    cfg = defn.config(**options)

    def call(part: pl.DataFrame, where: str) -> StepResult:
        ctx = make_ctx(tmp_path / where)
        ctx.llm = ModelPool(tmp_path / where / "llm.sqlite")  # a cache per call: no answer is shared
        try:
            return defn.fn({"data": part}, cfg, ctx)
        finally:
            ctx.llm.close()

    whole = call(df, "whole")
    batch = _batches(defn, cfg, df, seed=7)
    parts = [call(df.filter(batch == b), f"batch{b}") for b in sorted(batch.unique().to_list())]
    assert len(parts) > 1
    _assert_same(whole, parts)
    if defn.partition == "rows":
        _assert_in_order(whole, [call(part, f"slice{i}") for i, part in enumerate(_slices(df))])
    calls = iter(range(1000))
    _assert_in_group_order(defn, cfg, df, lambda part: call(part, f"bucket{next(calls)}"))


GATHERING = ["generate", "score.judge", "critique_revise", "ai_feedback"]  # with gathers_requests (engine.ray_llm)


def _no_model(spec):
    raise AssertionError(f"a model was loaded: {spec.model}")


@pytest.mark.parametrize("kind", GATHERING)
def test_a_model_step_gathered_round_by_round_gives_what_it_gives_sending_its_own_requests(
    kind, data, tmp_path, scripted_model, monkeypatch
):
    model = scripted_model(_policy)
    (tmp_path / "constitution.yaml").write_text(CONSTITUTION)
    responses = data["responses"].head(40)
    options, df = {
        "generate": ({"model": model, "prompt": "prompt", "n": 2}, data["hh"].head(20)),
        "score.judge": ({"model": model, "template": "Rate: {{ completion }}"}, responses),
        "critique_revise": (
            {"model": model, "constitution": str(tmp_path / "constitution.yaml"), "rounds": 2},
            responses,
        ),
        "ai_feedback": ({"model": model}, responses),
    }[kind]
    defn = get_step(kind)
    assert defn.gathers_requests
    cfg = defn.config(**options)

    direct_ctx = make_ctx(tmp_path / "direct")
    direct_ctx.llm = ModelPool(tmp_path / "direct" / "llm.sqlite")
    calls = []  # the step's calls to its model, each a round of gathering
    real_generate = llm_client.LLMClient.generate
    with monkeypatch.context() as m:
        m.setattr(llm_client.LLMClient, "generate", lambda c, r, *a: calls.append(len(r)) or real_generate(c, r, *a))
        direct = defn.fn({"data": df}, cfg, direct_ctx)
    sent_directly = direct_ctx.llm.failure_counts()[0]
    direct_ctx.llm.close()

    cache = tmp_path / "gathered" / "llm.sqlite"
    real_load = llm_client.load_backend
    answering = ModelPool(cache)  # stands in for ray.data.llm: answers stored under the request's key
    rounds, gathered = 0, 0
    with monkeypatch.context() as m:
        m.setattr(llm_client, "load_backend", _no_model)
        collecting = ModelPool(cache, collect=True)
        while True:
            ctx = make_ctx(tmp_path / "gathered")
            ctx.llm = collecting
            try:
                defn.fn({"data": df}, cfg, ctx)
                break
            except Unanswered as stopped:
                requests = stopped.requests
            assert requests and all(spec.model == "scripted" for spec, _ in requests)
            rounds += 1
            gathered += len(requests)
            with monkeypatch.context() as real:
                real.setattr(llm_client, "load_backend", real_load)
                for spec, request in requests:
                    answering.client(spec).generate([request])
        collecting.close()
        final_ctx = make_ctx(tmp_path / "gathered")
        final_ctx.llm = ModelPool(cache)
        final = defn.fn({"data": df}, cfg, final_ctx)  # every answer stored: no model is loaded
        assert final_ctx.llm.failure_counts() == (sent_directly, {})
        final_ctx.llm.close()
    answering.close()
    assert rounds == len([n for n in calls if n])  # a round per call of the step
    if kind == "critique_revise":
        assert rounds >= 3  # critique, revise, critique (and revise where the critique asked)
    else:
        assert rounds == 1
    assert gathered == sent_directly
    assert direct.tables.keys() == final.tables.keys()
    for name, table in direct.tables.items():
        assert table.equals(final.tables[name]), name
    assert [e.drop("run_id", strict=False).to_dicts() for e in direct.events] == [
        e.drop("run_id", strict=False).to_dicts() for e in final.events
    ]


def test_every_step_that_gathers_its_requests_is_tested_so():
    get_step("source")  # loads the built-in steps
    assert {k for k, d in REGISTRY.items() if d.gathers_requests and not k.startswith("test.")} == set(GATHERING)


def test_every_step_declares_how_it_partitions_and_every_rows_or_key_step_is_tested():
    get_step("source")  # loads the built-in steps
    kinds = {k: d for k, d in REGISTRY.items() if not k.startswith("test.")}
    assert all(d.partition in PARTITIONS for d in kinds.values())
    assert all((d.partition == "key") == (d.partition_key is not None) for d in kinds.values())
    global_steps = {k for k, d in kinds.items() if d.partition == "global"}
    assert {"dedup.minhash", "dedup.semantic", "split", "split.audit"} <= global_steps
    tested = {c[0] for c in CASES} | set(MODEL_CASES)
    untested = {k for k, d in kinds.items() if d.partition != "global" and k != "source"} - tested
    assert not untested, f"rows/key steps without a partition property case: {sorted(untested)}"


def test_a_step_without_a_valid_partition_is_refused():
    from dataforge.engine.step import step

    with pytest.raises(TypeError, match="partition must be one of"):
        step("test.bad_partition", version=1, partition="columns")
    with pytest.raises(TypeError, match="partition_key"):
        step("test.bad_key", version=1, partition="key")
    with pytest.raises(TypeError, match="partition_key"):
        step("test.bad_rows", version=1, partition="rows", partition_key=lambda cfg, df: df["_id"])
