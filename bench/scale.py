"""Scale benchmark (the partitioning/streaming issue): a synthetic post-training mix built from the
shipped GSM8K and HH-RLHF text, through source → normalize → filter → exact dedup → MinHash
dedup → group + near-duplicate-cluster split → split audit → format → export, at growing sizes.

The mix: prompts and responses of ~``--words`` words remixed from real sentences; 5 % of rows
are exact copies of another row, 10 % near copies (3–15 % of the response's words replaced or
dropped), prompts repeat (a group key: 1 prompt in 4 is shared with other rows), and every row
has a timestamp. Generated with polars, written as Parquet before the clock starts.

Each size runs ``dataforge build`` in a child process (imports included) once per engine, in
the same run: "whole tables" (``batch_rows=0``: every step on whole tables held in memory, the
engine before streaming) and "streaming" (``--batch-rows``, default 100,000: the source, rows
steps and exact dedup batch by batch, MinHash dedup, split and audit out of core, the export
batch by batch — see ``engine.streaming`` and ``engine.table``). Reported: wall time, each step's seconds and rows/s
(rows in / seconds), and the child's peak resident memory (the kernel's VmHWM of the child;
getrusage's ru_maxrss would include the parent's peak from before the child's exec).

Each step's peak resident memory is sampled too (every 50 ms), so the step that sets the peak is
named. ``--limit-gib`` runs each build under ``RLIMIT_DATA`` (a build that needs more fails),
with allocators set to give back what they free (``RETURNING_ALLOCATORS``);
``--whole-up-to`` skips the whole-tables engine above a size (it needs ~4.3 GiB a million rows).

Usage: .venv/bin/python bench/scale.py --rows 250000,500000,1000000 [--words 100] [--batch-rows N]
       [--whole-up-to N] [--limit-gib G] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "recipes" / "data"

RECIPE = """
name: scale_mix
steps:
  raw:
    kind: source
    path: mix.parquet
    name: mix
    id_column: row
    timestamp_column: ts
  normalized:
    kind: clean.normalize
    inputs: {data: raw}
    fields: [prompt, response]
  filtered:
    kind: clean.filter
    inputs: {data: normalized}
    fields: [response]
    min_length: 20
  exact:
    kind: dedup.exact
    inputs: {data: filtered}
    fields: [prompt, response]
  near:
    kind: dedup.minhash
    inputs: {data: exact}
    fields: [response]
    threshold: 0.8
  split:
    kind: split
    inputs: near
    fractions: {train: 0.98, test: 0.02}
    group: prompt
    cluster: {fields: [response], threshold: 0.8}
    seed: 7
  audit:
    kind: split.audit
    inputs: {train: split.train, test: split.test}
    prompt: prompt
    target: response
    threshold: 0.8
  sft:
    kind: format
    type: prompt_completion
    inputs: {train: split.train, test: split.test}
    prompt: prompt
    completion: response
datasets:
  mix_sft:
    splits: {train: sft.train, test: sft.test}
