"""Key hashes (``engine.streaming.key_hashes``): the compiled XXH3-128 kernel against the
``xxhash`` package called once per key (what key_hashes did before the kernel) and against
polars' own ``hash`` (not the same on every machine, so not usable; the floor), on the same
keys in the same run, each the best of ``--repeat`` runs. Keys: GSM8K train questions, each
made unique by its index (``--rows`` of them, about 240 bytes each).

Usage: .venv/bin/python bench/key_hashes.py [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from dataforge.engine.streaming import key_hashes

GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def per_key_loop(keys: pl.Series) -> pl.DataFrame:
    """The previous ``key_hashes``: one ``xxhash`` call per key (text keys without nulls)."""
    from xxhash import xxh3_128_digest

    digests = b"".join([xxh3_128_digest(k.encode()) for k in keys.to_list()])
    halves = np.frombuffer(digests, dtype=">u8").reshape(-1, 2).astype(np.uint64)
    return pl.DataFrame({"h0": halves[:, 0], "h1": halves[:, 1]}, schema={"h0": pl.UInt64, "h1": pl.UInt64})


def best(fn: Callable[[pl.Series], object], make: Callable[[], pl.Series], repeat: int) -> tuple[float, object]:
    """The least seconds of ``repeat`` calls of ``fn``, each on keys made anew (polars converts a
    series to Arrow once and keeps it: a second call on the same series would skip that)."""
    times, value = [], None
    for _ in range(repeat):
        keys = make()
        start = time.perf_counter()
        value = fn(keys)
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gsm8k", type=Path, default=GSM8K, help="GSM8K train.jsonl (default: ../shared/data)")
    args = ap.parse_args()
    questions = pl.read_ndjson(args.gsm8k)["question"]

    def make() -> pl.Series:
        rows = pl.int_range(args.rows)
        return pl.select(pl.lit(questions).gather(rows % questions.len()) + " #" + rows.cast(pl.String)).to_series()

    size = make().str.len_bytes().mean()
    compiled, ours = best(key_hashes, make, args.repeat)
    loop, theirs = best(per_key_loop, make, args.repeat)
    floor, _ = best(lambda keys: keys.hash(), make, args.repeat)
    assert ours.equals(theirs)  # type: ignore[union-attr]
    print(f"{args.rows:,} keys of {size:.0f} bytes on average; best of {args.repeat}; the same hashes (checked)")
    print(f"  key_hashes, compiled XXH3-128:       {compiled:6.3f} s ({compiled / args.rows * 1e9:5.0f} ns a key)")
    print(f"  xxhash package, one call per key:    {loop:6.3f} s ({loop / args.rows * 1e9:5.0f} ns a key)")
    print(f"  polars' hash (not stable; a floor):  {floor:6.3f} s ({floor / args.rows * 1e9:5.0f} ns a key)")


if __name__ == "__main__":
    main()
