"""Builds published to an object store: ``--out s3://bucket/prefix`` (or ``gs://…``, or any URI a
pyarrow filesystem opens, e.g. ``s3://bucket/prefix?endpoint_override=host:port&scheme=http``).

A build runs in a local *staging folder*, which is a build folder like any other, and then
*publishes* it: every file of the staging folder goes up (those the store already holds unchanged
are skipped), files the store holds and the folder no longer does are deleted, and last a manifest,
``.dataforge-published.json``, names each file with its size and the run. The manifest is deleted
before a publish starts, so a prefix without one is a publish in progress or one that stopped
midway, never a finished build that looks complete.

Readers (``dataforge query``, ``why`` and ``export``) and a build on a machine whose staging
folder is missing or older than the store's copy first bring the published build down into the
staging folder; a build there reuses every artifact, as one in a local folder does (artifacts are
checked against the lineage before reuse). ``dataforge plan`` reads only the manifest (which steps
the published build holds); ``dataforge report`` brings the build down, writes the report in the
staging folder and publishes what changed (``rewrite``).

Steps write to the staging folder, not to the store; on a Ray cluster, nodes that do not mount
that folder get and give the files of their tasks through the store (``engine.relay``, under
``.dataforge-relay/``, which publishes leave out).

Across machines. The build lock is the staging folder's. Publishes to one URI exclude each other
by *claims*: a publish first writes a claim of its own under ``.dataforge-publishing/`` in the
store (host, pid, run), then lists the claims there; when it finds another live one it removes its
own, sends nothing and says who is publishing (``RemoteChangedError``). Of two publishes, the one
that lists second sees the other's claim (each writes before it lists, and the stores pyarrow
opens list what was written before), so two never both go on; two that list at the same moment
both stop, and either may run again. A publish rewrites its claim every ``CLAIM_REFRESH_SECONDS``
while it runs, so a claim unchanged for ``CLAIM_STALE_SECONDS`` by the store's own clock, or one
from this host whose process is gone, is a publish that died: it is removed and ignored. Then the
publish checks that the store still holds the publish its build brought down, and when another
machine published since (or a publish stopped midway: no manifest) it sends nothing and says so
(``RemoteChangedError``); the next build brings the newer one down and builds on it.

Staging folder: ``$DATAFORGE_STAGING/<key>``, else ``$XDG_CACHE_HOME/dataforge/staging/<key>``
(``~/.cache/…``), where ``<key>`` is derived from the URI without its query string.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from dataforge.engine.lock import LOCK_NAME, BuildLockedError, file_lock
from dataforge.engine.store import MARKER, SCRATCH, STEP_SCRATCH, file_stamp, is_uri
from dataforge.errors import DataforgeError, OutputDirError

MANIFEST = ".dataforge-published.json"  # in the store, written last by a publish
CLAIMS = ".dataforge-publishing"  # in the store: a claim per publish under way (see the module doc)
RELAY = ".dataforge-relay"  # in the store: files relayed to Ray nodes without the build folder (``engine.relay``)
TRANSFERS = 8  # files copied at once to or from a store (its latency is per request)
CLAIM_REFRESH_SECONDS = 60.0
CLAIM_STALE_SECONDS = 600.0
PUBLISH_WAIT_SECONDS = 30.0  # with --wait, between a publish another stopped and the next try
LOCAL_ONLY = {SCRATCH, STEP_SCRATCH, LOCK_NAME}  # top-level names of the staging folder never published
STAGING_ENV = "DATAFORGE_STAGING"
DATASETS = "datasets"  # a build's exported datasets, one folder each
_CHUNK = 8 << 20


def without_query(uri: str) -> str:
    """``uri`` without its query string (the store's options): what names the build, in messages
    and in the staging folder's key."""
    return uri.split("?", 1)[0]


def _file_name(text: str) -> str:
    """``text`` as part of a file name: runs of other characters than letters, digits, ``._-`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _no_build(uri: str | Path) -> OutputDirError:
    """The error of a reader finding no finished build published at ``uri``."""
    return OutputDirError(f"no build published at {uri} (run `dataforge build --out {uri}` first)")


def staging_folder(uri: str) -> Path:
    """The local staging folder of the build published at ``uri`` (see the module doc)."""
    bare = without_query(uri).rstrip("/")
    tail = _file_name(bare.split("://", 1)[1])[-48:]
    key = f"{tail}-{hashlib.sha256(bare.encode()).hexdigest()[:12]}"
    base = os.environ.get(STAGING_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / (
        "dataforge/staging"
    )
    return Path(base) / key


class RemoteChangedError(OutputDirError):
    """A publish stopped, having sent nothing, by another machine's: under way (its claim), or
    finished since this build's pull. ``why`` says which; ``advice`` what to do; the message is
    both, after the URI."""

    def __init__(self, uri: str, why: str, advice: str):
        super().__init__(f"{uri}: {why}; nothing was sent, and this build stays in the staging folder. {advice}")
        self.why = f"{uri}: {why}"


GCS_RETRY_SECONDS = 60  # how long a GCS request is retried, unless the URI says (retry_limit_seconds=N)


def bounded_retries(uri: str) -> str:
    """``uri`` with a bounded retry time for GCS (``retry_limit_seconds``, ``GCS_RETRY_SECONDS``)
    where it gives none: with its own default the GCS client was still retrying an unreachable
    store after a minute, with nothing said, where S3's failed in seconds naming the cause."""
    if not uri.startswith(("gs://", "gcs://")) or re.search(r"[?&]retry_limit_seconds=", uri):
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}retry_limit_seconds={GCS_RETRY_SECONDS}"


