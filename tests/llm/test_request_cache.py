"""The request cache opened by several processes at once, as the model pools of Ray's worker
processes open one build's cache: real processes, a real SQLite file."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from dataforge.llm.cache import RequestCache


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
