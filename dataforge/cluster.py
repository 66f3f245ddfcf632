"""Clustering primitives shared by splits, the split audit and dedup: connected components over
pairs of linked rows, and near-duplicate clusters from MinHash LSH.

``near_duplicate_pairs`` runs on the vectorised, datasketch-compatible MinHash of
``dataforge.text.minhash`` (the same one ``dedup.minhash`` uses).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


def near_duplicate_pairs(
    texts: Sequence[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 3,
    seed: int = 1,
    verify: bool = True,
) -> np.ndarray:
    """Pairs (i, j) of texts whose word-shingle sets are near-duplicates: MinHash LSH candidates
    (``dataforge.text.minhash``, datasketch-compatible) at ``threshold``, kept only if their exact
    Jaccard reaches it when ``verify``. Pairs link each bucket to its smallest index."""
    from dataforge.text.minhash import candidate_pairs, exact_jaccard, lsh_params, signatures

    texts = list(texts)
    if not texts:
        return np.zeros((0, 2), dtype=np.int64)
    sigs = signatures(texts, num_perm, seed, ngram)
    pairs = candidate_pairs(sigs, *lsh_params(threshold, num_perm))
    if verify and len(pairs):
        pairs = pairs[exact_jaccard(texts, pairs, ngram) >= threshold]
    return np.sort(pairs, axis=1)
