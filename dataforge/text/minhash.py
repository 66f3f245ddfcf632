"""Vectorised MinHash signatures, compatible with datasketch 2.0's default ``affine32`` scheme.

One compiled pass per document (C, ``_kernels.c``, built with the package; documents split
over every core) reads its UTF-8 bytes, splits words, hashes each word (FNV-1a, 32 bit),
combines ``ngram`` consecutive word hashes into a shingle hash, and keeps, for each of
``num_perm`` permutations, the minimum of ``a_k * fmix32(h) + b_k mod 2^32`` — exactly what
``datasketch.MinHash(num_perm, seed, hashfunc=shingle_hash)`` computes for the same shingles
(its ``affine32`` scheme: MurmurHash3 finalizer, then odd-multiplier affine maps mod 2^32, with
the permutation parameters drawn from ``numpy.random.RandomState(seed)``). The test suite checks
the hash values are equal.

Tokens are words (runs of ASCII letters, digits, ``_`` and any non-ASCII byte) or, with
``unit="char"``, characters (whitespace runs folded to one space); ASCII is lowercased. A
document with fewer than ``ngram`` tokens has one shingle (all its tokens); one with none has
the empty signature (all 2^32 - 1), which matches nothing.

The per-shingle hash is our own (FNV-1a words, multiplicative combine) because datasketch's
default, SHA-1 of each shingle's bytes, cannot be computed without a Python call per shingle;
pass ``hashfunc=shingle_hash_of`` to datasketch to get identical signatures from it.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import pyarrow as pa

from dataforge.text import _kernels

MAX_HASH = np.uint32(0xFFFFFFFF)
_M32 = 0xFFFFFFFF
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_COMBINE = 0x9E3779B1
_WORD = re.compile(rb"[0-9a-z_\x80-\xff]+")
Unit = Literal["word", "char"]


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b) for ``num_perm`` and ``seed``."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


# -- the Python reference (for datasketch and for exact Jaccard) -------------------------------


def tokens_of(text: str, unit: Unit = "word") -> list[bytes]:
    """The tokens the kernel sees: words (runs of ASCII letters, digits, ``_`` and non-ASCII
    bytes) or characters (whitespace runs folded to one space), ASCII lowercased."""
    data = text.encode("utf-8").lower()  # bytes.lower: ASCII only, like the kernel
    if unit == "word":
        return _WORD.findall(data)
    return [ch.encode("utf-8") for ch in b" ".join(data.split()).decode("utf-8")]


def token_hash(token: bytes) -> int:
    h = _FNV_OFFSET
    for c in token:
        h = ((h ^ c) * _FNV_PRIME) & _M32
    return h


def shingle_hash_of(tokens: Sequence[bytes]) -> int:
    h = 0
    for t in tokens:
        h = ((h * _COMBINE) & _M32) ^ token_hash(t)
    return h


def shingle_hashes(text: str, ngram: int, unit: Unit = "word") -> set[int]:
    """The set of shingle hashes of ``text``, as the compiled kernel sees them."""
    ts = tokens_of(text, unit)
    if not ts:
        return set()
    width = min(ngram, len(ts))
    return {shingle_hash_of(ts[i : i + width]) for i in range(len(ts) - width + 1)}


def datasketch_minhash(text: str, num_perm: int, seed: int, ngram: int, unit: Unit = "word"):
    """The datasketch MinHash of ``text`` with our shingles: its hashvalues equal ours."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed, hashfunc=int, scheme="affine32")
    for h in shingle_hashes(text, ngram, unit):
        m.update(h)
    return m


# -- the compiled kernels (dataforge/text/_kernels.c) ------------------------------------------


