"""Deduplication: ``dedup.exact`` and ``dedup.minhash`` (near-duplicates, MinHash LSH).

Both consume ``data`` (and optionally ``against``: a second input whose rows are never touched,
such as a validation split or a released dataset) and read the text of ``fields`` — plain
text columns or ``messages`` lists (``roles`` picks the turns). Before comparing, the text is
cleaned: chat-format tokens and turn headers (``<|im_start|>user``, ``[INST]``, ``<s>``, Llama 3's
and Gemma's headers, role labels opening a line such as ``user:``, ``Human:``, ``### Response:``)
are removed (``strip_template``, on by default), so one conversation in any of these formats, or
as a messages list, is one text; a system
prompt shared by at least ``shared_system`` of the rows is ignored, and the text is normalized
(NFKC, whitespace, case). With ``template_aware: true`` numbers and capitalized names are masked
too, so "Alice has 3 apples" and "Bob has 7 apples" are one item.

They produce ``data``: the kept rows (with ``_cluster_id``/``_cluster_size`` when
``cluster_columns: true``), and for ``dedup.minhash`` with ``keep_signatures: true`` also
``signatures`` (``_id``, ``signature`` list<uint32>). In each cluster the representative is
chosen by a rule, never by row order: ``keep: smallest_id`` (default), ``earliest_ts`` or
``highest`` (with ``keep_column``). A near-duplicate cluster is its representative and the rows
paired with it directly (``cluster.stars``): a row is dropped only for its own verified
similarity to the row that is kept, never through a chain of pairs (a–b and b–c similar, a and c
not: b goes with a, c is kept). Every other row is dropped with an event: reason
``exact_duplicate`` / ``near_duplicate`` / ``template_duplicate``, ``related_id`` = the kept
representative (or the matched ``against`` row), ``score`` = Jaccard (1.0 for exact).

Example::

    dedup:
      kind: dedup.minhash
      inputs: {data: parsed.train, against: parsed.test}
      fields: [question]
      threshold: 0.8          # bands x rows derived from it (datasketch's optimum) unless given
      num_perm: 128
      ngram: 3                # word 3-grams (shingle: char for character n-grams)
      verify: exact           # exact Jaccard of candidate pairs removes LSH false positives
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import polars as pl
from pydantic import model_validator

from dataforge.cluster import stars, verified_jaccard
from dataforge.engine.events import events
from dataforge.engine.fingerprint import canonical_json
from dataforge.engine.step import (
    Columns,
    Context,
    Fields,
    PlanInfo,
    StepConfig,
    StepResult,
    require,
    step,
    with_columns,
)
from dataforge.engine.table import Streamed, Table
from dataforge.errors import DataError, RecipeError
from dataforge.lsh_buckets import BandKeys
from dataforge.staging import staging
from dataforge.text.fields import is_conversation, require_messages, text_expr, without_chat_format
from dataforge.text.normalize import comparable_text, nfkc_where_needed, visible_text

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_CAPITALIZED = re.compile(r"\b[A-Z][a-z]+\b")
_NOT_NAMES = frozenset(
    "a an the if how what when where which who whom whose why each every there then this that these those "
    "he she they it we you i his her their its our your my in on at for from to of and or but so after before "
    "during while since until suppose assume given find calculate compute determine mr mrs ms dr monday tuesday "
    "wednesday thursday friday saturday sunday january february march april may june july august september "
    "october november december".split()
)


SIGNATURE_BATCH = 100_000  # rows whose text is prepared and hashed at once
EMBED_BATCH = 10_000  # rows whose text is prepared and embedded at once (a progress step)
# LSH buckets of up to this many rows give every pair of their rows as candidates, not only the
# pairs with the bucket's best-ranked row: a cluster takes only rows similar to its kept row, so a
# row must meet every better-ranked row it may be similar to
BUCKET_PAIRS = 32
LSH_MARGIN = 0.2  # candidates from LSH at threshold − this, verified exactly at the threshold
_SCORED = {"a": pl.Int64, "b": pl.Int64, "s": pl.Float64}


class DedupConfig(StepConfig):
    fields: Fields
    roles: list[str] | None = None
    shared_system: float | None = 0.1
    strip_template: bool = True
    template_aware: bool = False
    keep: Literal["smallest_id", "earliest_ts", "highest"] = "smallest_id"
    keep_column: str | None = None
    on_empty: Literal["keep", "drop"] = "keep"
    cluster_columns: bool = False

    @model_validator(mode="after")
    def _keep_rule(self) -> DedupConfig:
        if not self.fields:
            raise ValueError("name at least one field to compare")
        if (self.keep == "highest") != (self.keep_column is not None):
            raise ValueError("keep: highest needs keep_column (and keep_column goes with keep: highest)")
        if self.shared_system is not None and not 0 < self.shared_system <= 1:
            raise ValueError("shared_system is a share of rows, between 0 and 1")
        return self


class MinhashConfig(DedupConfig):
    threshold: float = 0.8
    num_perm: int = 128
    bands: int | None = None
    rows: int | None = None
    ngram: int = 3
    shingle: Literal["word", "char"] = "word"
    seed: int = 1
    verify: Literal["exact", "estimate", "none"] = "exact"
    # the LSH bands are datasketch's optimum for this threshold; default: threshold − LSH_MARGIN
    # when pairs are verified exactly (more candidates, the same precision), else threshold
    lsh_threshold: float | None = None
    keep_signatures: bool = False

    @property
    def candidate_threshold(self) -> float:
        if self.lsh_threshold is not None:
            return self.lsh_threshold
        return max(0.05, self.threshold - LSH_MARGIN) if self.verify == "exact" else self.threshold

    @model_validator(mode="after")
    def _lsh(self) -> MinhashConfig:
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be between 0 and 1, not {self.threshold}")
        if self.lsh_threshold is not None and not 0 < self.lsh_threshold < 1:
            raise ValueError(f"lsh_threshold must be between 0 and 1, not {self.lsh_threshold}")
        if self.num_perm < 2 or self.ngram < 1:
            raise ValueError("num_perm must be at least 2 and ngram at least 1")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (then they follow from threshold)")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} is more than num_perm = {self.num_perm}")
        return self


# -- text -------------------------------------------------------------------------------------------


def _shared_system_prompts(df: pl.DataFrame, field: str, share: float) -> list[str]:
    dtype = df.schema[field]
    if not is_conversation(dtype) or df.is_empty():
        return []
    require_messages(field, dtype)
    turns = df.select(pl.col(field).alias("m")).with_row_index("r").explode("m").unnest("m")
    system = turns.filter(pl.col("role") == "system").group_by("content").agg(pl.col("r").n_unique().alias("n"))
    return system.filter(pl.col("n") >= share * df.height)["content"].to_list()


def shared_prompts(df: pl.DataFrame, cfg: DedupConfig) -> dict[str, list[str]]:
    """System prompts (per messages field) shared by at least ``cfg.shared_system`` of the rows."""
    if not cfg.shared_system:
        return {}
    return {f: _shared_system_prompts(df, f, cfg.shared_system) for f in cfg.fields if f in df.columns}


def _mask_template(text: str) -> str:
    text = _NUMBER.sub("0", text)
    return _CAPITALIZED.sub(lambda m: m.group(0) if m.group(0).lower() in _NOT_NAMES else "Name", text)


def dedup_text(
    df: pl.DataFrame, cfg: DedupConfig, exact: bool = True, shared: dict[str, list[str]] | None = None
) -> pl.Series:
    """The cleaned text each row is compared by, without invisible characters. For exact comparison
    it is fully normalized (NFKC, case, all whitespace folded to one space). For MinHash, whose
    kernel already splits words and lowercases ASCII, only rows holding non-ASCII text are
    NFKC-normalized and lowercased: the same shingles, at a fraction of the cost. ``shared`` gives
    the shared system prompts per field when ``df`` is one batch of a larger table (see
    ``shared_prompts``)."""
    shared = shared if shared is not None else shared_prompts(df, cfg)
    parts = []
    for f in cfg.fields:
        expr = text_expr(df, f, cfg.roles)
        for prompt in shared.get(f, []):
            expr = expr.str.replace_all("system: " + prompt, "", literal=True)
        parts.append(expr)
    expr = pl.concat_str(parts, separator="\n") if len(parts) > 1 else parts[0]
    text = df.select(expr.alias("t"))["t"]
    if cfg.strip_template:
        text = without_chat_format(text)
    if cfg.template_aware:
        text = pl.Series("t", [_mask_template(t) for t in text.to_list()], dtype=pl.String)
    if exact:
        return comparable_text(text)
    return nfkc_where_needed(visible_text(text.fill_null("")), lowercase_rest=False)


def keep_rank(df: pl.DataFrame, cfg: DedupConfig) -> np.ndarray:
    """Each row's rank under the keep rule (0 = kept first); ties by ``_id``."""
    if cfg.keep == "earliest_ts":
        by, desc = ["_ts", "_id"], [False, False]
    elif cfg.keep == "highest":
        by, desc = [cfg.keep_column, "_id"], [True, False]
    else:
        by, desc = ["_id"], [False]
    frame = df.with_row_index("i")
    if cfg.keep == "highest" and frame.schema[cfg.keep_column].is_float():  # a NaN is no value: it sorted highest
        frame = frame.with_columns(pl.col(cfg.keep_column).fill_nan(None))
    order = frame.sort(by, descending=desc, nulls_last=True)["i"].to_numpy()
    rank = np.empty(df.height, dtype=np.int64)
    rank[order] = np.arange(df.height)
    return rank


