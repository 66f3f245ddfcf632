"""``rollout``: graded samples grouped per prompt → RL trajectories ``{prompt, completion, reward,
group_id}`` with GRPO-style group statistics, and pass@k per prompt.

Consumes ``data`` with ``group`` (default ``_parent_id``: the prompt row each completion came
from, as ``generate`` writes it), ``reward``, ``prompt`` and ``completion``.

Produces ``data``: the rows with ``reward`` (a copy of the column named by ``reward``),
``group_id``, ``group_size``, ``group_mean``, ``group_std`` (the sample standard deviation, with
Bessel's correction, as TRL's ``GRPOTrainer`` computes it; null for a group of one) and
``advantage`` = (reward − group_mean) / (group_std + ``epsilon``), TRL's group-scaled advantage
(null for a group of one: nothing to compare it with; TRL's is NaN); and ``groups``: one row per
prompt (``_id`` = group id) with ``n``, ``correct`` (reward ≥ ``correct_at``), ``mean_reward``
and ``pass@k`` for each ``k`` ≤ n, by the unbiased estimator 1 − C(n−c, k) / C(n, k) (Chen et
al., 2021). The card shows the mean pass@k over prompts. No row is dropped. A null reward (a
sample no grader could grade: ``math`` without a reference; NaN reads the same) counts in none of these: ``n`` and
``group_size`` are the graded samples, and the row's ``advantage`` is null. ``group_id`` is the
group column as text; a row whose group is null or blank is a group of its own (its ``_id``), and
so is each row of a group whose rows hold different prompts (flagged ``rollout:prompts_differ``:
advantages compare samples of one prompt only).
"""

from __future__ import annotations

from collections.abc import Callable
from math import comb

import polars as pl
from pydantic import Field, field_validator

from dataforge.engine.events import events
from dataforge.engine.plan import Plan, PlannedStep, Ref
from dataforge.engine.step import (
    Columns,
    Context,
    PlanInfo,
    StepConfig,
    StepResult,
    column_key,
    require,
    step,
    with_columns,
)
from dataforge.errors import DataError
from dataforge.steps.prompt_groups import group_marks


class RolloutConfig(StepConfig):
    group: str = "_parent_id"
    reward: str = "reward"
    prompt: str = "prompt"
    completion: str = "completion"
    correct_at: float = 1.0
    k: list[int] = Field(default_factory=lambda: [1], min_length=1)
    epsilon: float = Field(1e-4, gt=0)

    @field_validator("k")
    @classmethod
    def _ks(cls, k: list[int]) -> list[int]:
        if any(v < 1 for v in k):
            raise ValueError(f"each k is a number of samples, 1 or more (got {k})")
        if len(set(k)) < len(k):
            raise ValueError(f"k lists a value twice (got {k})")
        return k


GROUP_STATS = ["reward", "group_id", "group_size", "group_mean", "group_std", "advantage"]


def _columns(cfg: RolloutConfig, cols: dict[str, Columns], info: PlanInfo) -> dict[str, Columns]:
    data = cols["data"]
    for key in ("group", "reward", "prompt", "completion"):
        require(data, [getattr(cfg, key)], key)
    groups = ["_id", "n", "correct", "mean_reward", *(f"pass@{k}" for k in cfg.k)]
    return {"data": with_columns(data, GROUP_STATS), "groups": groups}


def pass_at_k(n: int, c: int, k: int) -> float | None:
    """Unbiased pass@k from n samples of which c are correct; None when k > n."""
    if k > n:
        return None
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def _group_ids(df: pl.DataFrame, cfg: RolloutConfig) -> tuple[pl.Series, pl.Series]:
    """``group_id``: the group column as text; a row whose group is null or blank is a group of its
    own, named by its ``_id`` (they were one group: samples of different prompts compared with
    each other, and a ``groups`` row with a null id), and so is each row of a group whose rows hold
    different prompts (``steps.prompt_groups``: a ``group`` column that is not the prompt's).
    Returns the ids and which rows are in such a mixed group."""
    dtype = df.schema[cfg.group]
    if dtype.is_nested():
        raise DataError(
            f"rollout 'group' column '{cfg.group}' is {dtype}; samples are grouped by a text or number column "
            "(default _parent_id, the prompt row generate wrote each sample from)"
        )
    has, mixed = group_marks(df, cfg.group, cfg.prompt)
    own = pl.lit(has & ~mixed)
    ids = df.select(pl.when(own).then(pl.col(cfg.group).cast(pl.String)).otherwise(pl.col("_id")).alias("group_id"))
    return ids.to_series(), mixed


@step(
    "rollout",
    version=4,  # 2: a null or NaN reward is no sample of n / group_size (it counted as a wrong one in pass@k)
    # 3: group_std with Bessel's correction, as TRL's GRPOTrainer (it was the population std: advantages differed)
    # 4: a row with a null or blank group is a group of its own (all such rows were one group); group_id is text;
    # so is each row of a group whose rows hold different prompts (flagged rollout:prompts_differ)
    outputs=("data", "groups"),
    columns=_columns,
    partition="key",
    partition_key=column_key("group"),
    group_outputs=lambda cfg, outputs: ("groups",),
)
def rollout(inputs: dict[str, pl.DataFrame], cfg: RolloutConfig, ctx: Context) -> StepResult:
    """Group statistics and advantages per prompt; pass@k per prompt."""
    df = inputs["data"]
    r = pl.col(cfg.reward).cast(pl.Float64).fill_nan(None)  # NaN: ungraded, as null
    g = pl.col("group_id")
    group_ids, mixed = _group_ids(df, cfg)
    data = (
        df.with_columns(r.alias("reward"), group_ids)
        .with_columns(
            r.count().over(g).cast(pl.Int64).alias("group_size"),
            r.mean().over(g).alias("group_mean"),
            r.std(ddof=1).over(g).alias("group_std"),  # TRL's nanstd: Bessel-corrected
        )
        .with_columns(((r - pl.col("group_mean")) / (pl.col("group_std") + cfg.epsilon)).alias("advantage"))
    )
    stats = (
        data.group_by("group_id", maintain_order=True)
        .agg(
            r.count().cast(pl.Int64).alias("n"),
            (r >= cfg.correct_at).sum().cast(pl.Int64).alias("correct"),
            r.mean().alias("mean_reward"),
        )
        .rename({"group_id": "_id"})
    )
    groups = stats.with_columns(
        pl.Series(f"pass@{k}", [pass_at_k(n, c, k) for n, c in zip(stats["n"], stats["correct"], strict=True)]).cast(
            pl.Float64
        )
        for k in cfg.k
    )
    flagged = events(df["_id"].filter(mixed), "flagged", "rollout:prompts_differ", detail={"group": cfg.group})
    return StepResult({"data": data, "groups": groups}, events=[flagged])


def card_section(ps: PlannedStep, load: Callable[[Ref], pl.DataFrame], plan: Plan) -> list[str]:
    """The card's lines for this step (see ``dataforge.card``)."""
    step_name = ps.name
    groups = load(Ref(step_name, "groups"))
    ks = [c for c in groups.columns if c.startswith("pass@")]
    lines = [f"From step `{step_name}` (rollout): {groups.height:,} prompts.", "", "| metric | mean over prompts |"]
    lines.append("|---|---|")
    for c in ["mean_reward", *ks]:
        mean = groups[c].mean()
        lines.append(f"| {c} | {'-' if mean is None else f'{mean:.3f}'} |")
    return lines


rollout.card_section = card_section  # type: ignore[attr-defined]