def _on_cores(work: Callable[[int, int], object], n: int, min_chunk: int = 2048) -> None:
    """Run ``work(first, last)`` over ``range(n)`` in one contiguous chunk per core. The compiled
    kernels release the GIL, so the chunks run in parallel on threads."""
    workers = max(1, min(os.cpu_count() or 1, n // min_chunk))
    bounds = np.linspace(0, n, workers + 1).astype(np.int64)
    if workers == 1:
        work(0, n)
        return
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(work, int(bounds[i]), int(bounds[i + 1])) for i in range(workers)]:
            f.result()


def all_shingles(texts: pa.Array | Sequence[str], ngram: int, unit: Unit = "word") -> tuple[np.ndarray, np.ndarray]:
    """Every shingle hash of every text, with the index of its text: (hashes uint64, docs int64).
    Repeats within a text are kept; a text shorter than ``ngram`` gives one shingle."""
    n, data, offsets = _arrow_bytes(texts)
    hashes = np.empty(len(data) + n, dtype=np.uint64)  # at most one shingle per byte, plus one per text
    docs = np.empty(len(data) + n, dtype=np.int64)
    m = _kernels.all_shingles(data, offsets, ngram, unit == "char", hashes, docs)
    return hashes[:m], docs[:m]


def _arrow_bytes(texts: pa.Array | pa.ChunkedArray | Sequence[str]) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, UTF-8 bytes, int64 offsets) of a string array, without copying the text."""
    arr = texts if isinstance(texts, pa.Array | pa.ChunkedArray) else pa.array(list(texts), type=pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.large_string():  # (a cast imports pyarrow.compute: 0.1 s; polars gives large_string)
        arr = arr.cast(pa.large_string())
    if arr.null_count:  # (pyarrow's fill_null imports pandas: only when needed)
        arr = arr.fill_null("")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1].copy()
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, dtype=np.uint8)
    return len(arr), data, offsets


def signatures(
    texts: pa.Array | Sequence[str], num_perm: int = 128, seed: int = 1, ngram: int = 3, unit: Unit = "word"
) -> np.ndarray:
    """(n, num_perm) uint32 MinHash signatures of ``texts`` (an Arrow string array or strings)
    over word or character ``ngram`` shingles."""
    n, data, offsets = _arrow_bytes(texts)
    a, b = permutations(num_perm, seed)
    out = np.empty((n, num_perm), dtype=np.uint32)
    chars = unit == "char"
    _on_cores(lambda first, last: _kernels.signatures(data, offsets, first, last, ngram, chars, a, b, out), n)
    return out


# -- LSH ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted areas under the false-positive curve (similarity
    below ``threshold``) and the false-negative curve (above it): datasketch's ``MinHashLSH``
    choice. The areas are integrated with composite Simpson on 1,001 points for every (b, r) at
    once, with (1 - x^r)^b as exp(b * log1p(-x^r)) computed once per r, instead of datasketch's
    scipy ``quad`` loop and its half-second import; the test suite checks the choice equals
    datasketch's (114 settings agreed when 1,001 points were chosen)."""
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]  # datasketch's order
    b, r = (np.array(v) for v in zip(*pairs, strict=True))
    points = 1001
    weights = np.ones(points)
    weights[1:-1:2], weights[2:-1:2] = 4, 2

    def area(lo: float, hi: float, false_negative: bool) -> np.ndarray:
        x = np.linspace(lo, hi, points)
        with np.errstate(divide="ignore"):  # log1p(-1) at x = 1: (1 - 1)^b = 0, as it should be
            log_miss = np.log1p(-(x[None, :] ** np.arange(1, num_perm + 1)[:, None]))  # row r-1: log(1 - x^r)
        miss = np.exp(b[:, None] * log_miss[r - 1])  # P(never a candidate) = (1 - x^r)^b
        y = miss if false_negative else 1 - miss
        return (y * weights).sum(axis=1) * (hi - lo) / (3 * (points - 1))

    err = area(0.0, threshold, False) * fp_weight + area(threshold, 1.0, True) * fn_weight
    best = int(np.argmin(err))  # first minimum: datasketch keeps the first (b, r) it finds
    return int(b[best]), int(r[best])


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 keys: each band's rows of the signature folded into one number."""
    gen = np.random.RandomState(0x5EED)
    mult = (gen.randint(0, 1 << 62, rows, dtype=np.int64).astype(np.uint64) << np.uint64(1)) | np.uint64(1)
    keys = np.empty((sigs.shape[0], bands), dtype=np.uint64)
    _kernels.band_keys(np.ascontiguousarray(sigs, dtype=np.uint32), sigs.shape[1], bands, rows, mult, keys)
    return keys


def candidate_pairs(
    sigs: np.ndarray, bands: int, rows: int, rank: np.ndarray | None = None, within: int = 0
) -> np.ndarray:
    """Pairs (head, member) of documents sharing a band: each bucket links its members to its
    head, the member of smallest ``rank`` (default: index; ranks are distinct), so the pairs do
    not depend on the order of the rows when ``rank`` is a canonical order. Buckets of at most
    ``within`` members also give every pair of their members (better-ranked first): clusters
    that may not chain need them, since a member may be similar to another but not to the head.
    Empty signatures never match. Buckets are hash tables in the compiled kernel, one band at a
    time."""
    return candidate_pairs_of_keys(band_keys(sigs, bands, rows), has_words(sigs), rank, within)


