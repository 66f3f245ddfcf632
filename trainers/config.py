"""The training config: a YAML file and/or command-line flags, validated (unknown keys are errors).

learning_rate: 2.0e-5
epochs: 1                 # or max_steps
batch_size: 4
max_length: 1024
lora: {r: 16, alpha: 32, target_modules: all-linear}
bf16: true
eval_split: auto          # validation, else test; a split's name; none: no evaluation
eval_steps: 50            # also evaluate every 50 steps (default: once, after training)
eval_rows: 256            # evaluate on at most 256 rows of it, a seeded sample (default: every row)
rewards:                  # grpo: graders, as in the verify step
  - {name: math, inputs: {answer: answer}}
  - {name: format, weight: 0.2}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dataforge.errors import DataforgeError


class TrainConfigError(DataforgeError):
    """A training config that cannot be used (names the file and key)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraOptions(_Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class RewardSpec(_Strict):
    """A GRPO reward: a dataforge grader (built-in name or ``module:function``) and its weight."""

    name: str
    inputs: dict[str, str] = Field(default_factory=dict)  # grader parameter → dataset column
    options: dict[str, Any] = Field(default_factory=dict)
    weight: float = 1.0


class TrainConfig(_Strict):
    learning_rate: float = Field(2e-5, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=8)
    lora: LoraOptions | None = None
    bf16: bool = False
    seed: int = 0
    output_dir: str | None = None  # default runs/<trainer>-<dataset>
    logging_steps: int = Field(10, ge=1)
    save_steps: int | None = None  # default: save at the end only
    resume: bool = False  # go on from the last checkpoint-N in output_dir (same trainer, model and dataset)
    gradient_checkpointing: bool = False
    # evaluation: ``auto`` takes the dataset's validation split, else its test split (one with rows);
    # a split's name takes that one; ``none`` evaluates nothing. Evaluated once after training, and
    # every ``eval_steps`` steps too when set.
    eval_split: str | None = "auto"  # (null: none)
    eval_steps: int | None = Field(None, ge=1)
    # at most this many rows of the eval split, drawn with ``seed`` (GRPO evaluates by generating
    # num_generations completions per prompt: a whole test split can take longer than training)
    eval_rows: int | None = Field(None, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)  # default: batch_size (grpo: rounded up to whole groups)
    # dpo
    beta: float = Field(0.1, gt=0)
    # grpo
    num_generations: int = Field(4, ge=2)
    max_completion_length: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0)
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [
            RewardSpec(name="math", inputs={"answer": "answer"}),
            RewardSpec(name="format", weight=0.2),
        ]
    )


def load_train_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config of a YAML file (optional) with ``overrides`` (command-line flags) on top."""
    import yaml

    data: dict[str, Any] = {}
    where = "the command line"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise TrainConfigError(f"{path}: cannot read the training config: {exc}") from None
        except yaml.YAMLError as exc:
            raise TrainConfigError(f"{path}: not YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise TrainConfigError(f"{path}: a training config is a mapping of keys to values")
        data.update(loaded)
    for key, value in (overrides or {}).items():
        if key == "lora" and isinstance(value, dict) and isinstance(data.get("lora"), dict):
            data["lora"] = {**data["lora"], **value}
        else:
            data[key] = value
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise TrainConfigError(f"{where}: key '{key}': {err['msg']}") from None
