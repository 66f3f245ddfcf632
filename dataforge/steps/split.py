"""``split``: assign every row to one named split, deterministically and independently of row order.

Consumes one input ``data``; produces one output per split name (``fractions`` keys). Each row's
split is chosen by hashing ``seed`` with its key into [0, 1) and cutting at the cumulative
fractions, so shuffling the input changes nothing and a key never straddles two splits:

- ``by: group`` — the key is the ``key`` column (normalized: Unicode NFKC, case, whitespace),
  so "the same prompt with another target" always lands in the same split;
- ``by: random`` — the key is the row's ``_id``: a seeded random split, which can leak
  near-duplicates across splits (the dataset card says so).

Lineage: one ``split`` event per row, reason ``split:<by>``, ``detail_json`` = ``{"split": name}``.
(The leakage-safe modes — time, cluster, stratified — and the split audit come with the splits issue.)

Example::

    split:
      kind: split
      inputs: parsed.train
      by: group
      key: question
      fractions: {train: 0.95, validation: 0.05}
      seed: 13
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Literal

import polars as pl
from pydantic import field_validator, model_validator

from dataforge.engine.events import events
from dataforge.engine.step import Columns, Context, PlanInfo, StepConfig, StepResult, require, step
from dataforge.recipe import NAME_RE
from dataforge.text.normalize import normalize_expr


class SplitConfig(StepConfig):
    fractions: dict[str, float]
    by: Literal["group", "random"]
    key: str | None = None
    seed: int = 0

    @field_validator("fractions")
    @classmethod
    def _valid_fractions(cls, v: dict[str, float]) -> dict[str, float]:
        if len(v) < 2:
            raise ValueError("name at least two splits")
        for name, f in v.items():
            if not NAME_RE.match(name):
                raise ValueError(f"split name {name!r} must be letters, digits, '_' or '-'")
            if not 0 < f < 1:
                raise ValueError(f"fraction of '{name}' must be between 0 and 1, not {f}")
        total = sum(v.values())
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(f"fractions must sum to 1, they sum to {total:g}")
        return v

    @model_validator(mode="after")
    def _key_for_group(self) -> SplitConfig:
        if self.by == "group" and not self.key:
            raise ValueError("by: group needs 'key' (the column whose equal values stay together)")
        if self.by == "random" and self.key:
            raise ValueError("by: random hashes each row's _id; 'key' is for by: group")
        return self


def _outputs(cfg: SplitConfig, input_names: Sequence[str]) -> tuple[str, ...]:
    return tuple(cfg.fractions)


def _columns(cfg: SplitConfig, cols: dict[str, Columns], info: PlanInfo) -> dict[str, Columns]:
    require(cols["data"], [cfg.key], "key")
    return {name: cols["data"] for name in cfg.fractions}


def unit_hash(seed: int, key: str) -> float:
    """A stable hash of (seed, key) in [0, 1)."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign(keys: pl.Series, fractions: dict[str, float], seed: int) -> pl.Series:
    """The split name of each key: equal keys get equal splits."""
    uniq = keys.unique()
    u = pl.Series([unit_hash(seed, k) for k in uniq.to_list()], dtype=pl.Float64)
    names = list(fractions)
    bounds = []
    acc = 0.0
    for n in names[:-1]:
        acc += fractions[n]
        bounds.append(acc)
    idx = pl.Series([sum(x >= b for b in bounds) for x in u.to_list()], dtype=pl.UInt32)
    lookup = pl.DataFrame({"k": uniq, "s": idx.replace_strict(list(range(len(names))), names, return_dtype=pl.String)})
    return pl.DataFrame({"k": keys}).join(lookup, on="k", how="left", maintain_order="left")["s"]


def _note(cfg: SplitConfig) -> str | None:
    if cfg.by == "random":
        return "This dataset was split at random (seeded): random splits can leak near-duplicates across splits."
    return f"Split by group on normalized `{cfg.key}`: rows with the same key are always in the same split."


@step("split", version=1, outputs=_outputs, columns=_columns)
def split(inputs: dict[str, pl.DataFrame], cfg: SplitConfig, ctx: Context) -> StepResult:
    """Assign each row to a split by a seeded hash of its group key (or its _id)."""
    df = inputs["data"]
    if cfg.by == "group":
        assert cfg.key is not None
        keys = df.select(normalize_expr(pl.col(cfg.key).cast(pl.String).fill_null(""), lowercase=True))[cfg.key]
    else:
        keys = df["_id"]
    which = assign(keys, cfg.fractions, cfg.seed)
    tables = {name: df.filter(which == name) for name in cfg.fractions}
    detail = pl.select(pl.concat_str(pl.lit('{"split":"'), pl.lit(which), pl.lit('"}'))).to_series()
    ev = events(df["_id"], "split", f"split:{cfg.by}", detail=detail)
    return StepResult(tables, events=[ev])


split.card_note = _note  # type: ignore[attr-defined]
