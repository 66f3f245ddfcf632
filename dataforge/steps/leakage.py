"""``leakage.check``: find training rows that contain an eval item — verbatim, lightly edited, or
rephrased — and drop, flag or report them.

Consumes ``train`` and one or more eval inputs (any other names: ``{train: …, gsm8k_test: …,
mmlu: …}``), reading ``train_fields`` / ``eval_fields`` (text or ``messages``) and, where given,
``train_answer`` / ``eval_answer`` (final answers) and ``eval_choices`` (multiple choice). Produces
``data`` (train without the dropped rows) and ``matches`` (one row per contaminated train row: its
best eval match, the deciding detector and every signal, both texts).

Views (``dataforge.text.views``; ``view: auto`` chooses per row): chat text is compared by its user
turns; a multiple-choice item as its question with the correct choice, its question alone, its
question with the lettered choices and, after a passage, its question line (a match to any is a
match to the item); code by its natural-language part (docstrings without their doctest values,
comments, split identifiers; numbers are read from it), and, for ``clone``, by its
identifier-anonymized token stream.

The cascade, cheap first; only gated candidates reach the transformer:
1. ``exact``: equal normalized text (NFKC, case, whitespace).
2. ``ngram``: a shared word n-gram (``ngram``, default 13; ``short_ngram`` for eval texts shorter
   than ``2 * ngram`` words), on both texts with the punctuation inside numbers removed.
3. ``clone``: code whose anonymized token ``ngram``-grams cover ``ngram_coverage`` of the eval
   item's (every name changed, the code kept).
4. ``minhash``: word 3-gram shingle Jaccard ≥ ``minhash_min`` through a MinHash LSH index.
5. ``canonical``: the TF-IDF cosine of ``canonical_words`` (numbers read alike, names left out)
   ≥ ``canonical_min`` with the numbers agreeing, for eval items with two distinctive numbers.
6. Dense recall: every train row's ``dense_top_k`` eval items by the cosine of static token
   embeddings distilled from the embedding model (``dataforge.static_embed``; seconds for every row,
   so no rewording hides a pair from the later stages). ``dense``: static cosine + evidence ≥
   ``static_min`` with some evidence for it (``corroborated``): a bag of static word vectors reads
   topic more than request, so without agreeing numbers or answers the pair goes to the
   transformer instead ("I think people overreact about school shootings…" and "Today I heard a
   parent berating their child…" read 0.89).
7. ``embedding``: MiniLM cosine (the eval item's first ``max_tokens`` tokens; the train text's, at
   most its longest gated eval item's length + ``train_tokens_margin``) of the pairs still undecided whose
   static cosine + evidence reaches ``embed_gate`` (``short_embed_gate`` for eval items under
   ``2 * ngram`` words); a leak when cosine + evidence ≥ ``cosine_min`` (``code_cosine_min`` for
   code eval items). A train row that one of its pairs matched at 1–6 is not read by the
   transformer (nor its pairs asked of the judge): an ``embedding`` match ranks after those, so
   the row's match is the one it has.

Evidence, not vetoes: number agreement (both ways: the eval item's numbers in the train text and
the train text's first numbers in the eval item, read in related units and forms — "a decade",
"half an hour", "one-sixth", "a dozen", 25 %) costs ``numbers_weight`` per share missing and
``numbers_none_weight`` more when none of two or more agree (the same frame with other
quantities), and adds ``numbers_bonus`` for shared distinctive numbers; final answers add
``answer_weight`` when they agree (not a small count, which agrees by chance) and take
``answer_conflict_weight`` when they differ. The word detectors keep their template rules (a
shared 13-gram with most of several numbers changed, as written or read both ways, or with
other numbers and another answer, is a template, not a copy).

Partition: ``rows`` on ``train``, the eval inputs whole in every batch. A train row's decision
depends on its own text and the eval side alone: TF-IDF and static vectors are weighted by the eval
side's IDF, MiniLM vectors do not depend on the texts embedded with them (``embed``), LSH buckets
link each train row to the bucket's first eval item, and every output row is a train row's, in
input order. With a judge the step runs whole (its calls are capped over the step). Defaults were chosen across
GSM8K, MMLU and HumanEval development rephrases (``bench/leakage.py``, BENCHMARKS.md).

Optional LLM judge (``judge: <model name>`` from the recipe's ``models:``): candidates the rule
leaves undecided that share an n-gram or have a cosine (static or MiniLM) ≥ ``judge_min_cosine``
are asked "is A a rephrase of B?"
(``judge_template``, answered ``[[YES]]``/``[[NO]]``), most similar first, at most
``judge_max_calls``; a YES is a leak with detector ``judge``. Verdicts are cached with every LLM
request (per train text and eval text), so a rebuild asks nothing twice.

Action ``drop`` (default): dropped events; ``flag``: kept, flagged events; ``report``: kept, no
events. Reason ``leakage:<detector>``, ``related_id`` = the eval row, ``score`` = the deciding
detector's score, ``detail_json`` = all scores (and the judge's answer where it decided). A
markdown and Parquet report is written to ``<out>/reports/leakage_<step>.{md,parquet}`` and
dataset cards carry a contamination table.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import polars as pl

from dataforge.blas import product
from dataforge.engine.events import events
from dataforge.engine.plan import Plan, PlannedStep, Ref
from dataforge.engine.step import ColumnContractError, Columns, Context, Fields, PlanInfo, StepConfig, StepResult, step
from dataforge.errors import DataError, RecipeError
from dataforge.llm.spec import ModelSpec
from dataforge.text.fields import text_expr
from dataforge.text.normalize import comparable_text
from dataforge.text.numbers import (
    Readings,
    both_readings,
    canonical_words,
    counted,
    digits_joined,
    distinctive,
    distinctive_agreeing,
    equivalents,
    leading_agreement,
    number_readings,
    parse_number,
    readings_agreement,
)
from dataforge.text.views import choice_views, code_views, ngram_view, user_turns, viewed

JUDGE_TEMPLATE = (
    "Are these two texts the same problem, one a copy or a rephrasing of the other (same question, "
    "same quantities), even if worded differently?\n\nText A: {{ train }}\n\nText B: {{ eval }}\n\n"
    'Answer "[[YES]]" or "[[NO]]".'
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
# capitalized words that are not names
_NOT_NAMES = frozenset("i i'm i've i'll i'd a an the what how why when where who which is are can do does".split())


def names_in(text: str) -> frozenset[str]:
    """Capitalized words that do not start a sentence or a turn (people, places, companies), lowercased."""
    names = set()
    for m in re.finditer(r"(?<![.!?:\n]\s)(?<!^)(?<![.!?:\n])\b([A-Z][a-z][A-Za-z'-]*)", text or ""):
        w = m.group(1).lower()
        if w not in _NOT_NAMES:
            names.add(w)
    return frozenset(names)


def name_agreement(train_words: frozenset[str], names: frozenset[str]) -> float | None:
    """Share of the eval text's names found among the train text's words (any case); None when
    the eval text names nothing."""
    return len(names & train_words) / len(names) if names else None


_VERDICT = re.compile(r"\[\[\s*(YES|NO)\s*\]\]", re.IGNORECASE)
_LEADING_VERDICT = re.compile(r"^\s*(YES|NO)\b", re.IGNORECASE)

SIGNALS = (
    "exact",
    "ngram",
    "minhash",
    "clone",
    "tfidf",
    "canonical",
    "static",
    "cosine",
    "numbers",
    "answers_agree",
)  # every detector's score
MATCH_COLUMNS = [
    "_id",
    "train_id",
    "eval_input",
    "eval_id",
    "detector",
    "score",
    *SIGNALS,
    "judge_answer",
    "train_text",
    "eval_text",
]
DETECTORS = (
    "exact",
    "ngram",
    "clone",
    "minhash",
    "canonical",
    "dense",
    "embedding",
    "judge",
)  # in the order a train row's best match is chosen


class LeakageConfig(StepConfig):
    train_fields: Fields
    eval_fields: Fields
    train_answer: str | None = None
    eval_answer: str | None = None
    # without a train_answer column, the final answer a train row states in its text (all its
    # turns: "#### N", \boxed{…}, "the answer is …", "Answer: …", <answer>…</answer>; none when it states
    # none) is compared with the eval_answer of the items
    answers_from_text: bool = True
    action: Literal["drop", "flag", "report"] = "drop"
    ngram: int = 13
    short_ngram: int = 8
    ngram_coverage: float = 0.5
    minhash: bool = True
    minhash_ngram: int = 3
    minhash_min: float = 0.5
    num_perm: int = 128
    entities_min: float = 0.5
    top_k: int = 3
    tfidf_min: float = 0.3
    view: Literal["auto", "text", "code", "chat"] = "auto"  # what of each text is compared (auto: per row)
    eval_choices: str | None = None  # multiple choice: a list column; the item is read three ways (choice_views)
    dense: bool = True  # the dense recall stage: every train row's dense_top_k eval items by static embedding
    dense_top_k: int = 5
    dense_min: float = 0.5
    static_min: float = 0.88  # a leak without the transformer: static cosine + evidence ≥ this
    embed: bool = True
    model: str | None = None
    batch_size: int = 64
    max_tokens: int | None = 128
    # the transformer reads a train text to at most the longest of its gated eval items' length +
    # this many tokens (and max_tokens): a rephrase is about as long as its item, and what follows
    # it (a worked answer, a long reply) adds cost and dilutes the cosine; None: max_tokens always
    train_tokens_margin: int | None = 32
    # the transformer's numbers: float32 (the same decisions on every machine), or bfloat16 (about
    # 2x on a CPU with AVX-512 BF16; cosines move by up to 0.002, so a pair at a threshold's edge
    # can be decided otherwise), or auto (bfloat16 where the device computes it natively)
    embed_dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    embed_gate: float = 0.65  # a pair reaches the transformer when its static cosine + gate evidence reaches this
    short_embed_gate: float = 0.5  # the same for eval items under 2 × ngram words (few words: noisy static vectors)
    gate_numbers_weight: float = 0.3  # the numbers' weight in the gate's evidence
    cosine_min: float = 0.78  # a leak: cosine + evidence ≥ this (text, chat, multiple choice)
    code_cosine_min: float = 0.68  # the same for code eval items (their docstrings and signatures)
    numbers_weight: float = 0.22  # evidence: each share of the eval item's numbers missing costs this much
    numbers_bonus: float = 0.04  # evidence: two distinctive numbers (not small counts) shared add this much
    numbers_none_weight: float = 0.05  # evidence: an eval item of ≥ 2 numbers sharing none costs this much more
    answer_weight: float = 0.05  # evidence: final answers that agree add this (small answers agree by chance)
    answer_conflict_weight: float = 0.15  # evidence: final answers that differ take this (another problem)
    numbers_min: float = 1.0
    alone_numbers_min: float = 0.75
    answer_numbers_min: float = 0.5
    tfidf_near: float = 0.70
    canonical_min: float = 0.58
    canonical_candidate_min: float = 0.2
    canonical_numbers_min: float = 0.8
    judge: ModelSpec | None = None  # optional LLM judge (`judge: <model name>`) on borderline candidates
    judge_min_cosine: float = 0.60
    judge_max_calls: int = 200
    judge_template: str = JUDGE_TEMPLATE


def _columns(cfg: LeakageConfig, cols: dict[str, Columns], info: PlanInfo) -> dict[str, Columns]:
    if "train" not in cols:
        raise RecipeError("needs an input named 'train' (the data to clean)", key="inputs")
    if len(cols) < 2:
        raise RecipeError("needs at least one eval input besides 'train'", key="inputs")
    if cfg.embed or cfg.dense:
        from dataforge.embed import check_model

        check_model(cfg.model, info.base_dir)
    for name, c in cols.items():
        side = "train" if name == "train" else "eval"
        named = [(f"{side}_fields", f) for f in getattr(cfg, f"{side}_fields")]
        named += [(f"{side}_answer", getattr(cfg, f"{side}_answer"))]
        named += [("eval_choices", cfg.eval_choices)] if side == "eval" else []
        for key, f in named:
            if f is not None and c is not None and f not in c:
                raise ColumnContractError(f, key, c, name)
    return {"data": cols["train"], "matches": MATCH_COLUMNS}


def _joined(text: pl.Series) -> pl.Series:
    """``digits_joined`` of every text: n-grams that survive a copy with its punctuation stripped."""
    return pl.Series(text.name, [digits_joined(t) for t in text.to_list()], dtype=pl.String)


def _ngram_hits(train: pl.Series, evals: pl.Series, words: np.ndarray, cfg: LeakageConfig) -> pl.DataFrame:
    """(t, e, shared) for train/eval pairs sharing word n-grams; short eval texts use short_ngram."""
    from dataforge.text.minhash import all_shingles

    out = []
    for n, mask in ((cfg.ngram, words >= 2 * cfg.ngram), (cfg.short_ngram, words < 2 * cfg.ngram)):
        if not mask.any():
            continue
        e_idx = np.nonzero(mask)[0]
        eh, ed = all_shingles(evals.gather(e_idx).to_arrow(), n)
        th, td = all_shingles(train.to_arrow(), n)
        e_frame = pl.DataFrame({"h": eh, "e": e_idx[ed]}).unique()
        sizes = e_frame.group_by("e").agg(pl.len().alias("eval_ngrams"))
        t_frame = pl.DataFrame({"h": th, "t": td}).unique()
        shared = t_frame.join(e_frame, on="h").group_by("t", "e").agg(pl.len().alias("shared"))
        out.append(
            shared.join(sizes, on="e").with_columns((pl.col("shared") / pl.col("eval_ngrams")).alias("coverage"))
        )
    if not out:
        return pl.DataFrame(schema={"t": pl.Int64, "e": pl.Int64, "shared": pl.UInt32, "coverage": pl.Float64})
    return pl.concat(out).select("t", "e", "shared", "coverage").cast({"t": pl.Int64, "e": pl.Int64})


def _rows_per_chunk(eval_rows: int, budget: int = 256 << 20) -> int:
    """Train rows per block of a dense train × eval similarity matrix, so one block of float64
    stays within ``budget`` bytes (256 MiB) whatever the size of the eval side."""
    return int(min(2048, max(1, budget // (8 * max(eval_rows, 1)))))


def _minhash_hits(train: pl.Series, evals: pl.Series, words: np.ndarray, cfg: LeakageConfig) -> pl.DataFrame:
    """(t, e, minhash) for train/eval pairs whose word ``minhash_ngram``-shingle sets have Jaccard
    ≥ ``minhash_min``: the eval side's MinHash signatures indexed in LSH buckets with the train
    side's (``dataforge.text.minhash``, datasketch-compatible), candidates verified by exact
    Jaccard. Catches a copy edited so often that no ``short_ngram`` words survive in a row. Eval
    items shorter than ``2 * short_ngram`` words are left out: there one changed word moves the
    Jaccard by a third ("What do you think of Trump?" / "… of women")."""
    import pyarrow as pa

    from dataforge.text.minhash import candidate_pairs, exact_jaccard, lsh_params, signatures

    empty = pl.DataFrame(schema={"t": pl.Int64, "e": pl.Int64, "minhash": pl.Float64})
    if not cfg.minhash:
        return empty
    texts = pa.concat_arrays([evals.to_arrow().cast(pa.large_string()), train.to_arrow().cast(pa.large_string())])
    sigs = signatures(texts, cfg.num_perm, 1, cfg.minhash_ngram)
    n_eval = len(evals)
    # each bucket links its members to its head, the lowest index: an eval item where the bucket has one.
    # Bands weighted toward recall (97 % of pairs at Jaccard 0.5 instead of datasketch's 55 %): exact
    # verification removes the extra candidates.
    pairs = candidate_pairs(sigs, *lsh_params(cfg.minhash_min, cfg.num_perm, 0.05, 0.95))
    long_enough = words >= 2 * cfg.short_ngram
    pairs = pairs[(pairs[:, 0] < n_eval) & (pairs[:, 1] >= n_eval)]
    pairs = pairs[long_enough[pairs[:, 0]]]
    if not len(pairs):
        return empty
    jaccard = exact_jaccard(texts, pairs, cfg.minhash_ngram)
    keep = jaccard >= cfg.minhash_min
    return pl.DataFrame(
        {"t": pairs[keep, 1] - n_eval, "e": pairs[keep, 0], "minhash": jaccard[keep]},
        schema={"t": pl.Int64, "e": pl.Int64, "minhash": pl.Float64},
    )


STATIC_DIGITS = 5  # static cosines are compared at this precision, whatever the block sizes


def _top_k(similarities: Any, n_train: int, n_eval: int, top_k: int, floor: float) -> pl.DataFrame:
    """(t, e, score): each train row's ``top_k`` eval items by ``similarities(first, last)`` (the
    dense block of train rows first..last × every eval item), kept at ≥ ``floor``; blocks of
    ``_rows_per_chunk`` train rows."""
    rows, cols, vals = [], [], []
    chunk = _rows_per_chunk(n_eval)
    k = min(top_k, n_eval)
    for s in range(0, n_train, chunk):
        sims = similarities(s, min(s + chunk, n_train))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        best = np.take_along_axis(sims, top, axis=1)
        keep = best >= floor
        rows.append(np.nonzero(keep)[0] + s)
        cols.append(top[keep])
        vals.append(best[keep])
    if not rows:
        return pl.DataFrame(schema={"t": pl.Int64, "e": pl.Int64, "score": pl.Float64})
    return pl.DataFrame(
        {"t": np.concatenate(rows), "e": np.concatenate(cols), "score": np.concatenate(vals).astype(np.float64)}
    ).cast({"t": pl.Int64, "e": pl.Int64})


def _tfidf_candidates(train: list[str], evals: list[str], top_k: int, floor: float) -> pl.DataFrame:
    """(t, e, tfidf): each train row's ``top_k`` eval items by TF-IDF (words, sublinear counts)
    cosine ≥ ``floor``. The IDF is the eval side's (``static_embed.reference_idf``; a word in no
    eval item weighs as much as the rarest), so a train row's vector — its norm counts every one
    of its words — depends on its own words alone: the same in any batch of train rows."""
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer

    from dataforge.static_embed import reference_idf

    empty = pl.DataFrame(schema={"t": pl.Int64, "e": pl.Int64, "tfidf": pl.Float64})
    eval_words, train_words = CountVectorizer(), CountVectorizer()
    try:
        e_counts = eval_words.fit_transform(evals).astype(np.float64)
        t_counts = train_words.fit_transform(train).astype(np.float64)
    except ValueError:  # no word of two letters on one side: nothing to compare
        return empty
    idf_eval = reference_idf(np.bincount(e_counts.indices, minlength=e_counts.shape[1]), len(evals))
    unseen = float(reference_idf(np.zeros(1), len(evals))[0])
    column = np.array([eval_words.vocabulary_.get(w, -1) for w in train_words.get_feature_names_out()])
    idf = np.where(column >= 0, idf_eval[np.maximum(column, 0)], unseen)

    def unit_rows(counts: Any, weights: np.ndarray) -> Any:
        """Sublinear counts × ``weights``, each row scaled to unit length, its words summed in
        alphabetical order (the same order in any batch)."""
        counts.has_sorted_indices = False
        counts.sort_indices()
        counts.data = (1.0 + np.log(counts.data)) * weights[counts.indices]
        norms = np.sqrt(np.asarray(counts.multiply(counts).sum(axis=1)).ravel())
        return sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ counts

    e = unit_rows(e_counts, idf_eval)
    t = unit_rows(t_counts, idf)
    shared = np.nonzero(column >= 0)[0]
    onto_eval = sparse.csr_matrix(
        (np.ones(len(shared)), (shared, column[shared])), shape=(len(column), e.shape[1])
    )  # train vocabulary → eval vocabulary, words the eval side has
    t = t @ onto_eval
    t.sort_indices()
    found = _top_k(lambda a, b: (t[a:b] @ e.T).toarray(), t.shape[0], e.shape[0], top_k, floor)
    return found.rename({"score": "tfidf"})


def _vectors(
    texts: list[str], cfg: LeakageConfig, ctx: Context, max_tokens: int | np.ndarray | None = None
) -> np.ndarray:
    """MiniLM vectors of ``texts``, each read to ``max_tokens`` (one limit, or one per text;
    ``cfg.max_tokens`` when None)."""
    from dataforge.embed import embed, resolve_model

    model = resolve_model(cfg.model, ctx.base_dir)
    limit = cfg.max_tokens if max_tokens is None else max_tokens
    return embed(texts, model, cfg.batch_size, ctx.progress, max_tokens=limit, dtype=cfg.embed_dtype)


def _train_token_limits(
    evals: list[str], pairs_t: np.ndarray, pairs_e: np.ndarray, cfg: LeakageConfig, ctx: Context
) -> np.ndarray | None:
    """How many tokens the transformer reads of each train text of the gated pairs (``pairs_t``,
    ``pairs_e``: each pair's train index and eval index into ``evals``), one per train index of
    ``np.unique(pairs_t)`` in that order: the longest of its eval items' ``token_lengths`` +
    ``train_tokens_margin``, at most ``max_tokens``. None: no margin set. A function of the train
    row and the eval side alone."""
    if cfg.train_tokens_margin is None:
        return None
    from dataforge.embed import resolve_model, token_lengths

    ue, e_at = np.unique(pairs_e, return_inverse=True)
    e_len = token_lengths([evals[i] for i in ue], resolve_model(cfg.model, ctx.base_dir), cfg.max_tokens)
    ut, t_at = np.unique(pairs_t, return_inverse=True)
    longest = np.zeros(len(ut), dtype=np.int64)
    np.maximum.at(longest, t_at, e_len[e_at])
    limit = longest + cfg.train_tokens_margin
    return limit if cfg.max_tokens is None else np.minimum(limit, cfg.max_tokens)


EVAL_VECTORS_KEPT = 200_000  # eval texts whose MiniLM vectors a process keeps (about 300 MB)
_EVAL_VECTORS: dict[tuple[str | None, int | None, str], dict[str, np.ndarray]] = {}


def _eval_vectors(texts: list[str], cfg: LeakageConfig, ctx: Context) -> np.ndarray:
    """MiniLM vectors of eval texts, kept by text in this process: every batch of train rows asks
    for many of the same eval items, and a text's vector does not depend on the texts embedded
    with it (``embed``), so a kept one is the one computing it again would give."""
    from dataforge.embed import resolve_model

    known = _EVAL_VECTORS.setdefault((resolve_model(cfg.model, ctx.base_dir), cfg.max_tokens, cfg.embed_dtype), {})
    missing = list(dict.fromkeys(t for t in texts if t not in known))
    if len(known) + len(missing) > EVAL_VECTORS_KEPT:
        known.clear()
        missing = list(dict.fromkeys(texts))
    if missing:
        known.update(zip(missing, _vectors(missing, cfg, ctx), strict=True))
    return np.stack([known[t] for t in texts])


# an eval item's numbers, read once per process: every batch of train rows reads the same items
# (the results are only read, never changed)
_eval_readings = functools.lru_cache(maxsize=1 << 17)(number_readings)
_eval_equivalents = functools.lru_cache(maxsize=1 << 17)(equivalents)


def forget_eval_sides() -> None:
    """Drop what this process keeps of the eval sides it has read (MiniLM and static vectors,
    number readings), so that the next check reads its eval side as a first one does: what
    ``bench/leakage.py`` times."""
    _EVAL_VECTORS.clear()
    _eval_readings.cache_clear()
    _eval_equivalents.cache_clear()
    _static_eval_side.cache_clear()


def _static_vectors(train: list[str], evals: list[str], cfg: LeakageConfig, ctx: Context) -> list[np.ndarray]:
    """Static embeddings (``dataforge.static_embed``, distilled from the embedding model) of the
    train and eval texts, weighted by the eval side's IDF: a train row's vector is its own."""
    from dataforge.embed import resolve_model
    from dataforge.static_embed import load_static

    name = resolve_model(cfg.model, ctx.base_dir)
    model = load_static(name)
    idf, e_static = _static_eval_side(name, tuple(evals))
    return [model.encode(train, idf), e_static]


@functools.lru_cache(maxsize=4)
def _static_eval_side(model: str | None, evals: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The eval side's IDF and static vectors, kept for the next batch of train rows (the same
    eval texts give the same ones)."""
    from dataforge.static_embed import load_static

    static = load_static(model)
    idf = static.idf(evals)
    return idf, static.encode(evals, idf)


def _dense_candidates(tv: np.ndarray, ev: np.ndarray, cfg: LeakageConfig) -> pl.DataFrame:
    """(t, e, static): every train row's ``dense_top_k`` eval items by the cosine of their static
    vectors (``_static_vectors``), kept at ≥ ``dense_min``: the recall stage no rewording
    defeats, cheap enough to run on every row."""
    found = _top_k(lambda a, b: product(tv[a:b], ev.T), len(tv), len(ev), cfg.dense_top_k, cfg.dense_min)
    # rounded: a float32 product's last bits depend on the block shape, the decisions must not
    return found.select("t", "e", pl.col("score").round(STATIC_DIGITS).alias("static"))


def evidence(
    num: float | None,
    ans: bool | None,
    cfg: LeakageConfig,
    distinct: int = 0,
    numbers_weight: float | None = None,
    counted: int = 0,
    small_answer: bool = False,
) -> float:
    """What number and answer agreement add to a pair's text similarity: ``numbers_weight`` off
    per share of the eval item's numbers the train text lacks (nothing when the eval item has
    none) and ``numbers_none_weight`` more when the eval item has ``counted`` ≥ 2 numbers and none
    agree (the same frame with other quantities), ``numbers_bonus`` on for each of up to two
    ``distinctive`` numbers (not a small count) the texts share, ``answer_weight`` on when the
    final answers agree (not for a ``small_answer``, which agrees by chance) and
    ``answer_conflict_weight`` off when they differ. Evidence, not a
    veto: a text close enough says the same thing however its numbers read."""
    weight = cfg.numbers_weight if numbers_weight is None else numbers_weight
    score = 0.0 if num is None else -weight * (1.0 - num)
    if num == 0.0 and counted >= 2:
        score -= cfg.numbers_none_weight
    score += cfg.numbers_bonus * min(distinct, 2) / 2
    if ans is not None:  # a small answer (a count up to 12) agrees by chance: only a differing one counts
        score += (0.0 if small_answer else cfg.answer_weight) if ans else -cfg.answer_conflict_weight
    return score


def ngram_decides(coverage: float, num: float | None, ans: bool | None, ent: float | None, cfg: LeakageConfig) -> bool:
    """Whether a shared n-gram is a leak. 13 shared consecutive words are strong evidence, so a hit
    with agreeing numbers, or covering ``ngram_coverage`` of the eval item's n-grams, counts
    unless it is a template: reused with other numbers and another answer ("A train travels
    270 miles in 3 hours…" vs "A plane travels 1200 miles in 3 hours…"), or filled with other names
    ("the address of Marc Rowan, CEO of Apollo" vs "… of Harold Hamm, CEO of Continental") while
    its numbers do not all repeat. Light edits can mangle a number or two."""
    if ans is True:
        return True
    all_numbers = num is not None and num >= cfg.numbers_min
    if ans is False and not all_numbers and num is not None:
        return False
    if ent is not None and ent < cfg.entities_min and not all_numbers:
        return False
    # without numbers to agree on, a shared n-gram must cover half the eval item: "What are some
    # things I can lie about on my resume…" is not "… on my dating profile…"
    loose_numbers = num is not None and num >= cfg.answer_numbers_min
    return coverage >= cfg.ngram_coverage or (loose_numbers and ans is not False)


def minhash_decides(
    jaccard: float | None, num: float | None, ans: bool | None, ent: float | None, cfg: LeakageConfig
) -> bool:
    """Whether a near copy by shingle Jaccard (≥ ``minhash_min``) is a leak: unless it is a template
    with other numbers ("John orders 3 pizzas…" vs "Henry orders 7 pizzas…" share most shingles),
    another final answer, or other names while its numbers do not all repeat."""
    if jaccard is None or jaccard < cfg.minhash_min or ans is False:
        return False
    if num is not None and num < cfg.alone_numbers_min:
        return False
    all_numbers = num is not None and num >= cfg.numbers_min
    return all_numbers or ent is None or ent >= cfg.entities_min


def canonical_decides(
    canonical: float | None, num: float | None, ans: bool | None, eval_distinctive: int, cfg: LeakageConfig
) -> bool:
    """Whether the same words, once numbers are read alike and names left out (``canonical``:
    TF-IDF cosine of ``canonical_words``), with the same numbers make a rephrase: "Olu is
    twenty-six" for "Deanna is 26", clauses reordered. Only for eval items with at least two
    ``distinctive`` numbers (not small counts): without them a template filled with other names
    ("the address of <name>, CEO of <company>") reads the same, and small numbers agree by chance
    with a worked answer full of them ("Liam is 16… two years ago… twice")."""
    if canonical is None or num is None or ans is False or eval_distinctive < 2:
        return False
    return canonical >= cfg.canonical_min and num >= cfg.canonical_numbers_min


def _support(row: dict[str, Any], cfg: LeakageConfig, numbers_weight: float | None = None) -> float:
    """``evidence`` for a candidate pair's row."""
    return evidence(
        row["numbers"],
        row["answers_agree"],
        cfg,
        row.get("distinctive", 0),
        numbers_weight,
        counted=row.get("eval_counted", 0),
        small_answer=row.get("small_answer", False),
    )


def corroborated(row: dict[str, Any], support: float) -> bool:
    """Whether a pair's evidence speaks for it: every number of the eval item is in the train
    text, or the evidence adds up to more than nothing (shared distinctive numbers, an agreeing
    answer). A pair without numbers or answers is not corroborated, whatever its similarity."""
    num = row["numbers"]
    return support > 0 or (num is not None and num >= 1.0)


def decide(row: dict[str, Any], cfg: LeakageConfig) -> str | None:
    """The detector that calls this candidate pair a leak, or None (the documented rule)."""
    if row["exact"]:
        return "exact"
    # the word detectors read numbers as written; the similarity rules also in related units
    num, ans = row.get("numbers_as_written", row["numbers"]), row["answers_agree"]
    # a shared n-gram with most of an eval item's several numbers changed is its template: read as
    # written, or both ways (a worked answer full of numbers agrees as written with many items)
    agreeing = [x for x in (num, row["numbers"]) if x is not None]
    template = bool(agreeing) and min(agreeing) < cfg.answer_numbers_min and row.get("eval_counted", 0) >= 2
    if row["ngram"] and not template and ngram_decides(row["coverage"], num, ans, row.get("entities"), cfg):
        return "ngram"
    if row.get("clone") and (ans is not False):
        return "clone"
    if minhash_decides(row.get("minhash"), num, ans, row.get("entities"), cfg):
        return "minhash"
    if canonical_decides(row.get("canonical"), num, ans, row.get("eval_distinctive", 0), cfg):
        return "canonical"
    support = _support(row, cfg)
    static = row.get("static")
    if static is not None and static + support >= cfg.static_min and corroborated(row, support):
        return "dense"
    cos = row["cosine"]
    if cos is None:
        return None
    floor = cfg.code_cosine_min if row.get("kind") == "code" else cfg.cosine_min
    return "embedding" if cos + support >= floor else None


def _answers(df: pl.DataFrame, column: str | None) -> list[float | None]:
    if column is None:
        return [None] * df.height
    return [parse_number(v) for v in df[column].cast(pl.String).to_list()]


def stated_answers(df: pl.DataFrame, fields: list[str]) -> list[str | None]:
    """The final answer each row states in its text (``graders.extract_answer``: "#### N",
    ``\\boxed{…}``, "the answer is …", or the reasoning format's ``<answer>``), reading every turn
    of a conversation (the answer is the assistant's); None for a row that states none."""
    from dataforge.graders import extract_answer

    return [extract_answer(t) for t in _fields_text(df, fields)]


def _fields_text(df: pl.DataFrame, fields: list[str], roles: list[str] | None = None) -> list[str]:
    """Each row's ``fields`` as one text, a line apart (messages: the turns of ``roles``, all when
    None). The turns of one role are read by their contents alone, as ``views.user_turns`` reads a
    conversation written out in a chat format: one conversation is one text either way."""
    texts = [text_expr(df, f, roles, labels=roles is None) for f in fields]
    return df.select(pl.concat_str(texts, separator="\n").alias("t"))["t"].to_list()


def both_ways(forward: float | None, train_written: Any, eval_searched: Any, k: int) -> float | None:
    """Number agreement read both ways: the share of the eval item's numbers the train text has,
    and of the train text's first ``k`` numbers (``k`` = the eval item's count) the eval item has;
    the lower. So a worked answer full of numbers does not agree with every short problem."""
    back = leading_agreement(train_written, eval_searched, k)
    return forward if back is None or forward is None else min(forward, back)


class _Side:
    """One side's texts as the detectors read them: ``base`` (chat → its user turns, multiple
    choice → three rows per item, ``choice_views``, with ``owner`` naming the item), ``prose``
    (code → its natural-language part), each
    row's ``kind`` and, for code, its anonymized token stream."""

    def __init__(self, df: pl.DataFrame, fields: list[str], cfg: LeakageConfig, choices: str | None = None):
        raw = _fields_text(df, fields, ["user"] if cfg.view in ("auto", "chat") else None)
        self.owner: list[int] | None = None  # multiple choice: the item each view belongs to
        shingled: list[str] | None = None  # multiple choice: the views as shared n-grams read them
        if choices is not None:
            answers = df[cfg.eval_answer].cast(pl.String).to_list() if cfg.eval_answer else [None] * df.height
            listed = df[choices].to_list()
            views = [choice_views(q, c, a) for q, c, a in zip(raw, listed, answers, strict=True)]
            self.owner = [k for k, v in enumerate(views) for _ in v]
            raw = [text for v in views for text in v]
            shingled = [ngram_view(text, listed[k]) for k, text in zip(self.owner, raw, strict=True)]
        read = [viewed(t, cfg.view) for t in raw]
        self.kinds = [k for k, _ in read]
        self.base = [b for _, b in read]
        views = [code_views(t) if k == "code" else (t, "") for t, k in zip(self.base, self.kinds, strict=True)]
        self.prose = [v[0] for v in views]
        self.code = [v[1] for v in views]
        self.norm = comparable_text(pl.Series("t", self.base, dtype=pl.String))
        self.joined = _joined(self.norm)
        # what shared word n-grams are taken from (``ngram_view``: choice blocks cut short); only
        # the views it cut are read again
        self.ngram_text = self.joined
        cut = [] if shingled is None else [i for i, (s, r) in enumerate(zip(shingled, raw, strict=True)) if s != r]
        if shingled is not None and cut:
            base = [user_turns(shingled[i]) if self.kinds[i] == "chat" else shingled[i] for i in cut]
            texts = self.joined.to_list()
            for i, t in zip(cut, _joined(comparable_text(pl.Series("t", base, dtype=pl.String))), strict=True):
                texts[i] = t
            self.ngram_text = pl.Series(self.joined.name, texts, dtype=pl.String)
        self.canon = [canonical_words(x) for x in self.base]


def _clone_hits(train: _Side, evals: _Side, cfg: LeakageConfig) -> pl.DataFrame:
    """(t, e, clone) for code pairs whose identifier-anonymized token streams share ``ngram``-token
    sequences covering ``ngram_coverage`` of the eval item's: a function copied with every name
    changed. Only eval items with code beyond a signature (``2 * ngram`` tokens or more)."""
    schema = {"t": pl.Int64, "e": pl.Int64, "clone": pl.Float64}
    e_tokens = np.array([len(c.split()) for c in evals.code])
    e_idx = np.nonzero(e_tokens >= 2 * cfg.ngram)[0]
    t_idx = np.nonzero([k == "code" for k in train.kinds])[0]
    if not len(e_idx) or not len(t_idx):
        return pl.DataFrame(schema=schema)
    t_codes = pl.Series([train.code[i] for i in t_idx], dtype=pl.String)
    e_codes = pl.Series([evals.code[i] for i in e_idx], dtype=pl.String)
    words = np.full(len(e_idx), 2 * cfg.ngram)  # long enough: every item uses ``ngram``
    hits = _ngram_hits(t_codes, e_codes, words, cfg).filter(pl.col("coverage") >= cfg.ngram_coverage)
    return pl.DataFrame(
        {"t": t_idx[hits["t"].to_numpy()], "e": e_idx[hits["e"].to_numpy()], "clone": hits["coverage"].to_numpy()},
        schema=schema,
    )


@step(
    "leakage.check",
    version=23,  # 10: corroborated static matches; 11: answers_from_text; 12: train_tokens_margin; 13: templates;
    # 14: numbers with a scale ("$32M", "1.5 million", "a hundred"), "an hour and a half", "per cent";
    # 15: a row matched before the transformer is not embedded, nor judged, for its other pairs
    # 16: a train row without text is no `exact` copy of an eval item without text
    # 17: a train row's stated answer is also read from an "Answer: N" line (graders.extract_answer)
    # 18: … and from an "Answer: N" label after a sentence's end ("Wait, no. Answer: 6"), and after "</think>";
    # the judge's verdict is its last [[YES]] / [[NO]] (it was the first)
    # 19: comparison keys drop invisible characters (zero-width spaces, the BOM, soft hyphens, bidi marks);
    # a conversation written out in a chat format (ChatML, Llama 2 / 3, Mistral, Gemma, Phi-3) is read by its
    # user turns (it was read whole, system prompt first)
    # 20: the judge's verdict is read past a thinking model's reasoning (after its last </think>)
    # 21: a messages column's user turns are read by their contents, as a chat format's text is ("user: "
    # labels lifted short texts' cosines and made word n-grams: one conversation gave two decisions)
    # 22: a turn's tool calls (function name, arguments) are its text too (a tool-only turn was no text)
    # 23: a conversation written out as text is read by text.chat_text, as parse.chat reads it (an HH turn's
    # line opening "Human:" is the turn's, not a turn; "Human: …\nAssistant: …" transcripts are read by line)
    inputs=None,
    outputs=("data", "matches", "scores"),
    columns=_columns,
    partition="rows",
    partitioned=("train",),
    whole_when=lambda cfg: cfg.judge is not None,
)
def leakage_check(inputs: dict[str, pl.DataFrame], cfg: LeakageConfig, ctx: Context) -> StepResult:
    """Find train rows that contain an eval item (verbatim, edited or rephrased)."""
    train = inputs["train"]
    ts = _Side(train, cfg.train_fields, cfg)
    t_list = ts.base
    t_answer_text = train[cfg.train_answer].cast(pl.String).to_list() if cfg.train_answer else None
    if t_answer_text is None and cfg.eval_answer and cfg.answers_from_text:
        t_answer_text = stated_answers(train, cfg.train_fields)

    @functools.cache
    def t_words(t: int) -> frozenset[str]:
        return frozenset(w.lower() for w in _WORD.findall(t_list[t]))

    # numbers are read from the prose view: a rewritten function changes its doctest values
    @functools.cache
    def t_readings(t: int) -> tuple[Readings, Readings]:
        return both_readings(ts.prose[t])

    def t_nums(t: int) -> Readings:
        return t_readings(t)[0]

    def t_nums_written(t: int) -> Readings:
        return t_readings(t)[1]

    @functools.cache
    def t_ans(t: int) -> float | None:
        return parse_number(t_answer_text[t]) if t_answer_text is not None else None

    found: list[dict[str, Any]] = []
    borderline: list[dict[str, Any]] = []  # undecided candidates for the optional judge
    matched: set[int] = set()  # train rows a pair matched (without the transformer, until the judge)
    closest: list[tuple[int, str, str, float | None]] = []  # every candidate's similarity margin
    for name, ev in inputs.items():
        if name == "train":
            continue
        if ev.is_empty():
            raise DataError(f"eval input '{name}' has no rows")
        es = _Side(ev, cfg.eval_fields, cfg, cfg.eval_choices)
        if not (es.norm != "").any():  # (a null is no text either)
            raise DataError(f"eval input '{name}': no row has text in its fields {cfg.eval_fields}")
        if es.owner is not None:  # one row per view, each carrying its item's id
            ev = ev.select(pl.all().gather(es.owner))
        e_ans = _answers(ev, cfg.eval_answer) if cfg.eval_choices is None else [None] * ev.height
        # (a text with nothing left to compare, empty or null, is no copy of an item without one)
        exact = (
            pl.DataFrame({"k": ts.norm, "t": np.arange(train.height)})
            .join(pl.DataFrame({"k": es.norm, "e": np.arange(ev.height)}).filter(pl.col("k") != ""), on="k")
            .select("t", "e")
            .with_columns(pl.lit(True).alias("exact"))
        )
        e_words = es.joined.str.count_matches(r"\w+").to_numpy()  # eval items' length in words
        ngram = _ngram_hits(ts.joined, es.ngram_text, e_words, cfg)
        tfidf = _tfidf_candidates(ts.norm.to_list(), es.norm.to_list(), cfg.top_k, cfg.tfidf_min)
        canon = _tfidf_candidates(ts.canon, es.canon, cfg.top_k, cfg.canonical_candidate_min)
        canon = canon.rename({"tfidf": "canonical"})
        near_copies = _minhash_hits(ts.joined, es.joined, e_words, cfg)
        clones = _clone_hits(ts, es, cfg)
        dense = pl.DataFrame(schema={"t": pl.Int64, "e": pl.Int64, "static": pl.Float64})
        if cfg.dense:
            t_static, e_static = _static_vectors(ts.prose, es.prose, cfg, ctx)
            dense = _dense_candidates(t_static, e_static, cfg)
        sources = [exact, ngram, tfidf, canon, near_copies, clones, dense]
        pairs = pl.concat([frame.select("t", "e") for frame in sources]).unique()
        for frame in sources:
            pairs = pairs.join(frame, on=["t", "e"], how="left")
        pairs = pairs.with_columns(pl.col("exact").fill_null(False), pl.col("shared").fill_null(0)).sort("t", "e")
        if cfg.dense and pairs.height:  # the static cosine of every candidate, whichever stage found it
            missing = pairs["static"].is_null().to_numpy()
            if missing.any():
                ti, ei = pairs["t"].to_numpy()[missing], pairs["e"].to_numpy()[missing]
                static = pairs["static"].to_numpy().copy()
                static[missing] = np.round((t_static[ti] * e_static[ei]).sum(axis=1), STATIC_DIGITS)
                pairs = pairs.with_columns(pl.Series("static", static))
        e_nums = [_eval_readings(x) for x in es.prose]
        e_ents = [names_in(x) for x in es.base]
        e_distinctive = [len(distinctive(n[0])) for n in e_nums]
        e_counted = [len(counted(n[0])) for n in e_nums]
        e_searched = [_eval_equivalents(x) for x in es.prose]
        e_small_answer = [a is not None and not distinctive(Counter([a])) for a in e_ans]
        t_idx, e_idx = pairs["t"].to_list(), pairs["e"].to_list()
        num = [
            both_ways(readings_agreement(t_nums(t), e_nums[e]), t_nums_written(t)[0], e_searched[e], e_counted[e])
            for t, e in zip(t_idx, e_idx, strict=True)
        ]
        written = [readings_agreement(t_nums_written(t), e_nums[e]) for t, e in zip(t_idx, e_idx, strict=True)]
        ans = [
            None if t_ans(t) is None or e_ans[e] is None else abs(t_ans(t) - e_ans[e]) < 1e-9
            for t, e in zip(t_idx, e_idx, strict=True)
        ]
        ent = [
            name_agreement(t_words(t), e_ents[e]) if shared or mh is not None else None
            for t, e, shared, mh in zip(t_idx, e_idx, pairs["shared"], pairs["minhash"], strict=True)
        ]
        rows = []
        for r, n, w, a, en in zip(pairs.iter_rows(named=True), num, written, ans, ent, strict=True):
            t, e = r["t"], r["e"]
            rows.append(
                {
                    "t": t,
                    "eval_input": name,
                    "e": e,
                    "exact": r["exact"],
                    "ngram": int(r["shared"]),
                    "minhash": r["minhash"],
                    "clone": r["clone"],
                    "coverage": r["coverage"] or 0.0,
                    "tfidf": r["tfidf"],
                    "canonical": r["canonical"],
                    "static": r["static"],
                    "cosine": None,
                    "numbers": n,
                    "numbers_as_written": w,
                    "entities": en,
                    "eval_distinctive": e_distinctive[e],
                    "eval_counted": e_counted[e],
                    "eval_words": int(e_words[e]),
                    "distinctive": distinctive_agreeing(t_nums(t), e_nums[e]),
                    "answers_agree": a,
                    "small_answer": e_small_answer[e],
                    "kind": es.kinds[e],
                    "eval_id": ev["_id"][e],
                    "eval_text": es.base[e],
                }
            )
        # decided without the transformer first; of the rest, pairs whose static cosine with their
        # evidence reaches embed_gate go to the transformer, but not those of a train row that a
        # pair has matched already: the transformer can only add an `embedding` match, which ranks
        # after every detector decided without it, so the row's match would be the same
        cheap = [decide(row, cfg) for row in rows]
        matched.update(row["t"] for row, d in zip(rows, cheap, strict=True) if d)
        todo = [k for k, row in enumerate(rows) if cheap[k] is None and row["t"] not in matched and _gated(row, cfg)]
        if cfg.embed and todo:
            ti = np.array([rows[k]["t"] for k in todo])
            ei = np.array([rows[k]["e"] for k in todo])
            ut, ue = np.unique(ti), np.unique(ei)
            limits = _train_token_limits(es.prose, ti, ei, cfg, ctx)
            tv = _vectors([ts.prose[i] for i in ut], cfg, ctx, limits)
            evv = _eval_vectors([es.prose[i] for i in ue], cfg, ctx)
            cos = (tv[np.searchsorted(ut, ti)] * evv[np.searchsorted(ue, ei)]).sum(axis=1)
            for k, c in zip(todo, cos, strict=True):
                rows[k]["cosine"] = float(c)
        for row, detector in zip(rows, cheap, strict=True):
            closest.append((row["t"], name, row["eval_id"], similarity_margin(row, cfg)))
            if detector is None and row["cosine"] is not None:  # (the rest was decided above)
                detector = decide(row, cfg)
            if detector:
                score = {
                    "exact": 1.0,
                    "ngram": row["ngram"],
                    "minhash": row["minhash"],
                    "clone": row["clone"],
                    "canonical": row["canonical"],
                    "dense": row["static"],
                }.get(detector, row["cosine"])
                found.append({**row, "detector": detector, "score": float(score)})
            elif cfg.judge is not None and (
                row["ngram"] or max(row["cosine"] or 0.0, row["static"] or 0.0) >= cfg.judge_min_cosine
            ):
                borderline.append({**row, "train_text": t_list[row["t"]]})
    # the judge decides pairs of train rows no detector matched (its verdict ranks last)
    matched.update(f["t"] for f in found)
    borderline = [b for b in borderline if b["t"] not in matched]
    if borderline:
        found.extend(_judge(borderline, cfg, ctx))
    matches = _best_matches(found, train, pl.Series("t", t_list, dtype=pl.String))
    hit = train["_id"].is_in(matches["train_id"].implode()) if matches.height else pl.Series([False] * train.height)
    kept = train.filter(~hit) if cfg.action == "drop" else train
    ev_frames = []
    if cfg.action != "report" and matches.height:
        detail = [json.dumps(_match_detail(r)) for r in matches.iter_rows(named=True)]
        ev_frames.append(
            events(
                matches["train_id"],
                "dropped" if cfg.action == "drop" else "flagged",
                "leakage:" + matches["detector"],
                related_id=matches["eval_id"],
                score=matches["score"],
                detail=pl.Series(detail, dtype=pl.String),
            )
        )
    scores = _closest_scores(closest, train["_id"], matches)
    return StepResult({"data": kept, "matches": matches, "scores": scores}, events=ev_frames)


def _match_detail(match: dict[str, Any]) -> dict[str, Any]:
    """A match's event detail: the eval input, every detector's score and, for a pair the judge
    decided, the judge's answer."""
    detail = {k: match[k] for k in ("eval_input", *SIGNALS)}
    if match.get("judge_answer") is not None:
        detail["judge_answer"] = match["judge_answer"]
    return detail


def similarity_margin(row: dict[str, Any], cfg: LeakageConfig) -> float | None:
    """How far a candidate pair's text similarity with its evidence lies above (≥ 0: a leak by
    similarity alone) or below its threshold: the higher of static cosine + evidence −
    ``static_min`` (above it only for a ``corroborated`` pair: the static cosine decides no
    other) and transformer cosine + evidence − the cosine floor (``code_cosine_min`` for code).
    None when neither applies."""
    support = _support(row, cfg)
    floor = cfg.code_cosine_min if row.get("kind") == "code" else cfg.cosine_min
    margins = []
    if row.get("static") is not None:
        static = row["static"] + support - cfg.static_min
        if static < 0 or corroborated(row, support):
            margins.append(static)
    if row.get("cosine") is not None:
        margins.append(row["cosine"] + support - floor)
    return round(max(margins), 6) if margins else None


def _closest_scores(
    closest: list[tuple[int, str, str, float | None]], train_ids: pl.Series, matches: pl.DataFrame
) -> pl.DataFrame:
    """One row per train row that had a candidate, in input order: its closest eval item by
    ``similarity_margin``, the margin, and the detector that matched the row (null when it was
    kept), for the card's score distribution against the threshold."""
    schema = {"t": pl.Int64, "eval_input": pl.String, "eval_id": pl.String, "margin": pl.Float64}
    frame = pl.DataFrame([c for c in closest if c[3] is not None], schema=schema, orient="row")
    best = frame.sort(["t", "margin", "eval_input", "eval_id"], descending=[False, True, False, False]).unique(
        "t", keep="first", maintain_order=True
    )
    best = best.with_columns(train_ids.gather(best["t"]).alias("train_id"))
    best = best.join(matches.select("train_id", "detector"), on="train_id", how="left", maintain_order="left")
    return best.select(
        pl.format("score:{}", "train_id").alias("_id"), "train_id", "eval_input", "eval_id", "margin", "detector"
    )


def _gated(row: dict[str, Any], cfg: LeakageConfig) -> bool:
    """Whether an undecided pair is worth the transformer: its static cosine (or, without the
    dense stage, its TF-IDF cosine) with the evidence reaches ``embed_gate`` (``short_embed_gate``
    for eval items under ``2 * ngram`` words, cheap to embed and poorly read by static vectors)."""
    first = row["static"] if row["static"] is not None else row["tfidf"]
    support = _support(row, cfg, cfg.gate_numbers_weight)
    gate = cfg.short_embed_gate if row.get("eval_words", 0) < 2 * cfg.ngram else cfg.embed_gate
    return first is not None and first + support >= gate


def parse_verdict(text: str) -> bool | None:
    """True for a YES verdict, False for NO, None when the answer says neither: the last
    ``[[YES]]`` / ``[[NO]]`` (the judge's final word, as ``ai_feedback`` reads ``[[A]]``), else a
    YES or NO that opens the answer. A judge that weighs "[[NO]] … on reflection [[YES]]" said
    YES."""
    from dataforge.steps.prompting import last_stated  # (the model clients load only with a judge)

    stated = last_stated(text, (_VERDICT, _LEADING_VERDICT))
    return None if stated is None else stated.upper() == "YES"


def _judge(borderline: list[dict[str, Any]], cfg: LeakageConfig, ctx: Context) -> list[dict[str, Any]]:
    """Ask the LLM judge about the borderline candidates, most similar first, at most
    ``judge_max_calls`` of them (the request cache answers repeated pairs for free). A YES is a
    leak with detector ``judge``; the judge's answer goes into the match detail."""
    from dataforge.llm.base import Request
    from dataforge.llm.spec import SamplingParams
    from dataforge.llm.templates import render
    from dataforge.steps.prompting import track

    strength = lambda r: max(r["cosine"] or 0.0, r["static"] or 0.0, r["coverage"])  # noqa: E731
    ranked = sorted(borderline, key=lambda r: (-strength(r), r["t"], r["e"]))[: cfg.judge_max_calls]
    params = SamplingParams(temperature=0.0, max_tokens=16)
    requests = [
        Request(
            params,
            messages=(
                {
                    "role": "user",
                    "content": render(cfg.judge_template, {"train": r["train_text"], "eval": r["eval_text"]}),
                },
            ),
        )
        for r in ranked
    ]
    answers = ctx.llm.client(cfg.judge).generate(requests, track(ctx), "leakage judge")
    leaks = []
    for r, gen in zip(ranked, answers, strict=True):
        verdict = parse_verdict(gen.texts[0]) if gen.ok else None
        if verdict:
            row = {k: v for k, v in r.items() if k != "train_text"}
            leaks.append({**row, "detector": "judge", "score": strength(r), "judge_answer": gen.texts[0]})
    return leaks


def _best_matches(found: list[dict[str, Any]], train: pl.DataFrame, t_text: pl.Series) -> pl.DataFrame:
    """One match per train row: the first of ``DETECTORS`` that matched, then the highest score."""
    schema = {
        "_id": pl.String,
        "train_id": pl.String,
        "eval_input": pl.String,
        "eval_id": pl.String,
        "detector": pl.String,
        "score": pl.Float64,
        "exact": pl.Boolean,
        "ngram": pl.Int64,
        "minhash": pl.Float64,
        "clone": pl.Float64,
        "tfidf": pl.Float64,
        "canonical": pl.Float64,
        "static": pl.Float64,
        "cosine": pl.Float64,
        "numbers": pl.Float64,
        "answers_agree": pl.Boolean,
        "judge_answer": pl.String,
        "train_text": pl.String,
        "eval_text": pl.String,
    }
    if not found:
        return pl.DataFrame(schema=schema)
    rank = {detector: k for k, detector in enumerate(DETECTORS)}
    frame = pl.DataFrame(found, infer_schema_length=None).with_columns(
        pl.col("detector").replace_strict(rank, return_dtype=pl.Int8).alias("_r")
    )
    best = frame.sort(["t", "_r", "score", "eval_id"], descending=[False, False, True, False]).unique(
        "t", keep="first", maintain_order=True
    )
    best = best.with_columns(
        train["_id"].gather(best["t"]).alias("train_id"),
        t_text.gather(best["t"]).alias("train_text"),
        pl.format("leak:{}", train["_id"].gather(best["t"])).alias("_id"),
    )
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in schema.items() if c not in best.columns]  # no judge
    return best.with_columns(missing).select([pl.col(c).cast(t) for c, t in schema.items()])


