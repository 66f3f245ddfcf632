"""``leakage.check``: find training rows that contain an eval item — verbatim, lightly edited, or
rephrased — and drop, flag or report them.

Consumes ``train`` and one or more eval inputs (any other names: ``{train: …, gsm8k_test: …,
mmlu: …}``), reading ``train_fields`` / ``eval_fields`` (text or ``messages``) and, where given,
``train_answer`` / ``eval_answer`` (final answers). Produces ``data`` (train without the dropped
rows) and ``matches`` (one row per contaminated train row: its best eval match, the deciding
detector and every detector's score, both texts).

The cascade, cheap first; only candidates reach the transformer:
1. ``exact``: equal normalized text (NFKC, case, whitespace).
2. ``ngram``: a shared word n-gram (``ngram``, default 13; ``short_ngram`` for eval texts shorter
   than ``2 * ngram`` words), as in lm-eval / GPT-3 decontamination, on both texts with the
   punctuation inside numbers removed ("8:00" → "800"), so a copy stripped of punctuation
   still shares its n-grams.
3. ``minhash``: word 3-gram shingle Jaccard ≥ ``minhash_min`` through a MinHash LSH index of
   the eval side (candidates verified exactly; eval items of ``2 * short_ngram`` words or more): a
   copy edited so often that no n-gram survives;
4. candidates for rephrases: TF-IDF (words) cosine top-``top_k`` eval items per train row, kept
   above ``tfidf_min``, over the normalized texts and over their ``canonical_words`` (numbers as
   ``n<value>`` whether written in digits or words, capitalized words — names — left out; kept
   above ``canonical_candidate_min``);
5. ``canonical``: the canonical-words TF-IDF cosine with the numbers agreeing decides a rephrase
   by itself (renamed people, numbers written out, clauses reordered), without the transformer;
6. ``embedding``: MiniLM cosine (offline by default; the first ``max_tokens`` tokens of each text,
   where a question stands before its worked answer) of the remaining candidate pairs whose
   agreement signals the rule could still accept — the share of the eval item's numbers (digits
   or words) the train text repeats, and whether the final answers agree.

Decision rule (defaults chosen on planted GSM8K data, figures in BENCHMARKS.md). A shared n-gram
is a leak unless the pair is a template with other numbers and another answer, or a template
filled with other names (capitalized words inside sentences) whose numbers do not all repeat.
Otherwise, and never when both answers are known and differ, a candidate is a leak when:
- ``minhash``: its shingle Jaccard ≥ ``minhash_min`` with number agreement ≥
  ``alone_numbers_min`` and, unless every number repeats, the eval item's names (where it has
  any) found in the train text;
- ``canonical``: its canonical-words cosine ≥ ``canonical_min`` and number agreement ≥
  ``canonical_numbers_min`` (only for eval items with two numbers or more: without them a
  template filled with other names reads the same, and one shared number is a coincidence);
- ``embedding``: cosine ≥ ``cosine_numbers`` and every number of the eval item reappears
  (agreement ≥ ``numbers_min``) — the same meaning with other numbers ("John orders 3 pizzas…" vs
  "Henry orders 7 pizzas…") is another problem; or cosine ≥ ``cosine_alone`` with agreement ≥
  ``alone_numbers_min`` (a near copy with a number mangled); or, when the eval item has no
  number to agree on (dialogue, open questions), cosine ≥ ``cosine_text``.
Number agreement is the share of the eval item's distinct numbers the train text has (a 1 never
counts: English counts and refers with "one"), read as digits or words ("twenty-five", "three quarters", "1/4", ".5");
one that only reappears with its punctuation stripped ("$129.00" → "12900", "8:00" → "800") still
agrees: agreement is the better of the texts read as written and read with the punctuation
inside numbers removed.

Optional LLM judge (``judge: <model name>`` from the recipe's ``models:``): candidates the rule
leaves undecided that share an n-gram or have cosine ≥ ``judge_min_cosine`` are asked "is A a rephrase of B?"
(``judge_template``, answered ``[[YES]]``/``[[NO]]``), most similar first, at most
``judge_max_calls``; a YES is a leak with detector ``judge``. Verdicts are cached with every LLM
request (per train text and eval text), so a rebuild asks nothing twice.

Action ``drop`` (default): dropped events; ``flag``: kept, flagged events; ``report``: kept, no
events. Reason ``leakage:<detector>``, ``related_id`` = the eval row, ``score`` = the deciding
detector's score, ``detail_json`` = all scores. A markdown and Parquet report is written to
``<out>/reports/leakage_<step>.{md,parquet}`` and dataset cards carry a contamination table.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Literal

import numpy as np
import polars as pl

from dataforge.engine.events import events
from dataforge.engine.step import ColumnContractError, Columns, Context, Fields, PlanInfo, StepConfig, StepResult, step
from dataforge.errors import DataError, RecipeError
from dataforge.llm.spec import ModelSpec
from dataforge.text.fields import text_expr
from dataforge.text.normalize import comparable_expr
from dataforge.text.numbers import (
    Readings,
    canonical_words,
    counted,
    digits_joined,
    number_readings,
    parse_number,
    readings_agreement,
)

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


_VERDICT = re.compile(r"\[\[\s*(YES|NO)\s*\]\]|^\s*(YES|NO)\b", re.IGNORECASE)

SIGNALS = (
    "exact",
    "ngram",
    "minhash",
    "tfidf",
    "canonical",
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
    "train_text",
    "eval_text",
]
DETECTORS = (
    "exact",
    "ngram",
    "minhash",
    "canonical",
    "embedding",
    "judge",
)  # in the order a train row's best match is chosen


class LeakageConfig(StepConfig):
    train_fields: Fields
    eval_fields: Fields
    train_answer: str | None = None
    eval_answer: str | None = None
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
    embed: bool = True
    embed_search: bool = False  # also embed every train row and search its top_k eval items by cosine
    model: str | None = None
    batch_size: int = 64
    max_tokens: int | None = 128
    cosine_numbers: float = 0.76
    numbers_min: float = 1.0
    cosine_text: float = 0.80
    cosine_alone: float = 0.97
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
    if cfg.embed_search and not cfg.embed:
        raise RecipeError("embed_search needs embed: true (it searches by the embedding cosine)", key="embed_search")
    if cfg.embed:
        from dataforge.embed import check_model

        check_model(cfg.model, info.base_dir)
    for name, c in cols.items():
        fields = cfg.train_fields if name == "train" else cfg.eval_fields
        answer = cfg.train_answer if name == "train" else cfg.eval_answer
        for f in [*fields, answer]:
            if f is not None and c is not None and f not in c:
                raise ColumnContractError(f, "train_fields" if name == "train" else "eval_fields", c, name)
    return {"data": cols["train"], "matches": MATCH_COLUMNS}


def _text(df: pl.DataFrame, fields: list[str]) -> pl.Series:
    parts = [text_expr(df, f) for f in fields]
    return df.select(pl.concat_str(parts, separator="\n").alias("t"))["t"]


def _normalized(text: pl.Series) -> pl.Series:
    return pl.select(comparable_expr(pl.lit(text))).to_series()


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
    """(t, e, tfidf): each train row's ``top_k`` eval items by TF-IDF (words) cosine ≥ ``floor``."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(min_df=1, sublinear_tf=True)
    vec.fit(evals + train)
    t, e = vec.transform(train), vec.transform(evals)
    found = _top_k(lambda a, b: (t[a:b] @ e.T).toarray(), t.shape[0], e.shape[0], top_k, floor)
    return found.rename({"score": "tfidf"})


