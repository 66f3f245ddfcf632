"""Parsers for the shipped public datasets (per-table steps).

parse.gsm8k — consumes ``answer`` (a worked solution with ``<<a*b=c>>`` calculator annotations
and a final line ``#### N``); produces ``reasoning`` (the solution without annotations or the
final line) and ``final_answer`` (N, thousands separators removed: an integer, a decimal or a
fraction such as ``3/4``). A row whose ``question`` is
null or blank is dropped, ``parse:gsm8k_no_question`` (a problem with no text to prompt with or
train on); one without a numeric final answer, ``parse:gsm8k_no_final_answer``.

parse.hh_rlhf — consumes ``chosen`` and ``rejected``, two whole conversations written as
``\\n\\nHuman: …\\n\\nAssistant: …`` that share every turn but the last; produces TRL's
conversational preference form: ``prompt`` (the shared turns as messages), ``chosen`` and
``rejected`` (the final assistant turn of each, as a one-message list). Malformed pairs are
dropped with a reason, never guessed: ``parse:hh_no_leading_human``, ``parse:hh_roles_not_alternating``,
``parse:hh_last_turn_not_assistant``, ``parse:hh_prefix_mismatch``, ``parse:hh_identical``.
"""

from __future__ import annotations

import re

import polars as pl

from dataforge.engine.events import events
from dataforge.engine.step import (
    Columns,
    Context,
    PlanInfo,
    StepConfig,
    StepResult,
    per_table,
    require,
    require_text,
    step,
    with_columns,
)
from dataforge.text.fields import MESSAGES

# -- GSM8K ------------------------------------------------------------------------------------------


class Gsm8kConfig(StepConfig):
    question: str | None = "question"  # null: the rows hold no question column (not checked)
    answer: str = "answer"
    reasoning_column: str = "reasoning"
    final_answer_column: str = "final_answer"


def _gsm8k_columns(cfg: Gsm8kConfig, cols: Columns, info: PlanInfo) -> Columns:
    require(cols, [cfg.answer], "answer")
    if cfg.question is not None:
        require(cols, [cfg.question], "question")
    return with_columns(cols, [cfg.reasoning_column, cfg.final_answer_column])


@step(
    "parse.gsm8k",
    version=3,  # 2: a row with a blank question is dropped (it was kept: a blank prompt, an empty SFT turn)
    # 3: a fraction final answer ("#### 3/4") is an answer (it was dropped as parse:gsm8k_no_final_answer)
    inputs=None,
    per_table_columns=_gsm8k_columns,
    partition="rows",
)
def parse_gsm8k(inputs: dict[str, pl.DataFrame], cfg: Gsm8kConfig, ctx: Context) -> StepResult:
    """Split GSM8K solutions into reasoning (annotations removed) and the numeric final answer."""

    def one(name: str, df: pl.DataFrame) -> StepResult:
        require_text(df, cfg.answer)
        ans = pl.col(cfg.answer)
        parsed = df.with_columns(
            ans.str.replace_all(r"<<[^>]*>>", "")
            .str.replace(r"(?s)\s*####.*$", "")
            .str.strip_chars()
            .alias(cfg.reasoning_column),
            ans.str.extract(r"####\s*([^\n]*?)\s*$").str.replace_all(",", "").alias(cfg.final_answer_column),
        )
        asked = pl.Series([True] * df.height)
        if cfg.question is not None:
            require_text(df, cfg.question)
            asked = (df[cfg.question].str.strip_chars() != "").fill_null(False)
        # an integer, a decimal or a fraction ("3/4": GSM8K-format sets beyond GSM8K's integers)
        answered = parsed[cfg.final_answer_column].str.contains(r"^-?\d+(\.\d+)?(/\d+)?$").fill_null(False)
        evs = [
            events(df["_id"].filter(~asked), "dropped", "parse:gsm8k_no_question", detail={"field": cfg.question}),
            events(
                df["_id"].filter(asked & ~answered),
                "dropped",
                "parse:gsm8k_no_final_answer",
                detail={"field": cfg.answer},
            ),
        ]
        return StepResult({name: parsed.filter(asked & answered)}, events=evs)

    return per_table(inputs, one)


# -- HH-RLHF ----------------------------------------------------------------------------------------


class HhConfig(StepConfig):
    chosen: str = "chosen"
    rejected: str = "rejected"
    prompt_column: str = "prompt"


def _hh_columns(cfg: HhConfig, cols: Columns, info: PlanInfo) -> Columns:
    require(cols, [cfg.chosen, cfg.rejected], "chosen")
    return with_columns(cols, [cfg.prompt_column])


_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def split_hh_conversation(text: str) -> tuple[list[dict[str, str]] | None, str | None]:
    """``(messages, None)`` for a well-formed transcript, ``(None, reason)`` otherwise."""
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        return None, "parse:hh_no_leading_human"
    roles, contents = parts[1::2], parts[2::2]
    for i, role in enumerate(roles):
        if role != ("Human" if i % 2 == 0 else "Assistant"):
            return None, "parse:hh_roles_not_alternating"
    if roles[-1] != "Assistant":
        return None, "parse:hh_last_turn_not_assistant"
    return [{"role": _ROLE[r], "content": c.strip()} for r, c in zip(roles, contents, strict=True)], None


@step("parse.hh_rlhf", version=1, inputs=None, per_table_columns=_hh_columns, partition="rows")
def parse_hh_rlhf(inputs: dict[str, pl.DataFrame], cfg: HhConfig, ctx: Context) -> StepResult:
    """HH-RLHF transcript pairs → conversational prompt / chosen / rejected."""

    def one(name: str, df: pl.DataFrame) -> StepResult:
        require_text(df, cfg.chosen)
        require_text(df, cfg.rejected)
        prompts, chosen, rejected, keep, drop_ids, reasons = [], [], [], [], [], []
        for rid, c_text, r_text in ctx.progress.track(
            zip(df["_id"], df[cfg.chosen], df[cfg.rejected], strict=True),
            total=df.height,
            description="parse",
            unit="rows",
        ):
            c_msgs, c_err = split_hh_conversation(c_text or "")
            r_msgs, r_err = split_hh_conversation(r_text or "")
            reason = c_err or r_err
            if reason is None and c_msgs[:-1] != r_msgs[:-1]:  # type: ignore[index]
                reason = "parse:hh_prefix_mismatch"
            if reason is None and c_msgs[-1] == r_msgs[-1]:  # type: ignore[index]
                reason = "parse:hh_identical"
            keep.append(reason is None)
            if reason is not None:
                drop_ids.append(rid)
                reasons.append(reason)
                continue
            prompts.append(c_msgs[:-1])  # type: ignore[index]
            chosen.append(c_msgs[-1:])  # type: ignore[index]
            rejected.append(r_msgs[-1:])  # type: ignore[index]
        kept = df.filter(pl.Series(keep, dtype=pl.Boolean)).with_columns(
            pl.Series(cfg.prompt_column, prompts, dtype=MESSAGES),
            pl.Series(cfg.chosen, chosen, dtype=MESSAGES),
            pl.Series(cfg.rejected, rejected, dtype=MESSAGES),
        )
        ev = events(pl.Series(drop_ids, dtype=pl.String), "dropped", pl.Series(reasons, dtype=pl.String))
        return StepResult({name: kept}, events=[ev])

    return per_table(inputs, one)
