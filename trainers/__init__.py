"""Thin TRL entry points over datasets built by dataforge.

``trainers.sft``, ``trainers.dpo``, ``trainers.grpo`` and ``trainers.reward`` each expose
``train(data, model, cfg) -> TrainResult``: TRL's ``SFTTrainer``, ``DPOTrainer``, ``GRPOTrainer``
(rewards = dataforge's graders, the functions the ``verify`` step uses) and ``RewardTrainer``.
Before any training, ``trainers.preflight.check`` verifies that the data fits the trainer; after
it, the output directory holds ``dataforge_provenance.json`` (the build's run id, recipe hash
and dataset fingerprints), so a model can be traced back to the data it saw.
"""

from trainers.config import TrainConfig, load_train_config
from trainers.run import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_train_config", "train"]
