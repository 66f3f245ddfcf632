"""The runner: executes a plan in topological order, reusing artifacts whose fingerprint is stored.

For each step: cache hit → reuse the artifact (and its recorded decisions); otherwise run the
step function, check its result against its contract, store it atomically and record its
lineage. Afterwards, export the recipe's datasets. A failure marks the run ``failed`` with the
error (``interrupted`` for Ctrl-C or SIGTERM) and leaves every finished artifact in place for the
next run. The whole build holds the output folder's ``BuildLock``; a stored artifact is reused
only after its files are checked against what the lineage recorded.

Storing artifacts and writing lineage happen on one background thread, in step order, while
the next step computes (its inputs are still in memory); the build waits for that thread
before it exports, and a failed write fails the build like a failed step.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pyarrow import ArrowException
from rich.console import Console
from rich.text import Text

from dataforge import __version__
from dataforge.engine import remote as remote_module
from dataforge.engine.calls import call_bucket, call_step, check_result, partition_batch, step_errors
from dataforge.engine.events import concat_edges, concat_events, reason_counts
from dataforge.engine.lock import BuildLock
from dataforge.engine.plan import Plan, PlannedStep, Ref, plan_recipe
from dataforge.engine.progress import StepProgress, make_progress
from dataforge.engine.remote import RemoteBuild, RemoteChangedError, Synced
from dataforge.engine.settings import chosen_setting
from dataforge.engine.step import Context, StepResult
from dataforge.engine.store import SCRATCH, STEP_SCRATCH, Store, WrittenBatch, is_uri, output_path, step_scratch
from dataforge.engine.streaming import (
    BUCKET,
    POSITION,
    AppendedFiles,
    batch_rows_setting,
    divided_inputs,
    group_buckets,
    group_outputs,
    keyed_streams,
    slices,
    streams,
)
from dataforge.engine.table import Mapper, Streamed, Table
from dataforge.errors import DataforgeError, RecipeError, StepError
from dataforge.lineage import LineageWriter, StepRow
from dataforge.llm.cache import merge_logs
from dataforge.llm.client import ModelPool
from dataforge.recipe import EXECUTORS


@dataclass
class StepReport:
    name: str
    kind: str
    fingerprint: str
    rows_in: int
    rows_out: int
    seconds: float
    cache_hit: bool
    drops: dict[str, int] = field(default_factory=dict)  # dropped rows by reason
    flags: dict[str, int] = field(default_factory=dict)  # flagged rows by reason
    inputs: dict[str, int] = field(default_factory=dict)  # rows per named input (data, eval, against …)
    outputs: dict[str, int] = field(default_factory=dict)  # rows per output (data, failed, matches …)
    failed_requests: int = 0  # model requests that failed (asked again by the next build)


@dataclass
class BuildReport:
    run_id: str
    out: Path
    steps: list[StepReport]
    datasets: dict[str, dict[str, int]]
    timings: dict[str, float] = field(default_factory=dict)  # plan, run, steps, export, report (seconds)
    tasks: dict[str, int] = field(default_factory=dict)  # tasks run on the executor by kind (none locally)
    shuffled: dict[str, int] = field(default_factory=dict)  # bytes a key step's shuffle wrote, by step (Ray)
    staged: dict[str, int] = field(default_factory=dict)  # bytes staged for jobs (texts, keys, vectors), by step
    rounds: dict[str, int] = field(default_factory=dict)  # rounds of map tasks a global step ran, by step (Ray)
    llm: dict[str, dict[str, Any]] = field(default_factory=dict)  # requests sent through ray.data.llm, by step
    cluster: str | None = None  # the Ray cluster's address (GCS) where the build ran on Ray
    nodes: dict[str, int] = field(default_factory=dict)  # tasks run by node of the cluster (none locally)
    nodes_checked: int = 0  # Ray nodes besides the driver's found to see the build and recipe folders
    node_answers: int = 0  # model answers of the tasks' logs stored in the request cache (``llm.cache``)
    relayed: dict[str, Any] = field(default_factory=dict)  # nodes not mounting the build folder, files moved
    assigned: dict[str, dict[str, float]] = field(default_factory=dict)  # per step, what Ray gave a task (most)
    published: str | None = None  # the object-store URI the build was published to (``engine.remote``)
    sent: Synced | None = None  # what publishing it copied

    @property
    def executed(self) -> list[str]:
        return [s.name for s in self.steps if not s.cache_hit]

    @property
    def engine_seconds(self) -> float:
        """Time the engine spent on its own work: planning, loading, storing, lineage (not the
        steps' functions, not writing the exported datasets)."""
        t = self.timings
        return t.get("plan", 0.0) + t.get("run", 0.0) - t.get("steps", 0.0) - t.get("export", 0.0)


def build(
    recipe_path: str | Path,
    out: str | Path = "build",
    force: Iterable[str] = (),
    console: Console | None = None,
    show_progress: bool = True,
    models: dict[str, dict[str, Any]] | None = None,
    settings: list[str] | None = None,
    wait: bool = False,
    verify: bool = False,
    batch_rows: int | None = None,
    executor: str | None = None,
    ray_llm: str | None = None,
    ray_llm_replicas: int | None = None,
) -> BuildReport:
    """Plan and run a recipe into ``out``; returns what ran, what was reused and what was exported.

    ``models`` replaces entries of the recipe's ``models:`` (e.g. a tiny local model in tests);
    ``settings`` (``STEP.KEY=VALUE``) replace step config keys. Another build writing to ``out``
    stops this one at once, or with ``wait`` this one waits for it. ``verify`` checks the sha256
    of every reused artifact and exported split, not only those whose size or mtime changed.
    ``batch_rows``: rows per batch of a streamed step (``engine.streaming``; default
    ``$DATAFORGE_BATCH_ROWS`` or 100,000; 0: every step on whole tables). It changes no output.
    ``executor``: ``local`` or ``ray`` (``engine.ray_runner``; default ``executor_setting``); it
    changes no output either. On Ray, ``ray_llm`` says which models' requests go through
    ``ray.data.llm`` and ``ray_llm_replicas`` with how many replicas (``engine.ray_llm``).

    ``out`` may be an object-store URI (``s3://bucket/prefix``, ``gs://…``): the build runs in
    its local staging folder, brought up to date from the store first, and is published to the
    store when it succeeds (``engine.remote``). A publish stopped by another machine's (under way,
    or finished since this build brought the store's down) raises ``RemoteChangedError``, or with
    ``wait`` waits ``PUBLISH_WAIT_SECONDS``, brings the store's build down and builds on it again
    (reusing every step it holds) until a publish goes through."""
    started = time.perf_counter()
    plan = plan_recipe(recipe_path, models, settings)
    planned = time.perf_counter() - started
    rows = batch_rows_setting(batch_rows)
    runner_class: Callable[..., Runner] = Runner
    on_ray = executor_setting(executor, plan) == "ray"
    if not on_ray and (ray_llm is not None or ray_llm_replicas is not None):
        raise DataforgeError("--ray-llm and --ray-llm-replicas are for the ray executor (--executor ray)")
    if on_ray:
        from dataforge.engine.ray_runner import RayRunner

        runner_class = functools.partial(RayRunner, llm=ray_llm, llm_replicas=ray_llm_replicas)

    def run(folder: Path, store: str | None = None) -> BuildReport:
        relay = {"store_uri": store} if on_ray and store else {}  # (``engine.relay``)
        runner = runner_class(
            plan, folder, console=console, show_progress=show_progress, verify=verify, batch_rows=rows, **relay
        )
        report = runner.run(force, wait=wait)
        report.timings["plan"] = planned
        return report

    if not is_uri(out):
        return run(Path(out))
    remote = RemoteBuild(str(out))
    bars = console if show_progress else None
    with remote.held(wait):
        while True:
            remote.pull(bars)
            remote.probe()
            report = run(remote.local, remote.uri)
            sent_at = time.perf_counter()
            try:
                report.sent = remote.publish(report.run_id, bars)
                break
            except RemoteChangedError as exc:
                if not wait:
                    raise
                told = console or Console(stderr=True, markup=False, emoji=False, highlight=False)
                told.print(
                    Text(
                        f"{exc.why}; nothing was sent. Waiting {remote_module.PUBLISH_WAIT_SECONDS:g} s, then bringing "
                        "down what the store holds and building on it (--wait) …"
                    ),
                    soft_wrap=True,
                )
                time.sleep(remote_module.PUBLISH_WAIT_SECONDS)
    report.timings["publish"] = time.perf_counter() - sent_at
    report.published = remote.uri
    return report


EXECUTOR_ENV = "DATAFORGE_EXECUTOR"


def executor_setting(value: str | None, plan: Plan) -> str:
    """Where a build's steps run: ``value`` (``--executor``) if given, else ``$DATAFORGE_EXECUTOR``,
    else the recipe's ``executor:`` (checked when the recipe loads), else ``local``."""
    chosen = chosen_setting(value, "--executor", EXECUTOR_ENV, EXECUTORS, "the executors are")
    return chosen or plan.loaded.recipe.executor or "local"


class _Background:
    """One worker thread; jobs run in submission order. ``wait`` re-raises the first failure."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataforge-store")
        self.pending: list[Future[Any]] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.pending.append(self.pool.submit(fn, *args))

    def wait(self) -> None:
        pending, self.pending = self.pending, []
        errors = []
        for f in pending:
            try:
                f.result()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class Runner:
    def __init__(
        self,
        plan: Plan,
        out: Path,
        console: Console | None = None,
        show_progress: bool = True,
        verify: bool = False,
        batch_rows: int = 0,
    ):
        self.plan, self.out, self.verify, self.batch_rows = plan, out, verify, batch_rows
        self.console = console or Console(stderr=True, markup=False, emoji=False, highlight=False)
        self.show_progress = show_progress
        self.position = {s.name: i for i, s in enumerate(plan.steps)}
        self.memory: dict[str, pl.DataFrame] = {}
        self.remaining: dict[str, int] = {}
        self.node_answers = 0  # answers of the tasks' logs merged (``_merge_answer_logs``)

    @property
    def cache_path(self) -> Path:
        """The build's request cache (``llm.cache``)."""
        return self.out / "cache" / "llm.sqlite"

    def _merge_answer_logs(self) -> None:
        """The answers the tasks of a build on a cluster of several nodes logged (this build's, or
        a killed one's) stored in the request cache (``llm.cache.merge_logs``)."""
        self.node_answers += merge_logs(self.cache_path)

    def run(self, force: Iterable[str] = (), wait: bool = False) -> BuildReport:
        force = set(force)
        unknown = sorted(force - set(self.plan.by_name))
        if unknown:
            raise RecipeError(
                f"--force names no step of this recipe: {', '.join(unknown)}", file=str(self.plan.loaded.path)
            )
        Store.check(self.out)
        lock = BuildLock.acquire(
            self.out,
            str(self.plan.loaded.path),
            wait=wait,
            on_wait=lambda holder: self.console.print(Text(f"waiting for {holder} to finish with {self.out} …")),
        )
        try:
            return self._run(force)
        finally:
            lock.release()

    def _run(self, force: set[str]) -> BuildReport:
        run_started = time.perf_counter()
        forced = self.plan.descendants(force)
        self.store = Store.open(self.out)
        self._opened()
        self.run_id = LineageWriter.new_run_id()
        self.remaining = self.plan.consumers()
        self._open_lineage()
        self.recorded = self.lineage.recorded_artifacts()  # what reuse is checked against
        self.background = _Background()
        self.reused: list[tuple[StepRow, list[tuple[str, str, int, str]]]] = []
        self._merge_answer_logs()  # those a killed build on a cluster left (``llm.cache``)
        self.llm = ModelPool(self.cache_path)
        reports: list[StepReport] = []
        current: PlannedStep | None = None
        try:
            with make_progress(self.console, self.show_progress) as progress:
                overall = progress.add_task("build", total=len(self.plan.steps))
                for ps in self.plan.steps:
                    current = ps
                    progress.update(overall, description=f"build · {ps.name}")
                    meta = None if ps.name in forced else self._reusable(ps)
                    if meta is not None:
                        reports.append(self._reuse(ps, meta))
                    else:
                        reports.append(self._execute(ps, StepProgress(progress, ps.name)))
                    progress.advance(overall)
                current = None
                self._flush_reused()
                from dataforge.export import export_datasets, write_reports

                progress.update(overall, description="build · export")
                export_started = time.perf_counter()
                write_reports(self.plan, self.store, self._load)
                exported = export_datasets(
                    self.plan,
                    self.store,
                    self._export_table,
                    reports,
                    self._record_export,
                    self.run_id,
                    self._load,
                    forced=forced,
                    recorded=lambda name, fp: self.recorded.get((f"export:{name}", fp), {}),
                    full_verify=self.verify,
                    warn=lambda message: self.console.print(Text(f"warning: {message}", style="yellow")),
                    mapper=self._mapper("export"),
                )
                export_seconds = time.perf_counter() - export_started
                self.background.wait()
        except BaseException as exc:
            self._fail(current, exc)
            raise
        finally:
            self.background.close()
            self.llm.close()
        self.lineage.finish_run(self.run_id, "succeeded")
        from dataforge.report import write_report

        report_started = time.perf_counter()
        write_report(self.out)  # after the run is recorded: the report shows this build
        timings = {
            "run": time.perf_counter() - run_started,
            "steps": sum(r.seconds for r in reports),
            "export": export_seconds,
            "report": time.perf_counter() - report_started,
        }
        return BuildReport(
            run_id=self.run_id,
            out=self.out,
            steps=reports,
            datasets=exported,
            timings=timings,
            staged=self._staged(),
            node_answers=self.node_answers,
        )

    def _staged(self) -> dict[str, int]:
        """Bytes each step (and the export) staged in its scratch folder for its jobs during this
        build (``staging.STAGED``, whose counts for this build's folders are taken)."""
        from dataforge.staging import STAGED

        scratch = str((self.out / STEP_SCRATCH).resolve())
        mine = [k for k in STAGED if os.path.dirname(k) == scratch]
        return {os.path.basename(k): STAGED.pop(k) for k in sorted(mine)}

    def _open_lineage(self) -> None:
        self.lineage = LineageWriter(self.out)
        for run_id in self.lineage.mark_interrupted():
            self.console.print(Text(f"run {run_id} ended without finishing (its process died): marked interrupted"))
        self.lineage.start_run(self.run_id, str(self.plan.loaded.path), self.plan.recipe_sha256, __version__)

    def _fail(self, current: PlannedStep | None, exc: BaseException) -> None:
        """Finish what the background thread holds (finished artifacts stay reusable), then
        record the failed step and run."""
        try:
            self._flush_reused()
            self.background.wait()
        except BaseException as bg_exc:  # the step's own error, if any, is the one to report
            exc = exc if current is not None else bg_exc
        interrupted = isinstance(exc, KeyboardInterrupt | SystemExit)
        status = "interrupted" if interrupted else "failed"
        message = str(exc) or type(exc).__name__
        if interrupted:
            message = "interrupted (Ctrl-C or a termination signal)"
        if current is not None:
            row = self._row(current, status=status, error=message)
            self.lineage.record_step(self.run_id, row)
        self.lineage.finish_run(self.run_id, status, message)

    def _row(self, ps: PlannedStep, **kw: Any) -> StepRow:
        return StepRow(
            ps.name,
            ps.kind,
            ps.stepdef.version,
            ps.fingerprint,
            ps.config_json(),
            position=self.position[ps.name],
            **kw,
        )

    # -- one step ---------------------------------------------------------------------------

    def _reusable(self, ps: PlannedStep) -> dict[str, Any] | None:
        """The stored artifact's ``meta.json`` if it can be reused: it exists, its files are the
        ones the lineage recorded (a changed or damaged one is reported by name and rebuilt), and
        none of its model requests failed (those are asked again); else None."""
        if not self.store.has(ps.name, ps.fingerprint):
            return None
        recorded = self.recorded.get((ps.name, ps.fingerprint), {})
        meta, problems = self.store.verify(ps.name, ps.fingerprint, recorded, full=self.verify)
        for problem in problems:
            self.console.print(Text(f"step '{ps.name}': {problem}; re-executing it", style="yellow"))
        if meta is None or problems:
            return None
        failed = meta.get("failed_requests", 0)
        if failed:
            self.console.print(
                Text(f"step '{ps.name}': {failed:,} model requests failed last time; running it again", style="yellow")
            )
            return None
        return meta

    def _reuse(self, ps: PlannedStep, meta: dict[str, Any]) -> StepReport:
        stored = self.store.stored_outputs(ps.name, ps.fingerprint, meta)
        rows_out = sum(o.rows for o in stored)
        row = self._row(ps, rows_in=meta["rows_in"], rows_out=rows_out, cache_hit=True)
        counts = {
            "flags": meta.get("flags", {}),
            "inputs": meta.get("inputs", {}),
            "outputs": {o.output: o.rows for o in stored},
        }
        artifacts = [(o.output, str(o.path), o.rows, o.sha256) for o in stored]
        self.reused.append((row, artifacts))  # recorded with the next executed step or the export
        for ref in ps.inputs.values():
            self._release(str(ref))
        return StepReport(
            ps.name, ps.kind, ps.fingerprint, meta["rows_in"], rows_out, 0.0, True, meta.get("drops", {}), **counts
        )

    def _flush_reused(self) -> None:
        """Record the reused steps not yet in the lineage, in one transaction (a cached rebuild
        of twelve steps paid twelve database opens)."""
        if self.reused:
            batch, self.reused = self.reused, []
            self.background.submit(self._record_reuse, batch)

    def _record_reuse(self, batch: list[tuple[StepRow, list[tuple[str, str, int, str]]]]) -> None:
        for row, _ in batch:  # an artifact stored before decisions were shards gets them
            self.store.upgrade_decisions(row.step, row.fingerprint, self.run_id)
        self.lineage.record_reuse(self.run_id, batch)

    def _requests(self) -> tuple[int, Counter[str]]:
        """Model requests of this build so far: (asked, failures by reason)."""
        return self.llm.failure_counts()

    def _mapper(self, name: str) -> Mapper | None:
        """Where the divided work of step ``name`` (or of the export: its files and its audit)
        runs: here, in order (None); the Ray runner's tasks."""
        return None

    def _context(self, ps: PlannedStep, progress: StepProgress) -> Context:
        return Context(
            step=ps.name,
            fingerprint=ps.fingerprint,
            base_dir=self.plan.loaded.base_dir,
            scratch_dir=step_scratch(self.out, ps.name),
            progress=progress,
            llm=self.llm,
            mapper=self._mapper(ps.name),
        )

    def _execute(self, ps: PlannedStep, progress: StepProgress) -> StepReport:
        self._flush_reused()  # the lineage records the steps in build order
        source_batches = getattr(ps.stepdef.fn, "batches", None) if ps.stepdef.is_source and self.batch_rows else None
        if source_batches is not None:
            ctx = self._context(ps, progress)
            with step_errors(ps.name):
                batches = source_batches(ps.cfg, ctx, self.batch_rows)  # None: read it whole
            if batches is not None:
                return self._execute_source_batches(ps, progress, batches)
        if keyed_streams(ps, self.batch_rows):
            (name,) = divided_inputs(ps)
            if self._rows(ps.inputs[name]) > self.batch_rows:
                return self._execute_keyed(ps, progress, name)
        if ps.stepdef.out_of_core and self.batch_rows:
            if max((self._rows(ref) for ref in ps.inputs.values()), default=0) > self.batch_rows:
                return self._execute_out_of_core(ps, progress)
        if streams(ps, self.batch_rows):
            largest = max((self._rows(ps.inputs[n]) for n in divided_inputs(ps)), default=0)
            if largest > self.batch_rows:  # else one batch is the whole table: run it as one
                return self._execute_streamed(ps, progress)
        inputs = {name: self._load(ref) for name, ref in ps.inputs.items()}
        rows_in = sum(df.height for df in inputs.values())
        ctx = self._context(ps, progress)
        started = time.perf_counter()
        asked_before, failed_before = self._requests()
        with self._answering(ps, inputs, ctx):
            result = call_step(ps, inputs, ctx)
        seconds = time.perf_counter() - started
        asked_after, failed_after = self._requests()
        failures = failed_after - failed_before
        self._check_failures(ps, asked_after - asked_before, failures)
        events, edges = concat_events(result.events), concat_edges(result.edges)
        drops, flags = reason_counts(events, "dropped"), reason_counts(events, "flagged")
        rows_out = sum(df.height for df in result.tables.values())
        row = self._row(ps, rows_in=rows_in, rows_out=rows_out, seconds=seconds)
        per_input = {name: df.height for name, df in inputs.items()}
        meta = {"flags": flags, "inputs": per_input}
        if failures:
            meta["failed_requests"] = sum(failures.values())
        self.background.submit(self._persist, ps, result, events, edges, row, drops, meta)
        for ref in ps.inputs.values():
            self._release(str(ref))
        for name, df in result.tables.items():
            if self.remaining.get(f"{ps.name}.{name}"):
                self.memory[f"{ps.name}.{name}"] = df
        outputs = {name: df.height for name, df in result.tables.items()}
        return _executed(ps, row, drops, flags, per_input, outputs, failures)

    def _opened(self) -> None:
        """Called once the build folder is open, before any step runs: nothing to check here (the
        Ray runner checks that every node sees the folders its tasks use)."""

    @contextmanager
    def _answering(self, ps: PlannedStep, inputs: dict[str, pl.DataFrame], ctx: Context) -> Iterator[None]:
        """Around a step run whole here: nothing (the Ray runner has its model requests answered
        through ``ray.data.llm`` as it makes them, ``RayRunner._answering``)."""
        yield

    def _execute_streamed(self, ps: PlannedStep, progress: StepProgress) -> StepReport:
        """A ``rows`` step batch by batch (``engine.streaming``): each divided input in row order,
        ``batch_rows`` rows at a time, the others whole; each batch's outputs and decisions go
        to the artifact as they are made, so no output is held whole."""
        divided = divided_inputs(ps)
        whole, per_input = self._undivided(ps, divided)
        ctx = self._context(ps, progress)

        def results() -> Iterator[StepResult]:
            for name in divided:
                batches = progress.track(
                    self._batches(ps.inputs[name]),
                    total=per_input[name],
                    description=f"{name}, {self.batch_rows:,} rows a batch",
                    unit="rows",
                    size=len,
                )
                for batch in batches:
                    yield call_step(ps, {**whole, name: batch}, ctx)

        return self._store_batches(ps, results(), per_input)

    def _execute_out_of_core(self, ps: PlannedStep, progress: StepProgress) -> StepReport:
        """An ``out_of_core`` global step on inputs larger than a batch: it reads them as
        ``Table``s over their shards (or frames in memory) and its ``Streamed`` outputs are
        written batch by batch (``engine.table``), so neither is held whole here."""
        tables = {name: self._table(ref) for name, ref in ps.inputs.items()}
        per_input = {name: t.height for name, t in tables.items()}
        ctx = self._context(ps, progress)

        def results() -> Iterator[StepResult]:
            with step_errors(ps.name):
                result = ps.stepdef.fn(tables, ps.cfg, ctx)
            heads = {o: t.empty if isinstance(t, Streamed) else t for o, t in result.tables.items()}
            first = StepResult(heads, result.events, result.edges)
            check_result(ps, first, tables if ps.stepdef.inputs is None else None)
            yield first
            for output, table in result.tables.items():
                if not isinstance(table, Streamed):
                    continue
                with step_errors(ps.name):
                    for batch in progress.track(table.batches(), description=f"writing {output}", unit="batches"):
                        part = StepResult({output: batch})
                        check_result(ps, part, partial=True)
                        yield part

        return self._store_batches(ps, results(), per_input)

    def _table(self, ref: Ref) -> Table:
        """A step output as a ``Table``: the frame in memory, else its stored shards."""
        key = str(ref)
        if key in self.memory:
            return Table(frame=self.memory[key], batch_rows=self.batch_rows)
        self.background.wait()  # the artifact may still be on its way to disk
        fingerprint = self.plan.by_name[ref.step].fingerprint
        return Table(files=self.store.output_files(ref.step, fingerprint, ref.output), batch_rows=self.batch_rows)

    def _undivided(self, ps: PlannedStep, divided: list[str]) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
        """The inputs a streamed step gets whole (loaded), and the rows of every input."""
        whole = {name: self._load(ref) for name, ref in ps.inputs.items() if name not in divided}
        per_input = {n: (whole[n].height if n in whole else self._rows(ref)) for n, ref in ps.inputs.items()}
        return whole, per_input

    def _execute_source_batches(
        self, ps: PlannedStep, progress: StepProgress, batches: Iterator[StepResult]
    ) -> StepReport:
        """A source that reads its rows batch by batch (its function's ``batches``)."""

        def results() -> Iterator[StepResult]:
            rows = lambda r: r.tables["data"].height  # noqa: E731
            tracked = progress.track(batches, description=f"{self.batch_rows:,} rows a batch", unit="rows", size=rows)
            with step_errors(ps.name):
                for result in tracked:
                    check_result(ps, result)
                    yield result

        return self._store_batches(ps, results(), {})

    def _execute_keyed(self, ps: PlannedStep, progress: StepProgress, name: str) -> StepReport:
        """A ``key`` step run bucket by bucket on an input larger than a batch (see
        ``keyed_streams``). Its rows go to buckets on disk with their keys (which the step is
        given as ``ctx.partition_keys`` instead of computing them again): hashed into about one
        bucket per batch, or — when it has outputs made group by group (``group_outputs``) —
        whole groups in order of their first row, about a batch of rows a bucket (``group_buckets``,
        after a pass that hashes every key). The step runs on each bucket (every row of a key
        meets there). Output rows that are rows of the input are filed by window of input
        positions and each window is written back in input order; outputs made group by group are
        written bucket after bucket, which is their order in a whole call. Every row is written
        and read twice, in one file per bucket and one per window (``AppendedFiles``), whatever
        the number of batches."""
        per_input = {n: self._rows(ref) for n, ref in ps.inputs.items()}
        grouped = tuple(group_outputs(ps) or ())
        scratch = self.out / SCRATCH / ps.name / f"buckets-{self.run_id}"
        key_of = ps.stepdef.partition_key
        assert key_of is not None

        def results() -> Iterator[StepResult]:
            bucket_of = None
            if grouped:
                hashed = self._batches(ps.inputs[name])
                hashed = progress.track(hashed, total=per_input[name], description="groups", unit="rows", size=len)
                bucket_of = group_buckets((key_of(ps.cfg, batch) for batch in hashed), self.batch_rows)
                buckets = int(bucket_of.max()) + 1 if len(bucket_of) else 0
            else:
                buckets = -(-per_input[name] // self.batch_rows)
            # each output's rows: by window of input positions, or (group outputs) by bucket
            outbox = {o: AppendedFiles(scratch / "out" / o) for o in ps.outputs}
            for b, result in self._bucket_results(ps, progress, name, buckets, bucket_of, scratch):
                for output, table in result.tables.items():
                    if output in grouped:
                        outbox[output].append(b, table)
                        continue
                    windowed = table.with_columns((pl.col(POSITION) // self.batch_rows).alias(BUCKET))
                    for (w,), part in windowed.partition_by(BUCKET, as_dict=True, include_key=False).items():
                        outbox[output].append(w, part)
                # its decisions, and its outputs' columns (an output that gets no row keeps them)
                heads = {o: t.head(0).drop(POSITION, strict=False) for o, t in result.tables.items()}
                yield StepResult(heads, result.events, result.edges)
            for files in outbox.values():
                files.close()
            for output in ps.outputs:
                for n in range(buckets if output in grouped else -(-per_input[name] // self.batch_rows)):
                    part = outbox[output].take(n)
                    if part is not None:
                        yield StepResult({output: part if output in grouped else part.sort(POSITION).drop(POSITION)})

        try:
            return self._store_batches(ps, results(), per_input)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            with suppress(OSError):  # the step's scratch folder, when nothing else is in it
                scratch.parent.rmdir()

    def _bucket_results(
        self,
        ps: PlannedStep,
        progress: StepProgress,
        name: str,
        buckets: int,
        bucket_of: np.ndarray | None,
        scratch: Path,
    ) -> Iterator[tuple[int, StepResult]]:
        """Key step ``ps`` on each bucket of its divided input ``name``, in bucket order: the
        input's rows filed to ``buckets`` buckets (``calls.partition_batch``; ``bucket_of``: each
        row's bucket, where set) in one file a bucket, then the step on each (``calls.call_bucket``)."""
        whole, _ = self._undivided(ps, [name])
        ctx = self._context(ps, progress)
        grouped = group_outputs(ps) or ()
        inbox = AppendedFiles(scratch / "in")
        start = 0
        ref = ps.inputs[name]
        batches = progress.track(
            self._batches(ref), total=self._rows(ref), description="partition", unit="rows", size=len
        )
        for batch in batches:
            chosen = None if bucket_of is None else bucket_of[start : start + batch.height]
            for b, part in partition_batch(ps, batch, start, buckets, chosen).items():
                inbox.append(b, part)
            start += batch.height
        inbox.close()
        for b in progress.track(range(buckets), description="buckets", unit="buckets"):
            bucket = inbox.take(b)
            if bucket is not None:
                yield b, call_bucket(ps, name, bucket, whole, ctx, grouped)

    def _store_batches(
        self, ps: PlannedStep, results: Iterator[StepResult | WrittenBatch], per_input: dict[str, int]
    ) -> StepReport:
        """Append each batch's result to the step's artifact as it comes (the batches' time is
        the step's), or the files a worker wrote for it, then its ``meta.json`` and lineage record."""
        asked_before, failed_before = self._requests()
        seconds = 0.0
        drops: Counter[str] = Counter()
        flags: Counter[str] = Counter()
        outputs: Counter[str] = Counter()
        try:
            with self.store.writer(ps.name, ps.fingerprint, self.run_id) as writer:
                while True:
                    started = time.perf_counter()
                    result = next(results, None)
                    seconds += time.perf_counter() - started
                    if result is None:
                        break
                    if isinstance(result, WrittenBatch):  # written by a worker (engine.ray_runner)
                        writer.adopt(result)
                        batch = result
                    else:
                        batch = writer.add(result)
                    drops.update(batch.drops)
                    flags.update(batch.flags)
                    outputs.update(batch.rows)
                asked_after, failed_after = self._requests()
                failures = failed_after - failed_before
                self._check_failures(ps, asked_after - asked_before, failures)
                rows_in = sum(per_input.values())
                meta: dict[str, Any] = {
                    "rows_in": rows_in,
                    "drops": dict(sorted(drops.items())),
                    "kind": ps.kind,
                    "flags": dict(sorted(flags.items())),
                    "inputs": per_input,
                }
                if failures:
                    meta["failed_requests"] = sum(failures.values())
                stored = writer.finish(meta)
        except OSError as exc:
            raise self._storing_failed(ps, exc) from exc
        rows_out = sum(outputs.values())
        row = self._row(ps, rows_in=rows_in, rows_out=rows_out, seconds=seconds)
        artifacts = [(o.output, str(o.path), o.rows, o.sha256) for o in stored]
        self.background.submit(self.lineage.record_execution, self.run_id, row, artifacts)
        for ref in ps.inputs.values():
            self._release(str(ref))
        return _executed(ps, row, meta["drops"], meta["flags"], per_input, {o.output: o.rows for o in stored}, failures)

    def _persist(
        self,
        ps: PlannedStep,
        result: StepResult,
        events: pl.DataFrame,
        edges: pl.DataFrame,
        row: StepRow,
        drops: dict[str, int],
        meta: dict[str, Any],
    ) -> None:
        try:
            stored = self.store.write(
                ps.name,
                ps.fingerprint,
                StepResult(result.tables, [events], [edges]),
                self.run_id,
                {"rows_in": row.rows_in, "drops": drops, "kind": ps.kind, **meta},
            )
        except OSError as exc:
            raise self._storing_failed(ps, exc) from exc
        artifacts = [(o.output, str(o.path), o.rows, o.sha256) for o in stored]
        self.lineage.record_execution(self.run_id, row, artifacts)

    def _storing_failed(self, ps: PlannedStep, exc: OSError) -> StepError:
        where = self.store.artifact_dir(ps.name, ps.fingerprint)
        return StepError(ps.name, f"storing its output failed: {exc}; nothing was stored at {where}")

    def _check_failures(self, ps: PlannedStep, asked: int, failures: Counter[str]) -> None:
        """Model requests of this step that failed: above the step's ``max_failure_rate`` the
        step fails with the counts; below it they are reported, and the stored artifact is
        marked so that the next build runs the step again (answered requests come from the
        request cache; only the failed ones are sent again)."""
        failed = sum(failures.values())
        if not failed:
            return
        reasons = ", ".join(f"{reason}: {n:,}" for reason, n in sorted(failures.items()))
        rate = getattr(ps.cfg, "max_failure_rate", None)
        if rate is not None and failed / max(asked, 1) > rate:
            raise StepError(
                ps.name,
                f"{failed:,} of {asked:,} model requests failed ({reasons}), above max_failure_rate {rate:g}; "
                "the answered ones are cached, so a rerun sends only the failed ones",
            )
        self.console.print(
            Text(
                f"step '{ps.name}': {failed:,} of {asked:,} model requests failed ({reasons}); "
                "the next build asks again",
                style="yellow",
            )
        )

    # -- tables in memory -------------------------------------------------------------------

    def _load(self, ref: Ref) -> pl.DataFrame:
        key = str(ref)
        if key in self.memory:
            return self.memory[key]
        self.background.wait()  # the artifact may still be on its way to disk
        fingerprint = self.plan.by_name[ref.step].fingerprint
        try:
            return self.store.read_table(ref.step, fingerprint, ref.output)
        except (OSError, pl.exceptions.PolarsError) as exc:
            self.store.forget(ref.step, fingerprint)  # the next build executes the step again
            path = output_path(self.store.artifact_dir(ref.step, fingerprint), ref.output)
            raise StepError(
                ref.step, f"its stored output {path} cannot be read ({exc}); it is rebuilt on the next build"
            ) from None

    def _rows(self, ref: Ref) -> int:
        """How many rows a step output has (in memory, or as its stored ``meta.json`` says)."""
        key = str(ref)
        if key in self.memory:
            return self.memory[key].height
        self.background.wait()
        fingerprint = self.plan.by_name[ref.step].fingerprint
        return int(self.store.meta(ref.step, fingerprint)["outputs"][ref.output]["rows"])

    def _batches(self, ref: Ref) -> Iterator[pl.DataFrame]:
        """A step output in row order, ``batch_rows`` rows at a time: sliced from memory, or read
        from its stored shards (a damaged one fails the build as in ``_load``)."""
        key = str(ref)
        if key in self.memory:
            yield from slices(self.memory[key], self.batch_rows)
            return
        self.background.wait()
        fingerprint = self.plan.by_name[ref.step].fingerprint
        try:
            yield from self.store.iter_batches(ref.step, fingerprint, ref.output, self.batch_rows)
        except (OSError, pl.exceptions.PolarsError, ArrowException) as exc:
            self.store.forget(ref.step, fingerprint)
            path = output_path(self.store.artifact_dir(ref.step, fingerprint), ref.output)
            raise StepError(
                ref.step, f"its stored output {path} cannot be read ({exc}); it is rebuilt on the next build"
            ) from None

    def _export_table(self, ref: Ref) -> Table:
        table = self._table(ref)
        self._release(str(ref))
        return table

    def _record_export(self, name: str, fingerprint: str, artifacts: list[tuple[str, str, int, str]]) -> None:
        def record() -> None:  # on the background thread: after the artifacts queued before it
            self.lineage.record_artifacts(self.run_id, f"export:{name}", fingerprint, artifacts)

        self.background.submit(record)

    def _release(self, key: str) -> None:
        self.remaining[key] = self.remaining.get(key, 1) - 1
        if self.remaining[key] <= 0:
            self.memory.pop(key, None)


def _executed(
    ps: PlannedStep,
    row: StepRow,
    drops: dict[str, int],
    flags: dict[str, int],
    per_input: dict[str, int],
    outputs: dict[str, int],
    failures: Counter[str],
) -> StepReport:
    """The report of a step that executed (its ``steps`` row holds rows in and out, seconds)."""
    return StepReport(
        ps.name,
        ps.kind,
        ps.fingerprint,
        row.rows_in,
        row.rows_out,
        row.seconds,
        False,
        drops,
        flags,
        per_input,
        outputs,
        sum(failures.values()),
    )
