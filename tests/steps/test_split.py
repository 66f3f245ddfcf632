"""split: deterministic, independent of row order, groups never cross splits."""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import ValidationError

from dataforge.steps.split import SplitConfig, split


def _pool(n: int = 2000) -> pl.DataFrame:
    # every question appears with three different targets, in different surface forms
    qs = [f"Question number {i // 3}?" for i in range(n)]
    qs = [q.upper() if i % 3 == 1 else (q + "  " if i % 3 == 2 else q) for i, q in enumerate(qs)]
    return pl.DataFrame({"_id": [f"p:{i}" for i in range(n)], "q": qs, "target": [f"t{i}" for i in range(n)]})


def _assignment(res) -> dict[str, str]:
    return {rid: name for name, df in res.tables.items() for rid in df["_id"].to_list()}


def test_group_split_keeps_groups_together(ctx):
    cfg = SplitConfig(by="group", key="q", fractions={"train": 0.8, "validation": 0.1, "test": 0.1}, seed=3)
    res = split({"data": _pool()}, cfg, ctx)
    seen: dict[str, str] = {}
    for name, df in res.tables.items():
        for q in df["q"].str.to_lowercase().str.strip_chars().to_list():
            assert seen.setdefault(q, name) == name
    sizes = {k: v.height for k, v in res.tables.items()}
    assert sum(sizes.values()) == 2000
    assert 0.75 < sizes["train"] / 2000 < 0.85
    ev = res.events[0]
    assert ev.height == 2000 and set(ev["action"]) == {"split"} and set(ev["reason"]) == {"split:group"}


def test_assignment_independent_of_row_order(ctx):
    cfg = SplitConfig(by="group", key="q", fractions={"train": 0.5, "test": 0.5}, seed=1)
    df = _pool()
    a = _assignment(split({"data": df}, cfg, ctx))
    b = _assignment(split({"data": df.sample(fraction=1.0, shuffle=True, seed=99)}, cfg, ctx))
    assert a == b


def test_random_split_is_seeded(ctx):
    df = _pool(500)
    cfg = SplitConfig(by="random", fractions={"train": 0.9, "test": 0.1}, seed=5)
    assert _assignment(split({"data": df}, cfg, ctx)) == _assignment(split({"data": df}, cfg, ctx))
    other = SplitConfig(by="random", fractions={"train": 0.9, "test": 0.1}, seed=6)
    assert _assignment(split({"data": df}, cfg, ctx)) != _assignment(split({"data": df}, other, ctx))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"by": "group", "key": "q", "fractions": {"a": 0.5, "b": 0.6}}, "sum to 1"),
        ({"by": "group", "fractions": {"a": 0.5, "b": 0.5}}, "needs 'key'"),
        ({"by": "random", "fractions": {"a": 1.0}}, "at least two"),
        ({"by": "random", "fractions": {"a": 0.0, "b": 1.0}}, "between 0 and 1"),
    ],
)
def test_split_config_errors(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        SplitConfig(**kwargs)
