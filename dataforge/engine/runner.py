"""The runner: executes a plan in topological order, reusing artifacts whose fingerprint is stored.

For each step: cache hit → reuse the artifact (and its recorded decisions); otherwise run the
step function, check its result against its contract, store it atomically and record its
lineage. Afterwards, export the recipe's datasets. A failure marks the run ``failed`` with the
error and leaves every finished artifact in place for the next run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from rich.console import Console

from dataforge import __version__
from dataforge.engine.events import ACTIONS, concat_events
from dataforge.engine.plan import Plan, PlannedStep, plan_recipe
from dataforge.engine.progress import StepProgress, make_progress
from dataforge.engine.step import Context, StepResult
from dataforge.engine.store import Store
from dataforge.errors import DataforgeError, RecipeError, StepError
from dataforge.lineage import LineageWriter


@dataclass
class StepReport:
    name: str
    kind: str
    fingerprint: str
    rows_in: int
    rows_out: int
    seconds: float
    cache_hit: bool
    drops: dict[str, int] = field(default_factory=dict)


@dataclass
class BuildReport:
    run_id: str
    out: Path
    steps: list[StepReport]
    datasets: dict[str, dict[str, int]]

    @property
    def executed(self) -> list[str]:
        return [s.name for s in self.steps if not s.cache_hit]


def build(
    recipe_path: str | Path,
    out: str | Path = "build",
    force: Iterable[str] = (),
    console: Console | None = None,
    show_progress: bool = True,
) -> BuildReport:
    """Plan and run a recipe into ``out``; returns what ran, what was reused and what was exported."""
    plan = plan_recipe(recipe_path)
    return Runner(plan, Path(out), console=console, show_progress=show_progress).run(force)


class Runner:
    def __init__(self, plan: Plan, out: Path, console: Console | None = None, show_progress: bool = True):
        self.plan, self.out = plan, out
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.position = {s.name: i for i, s in enumerate(plan.steps)}

    def run(self, force: Iterable[str] = ()) -> BuildReport:
        force = set(force)
        unknown = sorted(force - set(self.plan.by_name))
        if unknown:
            raise RecipeError(
                f"--force names no step of this recipe: {', '.join(unknown)}", file=str(self.plan.loaded.path)
            )
        forced = self.plan.descendants(force)
        store = Store.open(self.out)
        lineage = LineageWriter(self.out)
        run_id = lineage.start_run(str(self.plan.loaded.path), self.plan.recipe_sha256, __version__)
        self.memory: dict[str, pl.DataFrame] = {}
        self.remaining = self.plan.consumers()
        reports: list[StepReport] = []
        current: PlannedStep | None = None
        try:
            with make_progress(self.console, self.show_progress) as progress:
                overall = progress.add_task("build", total=len(self.plan.steps))
                for ps in self.plan.steps:
                    current = ps
                    progress.update(overall, description=f"build · {ps.name}")
                    if ps.name not in forced and store.has(ps.name, ps.fingerprint):
                        reports.append(self._reuse(ps, store, lineage, run_id))
                    else:
                        reports.append(self._execute(ps, store, lineage, run_id, StepProgress(progress, ps.name)))
                    progress.advance(overall)
                current = None
                from dataforge.export import export_datasets

                progress.update(overall, description="build · export")
                exported = export_datasets(self.plan, store, lineage, run_id, reports)
        except BaseException as exc:
            message = str(exc) or type(exc).__name__
            if current is not None:
                lineage.record_step(
                    run_id,
                    current.name,
                    current.kind,
                    current.stepdef.version,
                    current.fingerprint,
                    current.config_json(),
                    0,
                    0,
                    0.0,
                    False,
                    "failed",
                    message,
                    self.position[current.name],
                )
            lineage.finish_run(run_id, "failed", message)
            lineage.close()
            raise
        lineage.finish_run(run_id, "succeeded")
        lineage.close()
        return BuildReport(run_id=run_id, out=self.out, steps=reports, datasets=exported)

    # -- one step ---------------------------------------------------------------------------

    def _reuse(self, ps: PlannedStep, store: Store, lineage: LineageWriter, run_id: str) -> StepReport:
        meta = store.meta(ps.name, ps.fingerprint)
        stored = store.stored_outputs(ps.name, ps.fingerprint)
        if not lineage.has_decisions(ps.name, ps.fingerprint):  # artifact stored, lineage write lost
            lineage.record_decisions(
                run_id,
                ps.name,
                ps.fingerprint,
                store.read_events(ps.name, ps.fingerprint),
                store.read_edges(ps.name, ps.fingerprint),
            )
        lineage.record_artifacts(
            run_id, ps.name, ps.fingerprint, [(o.output, str(o.path), o.rows, o.sha256) for o in stored]
        )
        rows_out = sum(o.rows for o in stored)
        lineage.record_step(
            run_id,
            ps.name,
            ps.kind,
            ps.stepdef.version,
            ps.fingerprint,
            ps.config_json(),
            meta["rows_in"],
            rows_out,
            0.0,
            True,
            position=self.position[ps.name],
        )
        for ref in ps.inputs.values():
            self._release(str(ref))
        return StepReport(ps.name, ps.kind, ps.fingerprint, meta["rows_in"], rows_out, 0.0, True, meta.get("drops", {}))

    def _execute(
        self, ps: PlannedStep, store: Store, lineage: LineageWriter, run_id: str, progress: StepProgress
    ) -> StepReport:
        inputs = {name: self._load(ref.step, ref.output, store) for name, ref in ps.inputs.items()}
        rows_in = sum(df.height for df in inputs.values())
        scratch = self.out / "scratch" / ps.name
        ctx = Context(
            step=ps.name,
            fingerprint=ps.fingerprint,
            base_dir=self.plan.loaded.base_dir,
            scratch_dir=scratch,
            progress=progress,
        )
        started = time.perf_counter()
        try:
            result = ps.stepdef.fn(inputs, ps.cfg, ctx)
        except StepError:
            raise
        except DataforgeError as exc:
            raise StepError(ps.name, str(exc)) from exc
        except Exception as exc:
            raise StepError(ps.name, f"{type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - started
        self._check_result(ps, result)
        events = concat_events(result.events)
        drops = _drop_counts(events)
        try:
            stored = store.write(ps.name, ps.fingerprint, result, {"rows_in": rows_in, "drops": drops, "kind": ps.kind})
        except OSError as exc:
            raise StepError(ps.name, f"storing its output failed: {exc}") from exc
        from dataforge.engine.events import concat_edges

        lineage.record_decisions(run_id, ps.name, ps.fingerprint, events, concat_edges(result.edges))
        lineage.record_artifacts(
            run_id, ps.name, ps.fingerprint, [(o.output, str(o.path), o.rows, o.sha256) for o in stored]
        )
        rows_out = sum(o.rows for o in stored)
        lineage.record_step(
            run_id,
            ps.name,
            ps.kind,
            ps.stepdef.version,
            ps.fingerprint,
            ps.config_json(),
            rows_in,
            rows_out,
            seconds,
            False,
            position=self.position[ps.name],
        )
        for ref in ps.inputs.values():
            self._release(str(ref))
        for name, df in result.tables.items():
            if self.remaining.get(f"{ps.name}.{name}"):
                self.memory[f"{ps.name}.{name}"] = df
        return StepReport(ps.name, ps.kind, ps.fingerprint, rows_in, rows_out, seconds, False, drops)

    def _check_result(self, ps: PlannedStep, result: StepResult) -> None:
        if not isinstance(result, StepResult):
            raise StepError(ps.name, f"returned {type(result).__name__}, not a StepResult")
        if set(result.tables) != set(ps.outputs):
            raise StepError(ps.name, f"returned outputs {sorted(result.tables)}, its plan says {sorted(ps.outputs)}")
        for name, df in result.tables.items():
            if "_id" not in df.columns or df.schema["_id"] != pl.String:
                raise StepError(ps.name, f"output '{name}' has no string '_id' column")
            if df.height and df["_id"].n_unique() != df.height:
                dup = df["_id"].filter(df["_id"].is_duplicated()).head(3).to_list()
                raise StepError(ps.name, f"output '{name}' repeats row ids, e.g. {dup}")
            declared = ps.columns.get(name)
            missing = [c for c in declared or [] if c not in df.columns]
            if missing:
                raise StepError(ps.name, f"output '{name}' lacks declared columns {missing}")
        for ev in result.events:
            bad = set(ev["action"].unique().to_list()) - set(ACTIONS)
            if bad:
                raise StepError(ps.name, f"events with unknown actions {sorted(bad)}")

    # -- tables in memory -------------------------------------------------------------------

    def _load(self, step: str, output: str, store: Store) -> pl.DataFrame:
        key = f"{step}.{output}"
        if key in self.memory:
            return self.memory[key]
        ps = self.plan.by_name[step]
        return store.read_table(step, ps.fingerprint, output)

    def _release(self, key: str) -> None:
        self.remaining[key] = self.remaining.get(key, 1) - 1
        if self.remaining[key] <= 0:
            self.memory.pop(key, None)


def _drop_counts(events: pl.DataFrame) -> dict[str, int]:
    dropped = events.filter(pl.col("action") == "dropped")
    if dropped.is_empty():
        return {}
    counts = dropped.group_by("reason").len().sort("reason")
    return dict(zip(counts["reason"].to_list(), counts["len"].to_list(), strict=True))
