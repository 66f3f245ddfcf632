"""Near-duplicate dedup benchmark (the dedup issue). Prints the figures recorded in BENCHMARKS.md.

Corpus: real text — GSM8K questions + solutions and HH-RLHF conversations — plus distinct
documents made by mixing sentences of different real documents, plus planted near-duplicates of
real documents at known edit rates (words replaced or dropped at 3 %, 8 % and 15 %).

Compared in one run, same word-3-gram shingles, num_perm and threshold:
  (a) dataforge `dedup.minhash`, end to end (text → signatures → LSH → clusters → filtered table);
  (b) datasketch 2.0: Python shingling, `MinHash.bulk`, `MinHashLSH` insert + query, union-find;
  (c) with --text-dedup-python, text-dedup's MinHash (`text_dedup.minhash`, one worker per core,
      its own word 3-grams split on \\W, SHA-1 shingle hashes) from a `save_to_disk` dataset to the
      deduplicated dataset on disk. text-dedup pins other versions of shared libraries (rich), so
      it gets a virtual environment of its own:
        python3 -m venv /tmp/tdvenv && /tmp/tdvenv/bin/pip install text-dedup polars
Each runs in its own process (peak RSS from getrusage), ``--repeat`` times, interleaved; the
median time is reported with every run's. Quality: pairs each method reports as
duplicates against the truth = every pair among all candidates (every method's and the planted
ones) whose exact Jaccard (dataforge's word 3-grams) reaches the threshold.

Usage:
  .venv/bin/python bench/dedup.py --docs 100000            # (a) vs (b), quality and speed, 3 runs each
  .venv/bin/python bench/dedup.py --docs 100000 --text-dedup-python /tmp/tdvenv/bin/python   # + (c)
  .venv/bin/python bench/dedup.py --memory --docs 1000000 --repeat 1  # dataforge alone, 1M docs of ~200 words
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
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
WORD = re.compile(rb"[0-9a-z_\x80-\xff]+")


def real_documents() -> list[str]:
    gsm = pl.concat([pl.read_ndjson(DATA / "gsm8k" / f"{s}.jsonl") for s in ("train", "test")])
    docs = gsm["question"].to_list() + gsm["answer"].to_list()
    with gzip.open(DATA / "hh-rlhf-harmless-base" / "test.jsonl.gz", "rt") as fh:
        for line in fh:
            row = json.loads(line)
            docs += [row["chosen"], row["rejected"]]
    return [d for d in dict.fromkeys(docs) if len(d.split()) >= 8]


def perturb(text: str, rate: float, rng: random.Random, vocab: list[str]) -> str:
    words = text.split()
    out = []
    for w in words:
        r = rng.random()
        if r < rate / 2:
            continue  # dropped
        out.append(rng.choice(vocab) if r < rate else w)  # replaced
    return " ".join(out)


def corpus(
    n: int, seed: int = 0, words: int | None = None, rates: tuple[float, ...] = (0.03, 0.08, 0.15)
) -> tuple[list[str], list[tuple[int, int]]]:
    """n documents and the planted (original, copy) index pairs, each copy with a share of its
    words edited drawn from ``rates``. With ``words``, every document is ~that many words long
    (built from real sentences)."""
    rng = random.Random(seed)
    real = real_documents()
    sentences = [s for d in real for s in re.split(r"(?<=[.?!])\s+", d) if len(s.split()) >= 4]
    vocab = sorted({w for s in sentences[:20000] for w in s.split()})
    docs: list[str] = []
    if words is None:
        docs = list(real)
    planted: list[tuple[int, int]] = []
    n_planted = n // 5
    while len(docs) < n - n_planted:
        k = rng.randint(3, 8) if words is None else max(1, words // 12)
        docs.append(" ".join(rng.choice(sentences) for _ in range(k)))
    base = len(docs)
    for i in range(n - base):
        src = rng.randrange(base)
        docs.append(perturb(docs[src], rng.choice(rates), rng, vocab))
        planted.append((src, base + i))
    return docs, planted


def shingle_set(text: str, n: int = 3) -> set[bytes]:
    ws = WORD.findall(text.lower().encode())
    if len(ws) < n:
        return {b" ".join(ws)} if ws else set()
    return {b" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)}


# -- the two methods, each run in a child process --------------------------------------------


def run_dataforge(df: pl.DataFrame, threshold: float, num_perm: int, verify: str) -> tuple[np.ndarray, int]:
    from dataforge.engine.step import Context
    from dataforge.steps.dedup import MinhashConfig, dedup_minhash

    ctx = Context(step="bench", fingerprint="0" * 16, base_dir=REPO, scratch_dir=Path(tempfile.mkdtemp()))
    cfg = MinhashConfig(fields=["text"], threshold=threshold, num_perm=num_perm, verify=verify)
    res = dedup_minhash({"data": df}, cfg, ctx)
    ev = pl.concat(res.events) if res.events else pl.DataFrame({"row_id": [], "related_id": []})
    pairs = (
        np.column_stack(
            [
                ev["related_id"].str.slice(2).cast(pl.Int64).to_numpy(),
                ev["row_id"].str.slice(2).cast(pl.Int64).to_numpy(),
            ]
        )
        if ev.height
        else np.zeros((0, 2), dtype=np.int64)
    )
    return pairs, res.tables["data"].height


def run_datasketch(docs: list[str], threshold: float, num_perm: int) -> tuple[np.ndarray, int]:
    from datasketch import MinHash, MinHashLSH
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    sets = [list(shingle_set(d)) for d in docs]
    hashes = MinHash.bulk(sets, num_perm=num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    with lsh.insertion_session() as session:
        for i, m in enumerate(hashes):
            if sets[i]:
                session.insert(i, m)
    pairs = []
    for i, m in enumerate(hashes):
        if sets[i]:
            pairs += [(j, i) for j in lsh.query(m) if j < i]
    pairs_a = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    g = coo_matrix((np.ones(len(pairs_a)), (pairs_a[:, 0], pairs_a[:, 1])), shape=(len(docs), len(docs)))
    n_clusters, _ = connected_components(g, directed=False)
    return pairs_a, n_clusters


def run_text_dedup(dataset_dir: str, threshold: float, num_perm: int, work: str) -> tuple[np.ndarray, int]:
    """text-dedup's MinHash (its `text_dedup.minhash` command, run in this process on a
    `save_to_disk` dataset, one worker per core); pairs = each row and its union-find root."""
    import text_dedup.minhash as td

    out = Path(work) / "text_dedup_out"
    argv = ["--path", dataset_dir, "--local", "--column", "text", "--output", str(out), "--cache_dir", work]
    argv += ["--num_perm", str(num_perm), "--threshold", str(threshold), "--ngram", "3", "--min_length", "0"]
    td.main(argv, standalone_mode=False)
    n = len(pl.read_parquet(Path(dataset_dir).parent / "rows.parquet", columns=["_id"]))
    roots = np.array([td.uf.find(i) for i in range(n)], dtype=np.int64)
    linked = roots != np.arange(n)
    return np.column_stack([roots[linked], np.arange(n)[linked]]), int((~linked).sum())


def child(args: argparse.Namespace) -> None:
    frame = pl.read_parquet(args.corpus)  # the table a build would hand the step
    work = tempfile.mkdtemp()
    if args.method == "text-dedup":  # its input is a datasets directory: written before the clock starts
        from datasets import Dataset

        Dataset.from_polars(frame.select("text")).save_to_disk(Path(work) / "ds" / "data")
        frame.select("_id").write_parquet(Path(work) / "ds" / "rows.parquet")
    t = time.perf_counter()
    if args.method == "datasketch":
        pairs, kept = run_datasketch(frame["text"].to_list(), args.threshold, args.num_perm)
    elif args.method == "text-dedup":
        pairs, kept = run_text_dedup(str(Path(work) / "ds" / "data"), args.threshold, args.num_perm, work)
    else:
        pairs, kept = run_dataforge(frame, args.threshold, args.num_perm, args.method.split(":")[1])
    seconds = time.perf_counter() - t
    rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    np.save(args.pairs, pairs)
    print(json.dumps({"seconds": seconds, "rss_mib": rss, "kept": int(kept)}))


def quality(docs: list[str], predicted: np.ndarray, candidates: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision/recall/F1, over the candidate pairs, of "this pair ends in one cluster" (the
    clusters implied by a method's ``predicted`` pairs) against "its exact Jaccard reaches the
    threshold". Scoring clusters rather than raw pairs is fair to both: datasketch reports every
    pair in a bucket, dataforge links each row to its cluster's representative."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(docs)
    g = coo_matrix((np.ones(len(predicted)), (predicted[:, 0], predicted[:, 1])), shape=(n, n))
    labels = connected_components(g, directed=False)[1]
    cache: dict[int, set[bytes]] = {}

    def sh(i: int) -> set[bytes]:
        if i not in cache:
            cache[i] = shingle_set(docs[i])
        return cache[i]

    def key(p: np.ndarray) -> set[tuple[int, int]]:
        return {(int(min(a, b)), int(max(a, b))) for a, b in p}

    cands = key(candidates)
    truth = {p for p in cands if len(sh(p[0]) & sh(p[1])) / max(1, len(sh(p[0]) | sh(p[1]))) >= threshold}
    pred = {p for p in cands if labels[p[0]] == labels[p[1]]}
    tp = len(pred & truth)
    precision = tp / len(pred) if pred else 1.0
    recall = tp / len(truth) if truth else 1.0
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / max(1e-12, precision + recall)}


def spawn(method: str, corpus_path: Path, args: argparse.Namespace) -> tuple[dict, np.ndarray]:
    pairs_path = corpus_path.with_suffix(f".{method.replace(':', '_')}.npy")
    python = args.text_dedup_python if method == "text-dedup" else sys.executable
    cmd = [
        python,
        __file__,
        "--child",
        "--method",
        method,
        "--corpus",
        str(corpus_path),
        "--pairs",
        str(pairs_path),
        "--threshold",
        str(args.threshold),
        "--num-perm",
        str(args.num_perm),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out), np.load(pairs_path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--memory", action="store_true", help="dataforge alone on documents of ~200 words")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each method; the median time is reported")
    ap.add_argument("--text-dedup-python", help="a Python with `text-dedup` installed: adds text-dedup's MinHash")
    ap.add_argument(
        "--rates", default="0.03,0.08,0.15", help="edit rates of the planted copies, e.g. 0.01,0.05,0.1,0.2,0.35"
    )
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--method", default="dataforge:exact")
    ap.add_argument("--corpus")
    ap.add_argument("--pairs")
    args = ap.parse_args()
    if args.child:
        return child(args)
    rates = tuple(float(r) for r in args.rates.split(","))
    docs, planted = corpus(args.docs, words=200 if args.memory else None, rates=rates)
    n_words = sum(len(d.split()) for d in docs[:2000]) / 2000
    print(
        f"corpus: {len(docs):,} documents (mean {n_words:.0f} words), {len(planted):,} planted near-duplicates "
        f"at edit rates {', '.join(f'{r:.0%}' for r in rates)}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.parquet"
        pl.DataFrame({"_id": [f"d:{i:08d}" for i in range(len(docs))], "text": docs}).write_parquet(path)
        methods = ["dataforge:exact"] if args.memory else ["dataforge:exact", "dataforge:none", "datasketch"]
        if args.text_dedup_python and not args.memory:
            methods.append("text-dedup")
        runs: dict[str, list[tuple[dict, np.ndarray]]] = {m: [] for m in methods}
        for _ in range(args.repeat):  # interleaved, so a slow spell of the machine hits every method
            for m in methods:
                runs[m].append(spawn(m, path, args))
    results = {}
    for m, rs in runs.items():
        times = sorted(r["seconds"] for r, _ in rs)
        r = dict(rs[0][0], seconds=float(np.median(times)), rss_mib=max(r["rss_mib"] for r, _ in rs))
        results[m] = (r, rs[0][1])
        spread = f"  (runs: {', '.join(f'{t:.2f}' for t in times)})" if len(times) > 1 else ""
        print(
            f"{m:16s} {r['seconds']:8.2f} s  {len(docs) / r['seconds']:10,.0f} docs/s  "
            f"peak RSS {r['rss_mib']:7,.0f} MiB  kept {r['kept']:,}{spread}"
        )
    if args.memory:
        return
    candidates = np.concatenate([p for _, p in results.values()] + [np.array(planted).reshape(-1, 2)])
    for m, (_, pairs) in results.items():
        q = quality(docs, pairs, candidates, args.threshold)
        scores = f"precision {q['precision']:.4f}  recall {q['recall']:.4f}  F1 {q['f1']:.4f}"
        print(f"{m:16s} {scores}  ({len(pairs):,} pairs reported)")
    ours, theirs = results["dataforge:exact"][0]["seconds"], results["datasketch"][0]["seconds"]
    print(f"speed-up, dataforge (exact verify) over datasketch end to end (medians): {theirs / ours:.1f}x")
    if "text-dedup" in results:
        print(f"speed-up over text-dedup end to end (medians): {results['text-dedup'][0]['seconds'] / ours:.1f}x")


if __name__ == "__main__":
    main()
