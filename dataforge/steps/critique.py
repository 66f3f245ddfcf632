"""``critique_revise``: a model critiques and revises its own responses under a constitution
(Constitutional AI, Bai et al. 2022), for ``rounds`` rounds.

Consumes ``data`` with ``prompt`` (the conversation so far: messages or text) and ``response``
(the response to revise: text, or a one-message list). Each round, per response: a principle is
drawn by a seeded hash of the row id and round (``principle: random``) or fixed (``principle: <id>``); the model is
asked the principle's critique request about its last response, then its revision request; the
revision becomes the response the next round critiques. With ``stop_on_no_violation`` (and the
constitution's ``no_violation`` regex), a critique that finds nothing ends that response's loop.

Produces ``data``: one row per response, the input columns plus ``_id`` = ``<step>:<input id>``,
``_parent_id`` (the input row: the original response), ``original``, ``revision`` (the last
revision, or the original when the first critique found no violation), ``rounds`` (revisions
made) and ``principles`` (their ids, in order); and ``rounds``: every round kept (``round``,
``principle``, ``critique``, ``revision``, ``_parent_id`` = the version it revised).

Lineage: a round row has a ``revised`` event (reason ``critique:<principle id>``, detail
``{round, principle}``) and an edge ``revision_of`` to the version it revised; a ``data`` row has
an edge ``revised_from`` to the original and a ``revised`` event (``critique_revise``, detail
``{rounds, principles}``). A critique that found no violation is a ``flagged`` event
``critique:no_violation``; a request that failed, or answered nothing (``empty_critique``,
``empty_revision``), before any revision drops the response (``generation_failed:<error>``); one
that failed later keeps the revisions made so far, its row flagged ``generation_failed:<error>``
with the round that failed. A row whose final revision was cut at ``max_tokens`` is flagged
``generation:truncated`` with its round, as ``generate`` flags its completions.

Example::

    revised:
      kind: critique_revise
      inputs: {data: responses}
      model: policy
      constitution: constitutions/harmless.yaml
      prompt: prompt
      response: completion
      rounds: 2
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
from pydantic import Field

from dataforge.constitution import Constitution, Principle, load_constitution
from dataforge.engine.events import edges, events
from dataforge.engine.fingerprint import file_sha256
from dataforge.engine.plan import Plan, PlannedStep, Ref
from dataforge.engine.step import Columns, Context, PlanInfo, StepConfig, StepResult, require, step, with_columns
from dataforge.errors import RecipeError
from dataforge.formats import as_messages
from dataforge.graders import completion_text
from dataforge.llm.base import CUT_AT_MAX_TOKENS, Request
from dataforge.llm.spec import ModelSpec, SamplingParams
from dataforge.steps.prompting import track
from dataforge.steps.split import unit_hash

ROUND_SCHEMA = {
    "_id": pl.String,
    "_parent_id": pl.String,
    "_original_id": pl.String,
    "round": pl.Int32,
    "principle": pl.String,
    "critique": pl.String,
    "revision": pl.String,
}


class CritiqueConfig(StepConfig):
    model: ModelSpec
    constitution: str  # path of the constitution YAML, relative to the recipe
    prompt: str = "prompt"
    response: str = "completion"
    rounds: int = Field(1, ge=1, le=16)
    principle: str = "random"  # or a principle id, for every round
    stop_on_no_violation: bool = True
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    seed: int = 0
    max_failure_rate: float = Field(0.5, ge=0, le=1)  # above it the step fails, naming the errors

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=self.seed
        )


def _constitution(cfg: CritiqueConfig, info: PlanInfo | Context) -> Constitution:
    const = load_constitution(info.resolve(cfg.constitution))
    if cfg.principle != "random" and cfg.principle not in {p.id for p in const.principles}:
        known = ", ".join(p.id for p in const.principles)
        raise RecipeError(f"no principle '{cfg.principle}' in the constitution (it has: {known})", key="principle")
    return const


def _columns(cfg: CritiqueConfig, cols: dict[str, Columns], info: PlanInfo) -> dict[str, Columns]:
    _constitution(cfg, info)  # validated at plan time
    require(cols["data"], [cfg.prompt], "prompt")
    require(cols["data"], [cfg.response], "response")
    added = ["_parent_id", "original", "revision", "rounds", "principles"]
    return {"data": with_columns(cols["data"], added), "rounds": list(ROUND_SCHEMA)}


def _fingerprint(cfg: CritiqueConfig, info: PlanInfo) -> str:
    return file_sha256(info.resolve(cfg.constitution))  # editing the constitution re-runs the step


# a label a model puts before its revision: "Revision: …", "**Revised response:** …", or a line
# "Here is a revised version of the response:" — it would open the chosen side of a preference pair
_INLINE_LABEL = re.compile(
    r"^\s*[*_]*(?:revision|revised (?:response|answer|version)|rewritten (?:response|answer)|rewrite)[*_]*\s*:[*_]*\s*",
    re.IGNORECASE,
)
_LEAD_IN = re.compile(
    r"^\s*(?:sure[,!.]?\s*)?here(?:'s| is) (?:a |the |my )?(?:revised|rewritten|improved|updated)\b"
    r"[^\n:]{0,60}:[ \t]*\n",
    re.IGNORECASE,
)


def revision_text(answer: str) -> str:
    """A revision request's answer without the label or lead-in line a model opens it with
    ("Revision: …", "Here is a revised response:"); the rest exactly as written."""
    return _LEAD_IN.sub("", _INLINE_LABEL.sub("", answer, count=1), count=1).strip()


def _answered(gen: Any) -> bool:
    """Whether a request came back with text: a failed request, or an empty or blank answer, is
    no critique and no revision (a blank revision would become the response and the ``chosen``
    side of its preference pair)."""
    return bool(gen.ok and gen.texts[0].strip())


def _failure(gen: Any, blank: str) -> str:
    """The reason a request gave no text: its error, or ``blank`` when it answered nothing."""
    return (gen.error or "unknown") if not gen.ok else blank


@step(
    "critique_revise",
    version=6,  # 3: a payload asked by several rows in one call is sent once
    # 4: a blank critique or revision is a failed request (a blank revision was kept as the response);
    # a row kept after a later round failed is flagged generation_failed:<error>; a final revision cut at
    # max_tokens is flagged generation:truncated
    # 5: a message whose content is null is empty (it was read as the text "None")
    # 6: a revision's opening label or lead-in line ("Revision:", "Here is a revised response:") is not kept;
    # a critique's "no violation" is read past a thinking model's reasoning (after its last </think>)
    outputs=("data", "rounds"),
    columns=_columns,
    data_fingerprint=_fingerprint,
    partition="rows",
    gathers_requests=True,
)
def critique_revise(inputs: dict[str, pl.DataFrame], cfg: CritiqueConfig, ctx: Context) -> StepResult:
    """Critique → revise rounds under a constitution; every round kept."""
    df = inputs["data"]
    const = _constitution(cfg, ctx)
    client = ctx.llm.client(cfg.model)
    params = cfg.sampling()
    rows = df.to_dicts()
    # each row's principles from a seeded hash of its id and round, never from its position: the
    # same row draws the same principles in any batch (the step's `rows` partition contract)
    seed = int(ctx.fingerprint[:16], 16)
    draws = np.array(
        [
            [int(unit_hash(seed, f"{r['_id']}\x1f{rd}") * len(const.principles)) for rd in range(cfg.rounds)]
            for r in rows
        ],
        dtype=np.int64,
    ).reshape(len(rows), cfg.rounds)
    convo = [as_messages(r[cfg.prompt], "user") for r in rows]
    current = [completion_text(r[cfg.response]) for r in rows]
    version = [r["_id"] for r in rows]
    used: list[list[str]] = [[] for _ in rows]
    active = list(range(len(rows)))
    round_rows: list[dict[str, Any]] = []
    flagged: list[tuple[str, str]] = []  # (version id, detail)
    failed: dict[int, str] = {}
    truncated: dict[int, int] = {}  # row → the round whose revision, now its response, was cut at max_tokens

    def principle(i: int, rd: int) -> Principle:
        return const.principles[int(draws[i, rd])] if cfg.principle == "random" else const.by_id(cfg.principle)

    for rd in range(cfg.rounds):
        if not active:
            break
        chosen = {i: principle(i, rd) for i in active}
        base = {i: [*convo[i], {"role": "assistant", "content": current[i]}] for i in active}
        critiques = client.generate(
            [Request(params, messages=(*base[i], {"role": "user", "content": chosen[i].critique})) for i in active],
            track(ctx),
            f"critique · round {rd + 1}",
        )
        to_revise = []
        for i, gen in zip(active, critiques, strict=True):
            if not _answered(gen):
                failed[i] = _failure(gen, "empty_critique")
            elif cfg.stop_on_no_violation and const.found_no_violation(gen.texts[0]):
                flagged.append((version[i], json.dumps({"round": rd + 1, "principle": chosen[i].id})))
            else:
                to_revise.append((i, gen.texts[0]))
        revisions = client.generate(
            [
                Request(
                    params,
                    messages=(
                        *base[i],
                        {"role": "user", "content": chosen[i].critique},
                        {"role": "assistant", "content": critique},
                        {"role": "user", "content": chosen[i].revision},
                    ),
                )
                for i, critique in to_revise
            ],
            track(ctx),
            f"revise · round {rd + 1}",
        )
        active = []
        for (i, critique), gen in zip(to_revise, revisions, strict=True):
            text = revision_text(gen.texts[0]) if gen.ok else ""
            if not text:
                failed[i] = _failure(gen, "empty_revision")
                continue
            rid = f"{ctx.step}:{rows[i]['_id']}:r{rd + 1}"
            round_rows.append(
                {
                    "_id": rid,
                    "_parent_id": version[i],
                    "_original_id": rows[i]["_id"],
                    "round": rd + 1,
                    "principle": chosen[i].id,
                    "critique": critique,
                    "revision": text,
                }
            )
            version[i], current[i] = rid, text
            used[i].append(chosen[i].id)
            active.append(i)
            if gen.finish_reasons and gen.finish_reasons[0] == CUT_AT_MAX_TOKENS:
                truncated[i] = rd + 1
            else:
                truncated.pop(i, None)

    def out_ids(which: list[int]) -> pl.Series:
        """The ``data`` row ids of the rows ``which``."""
        return pl.Series([f"{ctx.step}:{rows[i]['_id']}" for i in which], dtype=pl.String)

    keep = [i for i in range(len(rows)) if not (i in failed and not used[i])]
    out = df[keep].with_columns(
        out_ids(keep).alias("_id"),
        pl.Series("_parent_id", [rows[i]["_id"] for i in keep], dtype=pl.String),
        pl.Series("original", [completion_text(rows[i][cfg.response]) for i in keep], dtype=pl.String),
        pl.Series("revision", [current[i] for i in keep], dtype=pl.String),
        pl.Series("rounds", [len(used[i]) for i in keep], dtype=pl.Int32),
        pl.Series("principles", [used[i] for i in keep], dtype=pl.List(pl.String)),
    )
    rounds = pl.DataFrame(round_rows, schema=ROUND_SCHEMA)
    lost = [i for i in range(len(rows)) if i in failed and not used[i]]
    cut_short = [i for i in keep if i in failed]  # kept with the revisions made before a round failed
    cut_off = [i for i in keep if i in truncated]  # their revision stops at max_tokens
    final_detail = pl.Series([json.dumps({"rounds": len(used[i]), "principles": used[i]}) for i in keep])
    return StepResult(
        {"data": out, "rounds": rounds},
        events=[
            events(
                rounds["_id"],
                "revised",
                "critique:" + rounds["principle"],
                related_id=rounds["_parent_id"],
                detail=pl.Series(
                    [json.dumps({"round": r["round"], "principle": r["principle"]}) for r in round_rows],
                    dtype=pl.String,
                ),
            ),
            events(out["_id"], "revised", "critique_revise", related_id=out["_parent_id"], detail=final_detail),
            events(
                pl.Series([f for f, _ in flagged], dtype=pl.String),
                "flagged",
                "critique:no_violation",
                detail=pl.Series([d for _, d in flagged], dtype=pl.String),
            ),
            events(
                pl.Series([rows[i]["_id"] for i in lost], dtype=pl.String),
                "dropped",
                pl.Series([f"generation_failed:{failed[i]}" for i in lost], dtype=pl.String),
            ),
            events(
                out_ids(cut_short),
                "flagged",
                pl.Series([f"generation_failed:{failed[i]}" for i in cut_short], dtype=pl.String),
                detail=pl.Series(
                    [json.dumps({"failed_round": len(used[i]) + 1, "rounds": len(used[i])}) for i in cut_short],
                    dtype=pl.String,
                ),
            ),
            events(
                out_ids(cut_off),
                "flagged",
                "generation:truncated",
                detail=pl.Series([json.dumps({"round": truncated[i]}) for i in cut_off], dtype=pl.String),
            ),
        ],
        edges=[
            edges(rounds["_id"], rounds["_parent_id"], "revision_of"),
            edges(out["_id"], out["_parent_id"], "revised_from"),
        ],
    )


def card_section(ps: PlannedStep, load: Callable[[Ref], pl.DataFrame], plan: Plan) -> list[str]:
    """The card's lines for this step (see ``dataforge.card``)."""
    step_name = ps.name
    data, rounds = load(Ref(step_name, "data")), load(Ref(step_name, "rounds"))
    lines = [
        f"From step `{step_name}` (critique_revise): {data.height:,} responses, {rounds.height:,} revisions; "
        f"{data.filter(pl.col('rounds') == 0).height:,} needed none.",
    ]
    if rounds.height:
        counts = rounds.group_by("principle").len().sort("principle")
        lines += ["", "| principle | revisions |", "|---|---|", *(f"| {p} | {n:,} |" for p, n in counts.iter_rows())]
    return lines


critique_revise.card_section = card_section  # type: ignore[attr-defined]
