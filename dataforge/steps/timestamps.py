"""``time.synthetic``: give rows deterministic pseudo-timestamps, for data that has none.

Consumes any named inputs; produces the same tables with ``_ts`` = ``start`` + a seeded hash of
the row's ``_id`` scaled into [start, end). For demos and tests of time-based splits only: the
dataset card says the timestamps are synthetic. Real data should bring its own
(``source`` with ``timestamp_column``); an input that has them is refused when the recipe is
planned, never overwritten.
"""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl
from pydantic import model_validator

from dataforge.engine.step import Columns, Context, PlanInfo, StepConfig, StepResult, per_table, step, with_columns
from dataforge.errors import RecipeError
from dataforge.steps.split import unit_hash


class SyntheticTimeConfig(StepConfig):
    start: datetime
    end: datetime
    seed: int = 0

    @model_validator(mode="after")
    def _ordered(self) -> SyntheticTimeConfig:
        if self.utc(self.end) <= self.utc(self.start):
            raise ValueError("'end' must come after 'start'")
        return self

    @staticmethod
    def utc(t: datetime) -> datetime:
        return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _columns(cfg: SyntheticTimeConfig, cols: Columns, info: PlanInfo) -> Columns:
    if cols is not None and "_ts" in cols:  # a source with timestamp_column, or time.synthetic again
        raise RecipeError(
            "its input already has timestamps (_ts: a source's timestamp_column, or an earlier time.synthetic); "
            "synthetic ones would replace them: remove this step, or feed it the rows that have none",
            key="inputs",
        )
    return with_columns(cols, ["_ts"])


@step("time.synthetic", version=1, inputs=None, per_table_columns=_columns, partition="rows")
def synthetic_time(inputs: dict[str, pl.DataFrame], cfg: SyntheticTimeConfig, ctx: Context) -> StepResult:
    """Attach seeded pseudo-timestamps (``_ts``) derived from each row's ``_id``."""
    start, end = cfg.utc(cfg.start), cfg.utc(cfg.end)
    span_us = int((end - start).total_seconds() * 1_000_000)
    start_us = int(start.timestamp() * 1_000_000)

    def one(name: str, df: pl.DataFrame) -> StepResult:
        offsets = [int(unit_hash(cfg.seed, i) * span_us) for i in df["_id"].to_list()]
        ts = (pl.Series(offsets, dtype=pl.Int64) + start_us).cast(pl.Datetime("us", "UTC"))
        return StepResult({name: df.with_columns(ts.alias("_ts"))})

    return per_table(inputs, one)


synthetic_time.card_note = lambda cfg: (  # type: ignore[attr-defined]
    f"Timestamps are synthetic: seeded hashes of row ids spread over {cfg.start:%Y-%m-%d} … {cfg.end:%Y-%m-%d}."
)
