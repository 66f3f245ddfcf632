"""OS file locks (``fcntl.flock``) that keep builds and lineage readers out of each other's way.

- ``BuildLock``: one writer per output folder. ``<out>/.dataforge.lock`` is locked exclusively
  before anything else in ``<out>`` is touched and stays locked for the whole build; the kernel
  releases it when the process exits or dies, so a killed build never leaves a stale lock. The
  file's text names the holder (pid, recipe, start time) for the message a second build prints.
- ``file_lock``: a short exclusive or shared lock around one lineage transaction (writer) or one
  snapshot copy (readers), so a reader never sees a half-written database and never holds the
  database open while a build wants to write.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from dataforge.errors import DataforgeError

LOCK_NAME = ".dataforge.lock"


class BuildLockedError(DataforgeError):
    """Another build holds the output folder."""


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another build"
    return f"build pid {info.get('pid')} of {info.get('recipe')} (started {info.get('started_at')})"


class BuildLock:
    """The exclusive lock of one output folder, held from ``acquire`` to ``release`` (or death)."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, out: Path, recipe: str, wait: bool = False, on_wait=None) -> BuildLock:
        """Lock ``<out>`` for a build of ``recipe``. Held by another process: wait for it with
        ``wait`` (calling ``on_wait(holder)`` once), else raise ``BuildLockedError`` naming it."""
        out.mkdir(parents=True, exist_ok=True)
        path = out / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder_text(path)
                if not wait:
                    raise BuildLockedError(
                        f"{out} is being written by {holder}; wait for it to finish, pass --wait, "
                        "or choose another --out"
                    ) from None
                if on_wait is not None:
                    on_wait(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            info = {
                "pid": os.getpid(),
                "recipe": recipe,
                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def release(self) -> None:
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


@contextmanager
def file_lock(path: Path, shared: bool = False, timeout: float = 600.0) -> Iterator[None]:
    """Hold an flock on ``path`` (created if missing) for the block: shared for readers,
    exclusive for the writer. Gives up with a clear error after ``timeout`` seconds."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if not shared:
            raise
        if not path.exists():  # a folder this user cannot write: no writer can be writing either
            yield
            return
        fd = os.open(path, os.O_RDONLY)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DataforgeError(f"{path} stayed locked for {timeout:.0f} s by another process") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases its lock
