"""GPU figures and checks for the trainers and the transformers backend (CUDA, bf16).

Two parts, because the GPU machine this project is lent has no network and none of
dataforge's build dependencies (polars, duckdb, …):

``prepare DIR`` (here, with the project's venv) builds the trainers' datasets from the shipped
GSM8K and HH-RLHF data with the recipe below and saves the tokenizer of ``dataforge.tiny``;

``run DIR --out FILE`` (on the GPU machine; needs torch with CUDA, transformers, trl, peft,
datasets, pydantic, math-verify) writes a randomly initialised Llama of a stated shape (the
weights are noise: these are throughput and plumbing figures, not quality), trains it with each
trainer through ``trainers.train`` in bf16 (SFT full and LoRA, DPO, reward model and GRPO with
LoRA), then generates the same requests through ``TransformersBackend`` and through
``model.generate`` directly, and writes every figure to a JSON file.

Usage:
  .venv/bin/python bench/train_gpu.py prepare .gpu
  python3 bench/train_gpu.py run .gpu --out results.json      # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = """
name: gpu_train_data
steps:
  gsm8k: {{kind: source, path: {data}/gsm8k/train.jsonl, limit: {rows}}}
  parsed: {{kind: parse.gsm8k, inputs: {{data: gsm8k}}}}
  reasoning: {{kind: format.reasoning, inputs: {{data: parsed}}, think: reasoning, answer: final_answer}}
  sft: {{kind: format, type: messages, inputs: {{train: reasoning}}, prompt: question, completion: completion}}
  grpo:
    kind: format
    type: prompt_only
    inputs: {{train: reasoning}}
    prompt: question
    extra: {{answer: final_answer}}
  hh: {{kind: source, path: {data}/hh-rlhf-harmless-base/test.jsonl.gz, limit: {rows}}}
  hh_parsed: {{kind: parse.hh_rlhf, inputs: {{data: hh}}}}
  dpo:
    kind: format
    type: preference
    inputs: {{train: hh_parsed}}
    prompt: prompt
    chosen: chosen
    rejected: rejected
datasets:
  sft: {{splits: {{train: sft.train}}}}
  grpo: {{splits: {{train: grpo.train}}}}
  dpo: {{splits: {{train: dpo.train}}}}
"""

# Qwen2.5-0.5B's transformer shape as a Llama (vocabulary: the tiny tokenizer's 30,522 WordPieces).
SHAPE = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}


def prepare(folder: Path, rows: int) -> None:
    from dataforge.engine.runner import build
    from dataforge.tiny import tiny_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE.format(data=ROOT / "recipes" / "data", rows=rows))
    build(recipe, folder / "build", show_progress=False)
    tiny_tokenizer().save_pretrained(folder / "tokenizer")
    print(f"datasets in {folder / 'build' / 'datasets'}, tokenizer in {folder / 'tokenizer'}")


def _cuda() -> Any:
    """torch.cuda where a GPU is present, else a stand-in whose calls do nothing (a CPU dry run)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda

    class _NoCuda:
        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: 0

    return _NoCuda()


def make_model(folder: Path, out: Path, shape: dict[str, int]) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    cfg = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        **shape,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    del model
    _cuda().empty_cache()
    return {"shape": shape, "vocab": len(tok), "parameters": params}


def train_one(kind: str, data: Path, model: Path, out: Path, **cfg: Any) -> dict[str, Any]:
    from trainers import TrainConfig, train

    _cuda().reset_peak_memory_stats()
    config = TrainConfig(bf16=True, logging_steps=1, output_dir=str(out), **cfg)
    t = time.perf_counter()
    result = train(kind, data, str(model), config)
    wall = time.perf_counter() - t
    logs = result.log_history
    tokens = max((e.get("num_tokens", 0) for e in logs), default=0)
    runtime = result.metrics.get("train_runtime", wall)
    losses = [e["loss"] for e in logs if "loss" in e]
    row = {
        "kind": kind,
        "config": {k: v for k, v in cfg.items()},
        "steps": result.steps,
        "train_runtime_s": round(runtime, 2),
        "wall_s_with_load_and_save": round(wall, 2),
        "samples_per_s": result.metrics.get("train_samples_per_second"),
        "tokens": tokens,
        "tokens_per_s": round(tokens / runtime, 1) if tokens else None,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "peak_gpu_mib": round(_cuda().max_memory_allocated() / 2**20),
        "rewards_logged": sorted({k for e in logs for k in e if k.startswith("rewards/")}),
    }
    print(json.dumps(row), flush=True)
    return row