def _columns(cfg: DedupConfig, cols: dict[str, Columns], info: PlanInfo) -> dict[str, Columns]:
    allowed = ("data", "against", "signatures") if isinstance(cfg, MinhashConfig) else ("data", "against")
    unknown = [name for name in cols if name not in allowed]
    if unknown or "data" not in cols:
        what = f"has no input '{unknown[0]}'" if unknown else "needs input 'data'"
        raise RecipeError(
            f"this dedup step {what}; it takes: {', '.join(allowed)}",
            key=f"inputs.{unknown[0]}" if unknown else "inputs",
        )
    if "signatures" in cols:
        require(cols["signatures"], ["_id", "signature", "minhash_params"], "inputs.signatures")
    for side, c in cols.items():
        if side == "signatures":
            continue
        require(c, cfg.fields, "fields")
        if side == "data":
            require(c, [cfg.keep_column], "keep_column")
            require(c, ["_ts"] if cfg.keep == "earliest_ts" else [], "keep")
    if isinstance(cfg, SemanticConfig):
        from dataforge.embed import check_model

        check_model(cfg.model, info.base_dir)
    data = with_columns(cols["data"], ["_cluster_id", "_cluster_size"]) if cfg.cluster_columns else cols["data"]
    out: dict[str, Columns] = {"data": data}
    if getattr(cfg, "keep_signatures", False):
        out["signatures"] = ["_id", "signature", "minhash_params"]
    return out


