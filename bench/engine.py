"""Engine overhead benchmark (issue: foundation). Prints the figures recorded in BENCHMARKS.md.

1. The demo recipe, fresh build: the engine's own time (planning, loading, storing, lineage)
   against the steps' own time; export time on its own line.
2. A fully cached rebuild of the demo, timed as a whole `dataforge build` process.
3. Lineage at growing N events in one step: the shards written, the step's database
   transaction, one row looked up through ``latest_events``.

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

from dataforge.engine.events import EDGE_SCHEMA, events, write_decisions
from dataforge.engine.runner import build
from dataforge.lineage import LineageWriter, StepRow, open_read

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
    """Per N: the step's decisions written as shards (what the store does), the database
    transaction that records the step (independent of N), and one ``why``-style lookup of a
    row through the ``latest_events`` view of a read connection."""
    for n in (10_000, 100_000, 1_000_000):
        ids = pl.Series([f"src:{i}" for i in range(n)])
        ev = events(
            ids,
            "dropped",
            "filter:min_length",
            score=pl.Series(range(n), dtype=pl.Float64),
            detail={"field": "text", "min": 10},
        )
        edges = pl.DataFrame(schema=EDGE_SCHEMA)
        tmp = Path(tempfile.mkdtemp())
        try:
            writer = LineageWriter(tmp)
            run, fingerprint = writer.new_run_id(), "f" * 16
            writer.start_run(run, "bench", "0" * 64, "bench")
            t = time.perf_counter()
            write_decisions(tmp / "artifacts" / "step" / fingerprint, run, "step", fingerprint, ev, edges)
            shards = time.perf_counter() - t
            t = time.perf_counter()
            writer.record_execution(run, StepRow("step", "filter", 1, fingerprint, {}), [])
            record = time.perf_counter() - t
            writer.finish_run(run, "succeeded")
            con = open_read(tmp)
            t = time.perf_counter()
            found = con.execute("SELECT reason FROM latest_events WHERE row_id = ?", [f"src:{n // 2}"]).fetchall()
            lookup = time.perf_counter() - t
            assert found == [("filter:min_length",)]
            con.close()
        finally:
            shutil.rmtree(tmp)
        print(
            f"lineage: {n:>9,} events: shards written in {shards:.3f}s = {shards / n * 1e6:.2f} µs/event; "
            f"step recorded in {record:.3f}s; one row looked up in {lookup:.3f}s"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    demo_overhead(args.repeat)
    cached_rebuild(args.repeat)
    lineage_scaling()
