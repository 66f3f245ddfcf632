"""`dataforge train grpo`: TRL's ``GRPOTrainer`` over a built prompt-only dataset, rewarded by
dataforge's graders (the very functions of the ``verify`` step)."""

from __future__ import annotations

from pathlib import Path

from trainers.config import TrainConfig
from trainers.run import TrainResult
from trainers.run import train as _train


def train(data: str | Path, model: str, cfg: TrainConfig | None = None) -> TrainResult:
    """Train on the dataset directory ``data`` (``<out>/datasets/<name>``) starting from ``model``."""
    return _train("grpo", data, model, cfg or TrainConfig())
