"""``preference.pairs``: preference pairs ``(prompt, chosen, rejected)`` from several responses per
prompt, by one of four rules.

Consumes any named inputs (per table): one row per response, grouped by ``group`` (default ``_parent_id``: the prompt
row ``generate`` linked it to), with ``prompt``, ``completion`` and the rule's ``column``:

| rule       | column            | pairs (``pairs:``)                                                  |
|------------|-------------------|---------------------------------------------------------------------|
| `ranking`  | rank (1 = best)   | `all` (1≻2, 1≻3, 2≻3 …, default) or `best_vs_rest`                   |
| `scores`   | score (higher is better) | `best_vs_worst` (default), `all` (every pair with a gap > `margin`) |
| `verifier` | grader score      | every correct (≥ `correct_at`) × incorrect response (`all`)          |
| `revision` | –                 | one pair per row: ``chosen`` column ≻ ``rejected`` column            |

With ``revision`` (after ``critique_revise``) a pair links to the revision row and, through
``group`` (``_parent_id``), to the original response.

``max_pairs`` keeps, per prompt, the pairs with the largest margins. ``agree`` names a second
score column (e.g. a reward model's): a pair is kept only when it also prefers the chosen side.

Produces, per input, ``_id``, ``prompt``, ``chosen``, ``rejected``, ``score_chosen``,
``score_rejected``, ``margin``, ``group_id``, ``chosen_id``, ``rejected_id``, in TRL's
``conversational`` (message lists) or ``standard`` (text) style. Lineage: each pair has edges to
its two responses (``chosen``, ``rejected``) and a ``paired`` event. What could not be paired is
recorded as ``dropped``: ``pair:tie`` and ``pair:below_margin`` (the would-be pair),
``pair:no_contrast`` (a prompt whose responses are all correct or all wrong),
``pair:single_response``, ``pair:invalid_ranking`` (repeated ranks), ``pair:missing_score``,
``pair:empty_response`` (a blank response, or a blank revision or original: never a side),
``pair:disagree`` (``agree`` prefers the rejected side), ``pair:over_max_pairs``, ``pair:no_group``
(a null or blank group: no prompt to pair within) and ``pair:prompts_differ`` (a group whose rows
hold different prompts: ``group`` is not the prompt's; see ``steps.prompt_groups``).

Also here: ``preference.responses`` (ranked response columns → one row per response, to pair
again by rank) and ``preference.rm_pairs`` (pairs → reward-model rows ``{input, output_a,
output_b, preference}``).
"""

from __future__ import annotations

import json
from itertools import combinations, compress
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from dataforge.engine.events import edges, events
from dataforge.engine.step import (
    Columns,
    Context,
    PlanInfo,
    StepConfig,
    StepResult,
    per_table,
    require,
    step,
)
from dataforge.formats import as_messages, conversation_text, same_text
from dataforge.graders import completion_text
from dataforge.steps.prompt_groups import prompt_groups
from dataforge.steps.split import unit_hash
from dataforge.text.fields import MESSAGES

PAIR_COLUMNS = [
    "_id",
    "prompt",
    "chosen",
    "rejected",
    "score_chosen",
    "score_rejected",
    "margin",
    "group_id",
    "chosen_id",
    "rejected_id",
]
DEFAULT_PAIRS = {"ranking": "all", "scores": "best_vs_worst", "verifier": "all", "revision": "all"}


class PairsConfig(StepConfig):
    rule: Literal["ranking", "scores", "verifier", "revision"]
    column: str | None = None  # rank / score column (not for revision)
    pairs: Literal["all", "best_vs_rest", "best_vs_worst"] | None = None
    group: str = "_parent_id"
    prompt: str = "prompt"
    completion: str = "completion"
    chosen: str = "revision"  # revision rule: the preferred text
    rejected: str = "original"  # revision rule: the other
    margin: float = Field(0.0, ge=0)
    max_pairs: int | None = Field(None, ge=1)
    correct_at: float = 1.0
    agree: str | None = None
    style: Literal["conversational", "standard"] = "conversational"

    @model_validator(mode="after")
    def _check(self) -> PairsConfig:
        if self.rule != "revision" and self.column is None:
            raise ValueError(f"rule '{self.rule}' needs 'column' (the {self.rule} column)")
        allowed = {"ranking": {"all", "best_vs_rest"}, "scores": {"all", "best_vs_worst"}}
        if self.pairs and self.pairs not in allowed.get(self.rule, {"all"}):
            raise ValueError(f"rule '{self.rule}' does not take pairs: {self.pairs}")
        return self

    @property
    def mode(self) -> str:
        return self.pairs or DEFAULT_PAIRS[self.rule]


