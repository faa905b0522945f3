"""What a training run carries across a restart, besides the weights and the optimizer.

``TrainingState`` is the loop's position and bookkeeping, saved in every checkpoint; the RNG
states of every process go with it, so a resumed run draws the same dropout masks and
teacher-forcing coins as one that was never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Optional

import torch

from seq2seq_cli.config import DEV_METRICS, TrainingConfig


@dataclass
class TrainingState:
    """Where the loop is and what it has seen: saved in every checkpoint, restored on resume.

    ``epoch`` counts finished epochs and ``batch_in_epoch`` the batches of the current epoch
    already trained on."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_dev_bleu: float = -math.inf  # dev BLEU at best_step, whatever picked it
    best_step: int = 0
    validations_without_improvement: int = 0
    validated_at: int = -1  # the step of the latest validation
    saved_steps: list[int] = field(default_factory=list)  # the steps kept as step-N.pt
    interval_loss: float = 0.0  # summed loss and target tokens since the last train record
    interval_tokens: int = 0
    skipped_steps: int = 0  # updates skipped for a non-finite loss
    elapsed_s: float = 0.0  # training seconds, up to the moment this state was saved
    # sacreBLEU's tokenizer for dev BLEU: best_dev_bleu compares only with BLEU split the same way.
    bleu_tokenize: Optional[str] = None
    # training.best_metric, and its best value so far, higher is better (``dev_score``).
    best_metric: str = "bleu"
    best_score: float = -math.inf

    # At the top level of every checkpoint, best.pt included; the rest under "trainer".
    HEADLINE: ClassVar[tuple[str, ...]] = ("step", "epoch", "best_dev_bleu", "best_step")
    # What a checkpoint saved before a field existed held: earlier versions always scored with 13a
    # and kept the best dev BLEU.
    FORMERLY: ClassVar[dict[str, Any]] = {"bleu_tokenize": "13a", "best_metric": "bleu"}

    def to_checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(headline fields, trainer fields) as a checkpoint stores them."""
        fields = dataclasses.asdict(self)
        headline = {key: fields.pop(key) for key in self.HEADLINE}
        return headline, fields

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> "TrainingState":
        saved = {**cls.FORMERLY, "best_score": payload["best_dev_bleu"], **payload["trainer"]}
        return cls(**{key: payload[key] for key in cls.HEADLINE},
                   **{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name not in cls.HEADLINE})

    def limit_reached(self, training: TrainingConfig, time_is_up: bool) -> Optional["Stop"]:
        """The limit of ``training`` this state has reached, if any."""
        if training.patience and self.validations_without_improvement >= training.patience:
            return Stop("patience", f"dev {DEV_METRICS[self.best_metric]} did not improve for {training.patience} "
                        "validations", training.patience * 2)
        if training.max_steps and self.step >= training.max_steps:
            return Stop("max_steps", f"reached max_steps={training.max_steps}", training.max_steps * 2)
        if training.max_epochs and self.epoch >= training.max_epochs:
            return Stop("max_epochs", f"reached max_epochs={training.max_epochs}", training.max_epochs * 2)
        if time_is_up:
            return Stop("max_minutes", f"reached max_minutes={training.max_minutes:g}", training.max_minutes * 2)
        return None

    @property
    def best_value(self) -> float:
        """The best value of ``best_metric`` so far, as it is measured (a loss as a loss)."""
        return -self.best_score if self.best_metric == "loss" else self.best_score


def dev_score(metric: str, bleu: float, chrf: float, loss: float) -> float:
    """``metric``'s value of a validation, oriented so that higher is better (a loss negated)."""
    return {"bleu": bleu, "chrf": chrf, "loss": -loss}[metric]


def out_of_time(training: TrainingConfig, elapsed_s: float) -> bool:
    """Whether ``elapsed_s`` seconds of training are past ``training.max_minutes`` (0: never)."""
    return bool(training.max_minutes) and elapsed_s > training.max_minutes * 60


class Stop(NamedTuple):
    """Why a run stops: the ``training`` key whose limit was reached, in words, and a value of
    that key that would let the run go on (for hints)."""

    key: str
    reason: str
    raised: float


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
