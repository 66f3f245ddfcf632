"""Memory of the ``split`` step out of core: the step run alone on the ``near`` artifact of a
scale build (``bench/scale.py``'s recipe: group by prompt, MinHash clusters of the responses),
with this process's resident memory (VmRSS) sampled every 20 ms and reported per phase —
candidate pairs and their verification, group keys, components, assignment, events — and at
its peak. Run it from two snapshots of the code on the same build to compare them.

Usage: .venv/bin/python bench/split_memory.py --build DIR
  DIR: a scale build's folder (e.g. ``bench/on_ray.py --rows 1000000 --keep DIR`` leaves one
  under DIR/…/build), or, with --rows N, a folder to generate the mix and build it into first.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import scale  # bench/scale.py: the mix and its recipe

import dataforge.cluster as cluster
import dataforge.steps.split as split_step
from dataforge.engine.runner import build
from dataforge.engine.step import Context
from dataforge.engine.table import Table


def rss_mib() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024  # type: ignore[union-attr]


class Phases:
    """The peak resident memory seen while each wrapped function ran (the innermost one)."""

    def __init__(self) -> None:
        self.current = "step"
        self.peaks: dict[str, float] = {}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            self.peaks[self.current] = max(self.peaks.get(self.current, 0.0), rss_mib())
            time.sleep(0.02)

    def wrap(self, module: Any, name: str) -> None:
        real: Callable[..., Any] = getattr(module, name)

        def inner(*args: Any, **kwargs: Any) -> Any:
            outer, self.current = self.current, name
            try:
                return real(*args, **kwargs)
            finally:
                self.current = outer

        setattr(module, name, inner)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", type=Path, required=True)
    ap.add_argument("--rows", type=int, help="generate the mix of this many rows and build it into --build first")
    args = ap.parse_args()
    if args.rows:
        args.build.mkdir(parents=True, exist_ok=True)
        scale.make_mix(args.rows, 100).write_parquet(args.build / "mix.parquet")
        (args.build / "recipe.yaml").write_text(scale.RECIPE)
        build(args.build / "recipe.yaml", args.build / "build", show_progress=False, batch_rows=100_000)
    found = sorted(args.build.rglob("artifacts/near/*/data/*.parquet"))
    if not found:
        sys.exit(f"no near artifact under {args.build}")
    table = Table(files=found, batch_rows=100_000)
    cfg = split_step.SplitConfig(
        fractions={"train": 0.98, "test": 0.02},
        group=["prompt"],
        cluster={"fields": ["response"], "threshold": 0.8},
        seed=7,
    )
    scratch = args.build / "split-memory-scratch"
    ctx = Context(step="split", fingerprint="0" * 16, base_dir=args.build, scratch_dir=scratch)
    phases = Phases()
    for name in ("verified_jaccard", "near_duplicate_pairs_in_batches"):
        phases.wrap(cluster, name)
    split_step.near_duplicate_pairs_in_batches = cluster.near_duplicate_pairs_in_batches
    for name in ("group_hashes", "_link_equal", "components", "_unit_draws", "events"):
        phases.wrap(split_step, name)
    before = rss_mib()
    started = time.perf_counter()
    result = split_step.split({"data": table}, cfg, ctx)
    seconds = time.perf_counter() - started
    time.sleep(0.1)
    print(f"split of {table.height:,} rows: {seconds:.1f} s; resident {before:,.0f} MiB before the step")
    for name, peak in phases.peaks.items():
        print(f"  peak while in {name:32s} {peak:8,.0f} MiB")
    print(f"  peak of the step: {max(phases.peaks.values()):,.0f} MiB; {len(result.events)} event frames")


if __name__ == "__main__":
    main()