"""


def sentences() -> list[str]:
    """Real sentences of the shipped GSM8K questions and answers and HH-RLHF conversations."""
    texts = []
    for f in sorted((DATA / "gsm8k").glob("*.jsonl")):
        df = pl.read_ndjson(f)
        texts += df["question"].to_list() + df["answer"].str.replace_all(r"<<[^>]*>>|####", " ").to_list()
    for f in sorted((DATA / "hh-rlhf-harmless-base").glob("*.jsonl*")):
        df = pl.read_ndjson(f)
        texts += [re.sub(r"\n\n(Human|Assistant):", " ", t) for t in df["chosen"].to_list()]
    out = [s.strip() for t in texts for s in re.split(r"(?<=[.?!])\s+", t)]
    return [s for s in out if 4 <= len(s.split()) <= 60]


def make_mix(n: int, words: int, seed: int = 0) -> pl.DataFrame:
    """``n`` rows: row, prompt, response, ts (see the module doc)."""
    rng = np.random.default_rng(seed)
    pool = pl.Series(sentences())
    lengths = pool.str.count_matches(r"\S+").to_numpy()
    per_doc = max(1, round(words / float(lengths.mean())))
    n_prompts = max(1, n // 4)
    prompt_pool = pool.gather(rng.integers(0, len(pool), n_prompts))
    # 3 in 4 rows have a prompt of their own, 1 in 4 shares one with other rows
    own = pool.gather(rng.integers(0, len(pool), n))
    shared = prompt_pool.gather(rng.integers(0, n_prompts, n))
    prompts = pl.select(pl.when(pl.Series(rng.random(n) < 0.75)).then(own).otherwise(shared)).to_series()
    picks = rng.integers(0, len(pool), (n, per_doc))
    responses = pl.DataFrame({"s": pool.gather(picks.ravel()), "d": np.repeat(np.arange(n), per_doc)})
    responses = responses.group_by("d", maintain_order=True).agg(pl.col("s").str.join(" "))["s"]
    frame = pl.DataFrame({"prompt": prompts, "response": responses})
    # planted duplicates: 5 % exact copies, 10 % near copies (words replaced or dropped)
    k_exact, k_near = n // 20, n // 10
    src = rng.integers(0, n - k_exact - k_near, k_exact + k_near)
    copies = frame[src]
    rate = rng.choice([0.03, 0.08, 0.15], k_near)
    near = copies.tail(k_near)["response"].to_list()
    vocab = pool.head(5000).str.split(" ").explode().unique().to_numpy()
    edited = [_edit(text, r, rng, vocab) for text, r in zip(near, rate, strict=True)]
    copies = copies.with_columns(pl.Series("response", copies.head(k_exact)["response"].to_list() + edited))
    frame = pl.concat([frame.head(n - k_exact - k_near), copies])
    ts = (np.datetime64("2023-01-01") + rng.integers(0, 730 * 86400, n).astype("timedelta64[s]")).astype(
        "datetime64[ms]"
    )
    return frame.with_columns(pl.Series("ts", ts), pl.Series("row", np.arange(n))).select(
        "row", "prompt", "response", "ts"
    )


def _edit(text: str, rate: float, rng: np.random.Generator, vocab: np.ndarray) -> str:
    """``text`` with a share ``rate`` of its words edited: half replaced by another word, half dropped."""
    words = text.split()
    out = []
    for word, u in zip(words, rng.random(len(words)), strict=True):
        if u >= rate:
            out.append(word)
        elif u >= rate / 2:
            out.append(str(vocab[rng.integers(len(vocab))]))
    return " ".join(out)


def child(folder: Path, batch_rows: int, limit_gib: float | None, executor: str = "local", cpus: int = 0) -> None:
    """Build the recipe in ``folder`` and print its figures as JSON (run in its own process):
    wall time, peak RSS (getrusage), and the peak resident memory sampled during each step and
    the export (every 50 ms from /proc). ``limit_gib``: the process's data segment is limited
    to it (``RLIMIT_DATA``, which counts the heap and private mappings): past it, allocations
    fail and the build with them. ``executor`` ``ray``: a local Ray instance of ``cpus`` CPUs is
    started first (its start timed apart); the resident memory of the processes it starts (its
    workers among them) is sampled as one sum, beside this process's own."""

    import shutil
    import threading

    import dataforge.export
    from dataforge.engine.runner import Runner, build

    if limit_gib:
        size = int(limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (size, size))
    shutil.rmtree(folder / "build", ignore_errors=True)
    current, peaks, done = ["plan"], {}, threading.Event()
    page = os.sysconf("SC_PAGE_SIZE")

    def sample() -> None:
        with open("/proc/self/statm") as statm:
            while not done.is_set():
                statm.seek(0)
                fields = statm.read().split()
                rss, data = int(fields[1]) * page / 2**20, int(fields[5]) * page / 2**20
                peaks[current[0]] = max(peaks.get(current[0], 0.0), rss)
                peaks["data segment"] = max(peaks.get("data segment", 0.0), data)
                done.wait(0.05)

    def tracked(fn, name_of):
        def call(*args, **kwargs):
            current[0] = name_of(*args)
            try:
                return fn(*args, **kwargs)
            finally:
                current[0] = "engine"

        return call

    Runner._execute = tracked(Runner._execute, lambda self, ps, *_: ps.name)
    dataforge.export.export_datasets = tracked(dataforge.export.export_datasets, lambda *_: "export")
    ray_start = 0.0
    if executor == "ray":
        import psutil
        import ray

        begun = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
        ray_start = time.perf_counter() - begun

        def sample_ray() -> None:
            while not done.is_set():
                rss = 0
                for p in psutil.Process().children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        rss += p.memory_info().rss
                peaks["ray processes"] = max(peaks.get("ray processes", 0.0), rss / 2**20)
                done.wait(0.5)

        threading.Thread(target=sample_ray, daemon=True).start()
    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    report = build(
        folder / "recipe.yaml", folder / "build", show_progress=False, batch_rows=batch_rows, executor=executor
    )
    wall = time.perf_counter() - started
    done.set()
    # the kernel's high-water mark of this process image (VmHWM). Not getrusage's ru_maxrss: Linux
    # carries over to it the peak of the image before exec, i.e. of the benchmark process that
    # forked this one while it held the generated mix (it read 2,214 MiB for a build whose
    # VmHWM is far lower)
    status = Path("/proc/self/status").read_text()
    rss = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]
    steps = [{"step": s.name, "rows_in": s.rows_in, "seconds": s.seconds} for s in report.steps]
    figures = {"wall": wall, "rss_mib": rss, "steps": steps, "timings": report.timings, "peaks": peaks}
    figures.update(
        ray_start=ray_start, tasks=report.tasks, shuffled=report.shuffled, staged=report.staged, rounds=report.rounds
    )
    print(json.dumps(figures))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="250000,500000,1000000", help="sizes, comma-separated")
    ap.add_argument("--words", type=int, default=100, help="words per response (about)")
    ap.add_argument("--keep", help="build in this folder and keep it (default: a temporary one)")
    ap.add_argument("--batch-rows", type=int, default=100_000, help="rows per batch of the streaming engine")
    ap.add_argument(
        "--whole-up-to", type=int, default=2_000_000, help="run the whole-tables engine only up to this many rows"
    )
    ap.add_argument("--limit-gib", type=float, help="limit each build's data segment (RLIMIT_DATA) to this")
    ap.add_argument("--child")
    ap.add_argument("--executor", default="local", help=argparse.SUPPRESS)  # of a child: bench/on_ray.py
    ap.add_argument("--cpus", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(Path(args.child), args.batch_rows, args.limit_gib, args.executor, args.cpus)
    for n in (int(x) for x in args.rows.split(",")):
        with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
            folder = Path(tmp)
            made = time.perf_counter()
            mix = make_mix(n, args.words)
            mix.write_parquet(folder / "mix.parquet")
            (folder / "recipe.yaml").write_text(RECIPE)
            mean_words = mix["response"].head(10000).str.count_matches(r"\S+").mean()
            print(f"{n:,} rows (response ~{mean_words:.0f} words) generated in {time.perf_counter() - made:.1f} s")
            del mix
            engines = [("whole tables", 0)] if n <= args.whole_up_to else []
            for engine, batch_rows in [*engines, ("streaming", args.batch_rows)]:
                measure(folder, engine, batch_rows, args.limit_gib)


# Under --limit-gib the allocators give back the address space they free, so that the data segment
# RLIMIT_DATA bounds follows what the build holds: polars' jemalloc without retained mappings,
# pyarrow on the system allocator, two glibc arenas. Without them the data segment of a streaming
# build peaks at ~4x its resident memory (5,667 MiB at 1,474 MiB RSS for 1M rows).
RETURNING_ALLOCATORS = {
    "_RJEM_MALLOC_CONF": "retain:false,dirty_decay_ms:0,muzzy_decay_ms:0",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
    "MALLOC_ARENA_MAX": "2",
}


def measure(
    folder: Path, engine: str, batch_rows: int, limit_gib: float | None, executor: str = "local", cpus: int = 0
) -> dict | None:
    """One build of the mix in ``folder`` in a child process, its figures printed and returned
    (None: the build failed)."""
    started = time.perf_counter()
    limit = ["--limit-gib", str(limit_gib)] if limit_gib else []
    on = ["--executor", executor, "--cpus", str(cpus)]
    run = subprocess.run(
        [sys.executable, __file__, "--child", str(folder), "--batch-rows", str(batch_rows), *limit, *on],
        env={**os.environ, **(RETURNING_ALLOCATORS if limit_gib else {})},
        capture_output=True,
        text=True,
        check=False,
    )
    label = f"{engine} (batch_rows={batch_rows:,}" + (f", data limit {limit_gib:g} GiB)" if limit_gib else ")")
    if run.returncode != 0:
        print(f"  {label}: failed after {time.perf_counter() - started:.1f} s: {run.stderr[-400:]}")
        return None
    fig = json.loads(run.stdout.strip().splitlines()[-1])
    print(
        f"  {label}: {fig['wall']:.1f} s end to end, peak RSS {fig['rss_mib']:,.0f} MiB, "
        f"peak data segment {fig['peaks'].get('data segment', 0):,.0f} MiB (what RLIMIT_DATA limits)"
    )
    if executor == "ray":
        print(
            f"    Ray: started in {fig['ray_start']:.1f} s (not in the time above); its processes' peak RSS "
            f"{fig['peaks'].get('ray processes', 0):,.0f} MiB together; tasks {fig['tasks']}; "
            f"shuffled {', '.join(f'{k} {v / 2**20:,.0f} MiB' for k, v in fig['shuffled'].items()) or 'nothing'}; "
            f"map rounds {fig['rounds']}"
        )
    if fig.get("staged"):
        print(f"    staged for jobs: {', '.join(f'{k} {v / 2**20:,.1f} MiB' for k, v in fig['staged'].items())}")
    peaks = fig["peaks"]
    for s in fig["steps"]:
        rate = f"{s['rows_in'] / s['seconds']:>12,.0f} rows/s" if s["seconds"] > 0 and s["rows_in"] else ""
        print(f"    {s['step']:12s} {s['seconds']:8.2f} s {rate:20s} peak {peaks.get(s['step'], 0):8,.0f} MiB")
    print(f"    {'export':12s} {fig['timings']['export']:8.2f} s {'':20s} peak {peaks.get('export', 0):8,.0f} MiB")
    report = fig["timings"].get("report", 0.0)
    print(
        f"    {'report.html':12s} {report:8.2f} s {'':20s} peak {peaks.get('engine', 0):8,.0f} MiB"
        " (with the engine's own work)"
    )
    return fig


if __name__ == "__main__":
    main()
