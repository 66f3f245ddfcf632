"""``split.audit``: check that splits (of one dataset or several) do not leak into each other.

Consumes any named inputs (each a split: ``{train: split.train, test: grpo.test, …}``), reading
the ``prompt`` fields (and ``target`` fields, if given) of each; produces ``findings``: one row
per leak found, with ``finding``, ``input_a``, ``row_a``, ``input_b``, ``row_b``, ``score``.

For every pair of inputs it finds:
- ``exact_overlap``: the same normalized prompt (and the same target, or no target given); a
  blank prompt (empty or null in every prompt field) is no copy of another blank one. Normalized
  is ``key_text``: one prompt in any chat format (ChatML, Llama, Gemma, HH) or as a messages list
  is one prompt, and invisible characters do not count;
- ``same_prompt_different_target``: the same normalized prompt with another target;
- ``near_overlap``: prompts whose word-shingle Jaccard reaches ``threshold`` (MinHash LSH
  candidates, verified exactly), not already an exact overlap;
- ``time_order`` (with ``time_order: [train, validation, test]``): a row of a later input
  dated at or before the newest row of an earlier one (``_ts``).

Each finding flags the row of the later input (``flagged`` event, reason ``audit:<finding>``,
``related_id`` = the row it collides with). With ``strict: true`` any finding fails the build,
naming the rows. Every dataset card carries the same audit for its own splits.

Example::

    audit:
      kind: split.audit
      inputs: {train: split.train, validation: split.validation, eval: parsed.test}
      prompt: question
      target: final_answer
      strict: true
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from pydantic import field_validator

from dataforge.cluster import lsh_keys, near_duplicate_pairs_in_batches
from dataforge.engine.events import events
from dataforge.engine.step import ColumnContractError, Columns, Context, Fields, PlanInfo, StepConfig, StepResult, step
from dataforge.engine.streaming import key_hashes
from dataforge.engine.table import Mapper, Table
from dataforge.errors import DataError, RecipeError
from dataforge.text.fields import blank_keys, folded_keys, key_text

if TYPE_CHECKING:
    import pyarrow as pa

FINDINGS_SCHEMA = {
    "_id": pl.String,
    "finding": pl.String,
    "input_a": pl.String,
    "row_a": pl.String,
    "input_b": pl.String,
    "row_b": pl.String,
    "score": pl.Float64,
}


class AuditConfig(StepConfig):
    prompt: Fields
    target: Fields | None = None
    near: bool = True
    threshold: float = 0.8
    ngram: int = 3
    num_perm: int = 128
    time_order: list[str] | None = None
    strict: bool = False

    @field_validator("threshold")
    @classmethod
    def _unit(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"threshold must be between 0 and 1, not {v}")
        return v


def _columns(cfg: AuditConfig, cols: dict[str, Columns], info: PlanInfo) -> dict[str, Columns]:
    if len(cols) < 2:
        raise RecipeError("an audit needs at least two inputs to compare", key="inputs")
    for name, c in cols.items():
        for key, fields in (("prompt", cfg.prompt), ("target", cfg.target or [])):
            for f in fields:
                if c is not None and f not in c:
                    raise ColumnContractError(f, key, c, name)
    for name in cfg.time_order or []:
        if name not in cols:
            raise RecipeError(f"names input '{name}', which the audit does not have", key="time_order")
        c = cols[name]
        if c is not None and "_ts" not in c:
            raise ColumnContractError("_ts", "time_order", c, name)
    return {"findings": list(FINDINGS_SCHEMA)}


def audit_frames(
    tables: dict[str, pl.DataFrame | Table],
    prompt: Sequence[str],
    target: Sequence[str] | None = None,
    *,
    near: bool = True,
    threshold: float = 0.8,
    ngram: int = 3,
    num_perm: int = 128,
    time_order: Sequence[str] | None = None,
    prompt_roles: Sequence[str] | None = None,
    target_roles: Sequence[str] | None = None,
    mapper: Mapper | None = None,
    folder: Path | None = None,
) -> pl.DataFrame:
    """Every leak between the named tables (see the module doc), as a findings frame.

    Reads each table a batch at a time (``Table.map_batches``) and keeps, per row, its id, 64-bit
    hashes of its normalized prompt and target (exact overlaps are equal hashes) and its
    prompt's LSH band keys; the prompt text of rows in near-duplicate candidate pairs is read
    again to verify them (staged under ``folder``). The executor's ``mapper`` runs the divided
    work (the batches, the verification's jobs)."""
    tabs = {name: Table.of(t) for name, t in tables.items()}
    order = {name: i for i, name in enumerate(tabs)}
    fields = list(dict.fromkeys(["_id", *prompt, *(target or [])]))
    prompt_fields = list(dict.fromkeys(prompt))

    def prompts_of(batch: pl.DataFrame) -> pl.Series:
        return key_text(batch, prompt, prompt_roles)

    lsh = (threshold, num_perm, ngram) if near else None
    parts, keyed = [], []
    for name, t in tabs.items():
        one = functools.partial(
            audit_batch, name=name, prompt=prompt, target=target, roles=(prompt_roles, target_roles), lsh=lsh
        )
        for hashed, keys in t.map_batches(one, fields, mapper=mapper):
            parts.append(hashed)
            keyed.append(keys)
    schema = {"input": pl.String, "row": pl.String, "p": pl.UInt64, "t": pl.UInt64, "blank": pl.Boolean}
    rows = pl.concat(parts) if parts else pl.DataFrame(schema=schema)
    rows = rows.with_columns(pl.col("input").replace_strict(order, return_dtype=pl.Int32).alias("k"))
    found: list[pl.DataFrame] = []
    # split by split: a self-join of all rows would pair every repeat of a prompt inside one
    # split too (quadratic in how often a prompt repeats) only to throw those pairs away
    # (two blank prompts hash alike, but neither holds anything the other could leak)
    by_input = {name: rows.filter((pl.col("input") == name) & ~pl.col("blank")) for name in tabs}
    cross = [by_input[a].join(by_input[b], on="p", suffix="_b") for a, b in combinations(tabs, 2)]
    exact = (pl.concat(cross) if cross else rows.join(rows, on="p", suffix="_b").clear()).select(
        pl.when(pl.col("t") == pl.col("t_b"))
        .then(pl.lit("exact_overlap"))
        .otherwise(pl.lit("same_prompt_different_target"))
        .alias("finding"),
        pl.col("input").alias("input_a"),
        pl.col("row").alias("row_a"),
        pl.col("input_b"),
        pl.col("row_b"),
        pl.lit(1.0).alias("score"),
    )
    found.append(exact)
    if near and rows.height:
        starts = np.cumsum([0] + [t.height for t in tabs.values()])
        k_of, p_of = rows["k"].to_numpy(), rows["p"].to_numpy()

        def texts_of(index: np.ndarray) -> pa.Array:
            """The normalized prompts of rows by position in ``rows`` (sorted)."""
            got = []
            for k, t in enumerate(tabs.values()):
                mine = index[(index >= starts[k]) & (index < starts[k + 1])] - starts[k]
                got.append(prompts_of(t.take(mine, prompt_fields)))
            return pl.concat(got).to_arrow()

        def across(pairs: np.ndarray) -> np.ndarray:
            """Pairs of two inputs whose prompts differ (equal ones are exact overlaps)."""
            a, b = pairs[:, 0], pairs[:, 1]
            return (k_of[a] != k_of[b]) & (p_of[a] != p_of[b])

        pairs, scores = near_duplicate_pairs_in_batches(
            keyed, texts_of, rows.height, threshold, ngram, wanted=across, mapper=mapper, folder=folder
        )
        if len(pairs):
            a, b = rows[pairs[:, 0]], rows[pairs[:, 1]]
            swap = (a["k"] > b["k"]).to_numpy()
            first = pl.DataFrame({c: np.where(swap, b[c].to_numpy(), a[c].to_numpy()) for c in ("input", "row")})
            second = pl.DataFrame({c: np.where(swap, a[c].to_numpy(), b[c].to_numpy()) for c in ("input", "row")})
            found.append(
                pl.DataFrame(
                    {
                        "finding": "near_overlap",
                        "input_a": first["input"],
                        "row_a": first["row"],
                        "input_b": second["input"],
                        "row_b": second["row"],
                        "score": pl.Series(scores, dtype=pl.Float64),
                    }
                )
            )
    for earlier, later in combinations(time_order or [], 2):
        e, l_ = tabs[earlier].select(["_id", "_ts"]), tabs[later].select(["_id", "_ts"])
        newest = e.filter(pl.col("_ts") == pl.col("_ts").max()).sort("_id").head(1)
        if newest.is_empty():
            continue
        late = l_.filter(pl.col("_ts") <= newest["_ts"][0])
        found.append(
            pl.DataFrame(
                {
                    "finding": pl.Series(["time_order"] * late.height, dtype=pl.String),
                    "input_a": pl.Series([earlier] * late.height, dtype=pl.String),
                    "row_a": pl.Series([newest["_id"][0]] * late.height, dtype=pl.String),
                    "input_b": pl.Series([later] * late.height, dtype=pl.String),
                    "row_b": late["_id"],
                    "score": pl.Series([None] * late.height, dtype=pl.Float64),
                }
            )
        )
    out = pl.concat([f.cast({"score": pl.Float64}) for f in found]).sort(["finding", "input_b", "row_b", "row_a"])
    return out.with_columns(pl.format("audit:{}", pl.int_range(pl.len())).alias("_id")).select(list(FINDINGS_SCHEMA))


def audit_batch(
    batch: pl.DataFrame,
    name: str,
    prompt: Sequence[str],
    target: Sequence[str] | None,
    roles: tuple[Sequence[str] | None, Sequence[str] | None],
    lsh: tuple[float, int, int] | None,
) -> tuple[pl.DataFrame, tuple[np.ndarray, np.ndarray] | None]:
    """What ``audit_frames`` keeps of a batch of input ``name``: per row its id, the 64-bit
    hashes of its normalized prompt and target and whether the prompt is blank (``input``,
    ``row``, ``p``, ``t``, ``blank``), and, where
    ``lsh`` (threshold, num_perm, ngram) is given, its prompt's ``cluster.lsh_keys``. Depends on the
    batch alone (what ``Table.map_batches`` may run on a worker)."""
    prompts = key_text(batch, prompt, roles[0])
    hashed = batch.select(
        pl.lit(name).alias("input"),
        pl.col("_id").alias("row"),
        pl.lit(key_hashes(folded_keys(prompts))["h0"]).alias("p"),  # ("2 + 2 ?" and "2+2?" are one prompt)
        (
            pl.lit(key_hashes(folded_keys(key_text(batch, target, roles[1])))["h0"]) if target else pl.lit(0, pl.UInt64)
        ).alias("t"),
        pl.lit(blank_keys(prompts)).alias("blank"),
    )
    if lsh is None:
        return hashed, None
    threshold, num_perm, ngram = lsh
    return hashed, lsh_keys(prompts.to_arrow(), threshold, num_perm, ngram)


def summarize(findings: pl.DataFrame, names: Sequence[str]) -> list[list[object]]:
    """Rows (split a, split b, exact, same prompt different target, near, time order) per pair."""
    out = []
    for a, b in combinations(names, 2):
        pair = findings.filter((pl.col("input_a") == a) & (pl.col("input_b") == b))
        counts = dict(zip(*pair.group_by("finding").len().to_dict(as_series=False).values(), strict=True))
        out.append(
            [
                a,
                b,
                *(
                    counts.get(k, 0)
                    for k in ("exact_overlap", "same_prompt_different_target", "near_overlap", "time_order")
                ),
            ]
        )
    return out


@step(
    "split.audit",
    version=5,  # 2: two blank prompts are no exact overlap
    # 3: comparison keys drop invisible characters (zero-width spaces, the BOM, soft hyphens, bidi marks)
    # and chat-format tokens, turn headers and role labels (one prompt is one key in any chat format)
    # 4: exact overlaps are found without the spaces beside punctuation ("2 + 2 ?" and "2+2?")
    # 5: a turn's tool calls (function name, arguments) are its text too (a tool-only turn was no text)
    inputs=None,
    outputs=("findings",),
    columns=_columns,
    partition="global",
    out_of_core=True,
)
def split_audit(inputs: dict[str, Table], cfg: AuditConfig, ctx: Context) -> StepResult:
    """Find rows that leak between splits; flag them, and fail when ``strict``."""
    findings = audit_frames(
        inputs,
        cfg.prompt,
        cfg.target,
        near=cfg.near,
        threshold=cfg.threshold,
        ngram=cfg.ngram,
        num_perm=cfg.num_perm,
        time_order=cfg.time_order,
        mapper=ctx.mapper,
        folder=ctx.scratch_dir,
    )
    if cfg.strict and findings.height:
        examples = "; ".join(
            f"{r['finding']}: {r['input_b']}:{r['row_b']} ~ {r['input_a']}:{r['row_a']}"
            for r in findings.head(10).iter_rows(named=True)
        )
        counts = ", ".join(f"{k}: {n}" for k, n in findings.group_by("finding").len().sort("finding").iter_rows())
        raise DataError(f"split audit (strict) found {findings.height} leak(s) ({counts}), e.g. {examples}")
    detail = findings.select(
        pl.concat_str(pl.lit('{"input_a":"'), "input_a", pl.lit('","input_b":"'), "input_b", pl.lit('"}'))
    ).to_series()
    ev = events(
        findings["row_b"],
        "flagged",
        "audit:" + findings["finding"],
        related_id=findings["row_a"],
        score=findings["score"],
        detail=detail,
    )
    return StepResult({"findings": findings}, events=[ev])


@dataclass(frozen=True)
class DatasetAudit:
    """The split audit of one exported dataset: what was compared and what was found."""

    prompt: str
    target: str | None
    findings: pl.DataFrame
    splits: list[str]
    time_checked: bool = False  # the splits were cut by time, so their order was checked

    def summary(self) -> list[list[object]]:
        return summarize(self.findings, self.splits)


def dataset_audit(
    frames: dict[str, pl.DataFrame | Table],
    by_time: bool = False,
    mapper: Mapper | None = None,
    folder: Path | None = None,
) -> DatasetAudit | None:
    """The audit above over a dataset's own splits, its prompt and target found from TRL's column
    names; None when the splits have no prompt column (``prompt``, ``messages`` or ``text``).
    Time order (each split newer than the one before) is checked only when the splits were cut
    ``by_time``: rows of a group or random split have timestamps in any order, by design.
    ``mapper`` and ``folder``: where its divided work runs (``audit_frames``)."""
    cols = set.intersection(*(set(f.columns) for f in frames.values()))
    prompt_roles = target_roles = None
    if "prompt" in cols:
        prompt = ["prompt"]
    elif "messages" in cols:
        prompt, prompt_roles, target_roles = ["messages"], ["system", "user"], ["assistant"]
    elif "text" in cols:
        prompt = ["text"]
    else:
        return None
    target = next(([c] for c in ("completion", "chosen", "answer") if c in cols), None)
    if prompt == ["messages"]:
        target = ["messages"]
    findings = audit_frames(
        frames,
        prompt,
        target,
        prompt_roles=prompt_roles,
        target_roles=target_roles,
        time_order=list(frames) if by_time and "_ts" in cols else None,
        mapper=mapper,
        folder=folder,
    )
    timed = by_time and "_ts" in cols
    return DatasetAudit(prompt[0], target[0] if target else None, findings, list(frames), timed)


def dataset_audit_section(frames: dict[str, pl.DataFrame | Table], audit: DatasetAudit | None) -> list[str]:
    """The "Split audit" section of a dataset card: ``audit`` (``dataset_audit(frames)``) as a
    table, plus each split's time range."""
    if audit is None:
        return ["No prompt column (`prompt`, `messages` or `text`) to audit."]
    header = (
        "| split a | split b | exact prompt overlap | same prompt, other target | near-duplicate prompts | time order |"
    )
    lines = [
        f"Prompts compared: normalized `{audit.prompt}`"
        + (f", targets: `{audit.target}`" if audit.target else "")
        + "; near-duplicates: word 3-gram Jaccard ≥ 0.8 (MinHash LSH, verified)"
        + (
            "; time order: rows of a later split not newer than the newest of an earlier one."
            if audit.time_checked
            else "; time order not checked (the splits were not cut by time)."
        ),
        "",
        header,
        "|---|---|---|---|---|---|",
    ]
    rows = [row if audit.time_checked else [*row[:-1], "—"] for row in audit.summary()]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    if all("_ts" in f.columns for f in frames.values()):
        lines += ["", "| split | earliest `_ts` | latest `_ts` |", "|---|---|---|"]
        for name, f in frames.items():
            ts = Table.of(f).select(["_ts"])["_ts"]
            lo, hi = ts.min(), ts.max()
            lines.append(f"| {name} | {lo} | {hi} |")
    return lines