# -- report and card ----------------------------------------------------------------------------------


def contamination_table(matches: pl.DataFrame) -> list[str]:
    """Markdown rows: per eval input, contaminated eval items and train rows, by detector."""
    if matches.is_empty():
        return ["No training row matched an eval item."]
    lines = [
        "| eval input | eval items contaminated | train rows | " + " | ".join(DETECTORS) + " |",
        "|---|---|---|" + "---|" * len(DETECTORS),
    ]
    for name in sorted(matches["eval_input"].unique().to_list()):
        m = matches.filter(pl.col("eval_input") == name)
        by = dict(zip(*m.group_by("detector").len().to_dict(as_series=False).values(), strict=True))
        counts = " | ".join(str(by.get(d, 0)) for d in DETECTORS)
        lines.append(f"| {name} | {m['eval_id'].n_unique()} | {m.height} | {counts} |")
    return lines


def _cell(text: str | None, width: int = 160) -> str:
    text = " ".join((text or "").split()).replace("|", "\\\\|")
    return text if len(text) <= width else text[:width] + "…"


def report(step_name: str, cfg: LeakageConfig, load: Callable[[str], pl.DataFrame]) -> dict[str, str | pl.DataFrame]:
    """``reports/leakage_<step>.md`` (summary and the top examples side by side) and ``.parquet``
    (every match), from the step's ``matches`` output."""
    m = load("matches")
    lines = [f"# Leakage report: step `{step_name}`", "", f"Action: `{cfg.action}`.", "", *contamination_table(m), ""]
    for detector in DETECTORS:
        top = m.filter(pl.col("detector") == detector).sort("score", descending=True).head(10)
        if top.is_empty():
            continue
        judged = detector == "judge"  # its matches show what the judge answered
        lines += [
            f"## Top `{detector}` matches",
            "",
            "| train row | eval row | score | cosine | numbers | train text | eval text |"
            + (" judge's answer |" if judged else ""),
            "|---|---|---|---|---|---|---|" + ("---|" if judged else ""),
        ]
        for r in top.iter_rows(named=True):
            cos = "-" if r["cosine"] is None else f"{r['cosine']:.3f}"
            num = "-" if r["numbers"] is None else f"{r['numbers']:.2f}"
            lines.append(
                f"| {r['train_id']} | {r['eval_input']}:{r['eval_id']} | {r['score']:.3f} | {cos} | {num} "
                f"| {_cell(r['train_text'])} | {_cell(r['eval_text'])} |"
                + (f" {_cell(r['judge_answer'])} |" if judged else "")
            )
        lines.append("")
    return {f"leakage_{step_name}.md": "\n".join(lines), f"leakage_{step_name}.parquet": m}


