"""Clustering primitives shared by splits, the split audit and dedup: connected components over
pairs of linked rows, and near-duplicate clusters from MinHash LSH.

``near_duplicate_pairs`` uses datasketch (``MinHash.bulk`` + ``MinHashLSH``) today; the dedup issue
brings a vectorised, datasketch-compatible MinHash that can replace it behind the same function.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dataforge.text.shingles import shingles


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Component label (0..k-1) of each of ``n`` nodes linked by ``pairs`` (an (m, 2) int array);
    labels are numbered in order of each component's smallest node, so they do not depend on
    the order of the pairs."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[labels]


def near_duplicate_pairs(
    texts: Sequence[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 3,
    seed: int = 1,
    verify: bool = True,
) -> np.ndarray:
    """Pairs (i, j), i < j, of texts whose shingle sets are near-duplicates: LSH candidates at
    ``threshold``, kept only if their exact Jaccard reaches it when ``verify``."""
    from datasketch import MinHash, MinHashLSH

    sets = [shingles(t or "", ngram) for t in texts]
    hashes = MinHash.bulk([[s.encode() for s in sh] for sh in sets], num_perm=num_perm, seed=seed)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, m in enumerate(hashes):
        if sets[i]:
            lsh.insert(i, m)
    found = set()
    for i, m in enumerate(hashes):
        if not sets[i]:
            continue
        for j in lsh.query(m):
            if j > i and (not verify or jaccard(sets[i], sets[j]) >= threshold):
                found.add((i, j))
    return np.array(sorted(found), dtype=np.int64).reshape(-1, 2)


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0
