"""Candidate pairs from band keys held whole against band keys filed by bucket
(``dataforge.lsh_buckets.BandKeys``), in the same run: seconds and the peak memory the collecting
process allocates (``tracemalloc``, which numpy reports to), for ``--rows`` rows of synthetic
band keys (``--bands`` bands, random keys; one row in ten shares some bands with another, so
there are pairs to form). The filed build is measured with its bucket jobs run in order in this
process (what the local executor does) and through a pool of ``--workers`` processes (what a Ray
task per bucket does, without Ray's start); both must give the held pairs, which is checked.

Usage: .venv/bin/python bench/lsh_buckets.py --rows 5000000 [--bands 9] [--batch-rows 100000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dataforge.engine.table import Mapper
from dataforge.lsh_buckets import KEY_ROWS, BandKeys
from dataforge.text.minhash import candidate_pairs_of_keys


def make_keys(n: int, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Random band keys, with rows 0..n/10 sharing 1–3 bands with a row of the second half."""
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 2**63, (n, bands), dtype=np.int64).astype(np.uint64)
    shared = n // 10
    partner = rng.integers(n // 2, n, shared)
    for b in range(bands):
        mine = rng.random(shared) < 2 / bands
        keys[np.nonzero(mine)[0], b] = keys[partner[mine], b]
    return keys, np.ones(n, dtype=bool)


def measured(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return value, seconds, peak


def filed(keys: np.ndarray, live: np.ndarray, batch: int, folder: Path, mapper: Mapper | None = None) -> tuple:
    n, bands = keys.shape
    with BandKeys(n, bands, folder) as collected:
        _, add_s, add_peak = measured(
            lambda: [
                collected.add(np.arange(a, min(a + batch, n)), keys[a : a + batch], live[a : a + batch])
                for a in range(0, n, batch)
            ]
        )
        pairs, pair_s, pair_peak = measured(lambda: collected.pairs(mapper=mapper))
        files = sum(Path(p).stat().st_size for bucket in collected.paths for p in bucket)
    return pairs, add_s, add_peak, pair_s, pair_peak, files, collected.buckets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--bands", type=int, default=9)
    ap.add_argument("--batch-rows", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    assert args.rows > KEY_ROWS, f"--rows must exceed KEY_ROWS ({KEY_ROWS:,}) for the keys to be filed"
    keys, live = make_keys(args.rows, args.bands)
    mib = 1 << 20
    print(f"{args.rows:,} rows × {args.bands} bands: the keys themselves are {keys.nbytes / mib:,.0f} MiB")
    held, held_s, held_peak = measured(lambda: candidate_pairs_of_keys(keys.copy(), live))
    print(
        f"held whole: {held_s:.1f} s, peak {held_peak / mib:,.0f} MiB allocated (a copy of the keys "
        f"included), {len(held):,} pairs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        pairs, add_s, add_peak, pair_s, pair_peak, size, buckets = filed(keys, live, args.batch_rows, Path(tmp))
        assert np.array_equal(pairs, held)
        print(
            f"filed, jobs in order: add {add_s:.1f} s (peak {add_peak / mib:,.0f} MiB), pairs {pair_s:.1f} s "
            f"(peak {pair_peak / mib:,.0f} MiB: one bucket's job and the codes), {buckets} buckets, "
            f"{size / mib:,.0f} MiB filed"
        )
        with multiprocessing.get_context("forkserver").Pool(args.workers) as pool:
            pairs, add_s, add_peak, pair_s, pair_peak, _, _ = filed(
                keys, live, args.batch_rows, Path(tmp), lambda fn, jobs: pool.imap(fn, jobs)
            )
        assert np.array_equal(pairs, held)
        print(
            f"filed, jobs in {args.workers} processes: add {add_s:.1f} s, pairs {pair_s:.1f} s "
            f"(peak here {pair_peak / mib:,.0f} MiB: the codes the jobs give back)"
        )


if __name__ == "__main__":
    main()
