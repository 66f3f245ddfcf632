"""Temporary folders for the files a step stages for its jobs (texts to verify, band keys by
bucket): under the step's scratch folder, which on Ray is storage every node reaches."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


@contextmanager
def staging(folder: Path | None, prefix: str) -> Iterator[str]:
    """A temporary folder under ``folder`` (default: the system's), removed on exit with its
    files and with any folder above it that this call made (innermost first, only where nothing
    else was put in it)."""
    made = [] if folder is None else [d for d in (folder, *folder.parents) if not d.exists()]
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=prefix, dir=folder) as path:
            yield path
    finally:
        for d in made:
            with suppress(OSError):
                d.rmdir()
