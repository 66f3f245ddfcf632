"""Connected components: the vectorised union-find gives scipy's components, numbered by each
component's smallest node."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dataforge.cluster import components


def _scipy_labels(n: int, pairs: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    labels = connected_components(graph, directed=False)[1]
    smallest = np.full(labels.max() + 1, n)
    np.minimum.at(smallest, labels, np.arange(n))
    return np.argsort(np.argsort(smallest))[labels]


@pytest.mark.parametrize("n, m", [(1, 0), (10, 0), (10, 5), (1000, 800), (5000, 20000), (20000, 4000)])
def test_components_equal_scipy(n, m):
    pairs = np.random.default_rng(n + m).integers(0, n, (m, 2))
    assert np.array_equal(components(n, pairs), _scipy_labels(n, pairs))


def test_a_long_chain_in_any_order_is_one_component():
    chain = np.column_stack([np.arange(9999), np.arange(1, 10000)])
    for pairs in (chain, chain[::-1], np.random.default_rng(1).permutation(chain)):
        assert (components(10000, pairs) == 0).all()


def test_labels_follow_the_smallest_node():
    assert components(6, np.array([[5, 4], [3, 1]])).tolist() == [0, 1, 2, 1, 3, 3]
    assert components(0, np.zeros((0, 2))).tolist() == []