def _columns(cfg: PairsConfig, data: Columns, info: PlanInfo) -> Columns:
    require(data, [cfg.prompt], "prompt")
    if cfg.rule == "revision":
        require(data, [cfg.chosen], "chosen")
        require(data, [cfg.rejected], "rejected")
    else:
        require(data, [cfg.group], "group")
        require(data, [cfg.completion], "completion")
        require(data, [cfg.column], "column")
    require(data, [cfg.agree], "agree")
    return PAIR_COLUMNS


class _Decisions:
    """The pairs chosen so far and the rows / would-be pairs dropped, with reasons."""

    def __init__(self) -> None:
        self.pairs: list[tuple[dict[str, Any], dict[str, Any], float, float]] = []  # chosen, rejected, s_c, s_r
        self.dropped: list[tuple[str, str, str | None, dict[str, Any]]] = []  # row_id, reason, related, detail

    def drop_pair(self, a: dict[str, Any], b: dict[str, Any], reason: str, **detail: Any) -> None:
        self.dropped.append((f"{a['_id']}~{b['_id']}", reason, b["_id"], detail))

    def drop_rows(self, rows: list[dict[str, Any]], reason: str, **detail: Any) -> None:
        self.dropped.extend((r["_id"], reason, None, detail) for r in rows)


def _is_blank(response: Any) -> bool:
    """Whether a response says nothing (empty or whitespace): no side of a preference pair. A reward
    model or judge can score silence high ("harmless"), and a pair that prefers it teaches a policy
    to answer nothing."""
    return not completion_text(response).strip()


def _candidates(cfg: PairsConfig, rows: list[dict[str, Any]], d: _Decisions) -> list[tuple[dict, dict, float, float]]:
    """(chosen, rejected, chosen score, rejected score) candidates of one prompt's responses."""
    col = cfg.column or ""
    blank = [_is_blank(r[cfg.completion]) for r in rows]
    if any(blank):
        d.drop_rows([r for r, b in zip(rows, blank, strict=True) if b], "pair:empty_response")
        rows = [r for r, b in zip(rows, blank, strict=True) if not b]
    missing = [r for r in rows if r[col] is None]
    if missing:
        d.drop_rows(missing, "pair:missing_score", column=col)
        rows = [r for r in rows if r[col] is not None]
    if len(rows) < 2:
        d.drop_rows(rows, "pair:single_response")
        return []
    if cfg.rule == "ranking":
        ranks = [r[col] for r in rows]
        if len(set(ranks)) != len(ranks):
            d.drop_rows(rows, "pair:invalid_ranking", ranks=sorted(ranks))
            return []
        ordered = sorted(rows, key=lambda r: r[col])  # rank 1 first
        score = {r["_id"]: -float(r[col]) for r in rows}  # a better rank is a higher score
        if cfg.mode == "best_vs_rest":
            return [(ordered[0], r, score[ordered[0]["_id"]], score[r["_id"]]) for r in ordered[1:]]
        return [(a, b, score[a["_id"]], score[b["_id"]]) for a, b in combinations(ordered, 2)]
    ordered = sorted(rows, key=lambda r: (-float(r[col]), r["_id"]))
    if cfg.rule == "verifier":
        good = [r for r in ordered if r[col] >= cfg.correct_at]
        bad = [r for r in ordered if r[col] < cfg.correct_at]
        if not good or not bad:
            d.drop_rows(rows, "pair:no_contrast", correct=len(good), incorrect=len(bad))
            return []
        return [(g, b, float(g[col]), float(b[col])) for g in good for b in bad]
    out = []
    options = [(ordered[0], ordered[-1])] if cfg.mode == "best_vs_worst" else list(combinations(ordered, 2))
    for a, b in options:
        gap = float(a[col]) - float(b[col])
        if gap == 0:
            d.drop_pair(a, b, "pair:tie", score=float(a[col]))
        elif gap <= cfg.margin:
            d.drop_pair(a, b, "pair:below_margin", margin=gap)
        else:
            out.append((a, b, float(a[col]), float(b[col])))
    return out


