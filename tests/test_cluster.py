"""Connected components: the vectorised union-find gives scipy's components, numbered by each
component's smallest node. Stars: clusters without chaining, equal to the greedy rule."""

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


def _greedy_stars(n: int, pairs: np.ndarray, rank: np.ndarray) -> list[int]:
    """The rule `stars` implements, one row at a time: in rank order, a row not yet taken becomes
    a representative and takes its direct neighbours that are not taken."""
    adj: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in pairs.tolist():
        if a != b:
            adj[a].add(b)
            adj[b].add(a)
    rep = [-1] * n
    for i in sorted(range(n), key=lambda i: rank[i]):
        if rep[i] == -1:
            rep[i] = i
            for j in adj[i]:
                if rep[j] == -1:
                    rep[j] = i
    return rep


@pytest.mark.parametrize("seed", range(6))
def test_stars_equal_the_greedy_rule_one_row_at_a_time(seed):
    from dataforge.cluster import stars

    rng = np.random.default_rng(seed)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        pairs = rng.integers(0, n, (int(rng.integers(0, 80)), 2))
        rank = rng.permutation(n)
        got = stars(n, pairs, rank)
        want = _greedy_stars(n, pairs, rank)
        assert [min(np.nonzero(got == got[i])[0]) for i in range(n)] == [
            min(j for j in range(n) if want[j] == want[i]) for i in range(n)
        ]
        reps = {i for i in range(n) if want[i] == i}
        linked = {(int(a), int(b)) for a, b in pairs} | {(int(b), int(a)) for a, b in pairs}
        assert all(want[i] == i or (want[i], i) in linked for i in range(n))  # every member is a direct pair
        assert not any((a, b) in linked for a in reps for b in reps if a != b)  # no two representatives paired


def test_stars_do_not_chain():
    """a–b and b–c paired, a–c not: b joins a, c starts its own cluster; a path of 10,000 rows
    makes 5,000 pairs, not one cluster."""
    from dataforge.cluster import stars

    assert stars(3, np.array([[0, 1], [1, 2]]), np.array([0, 1, 2])).tolist() == [0, 0, 1]
    assert stars(3, np.array([[0, 1], [1, 2]]), np.array([1, 0, 2])).tolist() == [0, 0, 0]  # b first: takes both
    chain = np.column_stack([np.arange(9999), np.arange(1, 10000)])
    labels = stars(10000, chain, np.arange(10000))
    assert labels.max() + 1 == 5000 and (np.bincount(labels) == 2).all()


def test_verified_jaccard_in_blocks_equals_one_read_and_reads_each_row_once():
    """Verification of more rows than a block stages the texts block by block and compares block
    pairs: the same scores as comparing all texts at once, each row's text asked for once, in
    sorted runs of at most a block (so a Table reads each row group once)."""
    import polars as pl

    from dataforge.cluster import verified_jaccard
    from dataforge.text.minhash import exact_jaccard
    from tests.conftest import GSM8K

    answers = pl.read_ndjson(GSM8K / "train.jsonl")["answer"].head(400)
    # the answers, then near copies of them: pairs within blocks, across blocks and repeated rows
    texts = pl.concat([answers, answers.str.replace(r"\n####", " so.\n####")]).to_arrow()
    rng = np.random.default_rng(3)
    pairs = np.concatenate([np.column_stack([np.arange(400), np.arange(400, 800)]), rng.integers(0, 800, (300, 2))])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    asked: list[np.ndarray] = []

    def texts_of(index: np.ndarray):
        asked.append(index)
        return texts.take(index)

    whole = exact_jaccard(texts, pairs, 5)
    blocked = verified_jaccard(pairs, texts_of, 5, block=64)
    assert np.array_equal(blocked, whole)
    assert (whole[:400] > 0.5).all() and (whole[:400] < 1).all() and (whole[400:] < 0.5).mean() > 0.9  # signal
    read = np.concatenate(asked)
    assert np.array_equal(read, np.unique(pairs)) and max(len(a) for a in asked) == 64 and len(asked) > 10
    assert np.array_equal(verified_jaccard(pairs, texts_of, 5), whole)  # one block: one read
    assert np.array_equal(asked[-1], np.unique(pairs))


