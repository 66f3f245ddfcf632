"""Engine overhead benchmark (issue: foundation). Prints the figures recorded in BENCHMARKS.md.

1. The demo recipe, fresh build: the engine's own time (planning, loading, storing, lineage)
   against the steps' own time; export time on its own line.
2. A fully cached rebuild of the demo, timed as a whole `dataforge build` process.
3. Lineage writes: seconds to record N events (one batch per step) for growing N.

Usage: .venv/bin/python bench/engine.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from dataforge.engine.events import events
from dataforge.engine.runner import build
from dataforge.lineage import LineageWriter, StepRow

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "gsm8k_reasoning.yaml"


def demo_overhead(repeat: int) -> None:
    rows = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            r = build(DEMO, Path(tmp) / "build", show_progress=False)
            rows.append((r.timings["steps"], r.engine_seconds, r.timings["export"], r.timings["plan"]))
    steps, engine, export, plan = (statistics.median(c) for c in zip(*rows, strict=True))
    print(
        f"demo fresh build (median of {repeat}): steps {steps:.3f}s, engine {engine:.3f}s "
        f"(plan {plan:.3f}s), export {export:.3f}s; engine/steps = {engine / steps:.1%}"
    )


def cached_rebuild(repeat: int) -> None:
    exe = str(Path(sys.executable).with_name("dataforge"))
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "build")
        subprocess.run([exe, "build", str(DEMO), "--out", out, "--quiet"], check=True, capture_output=True)
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            subprocess.run([exe, "build", str(DEMO), "--out", out, "--quiet"], check=True, capture_output=True)
            times.append(time.perf_counter() - t)
    print(f"fully cached rebuild, whole process (median of {repeat}): {statistics.median(times):.3f}s")


def lineage_scaling() -> None:
    for n in (10_000, 100_000, 1_000_000):
        ids = pl.Series([f"src:{i}" for i in range(n)])
        ev = events(
            ids,
            "dropped",
            "filter:min_length",
            score=pl.Series(range(n), dtype=pl.Float64),
            detail={"field": "text", "min": 10},
        )
        edges = pl.DataFrame(schema={"child_id": pl.String, "parent_id": pl.String, "relation": pl.String})
        tmp = Path(tempfile.mkdtemp())
        try:
            writer = LineageWriter(tmp)
            run = writer.new_run_id()
            writer.start_run(run, "bench", "0" * 64, "bench")
            t = time.perf_counter()
            writer.record_execution(run, StepRow("step", "", 1, "f" * 16, {}), [], ev, edges)
            dt = time.perf_counter() - t
        finally:
            shutil.rmtree(tmp)
        print(f"lineage: {n:>9,} events in {dt:.3f}s = {dt / n * 1e6:.2f} µs/event")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    demo_overhead(args.repeat)
    cached_rebuild(args.repeat)
    lineage_scaling()