def _vectors(texts: list[str], cfg: LeakageConfig, ctx: Context) -> np.ndarray:
    from dataforge.embed import embed, resolve_model

    model = resolve_model(cfg.model, ctx.base_dir)
    return embed(texts, model, cfg.batch_size, ctx.progress, max_tokens=cfg.max_tokens)


def _cosine_candidates(tv: np.ndarray, ev: np.ndarray, top_k: int, floor: float) -> pl.DataFrame:
    """(t, e) for each train row's ``top_k`` eval items by embedding cosine ≥ ``floor``: exact
    search in memory-bounded blocks (no ANN index)."""
    return _top_k(lambda a, b: tv[a:b] @ ev.T, len(tv), len(ev), top_k, floor).select("t", "e")


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
    canonical: float | None, num: float | None, ans: bool | None, eval_numbers: int, cfg: LeakageConfig
) -> bool:
    """Whether the same words, once numbers are read alike and names left out (``canonical``:
    TF-IDF cosine of ``canonical_words``), with the same numbers make a rephrase: "Olu is
    twenty-six" for "Deanna is 26", clauses reordered. Only for eval items with at least two
    numbers: without them a template filled with other names ("the address of <name>, CEO of
    <company>") reads the same, and one shared number is a coincidence ("what is the 4 letter
    word for…" vs "what are all of the 4 letter words")."""
    if canonical is None or num is None or ans is False or eval_numbers < 2:
        return False
    return canonical >= cfg.canonical_min and num >= cfg.canonical_numbers_min