def _outputs(cfg: DedupConfig, names: object) -> tuple[str, ...]:
    return ("data", "signatures") if getattr(cfg, "keep_signatures", False) else ("data",)


def text_has_word(text: pl.Series) -> np.ndarray:
    """Whether each text has a word character (ASCII letter, digit, underscore or any non-ASCII
    character); one with none matches nothing."""
    return text.str.contains(r"[0-9A-Za-z_]|[^\x00-\x7f]").fill_null(False).to_numpy()


def _empty_drops(df: pl.DataFrame, text: pl.Series, cfg: DedupConfig) -> tuple[pl.Series, list[pl.DataFrame]]:
    return _empty_text_drops(df["_id"], text_has_word(text), cfg)


def _empty_text_drops(ids: pl.Series, live: np.ndarray, cfg: DedupConfig) -> tuple[pl.Series, list[pl.DataFrame]]:
    """The rows still alive and the drop events, where ``on_empty: drop`` drops the rows whose
    text has no word (``live`` false)."""
    if cfg.on_empty == "drop" and not live.all():
        alive = pl.Series(live)
        return alive, [events(ids.filter(~alive), "dropped", "dedup:empty_text", detail={"fields": cfg.fields})]
    return pl.Series([True] * len(ids)), []


def _clusters(n: int, pairs: np.ndarray, alive: pl.Series, rank: np.ndarray) -> np.ndarray:
    """Near-duplicate clusters of the rows still ``alive``: each a representative (the best
    ``rank``) and the rows paired with it directly (``cluster.stars``) — never rows joined only
    through a chain of pairs, which can be far apart. Rows already dropped link nothing."""
    live = alive.to_numpy()
    pairs = pairs[live[pairs[:, 0]] & live[pairs[:, 1]]] if len(pairs) else pairs
    return stars(n, pairs, rank)


