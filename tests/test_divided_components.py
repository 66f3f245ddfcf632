"""Connected components in the executor's jobs (``divided_components``): union-find in one job,
or root hooking in rounds over edge shards, both against ``cluster.components`` on the same graph."""

from __future__ import annotations

import numpy as np
import pytest

import dataforge.divided_components as dc
from dataforge.cluster import components
from dataforge.staging import STAGED


def _in_order(calls: list[tuple[str, int]]):
    """A mapper that runs the jobs here, in order, and records (function, jobs) per call."""

    def mapper(fn, jobs):
        calls.append((getattr(fn, "func", fn).__name__, len(jobs)))
        return map(fn, jobs)

    return mapper


def _graphs():
    rng = np.random.default_rng(7)
    n = 2_000
    yield "random sparse", n, rng.integers(0, n, size=(1_500, 2))
    yield "random dense", n, rng.integers(0, n, size=(6_000, 2))
    perm = rng.permutation(n)  # one long path through the nodes in a random order: many hops
    yield "shuffled path", n, np.column_stack([perm[:-1], perm[1:]])
    yield "path, largest first", n, np.column_stack([np.arange(n - 1, 0, -1), np.arange(n - 2, -1, -1)])
    star = np.column_stack([np.full(300, n - 1), rng.integers(0, n, 300)])
    yield "star, self-loops and repeats", n, np.concatenate([star, star, np.column_stack([np.arange(50)] * 2)])
    yield "no edges", n, np.zeros((0, 2), dtype=np.int64)


@pytest.mark.parametrize("name,n,pairs", list(_graphs()), ids=[g[0] for g in _graphs()])
def test_propagation_over_shards_gives_the_union_find_labels(name, n, pairs, monkeypatch, tmp_path):
    expected = components(n, pairs)
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(dc, "EDGE_ROWS", 97)  # edges in shards of 97: propagation, a job per shard
    got = dc.components_of(n, pairs, _in_order(calls), tmp_path / "scratch")
    assert np.array_equal(got, expected)
    if len(pairs) > 97:
        assert {fn for fn, _ in calls} == {"_hooks"} and calls[0][1] == -(-len(pairs) // 97)
        assert len(calls) >= 2  # the last round lowers nothing: the check that it converged
    assert not (tmp_path / "scratch").exists()  # the staged edges and labels are gone


@pytest.mark.parametrize("name,n,pairs", list(_graphs())[:3], ids=[g[0] for g in _graphs()][:3])
def test_edges_that_fit_one_job_are_joined_there_by_union_find(name, n, pairs, tmp_path):
    calls: list[tuple[str, int]] = []
    STAGED.clear()
    got = dc.components_of(n, pairs, _in_order(calls), tmp_path / "scratch")
    assert np.array_equal(got, components(n, pairs)) and calls == [("_union_find", 1)]
    assert STAGED[str((tmp_path / "scratch").resolve())] >= 16 * len(pairs)  # the edges went through a file


def test_without_a_mapper_nothing_is_staged(tmp_path):
    pairs = np.array([[0, 1], [3, 2]])
    assert dc.components_of(4, pairs, None, tmp_path / "s").tolist() == [0, 0, 1, 1]
    assert not (tmp_path / "s").exists()


def test_the_number_of_rounds_grows_slowly_with_the_path_length(monkeypatch, tmp_path):
    """Pointer jumping after each round: a shuffled path of 2,000 nodes converges in far fewer
    rounds than its length (the same hooking as the in-process union-find)."""
    n = 2_000
    perm = np.random.default_rng(1).permutation(n)
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(dc, "EDGE_ROWS", 500)
    dc.components_of(n, np.column_stack([perm[:-1], perm[1:]]), _in_order(calls), tmp_path)
    assert 2 <= len(calls) <= 20, calls