def decide(row: dict[str, Any], cfg: LeakageConfig) -> str | None:
    """The detector that calls this candidate pair a leak, or None (the documented rule)."""
    if row["exact"]:
        return "exact"
    cos, num, ans = row["cosine"], row["numbers"], row["answers_agree"]
    if row["ngram"] and ngram_decides(row["coverage"], num, ans, row.get("entities"), cfg):
        return "ngram"
    if minhash_decides(row.get("minhash"), num, ans, row.get("entities"), cfg):
        return "minhash"
    if canonical_decides(row.get("canonical"), num, ans, row.get("eval_numbers", 0), cfg):
        return "canonical"
    if cos is None or ans is False:
        return None
    if num is None:  # nothing to count: the meaning alone
        return "embedding" if cos >= cfg.cosine_text else None
    # the same meaning and every number: a rephrase; the same meaning with other numbers ("John
    # orders 3 pizzas…" vs "Henry orders 7 pizzas…") is another problem, unless nearly identical
    if cos >= cfg.cosine_numbers and num >= cfg.numbers_min:
        return "embedding"
    if cos >= cfg.cosine_alone and num >= cfg.alone_numbers_min:
        return "embedding"
    return None


def _embeddable(num: float | None, ans: bool | None, cfg: LeakageConfig) -> bool:
    """Whether ``decide`` could call a pair with these agreement signals a leak by its cosine:
    only such pairs are embedded."""
    return ans is not False and (num is None or num >= min(cfg.numbers_min, cfg.alone_numbers_min))


def _answers(df: pl.DataFrame, column: str | None) -> list[float | None]:
    if column is None:
        return [None] * df.height
    return [parse_number(v) for v in df[column].cast(pl.String).to_list()]


