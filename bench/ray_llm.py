"""Generation on Ray through ray.data.llm against each task sending its own requests, same run.

The same recipe (GSM8K questions → ``generate``) is built on a local Ray instance three ways, each
into a fresh folder (a fresh request cache): ``--ray-llm off`` (each task's worker sends its
batch's requests itself), ``--ray-llm all`` (the requests gathered from every batch and sent
through ray.data.llm's HTTP processor), and ``all`` again with every answer stored (the rounds
that find nothing to send, and the step run that finds its answers). The model is an
OpenAI-compatible server on loopback, ``python -m dataforge.llm.server``, around the tiny random
Llama of ``dataforge.tiny`` on this CPU: it answers one request at a time, so both ways wait on
the same server, and the difference is what gathering costs (collecting tasks, Ray Data's
start-up, the processor) — not what a vLLM engine's batching gains on a GPU, which this
benchmark cannot show.

Usage: .venv/bin/python bench/ray_llm.py [--prompts 240] [--batch-rows 40] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from dataforge.engine.runner import build

GSM8K = Path(__file__).resolve().parents[1] / "recipes" / "data" / "gsm8k"

RECIPE = """
name: ray_llm_bench
models:
  policy: {{backend: openai, model: tiny, base_url: {url}, max_concurrency: 4, max_retries: 0}}
steps:
  raw: {{kind: source, path: prompts.jsonl}}
  solve: {{kind: generate, inputs: {{data: raw}}, model: policy, prompt: question, max_tokens: {tokens}}}
datasets:
  out:
    splits: {{train: solve}}
"""


def serve(model: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataforge.llm.server", "--model", str(model), "--name", "tiny", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    return proc, line.strip().rsplit(" ", 1)[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=240)
    ap.add_argument("--batch-rows", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    import ray

    from dataforge.tiny import make_tiny_causal_lm

    tmp = Path(tempfile.mkdtemp())
    proc, url = serve(make_tiny_causal_lm(tmp / "tiny"))
    try:
        questions = [json.loads(line)["question"] for line in (GSM8K / "train.jsonl").open()][: args.prompts]
        (tmp / "prompts.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
        (tmp / "r.yaml").write_text(RECIPE.format(url=url, tokens=args.max_tokens))
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        served = lambda: httpx.get(url.removesuffix("/v1") + "/stats").json()["requests"]  # noqa: E731
        figures = {}
        for name, mode, out in (("off", "off", "off"), ("all", "all", "all"), ("all, answers stored", "all", "all")):
            before, t = served(), time.perf_counter()
            report = build(
                tmp / "r.yaml",
                tmp / out,
                show_progress=False,
                batch_rows=args.batch_rows,
                executor="ray",
                ray_llm=mode,
                force=["solve"],
            )
            solve = next(s for s in report.steps if s.name == "solve")
            figures[name] = {
                "build seconds": round(time.perf_counter() - t, 2),
                "solve seconds": round(solve.seconds, 2),
                "requests served": served() - before,
                "ray.data.llm": report.llm.get("solve"),
                "tasks": report.tasks,
            }
        ray.shutdown()
    finally:
        proc.terminate()
    print(json.dumps({"prompts": args.prompts, "batch_rows": args.batch_rows, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