def _keep(cfg: PairsConfig, cands: list[tuple[dict, dict, float, float]], d: _Decisions) -> None:
    agreed = []
    for a, b, sa, sb in cands:
        if cfg.agree and not (a[cfg.agree] is not None and b[cfg.agree] is not None and a[cfg.agree] > b[cfg.agree]):
            d.drop_pair(a, b, "pair:disagree", column=cfg.agree, chosen=a[cfg.agree], rejected=b[cfg.agree])
        else:
            agreed.append((a, b, sa, sb))
    agreed.sort(key=lambda p: (-(p[2] - p[3]), p[0]["_id"], p[1]["_id"]))
    limit = cfg.max_pairs or len(agreed)
    for a, b, _, _ in agreed[limit:]:
        d.drop_pair(a, b, "pair:over_max_pairs", max_pairs=cfg.max_pairs)
    d.pairs.extend(agreed[:limit])


@step(
    "preference.pairs",
    version=6,  # 2: a NaN score is a missing one (it was ranked: NaN compares false both ways)
    # 3: a blank response is no side of a pair (pair:empty_response; it could be chosen); a revision equal to
    # its original is recorded as pair:tie (recording it raised a TypeError: the build failed)
    # 4: a message whose content is null is empty (it was read as the text "None")
    # 5: rows with a null or blank group (pair:no_group) and groups mixing prompts (pair:prompts_differ) are
    # not paired: they were, a response to one prompt against a response to another
    # 6: two sides that only call tools tie only when the calls are the same (formats.same_text)
    inputs=None,
    per_table_columns=_columns,
    partition="key",
    partition_key=lambda cfg, df: df["_id"] if cfg.rule == "revision" else df[cfg.group],
    group_outputs=lambda cfg, outputs: tuple(outputs),
)
def preference_pairs(inputs: dict[str, pl.DataFrame], cfg: PairsConfig, ctx: Context) -> StepResult:
    """Pairs from rankings, scores, verifier outcomes or revisions; ties and the rest recorded.
    Its rows meet by ``group`` (the pairs of a prompt come from its rows); by revision each row
    makes its own pair, so each row is its own group (keyed by ``_id``) and the pairs come in row
    order, which is the order of the groups' first rows."""
    return per_table(inputs, lambda name, df: _pairs_of(name, df, cfg, ctx))


