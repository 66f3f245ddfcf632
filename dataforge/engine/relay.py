"""Files of a build passed through its object store, for Ray nodes that do not mount the build folder.

A build with ``--out s3://…`` (or any store URI) runs in the driver's local staging folder
(``engine.remote``). On a Ray cluster whose other nodes do not see that folder (no shared mount:
``RayRunner._check_shared_folders`` finds it out before any step runs), each such node keeps a
copy of the files its tasks need under the same path, and the files pass through the store:

- **to a node**: every path under the build folder that a task's arguments name (a shard a batch
  is read from, the inputs a step reads whole, the request cache, a staged file a job reads,
  a folder it writes into) is listed by the driver when it submits the task (``Relay.needed``):
  a file with its size and mtime, sent to ``<uri>/.dataforge-relay/up/<path>`` the first time the
  driver names it in that version; a folder to create. The node brings down what its copy lacks
  or holds in another version before the task runs (``bring``);
- **back to the driver**: the files the task wrote are those its arguments or its value name
  (a batch's folder, a bucket's files, an exported ``.arrow`` file, a staged block) that it
  created or changed, and the answer log of its worker process (``llm.cache.LoggedCache``); the
  node sends them to ``<uri>/.dataforge-relay/down/<path>`` and the task's ``Done`` lists them;
  the driver brings them into the build folder, at the same path, before it reads the task's
  value (``Relay.fetch``).

So a task's code is the same with and without the relay: it reads and writes the paths it is
given, on its node's copy. The driver's node needs no relay (its tasks see the folder). The
relay's prefix is cleared when a build starts and when it ends, and publishes leave it out. At a
build's end each node's copy loses its scratch folders and answer logs
(``RayRunner._sweep_relayed_nodes``); its artifacts stay for the next build.

What a task reads or writes must be named in its arguments or its value (a path string, a
``Path``, inside lists, dicts, dataclasses, ``functools.partial``s and objects' attributes):
every task kind of the Ray executor does so (tested on a node that sees none of the driver's
build folder, ``tests/engine/test_ray.py``). A task's folder argument is created on the node but
not sent back whole (several tasks write into one: each names its own files in its value).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataforge.engine.remote import RELAY, TRANSFERS, Synced, bounded_retries, download, store_errors, upload
from dataforge.engine.store import file_stamp

Stamp = dict[str, int]  # ``store.file_stamp``: a file's size and mtime (ns)

_SKIPPED = (bytes, bytearray, memoryview, int, float, bool, type(None))
_MAX_DEPTH = 8


@dataclass(frozen=True)
class Needed:
    """What a task needs of the build folder on a node that does not mount it: files (path
    relative to the build folder → (size, mtime ns) of the driver's copy, in the store), those of
    them the store holds where a node sent them (``down/``: a task wrote them; the others the
    driver sent ``up/``), and folders to create."""

    files: dict[str, Stamp] = field(default_factory=dict)
    folders: tuple[str, ...] = ()
    down: tuple[str, ...] = ()


@dataclass(frozen=True)
class RelaySpec:
    """What a task's wrapper needs to relay: the build's store URI, the build folder (the same
    path on every node: each node's own copy), and the driver's node (its tasks need no relay)."""

    uri: str
    root: str
    driver_node: str


def named_paths(value: Any, root: str) -> set[str]:
    """The paths under ``root`` that ``value`` names: strings and ``Path``s, found inside lists,
    tuples, sets, dicts, dataclasses, ``functools.partial``s, closures, bound methods and objects'
    attributes (not inside arrays, frames or bytes)."""
    inside = root.rstrip("/") + "/"
    found: set[str] = set()
    seen: set[int] = set()

    def walk(v: Any, depth: int) -> None:
        if isinstance(v, _SKIPPED) or depth > _MAX_DEPTH:
            return
        if isinstance(v, str | Path):
            s = os.fspath(v)
            if s.startswith(inside):
                found.add(os.path.normpath(s))
            return
        if id(v) in seen:
            return
        seen.add(id(v))
        if isinstance(v, dict):
            for k, item in v.items():
                walk(k, depth + 1)
                walk(item, depth + 1)
        elif isinstance(v, list | tuple | set | frozenset):
            for item in v:
                walk(item, depth + 1)
        elif isinstance(v, functools.partial):
            walk(v.func, depth + 1)
            walk(v.args, depth + 1)
            walk(v.keywords, depth + 1)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            for f in dataclasses.fields(v):
                walk(getattr(v, f.name, None), depth + 1)
        elif callable(v):
            walk(getattr(v, "__self__", None), depth + 1)
            for cell in getattr(v, "__closure__", None) or ():
                try:
                    walk(cell.cell_contents, depth + 1)
                except ValueError:  # an empty cell
                    pass
        elif type(v).__module__.split(".")[0] not in {"numpy", "polars", "pyarrow", "pandas", "torch"}:
            attrs = getattr(v, "__dict__", None)
            if attrs is not None:
                walk(attrs, depth + 1)

    walk(value, 0)
    return found


def _store(uri: str) -> tuple[Any, str]:
    """The pyarrow filesystem of a build's URI and the relay's prefix in it."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(bounded_retries(uri))
    return fs, f"{root.rstrip('/')}/{RELAY}"


def _each(work: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """``work`` on each item, ``TRANSFERS`` at a time; the values in item order."""
    items = list(items)
    if len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(TRANSFERS, len(items))) as pool:
        return list(pool.map(work, items))


def _brought(fs: Any, source: str, target: Path, mtime_ns: int = 0) -> int:
    """``remote.download`` through a file beside ``target`` (several processes of a node may bring
    one file at once); its bytes."""
    return download(
        fs, source, target, target.with_name(f".relay-{uuid.uuid4().hex[:8]}-{target.name}"), None, mtime_ns
    )


@dataclass
class Moved:
    """What the relay moved each way over a build (``copied`` files, ``nbytes``), and the bytes of
    scratch removed from the nodes' copies at its end."""

    to_nodes: Synced = field(default_factory=Synced)
    back: Synced = field(default_factory=Synced)
    swept: int = 0  # bytes of scratch removed from the nodes' copies at the build's end


class Relay:
    """The driver's side: files named by tasks sent up, files tasks wrote brought down (see the
    module doc)."""

    def __init__(self, uri: str, root: Path, driver_node: str, logs: str):
        self.spec = RelaySpec(uri, str(root.resolve()), driver_node)
        self.root = Path(self.spec.root)
        with store_errors(uri, "opening the store for the relay to nodes without the build folder"):
            self.fs, self.prefix = _store(uri)
        self.sent: dict[str, Stamp] = {}  # path → the version the store holds
        self.where: dict[str, str] = {}  # path → "up" (the driver sent it) or "down" (a node did)
        self.moved = Moved()
        self.logs = logs
        with store_errors(uri, "bringing down a killed build's answer logs"):
            self.logs_kept = self._bring_logs(logs)
        self.clear()

    def _bring_logs(self, logs: str) -> int:
        """The answer logs a killed build's nodes sent and its driver did not bring down, brought
        into the folder ``logs`` (relative to the build folder), where the build's start stores
        them in the request cache (``llm.cache.merge_logs``); how many."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(f"{self.prefix}/down/{logs}", allow_not_found=True)
        found = [i for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]
        brought = _each(lambda info: _brought(self.fs, info.path, self.root / logs / info.base_name), found)
        self.moved.back.copied += len(brought)
        self.moved.back.nbytes += sum(brought)
        return len(found)

    def clear(self) -> None:
        """Remove what the relay's prefix holds (a killed build's files, or this build's at its end)."""
        with store_errors(self.spec.uri, "clearing the relay's files"):
            self.fs.delete_dir_contents(self.prefix, missing_dir_ok=True)

    def forget_logs(self) -> None:
        """Delete the answer logs nodes sent, once the driver stored them in the request cache (a
        killed build's next build would bring them down again)."""
        with store_errors(self.spec.uri, "deleting the answer logs stored"):
            self.fs.delete_dir_contents(f"{self.prefix}/down/{self.logs}", missing_dir_ok=True)

    def needed(self, args: Any) -> Needed:
        """What a task with ``args`` needs on its node: each file its arguments name, sent up in
        its present version if it was not, and each folder (a named one, or the one a named path
        that does not exist yet is to be written into)."""
        files: dict[str, Stamp] = {}
        folders: set[str] = set()
        for path in named_paths(args, self.spec.root):
            p = Path(path)
            rel = os.path.relpath(path, self.spec.root)
            if p.is_file():
                files[rel] = file_stamp(p)
            elif p.is_dir():
                folders.add(rel)
            elif p.parent.is_dir() and p.parent != self.root:
                folders.add(os.path.relpath(p.parent, self.spec.root))
        todo = [rel for rel, version in files.items() if self.sent.get(rel) != version]
        with store_errors(self.spec.uri, "sending a task's files"):
            sent = _each(lambda rel: upload(self.fs, self.root / rel, f"{self.prefix}/up/{rel}"), todo)
        self.sent.update((rel, files[rel]) for rel in todo)
        self.where.update((rel, "up") for rel in todo)
        self.moved.to_nodes.copied += len(todo)
        self.moved.to_nodes.nbytes += sum(sent)
        down = tuple(sorted(rel for rel in files if self.where[rel] == "down"))
        return Needed(files, tuple(sorted(folders)), down)

    def readable(self, paths: list[str]) -> tuple[list[str], Any]:
        """Files of the build folder as a reader on any node reads them (``ray.data.llm``'s
        request files): sent up, and their paths in the store with its filesystem."""
        self.needed(paths)
        rels = [os.path.relpath(p, self.spec.root) for p in paths]
        return [f"{self.prefix}/{self.where[rel]}/{rel}" for rel in rels], self.fs

    def fetch(self, written: dict[str, int]) -> None:
        """Bring the files a task wrote (path → bytes, as its node sent them) into the build
        folder. A file brought is read by later tasks from where its node sent it (it is not
        sent up again). A worker's answer log is kept in the longest version brought (a process's
        log only grows; its tasks may come back out of order)."""

        def older(rel: str, size: int) -> bool:
            target = self.root / rel
            return rel.startswith(f"{self.logs}/") and target.exists() and target.stat().st_size >= size

        todo = [rel for rel, size in written.items() if not older(rel, size)]
        with store_errors(self.spec.uri, "bringing in the files a task wrote"):
            brought = _each(lambda rel: _brought(self.fs, f"{self.prefix}/down/{rel}", self.root / rel), todo)
        self.moved.back.copied += len(brought)
        self.moved.back.nbytes += sum(brought)
        for rel in todo:
            if not rel.startswith(f"{self.logs}/"):  # (the logs are deleted once stored: ``forget_logs``)
                self.sent[rel], self.where[rel] = file_stamp(self.root / rel), "down"


_NODE: dict[str, Any] = {}  # per worker process: the store opened for a URI; logs sent (path → bytes)


def _node_store(uri: str) -> tuple[Any, str]:
    if _NODE.get("uri") != uri:
        _NODE.update(uri=uri, store=_store(uri), logs={})
    return _NODE["store"]


def bring(spec: RelaySpec, needed: Needed) -> None:
    """On a node: the folders a task needs made, and the files it reads brought down where this
    node's copy lacks them or holds another version (a file brought takes the driver's mtime)."""
    fs, prefix = _node_store(spec.uri)
    root = Path(spec.root)
    for rel in needed.folders:
        (root / rel).mkdir(parents=True, exist_ok=True)
    local = {os.path.relpath(p, spec.root): v for p, v in versions(str(root / rel) for rel in needed.files).items()}
    todo = [rel for rel, version in needed.files.items() if local.get(rel) != version]
    down = set(needed.down)

    def one(rel: str) -> int:
        source = f"{prefix}/{'down' if rel in down else 'up'}/{rel}"
        return _brought(fs, source, root / rel, needed.files[rel]["mtime_ns"])

    _each(one, todo)


def versions(paths: Iterable[str]) -> dict[str, Stamp]:
    """The ``file_stamp`` of each of ``paths`` that is a file."""
    return {path: file_stamp(Path(path)) for path in paths if os.path.isfile(path)}


def send_back(
    spec: RelaySpec, named: set[str], value: Any, before: dict[str, Stamp], logs: Iterable[Path]
) -> dict[str, int]:
    """On a node, after a task: the files it wrote sent to the store (those its arguments
    (``named``: ``named_paths`` of them) or ``value`` name, created or changed since ``before``;
    every file of a folder its value names; its process's answer ``logs`` that grew); returns
    path (relative to the build folder) → bytes."""
    fs, prefix = _node_store(spec.uri)
    returned = named_paths(value, spec.root)
    candidates = named | returned
    for folder in returned:
        if os.path.isdir(folder):
            for where, _, names in os.walk(folder):
                candidates.update(os.path.join(where, n) for n in names)
    changed = [os.path.relpath(p, spec.root) for p, version in versions(candidates).items() if before.get(p) != version]
    sizes = _each(lambda rel: upload(fs, Path(spec.root) / rel, f"{prefix}/down/{rel}"), changed)
    sent = dict(zip(changed, sizes, strict=True))
    logged: dict[str, int] = _NODE["logs"]
    for log in logs:
        size = log.stat().st_size if log.exists() else 0
        if size and logged.get(str(log)) != size:
            rel = os.path.relpath(log, spec.root)
            sent[rel] = logged[str(log)] = upload(fs, log, f"{prefix}/down/{rel}")
    return sent