def test_verified_jaccard_through_a_mapper_runs_pickled_jobs_and_leaves_no_staged_file(tmp_path):
    """With a ``mapper`` (what the Ray executor gives), each round's jobs run through it as
    pickled functions (as a worker gets them), staged under ``folder``: the same scores as here
    in one block, two rounds of one job per block, and nothing left in the folder."""
    import cloudpickle
    import polars as pl

    from dataforge.cluster import verified_jaccard
    from dataforge.text.minhash import exact_jaccard
    from tests.conftest import GSM8K

    questions = pl.read_ndjson(GSM8K / "train.jsonl")["question"].head(300)
    texts = pl.concat([questions, questions + " Answer now."]).to_arrow()
    pairs = np.column_stack([np.arange(300), np.arange(300, 600)])
    rounds: list[tuple[str, int]] = []

    def mapper(fn, jobs):
        rounds.append((fn.func.__name__, len(jobs)))
        shipped = cloudpickle.loads(cloudpickle.dumps(fn))
        return (shipped(cloudpickle.loads(cloudpickle.dumps(job))) for job in jobs)

    scores = verified_jaccard(pairs, texts.take, 3, block=50, mapper=mapper, folder=tmp_path / "scratch")
    assert np.array_equal(scores, exact_jaccard(texts, pairs, 3))
    assert rounds == [("_stage_texts", 12), ("_compare_block", 6)]  # 600 rows in 12 blocks; pairs start in 6
    assert (scores > 0.6).all() and (scores < 1).all()
    assert not (tmp_path / "scratch").exists()  # made for the staging, removed with it


@pytest.mark.parametrize("within", [0, 4])
def test_band_keys_filed_by_bucket_give_the_pairs_held_keys_give(tmp_path, monkeypatch, within):
    """More rows than ``KEY_ROWS``: the band keys, given in batches out of row order, are filed by
    bucket under the folder, and each bucket's pairs are found by a pickled job through the
    mapper (as a Ray task gets it): the same pairs, in the same order, as the keys held whole
    (``candidate_pairs_of_keys``), with a custom rank and pairs within small buckets; the folder
    is gone after."""
    import cloudpickle
    import polars as pl

    import dataforge.lsh_buckets
    from dataforge.cluster import lsh_keys
    from dataforge.lsh_buckets import BandKeys
    from dataforge.text.minhash import candidate_pairs_of_keys
    from tests.conftest import GSM8K

    questions = pl.read_ndjson(GSM8K / "train.jsonl")["question"].head(400)
    # each question, a near copy (one word changed), a second one, and empty texts (no words)
    texts = pl.concat([questions, questions.str.replace(r"^(\S+)", "Now"), questions + " Why?", pl.Series([""] * 20)])
    keys, live = lsh_keys(texts.to_arrow(), 0.7, 128, 3)
    n = len(texts)
    rank = np.random.default_rng(5).permutation(n)
    held = candidate_pairs_of_keys(keys, live, rank, within)
    assert len(held) > 400 and (held[:, 0] != held[:, 1]).all()  # the copies meet their questions
    jobs: list[int] = []

    def mapper(fn, paths):
        jobs.append(len(paths))
        shipped = cloudpickle.loads(cloudpickle.dumps(fn))
        return (shipped(p) for p in paths)

    monkeypatch.setattr(dataforge.lsh_buckets, "KEY_ROWS", 100)
    order = np.random.default_rng(6).permutation(n)
    with BandKeys(n, keys.shape[1], tmp_path / "scratch") as filed:
        assert filed.keys is None and filed.buckets == 13  # 1,220 rows in files of about 100
        for batch in np.array_split(order, 7):
            filed.add(batch, keys[batch], live[batch])
        assert len(list((tmp_path / "scratch").rglob("*.keys"))) == 13 * keys.shape[1]  # a file per band
        pairs = filed.pairs(rank, within, mapper)
    assert np.array_equal(pairs, held) and jobs == [13]
    assert not (tmp_path / "scratch").exists()
    with BandKeys(n, keys.shape[1]) as filed:  # no mapper, no folder: here, in the system's temp
        filed.add(np.arange(n), keys, live)
        assert np.array_equal(filed.pairs(rank, within), held)