def _pairs_of(name: str, df: pl.DataFrame, cfg: PairsConfig, ctx: Context) -> StepResult:
    d = _Decisions()
    if cfg.rule == "revision":
        for r in df.to_dicts():
            original = r.get(cfg.group) or r["_id"]  # critique_revise: _parent_id is the original response
            chosen = {"_id": r["_id"], cfg.completion: r[cfg.chosen], cfg.prompt: r[cfg.prompt], cfg.group: original}
            rejected = {"_id": original, cfg.completion: r[cfg.rejected]}
            if _is_blank(r[cfg.chosen]) or _is_blank(r[cfg.rejected]):
                d.drop_rows([r], "pair:empty_response")
            elif same_text(r[cfg.chosen], r[cfg.rejected]):
                d.drop_rows([r], "pair:tie", note="revision equals the original")
            else:
                _keep(cfg, [(chosen, rejected, 1.0, 0.0)], d)
    else:
        col = cfg.column or ""  # (given for every rule but revision)
        if df.schema[col].is_float():  # a NaN score is no score, as in `filter`
            df = df.with_columns(pl.col(col).fill_nan(None))
        grouped = prompt_groups(df, cfg.group, cfg.prompt)
        d.dropped.extend((i, "pair:no_group", None, {"group": cfg.group}) for i in grouped.ungrouped)
        for g in grouped.mixed:
            d.drop_rows(g.to_dicts(), "pair:prompts_differ", group=cfg.group)
        groups = grouped.groups
        for g in ctx.progress.track(groups, total=len(groups), description="pairs", unit="prompts"):
            _keep(cfg, _candidates(cfg, g.to_dicts(), d), d)
    conv = cfg.style == "conversational"

    def side(value: Any, role: str) -> Any:
        return as_messages(value, role) if conv else conversation_text(value)

    rows = []
    for a, b, sa, sb in d.pairs:
        rows.append(
            {
                "_id": f"{ctx.step}:{a['_id']}>{b['_id']}",
                "prompt": side(a[cfg.prompt], "user"),
                "chosen": side(a[cfg.completion], "assistant"),
                "rejected": side(b[cfg.completion], "assistant"),
                "score_chosen": sa,
                "score_rejected": sb,
                "margin": sa - sb,
                "group_id": str(a[cfg.group]),
                "chosen_id": a["_id"],
                "rejected_id": b["_id"],
            }
        )
    text = MESSAGES if conv else pl.String
    schema = {
        "_id": pl.String,
        "prompt": text,
        "chosen": text,
        "rejected": text,
        "score_chosen": pl.Float64,
        "score_rejected": pl.Float64,
        "margin": pl.Float64,
        "group_id": pl.String,
        "chosen_id": pl.String,
        "rejected_id": pl.String,
    }
    out = pl.DataFrame(rows, schema=schema)
    dropped = pl.DataFrame(
        {
            "row_id": [x[0] for x in d.dropped],
            "reason": [x[1] for x in d.dropped],
            "related_id": [x[2] for x in d.dropped],
            "detail": [json.dumps(x[3], sort_keys=True, default=str) for x in d.dropped],
        },
        schema={"row_id": pl.String, "reason": pl.String, "related_id": pl.String, "detail": pl.String},
    )
    return StepResult(
        {name: out},
        events=[
            events(out["_id"], "paired", f"pair:{cfg.rule}", related_id=out["rejected_id"], score=out["margin"]),
            events(
                dropped["row_id"],
                "dropped",
                dropped["reason"],
                related_id=dropped["related_id"],
                detail=dropped["detail"],
            ),
        ],
        edges=[edges(out["_id"], out["chosen_id"], "chosen"), edges(out["_id"], out["rejected_id"], "rejected")],
    )


# -- preference.responses ---------------------------------------------------------------------------


ROW = "_responses_row"  # the input position while a table's responses are interleaved


class ResponsesConfig(StepConfig):
    responses: list[str] = Field(min_length=2)  # columns holding responses, best first
    prompt: str = "prompt"
    completion: str = "completion"
    rank: str = "rank"

    @model_validator(mode="after")
    def _distinct(self) -> ResponsesConfig:
        if len(set(self.responses)) < len(self.responses):
            raise ValueError(f"responses lists a column twice ({self.responses}): its responses would share ids")
        return self


def _responses_columns(cfg: ResponsesConfig, cols: Columns, info: PlanInfo) -> Columns:
    require(cols, [cfg.prompt, *cfg.responses], "responses")
    if cols is None:
        return None
    kept = [c for c in cols if c not in cfg.responses]
    return [*kept, *(c for c in ("_parent_id", cfg.completion, cfg.rank) if c not in kept)]


# 2: rows in input order (a row's responses together, by rank), not sorted by parent id: the
# output of a batch is then exactly its part of the whole table's, as streaming needs
# 3: an input with a _parent_id column (rows generate wrote) is taken; the build failed on a duplicate column
@step("preference.responses", version=3, inputs=None, per_table_columns=_responses_columns, partition="rows")
def preference_responses(inputs: dict[str, pl.DataFrame], cfg: ResponsesConfig, ctx: Context) -> StepResult:
    """One row per response of a ranked set of columns (e.g. HH-RLHF's ``chosen``, ``rejected``):
    ``_id`` = ``<step>:<row>:<column>``, ``_parent_id`` = the row, ``completion``, ``rank`` (1 =
    the first column), in input order. ``preference.pairs`` with ``rule: ranking`` pairs them again."""

    def one(name: str, df: pl.DataFrame) -> StepResult:
        # the row is its responses' parent: a _parent_id it has (its own parent) is in the lineage already
        base = df.drop(*cfg.responses, "_parent_id", strict=False).rename({"_id": "_parent_id"}).with_row_index(ROW)
        parts = [
            base.with_columns(
                (pl.lit(f"{ctx.step}:") + pl.col("_parent_id") + pl.lit(f":{col}")).alias("_id"),
                df[col].alias(cfg.completion),
                pl.lit(rank, dtype=pl.Int32).alias(cfg.rank),
            )
            for rank, col in enumerate(cfg.responses, start=1)
        ]
        out = pl.concat(parts).sort(ROW, cfg.rank, maintain_order=True).drop(ROW)
        return StepResult({name: out}, edges=[edges(out["_id"], out["_parent_id"], "response_of")])

    return per_table(inputs, one)


