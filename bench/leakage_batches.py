"""``leakage.check`` on batches of train rows against one call (the partitioning issue: the check
is a ``rows`` step, its eval side whole in every batch). Engine timings, not quality figures.

Data: the 7,473 GSM8K train rows (question + worked answer) and 300 GSM8K test questions as GPT-4
rephrased them (the development half, ``bench/data/decontamination-rephrases/``) with their
answers, in a fixed shuffled order, against the 1,319 GSM8K test questions; the step at its
defaults. Each run: one call on every row, then the same rows in consecutive batches of
``--batch-rows`` (the streaming executor's batches), in one process after a warm-up call (models
loaded). Reports seconds and matches of each; the matches must be the same.

Usage: .venv/bin/python bench/leakage_batches.py [--batch-rows 1000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO / "recipes" / "data" / "gsm8k"
REPHRASES = REPO / "bench" / "data" / "decontamination-rephrases"


def rows() -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, eval) as described in the module doc."""
    train = pl.read_ndjson(GSM8K / "train.jsonl").with_row_index("i")
    train = train.select(pl.format("t:{}", "i").alias("_id"), "question", "answer")
    rephrased = pl.read_ndjson(REPHRASES / "gsm8k_test_rephrased.dev.jsonl").head(300).with_row_index("i")
    planted = rephrased.select(
        pl.format("p:{}", "i").alias("_id"), pl.col("rephrased_question").alias("question"), "answer"
    )
    test = pl.read_ndjson(GSM8K / "test.jsonl").with_row_index("i")
    evals = test.select(pl.format("e:{}", "i").alias("_id"), "question")
    return pl.concat([train, planted]).sample(fraction=1.0, shuffle=True, seed=1), evals


def main() -> None:
    from dataforge.engine.step import Context
    from dataforge.steps.leakage import LeakageConfig, leakage_check

    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-rows", type=int, default=1000)
    args = ap.parse_args()
    train, evals = rows()
    cfg = LeakageConfig(train_fields=["question", "answer"], eval_fields=["question"])
    ctx = Context(step="leakage", fingerprint="0" * 16, base_dir=REPO, scratch_dir=REPO / "build" / "scratch")
    check = lambda part: leakage_check({"train": part, "test": evals}, cfg, ctx).tables["matches"]  # noqa: E731
    check(train.head(50))  # warm-up: the models load
    for label, size in (("one call", train.height), (f"batches of {args.batch_rows:,}", args.batch_rows)):
        start = time.perf_counter()
        found = [check(train.slice(s, size)) for s in range(0, train.height, size)]
        seconds = time.perf_counter() - start
        print(f"{label}: {len(found)} call(s), {sum(m.height for m in found)} matches, {seconds:.1f} s")


if __name__ == "__main__":
    main()
