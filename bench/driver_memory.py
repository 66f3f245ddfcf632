"""The driver's memory against the size of the data (the Ray issue: no step collects a whole
dataset on the driver). A build of GSM8K rows, each with ``--payload-kb`` of incompressible
``context`` (hex of random bytes), through the streaming test recipe (source → normalize → exact
dedup → MinHash dedup → group + cluster split → audit → format → export), at two sizes, from a
parquet and a CSV file, by the local executor in batches, by the Ray executor (a local instance of
2 CPUs) in batches, and by the local executor on whole tables (the control: it holds the data).

Measured in a child process per build: its anonymous memory (``RssAnon``: what the process itself
holds, not the files it maps nor Ray's shared object store), sampled every 5 ms, as growth over
its level just before the build, overall and while each step ran. A driver that holds no table
grows by the same at both sizes; one that holds the data grows with it.

Usage: .venv/bin/python bench/driver_memory.py [--rows 3000,6000] [--formats parquet,csv]
       [--executors local,ray,whole] [--payload-kb 80] [--batch-rows 400]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO / "recipes" / "data" / "gsm8k"

sys.path.insert(0, str(REPO))
from tests.engine.test_ray import BOUNDED_RECIPE  # noqa: E402  (the streaming tests' recipe, the one they bound)

RECIPE = BOUNDED_RECIPE.replace("path: rows.parquet", "path: rows.FORMAT")


def _anon() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon"))


def child(recipe: str, out: str, batch_rows: int, executor: str) -> None:
    """One build; prints JSON: the growth overall and per step (bytes), and seconds."""
    import duckdb  # noqa: F401  imported before the baseline, as the build imports them
    import matplotlib.pyplot  # noqa: F401
    import polars  # noqa: F401
    import pyarrow  # noqa: F401

    from dataforge.engine import runner

    if executor == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    current, peaks, done = ["engine"], {}, threading.Event()
    for name in ("_execute",):
        real = getattr(runner.Runner, name)

        def wrapped(self, ps, *a, _real=real, **k):  # type: ignore[no-untyped-def]
            current[0] = ps.name
            try:
                return _real(self, ps, *a, **k)
            finally:
                current[0] = "engine"

        setattr(runner.Runner, name, wrapped)

    def sample() -> None:
        while not done.is_set():
            key = current[0]
            peaks[key] = max(peaks.get(key, 0), _anon())
            time.sleep(0.005)

    before = _anon()
    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    local = "local" if executor == "whole" else executor
    runner.build(recipe, out, show_progress=False, batch_rows=0 if executor == "whole" else batch_rows, executor=local)
    seconds = time.perf_counter() - started
    done.set()
    growth = {k: v - before for k, v in peaks.items()}
    print(json.dumps({"growth": max(growth.values()), "steps": growth, "seconds": seconds, "before": before}))


def make_rows(folder: Path, rows: int, payload_kb: int, formats: list[str]) -> int:
    """The rows, written in each format; returns the payload's bytes."""
    import numpy as np
    import polars as pl

    gsm = pl.read_ndjson(GSM8K / "train.jsonl")
    rng = np.random.default_rng(rows)
    df = (
        pl.concat([gsm] * (rows // gsm.height + 1))
        .head(rows)
        .with_columns(pl.col("question").alias("group"), pl.format("k{}", pl.int_range(pl.len())).alias("key"))
        .with_columns(pl.Series("context", [rng.bytes(payload_kb * 500).hex() for _ in range(rows)]))
    )
    if "parquet" in formats:
        df.write_parquet(folder / "rows.parquet", row_group_size=400)
    if "csv" in formats:
        df.write_csv(folder / "rows.csv")
    return rows * payload_kb * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="3000,6000", help="sizes, comma-separated")
    ap.add_argument("--formats", default="parquet,csv")
    ap.add_argument("--executors", default="local,ray,whole", help="local (batches), ray (batches), whole (local)")
    ap.add_argument("--payload-kb", type=int, default=80)
    ap.add_argument("--batch-rows", type=int, default=400)
    ap.add_argument("--child", nargs=4, metavar=("RECIPE", "OUT", "BATCH_ROWS", "EXECUTOR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        recipe, out, batch_rows, executor = args.child
        child(recipe, out, int(batch_rows), executor)
        return
    formats = args.formats.split(",")
    print(f"driver memory: payload {args.payload_kb} kB a row, batches of {args.batch_rows}; growth in MB")
    for fmt in formats:
        for executor in args.executors.split(","):
            line = []
            for n in (int(x) for x in args.rows.split(",")):
                with tempfile.TemporaryDirectory() as tmp:
                    folder = Path(tmp)
                    payload = make_rows(folder, n, args.payload_kb, [fmt])
                    (folder / "recipe.yaml").write_text(RECIPE.replace("FORMAT", fmt))
                    run = subprocess.run(
                        [sys.executable, __file__, "--child", str(folder / "recipe.yaml"), str(folder / "out"),
                         str(args.batch_rows), executor],
                        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False,
                    )  # fmt: skip
                    if run.returncode != 0:
                        print(f"  {fmt} {executor} {n}: failed: {run.stderr[-600:]}")
                        continue
                    fig = json.loads(run.stdout.strip().splitlines()[-1])
                    worst = max(fig["steps"], key=fig["steps"].get)
                    line.append(
                        f"{n:,} rows ({payload / 1e6:,.0f} MB payload): +{fig['growth'] / 1e6:,.0f} MB "
                        f"(most while {worst}), {fig['seconds']:.1f} s"
                    )
                    steps = ", ".join(f"{k} {v / 1e6:,.0f}" for k, v in fig["steps"].items())
                    print(f"  {fmt:7s} {executor:5s} {n:>7,} rows: +{fig['growth'] / 1e6:,.0f} MB; per step: {steps}")
            print(f"  {fmt} {executor}: " + " | ".join(line), flush=True)


if __name__ == "__main__":
    main()
