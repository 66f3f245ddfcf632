"""Every shipped recipe, built end to end on the shipped data, and what its outputs promise."""

from __future__ import annotations

import gzip
import itertools
import json
import re
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest
from datasets import DatasetDict, load_from_disk

from dataforge.cli import main
from dataforge.engine.runner import build
from dataforge.steps.split import unit_hash
from dataforge.text.normalize import normalize_expr
from tests.conftest import RECIPES

ALL = sorted(p.name for p in RECIPES.glob("*.yaml"))
_builds: dict[str, Path] = {}
# Recipes that call models are built on the tiny random model (plumbing, not quality), smaller:
SMALL = {
    "gsm8k_rejection_sampling.yaml": ["questions.limit=8", "solve.max_tokens=16"],
    "hh_constitutional.yaml": ["hh_raw.limit=10", "initial.max_tokens=12", "revised.max_tokens=12"],
}


def model_names(name: str) -> list[str]:
    from dataforge.recipe import load_recipe

    return list(load_recipe(RECIPES / name).recipe.models)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_lm):
    def get(name: str) -> Path:
        if name not in _builds:
            out = tmp_path_factory.mktemp(name.removesuffix(".yaml"))
            build(RECIPES / name, out, show_progress=False, **tiny_overrides(name, tiny_lm))
            _builds[name] = out
        return _builds[name]

    return get


def tiny_overrides(name: str, tiny_lm: Path) -> dict:
    spec = {"backend": "transformers", "model": str(tiny_lm), "device": "cpu"}
    return {"models": {m: spec for m in model_names(name)}, "settings": SMALL.get(name, [])}


@pytest.mark.parametrize("recipe", ALL)
def test_recipe_builds_and_every_dataset_loads(recipe, built, tiny_lm):
    out = built(recipe)
    datasets = sorted((out / "datasets").iterdir())
    assert datasets
    for ds_dir in datasets:
        dd = load_from_disk(str(ds_dir))
        assert isinstance(dd, DatasetDict)
        if not model_names(recipe):  # a random model may verify nothing: those splits may be empty
            assert all(len(s) > 0 for s in dd.values())
        assert (ds_dir / "card.md").exists()
    # a second build executes no step
    report = build(RECIPES / recipe, out, show_progress=False, **tiny_overrides(recipe, tiny_lm))
    assert report.executed == []
    for s in report.steps:  # the summary counts each input and output by name (eval sides apart)
        assert sum(s.inputs.values()) == s.rows_in and sum(s.outputs.values()) == s.rows_out, s.name
    con = duckdb.connect(str(out / "lineage.duckdb"), read_only=True)
    assert con.execute("SELECT bool_and(cache_hit) FROM latest_steps").fetchone() == (True,)


# inputs a step reads and never passes on: the eval side it compares against, the splits it audits
REFERENCE_INPUTS = {"dedup.exact": {"against"}, "dedup.minhash": {"against"}, "dedup.semantic": {"against"}}


def _references(kind: str, inputs: list[str]) -> set[str]:
    if kind == "split.audit":
        return set(inputs)
    if kind == "leakage.check":
        return set(inputs) - {"train"}
    return REFERENCE_INPUTS.get(kind, set()) & set(inputs)


@pytest.mark.parametrize("recipe", ALL)
def test_every_input_row_is_kept_dropped_or_a_parent(recipe, built, tiny_lm):
    """No silent drops, by the lineage of every step of every shipped recipe: each row a step is
    given (bar those it only compares against) is in one of its outputs, has a ``dropped`` event
    with a reason, or is the parent (an edge) of a row the step made."""
    from dataforge.engine.plan import plan_recipe

    out = built(recipe)
    overrides = tiny_overrides(recipe, tiny_lm)
    plan = plan_recipe(RECIPES / recipe, overrides["models"], overrides["settings"])
    con = duckdb.connect(str(out / "lineage.duckdb"), read_only=True)
    paths = {(s, o): p for s, o, p in con.execute("SELECT step, output, path FROM latest_artifacts").fetchall()}

    def ids(step: str, output: str) -> pl.Series:
        return pl.read_parquet(Path(paths[step, output]) / "*.parquet", columns=["_id"])["_id"]

    checked = 0
    for ps in plan.steps:
        passed_on = [ref for name, ref in ps.inputs.items() if name not in _references(ps.kind, list(ps.inputs))]
        if not passed_on:
            continue
        given = pl.concat([ids(ref.step, ref.output) for ref in passed_on]).unique()
        accounted = pl.concat(
            [ids(ps.name, o) for o in ps.outputs]
            + [
                pl.Series([r[0] for r in con.execute(sql, [ps.name]).fetchall()], dtype=pl.String)
                for sql in (
                    "SELECT row_id FROM latest_events WHERE step = ? AND action = 'dropped'",
                    "SELECT parent_id FROM latest_edges WHERE step = ?",
                )
            ]
        )
        lost = given.filter(~given.is_in(accounted.implode()))
        assert lost.is_empty(), (
            f"{recipe}: step '{ps.name}' ({ps.kind}) lost {lost.len()} rows, e.g. {lost.head(3).to_list()}"
        )
        checked += given.len()
    assert checked > 0


