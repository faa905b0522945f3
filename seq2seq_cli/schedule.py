"""The learning-rate schedule: linear warm-up, then constant, inverse-square-root decay, or
decay when dev BLEU, chrF or loss stops improving (``training.lr_schedule``)."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from seq2seq_cli.config import DEV_METRICS, TrainingConfig
from seq2seq_cli.state import dev_score

log = logging.getLogger(__name__)


class LearningRateSchedule:
    """Linear warm-up, then constant, inverse-square-root decay, or decay on a plateau of dev
    BLEU, chrF or loss (``plateau_metric``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainingConfig):
        self.optimizer = optimizer
        self.config = config
        self.plateau_scale = 1.0
        self.best = -math.inf
        self.bad_validations = 0

    def lr_at(self, step: int) -> float:
        config = self.config
        warmup = config.warmup_steps
        scale = min(1.0, step / warmup) if warmup else 1.0
        if config.lr_schedule == "inverse_sqrt":
            scale *= math.sqrt(max(warmup, 1) / max(step, warmup, 1))
        elif config.lr_schedule == "plateau":
            scale *= self.plateau_scale
        return max(config.learning_rate * scale, min(config.min_learning_rate, config.learning_rate))

    def step(self, step: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)

    def after_validation(self, dev_bleu: float, dev_chrf: float, dev_loss: float) -> None:
        if self.config.lr_schedule != "plateau":
            return
        score = dev_score(self.config.plateau_metric, dev_bleu, dev_chrf, dev_loss)
        if score > self.best:
            self.best, self.bad_validations = score, 0
            return
        self.bad_validations += 1
        if self.bad_validations > self.config.lr_decay_patience:
            self.plateau_scale *= self.config.lr_decay_factor
            self.bad_validations = 0
            log.info("dev %s has not improved for %d validations: learning rate x%g",
                     DEV_METRICS[self.config.plateau_metric], self.config.lr_decay_patience + 1,
                     self.config.lr_decay_factor)

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad_validations": self.bad_validations,
                "plateau_metric": self.config.plateau_metric}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_scale = state["plateau_scale"]
        # A resumed run may watch the other metric; a best of the old one means nothing to it.
        if state.get("plateau_metric", "bleu") == self.config.plateau_metric:
            self.best, self.bad_validations = state["best"], state["bad_validations"]
