"""The request cache opened by several processes at once, as the model pools of Ray's worker
processes open one build's cache: real processes, a real SQLite file; and the answer logs of a
build on a cluster of several machines, where workers must not write the file (``LoggedCache``)."""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from pathlib import Path

import pytest

from dataforge.errors import DataforgeError
from dataforge.llm.cache import LOGS, LoggedCache, RequestCache, merge_logs
from dataforge.llm.client import ModelPool
from dataforge.llm.spec import ModelSpec


def _open_and_write(job: tuple[str, float, int]) -> str:
    """Wait for the common start, open the cache, store one answer; the error's text if any."""
    path, start, worker = job
    while time.time() < start:
        pass
    try:
        cache = RequestCache(Path(path))
        cache.put_many("m", [(f"k{worker}", {"worker": worker})])
        cache.close()
    except Exception as exc:  # reported to the test, which names it
        return repr(exc)
    return "ok"


def test_processes_opening_a_new_cache_at_once_all_open_it_and_store_their_answers(tmp_path):
    """Eight processes open the same new cache file at the same instant, twenty times: the one
    that loses the race to switch the new file to WAL is not told "database is locked" (it was,
    in about one trial of six, before the open waited for the lock), and every answer is kept."""
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        for trial in range(20):
            path = tmp_path / f"{trial}" / "llm.sqlite"
            start = time.time() + 0.5
            results = pool.map(_open_and_write, [(str(path), start, w) for w in range(8)])
            assert results == ["ok"] * 8, (trial, results)
            cache = RequestCache(path)
            assert len(cache) == 8 and cache.get_many(["k3"]) == {"k3": {"worker": 3}}
            cache.close()


def _logged_answers(job: tuple[str, str, int]) -> str:
    """A worker process of a cluster build: reads the cache file read-only, logs three answers."""
    path, node, worker = job
    cache = LoggedCache(Path(path), node)
    assert cache.get_many(["before"]) == {"before": {"text": "stored by an earlier build"}}
    cache.put_many("m", [(f"k{worker}-{i}", {"text": f"answer {worker}.{i}"}) for i in range(3)])
    assert cache.get_many([f"k{worker}-1", f"k{worker + 1}-1"]) == {f"k{worker}-1": {"text": f"answer {worker}.1"}}
    cache.close()
    return str(cache.log_path)


def _digest(path: Path) -> str:
    return "".join(hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.parent.glob(path.name + "*")))


def test_cluster_workers_log_their_answers_and_the_driver_alone_writes_the_cache_file(tmp_path):
    """Four processes, as workers of a build on a cluster of several machines: each reads what
    the cache file held and logs its own answers in a file of its own; the SQLite file (and its
    write-ahead log) is not touched by any. The driver's merge stores all twelve answers in it,
    deletes the logs and empties the write-ahead log into the file, so that a read-only reader
    sees every answer; a second merge finds nothing."""
    path = tmp_path / "cache" / "llm.sqlite"
    cache = RequestCache(path)
    cache.put_many("m", [("before", {"text": "stored by an earlier build"})])
    cache.close()
    assert merge_logs(path) == 0  # no log: the file checkpointed only
    untouched = _digest(path)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        logs = pool.map(_logged_answers, [(str(path), f"node{w % 2}", w * 10) for w in range(4)])
    assert len(set(logs)) == 4 and all(Path(log).parent == path.parent / LOGS for log in logs)
    assert _digest(path) == untouched
    assert merge_logs(path) == 12
    assert not list((path.parent / LOGS).iterdir())
    assert not (path.parent / "llm.sqlite-wal").exists() or (path.parent / "llm.sqlite-wal").stat().st_size == 0
    reader = LoggedCache(path, "node0")  # read-only and immutable: the file alone
    assert reader.get_many(["before", "k0-0", "k30-2"]) == {
        "before": {"text": "stored by an earlier build"},
        "k0-0": {"text": "answer 0.0"},
        "k30-2": {"text": "answer 30.2"},
    }
    reader.close()
    assert merge_logs(path) == 0


def test_a_log_cut_midway_keeps_its_whole_answers_and_a_garbled_line_is_named(tmp_path):
    """A worker killed while writing leaves a last line without its newline: that answer is left
    out (its request is sent again), the whole lines before it are stored. A whole line that is
    not an answer stops the merge naming the file and line, and the log is kept."""
    path = tmp_path / "llm.sqlite"
    cache = LoggedCache(path, "n")
    cache.put_many("m", [("a", {"text": "one"}), ("b", {"text": "two"})])
    cache.close()
    with open(cache.log_path, "a", encoding="utf-8") as f:
        f.write('{"key": "c", "model": "m", "resp')
    assert merge_logs(path) == 2
    stored = RequestCache(path)
    assert stored.get_many(["a", "b", "c"]) == {"a": {"text": "one"}, "b": {"text": "two"}}
    stored.close()
    garbled = path.parent / LOGS / "n-1-x.jsonl"
    garbled.write_text('{"key": "d", "model": "m", "response": {"text": "3"}}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataforgeError, match=r"n-1-x\.jsonl:2: not an answer a worker wrote"):
        merge_logs(path)
    assert garbled.exists()


def test_a_pool_reads_the_cache_anew_after_each_merge_and_keeps_its_models(tmp_path):
    """A worker's pool of a cluster build: at a new merge (``at_epoch``) its clients read a
    newly opened cache, which sees what the driver stored since, while the client (and the model
    it loaded) stays the same; at the same merge nothing is reopened."""
    path = tmp_path / "llm.sqlite"
    RequestCache(path).close()
    merge_logs(path)
    pool = ModelPool(path, node="node1")
    pool.at_epoch(1)
    spec = ModelSpec(backend="openai", model="m", base_url="http://127.0.0.1:9")
    client = pool.client(spec)
    first = client.cache
    assert isinstance(first, LoggedCache) and first.get_many(["new"]) == {}
    driver = RequestCache(path)
    driver.put_many("m", [("new", {"text": "stored by the driver"})])
    driver.close()
    merge_logs(path)
    pool.at_epoch(1)
    assert pool.client(spec).cache is first
    pool.at_epoch(2)
    again = pool.client(spec)
    assert again is client and again.cache is not first
    assert again.cache.get_many(["new"]) == {"new": {"text": "stored by the driver"}}
    pool.close()
