"""Vectorised MinHash signatures, compatible with datasketch 2.0's default ``affine32`` scheme.

One compiled pass per document reads its UTF-8 bytes, splits words, hashes each word (FNV-1a,
32 bit), combines ``ngram`` consecutive word hashes into a shingle hash, and keeps, for each of
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
import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
from numba import njit, prange

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


# -- the compiled kernel --------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _fmix32(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


@njit(cache=True, inline="always")
def _update(sig, a, b, shingle):
    hv = np.uint64(_fmix32(np.uint64(shingle)))
    for k in range(a.shape[0]):
        v = (a[k] * hv + b[k]) & np.uint64(0xFFFFFFFF)
        if v < sig[k]:
            sig[k] = v


@njit(cache=True, inline="always")
def _is_word_byte(c):
    return (48 <= c <= 57) or (97 <= c <= 122) or (65 <= c <= 90) or c == 95 or c >= 128


@njit(cache=True)
def _tokens(data, start, end, chars, out):
    """Write the token hashes (FNV-1a of each word, or of each character with whitespace runs
    folded into one space) of one document's bytes into ``out``; return how many."""
    m = 0
    i = start
    prime, mask = np.uint64(0x01000193), np.uint64(0xFFFFFFFF)
    if chars:
        pending_space = False
        while i < end:
            c = data[i]
            if c == 32 or 9 <= c <= 13:
                pending_space = m > 0
                i += 1
                continue
            if pending_space:
                out[m] = ((np.uint64(0x811C9DC5) ^ np.uint64(32)) * prime) & mask
                m += 1
                pending_space = False
            n = 1 if c < 0xC0 else (2 if c < 0xE0 else (3 if c < 0xF0 else 4))
            h = np.uint64(0x811C9DC5)
            for k in range(n):
                if i + k < end:
                    b = data[i + k]
                    if 65 <= b <= 90:
                        b += 32
                    h = ((h ^ np.uint64(b)) * prime) & mask
            out[m] = h
            m += 1
            i += n
        return m
    while i < end:
        if not _is_word_byte(data[i]):
            i += 1
            continue
        h = np.uint64(0x811C9DC5)
        while i < end and _is_word_byte(data[i]):
            c = data[i]
            if 65 <= c <= 90:
                c += 32
            h = ((h ^ np.uint64(c)) * prime) & mask
            i += 1
        out[m] = h
        m += 1
    return m


@njit(cache=True)
def _shingles_of(data, start, end, ngram, chars, out):
    """Write the shingle hashes (``ngram`` consecutive tokens combined) into ``out``; return how many."""
    toks = np.empty(end - start + 1, dtype=np.uint64)
    t = _tokens(data, start, end, chars, toks)
    if t == 0:
        return 0
    width = min(ngram, t)
    count = t - width + 1
    for s in range(count):
        h = np.uint64(0)
        for j in range(width):
            h = ((h * np.uint64(0x9E3779B1)) & np.uint64(0xFFFFFFFF)) ^ toks[s + j]
        out[s] = h
    return count


@njit(cache=True, parallel=True)
def _signatures(data, offsets, ngram, chars, a, b, out):
    for d in prange(offsets.shape[0] - 1):
        buf = np.empty(offsets[d + 1] - offsets[d] + 1, dtype=np.uint64)
        m = _shingles_of(data, offsets[d], offsets[d + 1], ngram, chars, buf)
        sig = np.full(a.shape[0], np.uint64(0xFFFFFFFF), dtype=np.uint64)
        for s in range(m):
            _update(sig, a, b, buf[s])
        for k in range(a.shape[0]):
            out[d, k] = sig[k]


@njit(cache=True, parallel=True)
def _pair_jaccard(data, offsets, ngram, chars, pairs, out):
    for p in prange(pairs.shape[0]):
        i, j = pairs[p, 0], pairs[p, 1]
        a = np.empty(offsets[i + 1] - offsets[i] + 1, dtype=np.uint64)
        b = np.empty(offsets[j + 1] - offsets[j] + 1, dtype=np.uint64)
        na = _shingles_of(data, offsets[i], offsets[i + 1], ngram, chars, a)
        nb = _shingles_of(data, offsets[j], offsets[j + 1], ngram, chars, b)
        a = np.unique(a[:na])
        b = np.unique(b[:nb])
        x = y = inter = 0
        while x < a.shape[0] and y < b.shape[0]:
            if a[x] == b[y]:
                inter += 1
                x += 1
                y += 1
            elif a[x] < b[y]:
                x += 1
            else:
                y += 1
        union = a.shape[0] + b.shape[0] - inter
        out[p] = inter / union if union else 1.0


