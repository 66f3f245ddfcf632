"""split: every mode; deterministic, independent of row order; nothing that belongs together
crosses a split, across several datasets carved from one pool."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from itertools import combinations

import polars as pl
import pytest
from pydantic import ValidationError

from dataforge.errors import DataError
from dataforge.steps.split import SplitConfig, split


def _pool(n: int = 2000) -> pl.DataFrame:
    """Every question three times with different targets, in different surface forms; every
    fifth question also has a near-duplicate rewording; a difficulty column to stratify on."""
    rows = []
    for i in range(n):
        q = f"Question number {i // 3} asks about apples and pears in the market today?"
        q = q.upper() if i % 3 == 1 else (q + "  " if i % 3 == 2 else q)
        rows.append({"_id": f"p:{i}", "q": q, "target": f"t{i}", "level": ["easy", "mid", "hard"][(i // 3) % 3]})
    for i in range(0, n // 3, 5):
        rows.append(
            {
                "_id": f"n:{i}",
                "q": f"Question number {i} asks about apples and pears in the market today!!",
                "target": "x",
                "level": "easy",
            }
        )
    return pl.DataFrame(rows)


def _assignment(res) -> dict[str, str]:
    return {rid: name for name, df in res.tables.items() for rid in df["_id"].to_list()}


def _groups_do_not_cross(res, key=lambda q: q.lower().strip(" !?")) -> None:
    seen: dict[str, str] = {}
    for name, df in res.tables.items():
        for q in df["q"].to_list():
            assert seen.setdefault(key(q), name) == name, f"{q!r} in {seen[key(q)]} and {name}"


def test_group_split_keeps_groups_together(ctx):
    cfg = SplitConfig(group="q", fractions={"train": 0.8, "validation": 0.1, "test": 0.1}, seed=3)
    res = split({"data": _pool()}, cfg, ctx)
    _groups_do_not_cross(res, key=lambda q: q.lower().strip())
    sizes = {k: v.height for k, v in res.tables.items()}
    assert sum(sizes.values()) == _pool().height
    assert 0.75 < sizes["train"] / sum(sizes.values()) < 0.85
    ev = res.events[0]
    assert ev.height == _pool().height and set(ev["reason"]) == {"split:group"}
    assert json.loads(ev["detail_json"][0])["unit_rows"] == 3


def test_blank_group_keys_join_nothing_and_invisible_characters_change_no_key(ctx):
    """Rows whose group field is null or blank have no group: each is its own unit, drawn by its
    id (they were one unit, so a ``group: conversation_id`` that most rows lack put all of those
    rows in one split). A prompt with a zero-width space or a byte-order mark is the same prompt."""
    rows = [{"_id": f"b:{i}", "q": [None, "", "  \n "][i % 3]} for i in range(300)]
    rows += [
        {"_id": f"q:{i}:{j}", "q": f"Question {i}?" + ["", "\u200b", " \ufeff", "\u00ad"][j]}
        for i in range(50)
        for j in range(4)
    ]
    cfg = SplitConfig(group="q", fractions={"train": 0.5, "test": 0.5}, seed=3)
    res = split({"data": pl.DataFrame(rows)}, cfg, ctx)
    where = _assignment(res)
    blank = [where[f"b:{i}"] for i in range(300)]
    assert 100 < blank.count("train") < 200  # (all 300 went to one split)
    for i in range(50):
        assert len({where[f"q:{i}:{j}"] for j in range(4)}) == 1, i
    units = {
        json.loads(d)["unit_rows"]
        for r, d in res.events[0].select("row_id", "detail_json").rows()
        if r.startswith("b:")
    }
    assert units == {1}
    # the same rows in another order: the same splits
    again = split({"data": pl.DataFrame(rows).reverse()}, cfg, ctx)
    assert _assignment(again) == where


def test_spaces_beside_punctuation_join_groups_without_moving_any_other_unit(ctx):
    """ "What is 2 + 2 ?" (tokenized text, as older datasets hold it) and "What is 2+2?" were two
    groups, so one prompt could be in train and test. They are one now, and the other units keep
    their splits: each unit is still drawn from its own (unfolded) key."""
    qs = [f"How many apples does shop {i} sell , in total ?" for i in range(300)]
    base = pl.DataFrame({"_id": [f"r:{i}" for i in range(300)], "q": qs})
    cfg = SplitConfig(group="q", fractions={"train": 0.5, "test": 0.5}, seed=7)
    before = _assignment(split({"data": base}, cfg, ctx))
    variants = pl.DataFrame(
        {"_id": [f"v:{i}" for i in range(300)], "q": [q.replace(" , ", ", ").replace(" ?", "?") for q in qs]}
    )
    after = _assignment(split({"data": pl.concat([base, variants])}, cfg, ctx))
    assert all(after[f"v:{i}"] == after[f"r:{i}"] for i in range(300))  # each variant with its original
    moved = [i for i in range(300) if after[f"r:{i}"] != before[f"r:{i}"]]
    assert moved == []  # the spaced form sorts first (" " < ","), so every unit keeps its draw
    assert set(before.values()) == {"train", "test"}


def test_one_prompt_in_any_chat_format_is_one_group(ctx):
    """A prompt written in ChatML, Llama 3, Gemma or HH form, or as "user: …", is one group key, so
    it never lands in two splits (the format's tokens and role names made each form its own group)."""
    forms = [
        "<|im_start|>user\n{q}<|im_end|>",
        "<|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>",
        "<start_of_turn>user\n{q}<end_of_turn>",
        "\n\nHuman: {q}",
        "user: {q}",
    ]
    rows = [{"_id": f"q:{i}:{j}", "q": f.format(q=f"Question {i}?")} for i in range(60) for j, f in enumerate(forms)]
    res = split({"data": pl.DataFrame(rows)}, SplitConfig(group="q", fractions={"a": 0.5, "b": 0.5}, seed=5), ctx)
    where = _assignment(res)
    assert all(len({where[f"q:{i}:{j}"] for j in range(len(forms))}) == 1 for i in range(60))
    assert 15 < sum(where[f"q:{i}:0"] == "a" for i in range(60)) < 45


def test_cluster_keeps_near_duplicates_together(ctx):
    df = _pool(600)
    group_only = split({"data": df}, SplitConfig(group="q", fractions={"a": 0.5, "b": 0.5}, seed=2), ctx)
    a = _assignment(group_only)
    crossing = [i for i in range(0, 200, 5) if a[f"n:{i}"] != a[f"p:{3 * i}"]]
    assert crossing  # with groups alone, rewordings land on the other side of the cut
    cfg = SplitConfig(group="q", cluster={"fields": ["q"], "threshold": 0.7}, fractions={"a": 0.5, "b": 0.5}, seed=2)
    res = split({"data": df}, cfg, ctx)
    _groups_do_not_cross(res)
    assert set(res.events[0]["reason"]) == {"split:group+cluster"}


def test_cluster_from_an_id_column(ctx):
    df = pl.DataFrame({"_id": [f"r{i}" for i in range(100)], "_cluster_id": [i // 4 for i in range(100)]})
    res = split({"data": df}, SplitConfig(cluster={"column": "_cluster_id"}, fractions={"a": 0.5, "b": 0.5}), ctx)
    for t in res.tables.values():
        others = pl.concat([o for o in res.tables.values() if o is not t])
        assert not set(t["_cluster_id"]) & set(others["_cluster_id"])


def test_several_datasets_from_one_pool_never_cross(ctx):
    fractions = {
        "ft_train": 0.4,
        "ft_validation": 0.05,
        "ft_test": 0.05,
        "rm_train": 0.15,
        "rm_test": 0.05,
        "rl_train": 0.15,
        "rl_test": 0.05,
        "final_eval": 0.1,
    }
    cfg = SplitConfig(group="q", cluster={"fields": ["q"], "threshold": 0.7}, fractions=fractions, seed=11)
    res = split({"data": _pool()}, cfg, ctx)
    assert set(res.tables) == set(fractions) and all(t.height for t in res.tables.values())
    keys = {n: {q.lower().strip(" !?") for q in t["q"]} for n, t in res.tables.items()}
    for a, b in combinations(fractions, 2):
        assert not keys[a] & keys[b], (a, b)


def test_stratified_split_keeps_proportions_per_stratum(ctx):
    cfg = SplitConfig(group="q", stratify="level", fractions={"train": 0.7, "test": 0.3}, seed=4)
    res = split({"data": _pool(3000)}, cfg, ctx)
    _groups_do_not_cross(res, key=lambda q: q.lower().strip())
    both = pl.concat([t.with_columns(pl.lit(n).alias("s")) for n, t in res.tables.items()])
    shares = both.group_by("level").agg((pl.col("s") == "test").mean().alias("share"))
    for share in shares["share"]:
        assert abs(share - 0.3) < 0.01
    assert set(res.events[0]["reason"]) == {"split:group+stratified"}


@pytest.mark.parametrize(
    "cfg",
    [
        SplitConfig(group="q", fractions={"train": 0.5, "test": 0.5}, seed=1),
        SplitConfig(group="q", cluster={"fields": ["q"], "threshold": 0.7}, fractions={"a": 0.6, "b": 0.4}, seed=1),
        SplitConfig(group="q", stratify="level", fractions={"a": 0.6, "b": 0.4}, seed=1),
        SplitConfig(random=True, fractions={"a": 0.6, "b": 0.4}, seed=1),
    ],
    ids=["group", "cluster", "stratified", "random"],
)
def test_assignment_independent_of_row_order(ctx, cfg):
    df = _pool(900)
    a = _assignment(split({"data": df}, cfg, ctx))
    b = _assignment(split({"data": df.sample(fraction=1.0, shuffle=True, seed=99)}, cfg, ctx))
    assert a == b


def test_random_split_is_seeded_and_says_so(ctx):
    df = _pool(500)
    cfg = SplitConfig(random=True, fractions={"train": 0.9, "test": 0.1}, seed=5)
    assert _assignment(split({"data": df}, cfg, ctx)) == _assignment(split({"data": df}, cfg, ctx))
    other = SplitConfig(random=True, fractions={"train": 0.9, "test": 0.1}, seed=6)
    assert _assignment(split({"data": df}, cfg, ctx)) != _assignment(split({"data": df}, other, ctx))
    assert "can leak" in split.card_note(cfg)


def _timed(n: int = 400) -> pl.DataFrame:
    start = datetime(2023, 1, 1, tzinfo=timezone.utc)
    return pl.DataFrame(
        {
            "_id": [f"t:{i}" for i in range(n)],
            "_ts": [start + timedelta(days=i) if i % 50 else None for i in range(n)],
            "q": [f"question {i % 370}" for i in range(n)],  # the last 30 rows repeat early questions
        }
    ).with_columns(pl.col("_ts").cast(pl.Datetime("us", "UTC")))


def test_time_split_by_cutoffs(ctx):
    cfg = SplitConfig(
        time={"splits": ["train", "validation", "test"], "cutoffs": ["2023-07-01", "2023-10-01"], "missing": "undated"}
    )
    res = split({"data": _timed()}, cfg, ctx)
    assert set(res.tables) == {"train", "validation", "test", "undated"}
    cut1, cut2 = datetime(2023, 7, 1, tzinfo=timezone.utc), datetime(2023, 10, 1, tzinfo=timezone.utc)
    assert res.tables["train"]["_ts"].max() < cut1 <= res.tables["validation"]["_ts"].min()
    assert res.tables["validation"]["_ts"].max() < cut2 <= res.tables["test"]["_ts"].min()
    assert res.tables["undated"]["_ts"].null_count() == res.tables["undated"].height == 8


def test_time_split_with_groups_uses_each_groups_earliest_time(ctx):
    cfg = SplitConfig(group="q", time={"splits": ["train", "test"], "quantiles": [0.8], "missing": "train"})
    res = split({"data": _timed()}, cfg, ctx)
    # a question first seen early stays in train; its late repeats are dropped, not moved
    assert set(res.tables["train"]["q"]) >= {f"question {i}" for i in range(1, 30)}  # row 0 is undated
    assert not set(res.tables["train"]["q"]) & set(res.tables["test"]["q"])
    assert res.tables["train"]["_ts"].max() < res.tables["test"]["_ts"].min()
    dropped = res.events[1]
    assert set(dropped["reason"]) == {"split:late_duplicate"} and dropped.height == 29
    assert dropped.filter(pl.col("row_id") == "t:371")["related_id"].item() == "t:1"


def test_time_split_errors(ctx):
    no_missing = SplitConfig(time={"splits": ["a", "b"], "cutoffs": ["2023-06-01"]})
    with pytest.raises(DataError, match=r"have no timestamp.*time\.missing"):
        split({"data": _timed()}, no_missing, ctx)
    outside = SplitConfig(time={"splits": ["a", "b"], "cutoffs": ["2030-01-01"], "missing": "a"})
    with pytest.raises(DataError, match=r"time\.cutoffs: cut-off 2030-01-01.*outside the data.s range"):
        split({"data": _timed()}, outside, ctx)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"group": "q", "fractions": {"a": 0.5, "b": 0.6}}, "sum to 1"),
        ({"fractions": {"a": 0.5, "b": 0.5}}, "ask for one explicitly with 'random: true'"),
        ({"random": True, "group": "q", "fractions": {"a": 0.5, "b": 0.5}}, "does not combine"),
        ({"random": True, "fractions": {"a": 1.0}}, "at least two"),
        ({"random": True, "fractions": {"a": 0.0, "b": 1.0}}, "between 0 and 1"),
        ({"time": {"splits": ["a", "b"], "cutoffs": ["2023-01-01", "2023-02-01"]}}, "need 1 cut-offs"),
        ({"time": {"splits": ["a", "b", "c"], "cutoffs": ["2023-02-01", "2023-01-01"]}}, "must increase"),
        ({"cluster": {"fields": ["q"], "threshold": 1.5}, "fractions": {"a": 0.5, "b": 0.5}}, "between 0 and 1"),
        (
            {"group": "q", "fractions": {"a": 0.5, "b": 0.5}, "time": {"splits": ["a", "b"], "quantiles": [0.5]}},
            "exactly one of 'fractions'",
        ),
        ({"cluster": {"column": "c"}, "group_turns": 1, "fractions": {"a": 0.5, "b": 0.5}}, "'group_turns' needs"),
        ({"group": "q", "group_turns": 0, "fractions": {"a": 0.5, "b": 0.5}}, "counts user turns from 1"),
    ],
)
def test_split_config_errors(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        SplitConfig(**kwargs)


def test_group_turns_keeps_conversations_that_open_alike_together(ctx):
    """HH-style prompts: 60 requests, each opening two conversations that go on differently. By
    the whole prompt they are 120 groups and pairs straddle splits; by the first user turn, 60."""
    from dataforge.text.fields import MESSAGES

    rows = []
    for i in range(60):
        for j in range(2):
            turns = [
                {"role": "user", "content": f"Request number {i}: how do I fix my bike?"},
                {"role": "assistant", "content": f"Which part is broken ({j})?"},
                {"role": "user", "content": ["The chain.", "The brakes, and the light too."][j]},
            ]
            rows.append({"_id": f"c:{i}:{j}", "prompt": turns})
    df = pl.DataFrame(rows, schema={"_id": pl.String, "prompt": MESSAGES})

    def crossing(**group) -> int:
        res = split({"data": df}, SplitConfig(fractions={"a": 0.5, "b": 0.5}, seed=1, **group), ctx)
        where = _assignment(res)
        return sum(where[f"c:{i}:0"] != where[f"c:{i}:1"] for i in range(60))

    assert crossing(group="prompt") > 10
    assert crossing(group="prompt", group_turns=1) == 0