@step("leakage.check", version=5, inputs=None, outputs=("data", "matches"), columns=_columns)
def leakage_check(inputs: dict[str, pl.DataFrame], cfg: LeakageConfig, ctx: Context) -> StepResult:
    """Find train rows that contain an eval item (verbatim, edited or rephrased)."""
    train = inputs["train"]
    t_text = _text(train, cfg.train_fields)
    t_norm = _normalized(t_text)
    t_joined = _joined(t_norm)
    t_canon = [canonical_words(x) for x in t_text.to_list()]
    # train-side signals are read only for rows that reach a candidate pair, once each
    t_list = t_text.to_list()
    t_answer_text = train[cfg.train_answer].cast(pl.String).to_list() if cfg.train_answer else None

    @functools.cache
    def t_vectors() -> np.ndarray:
        return _vectors(t_list, cfg, ctx)

    @functools.cache
    def t_words(t: int) -> frozenset[str]:
        return frozenset(w.lower() for w in _WORD.findall(t_list[t]))

    @functools.cache
    def t_nums(t: int) -> Readings:
        return number_readings(t_list[t])

    @functools.cache
    def t_ans(t: int) -> float | None:
        return parse_number(t_answer_text[t]) if t_answer_text is not None else None

    found: list[dict[str, Any]] = []
    borderline: list[dict[str, Any]] = []  # undecided candidates for the optional judge
    for name, ev in inputs.items():
        if name == "train":
            continue
        if ev.is_empty():
            raise DataError(f"eval input '{name}' has no rows")
        e_text = _text(ev, cfg.eval_fields)
        e_norm = _normalized(e_text)
        e_ans = _answers(ev, cfg.eval_answer)
        exact = (
            pl.DataFrame({"k": t_norm, "t": np.arange(train.height)})
            .join(pl.DataFrame({"k": e_norm, "e": np.arange(ev.height)}), on="k")
            .select("t", "e")
            .with_columns(pl.lit(True).alias("exact"))
        )
        e_joined = _joined(e_norm)
        e_words = e_joined.str.count_matches(r"\w+").to_numpy()  # eval items' length in words
        ngram = _ngram_hits(t_joined, e_joined, e_words, cfg)
        tfidf = _tfidf_candidates(t_norm.to_list(), e_norm.to_list(), cfg.top_k, cfg.tfidf_min)
        e_canon = [canonical_words(x) for x in e_text.to_list()]
        canon = _tfidf_candidates(t_canon, e_canon, cfg.top_k, cfg.canonical_candidate_min)
        canon = canon.rename({"tfidf": "canonical"})
        sources = [exact, ngram, tfidf, canon]
        near_copies = _minhash_hits(t_joined, e_joined, e_words, cfg)
        sources.append(near_copies)
        if cfg.embed_search:
            tv_all = t_vectors()
            ev_all = _vectors(e_text.to_list(), cfg, ctx)
            sources.append(_cosine_candidates(tv_all, ev_all, cfg.top_k, min(cfg.cosine_numbers, cfg.cosine_text)))
        pairs = (
            pl.concat([frame.select("t", "e") for frame in sources])
            .unique()
            .join(exact, on=["t", "e"], how="left")
            .join(ngram, on=["t", "e"], how="left")
            .join(tfidf, on=["t", "e"], how="left")
            .join(canon, on=["t", "e"], how="left")
            .join(near_copies, on=["t", "e"], how="left")
            .with_columns(pl.col("exact").fill_null(False), pl.col("shared").fill_null(0))
            .sort("t", "e")
        )
        e_nums = [number_readings(x) for x in e_text.to_list()]
        e_ents = [names_in(x) for x in e_text.to_list()]
        e_counted = [len(counted(n[0])) for n in e_nums]
        t_idx, e_idx = pairs["t"].to_list(), pairs["e"].to_list()
        num = [readings_agreement(t_nums(t), e_nums[e]) for t, e in zip(t_idx, e_idx, strict=True)]
        ans = [
            None if t_ans(t) is None or e_ans[e] is None else abs(t_ans(t) - e_ans[e]) < 1e-9
            for t, e in zip(t_idx, e_idx, strict=True)
        ]
        cos = np.full(pairs.height, np.nan)
        # only candidates the rule could still call a leak by their cosine reach the transformer
        plausible = np.array([_embeddable(n, a, cfg) for n, a in zip(num, ans, strict=True)], dtype=bool)
        # n-gram hits are decided without the transformer, unless near-verbatim by TF-IDF (the n-gram
        # rule may still turn those down when punctuation loss mangled their numbers)
        near = pairs["tfidf"].fill_null(0.0).to_numpy() >= cfg.tfidf_near
        ent = [
            name_agreement(t_words(t), e_ents[e]) if shared or mh is not None else None
            for t, e, shared, mh in zip(t_idx, e_idx, pairs["shared"], pairs["minhash"], strict=True)
        ]
        ngram_no = np.array(
            [
                shared > 0 and not ngram_decides(cov or 0.0, n, a, en, cfg)
                for shared, cov, n, a, en in zip(pairs["shared"], pairs["coverage"], num, ans, ent, strict=True)
            ],
            dtype=bool,
        )
        by_canonical = np.array(
            [
                canonical_decides(c, n, a, e_counted[e], cfg)
                for c, n, a, e in zip(pairs["canonical"], num, ans, e_idx, strict=True)
            ],
            dtype=bool,
        )
        todo = ~pairs["exact"].to_numpy() & ((pairs["shared"] == 0).to_numpy() | (near & ngram_no)) & plausible
        by_minhash = np.array(
            [minhash_decides(j, n, a, en, cfg) for j, n, a, en in zip(pairs["minhash"], num, ans, ent, strict=True)],
            dtype=bool,
        )
        todo &= ~by_canonical & ~by_minhash  # decided without the transformer
        if cfg.embed and todo.any():
            ti = pairs["t"].to_numpy()[todo]
            ei = pairs["e"].to_numpy()[todo]
            if cfg.embed_search:  # every text is embedded already
                cos[todo] = (tv_all[ti] * ev_all[ei]).sum(axis=1)
            else:
                ut, ue = np.unique(ti), np.unique(ei)
                tv = _vectors(t_text.gather(ut).to_list(), cfg, ctx)
                evv = _vectors(e_text.gather(ue).to_list(), cfg, ctx)
                cos[todo] = (tv[np.searchsorted(ut, ti)] * evv[np.searchsorted(ue, ei)]).sum(axis=1)
        for k, r in enumerate(pairs.iter_rows(named=True)):
            t, e = r["t"], r["e"]
            row = {
                "t": t,
                "eval_input": name,
                "e": e,
                "exact": r["exact"],
                "ngram": int(r["shared"]),
                "minhash": r["minhash"],
                "coverage": r["coverage"] or 0.0,
                "tfidf": r["tfidf"],
                "canonical": r["canonical"],
                "cosine": None if np.isnan(cos[k]) else float(cos[k]),
                "numbers": num[k],
                "entities": ent[k],
                "eval_numbers": e_counted[e],
                "answers_agree": ans[k],
                "eval_id": ev["_id"][e],
                "eval_text": e_text[e],
            }
            detector = decide(row, cfg)
            if detector:
                score = {"exact": 1.0, "ngram": r["shared"], "minhash": r["minhash"], "canonical": r["canonical"]}.get(
                    detector, row["cosine"]
                )
                found.append({**row, "detector": detector, "score": float(score)})
            elif cfg.judge is not None and (row["ngram"] or (row["cosine"] or 0.0) >= cfg.judge_min_cosine):
                borderline.append({**row, "train_text": t_list[t]})
    if borderline:
        found.extend(_judge(borderline, cfg, ctx))
    matches = _best_matches(found, train, t_text)
    hit = train["_id"].is_in(matches["train_id"].implode()) if matches.height else pl.Series([False] * train.height)
    kept = train.filter(~hit) if cfg.action == "drop" else train
    ev_frames = []
    if cfg.action != "report" and matches.height:
        detail = [json.dumps({k: r[k] for k in ("eval_input", *SIGNALS)}) for r in matches.iter_rows(named=True)]
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
    return StepResult({"data": kept, "matches": matches}, events=ev_frames)