def _finish(
    table: Table,
    ids: pl.Series,
    cfg: DedupConfig,
    alive: pl.Series,
    labels: np.ndarray,
    rank: np.ndarray,
    score_of: Callable[[np.ndarray], np.ndarray],
    reason: str,
    found: list[pl.DataFrame],
) -> Streamed:
    """Keep the best-ranked ``alive`` row of each cluster; drop the others with an event whose
    score is ``score_of`` the (representative, dropped) index pairs. ``ids``: the table's
    ``_id`` column. Returns the kept rows of ``table`` (batch by batch)."""
    idx = np.nonzero(alive.to_numpy())[0]
    lab = labels[idx]
    order = np.lexsort((rank[idx], lab))
    first = np.concatenate(([True], lab[order][1:] != lab[order][:-1])) if len(order) else np.zeros(0, bool)
    rep_of_sorted = idx[order][np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))]
    rep = np.empty(len(idx), dtype=np.int64)
    rep[order] = rep_of_sorted
    dup = rep != idx
    if dup.any():
        found.append(
            events(
                ids.gather(idx[dup]),
                "dropped",
                reason,
                related_id=ids.gather(rep[dup]),
                score=pl.Series(score_of(np.column_stack([rep[dup], idx[dup]])), dtype=pl.Float64),
            )
        )
    keep_mask = np.zeros(table.height, dtype=bool)
    keep_mask[idx[~dup]] = True
    added: dict[str, pl.Series] = {}
    if cfg.cluster_columns:
        sizes = np.bincount(lab, minlength=labels.max() + 1 if len(labels) else 0)
        rep_of_row = np.arange(table.height)
        rep_of_row[idx] = rep
        size_of_row = np.zeros(table.height, dtype=np.int64)
        size_of_row[idx] = sizes[lab]
        added = {
            "_cluster_id": ids.gather(rep_of_row),
            "_cluster_size": pl.Series(size_of_row, dtype=pl.Int64),
        }
    return table.where(keep_mask, added)


def _drop_matches(
    df: pl.DataFrame,
    other: pl.DataFrame,
    alive: pl.Series,
    mine: np.ndarray,
    theirs: np.ndarray,
    score: np.ndarray,
    reason: str,
    found: list[pl.DataFrame],
) -> pl.Series:
    """Drop every alive data row ``mine[k]`` that matches row ``theirs[k]`` of ``against``,
    related to its best match (highest score, then smallest id); returns the rows still alive."""
    best = pl.DataFrame({"i": mine, "o": theirs, "s": score}, schema={"i": pl.Int64, "o": pl.Int64, "s": pl.Float64})
    best = best.with_columns(other["_id"].gather(best["o"]).alias("oid"))  # ties: the smallest id, not row order
    best = best.sort(["i", "s", "oid"], descending=[False, True, False]).unique("i", keep="first", maintain_order=True)
    if best.height:
        best = best.filter(pl.Series(alive.to_numpy()[best["i"].to_numpy()]))
    if best.is_empty():
        return alive
    found.append(
        events(
            df["_id"].gather(best["i"]),
            "dropped",
            reason,
            related_id=other["_id"].gather(best["o"]),
            score=best["s"],
            detail={"against": True},
        )
    )
    gone = np.zeros(df.height, dtype=bool)
    gone[best["i"].to_numpy()] = True
    return alive & pl.Series(~gone)


# -- dedup.exact --------------------------------------------------------------------------------------


@step(
    "dedup.exact",
    version=4,  # 2: comparison keys drop invisible characters (zero-width spaces, the BOM, soft hyphens, bidi marks)
    # and strip_template removes Llama 3 / Gemma role headers and role labels opening a line
    # 3: keep: highest reads a NaN as no value (it sorted highest: the unscored row was kept)
    # 4: a turn's tool calls (function name, arguments) are its text too (a tool-only turn was no text)
    inputs=None,
    outputs=_outputs,
    columns=_columns,
    partition="key",
    partition_key=lambda cfg, df: dedup_text(df, cfg),
    partitioned=("data",),
    keeps_input_rows=True,
)
def dedup_exact(inputs: dict[str, pl.DataFrame], cfg: DedupConfig, ctx: Context) -> StepResult:
    """Drop rows whose cleaned text equals another's (or an ``against`` row's)."""
    df = inputs["data"]
    text = ctx.partition_keys if ctx.partition_keys is not None else dedup_text(df, cfg)
    alive, found = _empty_drops(df, text, cfg)
    reason = "template_duplicate" if cfg.template_aware else "exact_duplicate"
    if "against" in inputs:
        other = inputs["against"]
        theirs = pl.DataFrame({"t": dedup_text(other, cfg), "o": other["_id"]}).with_row_index("j")
        theirs = theirs.filter(pl.col("t") != "").sort("o")
        hit = pl.DataFrame({"t": text, "i": np.arange(df.height)}).join(theirs, on="t")
        ones = np.ones(hit.height)
        alive = _drop_matches(df, other, alive, hit["i"].to_numpy(), hit["j"].to_numpy(), ones, reason, found)
    labels = pl.DataFrame({"t": text}).select(pl.col("t").rank("dense"))["t"].to_numpy().astype(np.int64) - 1
    labels = np.where(text.str.len_chars().to_numpy() == 0, labels.max() + 1 + np.arange(df.height), labels)
    rank = keep_rank(df, cfg)
    kept = _finish(Table.of(df), df["_id"], cfg, alive, labels, rank, lambda p: np.ones(len(p)), reason, found)
    return StepResult({"data": kept.collect()}, events=found)


