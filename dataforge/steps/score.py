"""Scores from models: ``score.reward_model`` (a reward model's scalar) and ``score.judge`` (an LLM
judge with a rubric). Neither drops rows: a ``filter`` step on the score column does.

score.reward_model — consumes ``prompt`` and ``completion`` (text or messages); produces
``column`` (default ``score_rm``): the scalar logit of a sequence-classification model (any
``AutoModelForSequenceClassification`` with one label), on prompt + completion rendered with the
model's chat template when it has one. A text longer than ``max_length`` tokens loses the start
of its prompt (never its response, which is what is scored) and is flagged ``score:truncated``
(score = its length in tokens).

score.judge — consumes the columns its rubric ``template`` reads; produces ``column`` (default
``score_judge``) and ``<column>_text`` (the judge's answer). The score is parsed from
``[[N]]``, ``Score: N`` or an answer that is only a number, and must lie within ``scale``; an
answer that cannot be parsed leaves the score null and is recorded (event ``flagged``,
``judge:unparseable``, the answer in ``detail_json``), never a crash.

Example::

    judged:
      kind: score.judge
      inputs: {data: solve}
      model: judge
      template: |
        Rate the answer from 1 to 10. Question: {{ question }}  Answer: {{ completion }}
        Reply as "Score: N".
      scale: [1, 10]
"""

from __future__ import annotations

import json
import re
from typing import Any

import polars as pl
from pydantic import Field, model_validator

from dataforge.engine.events import events
from dataforge.engine.step import Columns, Context, PlanInfo, StepConfig, StepResult, per_table, require, step
from dataforge.engine.step import with_columns as added_columns
from dataforge.errors import DataError
from dataforge.formats import as_messages
from dataforge.graders import completion_text
from dataforge.steps.prompting import (
    PromptConfig,
    build_requests,
    client,
    last_stated,
    require_prompt_columns,
    track,
)

# -- reward model -----------------------------------------------------------------------------------


class RewardModelConfig(StepConfig):
    reward_model: str  # path or hub name of a sequence-classification model with one label
    prompt: str = "prompt"
    completion: str = "completion"
    column: str = "score_rm"
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(1024, ge=8)
    device: str | None = None


def _rm_columns(cfg: RewardModelConfig, cols: Columns, info: PlanInfo) -> Columns:
    require(cols, [cfg.prompt], "prompt")
    require(cols, [cfg.completion], "completion")
    return added_columns(cols, [cfg.column])


def reward_model_texts(tokenizer: Any, prompts: list[Any], completions: list[Any]) -> list[str]:
    """prompt + completion as the reward model reads them: its chat template, or plain text."""
    if tokenizer.chat_template:
        return [
            tokenizer.apply_chat_template(as_messages(p, "user") + as_messages(c, "assistant"), tokenize=False)
            for p, c in zip(prompts, completions, strict=True)
        ]
    return [completion_text(p) + "\n" + completion_text(c) for p, c in zip(prompts, completions, strict=True)]


