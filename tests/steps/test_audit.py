"""split.audit: catches planted leaks of every kind, passes clean splits, fails strict builds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from dataforge.engine.runner import build
from dataforge.errors import DataError, StepError
from dataforge.steps.audit import AuditConfig, split_audit
from tests.conftest import GSM8K


def _gsm8k(n: int, offset: int = 0, prefix: str = "g") -> pl.DataFrame:
    df = pl.read_ndjson(GSM8K / "train.jsonl").slice(offset, n)
    return df.with_columns(pl.format(prefix + ":{}", pl.int_range(pl.len()) + offset).alias("_id"))


def test_planted_leaks_are_found(ctx):
    train = _gsm8k(300)
    test = _gsm8k(100, offset=1000, prefix="t")
    verbatim = train[5].with_columns(pl.lit("t:x1").alias("_id"))
    other_target = train[6].with_columns(pl.lit("t:x2").alias("_id"), pl.lit("different\n#### 0").alias("answer"))
    q = train["question"][7]
    invisible = train[8].with_columns(pl.lit("t:x4").alias("_id"), pl.col("question") + "\u200b")
    reworded = train[7].with_columns(
        pl.lit("t:x3").alias("_id"), pl.lit(q.replace(".", "!", 1) + " Thanks.").alias("question")
    )
    test = pl.concat([test, verbatim, other_target, reworded, invisible])
    res = split_audit({"train": train, "test": test}, AuditConfig(prompt="question", target="answer"), ctx)
    f = res.tables["findings"]
    got = {(r["finding"], r["row_a"], r["row_b"]) for r in f.iter_rows(named=True)}
    assert ("exact_overlap", "g:5", "t:x1") in got
    assert ("same_prompt_different_target", "g:6", "t:x2") in got
    assert ("near_overlap", "g:7", "t:x3") in got
    assert ("exact_overlap", "g:8", "t:x4") in got  # a trailing zero-width space is no new prompt
    assert f.height == 4  # nothing else: the 100 other test items are clean
    ev = res.events[0]
    assert set(ev["action"]) == {"flagged"}
    assert set(ev["reason"]) == {"audit:exact_overlap", "audit:same_prompt_different_target", "audit:near_overlap"}
    assert ev.filter(pl.col("row_id") == "t:x3")["related_id"].item() == "g:7"
    assert 0.8 <= ev.filter(pl.col("row_id") == "t:x3")["score"].item() < 1


def test_blank_prompts_in_two_splits_are_no_overlap(ctx):
    """Two rows with nothing in their prompt fields (empty, null, whitespace) hash alike, but
    neither holds anything the other could leak: no finding. A real copy beside them still is."""
    blanks = pl.DataFrame({"question": ["", None, "  \n"], "answer": ["#### 1", "#### 1", "#### 1"]})
    train = pl.concat([_gsm8k(20), blanks.with_columns(pl.format("g:blank{}", pl.int_range(3)).alias("_id"))])
    test = pl.concat(
        [
            _gsm8k(20, offset=500, prefix="t"),
            blanks.with_columns(pl.format("t:blank{}", pl.int_range(3)).alias("_id")),
            train[4].with_columns(pl.lit("t:copy").alias("_id")),
        ]
    )
    for target in (None, "answer"):
        res = split_audit({"train": train, "test": test}, AuditConfig(prompt="question", target=target), ctx)
        f = res.tables["findings"]
        assert f.select("finding", "row_a", "row_b").rows() == [("exact_overlap", "g:4", "t:copy")], target


def test_a_prompt_as_messages_and_as_formatted_text_is_one_prompt(ctx):
    """Train holds conversations as messages lists, test the same prompts as ChatML text: an exact
    overlap (the format's tokens and role labels kept them apart)."""
    qs = [f"Question {i}: how many apples are left?" for i in range(5)]
    train = pl.DataFrame(
        {"_id": [f"g:{i}" for i in range(5)], "prompt": [[{"role": "user", "content": q}] for q in qs]}
    )
    test = pl.DataFrame(
        {
            "_id": ["t:0", "t:1"],
            "prompt": [f"<|im_start|>user\n{qs[3]}<|im_end|>", "<|im_start|>user\nAnother one?<|im_end|>"],
        }
    )
    res = split_audit({"train": train, "test": test}, AuditConfig(prompt="prompt"), ctx)
    assert res.tables["findings"].select("finding", "row_a", "row_b").rows() == [("exact_overlap", "g:3", "t:0")]


def test_a_prompt_with_spaces_beside_its_punctuation_is_the_same_prompt(ctx):
    train = pl.DataFrame({"_id": ["g:0", "g:1"], "q": ["What is 2 + 2 ?", "Name a colour , please ."]})
    test = pl.DataFrame({"_id": ["t:0", "t:1"], "q": ["what is 2+2?", "Name a color, please."]})
    res = split_audit({"train": train, "test": test}, AuditConfig(prompt="q", near=False), ctx)
    assert res.tables["findings"].select("finding", "row_a", "row_b").rows() == [("exact_overlap", "g:0", "t:0")]


def test_time_order_finding(ctx):
    t0 = datetime(2023, 1, 1, tzinfo=timezone.utc)
    a = _gsm8k(20).with_columns(pl.Series("_ts", [t0 + timedelta(days=i) for i in range(20)]))
    b = _gsm8k(20, offset=100, prefix="b").with_columns(
        pl.Series("_ts", [t0 + timedelta(days=30 + i) if i else t0 for i in range(20)])
    )
    res = split_audit({"a": a, "b": b}, AuditConfig(prompt="question", time_order=["a", "b"]), ctx)
    f = res.tables["findings"]
    assert f.select("finding", "row_a", "row_b").rows() == [("time_order", "g:19", "b:100")]


def test_strict_audit_names_the_rows(ctx):
    train = _gsm8k(50)
    test = pl.concat([_gsm8k(10, offset=500, prefix="t"), train[3].with_columns(pl.lit("t:leak").alias("_id"))])
    with pytest.raises(DataError, match=r"found 1 leak\(s\) \(exact_overlap: 1\).*test:t:leak ~ train:g:3"):
        split_audit({"train": train, "test": test}, AuditConfig(prompt="question", strict=True), ctx)


STRICT = """
name: leaky
steps:
  raw:
    kind: source
    path: pool.jsonl
  split:
    kind: split
    inputs: raw
    random: true
    fractions: {train: 0.5, test: 0.5}
    seed: 3
  audit:
    kind: split.audit
    inputs: {train: split.train, test: split.test}
    prompt: question
    strict: true
"""


def test_strict_audit_fails_the_build_when_a_random_split_leaks(ws):
    rows = [{"question": f"What is {i} plus {i}, as a number please?"} for i in range(40)]
    ws.jsonl("pool.jsonl", rows + rows)  # every question twice: a random split must leak
    with pytest.raises(StepError, match=r"step 'audit': split audit \(strict\) found"):
        build(ws.recipe(STRICT), ws.out, show_progress=False)
    # the same pool, split by group, passes
    recipe = ws.recipe(STRICT.replace("random: true", "group: question"))
    build(recipe, ws.out, show_progress=False)