def parse_verdict(text: str) -> bool | None:
    """True for a YES verdict, False for NO, None when the answer says neither."""
    m = _VERDICT.search(text or "")
    return None if m is None else (m.group(1) or m.group(2)).upper() == "YES"


def _judge(borderline: list[dict[str, Any]], cfg: LeakageConfig, ctx: Context) -> list[dict[str, Any]]:
    """Ask the LLM judge about the borderline candidates, most similar first, at most
    ``judge_max_calls`` of them (the request cache answers repeated pairs for free). A YES is a
    leak with detector ``judge``; the judge's answer goes into the match detail."""
    from dataforge.llm.base import Request
    from dataforge.llm.spec import SamplingParams
    from dataforge.llm.templates import render
    from dataforge.steps.prompting import track

    strength = lambda r: max(r["cosine"] or 0.0, r["coverage"])  # noqa: E731
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
            leaks.append({**row, "detector": "judge", "score": strength(r)})
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
        "tfidf": pl.Float64,
        "canonical": pl.Float64,
        "cosine": pl.Float64,
        "numbers": pl.Float64,
        "answers_agree": pl.Boolean,
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
    return best.select([pl.col(c).cast(t) for c, t in schema.items()])


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


def report(step_name: str, cfg: LeakageConfig, tables: dict[str, pl.DataFrame]) -> dict[str, str | pl.DataFrame]:
    """``reports/leakage_<step>.md`` (summary and the top examples side by side) and ``.parquet``
    (every match)."""
    m = tables["matches"]
    lines = [f"# Leakage report: step `{step_name}`", "", f"Action: `{cfg.action}`.", "", *contamination_table(m), ""]
    for detector in DETECTORS:
        top = m.filter(pl.col("detector") == detector).sort("score", descending=True).head(10)
        if top.is_empty():
            continue
        lines += [
            f"## Top `{detector}` matches",
            "",
            "| train row | eval row | score | cosine | numbers | train text | eval text |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in top.iter_rows(named=True):
            cos = "-" if r["cosine"] is None else f"{r['cosine']:.3f}"
            num = "-" if r["numbers"] is None else f"{r['numbers']:.2f}"
            lines.append(
                f"| {r['train_id']} | {r['eval_input']}:{r['eval_id']} | {r['score']:.3f} | {cos} | {num} "
                f"| {_cell(r['train_text'])} | {_cell(r['eval_text'])} |"
            )
        lines.append("")
    return {f"leakage_{step_name}.md": "\n".join(lines), f"leakage_{step_name}.parquet": m}


def card_section(step_name: str, load: Any) -> list[str]:
    return [f"From step `{step_name}` (leakage.check):", "", *contamination_table(load("matches"))]


leakage_check.report = report  # type: ignore[attr-defined]
leakage_check.card_section = card_section  # type: ignore[attr-defined]