# -- dedup.minhash ------------------------------------------------------------------------------------


# near-duplicate steps: any inputs (data, against, signatures), every row at once, read from shards
OUT_OF_CORE_DEDUP: dict[str, Any] = dict(
    inputs=None, outputs=_outputs, columns=_columns, partition="global", out_of_core=True
)


# 3: comparison keys drop invisible characters (zero-width spaces, the BOM, soft hyphens, bidi marks);
# strip_template removes Llama 3 / Gemma role headers and role labels opening a line
# 4: keep: highest reads a NaN as no value (it sorted highest: the unscored row was kept)
# 5: a turn's tool calls (function name, arguments) are its text too (a tool-only turn was no text)
@step("dedup.minhash", version=5, **OUT_OF_CORE_DEDUP)
def dedup_minhash(inputs: dict[str, Table], cfg: MinhashConfig, ctx: Context) -> StepResult:
    """Drop near-duplicates: MinHash LSH candidates (below the threshold), verified, clustered around
    the rows kept (no chaining), one kept per cluster.

    Out of core: the text is read a batch at a time to compute signatures, of which only the
    LSH band keys are kept (bands × 8 bytes a row; whole signatures only where they are used:
    ``verify`` other than exact, ``keep_signatures`` or a ``signatures`` input); candidate
    pairs read the text of the rows they name; the kept rows are written batch by batch."""
    from dataforge.text.minhash import (
        band_keys,
        estimated_jaccard,
        has_words,
        lsh_params,
    )

    df = Table.of(inputs["data"])
    other = Table.of(inputs["against"]) if "against" in inputs else None
    sides = [df] if other is None else [df, other]
    shared = [shared_prompts(_messages_fields(side, cfg), cfg) for side in sides]
    n = df.height
    total = sum(side.height for side in sides)
    starts = np.cumsum([0] + [side.height for side in sides])
    fields = list(dict.fromkeys(cfg.fields))
    bands, rows = (cfg.bands, cfg.rows) if cfg.bands and cfg.rows else lsh_params(cfg.candidate_threshold, cfg.num_perm)

    prepared: pl.Series | None = None  # all rows' text, kept when it was prepared in one batch

    def texts_of(index: np.ndarray) -> pl.Series:
        """The MinHash text of rows by global index (data rows, then `against` rows)."""
        if prepared is not None:
            return prepared.gather(index)
        parts = []
        for k, side in enumerate(sides):
            mine = index[(index >= starts[k]) & (index < starts[k + 1])] - starts[k]
            parts.append(dedup_text(side.take(mine, fields), cfg, exact=False, shared=shared[k]))
        return pl.concat(parts)

    def exact_scores(pairs: np.ndarray) -> np.ndarray:
        """Exact Jaccard of pairs, reading the text of only the rows they name."""
        return verified_jaccard(
            pairs,
            lambda index: texts_of(index).to_arrow(),
            cfg.ngram,
            cfg.shingle,
            mapper=ctx.mapper,
            folder=ctx.scratch_dir,
        )

    rank = keep_rank(df.select(_rank_columns(cfg)), cfg)
    # rows of `against` rank after every data row, by their own id order
    other_rank = keep_rank(other.select(["_id"]), cfg) if other is not None else np.zeros(0, np.int64)

    # signatures, batch by batch (reused from a `signatures` input where it has the row): only
    # the band keys are kept unless the whole signatures are needed
    need_sigs = cfg.verify != "exact" or cfg.keep_signatures or "signatures" in inputs
    sigs = np.empty((total, cfg.num_perm), dtype=np.uint32) if need_sigs else None
    with BandKeys(total, bands, ctx.scratch_dir) as keys:  # filed by bucket when the rows are many
        todo = np.ones(total, dtype=bool)
        if "signatures" in inputs:
            assert sigs is not None
            done = _reuse_signatures(Table.of(inputs["signatures"]).collect(), sides, cfg, sigs)
            keys.add(done, band_keys(sigs[done], bands, rows), has_words(sigs[done]))
            todo[done] = False
        texts: list[pl.Series] = []
        batch_rows = min(SIGNATURE_BATCH, df.batch_rows)  # the text of one batch at a time
        for k, side in enumerate(sides):
            at = int(starts[k])
            sign = functools.partial(
                signature_batch,
                cfg=cfg,
                shared=shared[k],
                bands=bands,
                rows=rows,
                keep_sigs=need_sigs,
                keep_text=total <= batch_rows,  # one batch: its text is kept for the candidate pairs
            )
            parts = _signed(side, todo[at : at + side.height], sign, fields, batch_rows, ctx)
            for index, part in ctx.progress.track(
                parts, total=side.height, description="signatures", unit="rows", size=lambda p: len(p[0])
            ):
                index = index + at
                keys.add(index, part.keys, part.live)
                if sigs is not None:
                    sigs[index] = part.sigs
                if part.text is not None:
                    texts.append(part.text)
        if total <= batch_rows and todo.all():
            prepared = pl.concat(texts) if texts else pl.Series("t", [], dtype=pl.String)
        ids = df.select(["_id"])["_id"]
        alive, found = _empty_text_drops(ids, keys.live[:n], cfg)

        pairs = keys.pairs(np.concatenate([rank, n + other_rank]), BUCKET_PAIRS, ctx.mapper)
    if cfg.verify == "exact":
        score = exact_scores(pairs)
    else:
        score = estimated_jaccard(sigs, pairs)
    if cfg.verify != "none":
        pairs, score = pairs[score >= cfg.threshold], score[score >= cfg.threshold]
    reason = "template_duplicate" if cfg.template_aware else "near_duplicate"
    if other is not None:  # a data row that matches any `against` row goes, related to its best match
        cross = (pairs[:, 0] < n) != (pairs[:, 1] < n)
        c_pairs, c_score = pairs[cross], score[cross]
        mine = np.where(c_pairs[:, 0] < n, c_pairs[:, 0], c_pairs[:, 1])
        theirs = np.where(c_pairs[:, 0] < n, c_pairs[:, 1], c_pairs[:, 0]) - n
        other_ids = other.select(["_id"])
        alive = _drop_matches(ids.to_frame(), other_ids, alive, mine, theirs, c_score, reason, found)
        inner = ~cross & (pairs[:, 0] < n)
        pairs, score = pairs[inner], score[inner]
    labels = _clusters(n, pairs, alive, rank)

    def score_of(rep_dup: np.ndarray) -> np.ndarray:
        """Score of each (representative, dropped) pair: most are verified candidate pairs
        already scored; only pairs joined through a third row are computed."""
        if cfg.verify != "exact":
            return estimated_jaccard(sigs, rep_dup)
        scored = pl.DataFrame({"a": pairs[:, 0], "b": pairs[:, 1], "s": score}, schema=_SCORED)
        wanted = pl.DataFrame({"a": rep_dup[:, 0], "b": rep_dup[:, 1]}, schema={"a": pl.Int64, "b": pl.Int64})
        out = wanted.join(scored, on=["a", "b"], how="left", maintain_order="left")["s"].to_numpy().copy()
        missing = np.isnan(out)
        out[missing] = exact_scores(rep_dup[missing])
        return out

    kept = _finish(df, ids, cfg, alive, labels, rank, score_of, reason, found)
    tables: dict[str, pl.DataFrame | Streamed] = {"data": kept}
    if cfg.keep_signatures:
        assert sigs is not None
        tables["signatures"] = pl.DataFrame(
            {"_id": ids, "signature": pl.Series(sigs[:n].tolist(), dtype=pl.List(pl.UInt32))}
        ).with_columns(pl.lit(signature_params(cfg)).alias("minhash_params"))
    return StepResult(tables, events=found)  # type: ignore[arg-type]