def test_gsm8k_reasoning_outputs(built):
    out = built("gsm8k_reasoning.yaml")
    sft = load_from_disk(str(out / "datasets" / "gsm8k_sft"))
    grpo = load_from_disk(str(out / "datasets" / "gsm8k_grpo"))
    assert set(sft) == {"train", "validation"} and set(grpo) == {"train", "test"}
    assert sft["train"].column_names == ["_id", "messages"]
    msgs = sft["train"][0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[1]["content"].startswith("<think>\n") and msgs[1]["content"].endswith("</answer>")
    assert "<<" not in msgs[1]["content"]
    # five terse solutions filtered out, one near-duplicate question; no train question is a GSM8K
    # test item (the two n-gram hits are templates with other numbers and answers, tested below)
    assert len(sft["train"]) + len(sft["validation"]) == 7473 - 5 - 1
    assert len(grpo["test"]) == 1319 and grpo["test"].column_names == ["_id", "prompt", "answer"]
    assert grpo["test"][0]["prompt"][0]["role"] == "system"
    # the SFT splits share no normalized question

    def questions(split: str) -> set[str]:
        qs = [m[-2]["content"] for m in sft[split]["messages"]]
        return set(pl.select(normalize_expr(pl.lit(pl.Series(qs)), lowercase=True)).to_series().to_list())

    assert not questions("train") & questions("validation")
    card = (out / "datasets" / "gsm8k_sft" / "card.md").read_text()
    assert "| filtered | filter:min_length | 5 |" in card and "language_modeling" in card
    meta = json.loads((out / "datasets" / "gsm8k_sft" / "dataforge.json").read_text())
    assert meta["splits"]["train"]["rows"] == len(sft["train"])


def test_gsm8k_why_and_query_answer(built, capsys):
    out = built("gsm8k_reasoning.yaml")
    assert (
        main(
            [
                "query",
                "--out",
                str(out),
                "--format",
                "json",
                "SELECT row_id, reason FROM latest_events WHERE step = 'filtered' ORDER BY row_id",
            ]
        )
        == 0
    )
    drops = json.loads(capsys.readouterr().out)
    assert {d["reason"] for d in drops} == {"filter:min_length"} and len(drops) == 5
    assert main(["why", drops[0]["row_id"], "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dropped by step 'filtered': filter:min_length" in text and "source: train_raw" in text
    assert main(["why", "gsm8k_train:0", "--out", str(out), "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    appearances = {(d["dataset"], d["split"], Path(d["recipe"]).name) for d in history["datasets"]}
    assert {
        ("gsm8k_grpo", "train", "gsm8k_reasoning.yaml"),
        ("gsm8k_sft", "train", "gsm8k_reasoning.yaml"),
    } <= appearances
    # query reads the artifacts and the exported datasets too
    assert (
        main(
            [
                "query",
                "--out",
                str(out),
                "--format",
                "csv",
                "SELECT count(*) AS n FROM dataset_gsm8k_grpo_test JOIN artifact_test_raw_data USING (_id)",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.split() == ["n", "1319"]


def test_hh_preferences_outputs(built):
    out = built("hh_preferences.yaml")
    dpo = load_from_disk(str(out / "datasets" / "hh_dpo"))
    rm = load_from_disk(str(out / "datasets" / "hh_rm"))
    rm_pairwise = load_from_disk(str(out / "datasets" / "hh_rm_pairwise"))
    assert dpo["train"].column_names == ["_id", "prompt", "chosen", "rejected"]
    from dataforge.lineage import open_read

    con = open_read(out)  # with the artifact views
    leaks = con.execute("SELECT count(*) FROM latest_events WHERE reason LIKE 'leakage:%'").fetchone()[0]
    assert leaks > 0  # HH conversations that open like an evaluation conversation
    # three HH test pairs with an empty side ("Assistant: " and nothing: the chosen response of rows
    # 516 and 1103, the rejected one of row 86): wherever the split puts them, each is dropped with
    # its reason (the DPO ranking as pair:empty_response, the reward-model format as
    # format:missing_field, the pairwise reward-model rows as pair:empty_response), never exported
    empty = con.execute(
        "SELECT row_id, step FROM latest_events WHERE reason IN ('format:missing_field', 'pair:empty_response')"
    ).fetchall()
    pair = {
        rid: rid.removeprefix("responses:").rsplit(":", 1)[0] if rid.startswith("responses:") else rid
        for rid, _ in empty
    }
    assert set(pair.values()) == {f"hh_harmless_test:{i}" for i in (86, 516, 1103)}
    exported = [r["_id"] for d in (dpo, rm, rm_pairwise) for s in d for r in d[s]]
    assert not [i for i in exported if any(f"hh_harmless_test:{n}:" in i + ":" for n in (86, 516, 1103))]
    unpaired = {pair[r] for r, step in empty if step in ("ranked", "rm")}  # (rm_pairwise reads rm's input too)
    assert sum(len(d[s]) for d in (dpo, rm) for s in ("train", "test")) + leaks + len(unpaired) == 2312 - 9
    matched = con.execute(
        "SELECT count(*) FROM latest_events e JOIN artifact_split_test t ON t._id = e.related_id "
        "WHERE e.reason LIKE 'leakage:%'"
    )
    assert matched.fetchone()[0] > 0  # the related row is the evaluation conversation
    con.close()
    raw = {r["_id"]: r for r in rm["train"]}
    assert rm_pairwise["train"].column_names == ["_id", "input", "output_a", "output_b", "preference"]
    for r in rm_pairwise["train"].select(range(50)):
        src = raw[r["_id"]]
        chosen, rejected = (r["output_a"], r["output_b"]) if r["preference"] == 0 else (r["output_b"], r["output_a"])
        assert (chosen, rejected) == (src["chosen"][0]["content"], src["rejected"][0]["content"])
        assert r["preference"] == int(unit_hash(0, r["_id"]) >= 0.5)  # the same side in every build
    assert 0.35 < sum(rm_pairwise["train"]["preference"]) / len(rm_pairwise["train"]) < 0.65
    # no prompt in two of the four splits (DPO train/test, RM train/test)
    parts = {f"{n}.{s}": {json.dumps(p) for p in d[s]["prompt"]} for n, d in (("dpo", dpo), ("rm", rm)) for s in d}
    for a in parts:
        for b in parts:
            assert a == b or not parts[a] & parts[b], (a, b)
    # the ranking path (chosen = rank 1, rejected = rank 2 → pairs) gives back the human pair
    first = dpo["train"][0]
    assert first["_id"].startswith("ranked:responses:") and first["_id"].endswith(":rejected")
    row = dpo["train"][0]
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    card = (out / "datasets" / "hh_dpo" / "card.md").read_text()
    assert "preference" in card and "same normalized `prompt` share a split" in card
    con = duckdb.connect(str(out / "lineage.duckdb"), read_only=True)
    reasons = con.execute(
        "SELECT reason, count(*) FROM latest_events WHERE action='dropped' AND step = 'pairs' GROUP BY 1"
    ).fetchall()
    assert reasons == [("parse:hh_roles_not_alternating", 9)]


def test_hh_chat_sft_outputs(built):
    """The HH transcripts read back into turns: multi-turn conversations that open with a request
    and end with an answer, split by their opening request, decontaminated, and their prompts."""
    out = built("hh_chat_sft.yaml")
    sft = load_from_disk(str(out / "datasets" / "hh_chat_sft"))
    prompts = load_from_disk(str(out / "datasets" / "hh_chat_prompts"))
    assert sft["train"].column_names == ["_id", "messages"] and prompts["train"].column_names == ["_id", "prompt"]
    for split in sft:
        for row in sft[split]:
            turns = row["messages"]
            assert turns[0]["role"] == "user" and turns[-1]["role"] == "assistant" and turns[-1]["content"].strip()
    assert max(len(r["messages"]) for r in sft["train"]) > 4  # multi-turn, as HH is
    # the four transcripts whose last answer is empty ("Assistant:" and nothing) are dropped, with the reason
    raw = [json.loads(line) for line in gzip.open(RECIPES / "data/hh-rlhf-harmless-base/test.jsonl.gz", "rt")]
    unanswered = {f"hh_harmless_test:{i}" for i, r in enumerate(raw) if r["chosen"].rstrip().endswith("Assistant:")}
    from dataforge.lineage import open_read

    con = open_read(out)
    dropped = dict(con.execute("SELECT row_id, reason FROM latest_events WHERE action = 'dropped'").fetchall())
    related = con.execute(
        "SELECT count(*) FROM latest_events e JOIN artifact_split_test t ON t._id = e.related_id "
        "WHERE e.reason LIKE 'leakage:%'"
    ).fetchone()[0]
    con.close()
    assert len(unanswered) == 4 and {i for i, r in dropped.items() if r == "format:no_response"} == unanswered
    # transcripts with two turns of one role in a row are kept, and flagged for the templates that refuse them
    roles = [re.findall(r"\n\n(Human|Assistant):", r["chosen"]) for r in raw]
    repeated = {f"hh_harmless_test:{i}" for i, rs in enumerate(roles) if any(a == b for a, b in itertools.pairwise(rs))}
    con = open_read(out)
    flagged = {
        r
        for (r,) in con.execute(
            "SELECT row_id FROM latest_events WHERE reason = 'format:roles_not_alternating'"
        ).fetchall()
    }
    con.close()
    assert flagged and flagged == repeated - unanswered
    leaks = [i for i, r in dropped.items() if r.startswith("leakage:")]
    assert leaks and related == len(leaks)  # each match names the test conversation it copies
    assert len(dropped) == 4 + len(leaks) and sum(len(sft[s]) for s in sft) == 2312 - len(dropped)
    # no opening request in both splits; the prompts are the same conversations up to their last request
    opening = {s: {r["messages"][0]["content"].strip().lower() for r in sft[s]} for s in sft}
    assert not opening["train"] & opening["test"]
    for split in sft:
        assert prompts[split]["_id"] == sft[split]["_id"]
        for conversation, prompt in zip(sft[split]["messages"][:200], prompts[split]["prompt"][:200], strict=True):
            last = max(k for k, t in enumerate(conversation) if t["role"] == "user")
            assert prompt == conversation[: last + 1]


def test_gsm8k_time_split_outputs(built):
    out = built("gsm8k_time_split.yaml")
    from dataforge.lineage import open_read

    con = open_read(out)  # the artifact views of `dataforge query`
    ranges = con.execute(
        "SELECT json_extract_string(e.detail_json, '$.split') AS s, min(a._ts), max(a._ts) "
        "FROM latest_events e JOIN artifact_dated_data a ON a._id = e.row_id "
        "WHERE e.step = 'split' AND e.action = 'split' GROUP BY 1 ORDER BY 2"
    ).fetchall()
    assert [r[0] for r in ranges] == ["train", "validation", "test"]
    assert ranges[0][2] < ranges[1][1] and ranges[1][2] < ranges[2][1]  # strictly ordered in time
    assert con.execute("SELECT count(*) FROM latest_events WHERE step = 'audit'").fetchone() == (0,)
    card = (out / "datasets" / "gsm8k_sft_by_time" / "card.md").read_text()
    assert "| train | test | 0 | 0 | 0 | 0 |" in card and "Timestamps are synthetic" in card
    assert "time order: rows of a later split not newer" in card  # cut by time: its order is checked


def test_demo_splits_share_no_prompt_or_near_duplicate(built):
    card = (built("gsm8k_reasoning.yaml") / "datasets" / "gsm8k_sft" / "card.md").read_text()
    assert "| train | validation | 0 | 0 | 0 | — |" in card  # a group split: time order is not its promise
    assert "time order not checked (the splits were not cut by time)" in card


def test_demo_lineage_holds_duplicates_with_representatives(built):
    con = duckdb.connect(str(built("gsm8k_reasoning.yaml") / "lineage.duckdb"), read_only=True)
    rows = con.execute("SELECT row_id, related_id, score FROM latest_events WHERE reason = 'near_duplicate'").fetchall()
    assert rows and all(r[1].startswith("gsm8k_") and 0.8 <= r[2] < 1 for r in rows)
    assert ("gsm8k_train:6691", "gsm8k_train:2483") in {(r[0], r[1]) for r in rows}


def test_gsm8k_data_plan_keeps_every_dataset_apart(built):
    out = built("gsm8k_data_plan.yaml")
    prompts: dict[str, set[str]] = {}
    for name in ("plan_sft", "plan_rm_prompts", "plan_rl", "plan_final_eval"):
        for split, rows in load_from_disk(str(out / "datasets" / name)).items():
            column = "messages" if name == "plan_sft" else "prompt"
            texts = [next(m["content"] for m in r if m["role"] == "user") for r in rows[column]]
            prompts[f"{name}/{split}"] = {" ".join(t.lower().split()) for t in texts}
    assert len(prompts) == 8 and sum(len(p) for p in prompts.values()) > 7000
    names = sorted(prompts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not prompts[a] & prompts[b], (a, b)
    con = duckdb.connect(str(out / "lineage.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM latest_events WHERE step = 'audit'").fetchone() == (0,)


def test_demo_leakage_report_and_card_say_gsm8k_train_is_clean(built):
    """GSM8K train holds templates of test items ("A train travels 270 miles in 3 hours…" vs "A plane
    travels 1200 miles in 3 hours…") but no test item: the check finds none, and says so."""
    out = built("gsm8k_reasoning.yaml")
    con = duckdb.connect(str(out / "lineage.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM latest_events WHERE reason LIKE 'leakage:%'").fetchone() == (0,)
    report = (out / "reports" / "leakage_leakage.md").read_text()
    assert "No training row matched an eval item." in report
    card = (out / "datasets" / "gsm8k_sft" / "card.md").read_text()
    assert "## Contamination" in card and "No training row matched an eval item." in card


def test_leakage_decisions_are_lineage_and_query_lists_contaminated_items(built, capsys):
    """hh_preferences: training conversations that open like an evaluation one are dropped; the
    lineage names the matched evaluation row, `dataforge query` lists the contaminated items, and
    the report and card show them."""
    out = built("hh_preferences.yaml")
    sql = (
        "SELECT step, related_id AS eval_item, count(*) AS train_rows FROM latest_events "
        "WHERE reason LIKE 'leakage:%' GROUP BY ALL ORDER BY ALL"
    )
    assert main(["query", "--out", str(out), "--format", "json", sql]) == 0
    items = json.loads(capsys.readouterr().out)
    assert items and {i["step"] for i in items} == {"dpo_clean", "rm_clean"}
    assert all(i["eval_item"].startswith("hh_harmless_test:") for i in items)
    report = (out / "reports" / "leakage_dpo_clean.md").read_text()
    assert "| test |" in report and "## Top" in report

    matches = pl.read_parquet(out / "reports" / "leakage_dpo_clean.parquet")
    assert set(matches["eval_id"]) == {i["eval_item"] for i in items if i["step"] == "dpo_clean"}
    card = (out / "datasets" / "hh_dpo" / "card.md").read_text()
    assert "## Contamination" in card and "| test |" in card
    # the card names each eval set by the artifact the check read, and the thresholds it used
    con = duckdb.connect(str(out / "lineage.duckdb"), read_only=True)
    (fp,) = con.execute("SELECT fingerprint FROM latest_steps WHERE step = 'split'").fetchone()
    assert "| test | `split.test` | " in card and f"| `{fp}` |" in card
    assert "Detectors and thresholds: cosine_min 0.78, code_cosine_min 0.68, static_min 0.88" in card
    # scores: each train row's closest eval item, the matched ones with their detector; a match by
    # similarity lies at or above the threshold, and the card plots them
    (step_fp,) = con.execute("SELECT fingerprint FROM latest_steps WHERE step = 'dpo_clean'").fetchone()
    scores = pl.read_parquet(out / "artifacts" / "dpo_clean" / step_fp / "scores" / "part-00000.parquet")
    assert scores["train_id"].n_unique() == scores.height
    matched = scores.filter(pl.col("detector").is_not_null())
    assert set(matched["train_id"]) == set(matches["train_id"])
    assert (matched.filter(pl.col("detector").is_in(["dense", "embedding"]))["margin"] >= 0).all()
    # conversations carry no numbers or answers to agree: no static match is a leak without the
    # transformer (at 0.88-0.90 they were other requests on nearby topics)
    assert "dense" not in set(matches["detector"]), matches.filter(pl.col("detector") == "dense")
    assert (scores.filter(pl.col("detector").is_null())["margin"] < 0).all()
    assert "](leakage_dpo_clean.png)" in card


def test_rejection_sampling_on_the_tiny_model(built):
    """The shipped recipe on a random model: every question sampled 4 times, every sample graded,
    SFT = exactly the samples whose answer is right, rollouts carry group statistics."""
    out = built("gsm8k_rejection_sampling.yaml")
    con = duckdb.connect(str(out / "lineage.duckdb"), read_only=True)
    graded = con.execute("SELECT count(*) FROM latest_events WHERE step = 'solve' AND action = 'generated'").fetchone()
    failed = con.execute("SELECT count(*) FROM latest_events WHERE step = 'solve' AND action = 'dropped'").fetchone()
    assert graded[0] + failed[0] == 8 * 4
    wrong = con.execute("SELECT count(*) FROM latest_events WHERE reason = 'verifier:wrong_answer'").fetchone()[0]
    sft = load_from_disk(str(out / "datasets" / "gsm8k_rs_sft"))["train"]
    assert len(sft) + wrong == graded[0]
    rollouts = load_from_disk(str(out / "datasets" / "gsm8k_rs_rollouts"))["train"]
    assert len(rollouts) == graded[0] and set(rollouts.column_names) >= {"prompt", "completion", "reward", "advantage"}
    card = (out / "datasets" / "gsm8k_rs_rollouts" / "card.md").read_text()
    assert "pass@4" in card and "completions" in card


def test_rejection_sampling_keeps_right_answers_and_pairs_them_against_wrong_ones(tmp_path, monkeypatch):
    """The same recipe against an OpenAI-compatible server whose answers are known: for each
    question, sample 0 is GSM8K's own solution, sample 1 a wrong answer, samples 2-3 no answer.
    The server is real HTTP; only its model is replaced by this oracle, to check which rows land where."""
    import threading

    from dataforge.llm.server import ModelServer

    rows = [json.loads(line) for line in (RECIPES / "data/gsm8k/train.jsonl").read_text().splitlines()[:8]]
    solutions = {r["question"]: r["answer"] for r in rows}

    def oracle(path, body, number):
        question = body["messages"][-1]["content"]
        reasoning, final = solutions[question].rsplit("####", 1)
        right = f"<think>\n{reasoning.strip()}\n</think>\n<answer>{final.strip()}</answer>"
        wrong = f"<think>a guess</think><answer>{float(final.replace(',', '')) * 3 + 7}</answer>"
        texts = [right, wrong, "I am not sure.", "no idea"][: body["n"]]
        choices = [{"index": i, "finish_reason": "stop", "message": {"content": t}} for i, t in enumerate(texts)]
        return 200, json.dumps({"choices": choices}).encode()

    server = ModelServer(("127.0.0.1", 0), backend=None, model_name="oracle", fault=oracle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        report = build(
            RECIPES / "gsm8k_rejection_sampling.yaml",
            tmp_path,
            show_progress=False,
            models={"policy": {"backend": "openai", "model": "oracle", "base_url": server.url}},
            settings=["questions.limit=8"],
        )
    finally:
        server.shutdown()
        server.server_close()
    assert report.datasets == {
        "gsm8k_rs_sft": {"train": 8},
        "gsm8k_rs_dpo": {"train": 16},  # per question: right vs each of the 3 wrong, max_pairs 2
        "gsm8k_rs_rollouts": {"train": 32},
    }
    sft = load_from_disk(str(tmp_path / "datasets" / "gsm8k_rs_sft"))["train"]
    assert all(m[-1]["content"].startswith("<think>") for m in sft["messages"])
    dpo = load_from_disk(str(tmp_path / "datasets" / "gsm8k_rs_dpo"))["train"]
    assert all(c[0]["content"].startswith("<think>\n") for c in dpo["chosen"])
    con = duckdb.connect(str(tmp_path / "lineage.duckdb"), read_only=True)
    # which sample and which question a chosen response came from
    chosen_parent = con.execute(
        "SELECT g.parent_id FROM latest_edges p JOIN latest_edges g ON g.child_id = p.parent_id "
        "WHERE p.relation = 'chosen' AND g.relation = 'generated_from' LIMIT 1"
    ).fetchone()[0]
    assert chosen_parent.startswith("gsm8k_train:")
    card = (tmp_path / "datasets" / "gsm8k_rs_rollouts" / "card.md").read_text()
    assert "| pass@1 | 0.250 |" in card and "| pass@4 | 1.000 |" in card


def test_constitutional_lineage_names_the_original_and_the_principles(built, capsys):
    """hh_constitutional on the tiny model: every response revised (a random model never says
    "No violation found"), SFT answers are the revisions, each DPO pair is revision vs original,
    and one lineage query walks from a chosen response to its original and its principles. A
    critique or revision the random model left blank (it happens, with principles drawn from the
    build's fingerprint, which holds the tiny model's temporary path) is no revision: a response
    blank in its first round is dropped by `revised` with its reason, one blank in its second
    keeps its first revision and is flagged; a blank original is no side of a DPO pair. Every
    response is accounted for, and no blank text is exported."""
    out = built("hh_constitutional.yaml")
    sft = load_from_disk(str(out / "datasets" / "hh_cai_sft"))
    dpo = load_from_disk(str(out / "datasets" / "hh_cai_dpo"))
    con = duckdb.connect(str(out / "lineage.duckdb"), read_only=True)

    def count(where: str) -> int:
        return con.execute(f"SELECT count(*) FROM latest_events WHERE {where}").fetchone()[0]

    lost = count("step = 'revised' AND action = 'dropped' AND reason LIKE 'generation_failed:empty_%'")
    cut = count("step = 'revised' AND action = 'flagged' AND reason LIKE 'generation_failed:empty_%'")
    unpaired = count("step = 'pairs' AND reason = 'pair:empty_response'")
    assert count("reason = 'format:missing_field'") == 0
    assert sum(len(s) for s in sft.values()) + lost == 10
    assert sum(len(s) for s in dpo.values()) + lost + unpaired == 10
    for split in dpo.values():
        assert all(turn["content"].strip() for row in split for side in ("chosen", "rejected") for turn in row[side])
    for split in sft.values():
        assert all(turn["content"].strip() for row in split for turn in row["messages"] if turn["role"] == "assistant")
    rows = con.execute(
        """
        SELECT pair.child_id, orig.parent_id AS original_response, ev.detail_json
        FROM latest_edges pair
        JOIN latest_edges orig ON orig.child_id = pair.parent_id AND orig.relation = 'revised_from'
        JOIN latest_events ev ON ev.row_id = pair.parent_id AND ev.reason = 'critique_revise'
        WHERE pair.relation = 'chosen'
        ORDER BY 1
        """
    ).fetchall()
    assert len(rows) == 10 - lost - unpaired
    principles = {"harmful", "dangerous_advice", "respectful", "honest"}
    for _pair, original, detail in rows:
        assert original.startswith("initial:hh_harmless_test:")
        d = json.loads(detail)
        assert d["rounds"] in (1, 2) and set(d["principles"]) <= principles
    assert sum(json.loads(d)["rounds"] == 1 for _, _, d in rows) <= cut
    revisions = count("reason LIKE 'critique:%' AND action = 'revised'")
    assert revisions == 20 - 2 * lost - cut
    rejected = con.execute(
        "SELECT count(*) FROM latest_edges WHERE relation = 'rejected' AND parent_id LIKE 'initial:%'"
    )
    assert rejected.fetchone() == (10 - lost - unpaired,)
    card = (out / "datasets" / "hh_cai_sft" / "card.md").read_text()
    assert "critique_revise" in card and f"{revisions} revisions" in card
    con.close()
    assert main(["why", rows[0][0], "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "derived from other rows" in text and "[chosen]" in text and "[rejected]" in text


def _front_matter(card: str) -> dict:
    import yaml

    assert card.startswith("---\n"), "the card opens with the Hub's YAML front matter"
    return yaml.safe_load(card.split("---\n")[1])


@pytest.mark.parametrize("recipe", ["gsm8k_reasoning.yaml", "hh_preferences.yaml"])
def test_cards_carry_hub_metadata_and_export_hub_round_trips_through_load_dataset(recipe, built, tmp_path, capsys):
    """Every exported dataset's card opens with the front matter the Hub reads (configs per
    split, dataset_info, the sources' licence from their LICENSE files, task, size, tags) and
    names every split and step; `dataforge export --hub` writes the Hub layout, and
    `datasets.load_dataset` reads the same splits and rows as `load_from_disk`."""
    from datasets import load_dataset

    out = built(recipe)
    hub = tmp_path / "hub"
    assert main(["export", "--out", str(out), "--hub", str(hub)]) == 0
    names = sorted(p.name for p in (out / "datasets").iterdir() if (p / "dataforge.json").exists())
    assert names and sorted(p.name for p in hub.iterdir()) == names
    for name in names:
        saved = load_from_disk(str(out / "datasets" / name))
        meta = json.loads((out / "datasets" / name / "dataforge.json").read_text())
        card = (out / "datasets" / name / "card.md").read_text()
        fm = _front_matter(card)
        assert set(fm) >= {"configs", "dataset_info", "license", "task_categories", "size_categories", "tags"}
        assert fm["license"] == "mit"  # GSM8K and HH-RLHF both ship an MIT LICENSE beside the data
        files = {f["split"]: f["path"] for f in fm["configs"][0]["data_files"]}
        assert files == {s: f"data/{s}-*" for s in saved}
        info_rows = {s["name"]: s["num_examples"] for s in fm["dataset_info"]["splits"]}
        assert info_rows == {s: len(saved[s]) for s in saved}
        assert [f["name"] for f in fm["dataset_info"]["features"]] == saved[next(iter(saved))].column_names
        assert all(f"| {s} |" in card for s in saved) and all(f"| {step} |" in card for step in meta["steps"])
        sections = ["Dataset Summary", "Dataset Structure", "Dataset Creation", "Considerations for Using the Data"]
        assert [
            h for h in (line[3:] for line in card.splitlines() if line.startswith("## ")) if h in sections
        ] == sections
        stats = card.split("## Statistics")[1].split("## Dataset Creation")[0]
        assert all(f"| {s} | {len(saved[s]):,} |" in stats for s in saved)
        assert (hub / name / "README.md").read_text() == card
        images = re.findall(r"\]\(([^)]+\.png)\)", card)
        audited = len(saved) > 1 and "No prompt column" not in card
        expected = {"lengths.png", "funnel.png"} | ({"split_audit.png"} if audited else set())
        expected |= {f"leakage_{step}.png" for step in meta["steps"] if f"From step `{step}` (leakage.check" in card}
        assert set(images) == expected
        for image in images:  # drawn beside the card, linked, copied to the Hub layout
            png = out / "datasets" / name / image
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert (hub / name / image).read_bytes() == png.read_bytes()
        # its own cache: datasets caches a local folder with a configs card by folder name alone
        loaded = load_dataset(str(hub / name), cache_dir=str(tmp_path / "hf-cache"))
        assert set(loaded) == set(saved)
        for split in saved:
            assert loaded[split].column_names == saved[split].column_names
            assert loaded[split].to_list() == saved[split].to_list()


def test_export_hub_names_the_build_that_has_no_datasets(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path / "nowhere"), "--hub", str(tmp_path / "hub")]) == 1
    assert "no exported dataset under" in capsys.readouterr().err
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("recipe", ["gsm8k_reasoning.yaml", "hh_preferences.yaml"])
def test_html_report_renders_in_headless_chromium(recipe, built):
    """<out>/report.html, opened in a real headless Chromium: no console or page error, no request
    beyond the file itself (images inline), every image decoded, every dataset's card and ten
    example rows per split, and an example's `dataforge why` history expands on a click."""
    from tests.browser import browser_page

    out = built(recipe)
    report = out / "report.html"
    names = sorted(p.name for p in (out / "datasets").iterdir() if (p / "dataforge.json").exists())
    linked = sum(len(re.findall(r"\]\([^)]+\.png\)", (out / "datasets" / n / "card.md").read_text())) for n in names)
    with browser_page() as page:
        problems, requests = [], []
        page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(report.as_uri(), wait_until="load")
        assert problems == [] and requests == [report.as_uri()]
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
        assert len(images) == linked and all(done and width > 0 for done, width, _ in images), images
        for name in names:
            section = page.locator(f"#dataset-{name}")
            assert section.locator(":scope > h2").inner_text() == f"Dataset {name}"
            for split in load_from_disk(str(out / "datasets" / name)).items():
                shown = section.locator(f"h3:text-is('Examples: {split[0]} (first {min(10, len(split[1]))} rows)')")
                assert shown.count() == 1
            assert section.locator("details.history").count() == sum(
                min(10, len(s)) for s in load_from_disk(str(out / "datasets" / name)).values()
            )
        history = page.locator("details.history").first
        assert history.evaluate("d => d.open") is False and not history.locator(".fate").is_visible()
        history.locator("summary").click()
        assert history.evaluate("d => d.open") is True and history.locator(".fate").is_visible()
        assert history.locator(".fate").inner_text().startswith("fate: kept: in dataset ")
        page.screenshot(path=str(out / "report.png"), full_page=False)
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# rows per batch for the streamed rebuild: many batches for every rows step of each recipe
STREAM_BATCH = {name: (3 if name in SMALL else 997) for name in ALL}


@pytest.mark.parametrize("recipe", ALL)
def test_streamed_in_small_batches_every_export_is_byte_identical(recipe, built, tiny_lm, tmp_path):
    """Streaming (engine.streaming) changes no output: every shipped recipe rebuilt from nothing
    at a few rows a batch exports the same bytes as the build at the default batch size, which
    runs these recipes' steps on one batch each (none has 100,000 rows), and decides the same
    events and edges. The model requests come from the first build's cache: a model's answer
    to a request is not what is under test, the engine's bookkeeping of it is."""
    report = _rebuilt_alike(recipe, built, tiny_lm, tmp_path / "streamed")
    many = list((tmp_path / "streamed" / "artifacts").glob("*/*/*/part-00001.parquet"))
    assert many, "no step ran on more than one batch: the test would prove nothing"
    assert report.tasks == {}


_ray_tasks: dict[str, dict[str, int]] = {}


@pytest.mark.parametrize("recipe", ALL)
def test_on_ray_every_export_is_byte_identical(recipe, built, tiny_lm, tmp_path, ray_local):
    """The Ray executor (engine.ray_runner) runs the same step functions as tasks on a local Ray
    instance and gives what the local executor gives: every shipped recipe rebuilt from nothing
    on Ray at a few rows a batch exports the same bytes and decides the same events and edges."""
    report = _rebuilt_alike(recipe, built, tiny_lm, tmp_path / "ray", executor="ray")
    assert report.tasks.get("rows", 0) > 1, "no rows step ran on Ray in batches: the test would prove nothing"
    _ray_tasks[recipe] = report.tasks


def test_on_ray_the_shipped_recipes_ran_key_steps_as_a_shuffle_and_buckets(built, tiny_lm, tmp_path, ray_local):
    """Among the shipped recipes, some key step (exact dedup, preference pairs, rollout groups)
    ran on Ray by buckets, and MinHash dedup computed its signatures in Ray tasks: the
    equivalence above covers the shuffle and the global step's divided work too."""
    for recipe in ALL:
        if recipe not in _ray_tasks:  # run alone: build them here
            _ray_tasks[recipe] = _rebuilt_alike(recipe, built, tiny_lm, tmp_path / recipe, executor="ray").tasks
    assert sum(t.get("partition", 0) for t in _ray_tasks.values()) > 1
    assert sum(t.get("bucket", 0) for t in _ray_tasks.values()) > 1
    assert _ray_tasks["gsm8k_reasoning.yaml"].get("map", 0) > 1  # its MinHash signatures, batch by batch


def _rebuilt_alike(recipe: str, built, tiny_lm, out: Path, **kw):
    """Rebuild ``recipe`` from nothing into ``out`` at ``STREAM_BATCH`` rows a batch (``kw``: more
    build options) and check that it exports the bytes of the default build and decides the same
    events and edges; returns the rebuild's report."""
    from tests.engine.test_runner import _tree_hashes

    whole = built(recipe)
    (out / "cache").mkdir(parents=True)
    shutil.copy(whole / ".dataforge.json", out / ".dataforge.json")
    if (whole / "cache" / "llm.sqlite").exists():
        shutil.copy(whole / "cache" / "llm.sqlite", out / "cache" / "llm.sqlite")
    report = build(
        RECIPES / recipe,
        out,
        show_progress=False,
        batch_rows=STREAM_BATCH[recipe],
        **tiny_overrides(recipe, tiny_lm),
        **kw,
    )
    assert max(s.rows_in for s in report.steps) < 100_000
    assert _tree_hashes(whole / "datasets") == _tree_hashes(out / "datasets")
    for table, columns in (
        ("latest_events", "step, row_id, action, reason, related_id, score, detail_json"),
        ("latest_edges", "step, child_id, parent_id, relation"),
    ):
        query = f"SELECT {columns} FROM {table} ORDER BY ALL"
        with duckdb.connect(str(whole / "lineage.duckdb"), read_only=True) as a:
            with duckdb.connect(str(out / "lineage.duckdb"), read_only=True) as b:
                assert a.execute(query).fetchall() == b.execute(query).fetchall(), table
    return report