CARD_THRESHOLDS = (
    "cosine_min",
    "code_cosine_min",
    "static_min",
    "embed_gate",
    "ngram",
    "ngram_coverage",
    "minhash_min",
    "canonical_min",
    "numbers_weight",
    "answer_weight",
    "answer_conflict_weight",
)  # the settings a card names: what a reader needs to judge a hit count


def card_section(ps: PlannedStep, load: Callable[[Ref], pl.DataFrame], plan: Plan) -> list[str]:
    """The card's lines for a leakage check: each eval set (its rows and the fingerprint of the
    artifact the check read, the key to ``dataforge query``'s ``artifacts``), the detectors'
    settings, and the contaminated items and train rows per eval set and detector."""
    cfg: LeakageConfig = ps.cfg  # type: ignore[assignment]
    evals = [
        [name, f"`{ref}`", f"{load(ref).height:,}", f"`{plan.by_name[ref.step].fingerprint}`"]
        for name, ref in ps.inputs.items()
        if name != "train"
    ]
    settings = ", ".join(f"{k} {getattr(cfg, k)}" for k in CARD_THRESHOLDS)
    model = cfg.model or "bundled all-MiniLM-L6-v2"
    judge = "no LLM judge"
    if cfg.judge is not None:
        judge = f"an LLM judge (`{cfg.judge.backend}:{cfg.judge.model}`, at most {cfg.judge_max_calls} calls)"
    return [
        "#### Contamination",
        "",
        f"From step `{ps.name}` (leakage.check, action `{cfg.action}`), against these eval sets:",
        "",
        "| eval input | from | rows | artifact fingerprint |",
        "|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in evals),
        "",
        f"Detectors and thresholds: {settings}; embeddings by {model}; {judge}. A pair is a leak by "
        "similarity when its cosine plus the number and answer evidence reaches its threshold.",
        "",
        *contamination_table(load(Ref(ps.name, "matches"))),
    ]


leakage_check.report = report  # type: ignore[attr-defined]
leakage_check.card_section = card_section  # type: ignore[attr-defined]
