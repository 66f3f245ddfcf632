"""Clustering primitives shared by splits, the split audit and dedup: connected components over
pairs of linked rows, and near-duplicate clusters from MinHash LSH.

``near_duplicate_pairs_in_batches`` runs on the vectorised, datasketch-compatible MinHash of
``dataforge.text.minhash`` (the same one ``dedup.minhash`` uses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from dataforge.engine.table import Mapper


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Component label (0..k-1) of each of ``n`` nodes linked by ``pairs`` (an (m, 2) int array);
    labels are numbered in order of each component's smallest node, so they do not depend on
    the order of the pairs.

    Vectorised union-find (hook every root onto the smallest root it is linked to, then jump
    pointers until every node points at its root; repeat until no link joins two roots): the
    same components as scipy's ``connected_components`` (tested), without its import."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    parent = np.arange(n, dtype=np.int64)
    u, v = pairs[:, 0], pairs[:, 1]
    while True:
        ru, rv = parent[u], parent[v]
        split = ru != rv
        if not split.any():
            break
        ru, rv = ru[split], rv[split]
        low = np.minimum(ru, rv)
        np.minimum.at(parent, np.maximum(ru, rv), low)  # the larger root hangs under the smaller
        while True:  # pointer jumping: every node to its root (roots are their component's minimum)
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        u, v = u[split], v[split]
    roots = parent == np.arange(n)
    label_of_root = np.cumsum(roots) - 1  # roots in increasing order = components by smallest node
    return label_of_root[parent]


def stars(n: int, pairs: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Clusters without chaining: a label (0..k-1) for each of ``n`` nodes such that every
    cluster is one representative and rows linked to it *directly* by ``pairs``.

    The greedy rule, in ``rank`` order (smaller first, all distinct): a row not yet linked to a
    representative becomes one, and takes every row linked to it. So a row joins a cluster only
    when its own pair with the representative is in ``pairs`` (for dedup: verified Jaccard at the
    threshold); the rest of a chain a–b–c (a–c not a pair) starts a cluster of its own. A row
    linked to several representatives joins the best-ranked one.

    Computed in rounds, vectorised: the representatives are the greedy maximal independent set by
    rank (a row whose rank beats every undecided neighbour's is one; its neighbours are covered),
    which is the same set the sequential rule picks; then each covered row takes its best-ranked
    neighbouring representative. Labels are numbered by each cluster's smallest node."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rank = np.asarray(rank, dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    u, v = pairs[:, 0], pairs[:, 1]
    UNDECIDED, REP, COVERED = 0, 1, 2
    state = np.zeros(n, dtype=np.int8)
    lu, lv = u, v
    big = np.iinfo(np.int64).max
    while len(lu):
        best_neighbour = np.full(n, big, dtype=np.int64)
        np.minimum.at(best_neighbour, lu, rank[lv])
        np.minimum.at(best_neighbour, lv, rank[lu])
        new_rep = (state == UNDECIDED) & (rank < best_neighbour)
        state[new_rep] = REP
        covered = np.zeros(n, dtype=bool)
        covered[lv[new_rep[lu]]] = True
        covered[lu[new_rep[lv]]] = True
        state[covered & (state == UNDECIDED)] = COVERED
        live = (state[lu] == UNDECIDED) & (state[lv] == UNDECIDED)
        lu, lv = lu[live], lv[live]
    state[state == UNDECIDED] = REP  # rows left without an undecided neighbour
    rep = np.arange(n, dtype=np.int64)
    # each covered row → its best-ranked neighbouring representative
    a = np.concatenate([u, v])
    b = np.concatenate([v, u])
    claim = (state[a] == COVERED) & (state[b] == REP)
    a, b = a[claim], b[claim]
    order = np.lexsort((rank[b], a))
    a, b = a[order], b[order]
    first = np.concatenate(([True], a[1:] != a[:-1])) if len(a) else np.zeros(0, dtype=bool)
    rep[a[first]] = b[first]
    return components(n, np.column_stack([np.arange(n), rep]))


def lsh_keys(
    texts: pa.Array | Sequence[str], threshold: float = 0.8, num_perm: int = 128, ngram: int = 3, seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """What ``near_duplicate_pairs_in_batches`` keeps of a batch of texts: their MinHash LSH band
    keys at ``threshold`` (datasketch-compatible signatures) and whether each has a word. Depends
    on the batch alone, so an executor may compute it on a worker (``Table.map_batches``)."""
    from dataforge.text.minhash import band_keys, has_words, lsh_params, signatures

    bands, rows = lsh_params(threshold, num_perm)
    sigs = signatures(texts, num_perm, seed, ngram)
    return band_keys(sigs, bands, rows), has_words(sigs)


def near_duplicate_pairs_in_batches(
    keyed: Iterable[tuple[np.ndarray, np.ndarray]],
    texts_of: Callable[[np.ndarray], pa.Array | Sequence[str]],
    n: int,
    threshold: float = 0.8,
    ngram: int = 3,
    verify: bool = True,
    wanted: Callable[[np.ndarray], np.ndarray] | None = None,
    mapper: Mapper | None = None,
    folder: Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) of ``n`` texts whose word-shingle sets are near-duplicates: MinHash LSH
    candidates at ``threshold`` (``keyed``: each batch's ``lsh_keys``, in order), kept only if
    their exact Jaccard reaches it when ``verify``; pairs link each bucket to its smallest index.
    Only each text's band keys are kept (``lsh_buckets.BandKeys``: beyond ``KEY_ROWS`` texts,
    filed by bucket under ``folder``, each bucket's pairs a job); ``texts_of(index)`` gives the
    texts of the candidate rows to verify (sorted positions). ``wanted(pairs)``: a mask of the
    candidate pairs worth verifying (the rest are left out before any text is read); ``mapper``
    and ``folder``: where the jobs run and stage their files (``verified_jaccard``). Returns the
    pairs and their exact Jaccard (NaN without ``verify``)."""
    from dataforge.lsh_buckets import BandKeys

    if n == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    collected: BandKeys | None = None
    with ExitStack() as held:
        at = 0
        for batch_keys, batch_live in keyed:
            if collected is None:
                collected = held.enter_context(BandKeys(n, batch_keys.shape[1], folder))
            if at + len(batch_keys) > n:
                raise ValueError(f"near_duplicate_pairs_in_batches: the batches hold more than {n:,} texts")
            collected.add(np.arange(at, at + len(batch_keys)), batch_keys, batch_live)
            at += len(batch_keys)
        if at != n or collected is None:
            raise ValueError(f"near_duplicate_pairs_in_batches: the batches hold {at:,} texts, not {n:,}")
        pairs = collected.pairs(mapper=mapper)
    if wanted is not None and len(pairs):
        pairs = pairs[wanted(pairs)]
    if verify and len(pairs):
        scores = verified_jaccard(pairs, texts_of, ngram, mapper=mapper, folder=folder)
        pairs, scores = pairs[scores >= threshold], scores[scores >= threshold]
    else:
        scores = np.full(len(pairs), np.nan)
    return np.sort(pairs, axis=1), scores


