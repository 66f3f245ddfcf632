"""Generation overhead benchmark (issue: synthetic data). Prints the figures in BENCHMARKS.md.

The same prompts, sampling params and batch size, three ways, on the transformers backend:
1. raw: ``TransformersBackend.generate`` on the requests (the backend's own time);
2. the ``generate`` step called as a function with a fresh request cache: its total time, and
   the time spent inside the backend (``ClientStats.backend_seconds``); overhead = the rest
   (templating, cache keys and writes, building the output table and lineage frames);
3. a whole ``dataforge build`` of a source → generate recipe (plan, store, lineage, export).

Usage: .venv/bin/python bench/generate.py [--prompts 64] [--n 4] [--max-tokens 32] [--model PATH]
(default model: the tiny random Llama of dataforge.tiny, the worst case for relative overhead
because its generation is so cheap; pass a real model path to measure one).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import polars as pl

from dataforge.engine.runner import build
from dataforge.engine.step import Context
from dataforge.llm import ModelSpec
from dataforge.llm.client import ModelPool, load_backend
from dataforge.steps.generate import GenerateConfig, generate

GSM8K = Path(__file__).resolve().parents[1] / "recipes" / "data" / "gsm8k"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    if args.model is None:
        from dataforge.tiny import make_tiny_causal_lm

        args.model = str(make_tiny_causal_lm(tmp / "tiny"))
    questions = [json.loads(line)["question"] for line in (GSM8K / "train.jsonl").open()][: args.prompts]
    spec = ModelSpec(backend="transformers", model=args.model, batch_size=args.batch_size)
    cfg = GenerateConfig(
        model=spec, prompt="question", n=args.n, max_tokens=args.max_tokens, temperature=1.0, reasoning=True
    )
    df = pl.DataFrame({"_id": [f"q:{i}" for i in range(len(questions))], "question": questions})

    # 1. raw backend, same requests (warm-up first: model load and first-call costs excluded)
    from dataforge.steps.generate import system_prompt
    from dataforge.steps.prompting import build_requests

    requests, _ = build_requests(cfg, df.to_dicts(), cfg.n, system_prompt(cfg))
    backend = load_backend(spec)
    backend.generate(requests[:2])
    t = time.perf_counter()
    gens = backend.generate(requests)
    raw = time.perf_counter() - t
    tokens = sum(g.completion_tokens for g in gens)

    # 2. the step, fresh cache, same warm-up
    ctx = Context(step="g", fingerprint="0" * 16, base_dir=tmp, scratch_dir=tmp, llm=ModelPool(tmp / "c.sqlite"))
    ctx.llm.client(spec).backend.generate(requests[:2])
    t = time.perf_counter()
    generate({"data": df}, cfg, ctx)
    step_total = time.perf_counter() - t
    inside = ctx.llm.client(spec).stats.backend_seconds
    ctx.llm.close()

    # 3. a whole build (model load included: reported separately, it is not per-request overhead)
    (tmp / "q.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    (tmp / "r.yaml").write_text(
        f"name: g\nmodels:\n  m: {{backend: transformers, model: {args.model}, batch_size: {args.batch_size}}}\n"
        "steps:\n  q: {kind: source, path: q.jsonl}\n"
        f"  g: {{kind: generate, inputs: {{data: q}}, model: m, prompt: question, n: {args.n}, "
        f"max_tokens: {args.max_tokens}, temperature: 1.0, reasoning: true}}\n"
        "datasets:\n  out: {splits: {train: g}}\n"
    )
    t = time.perf_counter()
    report = build(tmp / "r.yaml", tmp / "build", show_progress=False)
    whole = time.perf_counter() - t
    gen_step = next(s for s in report.steps if s.name == "g").seconds

    n_req = len(requests)
    print(f"model {args.model}; {n_req} prompts × n={args.n}, max_tokens {args.max_tokens}, batch {args.batch_size}")
    print(f"raw backend:       {raw:.2f} s, {tokens:,} tokens, {tokens / raw:,.0f} tokens/s")
    print(
        f"generate step:     {step_total:.2f} s total, {inside:.2f} s inside the backend → overhead "
        f"{step_total - inside:.3f} s = {(step_total - inside) / inside:.1%} of backend time"
    )
    print(f"step vs raw run:   {(step_total - raw) / raw:+.1%} (includes run-to-run variation of generation)")
    print(f"whole build:       {whole:.2f} s (generate step {gen_step:.2f} s incl. model load; rest is engine/export)")


if __name__ == "__main__":
    main()