@dataclass
class Synced:
    """What one pull or publish moved: files and bytes copied, files deleted, files left as they were."""

    copied: int = 0
    nbytes: int = 0
    deleted: int = 0
    unchanged: int = 0


class RemoteBuild:
    """The build published at ``uri``, and its local staging folder ``local``."""

    def __init__(self, uri: str, local: Path | None = None):
        import pyarrow.fs as pafs

        self.uri = uri
        self.local = Path(local) if local is not None else staging_folder(uri)
        self.has_pulled = False
        self.seen: dict[str, Any] | None = None  # the manifest the last ``pull`` found (None: no finished build)
        self.state_file = self.local.with_name(self.local.name + ".published.json")  # what it last sent or got
        self.sync_lock = self.local.with_name(self.local.name + ".lock")  # one build or pull of the URI at a time
        bucket_only = OutputDirError(f"{uri}: give a prefix inside the bucket (s3://bucket/builds/NAME), not a bucket")
        stores = ("s3://", "gs://", "gcs://")
        if uri.startswith(stores) and "/" not in without_query(uri).split("://", 1)[1].strip("/"):
            raise bucket_only  # said before pyarrow looks the bucket's region up, which needs the network
        try:
            self.fs, root = pafs.FileSystem.from_uri(bounded_retries(uri))
        except Exception as exc:  # pyarrow raises ArrowInvalid, ArrowNotImplementedError, OSError
            raise OutputDirError(f"{uri}: cannot open it as a filesystem URI: {exc}") from None
        self.root = root.rstrip("/")
        if not self.root:
            raise bucket_only

    def _remote(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` against the store; its errors (credentials, a missing bucket, the network)
        raised as an ``OutputDirError`` naming the URI and what was being done."""
        with store_errors(self.uri, what):
            return fn(*args)

    def _put(self, what: str, path: str, data: bytes) -> None:
        """Write one small object (an S3 upload happens when the stream closes: its errors too are
        raised as ``_remote``'s)."""

        def put() -> None:
            with self.fs.open_output_stream(path) as f:
                f.write(data)

        self._remote(what, put)

    def _get(self, what: str, path: str) -> bytes:
        """Read one small object, its errors raised as ``_remote``'s."""

        def get() -> bytes:
            with self.fs.open_input_stream(path) as f:
                return f.read()

        return self._remote(what, get)

    def remote_files(self) -> dict[str, int]:
        """Every file under the prefix: its path relative to the prefix → its size."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        infos = self._remote("listing the prefix", self.fs.get_file_info, selector)
        files = {i.path[len(self.root) + 1 :]: i.size for i in infos if i.type == pafs.FileType.File}
        return {rel: size for rel, size in files.items() if not rel.startswith((f"{CLAIMS}/", f"{RELAY}/"))}

    def published_files(self) -> dict[str, int]:
        """The files of the finished build at the URI (its manifest's: path → size); none where no
        build was published or a publish has not finished."""
        manifest = self.manifest(self.remote_files())
        return dict(manifest["files"]) if manifest is not None else {}

    def manifest(self, files: dict[str, int]) -> dict[str, Any] | None:
        if MANIFEST not in files:
            return None
        return json.loads(self._get("reading the manifest", f"{self.root}/{MANIFEST}"))

    def _state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, publish_id: str | None, files: dict[str, int]) -> None:
        stats = {rel: file_stamp(self.local / rel) for rel in files}
        text = json.dumps({"uri": without_query(self.uri), "publish_id": publish_id, "files": stats})
        tmp = self.state_file.with_name(f".{self.state_file.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(text)
        os.replace(tmp, self.state_file)

    def local_files(self) -> dict[str, int]:
        """Every file of the staging folder that a publish sends: relative path → size."""
        found = {}
        if not self.local.exists():
            return found
        for top in self.local.iterdir():
            if top.name in LOCAL_ONLY:
                continue
            for path in [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()):
                found[path.relative_to(self.local).as_posix()] = path.stat().st_size
        return found

    @contextmanager
    def held(self, wait: bool = True) -> Iterator[Path]:
        """Hold the staging folder's sync lock for the block: one build or pull of this URI on this
        machine at a time. Held by another process: wait for it with ``wait``, else raise
        ``BuildLockedError``. Yields the staging folder."""
        self.local.mkdir(parents=True, exist_ok=True)
        try:
            lock = file_lock(self.sync_lock, timeout=24 * 3600.0 if wait else 0.0)
            lock.__enter__()
        except DataforgeError:
            raise BuildLockedError(
                f"{self.uri}: another build or reader on this machine is using its staging folder {self.local} "
                "(pass --wait to wait for it)"
            ) from None
        try:
            yield self.local
        finally:
            lock.__exit__(None, None, None)

    def pull(self, console: Console | None = None, only: Callable[[str], bool] | None = None) -> Synced:
        """Bring the published build down into the staging folder, unless the folder already holds
        what was last published (or is the newer copy: its own publish stopped midway). Refuses a
        prefix that holds files dataforge did not write. Call it inside ``held``. ``only``: bring
        down only the files (paths relative to the build) it says yes to, into a folder that is
        never published (``readable_dataset``'s)."""
        files = self.remote_files()
        manifest = self.manifest(files)
        self.seen, self.has_pulled = manifest, True  # what ``publish`` expects to find there
        state = self._state()
        if manifest is None:
            if not files:
                return Synced()
            if MARKER not in files:
                shown = ", ".join(sorted(files)[:3])
                raise OutputDirError(
                    f"{self.uri} holds files dataforge did not write ({shown}…); give an empty prefix or one "
                    "a dataforge build was published to"
                )
            if state.get("uri") == without_query(self.uri):
                return Synced()  # this folder's own publish stopped midway: the folder is the newer copy
        elif state.get("publish_id") == manifest["publish_id"]:
            return Synced(unchanged=len(files))
        wanted = {rel: size for rel, size in files.items() if rel != MANIFEST and (only is None or only(rel))}
        done = Synced()
        have = self.local_files()
        for rel in set(have) - set(wanted):
            (self.local / rel).unlink()
            done.deleted += 1
        todo = []
        for rel, size in wanted.items():
            immutable = rel.startswith("artifacts/")  # written once under its fingerprint, renamed into place
            if immutable and have.get(rel) == size:
                done.unchanged += 1
            else:
                todo.append(rel)
        self._copy(todo, wanted, down=True, console=console, done=done)
        self._save_state(manifest["publish_id"] if manifest else None, wanted)
        return done

    def probe(self) -> None:
        """Write and delete one small object under the prefix, so a build that could not be
        published (no bucket, no credentials, no write permission) stops before it runs."""
        path = f"{self.root}/.dataforge-probe-{uuid.uuid4().hex[:8]}"
        try:
            with self.fs.open_output_stream(path) as f:
                f.write(b"dataforge")
            self.fs.delete_file(path)
        except OSError as exc:
            raise OutputDirError(f"{self.uri}: cannot write there (checked before building): {exc}") from None

    def publish(self, run_id: str, console: Console | None = None) -> Synced:
        """Send the staging folder to the store (see the module doc); the manifest goes last. Call
        it inside ``held``. After a ``pull``, refuses to send anything when the store no longer
        holds the publish that pull saw (another machine published since, or is publishing)."""
        with self._claimed(run_id):
            return self._publish(run_id, console)

    def _publish(self, run_id: str, console: Console | None) -> Synced:
        files = self.remote_files()
        if self.has_pulled:
            self._check_unchanged(self.manifest(files))
        state = self._state().get("files", {})
        if MANIFEST in files:
            self._remote("removing the old manifest", self.fs.delete_file, f"{self.root}/{MANIFEST}")
        mine = self.local_files()
        done = Synced()
        todo = []
        for rel, size in mine.items():
            if files.get(rel) == size and state.get(rel) == file_stamp(self.local / rel):
                done.unchanged += 1  # the store holds it as this folder last sent or received it
            else:
                todo.append(rel)
        todo.sort(key=lambda rel: (not rel.startswith("artifacts/"), rel == "lineage.duckdb", rel))
        self._copy(todo, mine, down=False, console=console, done=done)
        for rel in set(files) - set(mine) - {MANIFEST}:
            self._remote(f"deleting {rel}", self.fs.delete_file, f"{self.root}/{rel}")
            done.deleted += 1
        publish_id = uuid.uuid4().hex
        manifest = {
            "publish_id": publish_id,
            "run_id": run_id,
            "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": mine,
        }
        self._put("writing the manifest", f"{self.root}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
        self._save_state(publish_id, mine)
        self.seen = manifest
        return done

    @contextmanager
    def _claimed(self, run_id: str) -> Iterator[None]:
        """Hold a publish claim for the block (see the module doc): raises ``RemoteChangedError``,
        having sent nothing, when another publish holds a live one."""
        path = f"{self.root}/{CLAIMS}/{uuid.uuid4().hex}.json"
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        claim = {"host": socket.gethostname(), "pid": os.getpid(), "run_id": run_id, "since": since}

        def write() -> None:
            claim["refreshed"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self._put("writing a publish claim", path, json.dumps(claim).encode())

        write()
        stop = threading.Event()
        refresher = threading.Thread(target=self._refresh, args=(write, stop), daemon=True)
        try:
            other = self._live_claim(path)
            if other is not None:
                raise RemoteChangedError(
                    self.uri,
                    f"another publish is under way (run {other.get('run_id')} from {other.get('host')}, pid "
                    f"{other.get('pid')}, since {other.get('since')}, its claim last refreshed "
                    f"{other.get('refreshed')})",
                    "Run it again when that publish has finished. (A publish that died leaves its claim, "
                    f"{other['_path']}, which counts as dead {CLAIM_STALE_SECONDS / 60:g} minutes after its last "
                    "refresh; delete it sooner only if you know that publish is gone.)",
                )
            refresher.start()
            yield
        finally:
            stop.set()
            if refresher.is_alive():
                refresher.join()
            try:
                self.fs.delete_file(path)
            except OSError:
                pass  # (a claim left behind goes stale)

    @staticmethod
    def _refresh(write: Callable[[], None], stop: threading.Event) -> None:
        """Rewrite a claim every ``CLAIM_REFRESH_SECONDS`` until ``stop`` (a failed write is tried
        again at the next turn: the publish's own writes say what is wrong with the store)."""
        while not stop.wait(CLAIM_REFRESH_SECONDS):
            try:
                write()
            except OutputDirError:
                pass

    def _live_claim(self, mine: str) -> dict[str, Any] | None:
        """Another publish's live claim, if the store holds one besides ``mine``; claims of
        publishes that died are removed (see the module doc)."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(f"{self.root}/{CLAIMS}", allow_not_found=True)
        infos = self._remote("listing the publish claims", self.fs.get_file_info, selector)
        now = next((i.mtime for i in infos if i.path == mine), None)
        for info in sorted(infos, key=lambda i: i.path):
            if info.path == mine or info.type != pafs.FileType.File:
                continue
            try:
                other = json.loads(self._get("reading a publish claim", info.path))
            except (OutputDirError, ValueError):
                continue  # removed meanwhile (its publish ended), or not a claim
            stale = now is not None and (now - info.mtime).total_seconds() >= CLAIM_STALE_SECONDS
            if stale or _dead_here(other):
                try:
                    self.fs.delete_file(info.path)
                except OSError:
                    pass
                continue
            return {**other, "_path": f"{without_query(self.uri).rstrip('/')}/{info.path[len(self.root) + 1 :]}"}
        return None

    def _check_unchanged(self, manifest: dict[str, Any] | None) -> None:
        """Raise ``RemoteChangedError`` when ``manifest`` (the store's now) is not the one ``pull``
        saw."""
        if (manifest or {}).get("publish_id") == (self.seen or {}).get("publish_id"):
            return
        if manifest is None:
            what = "its manifest is gone: a publish from another machine is under way, or stopped midway"
        else:
            what = f"run {manifest.get('run_id')} was published there at {manifest.get('published_at')}"
        raise RemoteChangedError(
            self.uri,
            f"the store changed while this build ran ({what})",
            "Run it again to build on what the store holds now.",
        )

    def _copy(self, todo: list[str], sizes: dict[str, int], down: bool, console: Console | None, done: Synced) -> None:
        if not todo:
            return
        total = sum(sizes[rel] for rel in todo)
        what = f"{'bringing down' if down else 'publishing'} {len(todo)} files"
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, TimeElapsedColumn(), console=console, disable=console is None) as bar:
            task = bar.add_task(what, total=total)

            def one(rel: str) -> None:
                local, remote = self.local / rel, f"{self.root}/{rel}"
                with store_errors(self.uri, f"{'reading' if down else 'writing'} {rel}"):
                    if down:
                        (self.local / SCRATCH).mkdir(exist_ok=True)  # never published
                        tmp = self.local / SCRATCH / f"pull-{uuid.uuid4().hex}"
                        download(self.fs, remote, local, tmp, lambda n: bar.advance(task, n))
                    else:
                        upload(self.fs, local, remote, lambda n: bar.advance(task, n))

            with ThreadPoolExecutor(TRANSFERS) as pool:
                for _ in pool.map(one, todo):
                    pass
        done.copied += len(todo)
        done.nbytes += total


def _dead_here(claim: dict[str, Any]) -> bool:
    """Whether ``claim`` is from a process of this host that is gone."""
    if claim.get("host") != socket.gethostname() or not isinstance(claim.get("pid"), int):
        return False
    try:
        os.kill(claim["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # there, but another user's
    return False


def _pump(src: Any, dst: Any, advance: Callable[[int], None] | None) -> int:
    """Copy a stream in chunks; its bytes (``advance`` told each chunk's)."""
    copied = 0
    while chunk := src.read(_CHUNK):
        dst.write(chunk)
        copied += len(chunk)
        if advance is not None:
            advance(len(chunk))
    return copied


@contextmanager
def store_errors(uri: str, what: str) -> Iterator[None]:
    """A store's errors (credentials, a missing bucket, the network: they surface on open, write
    or close) raised as an ``OutputDirError`` naming ``uri`` and what was being done."""
    try:
        yield
    except OSError as exc:
        raise OutputDirError(f"{uri}: {what} failed: {exc}") from None


def download(
    fs: Any, source: str, target: Path, tmp: Path, advance: Callable[[int], None] | None = None, mtime_ns: int = 0
) -> int:
    """Copy ``source`` in the store to ``target`` through ``tmp``, renamed in place (a reader never
    sees half a file; ``mtime_ns``: set on it first); its bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with fs.open_input_stream(source) as src, open(tmp, "wb") as dst:
            copied = _pump(src, dst, advance)
        if mtime_ns:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return copied


def upload(fs: Any, source: Path, target: str, advance: Callable[[int], None] | None = None) -> int:
    """Copy ``source`` to ``target`` in the store; its bytes."""
    with open(source, "rb") as src, fs.open_output_stream(target) as dst:
        return _pump(src, dst, advance)


def rewrite(uri: str, write: Callable[[Path], Any], console: Console | None = None) -> tuple[Any, Synced]:
    """``write(folder)`` on the build published at ``uri``, brought down into its staging folder,
    then what it changed published (the manifest keeps the build's run id); returns what ``write``
    returned and what the publish sent. A build or reader of the URI on this machine using the
    staging folder stops it, as does a URI with no build."""
    remote = RemoteBuild(uri)
    with ExitStack() as stack:
        try:
            stack.enter_context(remote.held(wait=False))
        except BuildLockedError:
            raise BuildLockedError(
                f"{uri}: a build or reader on this machine is using its staging folder {remote.local}; run this "
                "again when it has finished"
            ) from None
        remote.pull(console)
        if remote.seen is None or not (remote.local / MARKER).exists():
            raise _no_build(uri)
        result = write(remote.local)
        return result, remote.publish(remote.seen["run_id"], console)


def readable_dataset(uri: str, console: Console | None = None) -> Path:
    """The local folder of the dataset published at ``uri`` (``<build URI>/datasets/<name>``, the
    query string, if any, at the end). Only the dataset, the build's ``lineage.duckdb`` (its
    provenance) and its marker are brought down, not the build's artifacts, into a folder of their
    own beside the build's staging folder (``<staging folder>-dataset-<name>``, never published,
    so the build's own staging folder stays whole), laid out as a build folder: the dataset's
    lineage is beside it as in a local build."""
    from dataforge.lineage import DB_NAME

    bare, _, query = uri.partition("?")
    build_uri, sep, name = bare.rstrip("/").rpartition("/datasets/")
    if not sep or not name or "/" in name:
        raise OutputDirError(f"{uri}: give a published dataset, <build URI>/datasets/<name>")
    build = build_uri + (f"?{query}" if query else "")
    whole = staging_folder(build)
    remote = RemoteBuild(build, whole.with_name(f"{whole.name}-dataset-{_file_name(name)}"))
    inside = f"{DATASETS}/{name}/"
    with remote.held(wait=True):
        remote.pull(console, only=lambda rel: rel in (MARKER, DB_NAME) or rel.startswith(inside))
    if not (remote.local / MARKER).exists():
        raise _no_build(build)
    folder = remote.local / DATASETS / name
    if not folder.is_dir():
        there = sorted({rel.split("/")[1] for rel in remote.remote_files() if rel.startswith(f"{DATASETS}/")})
        raise OutputDirError(
            f"{uri}: the build published at {build_uri} has no dataset '{name}' (it has: {', '.join(there) or 'none'})"
        )
    return folder


def readable(out: str | Path, console: Console | None = None) -> Path:
    """A folder holding the build at ``out``: ``out`` itself, or for a URI its staging folder with
    the published build brought down (``RemoteBuild.pull``)."""
    if not is_uri(out):
        return Path(out)
    remote = RemoteBuild(str(out))
    try:
        with remote.held(wait=False):
            remote.pull(console)
    except BuildLockedError:
        pass  # a build on this machine is writing the staging folder: read it as it stands, as a local folder
    if not (remote.local / MARKER).exists():
        raise _no_build(out)
    return remote.local