def generation(model: Path, prompts: list[str], max_tokens: int, batch: int, rounds: int = 2) -> dict[str, Any]:
    """The same chat requests through ``TransformersBackend.generate`` and through ``model.generate``
    directly (same batches, sampling at temperature 1), alternated ``rounds`` times after a warm-up
    of each, the backend first in even rounds and second in odd ones, so clock and cache effects
    fall on both alike."""
    import torch

    from dataforge.llm.base import Request
    from dataforge.llm.hf import TransformersBackend
    from dataforge.llm.spec import ModelSpec, SamplingParams

    spec = ModelSpec(backend="transformers", model=str(model), batch_size=batch)
    params = SamplingParams(n=1, temperature=1.0, max_tokens=max_tokens)
    requests = [Request(params=params, messages=({"role": "user", "content": p},)) for p in prompts]
    backend = TransformersBackend(spec)
    tok, m = backend.tokenizer, backend.model
    texts = [backend.render(r)[0] for r in requests]

    def ours(reqs: list[Request]) -> int:
        return sum(g.completion_tokens for g in backend.generate(reqs))

    def raw(chunk: list[str]) -> int:
        n = 0
        with torch.no_grad():
            for s in range(0, len(chunk), batch):
                enc = tok(chunk[s : s + batch], return_tensors="pt", padding=True, add_special_tokens=False)
                seqs = m.generate(
                    **enc.to(backend.device),
                    max_new_tokens=max_tokens,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
                eos = tok.eos_token_id
                n += sum(
                    len(r[: r.index(eos)] if eos in r else r) for r in seqs[:, enc["input_ids"].shape[1] :].tolist()
                )
        return n

    inside = [0.0]  # seconds inside model.generate, which both call: the rest is each one's own work
    real_generate = m.generate

    def generate_timed(*args: Any, **kwargs: Any) -> Any:
        _cuda().synchronize()
        t = time.perf_counter()
        out = real_generate(*args, **kwargs)
        _cuda().synchronize()
        inside[0] += time.perf_counter() - t
        return out

    m.generate = generate_timed

    def timed(fn: Any, arg: Any) -> tuple[float, float, int]:
        _cuda().synchronize()
        inside[0], t = 0.0, time.perf_counter()
        n = fn(arg)
        _cuda().synchronize()
        return time.perf_counter() - t, inside[0], n

    ours(requests[:batch]), raw(texts[:batch])  # warm-up
    times: dict[str, list[float]] = {"backend": [], "raw": []}
    in_generate: dict[str, list[float]] = {"backend": [], "raw": []}
    tokens: dict[str, int] = {"backend": 0, "raw": 0}
    both = [("backend", ours, requests), ("raw", raw, texts)]
    for r in range(rounds):
        for name, fn, arg in both if r % 2 == 0 else both[::-1]:  # which goes first alternates
            sec, gen_s, n = timed(fn, arg)
            times[name].append(round(sec, 2))
            in_generate[name].append(round(gen_s, 2))
            tokens[name] += n
    total = {k: sum(v) for k, v in times.items()}
    return {
        "device": backend.device,
        "dtype": str(next(m.parameters()).dtype),
        "prompts": len(prompts),
        "max_tokens": max_tokens,
        "batch": batch,
        "rounds_s": times,
        "inside_model_generate_s": in_generate,
        "tokens": tokens,
        "backend_tokens_per_s": round(tokens["backend"] / total["backend"], 1),
        "raw_tokens_per_s": round(tokens["raw"] / total["raw"], 1),
        "backend_vs_raw": round(total["backend"] / total["raw"] - 1, 4),
    }


def run(folder: Path, out: Path, steps: int, shape: dict[str, int], only: list[str], rounds: int = 2) -> None:
    import torch

    results: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "bf16_supported": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "versions": {},
        "trainers": [],
        "errors": [],
    }
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate"):
        results["versions"][name] = __import__(name).__version__
    work = Path("/tmp/train_gpu")
    data = folder / "build" / "datasets"
    try:
        results["model"] = make_model(folder, work / "model", shape)
    except Exception:
        results["errors"].append(traceback.format_exc())
        out.write_text(json.dumps(results, indent=1))
        raise
    lora = {"r": 16, "alpha": 32, "target_modules": "all-linear"}
    sft = {"max_steps": steps, "max_length": 512}
    pairs = {"max_steps": steps // 2, "batch_size": 8, "max_length": 512, "lora": lora}
    grpo = {"max_steps": 4, "batch_size": 8, "num_generations": 4, "max_completion_length": 64, "lora": lora}
    runs = {
        "sft_full": ("sft", "sft", {**sft, "batch_size": 8}),
        "sft_lora": ("sft", "sft", {**sft, "batch_size": 8, "lora": lora}),
        "dpo_lora": ("dpo", "dpo", pairs),
        "reward_lora": ("reward", "dpo", pairs),
        "grpo_lora": ("grpo", "grpo", {**grpo, "max_length": 512}),
        "sft_full_b32": ("sft", "sft", {**sft, "batch_size": 32}),
        "sft_lora_b32": ("sft", "sft", {**sft, "batch_size": 32, "lora": lora}),
    }
    for name in only or [*runs, "generation"]:
        if name == "generation":
            continue
        kind, dataset, cfg = runs[name]
        try:
            results["trainers"].append(
                {"run": name, **train_one(kind, data / dataset, work / "model", work / name, **cfg)}
            )
        except Exception:
            results["errors"].append(f"{name}: {traceback.format_exc()}")
            print(results["errors"][-1], flush=True)
        out.write_text(json.dumps(results, indent=1))
    if only and "generation" not in only:
        return
    try:
        from datasets import load_from_disk

        prompts = [r["prompt"][-1]["content"] for r in load_from_disk(str(data / "grpo"))["train"].select(range(64))]
        results["generation"] = generation(work / "model", prompts, 128, 16, rounds)
        print(json.dumps(results["generation"]), flush=True)
    except Exception:
        results["errors"].append(f"generation: {traceback.format_exc()}")
        print(results["errors"][-1], flush=True)
    out.write_text(json.dumps(results, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("folder", type=Path)
    p.add_argument("--rows", type=int, default=512)
    r = sub.add_parser("run")
    r.add_argument("folder", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--steps", type=int, default=40)
    r.add_argument("--rounds", type=int, default=2, help="generation: alternated rounds of backend and raw")
    r.add_argument("--only", default="", help="comma-separated run names (sft_full, …, generation); default all")
    r.add_argument("--tiny", action="store_true", help="a 2-layer hidden-64 model: a dry run of the script on CPU")
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.folder, args.rows)
    else:
        tiny = {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
        }
        run(
            args.folder,
            args.out,
            args.steps,
            tiny if args.tiny else SHAPE,
            [n for n in args.only.split(",") if n],
            args.rounds,
        )


if __name__ == "__main__":
    main()