class Signed(NamedTuple):
    """A batch's MinHash: LSH band keys, whether each text has a word, the signatures (where
    kept) and the prepared text (where kept)."""

    keys: np.ndarray
    live: np.ndarray
    sigs: np.ndarray | None
    text: pl.Series | None


def signature_batch(
    batch: pl.DataFrame,
    cfg: MinhashConfig,
    shared: dict[str, list[str]],
    bands: int,
    rows: int,
    keep_sigs: bool,
    keep_text: bool,
) -> Signed:
    """One batch of ``dedup.minhash``'s text fields → its ``Signed`` (depends on the batch alone:
    what ``Table.map_batches`` may run on a worker)."""
    from dataforge.text.minhash import band_keys, has_words, signatures

    text = dedup_text(batch, cfg, exact=False, shared=shared)
    part = signatures(text.to_arrow(), cfg.num_perm, cfg.seed, cfg.ngram, cfg.shingle)
    return Signed(
        band_keys(part, bands, rows), has_words(part), part if keep_sigs else None, text if keep_text else None
    )


def _signed(
    side: Table,
    todo: np.ndarray,
    sign: Callable[[pl.DataFrame], Signed],
    fields: list[str],
    batch_rows: int,
    ctx: Context,
) -> Iterator[tuple[np.ndarray, Signed]]:
    """(positions in ``side``, their ``Signed``) a batch at a time, for the rows where ``todo``:
    all of them through ``Table.map_batches`` (where the executor spreads the work), or, where some
    signatures were reused, the others here."""
    at = 0
    if todo.all():
        for part in side.map_batches(sign, fields, batch_rows, ctx.mapper):
            yield np.arange(at, at + len(part.live)), part
            at += len(part.live)
        return
    for batch in side.batches(batch_rows, fields):
        wanted = todo[at : at + batch.height]
        index = np.arange(at, at + batch.height)[wanted]
        at += batch.height
        if len(index):
            yield index, sign(batch.filter(pl.Series(wanted)))


