"""Content fingerprints: hash(step kind, step version, canonical config JSON, input fingerprints).

The same fingerprint means the same output bytes, so a rerun may reuse a stored artifact.
Canonical JSON (sorted keys, no whitespace, UTF-8) makes the hash independent of key order
and of the process that computes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

FINGERPRINT_LEN = 16  # hex chars kept: 64 bits, plenty for one build directory


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no insignificant whitespace; the input to every fingerprint."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def hash_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def step_fingerprint(
    kind: str, version: int, config: dict[str, Any], inputs: dict[str, str], data: str | None = None
) -> str:
    """Fingerprint of a step run. ``inputs`` maps input name → upstream output fingerprint;
    ``data`` is a source's own content hash (its files), if it has one."""
    payload = {"kind": kind, "version": version, "config": config, "inputs": inputs, "data": data}
    return hash_text(canonical_json(payload))[:FINGERPRINT_LEN]


def output_fingerprint(step_fp: str, output: str) -> str:
    """The fingerprint downstream steps see for one named output of a step."""
    return f"{step_fp}:{output}"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    """dataforge's per-machine cache folder: ``$DATAFORGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/dataforge``
    (``~/.cache/dataforge``)."""
    root = os.environ.get("DATAFORGE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dataforge"
    )
    return Path(root)


def _hash_cache_path() -> Path:
    return cache_root() / "file_sha256.json"


def cached_file_sha256(path: Path) -> str:
    """``file_sha256`` remembered by (path, size, mtime, inode), as git and DVC do, so planning a
    recipe over a large source does not re-read it when it has not changed."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    cache_file = _hash_cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = file_sha256(path)
    if st.st_size >= 1 << 20:  # small files hash faster than the cache is read
        cache[key] = digest
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, cache_file)
        except OSError:
            pass  # a read-only home only costs speed
    return digest


def path_fingerprint(path: Path) -> str:
    """Content hash of a file, or of every file below a directory (names and bytes)."""
    if path.is_file():
        return cached_file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(cached_file_sha256(f).encode())
    return h.hexdigest()