# -- preference.rm_pairs ----------------------------------------------------------------------------


class RmPairsConfig(StepConfig):
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    seed: int = 0  # which side the chosen response lands on: a hash of (seed, row id)


def _rm_columns(cfg: RmPairsConfig, cols: Columns, info: PlanInfo) -> Columns:
    require(cols, [cfg.prompt, cfg.chosen, cfg.rejected], "chosen")
    return ["_id", "input", "output_a", "output_b", "preference"]


@step(
    "preference.rm_pairs",
    version=4,  # 3: a pair with a blank side is dropped (pair:empty_response), one with equal sides (pair:tie);
    # both were written out (a blank rejected response was in the shipped hh_rm_pairwise train split)
    # 4: two sides that only call tools tie only when the calls are the same (formats.same_text)
    inputs=None,
    per_table_columns=_rm_columns,
    partition="rows",
)
def rm_pairs(inputs: dict[str, pl.DataFrame], cfg: RmPairsConfig, ctx: Context) -> StepResult:
    """Pairs → reward-model rows ``{input, output_a, output_b, preference}`` (text; ``preference``
    0 = ``output_a`` is preferred, 1 = ``output_b``). Which side the chosen response lands on is a
    stable hash of (``seed``, row id) (``split.unit_hash``), so the label is balanced and the same
    in every build, whatever changes upstream and whatever polars version runs it. A pair with a
    blank side is dropped as ``pair:empty_response`` (as ``preference.pairs`` drops it: a reward
    model taught that silence loses, or wins, learns nothing of the answer), one whose two sides
    are the same text as ``pair:tie`` (its label says nothing)."""

    def one(name: str, df: pl.DataFrame) -> StepResult:
        chosen_raw, rejected_raw = df[cfg.chosen].to_list(), df[cfg.rejected].to_list()
        chosen, rejected = [conversation_text(c) for c in chosen_raw], [conversation_text(r) for r in rejected_raw]
        blank = pl.Series([_is_blank(c) or _is_blank(r) for c, r in zip(chosen_raw, rejected_raw, strict=True)])
        same = pl.Series([same_text(c, r) for c, r in zip(chosen, rejected, strict=True)]) & ~blank
        dropped = [
            events(df["_id"].filter(blank), "dropped", "pair:empty_response"),
            events(df["_id"].filter(same), "dropped", "pair:tie"),
        ]
        kept = (~(blank | same)).to_list()
        ids = df["_id"].filter(pl.Series(kept))
        prompts = [conversation_text(p) for p in compress(df[cfg.prompt].to_list(), kept)]
        chosen, rejected = list(compress(chosen, kept)), list(compress(rejected, kept))
        flip = [unit_hash(cfg.seed, i) >= 0.5 for i in ids.to_list()]
        out = pl.DataFrame(
            {
                "_id": ids,
                "input": prompts,
                "output_a": [r if f else c for c, r, f in zip(chosen, rejected, flip, strict=True)],
                "output_b": [c if f else r for c, r, f in zip(chosen, rejected, flip, strict=True)],
                "preference": pl.Series([1 if f else 0 for f in flip], dtype=pl.Int8),
            },
            schema={
                "_id": pl.String,
                "input": pl.String,
                "output_a": pl.String,
                "output_b": pl.String,
                "preference": pl.Int8,
            },
        )
        return StepResult({name: out}, events=dropped)

    return per_table(inputs, one)
