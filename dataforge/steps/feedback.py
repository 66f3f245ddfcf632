"""``ai_feedback`` (RLAIF): an LLM judge compares or ranks the responses of each prompt.

Consumes ``data``: responses grouped by ``group`` (default ``_parent_id``) with ``prompt`` and
``completion``. Two modes (for one score per response, use ``score.judge``):

- ``pairwise``: every pair of a prompt's responses is judged twice, in both orders (A/B, then
  B/A). Only a verdict that names the same response both times counts; one that flips with the
  order is discarded as position bias (``feedback:position_bias``), one that cannot be parsed as
  ``feedback:unparseable``. ``ai_wins`` counts each response's consistent wins.
- ``ranking``: the judge sees all K responses, numbered, and answers an order such as
  ``2 > 1 > 3``; ``ai_rank`` holds each response's place (1 = best). It ranks them twice, as
  listed and in reverse (``swap: true``, the default): only a ranking that is the same both times
  counts; one that changes with the order is discarded as position bias
  (``feedback:position_bias``: judges favour the first or last response listed). An answer that
  is not a permutation of 1…K leaves the ranks null (``feedback:invalid_ranking``). ``swap:
  false`` asks once (half the calls; position bias unchecked).

Produces ``data`` (the responses with ``ai_wins`` / ``ai_rank``) and ``verdicts``: every judge
answer kept (``group_id``, the two or K response ids, the raw answers, the parsed verdict, the
``status``). Then ``preference.pairs`` turns ranks (``rule: ranking``) or wins (``rule: scores``)
into pairs.

Rows whose group is null or blank, and groups whose rows hold different prompts, are not judged:
they keep ``ai_wins`` 0 / ``ai_rank`` null and are flagged ``feedback:no_group`` /
``feedback:prompts_differ`` (``steps.prompt_groups``).

The judge's prompt is a Jinja2 ``template`` (defaults below) over ``prompt`` (text) and
``response_a`` / ``response_b`` (pairwise) or ``responses`` (a list, ranking).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import combinations
from typing import Any, Literal

import polars as pl
from pydantic import Field

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
from dataforge.graders import completion_text
from dataforge.llm.base import Request
from dataforge.llm.spec import ModelSpec, SamplingParams
from dataforge.llm.templates import render, template_variables
from dataforge.steps.prompt_groups import prompt_groups
from dataforge.steps.prompting import last_stated, track
from dataforge.text.reasoning import after_thinking

PAIRWISE_TEMPLATE = (
    "Which response answers the user better: more helpful, honest and harmless?\n\n"
    "User: {{ prompt }}\n\nResponse A: {{ response_a }}\n\nResponse B: {{ response_b }}\n\n"
    'Reply with "[[A]]" or "[[B]]".'
)
RANKING_TEMPLATE = (
    "Rank these responses to the user from best to worst (helpful, honest, harmless).\n\n"
    "User: {{ prompt }}\n\n{% for r in responses %}[{{ loop.index }}] {{ r }}\n\n{% endfor %}"
    'Reply with the order only, best first, e.g. "[2] > [1] > [3]".'
)
VERDICT_SCHEMA = {
    "_id": pl.String,
    "group_id": pl.String,
    "response_ids": pl.List(pl.String),
    "answers": pl.List(pl.String),
    "verdict": pl.List(pl.Int32),  # pairwise: [winner index in response_ids]; ranking: the order
    "status": pl.String,
}
# "[[A]]"; else a verdict stated with a colon or "is" ("Verdict: B", "the better response is A"):
# "Response A" / "Answer B" are the responses' names, not a verdict ("Response A is better than
# Response B" ends on B)
_AB = (
    re.compile(r"\[\[\s*([AB])\s*\]\]"),
    re.compile(r"(?i)\b(?:verdict|answer|choice|response)\s*(?::|\bis\b\s*:?)\s*\(?([AB])\)?(?![\w])"),
)


class FeedbackConfig(StepConfig):
    model: ModelSpec
    mode: Literal["pairwise", "ranking"] = "pairwise"
    group: str = "_parent_id"
    prompt: str = "prompt"
    completion: str = "completion"
    template: str | None = None
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(64, ge=1)
    seed: int = 0
    max_failure_rate: float = Field(0.5, ge=0, le=1)  # above it the step fails, naming the errors
    swap: bool = True  # ranking: rank again in reverse order, keep only a ranking that agrees (pairwise: always)

    def source(self) -> str:
        return self.template or (PAIRWISE_TEMPLATE if self.mode == "pairwise" else RANKING_TEMPLATE)


def _columns(cfg: FeedbackConfig, cols: dict[str, Columns], info: PlanInfo) -> dict[str, Columns]:
    for key in ("group", "prompt", "completion"):
        require(cols["data"], [getattr(cfg, key)], key)
    allowed = {"prompt", "response_a", "response_b"} if cfg.mode == "pairwise" else {"prompt", "responses"}
    unknown = template_variables(cfg.source()) - allowed
    if unknown:
        from dataforge.errors import RecipeError

        raise RecipeError(
            f"the {cfg.mode} template may use {', '.join(sorted(allowed))}; not {', '.join(sorted(unknown))}",
            key="template",
        )
    added = ["ai_wins", "ai_comparisons"] if cfg.mode == "pairwise" else ["ai_rank"]
    return {"data": with_columns(cols["data"], added), "verdicts": list(VERDICT_SCHEMA)}


def parse_ab(text: str) -> str | None:
    """ "A" or "B" from a pairwise verdict, or None."""
    stated = last_stated(text, _AB)
    if stated is not None:
        return stated.upper()
    stripped = (text or "").strip().strip(".").upper()
    return stripped if stripped in ("A", "B") else None


_RANKING_CHAIN = re.compile(r"\[\s*\d+\s*\](?:\s*(?:>|,)\s*\[\s*\d+\s*\])+")  # "[2] > [1] > [3]"
_BARE_RANKING = re.compile(r"^\s*\d+(?:\s*(?:>|,)\s*\d+)+\s*\.?\s*$")  # the whole answer "2 > 1 > 3"


def parse_ranking(text: str, k: int) -> list[int] | None:
    """The order (0-based indices, best first) in an answer like "[2] > [1] > [3]", if it is a
    permutation of 1…K; else None. The order is read from the first chain of bracketed numbers
    (what follows it, "[3] repeats itself", is comment), or from an answer that is only numbers
    and separators ("2 > 1 > 3"); never from numbers in prose ("1 is worse than 2 …" says the
    reverse of what its digits read)."""
    text = after_thinking(text) or ""
    chain = _RANKING_CHAIN.search(text)
    found = chain.group(0) if chain else text if _BARE_RANKING.match(text) else ""
    numbers = [int(n) - 1 for n in re.findall(r"\d+", found)]
    return numbers if sorted(numbers) == list(range(k)) else None


def _ranking(answers: list[str], k: int) -> tuple[list[int] | None, str]:
    """The order (indices into the responses as listed, best first) and status of a ranking asked
    once, or twice with the second listing reversed: the reversed answer read back into the
    listed order must be the same ranking, else ``position_bias``."""
    orders = [parse_ranking(a, k) for a in answers]
    if any(o is None for o in orders):
        return None, "invalid_ranking"
    if len(orders) == 2:
        back = [k - 1 - i for i in orders[1]]  # type: ignore[union-attr]
        if back != orders[0]:
            return None, "position_bias"
    return orders[0], "consistent"


@step(
    "ai_feedback",
    version=6,  # 2: a payload asked by several rows in one call is sent once
    # 3: a ranking is read from its chain of [n]s, or a bare "2 > 1 > 3" (digits in prose were read as the order);
    # a pairwise verdict in words needs "is" or ":" ("Response A is better than Response B" read as B);
    # a null the template prints is an error naming the row
    # 4: a message whose content is null is empty (it was read as the text "None")
    # 5: rows with a null or blank group and groups mixing prompts are not judged (flagged feedback:no_group,
    # feedback:prompts_differ): they were judged against responses to another prompt, under the first's prompt
    # 6: a ranking is asked again with the responses listed in reverse (swap); one that changes is position_bias;
    # verdicts and rankings are read past a thinking model's reasoning (after its last </think>)
    outputs=("data", "verdicts"),
    columns=_columns,
    partition="key",
    partition_key=column_key("group"),
    group_outputs=lambda cfg, outputs: ("verdicts",),
    gathers_requests=True,
)
def ai_feedback(inputs: dict[str, pl.DataFrame], cfg: FeedbackConfig, ctx: Context) -> StepResult:
    """Pairwise verdicts in both orders, or listwise rankings, from an LLM judge."""
    df = inputs["data"]
    client = ctx.llm.client(cfg.model)
    params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed)
    grouped = prompt_groups(df, cfg.group, cfg.prompt)
    groups = [g.to_dicts() for g in grouped.groups]
    text = lambda r, col: completion_text(r[col])  # noqa: E731
    jobs: list[tuple[str, list[dict[str, Any]], list[str]]] = []  # (group id, responses, prompts)
    for g in groups:
        if cfg.mode == "pairwise":
            for a, b in combinations(g, 2):
                shown = [(a, b), (b, a)]
                prompts = [
                    render(
                        cfg.source(),
                        {
                            "prompt": text(a, cfg.prompt),
                            "response_a": text(x, cfg.completion),
                            "response_b": text(y, cfg.completion),
                        },
                    )
                    for x, y in shown
                ]
                jobs.append((str(a[cfg.group]), [a, b], prompts))
        elif len(g) >= 2:
            responses = [text(r, cfg.completion) for r in g]
            shown = [responses, responses[::-1]] if cfg.swap else [responses]
            prompts = [render(cfg.source(), {"prompt": text(g[0], cfg.prompt), "responses": s}) for s in shown]
            jobs.append((str(g[0][cfg.group]), g, prompts))
    requests = [Request(params, messages=({"role": "user", "content": p},)) for _, _, ps in jobs for p in ps]
    answers = client.generate(requests, track(ctx), f"ai feedback · {cfg.model.model}")
    pos = 0
    verdicts: list[dict[str, Any]] = []
    wins: dict[str, int] = {}
    comparisons: dict[str, int] = {}
    ranks: dict[str, int] = {}
    for gid, members, prompts in jobs:
        gens = answers[pos : pos + len(prompts)]
        pos += len(prompts)
        ids = [m["_id"] for m in members]
        raw = [g.texts[0] if g.ok else f"<request failed: {g.error}>" for g in gens]
        order: list[int] | None = None
        if any(not g.ok for g in gens):
            status = "failed"
        elif cfg.mode == "pairwise":
            first, swapped = parse_ab(raw[0]), parse_ab(raw[1])
            if first is None or swapped is None:
                status = "unparseable"
            elif first == swapped:  # "A" both times names two different responses
                status = "position_bias"
            else:
                status, order = "consistent", [0 if first == "A" else 1]
                wins[ids[order[0]]] = wins.get(ids[order[0]], 0) + 1
            for i in ids:
                comparisons[i] = comparisons.get(i, 0) + (status == "consistent")
        else:
            order, status = _ranking(raw, len(ids))
            for place, idx in enumerate(order or []):
                ranks[ids[idx]] = place + 1
        verdicts.append(
            {
                "_id": f"{ctx.step}:" + "~".join(ids),
                "group_id": gid,
                "response_ids": ids,
                "answers": raw,
                "verdict": order,
                "status": status,
            }
        )
    table = pl.DataFrame(verdicts, schema=VERDICT_SCHEMA)
    if cfg.mode == "pairwise":
        out = df.with_columns(
            pl.col("_id").replace_strict(wins, default=0, return_dtype=pl.Int32).alias("ai_wins"),
            pl.col("_id").replace_strict(comparisons, default=0, return_dtype=pl.Int32).alias("ai_comparisons"),
        )
    else:
        out = df.with_columns(pl.col("_id").replace_strict(ranks, default=None, return_dtype=pl.Int32).alias("ai_rank"))
    bad = table.filter(pl.col("status") != "consistent")
    detail = pl.Series([json.dumps({"answers": a}) for a in bad["answers"].to_list()], dtype=pl.String)
    mixed = pl.concat([g["_id"] for g in grouped.mixed]) if grouped.mixed else grouped.ungrouped.clear()
    return StepResult(
        {"data": out, "verdicts": table},
        events=[
            events(bad["_id"], "dropped", "feedback:" + bad["status"], related_id=bad["group_id"], detail=detail),
            events(grouped.ungrouped, "flagged", "feedback:no_group", detail={"group": cfg.group}),
            events(mixed, "flagged", "feedback:prompts_differ", detail={"group": cfg.group}),
        ],
    )


def card_section(ps: PlannedStep, load: Callable[[Ref], pl.DataFrame], plan: Plan) -> list[str]:
    """The card's lines for this step (see ``dataforge.card``)."""
    step_name = ps.name
    v = load(Ref(step_name, "verdicts"))
    counts = v.group_by("status").len().sort("status")
    return [
        f"From step `{step_name}` (ai_feedback): {v.height:,} judgements.",
        "",
        "| status | judgements |",
        "|---|---|",
        *(f"| {s} | {n:,} |" for s, n in counts.iter_rows()),
    ]


ai_feedback.card_section = card_section  # type: ignore[attr-defined]
