"""``verify`` scores rows with graders; ``filter`` keeps rows whose score column is in bounds.

verify — consumes the ``completion`` column (text or messages) and the columns each grader reads;
produces one ``score_<name>`` column per grader (or the ``column`` it names) and, with
``weights``, a ``reward`` column (the weighted sum). Graders are the functions of
``dataforge.graders`` (``math``, ``format``, ``language``, ``length``) or ``module:function``;
``trainers/grpo.py`` uses the same functions as GRPO rewards. No row is dropped here. A row a
grader cannot grade (``math`` without a reference answer) gets a null score, and a null
``reward``: the ``filter`` after it drops the row as ``<reason>:missing``, not as a wrong answer.

filter — consumes ``column`` (numeric); keeps rows with ``min ≤ value ≤ max``. A dropped row gets
event ``dropped`` with ``reason`` (default ``filter:<column>``) and ``score`` = its value; a row
whose value is null or NaN is dropped with ``<reason>:missing`` (polars orders NaN above every
number: ``min: 1.0`` would keep it).

Example::

    checked:
      kind: verify
      inputs: {data: solve}
      graders:
        - {name: math, inputs: {answer: final_answer}}
        - {name: format}
        - {name: length, options: {max_words: 400}}
      weights: {math: 1.0, format: 0.2}
    correct:
      kind: filter
      inputs: {data: checked}
      column: score_math
      min: 1.0
      reason: verifier:wrong_answer
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl
from pydantic import Field, model_validator

from dataforge.engine.events import events
from dataforge.engine.step import (
    Columns,
    Context,
    PlanInfo,
    StepConfig,
    StepResult,
    per_table,
    require,
    step,
    with_columns,
)
from dataforge.errors import RecipeError
from dataforge.graders import EXTRACTIONS, Grader, as_score, grader_columns, grader_parameters, load_grader

# -- verify -----------------------------------------------------------------------------------------


class GraderSpec(StepConfig):
    name: str  # built-in name or package.module:function
    inputs: dict[str, str] = Field(default_factory=dict)  # grader parameter → row column
    options: dict[str, Any] = Field(default_factory=dict)  # grader parameter → constant
    column: str | None = None  # default score_<name>

    def score_column(self) -> str:
        return self.column or "score_" + re.sub(r"\W+", "_", self.name.rpartition(":")[2] or self.name)

    def load(self) -> Grader:
        try:
            return load_grader(self.name)
        except ValueError as exc:
            raise RecipeError(str(exc), key="graders") from None

    def columns_read(self) -> dict[str, str]:
        """Grader parameter → row column (see :func:`dataforge.graders.grader_columns`)."""
        return grader_columns(self.load(), self.inputs, self.options)


class VerifyConfig(StepConfig):
    graders: list[GraderSpec] = Field(min_length=1)
    completion: str = "completion"
    weights: dict[str, float] = Field(default_factory=dict)  # grader name or score column → its weight in `reward`
    reward_column: str = "reward"

    @model_validator(mode="after")
    def _check(self) -> VerifyConfig:
        names = [g.name for g in self.graders]
        cols = [g.score_column() for g in self.graders]
        if len(set(cols)) != len(cols):
            raise ValueError("two graders write the same score column; give one a 'column'")
        unknown = sorted(set(self.weights) - set(names) - set(cols))
        if unknown:
            raise ValueError(f"weights name graders that are not listed: {', '.join(unknown)}")
        twice = sorted(w for w in self.weights if w not in cols and names.count(w) > 1)
        if twice:
            raise ValueError(f"weights name grader '{twice[0]}', which is listed twice: name its score column instead")
        return self

    def weighted_columns(self) -> dict[str, float]:
        """Score column → its weight in ``reward`` (a weight names a grader or its score column)."""
        column_of = {g.name: g.score_column() for g in self.graders}  # (naming one listed twice: refused)
        cols = {g.score_column() for g in self.graders}
        return {(w if w in cols else column_of[w]): v for w, v in self.weights.items()}


def _verify_columns(cfg: VerifyConfig, cols: Columns, info: PlanInfo) -> Columns:
    require(cols, [cfg.completion], "completion")
    for g in cfg.graders:
        params = grader_parameters(g.load())
        unknown = sorted((set(g.inputs) | set(g.options)) - set(params))
        if unknown:
            raise RecipeError(f"grader '{g.name}' takes no parameter {', '.join(unknown)}", key="graders")
        require(cols, list(g.columns_read().values()), "graders")
        extract = g.options.get("extract")
        if g.name == "math" and extract is not None and extract not in EXTRACTIONS:
            raise RecipeError(
                f"grader 'math': extract '{extract}' is not one of {', '.join(EXTRACTIONS)}", key="graders"
            )
    added = [g.score_column() for g in cfg.graders] + ([cfg.reward_column] if cfg.weights else [])
    return with_columns(cols, added)


@step(
    "verify",
    version=7,  # 3: math reads "1.5e2", "−5", "5\\%", "**5**", "18\\text{ dollars}" (all scored 0); format: one tag
    # 4: math reads "Answer: 5" lines, "$5$" / "\\(5\\)", Minerva's "I hope it is correct.", "(B)", "5°", "1\\,500"
    # and a reference that is a worked solution ("… #### 72") as its final answer; no reference: a null score
    # 5: math reads "\\{2,3\\}" as a set, "\\text{yes}" as yes, an "Answer:" label after a sentence's end and
    # an R1 / Qwen3 completion after its "</think>" (it scored 0); format: a blank answer block is not the format;
    # language: a blank completion gets a null score (it scored 1.0)
    # 6: math reads "$150$ dollars" and "150\\text{ cm}^2" (0.0); length: a blank completion gets a null score
    # (1.0 under a bare max_words); a message whose content is null is empty (it was read as the text "None");
    # a NaN reference is none: a null score (0.0, and "#### nan" scored 1.0)
    # 7: math reads a mixed number, "5 1/2" = 5.5 (it scored 0); a grader listed twice (with its own column)
    # writes both columns (the first one's scores were lost)
    inputs=None,
    per_table_columns=_verify_columns,
    partition="rows",
)
def verify(inputs: dict[str, pl.DataFrame], cfg: VerifyConfig, ctx: Context) -> StepResult:
    """Score every row with every grader."""

    def one(name: str, df: pl.DataFrame) -> StepResult:
        scores: dict[str, pl.Series] = {}
        completions = df[cfg.completion].to_list()
        for g in cfg.graders:
            fn, reads = g.load(), g.columns_read()
            feeds = {p: df[c].to_list() for p, c in reads.items()}
            values = [
                as_score(fn(comp, **{p: v[i] for p, v in feeds.items()}, **g.options))
                for i, comp in enumerate(
                    ctx.progress.track(completions, total=df.height, description=f"grade {g.name}", unit="rows")
                )
            ]
            scores[g.score_column()] = pl.Series(g.score_column(), values, dtype=pl.Float64)
        out = df.with_columns(list(scores.values()))
        if cfg.weights:
            weighted = cfg.weighted_columns().items()
            total = sum((scores[c] * w for c, w in weighted), pl.Series([0.0] * df.height, dtype=pl.Float64))
            out = out.with_columns(total.alias(cfg.reward_column))
        return StepResult({name: out})

    return per_table(inputs, one)


# -- filter -----------------------------------------------------------------------------------------


class FilterConfig(StepConfig):
    column: str
    min: float | None = None
    max: float | None = None
    reason: str | None = None  # default filter:<column>

    @model_validator(mode="after")
    def _bounds(self) -> FilterConfig:
        if self.min is None and self.max is None:
            raise ValueError("give 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


def _filter_columns(cfg: FilterConfig, cols: Columns, info: PlanInfo) -> Columns:
    require(cols, [cfg.column], "column")
    return cols


@step("filter", version=2, inputs=None, per_table_columns=_filter_columns, partition="rows")
def score_filter(inputs: dict[str, pl.DataFrame], cfg: FilterConfig, ctx: Context) -> StepResult:
    """Keep rows whose score is within bounds; every other row is dropped with its score."""
    reason = cfg.reason or f"filter:{cfg.column}"

    def one(name: str, df: pl.DataFrame) -> StepResult:
        value = pl.col(cfg.column).cast(pl.Float64).fill_nan(None)  # NaN: no score (it compares above all)
        ok = pl.lit(True)
        if cfg.min is not None:
            ok = ok & (value >= cfg.min)
        if cfg.max is not None:
            ok = ok & (value <= cfg.max)
        marked = df.with_columns(ok.alias("__ok"), value.alias("__v"))
        kept = marked.filter(pl.col("__ok").fill_null(False)).drop("__ok", "__v")
        out_of_bounds = marked.filter(~pl.col("__ok"))
        missing = marked.filter(pl.col("__ok").is_null())
        bounds = {"min": cfg.min, "max": cfg.max}
        return StepResult(
            {name: kept},
            events=[
                events(out_of_bounds["_id"], "dropped", reason, score=out_of_bounds["__v"], detail=bounds),
                events(missing["_id"], "dropped", f"{reason}:missing", detail=bounds),
            ],
        )

    return per_table(inputs, one)
