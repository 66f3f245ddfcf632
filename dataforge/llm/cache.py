"""Every LLM request cached by (model, input, sampling params, seed), in SQLite.

The cache lives in the build directory (``<out>/cache/llm.sqlite``). A response is committed as
soon as it comes back, so a build killed halfway re-sends only the requests that had not. Failed
requests are not cached: a rerun tries them again.

On a Ray cluster of several machines the build folder is a mount every node shares, and there the
cache file is written by the driver alone, while no task runs: SQLite's write-ahead log keeps its
index in one host's shared memory, and file locks over a network filesystem are unreliable, so
two hosts writing one SQLite file can lose answers or corrupt it. A worker process of such a
build uses a ``LoggedCache``: it reads the file read-only, as the driver left it before the
tasks, and appends each answer it gets to a log file of its own beside it (``answers/``); the
driver stores the logs' answers in the file (``merge_logs``) before tasks that may read them,
after each step and when a build starts, so the answers of a killed build are kept too. (One
machine, any executor: every process writes the file itself.)
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dataforge.errors import DataforgeError

LOGS = "answers"  # beside the cache file: the answer logs of worker processes on other nodes
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


def _stored(db: sqlite3.Connection, keys: list[str]) -> dict[str, dict[str, Any]]:
    """The answers ``db`` holds of ``keys``."""
    found: dict[str, dict[str, Any]] = {}
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        marks = ",".join("?" * len(chunk))
        for key, resp in db.execute(f"SELECT key, response FROM responses WHERE key IN ({marks})", chunk):
            found[key] = json.loads(resp)
    return found


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
        with self._lock:
            return _stored(self._db, keys)

    def put_many(self, model: str, items: list[tuple[str, dict[str, Any]]]) -> None:
        now = time.time()
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                [(k, model, json.dumps(v, ensure_ascii=False), now) for k, v in items],
            )

    def checkpoint(self) -> None:
        """Empty the write-ahead log into the file, waiting (up to ``LOCK_WAIT_S``) while
        another process reads or writes it."""
        deadline = time.monotonic() + LOCK_WAIT_S
        with self._lock:
            while self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:  # 1: busy
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError(f"{self.path}: the cache stayed busy, its checkpoint did not finish")
                time.sleep(0.02)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class LoggedCache:
    """The request cache of a worker process of a build on a Ray cluster of several nodes (see
    the module doc). Reads: the answers the cache file held when the driver last merged the logs and
    checkpointed it (``merge_logs``, before it gave this process its tasks; the file is opened
    read-only and immutable, and is not written again until those tasks are done), and this
    process's own. Writes: each answer appended to this process's log, flushed and synced as a
    SQLite commit is. A process keeps one until the driver merges again (``ModelPool.at_epoch``)."""

    def __init__(self, path: Path, node: str):
        self.path = path
        self._lock = threading.Lock()
        self._mine: dict[str, dict[str, Any]] = {}
        self._db = (
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)
            if path.exists()
            else None  # no model answered yet
        )
        self.log_path = path.parent / LOGS / f"{node[:12]}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._log: Any = None  # opened at the first answer

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            found = {k: self._mine[k] for k in keys if k in self._mine}
            if self._db is not None:
                found.update(_stored(self._db, [k for k in keys if k not in found]))
        return found

    def put_many(self, model: str, items: list[tuple[str, dict[str, Any]]]) -> None:
        lines = "".join(
            json.dumps({"key": k, "model": model, "response": v}, ensure_ascii=False) + "\n" for k, v in items
        )
        with self._lock:
            if self._log is None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self._log = open(self.log_path, "a", encoding="utf-8")  # kept open: closed by close()
            self._log.write(lines)
            self._log.flush()
            os.fsync(self._log.fileno())
            self._mine.update(items)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
            if self._log is not None:
                self._log.close()


def merge_logs(path: Path) -> int:
    """Store the answers of the logs beside the cache file ``path`` (``LoggedCache``) in it,
    delete the logs, and checkpoint the file (its write-ahead log emptied into it, so that a
    read-only reader on another node sees every answer); returns the answers merged. A log's
    last line without its newline is an answer whose writer died writing it: left out, its
    request is sent again. Call it only while no task is running that writes a log."""
    logs = sorted((path.parent / LOGS).glob("*.jsonl"))
    if not logs and not path.exists():
        return 0
    cache = RequestCache(path)
    merged = 0
    try:
        for log in logs:
            data = log.read_bytes()
            by_model: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
            for number, line in enumerate(data[: data.rfind(b"\n") + 1].splitlines(), 1):
                try:
                    entry = json.loads(line)
                except ValueError as exc:
                    raise DataforgeError(
                        f"{log}:{number}: not an answer a worker wrote ({exc}); move the file away to build "
                        "without it (its requests are sent again)"
                    ) from None
                by_model[entry["model"]].append((entry["key"], entry["response"]))
            for model, items in by_model.items():
                cache.put_many(model, items)
                merged += len(items)
            log.unlink()
        cache.checkpoint()
    finally:
        cache.close()
    return merged
