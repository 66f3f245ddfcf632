"""``generate``: ``n`` completions per row from a model (vLLM, transformers or an OpenAI-compatible
server), through the request cache.

Consumes ``data`` with the prompt column (text or messages) or the columns its ``template`` reads.
Produces ``data``: one row per completion, the parent's columns plus ``_parent_id``, ``sample``
(0…n-1), ``prompt`` (the messages sent, or the prompt text in completion mode), ``completion``,
``finish_reason``; with ``reasoning: true`` the system prompt asks for
``<think>…</think><answer>…</answer>`` and ``think`` / ``stated_answer`` hold the parsed parts
(null when the completion is not in that format). And ``failed``: one row per completion that did not come
back (``_id``, ``_parent_id``, ``error``: ``timeout``, ``http_503``, ``invalid_output`` …).

Lineage: each completion has an edge to its prompt row (``generated_from``) and a ``generated``
event; each failed one a ``dropped`` event with reason ``generation_failed:<error>``. A completion
cut at ``max_tokens`` (``finish_reason`` ``length``: it stops mid-thought, and as SFT data it
teaches a model to) is flagged ``generation:truncated``, or with ``truncated: drop`` dropped with
that reason. The card counts completions, failures and cut completions.

Example::

    solve:
      kind: generate
      inputs: {data: questions}
      model: policy                  # a name from the recipe's `models:`
      template: "Solve: {{ question }}"
      reasoning: true
      n: 4
      temperature: 0.8
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from dataforge.engine.events import edges, events
from dataforge.engine.plan import Plan, PlannedStep, Ref
from dataforge.engine.step import Columns, Context, PlanInfo, StepResult, step, with_columns
from dataforge.llm.base import CUT_AT_MAX_TOKENS
from dataforge.steps.prompting import PromptConfig, build_requests, client, require_prompt_columns, track
from dataforge.text.fields import MESSAGES
from dataforge.text.reasoning import REASONING_INSTRUCTION, split_reasoning

FAILED_SCHEMA = {"_id": pl.String, "_parent_id": pl.String, "error": pl.String}


class GenerateConfig(PromptConfig):
    n: int = Field(1, ge=1)
    reasoning: bool = False
    # a completion cut at max_tokens (finish_reason "length"): kept and flagged, or dropped
    truncated: Literal["keep", "drop"] = "keep"
    column: str = "completion"
    prompt_column: str = "prompt"

    @model_validator(mode="after")
    def _samples_can_differ(self) -> GenerateConfig:
        if self.n > 1 and self.temperature == 0:
            raise ValueError(
                f"n: {self.n} samples at temperature 0 are one greedy completion {self.n} times (duplicate rows); "
                "set a temperature above 0, or n: 1"
            )
        return self


def _added(cfg: GenerateConfig) -> list[str]:
    extra = ["think", "stated_answer"] if cfg.reasoning else []
    return ["_parent_id", "sample", cfg.prompt_column, cfg.column, "finish_reason", *extra]


def _columns(cfg: GenerateConfig, cols: dict[str, Columns], info: PlanInfo) -> dict[str, Columns]:
    require_prompt_columns(cfg, cols["data"])
    return {"data": with_columns(cols["data"], _added(cfg)), "failed": list(FAILED_SCHEMA)}


def system_prompt(cfg: GenerateConfig) -> str | None:
    if not cfg.reasoning:
        return cfg.system
    return f"{cfg.system}\n\n{REASONING_INSTRUCTION}" if cfg.system else REASONING_INSTRUCTION


@step(
    "generate",
    version=6,  # 2: a payload asked by several rows in one call is sent once, every row gets its answer;
    # 3: a completion with a repeated reasoning tag has no think / stated_answer (it is not the format)
    # 4: nor has one whose answer block is blank; a completion cut at max_tokens is flagged (or dropped);
    # a null the template prints, or a blank prompt, is an error naming the row (it was sent as "None" / "")
    # 5: a message whose content is null is empty (it was read as the text "None")
    # 6: a messages column a template prints is its text (it was sent as a Python list of dicts)
    outputs=("data", "failed"),
    columns=_columns,
    partition="rows",
    gathers_requests=True,
)
def generate(inputs: dict[str, pl.DataFrame], cfg: GenerateConfig, ctx: Context) -> StepResult:
    """n completions per row, each linked to its prompt row."""
    df = inputs["data"]
    rows = df.to_dicts()
    requests, prompts = build_requests(cfg, rows, cfg.n, system_prompt(cfg))
    answers = client(cfg, ctx).generate(requests, track(ctx), f"generate · {cfg.model.model}")

    take, samples, ids, parents, texts, finishes, sent = [], [], [], [], [], [], []
    failed: dict[str, list[Any]] = {k: [] for k in FAILED_SCHEMA}
    for i, (row, gen, prompt) in enumerate(zip(rows, answers, prompts, strict=True)):
        for k in range(cfg.n):
            child = f"{ctx.step}:{row['_id']}:{k}"
            if not gen.ok:
                failed["_id"].append(child)
                failed["_parent_id"].append(row["_id"])
                failed["error"].append(gen.error)
                continue
            take.append(i)
            samples.append(k)
            ids.append(child)
            parents.append(row["_id"])
            texts.append(gen.texts[k])
            finishes.append(gen.finish_reasons[k])
            sent.append(prompt)
    prompt_dtype = MESSAGES if cfg.mode == "chat" else pl.String
    out = df[take].with_columns(
        pl.Series("_id", ids, dtype=pl.String),
        pl.Series("_parent_id", parents, dtype=pl.String),
        pl.Series("sample", samples, dtype=pl.Int32),
        pl.Series(cfg.prompt_column, sent, dtype=prompt_dtype),
        pl.Series(cfg.column, texts, dtype=pl.String),
        pl.Series("finish_reason", finishes, dtype=pl.String),
    )
    if cfg.reasoning:
        parts = [split_reasoning(t) for t in texts]
        out = out.with_columns(
            pl.Series("think", [p[0] for p in parts], dtype=pl.String),
            pl.Series("stated_answer", [p[1] for p in parts], dtype=pl.String),
        )
    failed_df = pl.DataFrame(failed, schema=FAILED_SCHEMA)
    detail = {"model": cfg.model.model, "backend": cfg.model.backend}
    is_cut = pl.col("finish_reason") == CUT_AT_MAX_TOKENS
    cut = out.filter(is_cut)
    if cfg.truncated == "drop":
        out = out.filter(~is_cut)
    return StepResult(
        {"data": out, "failed": failed_df},
        events=[
            events(out["_id"], "generated", "generated", related_id=out["_parent_id"], detail=detail),
            events(
                cut["_id"],
                "dropped" if cfg.truncated == "drop" else "flagged",
                "generation:truncated",
                related_id=cut["_parent_id"],
                detail={"max_tokens": cfg.max_tokens},
            ),
            events(
                failed_df["_id"],
                "dropped",
                "generation_failed:" + failed_df["error"],
                related_id=failed_df["_parent_id"],
                detail=detail,
            ),
        ],
        edges=[edges(out["_id"], out["_parent_id"], "generated_from")],
    )


def card_section(ps: PlannedStep, load: Callable[[Ref], pl.DataFrame], plan: Plan) -> list[str]:
    """The card's lines for this step (see ``dataforge.card``)."""
    step_name = ps.name
    data, failed = load(Ref(step_name, "data")), load(Ref(step_name, "failed"))
    cut = int((data["finish_reason"] == CUT_AT_MAX_TOKENS).sum())
    lines = [f"From step `{step_name}` (generate): {data.height:,} completions, {failed.height:,} failed."]
    if cut:
        lines[0] += f" {cut:,} of them cut at `max_tokens` (flagged `generation:truncated`)."
    if failed.height:
        counts = failed.group_by("error").len().sort("error")
        lines += ["", "| failure | completions |", "|---|---|"]
        lines += [f"| {e} | {n:,} |" for e, n in counts.iter_rows()]
    return lines


generate.card_section = card_section  # type: ignore[attr-defined]