@step(
    "score.reward_model",
    version=4,  # 2: a model whose config names no pad token is told the tokenizer's (a batch of several rows raised)
    # 3: a message whose content is null is empty (it was read as the text "None")
    # 4: a text over max_length is cut from the left and flagged score:truncated (cut from the right, a long
    # conversation lost its response: the score was the prompt's, the same for every response to it)
    inputs=None,
    per_table_columns=_rm_columns,
    partition="rows",
)
def score_reward_model(inputs: dict[str, pl.DataFrame], cfg: RewardModelConfig, ctx: Context) -> StepResult:
    """The scalar of a reward model for every (prompt, completion)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dataforge.llm.hf import pick_device

    device = pick_device(cfg.device)
    try:
        tok = AutoTokenizer.from_pretrained(cfg.reward_model)
        model = AutoModelForSequenceClassification.from_pretrained(cfg.reward_model).to(device).eval()
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load reward model '{cfg.reward_model}': {exc}") from exc
    if model.config.num_labels != 1:
        raise DataError(f"reward model '{cfg.reward_model}' has {model.config.num_labels} labels; it needs one")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:  # else a batch of several rows raises: the model finds each
        model.config.pad_token_id = tok.pad_token_id  # row's last token by the padding it is told of

    tok.truncation_side = "left"  # a text over max_length loses the start of its prompt, never its response

    def one(name: str, df: pl.DataFrame) -> StepResult:
        texts = reward_model_texts(tok, df[cfg.prompt].to_list(), df[cfg.completion].to_list())
        special = not tok.chat_template
        lengths = [len(ids) for ids in tok(texts, add_special_tokens=special)["input_ids"]]
        scores: list[float] = []
        starts = range(0, len(texts), cfg.batch_size)
        batch = lambda s: min(cfg.batch_size, len(texts) - s)  # noqa: E731
        for start in ctx.progress.track(starts, total=len(texts), description="reward model", unit="rows", size=batch):
            batch = tok(
                texts[start : start + cfg.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=cfg.max_length,
                add_special_tokens=special,
            ).to(device)
            with torch.no_grad():
                scores.extend(model(**batch).logits[:, 0].float().tolist())
        long = pl.Series(lengths) > cfg.max_length
        cut = events(
            df["_id"].filter(long),
            "flagged",
            "score:truncated",
            score=pl.Series(lengths).filter(long).cast(pl.Float64),
            detail={"max_length": cfg.max_length, "kept": "the end: the response and the last of the prompt"},
        )
        return StepResult({name: df.with_columns(pl.Series(cfg.column, scores, dtype=pl.Float64))}, events=[cut])

    return per_table(inputs, one)


# -- LLM judge --------------------------------------------------------------------------------------

_OUT_OF = r"(?:\s*(?:/|out of)\s*\d+(?:\.\d+)?)?"  # "8/10", "4 out of 5": the scale the judge used
_SCORE_PATTERNS = (
    re.compile(rf"(?i)\[\[\s*(-?\d+(?:\.\d+)?{_OUT_OF})\s*\]\]"),
    re.compile(rf"(?i)\bscore\s*[:=]\s*(-?\d+(?:\.\d+)?{_OUT_OF})"),
    re.compile(rf"(?i)^\s*(-?\d+(?:\.\d+)?{_OUT_OF})\s*\.?\s*$"),
)


def parse_judge_score(text: str, low: float, high: float) -> float | None:
    """The score a judge's answer states, if it states one within [low, high] — on that scale: a
    score out of another number ("Score: 4/5" on a 1–10 rubric, which means 8, not 4) is none."""
    stated = last_stated(text, _SCORE_PATTERNS)
    if stated is None:
        return None
    value, _, out_of = re.sub(r"\s*out of\s*", "/", stated.lower()).partition("/")
    if out_of and float(out_of) != high:
        return None
    number = float(value)
    return number if low <= number <= high else None


class JudgeConfig(PromptConfig):
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(256, ge=1)
    scale: tuple[float, float] = (1.0, 10.0)
    column: str = "score_judge"

    @model_validator(mode="after")
    def _template_given(self) -> JudgeConfig:
        if self.template is None:
            raise ValueError("score.judge needs a rubric 'template'")
        if self.scale[0] >= self.scale[1]:
            raise ValueError(f"scale {list(self.scale)} must be [low, high] with low < high")
        return self


def _judge_columns(cfg: JudgeConfig, cols: Columns, info: PlanInfo) -> Columns:
    require_prompt_columns(cfg, cols)
    return added_columns(cols, [cfg.column, f"{cfg.column}_text"])


def judge_scores(cfg: JudgeConfig, rows: list[dict[str, Any]], ctx: Context) -> tuple[list[float | None], list[str]]:
    """(score or None, the judge's answer) per row; a failed request counts as unparseable."""
    requests, _ = build_requests(cfg, rows)
    answers = client(cfg, ctx).generate(requests, track(ctx), f"judge · {cfg.model.model}")
    texts = [g.texts[0] if g.ok else f"<request failed: {g.error}>" for g in answers]
    return [parse_judge_score(t, *cfg.scale) for t in texts], texts


@step(
    "score.judge",
    version=5,  # 2: a payload asked by several rows in one call is sent once
    # 3: a null the rubric prints is an error naming the row (it was sent as "None")
    # 4: a message whose content is null is empty (it was read as the text "None"); a score out of another
    # number than the scale's top ("Score: 4/5" on 1-10) is unparseable (it read 4)
    # 5: a messages column the rubric prints is its text (it was sent as a Python list of dicts); the score is read
    # past a thinking model's reasoning (after its last </think>; a score tried inside it was read)
    inputs=None,
    per_table_columns=_judge_columns,
    partition="rows",
    gathers_requests=True,
)
def score_judge(inputs: dict[str, pl.DataFrame], cfg: JudgeConfig, ctx: Context) -> StepResult:
    """An LLM judge's rubric score for every row; unparseable answers are recorded."""

    def one(name: str, df: pl.DataFrame) -> StepResult:
        scores, texts = judge_scores(cfg, df.to_dicts(), ctx)
        out = df.with_columns(
            pl.Series(cfg.column, scores, dtype=pl.Float64), pl.Series(f"{cfg.column}_text", texts, dtype=pl.String)
        )
        bad = out.filter(pl.col(cfg.column).is_null())
        detail = pl.Series([json.dumps({"answer": t[:500]}, ensure_ascii=False) for t in bad[f"{cfg.column}_text"]])
        return StepResult({name: out}, events=[events(bad["_id"], "flagged", "judge:unparseable", detail=detail)])

    return per_table(inputs, one)
