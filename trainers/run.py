"""What every trainer shares: load the built dataset and the tokenizer, pre-flight, TRL
arguments, LoRA, training, the checkpoint, and ``dataforge_provenance.json``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from dataforge.errors import DataforgeError
from trainers.config import TrainConfig, TrainConfigError
from trainers.preflight import PreflightReport, check

Kind = Literal["sft", "dpo", "grpo", "reward"]
PROVENANCE = "dataforge_provenance.json"
STARTED = "dataforge_training.json"  # written when training starts: what a resumed run must match


@dataclass
class TrainResult:
    output_dir: Path
    train_loss: float
    steps: int
    trainable_params: int
    total_params: int
    preflight: PreflightReport
    provenance: Path
    metrics: dict[str, float]
    log_history: list[dict[str, Any]]
    eval_split: str | None = None
    eval_metrics: dict[str, float] | None = None  # trainer.evaluate() on eval_split after training


def load_built(data: str | Path) -> tuple[Any, dict[str, Any] | None]:
    """The ``DatasetDict`` of a dataset directory written by dataforge, and its ``dataforge.json``."""
    from datasets import DatasetDict, load_from_disk

    path = Path(data)
    if not path.is_dir():
        raise DataforgeError(f"--data {path}: no such dataset directory (built datasets are in <out>/datasets/<name>)")
    try:
        dd = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        built = sorted(p.name for p in (path / "datasets").glob("*") if p.is_dir())
        if built:  # a build folder: name its datasets
            raise DataforgeError(
                f"--data {path}: a build folder, not a dataset; its datasets: "
                + ", ".join(str(path / "datasets" / name) for name in built)
            ) from None
        raise DataforgeError(f"--data {path}: not a dataset saved with save_to_disk: {exc}") from None
    if not isinstance(dd, DatasetDict):
        raise DataforgeError(f"--data {path}: a single split; dataforge exports a DatasetDict with named splits")
    meta_path = path / "dataforge.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    return dd, meta


def load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise DataforgeError(f"--model {model}: cannot load its tokenizer: {exc}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def reward_functions(cfg: TrainConfig) -> tuple[list[Any], list[float], list[str]]:
    """GRPO rewards: dataforge graders as TRL reward functions, their weights, the columns read."""
    from dataforge.graders import as_trl_reward, grader_columns, load_grader

    funcs, weights, columns = [], [], []
    for r in cfg.rewards:
        try:
            fn = load_grader(r.name)
        except ValueError as exc:
            raise TrainConfigError(f"rewards: {exc}") from None
        columns.extend(grader_columns(fn, r.inputs, r.options).values())
        funcs.append(as_trl_reward(fn, columns=r.inputs, **r.options))
        weights.append(r.weight)
    return funcs, weights, columns


def _load_model(kind: Kind, model: str, cfg: TrainConfig, tok: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    try:
        if kind == "reward":
            m = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1, dtype=dtype)
        else:
            m = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise DataforgeError(f"--model {model}: cannot load it: {exc}") from None
    if m.config.pad_token_id is None:
        m.config.pad_token_id = tok.pad_token_id
    return m


def _lora(kind: Kind, cfg: TrainConfig) -> Any:
    if cfg.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="SEQ_CLS" if kind == "reward" else "CAUSAL_LM",
    )


def _eval_rows(split: Any, cfg: TrainConfig) -> Any:
    """The eval split, or ``eval_rows`` of its rows drawn with ``seed`` (in the split's order)."""
    if cfg.eval_rows is None or len(split) <= cfg.eval_rows:
        return split
    import numpy as np

    picked = np.random.default_rng(cfg.seed).choice(len(split), cfg.eval_rows, replace=False)
    return split.select(sorted(picked.tolist()))


def _eval_batch_size(kind: Kind, cfg: TrainConfig) -> int:
    """Rows per evaluation batch: ``eval_batch_size``, else ``batch_size``; for GRPO a multiple of
    ``num_generations`` (TRL samples each prompt's completions in one batch)."""
    if kind != "grpo":
        return cfg.eval_batch_size or cfg.batch_size
    if cfg.eval_batch_size is not None:
        if cfg.eval_batch_size % cfg.num_generations:
            raise TrainConfigError(
                f"grpo: eval_batch_size ({cfg.eval_batch_size}) must be a multiple of num_generations "
                f"({cfg.num_generations})"
            )
        return cfg.eval_batch_size
    return -(-cfg.batch_size // cfg.num_generations) * cfg.num_generations


def _args(kind: Kind, cfg: TrainConfig, output_dir: Path, trl_type: str, evaluating: bool = False) -> Any:
    import torch
    import trl

    common: dict[str, Any] = {
        "output_dir": str(output_dir),
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "bf16": cfg.bf16,
        "seed": cfg.seed,
        "logging_steps": cfg.logging_steps,
        "save_strategy": "steps" if cfg.save_steps else "no",
        "save_steps": cfg.save_steps or 500,
        "report_to": [],
        "use_cpu": not torch.cuda.is_available(),
        "disable_tqdm": True,
    }
    if cfg.gradient_checkpointing:
        common["gradient_checkpointing"] = True
    if evaluating:  # once after training (``_train``), and every eval_steps steps when set
        common["per_device_eval_batch_size"] = _eval_batch_size(kind, cfg)
        common["eval_strategy"] = "steps" if cfg.eval_steps else "no"
        if cfg.eval_steps:
            common["eval_steps"] = cfg.eval_steps
    if kind == "sft":  # the loss on the completion only, for prompt/completion data
        return trl.SFTConfig(max_length=cfg.max_length, completion_only_loss=trl_type == "prompt_completion", **common)
    if kind == "dpo":
        return trl.DPOConfig(max_length=cfg.max_length, beta=cfg.beta, **common)
    if kind == "reward":
        return trl.RewardConfig(max_length=cfg.max_length, **common)
    if (cfg.batch_size * cfg.grad_accum) % cfg.num_generations:
        raise TrainConfigError(
            f"grpo: batch_size × grad_accum ({cfg.batch_size} × {cfg.grad_accum}) must be a multiple of "
            f"num_generations ({cfg.num_generations})"
        )
    _, weights, _ = reward_functions(cfg)
    return trl.GRPOConfig(
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        reward_weights=weights,
        **common,
    )


def preflight(kind: Kind, data: str | Path, model: str, cfg: TrainConfig) -> tuple[PreflightReport, Any, dict | None]:
    """``preflight.check`` of the built dataset ``data``, and what its build's split audit
    (``dataforge.json``) says of the eval split against ``train``; the dataset and that meta."""
    dd, meta = load_built(data)
    tok = load_tokenizer(model)
    columns = reward_functions(cfg)[2] if kind == "grpo" else []
    report = check(dd, kind, tok, cfg.max_length, columns, cfg.eval_split)
    if report.eval_split is not None:
        _audit_eval_split(report, meta)
    return report, dd, meta


def _audit_eval_split(report: PreflightReport, meta: dict | None) -> None:
    """Say whether the eval split shares prompts with ``train`` by the build's split audit: a
    shared prompt makes the eval loss a training figure, so it is a warning."""
    split = report.eval_split
    pairs = [p for p in (meta or {}).get("audit", []) if {p["split_a"], p["split_b"]} == {"train", split}]
    if not pairs:
        why = "not built by dataforge" if meta is None else "the build audited no such pair"
        report.checks.append(("eval split overlap", f"not audited ({why})"))
        return
    exact = pairs[0]["exact_overlap"] + pairs[0]["same_prompt_different_target"]
    near = pairs[0]["near_overlap"]
    if exact or near:
        said = f"shares {exact:,} prompt(s) and {near:,} near-duplicate prompt(s) with train"
        report.checks.append(("eval split overlap", said))
        report.warnings.append(f"eval split '{split}' {said} (the build's split audit): its loss is not held out")
    else:
        report.checks.append(("eval split overlap", "no prompt shared with train (the build's split audit)"))


def train(kind: Kind, data: str | Path, model: str, cfg: TrainConfig) -> TrainResult:
    """Pre-flight, then TRL training of ``kind`` on the built dataset ``data``, then the
    checkpoint and the provenance file in the output directory."""
    from datasets import disable_caching, enable_caching, is_caching_enabled

    caching = is_caching_enabled()
    disable_caching()  # TRL's tokenizing maps go to temporary files, not cache-*.arrow in the build's dataset
    try:
        return _train(kind, data, model, cfg)
    finally:
        if caching:
            enable_caching()


def _train(kind: Kind, data: str | Path, model: str, cfg: TrainConfig) -> TrainResult:
    import trl

    report, dd, meta = preflight(kind, data, model, cfg)
    tok = load_tokenizer(model)
    output_dir = Path(cfg.output_dir or f"runs/{kind}-{Path(data).name}")
    evaluating = report.eval_split is not None
    args = _args(kind, cfg, output_dir, report.trl_type, evaluating)
    resume_from = _resumable(kind, model, meta, output_dir, data) if cfg.resume else _fresh(output_dir)
    m = _load_model(kind, model, cfg, tok)
    kwargs: dict[str, Any] = {
        "model": m,
        "args": args,
        "train_dataset": dd["train"],
        "eval_dataset": _eval_rows(dd[report.eval_split], cfg) if evaluating else None,
        "processing_class": tok,
        "peft_config": _lora(kind, cfg),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / STARTED).write_text(json.dumps(_started(kind, model, meta, data), indent=1, sort_keys=True) + "\n")
    trainer_cls = {"sft": trl.SFTTrainer, "dpo": trl.DPOTrainer, "reward": trl.RewardTrainer}.get(kind)
    if kind == "grpo":
        trainer_cls = trl.GRPOTrainer
        kwargs["reward_funcs"] = reward_functions(cfg)[0]
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    trainer = trainer_cls(**kwargs)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - t0  # training; the evaluation after it is timed in its metrics
    evaluated = _evaluated(trainer, result.global_step) if evaluating else None
    trainer.save_model(str(output_dir))
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    metrics = _numbers(result.metrics)
    provenance = output_dir / PROVENANCE
    provenance.write_text(
        json.dumps(
            {
                **_provenance(
                    kind, data, model, cfg, meta, report, started, seconds, metrics, evaluated, trainable, total
                ),
                "eval_rows": len(kwargs["eval_dataset"]) if evaluating else None,
                "resumed_from": str(resume_from) if resume_from else None,
            },
            indent=1,
            sort_keys=True,
            default=str,
        )
        + "\n"
    )
    return TrainResult(
        output_dir=output_dir,
        train_loss=float(result.training_loss),
        steps=int(result.global_step),
        trainable_params=trainable,
        total_params=total,
        preflight=report,
        provenance=provenance,
        metrics=metrics,
        log_history=list(trainer.state.log_history),
        eval_split=report.eval_split,
        eval_metrics=evaluated,
    )


def _started(kind: Kind, model: str, meta: dict | None, data: str | Path) -> dict[str, Any]:
    """What a training run starts from: its trainer, model and dataset (the build's fingerprint and
    run, else the dataset's path)."""
    dataset = {k: meta[k] for k in ("fingerprint", "run_id")} if meta else {"path": str(Path(data).resolve())}
    return {"trainer": kind, "model": model, "dataset": dataset}


def _resumable(kind: Kind, model: str, meta: dict | None, output_dir: Path, data: str | Path) -> Path:
    """The last checkpoint in ``output_dir`` to resume from, once its run is known to have had this
    trainer, model and dataset (a checkpoint trained on other data would go on silently on this)."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if last is None:
        raise TrainConfigError(
            f"resume: no checkpoint-N folder in {output_dir} (a run writes them every save_steps steps)"
        )
    started = output_dir / STARTED
    if not started.exists():
        raise TrainConfigError(f"resume: {output_dir} has no {STARTED}: its checkpoints were not written here")
    before, now = json.loads(started.read_text()), _started(kind, model, meta, data)
    for key in ("trainer", "model", "dataset"):
        if before[key] != now[key]:
            raise TrainConfigError(
                f"resume: the checkpoints in {output_dir} were trained with {key} {before[key]}, this run has "
                f"{now[key]}; resume the same run, or train into another output_dir"
            )
    return Path(last)


def _fresh(output_dir: Path) -> None:
    """Refuse to start a run in an output directory holding an earlier run's checkpoints: a later
    ``--resume`` would take the newest checkpoint-N, which could be the earlier run's."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if last is not None:
        raise TrainConfigError(
            f"output_dir {output_dir} holds the checkpoints of an earlier run ({Path(last).name}): resume it "
            "(--resume), or train into another output_dir"
        )
    return None


def _evaluated(trainer: Any, step: int) -> dict[str, float]:
    """The eval split's metrics after training: those of the evaluation TRL ran at the last step
    (``eval_steps`` dividing it), else of one run now."""
    at_end = [e for e in trainer.state.log_history if e.get("step") == step and any(k.startswith("eval_") for k in e)]
    return _numbers(at_end[-1] if at_end else trainer.evaluate())


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def _provenance(
    kind: Kind,
    data: str | Path,
    model: str,
    cfg: TrainConfig,
    meta: dict | None,
    report: PreflightReport,
    started: datetime,
    seconds: float,
    metrics: dict[str, float],
    evaluated: dict[str, float] | None,
    trainable: int,
    total: int,
) -> dict[str, Any]:
    import peft
    import torch
    import transformers
    import trl

    from dataforge import __version__

    data_path = Path(data).resolve()
    lineage = data_path.parent.parent / "lineage.duckdb"
    return {
        "trainer": kind,
        "model": model,
        "dataset": {
            "path": str(data_path),
            "built_by_dataforge": meta is not None,
            **(
                {k: meta[k] for k in ("dataset", "fingerprint", "run_id", "recipe", "recipe_sha256", "splits", "steps")}
                if meta
                else {}
            ),
            "lineage": str(lineage) if lineage.exists() else None,
        },
        "config": cfg.model_dump(mode="json"),
        "completion_only_loss": report.trl_type == "prompt_completion" if kind == "sft" else None,
        "preflight": {"checks": report.checks, "splits": {k: asdict(v) for k, v in report.splits.items()}},
        "started_at": started.isoformat(),
        "seconds": seconds,
        "metrics": metrics,
        "eval": {"split": report.eval_split, "metrics": evaluated, "warnings": report.warnings},
        "trainable_params": trainable,
        "total_params": total,
        "versions": {
            "dataforge": __version__,
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "peft": peft.__version__,
        },
    }