VERIFY_ROWS = 50_000  # rows whose texts are read at once to verify pairs


def verified_jaccard(
    pairs: np.ndarray,
    texts_of: Callable[[np.ndarray], pa.Array | Sequence[str]],
    ngram: int,
    unit: str = "word",
    block: int | None = None,
    mapper: Mapper | None = None,
    folder: Path | None = None,
) -> np.ndarray:
    """Exact shingle Jaccard of each pair (row indices). ``texts_of(index)`` gives the texts of
    the rows at ``index`` (sorted positions); it is called on the rows the pairs name, in order,
    ``block`` (default ``VERIFY_ROWS``) rows at a time, so each row is read once (a
    ``Table.take`` of sorted rows reads each row group once in all).

    When the rows are more than one block, the work divides in two rounds of jobs: one per block
    of rows stages their texts to an uncompressed Arrow IPC file in a temporary folder under
    ``folder`` (default: the system's; folders made for it are removed after); then one per
    block compares the pairs whose first row is in it, with that block's texts and the texts of
    their other rows, picked from the memory-mapped files of their blocks (so only those pages
    are resident). ``mapper``
    (``Context.mapper``) runs the jobs where the executor has workers (Ray tasks; ``folder``
    must then be on storage they reach, and ``texts_of`` picklable); without one, here in order.
    What a job holds is bounded by ``block`` and the pairs of one block, whatever the number of
    rows; every text is read about twice. The scores do not depend on ``block`` or the mapper."""
    import functools

    from dataforge.staging import staging
    from dataforge.text.minhash import exact_jaccard

    if not len(pairs):
        return np.zeros(0)
    block = block or VERIFY_ROWS
    needed = np.unique(pairs)
    position = np.searchsorted(needed, pairs)
    if len(needed) <= block:
        return exact_jaccard(texts_of(needed), position, ngram, unit)  # type: ignore[arg-type]
    run: Mapper = mapper or (lambda fn, jobs: map(fn, jobs))
    blocks = -(-len(needed) // block)
    lo = position.min(axis=1) // block
    order = np.argsort(lo, kind="stable")
    bounds = np.searchsorted(lo[order], np.arange(blocks + 1))
    out = np.zeros(len(pairs))
    with staging(folder, "dataforge-verify-") as where:
        stage = functools.partial(_stage_texts, texts_of, where)
        paths = list(run(stage, [(b, needed[b * block : (b + 1) * block]) for b in range(blocks)]))
        mine = [order[bounds[i] : bounds[i + 1]] for i in range(blocks)]
        jobs = [(i, position[mine[i]]) for i in range(blocks) if len(mine[i])]
        compare = functools.partial(_compare_block, paths, block, ngram, unit)
        for (i, _), scores in zip(jobs, run(compare, jobs), strict=True):
            out[mine[i]] = scores
    return out


def _stage_texts(
    texts_of: Callable[[np.ndarray], pa.Array | Sequence[str]], folder: str, job: tuple[int, np.ndarray]
) -> str:
    """``verified_jaccard``'s first round, one block: the texts of rows ``index`` written to
    ``folder`` as an Arrow IPC file of one record batch; returns its path."""
    import os

    import pyarrow as pa

    b, index = job
    texts = texts_of(index)
    texts = texts if isinstance(texts, pa.Array) else pa.array(list(texts), type=pa.large_string())
    batch = pa.record_batch([texts.cast(pa.large_string())], names=["t"])
    path = os.path.join(folder, f"{b:05d}.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return path


def _compare_block(paths: list[str], block: int, ngram: int, unit: str, job: tuple[int, np.ndarray]) -> np.ndarray:
    """``verified_jaccard``'s second round, one block ``i``: the exact Jaccard of its pairs
    (``ends``: positions of both rows among the rows staged, the first in block ``i``)."""
    from contextlib import ExitStack

    import pyarrow as pa

    from dataforge.text.minhash import exact_jaccard

    i, ends = job
    inside = ends // block == i
    partners = np.unique(ends[~inside])
    owner = partners // block
    with ExitStack() as maps:

        def staged(j: int) -> pa.Array:
            return pa.ipc.open_file(maps.enter_context(pa.memory_map(paths[j]))).get_batch(0).column(0)

        parts = [staged(i)] + [staged(int(j)).take(partners[owner == j] - j * block) for j in np.unique(owner)]
        texts = pa.concat_arrays(parts)  # a copy: the mapped pages are let go with the maps
    width = len(parts[0])
    local = np.where(inside, ends - i * block, width + np.searchsorted(partners, ends))
    return exact_jaccard(texts, local, ngram, unit)  # type: ignore[arg-type]
