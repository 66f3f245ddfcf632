"""parse.gsm8k and parse.hh_rlhf on the real shipped data."""

from __future__ import annotations

import gzip
import json

import polars as pl

from dataforge.steps.parse import Gsm8kConfig, HhConfig, parse_gsm8k, parse_hh_rlhf, split_hh_conversation
from tests.conftest import GSM8K, HH


def _gsm8k(split: str) -> pl.DataFrame:
    df = pl.read_ndjson(GSM8K / f"{split}.jsonl")
    return df.with_columns(pl.format("gsm8k_{}:{}", pl.lit(split), pl.int_range(pl.len())).alias("_id"))


def test_gsm8k_every_real_row_parses(ctx):
    for split in ("train", "test"):
        df = _gsm8k(split)
        res = parse_gsm8k({"data": df}, Gsm8kConfig(), ctx)
        out = res.tables["data"]
        assert out.height == df.height and res.events[0].is_empty()
        assert not out["reasoning"].str.contains("<<").any()
        assert not out["reasoning"].str.contains("####").any()
        expected = df["answer"].str.split("#### ").list.last().str.replace_all(",", "").str.strip_chars()
        assert out["final_answer"].to_list() == expected.to_list()


def test_gsm8k_first_row_exactly(ctx):
    out = parse_gsm8k({"data": _gsm8k("train").head(1)}, Gsm8kConfig(), ctx).tables["data"]
    assert out["reasoning"][0] == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    )
    assert out["final_answer"][0] == "72"


def test_gsm8k_without_question_or_final_answer_is_dropped(ctx):
    """A row with a blank question (it was kept, and became a blank prompt) or no numeric final
    answer is dropped with its reason, one reason a row."""
    df = pl.DataFrame(
        {
            "_id": ["a", "b", "c", "d", "e"],
            "question": ["Q1?", "Q2?", "Q3?", " \n", None],
            "answer": ["x\n#### 1,234", "no final line", "y\n#### many", "z\n#### 5", "no final line"],
        }
    )
    res = parse_gsm8k({"data": df}, Gsm8kConfig(), ctx)
    assert res.tables["data"]["final_answer"].to_list() == ["1234"]
    assert res.tables["data"].columns == ["_id", "question", "answer", "reasoning", "final_answer"]
    drops = pl.concat(res.events).sort("row_id").select("row_id", "reason").rows()
    assert drops == [
        ("b", "parse:gsm8k_no_final_answer"),
        ("c", "parse:gsm8k_no_final_answer"),
        ("d", "parse:gsm8k_no_question"),
        ("e", "parse:gsm8k_no_question"),
    ]
    # rows with no question column at all: question: null
    res = parse_gsm8k({"data": df.drop("question")}, Gsm8kConfig(question=None), ctx)
    assert res.tables["data"]["_id"].to_list() == ["a", "d"]
    # a decimal or a fraction is an answer (GSM8K-format sets beyond GSM8K's integers); "3/4 cup" is not
    other = pl.DataFrame(
        {"_id": ["f", "g", "h"], "question": ["Q?"] * 3, "answer": ["x\n#### 3/4", "x\n#### -2.5", "x\n#### 3/4 cup"]}
    )
    res = parse_gsm8k({"data": other}, Gsm8kConfig(), ctx)
    assert res.tables["data"]["final_answer"].to_list() == ["3/4", "-2.5"]
    assert pl.concat(res.events)["row_id"].to_list() == ["h"]


def test_hh_real_data_pairs_and_drops(ctx):
    rows = [json.loads(line) for line in gzip.open(HH / "test.jsonl.gz", "rt")]
    df = pl.DataFrame(rows).with_columns(pl.format("hh:{}", pl.int_range(pl.len())).alias("_id"))
    res = parse_hh_rlhf({"data": df}, HhConfig(), ctx)
    out = res.tables["data"]
    ev = res.events[0]
    assert out.height + ev.height == df.height == 2312
    assert ev.height == 9 and set(ev["reason"]) == {"parse:hh_roles_not_alternating"}
    first = out.row(0, named=True)
    assert first["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert first["prompt"][-1]["role"] == "user"
    assert [m["role"] for m in first["chosen"]] == ["assistant"] == [m["role"] for m in first["rejected"]]
    assert first["chosen"] != first["rejected"]
    # every kept prompt alternates user/assistant and ends with the user
    for prompt in out["prompt"].to_list():
        assert [m["role"] for m in prompt] == ["user", "assistant"] * (len(prompt) // 2) + ["user"]


def test_hh_malformed_reasons():
    assert split_hh_conversation("Human: hi\n\nAssistant: yo")[1] == "parse:hh_no_leading_human"
    assert split_hh_conversation("\n\nHuman: a\n\nHuman: b\n\nAssistant: c")[1] == "parse:hh_roles_not_alternating"
    assert split_hh_conversation("\n\nHuman: a\n\nAssistant: b\n\nHuman: c")[1] == "parse:hh_last_turn_not_assistant"
    msgs, err = split_hh_conversation("\n\nHuman: a \n\nAssistant: b")
    assert err is None and msgs == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


def test_hh_prefix_mismatch_and_identical(ctx):
    df = pl.DataFrame(
        {
            "_id": ["x", "y"],
            "chosen": ["\n\nHuman: a\n\nAssistant: b", "\n\nHuman: a\n\nAssistant: b"],
            "rejected": ["\n\nHuman: OTHER\n\nAssistant: c", "\n\nHuman: a\n\nAssistant: b"],
        }
    )
    ev = parse_hh_rlhf({"data": df}, HhConfig(), ctx).events[0]
    assert ev["reason"].to_list() == ["parse:hh_prefix_mismatch", "parse:hh_identical"]
