"""Temporary folders for the files a step stages for its jobs (texts to verify, band keys by
bucket): under the step's scratch folder, which on Ray is storage every node reaches."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

# bytes staged under each folder given to ``staging`` (absolute path), counted when its temporary
# folder goes: what a build reports per step (``Runner.staged``), which takes its folders' counts
STAGED: Counter[str] = Counter()


@contextmanager
def staging(folder: Path | None, prefix: str) -> Iterator[str]:
    """A temporary folder under ``folder`` (default: the system's), removed on exit with its
    files and with any folder above it that this call made (innermost first, only where nothing
    else was put in it). The bytes of its files are added to ``STAGED[folder]`` as it goes."""
    made = [] if folder is None else [d for d in (folder, *folder.parents) if not d.exists()]
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=prefix, dir=folder) as path:
            try:
                yield path
            finally:
                if folder is not None:
                    STAGED[str(folder.resolve())] += bytes_under(path)
    finally:
        for d in made:
            with suppress(OSError):
                d.rmdir()


def bytes_under(path: str) -> int:
    """The bytes of the files under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total
