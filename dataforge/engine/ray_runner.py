"""The Ray executor (``dataforge build --executor ray``): the runner whose ``rows`` and ``key``
steps run as Ray tasks, with the same step functions and the same results as the local runner.

What runs where:

- A ``rows`` step on an input larger than a batch: one task per batch. A batch is a slice of a
  stored shard of its input, which the worker reads from the build folder; the step's undivided
  inputs (an eval side) are read whole by each worker process once per step. Each task writes
  its result (tables, events, edges) as the artifact holds it (``store.write_batch``) into a
  folder of its own under the build's ``.tmp/<step>/`` and gives back only what it wrote; the
  driver renames the files into the step's artifact in input order (``ArtifactWriter.adopt``),
  at most ``in_flight`` tasks ahead of the one it waits for, so the rows never pass through the
  driver or Ray's object store. The artifact, its decisions and all that follows are what the
  local runner writes.
- A ``key`` step on an input larger than a batch: a hash shuffle through the build folder —
  one task per batch files its rows into buckets (``calls.partition_batch``: a file per bucket
  under the step's scratch folder), then one task per bucket runs the step on the rows of its
  bucket in input order (``calls.call_bucket``); the driver files the outputs back in input order
  as the local runner does (``Runner._execute_keyed``).
- A ``global`` step runs in the driver, and the work it divides runs as tasks (``Context.mapper``):
  ``Table.map_batches`` — the MinHash signatures of ``dedup.minhash``, the cluster band keys of
  ``split``, the hashes and band keys of ``split.audit``, the embeddings of ``dedup.semantic`` — as
  one task per slice of its input's shards; the exact-Jaccard verification of candidate pairs
  (``cluster.verified_jaccard``, in all three MinHash steps) as one task per block of rows that
  stages their texts in the step's scratch folder, then one per block that compares its pairs;
  beyond ``lsh_buckets.KEY_ROWS`` rows, the candidate pairs, as one task per LSH bucket (the
  driver files the band keys tasks give back by bucket, a batch at a time, in the scratch
  folder); ``dedup.semantic``'s exact search, as one task per ``embed.SEARCH_ROWS`` rows reading
  the vectors the driver wrote to the scratch folder. What tasks give back (hashes, pair codes,
  scores) is combined in the driver, where the kept rows are chosen; the split's connected
  components are found in tasks (``divided_components``: a union-find in one task, or root
  hooking in rounds of a task per edge shard).
- Sources and steps whose inputs fit in one batch run in the driver, as locally. The export
  writes each file of a split in a task (``export.write_file``), and its audit of each dataset's
  splits divides its work into tasks as ``split.audit`` does; cards and plots are the driver's.

Models: every worker process keeps one ``ModelPool`` on the build's request cache (the SQLite
file under ``<out>/cache``), so a model loads once per worker process, not per batch (and only
when a request has no stored answer), and an answer stored by one worker is not asked again by
the next build. On a cluster of several nodes the workers do not write the SQLite file, which is
on a shared mount: each appends its answers to a log of its own, and the driver stores them in
the file before tasks that may read them and after each step (``llm.cache``, ``_settled``). Each
task reports the requests it sent and those that failed; the driver counts
them with its own (``max_failure_rate``). Requests to a model sent through ``ray.data.llm``
(``--ray-llm``) are answered by a processor into the request cache (``engine.ray_llm``): for a
step run in the driver, call by call as it asks; a step with ``gathers_requests`` that runs in
tasks first runs in rounds of collecting tasks, a task per batch (a key step: per bucket, after
its shuffle), whose requests are answered before the step's own tasks run.

Faults: a task whose worker process dies is run again by Ray (``max_retries``); a task's own
error (bad data, a failing step) is not retried and fails the build naming the step, as locally.
A killed driver leaves the finished artifacts, which the next build reuses.

Every path a task reads or writes is under the build folder or the recipe's folder: on a cluster
they must be on storage every node mounts, which is checked before any step runs
(``_check_shared_folders``), but for the build folder of a build with ``--out s3://…`` (the local
staging folder ``engine.remote`` publishes from): a node that does not see it gets the files its
tasks read and gives back those they write through the store (``engine.relay``; every task is
submitted through ``_relayed``). Buckets and the hashes tasks give back are
``streaming.key_hashes`` (XXH3-128 of the key's text), the same on every node whatever its CPU or
its build of polars.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dataforge.engine import ray_llm
from dataforge.engine.calls import call_bucket, call_step, partition_batch, step_errors
from dataforge.engine.plan import PlannedStep, Ref
from dataforge.engine.progress import StepProgress
from dataforge.engine.relay import Needed, Relay, RelaySpec, bring, named_paths, send_back, versions
from dataforge.engine.runner import BuildReport, Runner, StepReport
from dataforge.engine.step import Context, StepResult
from dataforge.engine.store import SCRATCH, STEP_SCRATCH, WrittenBatch, step_scratch, write_batch
from dataforge.engine.streaming import divided_inputs, group_outputs
from dataforge.engine.table import Mapper, Part, Table, shard_slices
from dataforge.errors import DataforgeError, StepError
from dataforge.llm.base import Request
from dataforge.llm.cache import LOGS
from dataforge.llm.client import ModelPool, Unanswered
from dataforge.llm.spec import ModelSpec

PROBE_SECONDS = 120.0  # how long a node has to say whether it sees the build folder
TASK_RETRIES = 3  # runs of a task after its worker process died (Ray's retry on system failure)


def start_ray() -> bool:
    """Connect to Ray: the cluster at ``$RAY_ADDRESS``, else one started by ``ray start`` on this
    machine, else a new local instance (``ray.init``'s own order). Returns whether this call
    connected (False: the process was connected already, e.g. by a test's fixture)."""
    try:
        import ray
    except ImportError:
        raise DataforgeError("the ray executor needs Ray: pip install 'dataforge[ray]'") from None
    if ray.is_initialized():
        return False
    ray.init(include_dashboard=False, logging_level="WARNING")
    return True


@dataclass(frozen=True)
class WorkerStep:
    """What a worker needs besides the planned step: where its context points, and the files of
    the inputs it reads whole."""

    fingerprint: str
    base_dir: Path
    scratch_dir: Path
    cache_path: Path
    whole: dict[str, list[str]] = field(default_factory=dict)
    run_id: str = ""  # the build's: a batch's decisions are stored as decided by it
    stage_dir: Path | None = None  # where a rows task writes its batch's files (under the build folder)
    failed: dict[str, str] = field(default_factory=dict)  # requests failed in ray.data.llm (engine.ray_llm)
    skip: frozenset[str] = frozenset()  # requests not to gather again for ray.data.llm (left to the backend)
    driver_node: str = ""  # on a cluster of several nodes, the driver's (``RayRunner._settled``)
    cache_epoch: int = 0  # the driver's merge of the answer logs the tasks read after (``llm.cache``)


@dataclass
class Done:
    """A task's answer: its value, the model requests it sent and those that failed, or the
    StepError that stopped it."""

    value: Any = None
    asked: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    error: StepError | None = None
    assigned: dict[str, float] = field(default_factory=dict)  # what Ray gave the task (CPU, GPU, …)
    node: str = ""  # the node it ran on (``_node``)
    relayed: dict[str, int] = field(default_factory=dict)  # files it wrote, sent through the store (``engine.relay``)


# -- in the worker processes -----------------------------------------------------------------

STAGED_BATCH = ".tmp-ray-"  # a rows task's folder of written files (``Store`` sweeps stale ``.tmp-*``)

_WORKER: dict[str, Any] = {}  # per worker process: its model pool; the whole inputs of the step it ran last


def _context(ps: PlannedStep, spec: WorkerStep, collect: bool = False) -> Context:
    """The step's context in this worker process, on the process's model pool (``collect``: its
    collecting pool, which loads no model: ``engine.ray_llm``)."""
    slot = "collecting pool" if collect else "pool"
    pool = _WORKER.get(slot)
    logged = _node_id() if spec.driver_node else ""  # a cluster of several nodes: a LoggedCache (``llm.cache``)
    if pool is None or pool.cache_path != spec.cache_path or pool.node != logged:  # another build
        if pool is not None:
            pool.close()
        pool = _WORKER[slot] = ModelPool(spec.cache_path, collect=collect, node=logged)
    pool.at_epoch(spec.cache_epoch)
    pool.failed.clear()
    pool.failed.update(spec.failed)
    return Context(ps.name, ps.fingerprint, spec.base_dir, spec.scratch_dir, llm=pool)


def _whole(spec: WorkerStep) -> dict[str, pl.DataFrame]:
    """The inputs a step gets whole, read once per worker process and step."""
    key = (spec.fingerprint, tuple(sorted((n, tuple(f)) for n, f in spec.whole.items())))
    if _WORKER.get("whole_key") != key:
        _WORKER.pop("whole", None)
        _WORKER["whole"] = {name: Table(files=[Path(f) for f in files]).collect() for name, files in spec.whole.items()}
        _WORKER["whole_key"] = key
    return _WORKER["whole"]


def _answer(
    worker: tuple[PlannedStep, WorkerStep] | None, work: Callable[[Context | None], Any], collect: bool = False
) -> Done:
    """``work`` run in a worker, its requests counted and its error returned as a message (Ray
    would wrap it in a traceback; a dead worker is not caught here, Ray runs the task again).
    ``worker``: the step and what the worker needs to give it a context (None: no context);
    ``collect``: the context's model pool collects requests instead of sending them."""
    ctx = _context(*worker, collect=collect) if worker is not None else None
    asked, failed = ctx.llm.failure_counts() if ctx else (0, Counter())
    try:
        value = work(ctx)
    except StepError as exc:
        return Done(error=exc)
    after_asked, after_failed = ctx.llm.failure_counts() if ctx else (0, Counter())
    return Done(value, after_asked - asked, after_failed - failed, assigned=_assigned(), node=_node())


def _assigned() -> dict[str, float]:
    """The resources Ray assigned to the running task (its CPUs, GPUs, …; memory is not listed)."""
    import ray

    return {k: float(v) for k, v in ray.get_runtime_context().get_assigned_resources().items()}


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _node() -> str:
    """The running task's node: its address, and its id's first characters (nodes of one machine
    share an address)."""
    import ray

    return f"{ray.util.get_node_ip_address()} ({_node_id()[:8]})"


def _relayed(fn: Callable[..., Done], relay: RelaySpec | None, needed: Needed | None, *args: Any) -> Done:
    """Every task of the executor: ``fn(*args)``, on a node that does not mount the build folder
    with the files it reads brought down first and those it wrote sent back through the store
    (``engine.relay``; ``relay`` None: every node mounts it)."""
    if relay is None or needed is None or _node_id() == relay.driver_node:
        return fn(*args)
    bring(relay, needed)
    named = named_paths(args, relay.root)
    before = versions(named)
    done = fn(*args)
    if done.error is None:
        pools = (_WORKER.get("pool"), _WORKER.get("collecting pool"))
        logs = [getattr(getattr(p, "cache", None), "log_path", None) for p in pools]
        done.relayed = send_back(relay, named, done.value, before, [log for log in logs if log is not None])
    return done


def _rows_task(
    ps: PlannedStep, spec: WorkerStep, name: str, part: Part, schema: dict[str, pl.DataType], index: int
) -> Done:
    """A rows step on batch ``index`` of its divided input ``name``, its result written by the
    worker as the artifact holds it (``store.write_batch``) into a folder of its own under
    ``spec.stage_dir``; the driver renames the files into the artifact (``ArtifactWriter.adopt``),
    so the rows never pass through the driver or Ray's object store."""

    def work(ctx: Context | None) -> WrittenBatch:
        assert ctx is not None and spec.stage_dir is not None
        with step_errors(ps.name):
            batch = part.read(schema)
            whole = _whole(spec)
        result = call_step(ps, {**whole, name: batch}, ctx)
        folder = spec.stage_dir / f"{STAGED_BATCH}{index:06d}-{uuid.uuid4().hex[:8]}"  # a retried task: another
        return write_batch(folder, result, spec.run_id, ps.name, ps.fingerprint, index)

    return _answer((ps, spec), work)


def _collect_task(
    ps: PlannedStep,
    spec: WorkerStep,
    name: str,
    part: Part,
    schema: dict[str, pl.DataType],
    index: int,
    folder: str,
    mode: str,
) -> Done:
    """A rows step on batch ``index`` with a collecting model pool (``engine.ray_llm``): the
    requests with no stored answer of the call that stopped it (none: it ran through), those sent
    through ``ray.data.llm`` in ``mode`` and not in ``spec.skip`` written to ``folder``; the value
    is what ``ray_llm.write_requests`` gives. Nothing else is written."""

    def work(ctx: Context | None) -> ray_llm.Written:
        assert ctx is not None
        with step_errors(ps.name):
            batch = part.read(schema)
            whole = _whole(spec)
        requests = collected(lambda: call_step(ps, {**whole, name: batch}, ctx))
        return ray_llm.write_requests(Path(folder), requests, mode, spec.skip)

    return _answer((ps, spec), work, collect=True)


def collected(run: Callable[[], object]) -> list[tuple[ModelSpec, Request]]:
    """``run()`` (the step, on a context with a collecting model pool): the requests with no
    stored answer of the call that stopped it (none: it ran through). What it returns is not kept."""
    try:
        run()
    except Unanswered as stopped:
        return stopped.requests
    return []


def _partition_task(
    ps: PlannedStep,
    part: Part,
    schema: dict[str, pl.DataType],
    start: int,
    buckets: int,
    bucket_of: np.ndarray | None,
    folder: str,
) -> Done:
    """One batch of a key step's divided input filed to buckets: a Parquet file per bucket in
    ``folder``; the value is {bucket: file}."""

    def work(_: Context | None) -> dict[int, str]:
        with step_errors(ps.name):
            batch = part.read(schema)
        written = {}
        os.makedirs(folder, exist_ok=True)
        for b, rows in partition_batch(ps, batch, start, buckets, bucket_of).items():
            path = os.path.join(folder, f"{b:05d}.parquet")
            rows.write_parquet(path, compression="lz4")
            written[int(b)] = path
        return written

    return _answer(None, work)


def _bucket_task(ps: PlannedStep, spec: WorkerStep, name: str, files: list[str], grouped: tuple[str, ...]) -> Done:
    """A key step on one bucket: its files (one per batch that had rows for it, in input order)."""

    def work(ctx: Context | None) -> StepResult:
        assert ctx is not None
        return _on_bucket(ps, spec, name, files, grouped, ctx)

    return _answer((ps, spec), work)


def _collect_bucket_task(
    ps: PlannedStep, spec: WorkerStep, name: str, files: list[str], grouped: tuple[str, ...], folder: str, mode: str
) -> Done:
    """``_bucket_task`` with a collecting model pool, as ``_collect_task`` is ``_rows_task``."""

    def work(ctx: Context | None) -> ray_llm.Written:
        assert ctx is not None
        requests = collected(lambda: _on_bucket(ps, spec, name, files, grouped, ctx))
        return ray_llm.write_requests(Path(folder), requests, mode, spec.skip)

    return _answer((ps, spec), work, collect=True)


def _on_bucket(
    ps: PlannedStep, spec: WorkerStep, name: str, files: list[str], grouped: tuple[str, ...], ctx: Context
) -> StepResult:
    """Key step ``ps`` on the rows of one bucket (its ``files``) and the inputs it reads whole."""
    with step_errors(ps.name):
        rows = pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")
        whole = _whole(spec)
    return call_bucket(ps, name, rows, whole, ctx, grouped)


def _map_task(name: str, fn: Callable[[Any], Any], job: Any) -> Done:
    """``fn`` on one job of the divided work of a global step or of the export (``name``;
    ``Context.mapper``: a batch of its input, a block of candidate pairs to verify)."""

    def work(_: Context | None) -> Any:
        with step_errors(name):
            return fn(job)

    return _answer(None, work)


def _sweep(root: str, names: list[str]) -> int:
    """On a node that relays (``RayRunner._sweep_relayed_nodes``): the folders ``names`` of its
    copy of the build folder ``root`` removed; their bytes."""
    from dataforge.staging import bytes_under

    swept = 0
    for name in names:
        folder = os.path.join(root, name)
        swept += bytes_under(folder)
        shutil.rmtree(folder, ignore_errors=True)
    return swept


def _sees(probe: str, token: str, recipe_folder: str) -> dict[str, str]:
    """On one node: what it lacks of the driver's build folder (the ``probe`` file the driver
    wrote there, holding ``token``) and of the recipe's folder, by folder; empty when it sees both."""
    lacking = {}
    try:
        with open(probe, encoding="utf-8") as f:
            if f.read() != token:
                lacking["the build folder"] = f"{probe} holds another token than the driver wrote"
    except OSError:
        lacking["the build folder"] = f"{probe}, which the driver wrote, is not there"
    if not os.path.isdir(recipe_folder):
        lacking["the recipe's folder"] = f"{recipe_folder} is not there"
    return lacking


# -- in the driver ---------------------------------------------------------------------------


class _Task:
    """A task kind of the executor (``fn`` with Ray ``options``), submitted as ``_relayed`` by
    ``RayRunner._submit``."""

    def __init__(self, runner: RayRunner, fn: Callable[..., Done], options: dict[str, Any] | None = None):
        self.runner, self.fn, self.opts = runner, fn, options or {}

    def options(self, **options: Any) -> _Task:
        return _Task(self.runner, self.fn, {**self.opts, **options})

    def remote(self, *args: Any) -> Any:
        return self.runner._submit(self.fn, self.opts, args)


class RayRunner(Runner):
    """``Runner`` with its batch-by-batch steps (rows and key) run as Ray tasks; see the module
    doc. ``in_flight``: tasks submitted ahead of the one the driver waits for (default: twice
    the cluster's CPUs); ``llm``: which models' requests go through ``ray.data.llm`` and
    ``llm_replicas`` its replicas per model (``engine.ray_llm``; default: the settings)."""

    def __init__(
        self,
        *args: Any,
        in_flight: int | None = None,
        llm: str | None = None,
        llm_replicas: int | None = None,
        store_uri: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.store_uri = store_uri  # with --out s3://…: the store the build publishes to (``engine.relay``)
        self.relay: Relay | None = None  # other nodes do not mount the build folder: files pass through the store
        self.relayed_nodes: list[str] = []  # the ids of the nodes that relay
        self._named_refs: dict[str, list[str]] = {}  # an object put in Ray's store → the paths it names
        self.llm_mode = ray_llm.mode_setting(llm)
        self.llm_replicas = llm_replicas
        self.llm_sent: dict[str, dict[str, Any]] = {}  # per step: rounds, requests sent and stored, left
        if not self.batch_rows:
            raise DataforgeError(
                "the ray executor divides steps into batches: batch rows 0 (every step on whole tables) "
                "leaves it nothing to run; give --batch-rows N"
            )
        self.in_flight = in_flight
        self.remote_asked = 0
        self.remote_failures: Counter[str] = Counter()
        self.tasks_run: Counter[str] = Counter()  # tasks done by kind (rows, partition, bucket)
        self.tasks_on: Counter[str] = Counter()  # tasks done by node (``_node``)
        self.nodes_checked = 0  # nodes besides the driver's found to see the build and recipe folders
        self.driver_node = ""  # the driver's node, on a cluster of several (``_settled``)
        self.cache_epoch = 0  # the driver's merges of the answer logs so far (``_settled``)
        self.shuffled: Counter[str] = Counter()  # bytes of bucket files written, by key step
        self.rounds: Counter[str] = Counter()  # map rounds (one Context.mapper call each), by step
        self.assigned: dict[str, dict[str, float]] = {}  # per step, the most Ray assigned one of its tasks

    def run(self, force: Iterable[str] = (), wait: bool = False) -> BuildReport:
        import ray

        connected = start_ray()
        try:
            if self.in_flight is None:
                self.in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
            self._remote = ray.remote(max_retries=TASK_RETRIES)(_relayed)
            self.tasks = {
                "rows": _Task(self, _rows_task),
                "partition": _Task(self, _partition_task),
                "bucket": _Task(self, _bucket_task),
                "map": _Task(self, _map_task),
                "collect": _Task(self, _collect_task),
                "collect bucket": _Task(self, _collect_bucket_task),
            }
            gpus = float(ray.cluster_resources().get("GPU", 0))
            self.llm_replicas = ray_llm.replicas_setting(self.llm_replicas, gpus)
            self._check_resources(ray.nodes())
            report = super().run(force, wait)
            report.tasks = dict(sorted(self.tasks_run.items()))
            report.nodes = dict(sorted(self.tasks_on.items()))
            report.nodes_checked = self.nodes_checked
            report.assigned = dict(self.assigned)
            report.shuffled = dict(self.shuffled)
            report.rounds = dict(self.rounds)
            report.llm = dict(self.llm_sent)
            report.cluster = ray.get_runtime_context().gcs_address
            if self.relay is not None:
                self._sweep_relayed_nodes()
                report.relayed = {"nodes": len(self.relayed_nodes), **dataclasses.asdict(self.relay.moved)}
            return report
        finally:
            if self.relay is not None:
                with suppress(DataforgeError):  # (what is left there, the next build clears)
                    self.relay.clear()
            if connected:
                ray.shutdown()

    def _check_resources(self, nodes: list[dict[str, Any]]) -> None:
        """Refuse, before anything runs, a step whose tasks ask for more of a resource than any
        live node of the cluster has (Ray would wait for it for ever), naming its recipe line."""
        names = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}
        alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
        for ps in self.plan.steps:
            for key, wanted in ps.resources.items():
                most = max((float(r.get(names[key], 0)) for r in alive), default=0.0)
                if wanted > most:
                    raise self.plan.loaded.error(
                        f"its Ray tasks ask for {key} {wanted:g}, but no node of the cluster has that much "
                        f"(the most any node has: {most:g})",
                        step=ps.name,
                        key=f"resources.{key}",
                    )

    def _opened(self) -> None:
        import ray

        self._check_shared_folders(ray.nodes())

    def _check_shared_folders(self, nodes: list[dict[str, Any]], here: str | None = None) -> None:
        """Refuse, before anything runs, a cluster with a node other than the driver's (``here``:
        its node id, default this process's) that does not see the build folder the driver
        writes (a file the driver writes in its scratch folder, read back there by a task pinned
        to each such node) and the recipe's folder: tasks read and write both. A node that lacks
        only the build folder of a build with ``--out`` a store gets and gives its tasks' files
        through the store instead (``self.relay``, ``engine.relay``)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = here or ray.get_runtime_context().get_node_id()
        others = [n for n in nodes if n.get("Alive") and n.get("NodeID") != here]
        if not others:
            return  # one machine: the driver's folders are every task's
        self.driver_node = here
        scratch = self.out / SCRATCH
        scratch.mkdir(parents=True, exist_ok=True)
        probe = scratch / f"probe-{uuid.uuid4().hex}"
        token = uuid.uuid4().hex
        probe.write_text(token, encoding="utf-8")
        sees = ray.remote(num_cpus=0, max_retries=TASK_RETRIES)(_sees)
        try:
            asked = {
                n["NodeID"]: sees.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                ).remote(str(probe), token, str(self.plan.loaded.base_dir))
                for n in others
            }
            ready, _ = ray.wait(list(asked.values()), num_returns=len(asked), timeout=PROBE_SECONDS)
            answers = {node: ray.get(ref) if ref in ready else None for node, ref in asked.items()}
        finally:
            probe.unlink(missing_ok=True)
        relayed: list[str] = []
        for n in others:
            where = f"Ray node {n.get('NodeManagerAddress', '?')} ({n['NodeID'][:12]})"
            lacking = answers[n["NodeID"]]
            if lacking is None:
                raise DataforgeError(
                    f"{where} did not answer within {PROBE_SECONDS:g} s whether it sees the build folder {self.out}"
                )
            if set(lacking) == {"the build folder"} and self.store_uri:
                relayed.append(n["NodeID"])  # its tasks get and give their files through the store
            elif lacking:
                what, why = next(iter(lacking.items()))
                hint = {
                    "the build folder": "or build with --out s3://… or gs://…, whose files can pass through the store",
                    "the recipe's folder": "keep the recipe and the files it names there",
                }[what]
                raise DataforgeError(
                    f"{what} is not the same on {where} as on the driver ({why}): every node's tasks read "
                    f"it, so on a cluster of several machines it must be on a path every node mounts ({hint})"
                )
        self.nodes_checked = len(others) - len(relayed)
        if relayed:
            assert self.store_uri is not None
            logs = os.path.relpath(self.cache_path.parent / LOGS, self.out)  # a killed build's, kept
            self.relay, self.relayed_nodes = Relay(self.store_uri, self.out, here, logs), relayed

    def _sweep_relayed_nodes(self) -> None:
        """After a build through the relay: each such node's copy of the build's scratch folders
        removed (its tasks' batch folders, buckets, staged files: what the driver removes from its
        own as each step ends) and of its workers' answer logs (stored by the driver by now), by a
        task pinned to it; the rest of its copy is kept for the next build. Counted in the relay's
        ``Moved.swept`` (bytes)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        assert self.relay is not None
        sweep = ray.remote(num_cpus=0, max_retries=TASK_RETRIES)(_sweep)
        asked = [
            sweep.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
                self.relay.spec.root, [SCRATCH, STEP_SCRATCH, self.relay.logs]
            )
            for node in self.relayed_nodes
        ]
        ready, _ = ray.wait(asked, num_returns=len(asked), timeout=PROBE_SECONDS)
        self.relay.moved.swept += sum(ray.get(ref) for ref in ready)

    def _submit(self, fn: Callable[..., Done], options: dict[str, Any], args: tuple[Any, ...]) -> Any:
        """Submit a task (``_Task.remote``): ``fn(*args)`` through ``_relayed``, with what it needs
        of the build folder on a node that does not mount it (``Relay.needed``)."""
        import ray

        task = self._remote.options(**options) if options else self._remote
        if self.relay is None:
            return task.remote(fn, None, None, *args)
        named = [self._named_in(a) if isinstance(a, ray.ObjectRef) else a for a in args]
        return task.remote(fn, self.relay.spec, self.relay.needed(named), *args)

    def _named_in(self, ref: Any) -> list[str]:
        """The build folder's paths an object put in Ray's store names (read once per object)."""
        import ray

        key = ref.hex()
        if key not in self._named_refs:
            assert self.relay is not None
            self._named_refs[key] = sorted(named_paths(ray.get(ref), self.relay.spec.root))
        return self._named_refs[key]

    def _task(self, kind: str, step: str) -> Any:
        """The remote function of ``kind`` with the options of ``step``'s ``resources:``."""
        ps = self.plan.by_name.get(step)
        task = self.tasks[kind]
        return task.options(**ps.resources) if ps is not None and ps.resources else task

    def _requests(self) -> tuple[int, Counter[str]]:
        asked, failures = super()._requests()
        return asked + self.remote_asked, failures + self.remote_failures

    def _worker_step(self, ps: PlannedStep, whole: Iterable[str] = ()) -> WorkerStep:
        """What the tasks of ``ps`` need (given them through ``_settled``)."""
        return WorkerStep(
            fingerprint=ps.fingerprint,
            base_dir=self.plan.loaded.base_dir,
            scratch_dir=step_scratch(self.out, ps.name),
            cache_path=self.cache_path,
            whole={name: [str(f) for f in self._files(ps.inputs[name])] for name in whole},
        )

    def _settled(self, spec: WorkerStep, **changes: Any) -> WorkerStep:
        """``spec`` with ``changes``, for tasks about to run (none is running). On a cluster of
        several nodes, the answers the tasks logged are stored in the request cache first and
        the file checkpointed (``llm.cache.merge_logs``), and the tasks are told to read it
        anew (``ModelPool.at_epoch``)."""
        if self.driver_node:
            self._merge_answer_logs()
            self.cache_epoch += 1
            changes.update(driver_node=self.driver_node, cache_epoch=self.cache_epoch)
        return replace(spec, **changes)

    def _merge_answer_logs(self) -> None:
        super()._merge_answer_logs()
        if self.relay is not None:  # stored: not to be brought down again by a killed build's next
            self.relay.forget_logs()

    def _execute(self, ps: PlannedStep, progress: StepProgress) -> StepReport:
        try:
            return super()._execute(ps, progress)
        finally:  # the answers its tasks logged, in the request cache (failed or not)
            if self.driver_node:
                self._merge_answer_logs()

    def _files(self, ref: Ref) -> list[Path]:
        self.background.wait()  # the artifact may still be on its way to disk
        return self.store.output_files(ref.step, self.plan.by_name[ref.step].fingerprint, ref.output)

    def _parts(self, ref: Ref) -> tuple[list[Part], dict[str, pl.DataType]]:
        """A step output's batches as slices of its stored shards (``shard_slices``; an output of no
        rows: one empty slice, as ``Store.iter_batches`` gives one empty batch), and its column types."""
        table = Table(files=self._files(ref))
        return shard_slices(table, self.batch_rows) or [Part(str(table.files[0]), 0, 0)], table.schema

    def _mapper(self, name: str) -> Mapper:
        return lambda fn, jobs: self._map(name, fn, jobs)

    def _map(self, name: str, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> Iterator[Any]:
        """``Context.mapper`` on Ray for step ``name`` (or the export): a task per job, the
        values in job order."""
        import ray

        function, task = ray.put(fn), self._task("map", name)
        self.rounds[name] += 1
        return self._ordered(name, "map", lambda job: task.remote(name, function, job), list(jobs))

    def _ordered(self, name: str, kind: str, submit: Callable[[Any], Any], jobs: list[Any]) -> Iterator[Any]:
        """Each job's value, in job order, at most ``in_flight`` tasks running ahead; a task's
        error fails the step (the tasks still running are cancelled)."""
        import ray

        window: deque[Any] = deque()
        pending = iter(jobs)
        try:
            while True:
                while len(window) < (self.in_flight or 2):
                    job = next(pending, None)
                    if job is None:
                        break
                    window.append(submit(job))
                if not window:
                    return
                try:
                    done: Done = ray.get(window.popleft())
                except ray.exceptions.RayError as exc:  # e.g. a worker that died more often than retried
                    raise StepError(name, f"a Ray task failed: {type(exc).__name__}: {exc}") from exc
                if done.error is not None:
                    raise done.error
                if done.relayed and self.relay is not None:
                    self.relay.fetch(done.relayed)
                self.tasks_run[kind] += 1
                self.tasks_on[done.node] += 1
                most = self.assigned.setdefault(name, {})
                for resource, amount in done.assigned.items():
                    most[resource] = max(most.get(resource, 0.0), amount)
                self.remote_asked += done.asked
                self.remote_failures.update(done.failures)
                yield done.value
        finally:
            for ref in window:
                ray.cancel(ref, force=True)

    def _execute_streamed(self, ps: PlannedStep, progress: StepProgress) -> StepReport:
        import ray

        divided = divided_inputs(ps)
        per_input = {n: self._rows(ref) for n, ref in ps.inputs.items()}
        stage = self.out / SCRATCH / ps.name
        spec = self._worker_step(ps, [n for n in ps.inputs if n not in divided])
        spec = replace(spec, run_id=self.run_id, stage_dir=stage)
        jobs = []
        for name in divided:
            parts, schema = self._parts(ps.inputs[name])
            first = len(jobs)
            jobs.extend((name, part, schema, first + i) for i, part in enumerate(parts))
        planned = ray.put(ps)
        collect, task = self.tasks["collect"], self._task("rows", ps.name)  # (collecting: no model, no resources)

        def gathered(failed: dict[str, str], skip: frozenset[str], folder: Path) -> Iterator[ray_llm.Written]:
            now, where = self._settled(spec, failed=failed, skip=skip), str(folder)
            tasks = self._ordered(
                ps.name, "collect", lambda job: collect.remote(planned, now, *job, where, self.llm_mode), jobs
            )
            return progress.track(tasks, total=len(jobs), description="requests", unit="batches")

        def results() -> Iterator[Any]:  # (the gathering inside: its time is the step's)
            failed = self._gather_requests(ps, gathered, progress) if self._gathers(ps) else {}
            run = self._settled(spec, failed=failed)
            yield from self._ordered(ps.name, "rows", lambda job: task.remote(planned, run, *job), jobs)

        tracked = progress.track(results(), total=len(jobs), description="batches on Ray", unit="batches")
        try:
            return self._store_batches(ps, tracked, per_input)
        finally:  # what tasks that died, failed or were cancelled had begun to write
            for left in stage.glob(f"{STAGED_BATCH}*"):
                shutil.rmtree(left, ignore_errors=True)

    def _sends_through(self, ps: PlannedStep) -> bool:
        """Whether a model of ``ps`` is sent through ``ray.data.llm`` (``engine.ray_llm``)."""
        return any(ray_llm.sent_through(m, self.llm_mode) for m in ray_llm.step_models(ps))

    def _gathers(self, ps: PlannedStep) -> bool:
        """Whether ``ps``'s requests are gathered in rounds of tasks for ``ray.data.llm``."""
        return ps.stepdef.gathers_requests and self._sends_through(ps)

    @contextmanager
    def _answering(self, ps: PlannedStep, inputs: dict[str, pl.DataFrame], ctx: Context) -> Iterator[None]:
        """Around a step run whole in the driver: each of its calls to a model sent through
        ``ray.data.llm`` is answered there as it asks (the build's pool's ``elsewhere``), so the
        step runs once (``engine.ray_llm``)."""
        if not self._sends_through(ps):
            yield
            return
        answering = self._answering_of(ps, ctx.progress)

        def ask(spec: ModelSpec, requests: list[Request]) -> bool:
            sent = answering.ask(spec, requests)
            self.llm.failed.update(answering.done.failed)
            return sent

        self.llm.elsewhere = ask
        try:
            yield
        finally:
            self.llm.elsewhere = None
            self.llm.failed.clear()
            self.llm_sent[ps.name] = answering.close()

    def _answering_of(self, ps: PlannedStep, progress: StepProgress) -> ray_llm.Answering:
        """The answering of ``ps``'s requests through ``ray.data.llm``, its files in the step's scratch folder."""

        def track(rows: Iterable[Any], total: int) -> Iterator[Any]:
            return progress.track(rows, total=total, description="ray.data.llm", unit="requests")

        folder = step_scratch(self.out, ps.name) / "ray.data.llm"
        readable = self.relay.readable if self.relay is not None else None
        return ray_llm.Answering(self.cache_path, folder, self.llm_mode, self.llm_replicas or 1, track, readable)

    def _gather_requests(
        self,
        ps: PlannedStep,
        gathered: Callable[[dict[str, str], frozenset[str], Path], Iterable[ray_llm.Written]],
        progress: StepProgress,
    ) -> dict[str, str]:
        """The rounds of ``engine.ray_llm`` for a step run in tasks. ``gathered(failed, skip,
        folder)`` runs the step on every batch (or bucket) with a collecting model pool that
        answers the requests in ``failed`` as failed, and gives the files
        (``ray_llm.write_requests``, in ``folder``) of the requests each stopped at, but those in
        ``skip``; they are answered into the request cache through ``ray.data.llm`` (but a
        processor's that stopped); until a round finds none. Returns the requests that failed
        there (cache key → reason)."""
        answering = self._answering_of(ps, progress)
        done = answering.done
        try:
            for r in range(ray_llm.MAX_ROUNDS):
                files: dict[str, list[tuple[str, int, int]]] = {}
                for written in gathered(dict(done.failed), frozenset(done.skip), answering.folder / f"round-{r:02d}"):
                    for group, part in written.items():
                        files.setdefault(group, []).append(part)
                if not answering.send(files):
                    break
        finally:
            self.llm_sent[ps.name] = answering.close()
        return done.failed

    def _bucket_results(
        self,
        ps: PlannedStep,
        progress: StepProgress,
        name: str,
        buckets: int,
        bucket_of: np.ndarray | None,
        scratch: Path,
    ) -> Iterator[tuple[int, StepResult]]:
        import ray

        parts, schema = self._parts(ps.inputs[name])
        starts = np.concatenate([[0], np.cumsum([p.rows for p in parts])]).tolist()
        planned = ray.put(ps)
        shuffle = self.tasks["partition"]

        def partition(i: int) -> Any:
            chosen = None if bucket_of is None else bucket_of[starts[i] : starts[i + 1]]
            return shuffle.remote(planned, parts[i], schema, starts[i], buckets, chosen, str(scratch / f"in-{i:05d}"))

        written: dict[int, list[str]] = {}
        filed = self._ordered(ps.name, "partition", partition, list(range(len(parts))))
        for files in progress.track(filed, total=len(parts), description="partition on Ray", unit="batches"):
            for b, path in files.items():
                written.setdefault(b, []).append(path)
                self.shuffled[ps.name] += os.path.getsize(path)
        spec = self._worker_step(ps, [n for n in ps.inputs if n != name])
        grouped = tuple(group_outputs(ps) or ())
        order = sorted(written)
        failed: dict[str, str] = {}
        if self._gathers(ps):
            collect = self.tasks["collect bucket"]  # not the step's resources: a collecting pool loads no model

            def gathered(failed: dict[str, str], skip: frozenset[str], folder: Path) -> Iterator[ray_llm.Written]:
                now, where = self._settled(spec, failed=failed, skip=skip), str(folder)
                tasks = self._ordered(
                    ps.name,
                    "collect",
                    lambda b: collect.remote(planned, now, name, written[b], grouped, where, self.llm_mode),
                    order,
                )
                return progress.track(tasks, total=len(order), description="requests", unit="buckets")

            failed = self._gather_requests(ps, gathered, progress)
        spec = self._settled(spec, failed=failed)
        task = self._task("bucket", ps.name)
        results = self._ordered(
            ps.name, "bucket", lambda b: task.remote(planned, spec, name, written[b], grouped), order
        )
        tracked = progress.track(results, total=len(order), description="buckets on Ray", unit="buckets")
        yield from zip(order, tracked, strict=True)
