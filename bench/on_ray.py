"""Ray benchmark (the Ray issue; not named ray.py, which would shadow the ray package for every
script run from bench/): the scale mix of ``bench/scale.py`` (same generator, same recipe:
source → normalize → filter → exact dedup → MinHash dedup → group + cluster split → audit → format
→ export) built by the local executor and by the Ray executor on a local Ray instance of 1 and of
2 CPUs (``--cpus``), in the same run, each build in its own process (``scale.measure``).

Reported per build: wall time (Ray's own start apart), each step's seconds, the driver's peak RSS,
the Ray processes' peak RSS together, the tasks run by kind and the bytes each key step shuffled
through the build folder; then, per step, Ray's time against the local executor's and its cost
per million rows at 1 and 2 CPUs (what a step costs per row should stay flat as CPUs are added
where it runs on Ray; the driver-side steps do not change).

Usage: .venv/bin/python bench/on_ray.py --rows 1000000 [--cpus 1,2] [--batch-rows N] [--words 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import scale  # bench/scale.py (this script's folder is first on sys.path): the mix, the recipe, the child build


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1000000", help="sizes, comma-separated")
    ap.add_argument("--cpus", default="1,2", help="CPUs of the local Ray instance, one build each, comma-separated")
    ap.add_argument("--words", type=int, default=100, help="words per response (about)")
    ap.add_argument("--batch-rows", type=int, default=100_000, help="rows per batch (both executors)")
    ap.add_argument("--keep", help="build in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    for n in (int(x) for x in args.rows.split(",")):
        with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
            folder = Path(tmp)
            made = time.perf_counter()
            mix = scale.make_mix(n, args.words)
            mix.write_parquet(folder / "mix.parquet")
            (folder / "recipe.yaml").write_text(scale.RECIPE)
            print(f"{n:,} rows generated in {time.perf_counter() - made:.1f} s")
            del mix
            figures = {"local": scale.measure(folder, "local executor", args.batch_rows, None)}
            for cpus in (int(c) for c in args.cpus.split(",")):
                label = f"ray, {cpus} CPU" + ("s" if cpus > 1 else "")
                figures[label] = scale.measure(folder, label, args.batch_rows, None, executor="ray", cpus=cpus)
            compare(n, figures)


def compare(n: int, figures: dict[str, dict | None]) -> None:
    """Each step's seconds per executor, Ray's against local, and seconds per million rows."""
    local = figures.get("local")
    if local is None:
        return
    names = [s["step"] for s in local["steps"]]
    runs = {label: {s["step"]: s for s in f["steps"]} for label, f in figures.items() if f is not None}
    print(f"  per step at {n:,} rows: seconds (s per million rows in)")
    header = "".join(f"{label:>26s}" for label in runs)
    print(f"    {'step':12s}{header}")
    for name in names:
        cells = []
        for steps in runs.values():
            s = steps.get(name)
            per_m = s["seconds"] / s["rows_in"] * 1e6 if s and s["rows_in"] else 0.0
            cells.append(f"{s['seconds']:9.1f} ({per_m:6.1f} /M)" if s else f"{'-':>24s}")
        print(f"    {name:12s}" + "".join(f"{c:>26s}" for c in cells))
    for label, f in figures.items():
        if f is not None and label != "local":
            print(f"    {label}: {f['wall'] / local['wall'] - 1:+.1%} wall time against the local executor")


if __name__ == "__main__":
    main()