def has_words(sigs: np.ndarray) -> np.ndarray:
    """Whether each signature saw a shingle (an empty text's is all ``MAX_HASH``)."""
    return ~(sigs == MAX_HASH).all(axis=1)


def candidate_pairs_of_keys(
    keys: np.ndarray, live: np.ndarray, rank: np.ndarray | None = None, within: int = 0
) -> np.ndarray:
    """``candidate_pairs`` from the band keys (``band_keys``) and the rows that have words
    (``has_words``): what a step keeps of each signature when it computes them batch by batch
    (bands × 8 bytes a row instead of ``num_perm`` × 4)."""
    n, bands = keys.shape
    rank = np.arange(n, dtype=np.int64) if rank is None else np.ascontiguousarray(rank, dtype=np.int64)
    live = np.ascontiguousarray(live, dtype=bool)
    if live.sum() < 2:
        return np.zeros((0, 2), dtype=np.int64)
    # one band's heads at a time: n × 8 bytes, not n × bands × 8
    codes = [band_pairs(keys[:, band], rank, live, within) for band in range(bands)]
    code = np.unique(np.concatenate(codes))
    return np.column_stack([code // n, code % n]).astype(np.int64)


def band_pairs(keys: np.ndarray, rank: np.ndarray, live: np.ndarray, within: int = 0) -> np.ndarray:
    """The candidate pairs of one band of ``m`` rows (``keys``: their key in that band) as sorted
    codes head × m + member: each bucket's live members linked to its member of smallest ``rank``
    and, in buckets of at most ``within`` members, every pair of members (better-ranked first).
    What ``candidate_pairs_of_keys`` runs for each band, and ``lsh_buckets`` for each bucket's
    file of a band (its rows numbered 0..m-1)."""
    m = len(keys)
    heads = np.empty((m, 1), dtype=np.int64)
    rank = np.ascontiguousarray(rank, dtype=np.int64)
    live = np.ascontiguousarray(live, dtype=bool)
    column = np.ascontiguousarray(keys, dtype=np.uint64).reshape(m, 1)
    _kernels.band_heads(column, m, 1, rank, live.view(np.uint8), heads)
    members = np.arange(m, dtype=np.int64)
    linked = (heads[:, 0] >= 0) & (heads[:, 0] != members)
    codes = [heads[linked, 0] * m + members[linked]]
    if within > 2:
        codes.append(_pairs_within_buckets(heads, linked[:, None], rank, within, m))
    return np.unique(np.concatenate(codes))


def _pairs_within_buckets(heads: np.ndarray, linked: np.ndarray, rank: np.ndarray, within: int, n: int) -> np.ndarray:
    """Codes (a * n + b, ``rank[a] < rank[b]``) of every pair of non-head members of buckets of at
    most ``within`` members (their pairs with the head are already linked)."""
    import polars as pl

    member, band = np.nonzero(linked)
    frame = pl.DataFrame({"bucket": band.astype(np.int64) * n + heads[member, band], "m": member})
    frame = frame.with_columns(pl.len().over("bucket").alias("size")).filter(
        (pl.col("size") >= 2) & (pl.col("size") < within)  # members besides the head
    )
    if frame.is_empty():
        return np.zeros(0, dtype=np.int64)
    frame = frame.with_columns(pl.Series("r", rank[frame["m"].to_numpy()]))
    pairs = frame.join(frame, on="bucket", suffix="_b").filter(pl.col("r") < pl.col("r_b"))
    return (pairs["m"].to_numpy() * n + pairs["m_b"].to_numpy()).astype(np.int64)


def estimated_jaccard(sigs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Share of equal signature positions of each pair: the MinHash Jaccard estimate."""
    if len(pairs) == 0:
        return np.zeros(0)
    return (sigs[pairs[:, 0]] == sigs[pairs[:, 1]]).mean(axis=1)


def exact_jaccard(texts: pa.Array | Sequence[str], pairs: np.ndarray, ngram: int, unit: Unit = "word") -> np.ndarray:
    """Exact Jaccard of the shingle-hash sets of each pair (compiled; for candidate pairs)."""
    if len(pairs) == 0:
        return np.zeros(0)
    _, data, offsets = _arrow_bytes(texts)
    out = np.empty(len(pairs))
    pairs = np.ascontiguousarray(pairs, dtype=np.int64)
    chars = unit == "char"
    _on_cores(
        lambda first, last: _kernels.pair_jaccard(data, offsets, ngram, chars, pairs, first, last, out), len(pairs), 256
    )
    return out