def _messages_fields(table: Table, cfg: DedupConfig) -> pl.DataFrame:
    """The compared fields of ``table`` that hold messages lists, whole (what shared system
    prompts are found in; a text field is not read)."""
    chat = [f for f in dict.fromkeys(cfg.fields) if isinstance(table.schema[f], pl.List)]
    return table.select(chat) if chat else pl.DataFrame()


def _rank_columns(cfg: DedupConfig) -> list[str]:
    """The columns ``keep_rank`` reads."""
    return ["_id", *(["_ts"] if cfg.keep == "earliest_ts" else []), *([cfg.keep_column] if cfg.keep_column else [])]


def signature_params(cfg: MinhashConfig) -> str:
    """Everything a stored signature depends on, as canonical JSON: reuse only on a match."""
    keys = (
        "fields",
        "roles",
        "shared_system",
        "strip_template",
        "template_aware",
        "num_perm",
        "ngram",
        "shingle",
        "seed",
    )
    return canonical_json({k: getattr(cfg, k) for k in keys} | {"kernel": 1})


def _reuse_signatures(stored: pl.DataFrame, sides: list[Table], cfg: MinhashConfig, sigs: np.ndarray) -> np.ndarray:
    """Fill ``sigs`` rows from a stored ``signatures`` table (checked to match ``cfg``); return
    the global indices filled."""
    params = stored["minhash_params"].unique().to_list()
    if params and params != [signature_params(cfg)]:
        raise DataError(
            "inputs.signatures were computed with other MinHash settings than this step's "
            f"(stored: {params[0]}; here: {signature_params(cfg)})"
        )
    ids = pl.concat([side.select(["_id"])["_id"] for side in sides]).to_frame("_id").with_row_index("g")
    hit = ids.join(stored.select("_id", "signature"), on="_id", how="inner")
    if hit.height:
        sigs[hit["g"].to_numpy()] = np.array(hit["signature"].to_list(), dtype=np.uint32)
    return hit["g"].to_numpy().astype(np.int64)


# -- dedup.semantic -----------------------------------------------------------------------------------


class SemanticConfig(DedupConfig):
    model: str | None = None
    threshold: float = 0.92
    batch_size: int = 64
    device: str | None = None

    @model_validator(mode="after")
    def _cosine(self) -> SemanticConfig:
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold (cosine) must be between 0 and 1, not {self.threshold}")
        return self


