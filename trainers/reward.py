"""`dataforge train reward`: TRL's ``RewardTrainer`` (a scalar-head reward model) on the
preference pairs of a built dataset."""

from __future__ import annotations

from pathlib import Path

from trainers.config import TrainConfig
from trainers.run import TrainResult
from trainers.run import train as _train


def train(data: str | Path, model: str, cfg: TrainConfig | None = None) -> TrainResult:
    """Train on the dataset directory ``data`` (``<out>/datasets/<name>``) starting from ``model``."""
    return _train("reward", data, model, cfg or TrainConfig())