@njit(cache=True)
def _all_shingles(data, offsets, ngram, chars, hashes, docs):
    m = 0
    for d in range(offsets.shape[0] - 1):
        k = _shingles_of(data, offsets[d], offsets[d + 1], ngram, chars, hashes[m:])
        docs[m : m + k] = d
        m += k
    return m


def all_shingles(texts: pa.Array | Sequence[str], ngram: int, unit: Unit = "word") -> tuple[np.ndarray, np.ndarray]:
    """Every shingle hash of every text, with the index of its text: (hashes uint64, docs int64).
    Repeats within a text are kept; a text shorter than ``ngram`` gives one shingle."""
    n, data, offsets = _arrow_bytes(texts)
    hashes = np.empty(len(data) + n, dtype=np.uint64)  # at most one shingle per byte, plus one per text
    docs = np.empty(len(data) + n, dtype=np.int64)
    m = _all_shingles(data, offsets, ngram, unit == "char", hashes, docs)
    return hashes[:m], docs[:m]


def _arrow_bytes(texts: pa.Array | pa.ChunkedArray | Sequence[str]) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, UTF-8 bytes, int64 offsets) of a string array, without copying the text."""
    arr = texts if isinstance(texts, pa.Array | pa.ChunkedArray) else pa.array(list(texts), type=pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
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
    _signatures(data, offsets, ngram, unit == "char", a.astype(np.uint64), b.astype(np.uint64), out)
    return out


# -- LSH ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted areas under the false-positive curve (similarity
    below ``threshold``) and the false-negative curve (above it): datasketch's ``MinHashLSH``
    choice. The areas are integrated with composite Simpson on 4,001 points for every (b, r) at
    once, instead of datasketch's scipy ``quad`` loop and its half-second import; the test suite
    checks the choice equals datasketch's."""
    combos = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=float)
    b, r = combos[:, :1], combos[:, 1:]

    def area(lo: float, hi: float, false_negative: bool) -> np.ndarray:
        x = np.linspace(lo, hi, 4001)[None, :]
        p = 1 - (1 - x**r) ** b
        y = 1 - p if false_negative else p
        w = np.ones(x.shape[1])
        w[1:-1:2], w[2:-1:2] = 4, 2
        return (y * w).sum(axis=1) * (hi - lo) / (3 * (x.shape[1] - 1))

    err = area(0.0, threshold, False) * fp_weight + area(threshold, 1.0, True) * fn_weight
    best = int(np.argmin(err))  # first minimum: datasketch keeps the first (b, r) it finds
    return int(combos[best, 0]), int(combos[best, 1])


@njit(cache=True)
def _band_keys(sigs, bands, rows, mult, out):
    for d in range(sigs.shape[0]):
        for band in range(bands):
            h = np.uint64(band)
            for j in range(rows):
                h += np.uint64(sigs[d, band * rows + j]) * mult[j]
            out[d, band] = h ^ np.uint64(band)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 keys: each band's rows of the signature folded into one number."""
    gen = np.random.RandomState(0x5EED)
    mult = (gen.randint(0, 1 << 62, rows, dtype=np.int64).astype(np.uint64) << np.uint64(1)) | np.uint64(1)
    keys = np.empty((sigs.shape[0], bands), dtype=np.uint64)
    _band_keys(np.ascontiguousarray(sigs), bands, rows, mult, keys)
    return keys


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int, rank: np.ndarray | None = None) -> np.ndarray:
    """Pairs (head, member) of documents sharing a band: each bucket links its members to its
    head, the member of smallest ``rank`` (default: index), so the pairs do not depend on the
    order of the rows when ``rank`` is a canonical order. Empty signatures never match."""
    n = sigs.shape[0]
    rank = np.arange(n) if rank is None else np.asarray(rank)
    live = np.nonzero(~(sigs == MAX_HASH).all(axis=1))[0]
    if len(live) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    keys = band_keys(sigs[live], bands, rows).ravel()  # one bucket key per (document, band)
    docs = np.repeat(live, bands)
    order = np.argsort(keys)
    ks, ids = keys[order], docs[order]
    starts = np.nonzero(np.concatenate(([True], ks[1:] != ks[:-1])))[0]
    # each bucket's head: its best-ranked member
    best = np.minimum.reduceat(rank[ids], starts)
    by_rank = np.empty(int(rank.max()) + 1, dtype=np.int64)
    by_rank[rank] = np.arange(n)
    head = np.repeat(by_rank[best], np.diff(np.append(starts, len(ids))))
    member = head != ids
    code = np.unique(head[member].astype(np.int64) * n + ids[member])
    return np.column_stack([code // n, code % n]).astype(np.int64)


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
    _pair_jaccard(data, offsets, ngram, unit == "char", np.ascontiguousarray(pairs, dtype=np.int64), out)
    return out