# 4: comparison keys drop invisible characters (zero-width spaces, the BOM, soft hyphens, bidi marks);
# strip_template removes Llama 3 / Gemma role headers and role labels opening a line
# 5: keep: highest reads a NaN as no value (it sorted highest: the unscored row was kept)
# 6: a turn's tool calls (function name, arguments) are its text too (a tool-only turn was no text)
@step("dedup.semantic", version=6, **OUT_OF_CORE_DEDUP)
def dedup_semantic(inputs: dict[str, Table], cfg: SemanticConfig, ctx: Context) -> StepResult:
    """Drop rows whose embedding is within ``threshold`` cosine of a kept row (or an ``against`` row).

    Embeddings: sentence-transformers (the bundled offline all-MiniLM-L6-v2 unless ``model``
    names another), unit-normalized; search is exact, in chunks that bound memory (O(n²) work:
    for very large inputs run dedup.minhash first).

    Out of core: the text is read and embedded a batch at a time (``Table.map_batches``, spread
    over the executor's workers where it has them; a text's vector does not depend on its batch,
    ``embed``); the vectors (4 × dim bytes a row) go to a ``.npy`` file in the step's scratch
    folder as they come and are read memory-mapped from it, by the search here or by its jobs on
    the executor's workers (``cosine_pairs``: a job per ``SEARCH_ROWS`` rows); the kept rows are
    written batch by batch."""
    from dataforge.embed import cosine_pairs, resolve_model

    df = Table.of(inputs["data"])
    other = Table.of(inputs["against"]) if "against" in inputs else None
    model = resolve_model(cfg.model, ctx.base_dir)
    with staging(ctx.scratch_dir, "dataforge-vectors-") as where:
        vecs, live = _embedded(df, cfg, model, ctx, Path(where) / "data.npy")
        ids = df.select(["_id"])["_id"]
        alive, found = _empty_text_drops(ids, live, cfg)
        if other is not None and other.height:
            other_vecs, _ = _embedded(other, cfg, model, ctx, Path(where) / "against.npy")
            cross, cos = cosine_pairs(vecs, other_vecs, cfg.threshold, mapper=ctx.mapper)
            other_ids = other.select(["_id"])
            alive = _drop_matches(
                ids.to_frame(), other_ids, alive, cross[:, 0], cross[:, 1], cos, "semantic_duplicate", found
            )
        pairs, _ = cosine_pairs(vecs, None, cfg.threshold, mapper=ctx.mapper)
        rank = keep_rank(df.select(_rank_columns(cfg)), cfg)
        labels = _clusters(df.height, pairs, alive, rank)

        def score_of(rep_dup: np.ndarray) -> np.ndarray:
            return (vecs[rep_dup[:, 0]] * vecs[rep_dup[:, 1]]).sum(axis=1).astype(np.float64)

        kept = _finish(df, ids, cfg, alive, labels, rank, score_of, "semantic_duplicate", found)
    return StepResult({"data": kept}, events=found)  # type: ignore[dict-item]


class Embedded(NamedTuple):
    """A batch's unit vectors and whether each text has a word."""

    vectors: np.ndarray
    live: np.ndarray


def embedding_batch(
    batch: pl.DataFrame, cfg: SemanticConfig, shared: dict[str, list[str]], model: str | None
) -> Embedded:
    """One batch of ``dedup.semantic``'s text fields → its ``Embedded`` (depends on the batch alone:
    what ``Table.map_batches`` may run on a worker)."""
    from dataforge.embed import embed

    text = dedup_text(batch, cfg, shared=shared)
    return Embedded(embed(text.to_list(), model, cfg.batch_size, None, cfg.device), text_has_word(text))


def _embedded(
    side: Table, cfg: SemanticConfig, model: str | None, ctx: Context, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, live) of every row of ``side``, embedded a batch at a time (``embedding_batch``):
    the vectors are written to the ``.npy`` file ``path`` as they come and returned memory-mapped
    from it (what ``cosine_pairs``' jobs read), so the step holds a batch of them at a time."""
    shared = shared_prompts(_messages_fields(side, cfg), cfg)
    embed_batch = functools.partial(embedding_batch, cfg=cfg, shared=shared, model=model)
    parts = side.map_batches(embed_batch, list(dict.fromkeys(cfg.fields)), EMBED_BATCH, ctx.mapper)
    live = np.zeros(side.height, dtype=bool)
    vectors: np.ndarray | None = None
    at = 0
    for part in ctx.progress.track(
        parts, total=side.height, description="embed", unit="rows", size=lambda p: len(p.live)
    ):
        if vectors is None:
            vectors = np.lib.format.open_memmap(path, "w+", np.float32, (side.height, part.vectors.shape[1]))
        vectors[at : at + len(part.live)], live[at : at + len(part.live)] = part.vectors, part.live
        at += len(part.live)
    if vectors is None:
        return np.zeros((0, 0), dtype=np.float32), live
    vectors.flush()
    return vectors, live
