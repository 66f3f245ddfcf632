"""What every LLM-calling step shares: the model, how a row becomes a prompt, sampling params.

A prompt is either a column (text → one user message; a messages list as it is) or a Jinja2
``template`` over the row's columns, optionally preceded by a ``system`` message. The columns a
template reads are checked at plan time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from dataforge.engine.step import Columns, Context, StepConfig, require
from dataforge.errors import DataError
from dataforge.formats import as_messages
from dataforge.llm.base import Request
from dataforge.llm.client import LLMClient
from dataforge.llm.spec import ModelSpec, SamplingParams
from dataforge.llm.templates import render, template_variables
from dataforge.text.reasoning import after_thinking


class PromptConfig(StepConfig):
    model: ModelSpec  # `model: <name>` in a recipe: one of its `models:`
    prompt: str | None = None  # a column: text, or a list of messages
    template: str | None = None  # or a Jinja2 template over row columns
    system: str | None = None
    mode: Literal["chat", "completion"] = "chat"
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    seed: int = 0
    stop: list[str] = Field(default_factory=list)
    max_failure_rate: float = Field(0.5, ge=0, le=1)  # above it the step fails, naming the errors

    @model_validator(mode="after")
    def _one_prompt_source(self) -> PromptConfig:
        if (self.prompt is None) == (self.template is None):
            raise ValueError("give exactly one of 'prompt' (a column) or 'template' (a Jinja2 template)")
        if self.template is not None:
            template_variables(self.template)
        return self

    def sampling(self, n: int = 1) -> SamplingParams:
        return SamplingParams(
            n=n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
            stop=self.stop,
        )


def require_prompt_columns(cfg: PromptConfig, cols: Columns) -> None:
    """Plan time: the prompt column, or every variable of the template, is a column of the input."""
    if cfg.prompt is not None:
        require(cols, [cfg.prompt], "prompt")
    else:
        require(cols, sorted(template_variables(cfg.template or "")), "template")


def row_messages(cfg: PromptConfig, row: dict[str, Any], system: str | None) -> list[dict[str, str]]:
    """The chat messages of one row."""
    if cfg.template is not None:
        msgs = [{"role": "user", "content": render(cfg.template, row)}]
    else:
        value = row[cfg.prompt or ""]
        if isinstance(value, str) and value.strip():
            msgs = [{"role": "user", "content": value}]
        elif isinstance(value, list) and value:
            msgs = as_messages(value, "user")
        else:
            raise DataError(
                f"row {row.get('_id')}: prompt column '{cfg.prompt}' is empty; drop such rows before this step "
                f"(clean.filter with required: [{cfg.prompt}])"
            )
    if system and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def row_prompt_text(cfg: PromptConfig, row: dict[str, Any]) -> str:
    """The raw prompt of one row (completion mode)."""
    if cfg.template is not None:
        text = render(cfg.template, row)
    else:
        text = row[cfg.prompt or ""]
        if not isinstance(text, str):
            raise DataError(f"completion mode needs a text prompt; column '{cfg.prompt}' holds messages")
    return (cfg.system + "\n\n" + text) if cfg.system else text


def build_requests(
    cfg: PromptConfig, rows: list[dict[str, Any]], n: int = 1, system: str | None = None
) -> tuple[list[Request], list[Any]]:
    """One request per row, and each row's prompt as stored (messages, or text in completion mode)."""
    params = cfg.sampling(n)
    requests, prompts = [], []
    for row in rows:
        if cfg.mode == "chat":
            msgs = row_messages(cfg, row, system if system is not None else cfg.system)
            requests.append(Request(params, messages=tuple(msgs)))
            prompts.append(msgs)
        else:
            text = row_prompt_text(cfg, row)
            requests.append(Request(params, prompt=text))
            prompts.append(text)
    return requests, prompts


def last_stated(text: str | None, patterns: Sequence[re.Pattern[str]]) -> str | None:
    """What a model's answer states in the first of ``patterns`` it uses (most explicit first):
    that pattern's last match, the answer's final word ("[[NO]] … on reflection [[YES]]" is YES);
    None when it uses none. Read past a thinking model's reasoning (``after_thinking``). How every
    judge's verdict, ranking or score is read."""
    text = after_thinking(text)
    for pattern in patterns:
        found = pattern.findall(text or "")
        if found:
            return found[-1]
    return None


def client(cfg: PromptConfig, ctx: Context) -> LLMClient:
    if ctx.llm is None:
        raise DataError("this step calls a model but the context has no model pool")
    return ctx.llm.client(cfg.model)


def track(ctx: Context):  # the progress hook LLMClient.generate takes
    return lambda items, total, description: ctx.progress.track(
        items, total=total, description=description, unit="requests", size=len
    )
