"""Every LLM request cached by (model, input, sampling params, seed), in SQLite.

The cache lives in the build directory (``<out>/cache/llm.sqlite``). A response is committed as
soon as it comes back, so a build killed halfway re-sends only the requests that had not. Failed
requests are not cached: a rerun tries them again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCK_WAIT_S = 30.0  # how long an open or a write waits for another process's lock on the cache


def _when_unlocked(statement: Callable[[], object]) -> None:
    """Run ``statement``, again while another process holds the lock (up to ``LOCK_WAIT_S``).

    Several processes open one cache at once on Ray (a model pool per worker). Switching a new
    file to WAL takes a lock that SQLite does not wait for (its busy timeout does not apply), so
    the loser of that race gets "database is locked" at once; it is retried here."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def request_key(model: dict[str, Any], payload: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of (model identity, request payload)."""
    blob = json.dumps({"model": model, "request": payload}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class RequestCache:
    """A key → JSON response store, safe to use from several threads."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=LOCK_WAIT_S, check_same_thread=False, isolation_level=None)
        _when_unlocked(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
        self._db.execute("PRAGMA synchronous=NORMAL")
        _when_unlocked(
            lambda: self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, response TEXT, created REAL)"
            )
        )

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for key, resp in self._db.execute(f"SELECT key, response FROM responses WHERE key IN ({marks})", chunk):
                    found[key] = json.loads(resp)
        return found

    def put_many(self, model: str, items: list[tuple[str, dict[str, Any]]]) -> None:
        now = time.time()
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                [(k, model, json.dumps(v, ensure_ascii=False), now) for k, v in items],
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
