"""`dataforge train sft`: TRL's ``SFTTrainer`` (completion-only loss on prompt/completion data) over a built dataset."""

from __future__ import annotations

from pathlib import Path

from trainers.config import TrainConfig
from trainers.run import TrainResult
from trainers.run import train as _train


def train(data: str | Path, model: str, cfg: TrainConfig | None = None) -> TrainResult:
    """Train on the dataset directory ``data`` (``<out>/datasets/<name>``) starting from ``model``."""
    return _train("sft", data, model, cfg or TrainConfig())
