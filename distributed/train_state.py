"""Bookkeeping of a training run besides weights and optimizer: epochs done, early stopping, history.

Pure Python (no Ray, no torch): stored in every checkpoint's ``extra["train_state"]`` so a resumed or
restarted run continues exactly where the checkpoint left off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from twotower.distributed.config import TrainConfig


@dataclass
class TrainState:
    """Everything besides weights/optimizer needed to resume: stored in the checkpoint's ``extra``."""

    epoch: int = 0                      # completed epochs
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0                 # epochs since the last improvement
    history: list[dict] = field(default_factory=list)
    resumed_after_epochs: list[int] = field(default_factory=list)   # restarts from the run's own checkpoint

    @classmethod
    def from_checkpoint_meta(cls, meta: dict) -> "TrainState":
        """The state saved in ``checkpoint.json``; a checkpoint without one gives ``epoch`` only."""
        saved = (meta.get("extra") or {}).get("train_state")
        if saved:
            return cls(**saved)
        return cls(epoch=int(meta.get("epoch") or 0))

    def end_epoch(self, epoch: int, value: float, cfg: TrainConfig) -> bool:
        """Record the monitored validation ``value`` of ``epoch``; returns True when early stopping
        ends the run after it (``patience`` epochs without an improvement of more than ``min_delta``,
        and epochs remain). The best epoch is the one with the highest value, however small the gain."""
        improved = value > self.best_metric + cfg.min_delta
        if value > self.best_metric:
            self.best_metric, self.best_epoch = value, epoch
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        self.epoch = epoch
        return cfg.patience > 0 and self.bad_epochs >= cfg.patience and epoch < cfg.epochs


def optimizer_changes(saved_train_config: dict, cfg: TrainConfig) -> list[str]:
    """``"key=value"`` of each optimizer setting (``optimizer``, ``sparse_optimizer``) in which a
    checkpoint's train config differs from ``cfg``; empty when its optimizer state can be restored.
    (A different optimizer's state has other keys and shapes: SparseAdam's moments vs row-wise Adagrad's
    one value per row.) A checkpoint from before ``sparse_optimizer`` existed counts as ``auto``."""
    defaults = {"optimizer": cfg.optimizer, "sparse_optimizer": "auto"}
    return [f"{key}={saved_train_config.get(key, default)}" for key, default in defaults.items()
            if saved_train_config.get(key, default) != getattr(cfg, key)]
