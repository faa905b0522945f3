"""Training: from a checked config to a run directory with a model that has learned.

Run directory layout::

    RUN/config.yaml              the fully resolved config
    RUN/tokenizer/               the tokenizer(s), save_pretrained form
    RUN/checkpoints/best.pt      best dev BLEU so far (weights, config, sizes)
    RUN/checkpoints/last.pt      latest state (plus optimizer and schedule)
    RUN/metrics.jsonl            one JSON object per event: start, train, valid, end
    RUN/curves.png               train/dev loss, dev perplexity and dev BLEU against step
    RUN/tensorboard/             the same scalars for TensorBoard (training.tensorboard: true)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from seq2seq_cli import shards
from seq2seq_cli.checkpoint import atomic_write, checkpoint_config, load_checkpoint, save_atomically, save_checkpoint
from seq2seq_cli.config import Config, TrainingConfig, check_training_files, to_dict, to_yaml
from seq2seq_cli.data import ParallelCorpus, TokenBatches, filter_pairs, read_parallel, tokenize_corpus
from seq2seq_cli.decoding import translate_corpus
from seq2seq_cli.device import autocast, select_device
from seq2seq_cli.distributed import World, barrier, from_main, gather_all, join, leave, sum_all
from seq2seq_cli.errors import UserError
from seq2seq_cli.evaluation import corpus_bleu
from seq2seq_cli.metrics import MetricsLog, read_metrics, truncate_metrics
from seq2seq_cli.model import Seq2Seq, build_model, load_bert_embeddings
from seq2seq_cli.plotting import plot_curves
from seq2seq_cli.tokenization import Vocabularies, build_vocabularies

log = logging.getLogger(__name__)

# What a run directory holds that s2s wrote; --overwrite removes these and nothing else.
RUN_DIR_ENTRIES = ("config.yaml", "tokenizer", "checkpoints", "metrics.jsonl", "curves.png", "tensorboard")


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to reuse a run directory unless told to; never touch files s2s did not write."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} is a file; choose another --run-dir")
    existing = [name for name in RUN_DIR_ENTRIES if (run_dir / name).exists()]
    if existing and not overwrite:
        raise UserError(f"run directory {run_dir} already holds a run ({', '.join(existing)}); "
                        "pass --overwrite to replace it or --run-dir to choose another")
    for name in existing:
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create run directory {run_dir} ({err.strerror})") from None
    try:  # a real write: permission bits say little to root or on a read-only mount
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as err:
        raise UserError(f"run directory {run_dir} is not writable ({err.strerror})") from None


def check_disk_space(run_dir: Path, parameters: int) -> None:
    """Fail before training when checkpoints cannot fit: best + last (with Adam's two moments)
    + the temporary copy written before each rename, 4 bytes per number."""
    needed = parameters * 4 * (1 + 3 + 3)
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise UserError(f"run directory {run_dir} has {free / 2**20:.0f} MB free but checkpoints of this "
                        f"model need about {needed / 2**20:.0f} MB; free space or choose another --run-dir")


class LearningRateSchedule:
    """Linear warm-up, then constant, inverse-square-root decay, or decay on a plateau of dev
    BLEU or dev loss (``plateau_metric``)."""

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

    def after_validation(self, dev_bleu: float, dev_loss: float) -> None:
        if self.config.lr_schedule != "plateau":
            return
        watch_loss = self.config.plateau_metric == "loss"
        score = -dev_loss if watch_loss else dev_bleu  # higher is better
        if score > self.best:
            self.best, self.bad_validations = score, 0
            return
        self.bad_validations += 1
        if self.bad_validations > self.config.lr_decay_patience:
            self.plateau_scale *= self.config.lr_decay_factor
            self.bad_validations = 0
            log.info("dev %s has not improved for %d validations: learning rate x%g",
                     "loss" if watch_loss else "BLEU", self.config.lr_decay_patience + 1,
                     self.config.lr_decay_factor)

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad_validations": self.bad_validations,
                "plateau_metric": self.config.plateau_metric}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_scale = state["plateau_scale"]
        # A resumed run may watch the other metric; a best of the old one means nothing to it.
        if state.get("plateau_metric", "bleu") == self.config.plateau_metric:
            self.best, self.bad_validations = state["best"], state["bad_validations"]


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed cross-entropy over non-padding target tokens: logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=pad_id, label_smoothing=label_smoothing, reduction="sum")


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; ``last`` was saved. ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Trainer:
    """The training loop and everything it must carry across a restart.

    ``epoch`` counts finished epochs and ``batch_in_epoch`` the batches of the current epoch
    already trained on; with the epoch's batch order a pure function of (seed, epoch) and the
    RNG states saved, a resumed run continues exactly where the saved one was.
    """

    def __init__(self, config: Config, model: Seq2Seq, vocabs: Vocabularies, train_batches: TokenBatches,
                 dev: ParallelCorpus, device: torch.device, run_dir: Path,
                 test: Optional[ParallelCorpus] = None, resume_from: Optional[dict[str, Any]] = None,
                 world: World = World()):
        self.config = config
        self.world = world
        self.training = config.training
        self.model = model
        self.vocabs = vocabs
        self.train_batches = train_batches
        self.dev = dev
        self.test = test
        self.device = device
        self.run_dir = run_dir
        self.model_args = {"src_vocab_size": vocabs.src_size, "tgt_vocab_size": vocabs.tgt_size,
                           "pad_id": vocabs.pad_id, "pretrained_dim": self._pretrained_dim()}
        # Under torchrun, DDP averages the gradients; evaluation and saving use the plain model.
        self.train_model = model
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        fused = {"fused": True} if device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=self.training.learning_rate,
                                           weight_decay=self.training.weight_decay, **fused)
        self.schedule = LearningRateSchedule(self.optimizer, self.training)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_bleu = -math.inf
        self.best_step = 0
        self.validations_without_improvement = 0
        self.saved_steps: list[int] = []
        self.interval_loss = 0.0
        self.interval_tokens = 0
        self.skipped_steps = 0
        self.elapsed_before = 0.0  # training seconds of earlier runs of this training
        self.validated_at = -1  # the step of the latest validation
        if resume_from is not None:
            self._restore(resume_from)
        self.metrics = None  # only rank 0 writes
        if world.is_main:
            self.metrics = MetricsLog(run_dir / "metrics.jsonl",
                                      run_dir / "tensorboard" if config.training.tensorboard else None,
                                      first_step=self.step + 1)
        self.started = time.perf_counter()
        self.signal_received: Optional[int] = None

    def record(self, **values: Any) -> None:
        if self.metrics is not None:
            self.metrics.write(**values, elapsed_s=round(self.elapsed(), 1))

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's batches of an epoch: every world.size-th, the same number in every process."""
        batches = self.train_batches.epoch_batches(epoch)
        if not self.world.distributed:
            return batches
        per_process = len(batches) // self.world.size
        return batches[self.world.rank:: self.world.size][:per_process]

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def _pretrained_dim(self) -> int:
        embedding = self.model.encoder.embedding
        return embedding[0].embedding_dim if isinstance(embedding, torch.nn.Sequential) else 0

    # -- the loop ---------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        training = self.training
        self.started = time.perf_counter()
        progress = _progress_bar(training.max_steps, self.step) if self.world.is_main else None
        interval_start = time.perf_counter()
        interval_tokens_timed = 0
        stop_reason = None
        nonfinite_in_row = 0
        self.model.train()
        if training.max_steps and self.step >= training.max_steps:
            stop_reason = f"reached max_steps={training.max_steps}"
        with _catch_signals(self):
            while stop_reason is None:
                if training.max_epochs and self.epoch >= training.max_epochs:
                    stop_reason = f"reached max_epochs={training.max_epochs}"
                    break
                epoch_batches = self.epoch_batches(self.epoch)
                while self.batch_in_epoch < len(epoch_batches):
                    batch = self.train_batches.make_batch(epoch_batches[self.batch_in_epoch]).to(self.device)
                    self.step += 1
                    self.batch_in_epoch += 1
                    loss = self._train_step(batch)
                    if loss is None:
                        nonfinite_in_row += 1
                        self.skipped_steps += 1
                        log.warning("step %d: loss or gradients not finite, update skipped (%d in a row)",
                                    self.step, nonfinite_in_row)
                        if nonfinite_in_row >= training.max_nonfinite_steps:
                            raise UserError(
                                f"training diverged: {nonfinite_in_row} steps in a row with a non-finite loss at "
                                f"step {self.step}; the last good checkpoint is {self.run_dir}/checkpoints/last.pt. "
                                "Lower training.learning_rate or raise training.clip_grad_norm, then --resume")
                    else:
                        nonfinite_in_row = 0
                        self.interval_loss += loss
                        self.interval_tokens += batch.n_tgt_tokens
                    interval_tokens_timed += batch.n_tgt_tokens
                    if progress is not None:
                        progress.update(1)

                    if self.step % training.log_every == 0:
                        seconds = time.perf_counter() - interval_start
                        loss_sum, loss_tokens, timed_tokens = sum_all(
                            self.world, [self.interval_loss, self.interval_tokens, interval_tokens_timed], self.device)
                        record = {"event": "train", "step": self.step, "epoch": self.epoch + 1,
                                  "train_loss": round(loss_sum / max(loss_tokens, 1), 5),
                                  "lr": self.optimizer.param_groups[0]["lr"],
                                  "tokens_per_s": round(timed_tokens / max(seconds, 1e-9), 1),
                                  "skipped_steps": self.skipped_steps}
                        self.record(**record)
                        _report(progress, record)
                        self.interval_loss, self.interval_tokens = 0.0, 0
                        interval_start, interval_tokens_timed = time.perf_counter(), 0

                    if training.validate_every and self.step % training.validate_every == 0:
                        if self.validate_and_save():
                            stop_reason = f"dev BLEU did not improve for {training.patience} validations"
                    elif training.save_every and self.step % training.save_every == 0:
                        self.save_last()

                    if training.max_steps and self.step >= training.max_steps:
                        stop_reason = stop_reason or f"reached max_steps={training.max_steps}"
                    time_is_up = bool(training.max_minutes) and self.elapsed() > training.max_minutes * 60
                    signalled = self.signal_received is not None
                    if self.world.distributed:  # every process must stop at the same step
                        time_is_up, signalled = (v > 0 for v in sum_all(
                            self.world, [float(time_is_up), float(signalled)], self.device))
                    if time_is_up:
                        stop_reason = stop_reason or f"reached max_minutes={training.max_minutes:g}"
                    if signalled:
                        self._stop_for_signal()
                    if stop_reason:
                        break
                else:
                    if not training.validate_every:
                        if self.validate_and_save(end_of_epoch=True):
                            stop_reason = f"dev BLEU did not improve for {training.patience} validations"
                    else:
                        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        if progress is not None:
            progress.close()
        if self.validated_at != self.step:
            self.validate_and_save()
        log.info("stopped: %s after %d steps (%.1f min); best dev BLEU %.2f at step %d",
                 stop_reason, self.step, self.elapsed() / 60, self.best_bleu, self.best_step)
        summary = {"event": "end", "step": self.step, "epoch": self.epoch + (1 if self.batch_in_epoch else 0),
                   "reason": stop_reason, "best_dev_bleu": self.best_bleu, "best_step": self.best_step,
                   "skipped_steps": self.skipped_steps, "wall_s": round(self.elapsed(), 1)}
        if self.test is not None and self.world.is_main:
            summary["test_bleu"] = self.evaluate_test()
        self.record(**summary)
        if self.metrics is not None:
            self.metrics.close()
        return summary

    def _train_step(self, batch) -> Optional[float]:
        """One update; returns the summed loss, or None when it was not finite (no update made)."""
        training = self.training
        self.schedule.step(self.step)
        with autocast(self.device):
            logits = self.train_model(batch.src_ids, batch.src_lengths, batch.tgt_in, training.teacher_forcing_ratio)
            loss = sequence_loss(logits, batch.tgt_out, self.vocabs.pad_id, training.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        # The mean over the real target tokens of the global batch: DDP averages the
        # processes' gradients, so each scales its summed loss by world size / global tokens.
        global_tokens = sum_all(self.world, [batch.n_tgt_tokens], self.device)[0]
        (loss * (self.world.size / global_tokens)).backward()
        # The gradient norm is needed anyway for clipping; a non-finite one means a bad loss.
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), training.clip_grad_norm or math.inf)
        finite, loss_value = torch.stack([torch.isfinite(norm).float(), loss.detach().float()]).tolist()  # one sync
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        return loss_value

    def _stop_for_signal(self) -> None:
        self.save_last()
        name = signal.Signals(self.signal_received).name
        message = (f"{name} received: stopped at step {self.step} (epoch {self.epoch + 1}) and saved "
                   f"{self.run_dir / 'checkpoints' / 'last.pt'}; resume with: s2s train --resume {self.run_dir}")
        if self.metrics is not None:
            self.metrics.close()
        raise TrainingInterrupted(message, 128 + self.signal_received)

    # -- validation and checkpoints -------------------------------------------------------------

    @torch.no_grad()
    def dev_loss(self) -> float:
        self.model.eval()
        batches = TokenBatches(self.dev, self.vocabs, self.training.batch_tokens, shuffle=False)
        total, tokens = torch.zeros((), dtype=torch.float64), 0
        for batch in batches:
            batch = batch.to(self.device)
            with autocast(self.device):
                logits = self.model(batch.src_ids, batch.src_lengths, batch.tgt_in)
            total += sequence_loss(logits, batch.tgt_out, self.vocabs.pad_id).double().cpu()
            tokens += batch.n_tgt_tokens
        self.model.train()
        return float(total) / max(tokens, 1)

    def translate(self, corpus: ParallelCorpus) -> list[str]:
        """Greedy translations: validation BLEU tracks training, not the search settings."""
        greedy = dataclasses.replace(self.config.decoding, beam_size=1)
        hypotheses = translate_corpus(self.model, self.vocabs, corpus.src_ids, greedy, self.device)
        return self.vocabs.decode_tgt([nbest[0].tokens for nbest in hypotheses])

    def validate_and_save(self, end_of_epoch: bool = False) -> bool:
        """Validate and write checkpoints; True when early stopping says to stop.

        At the end of an epoch the epoch counter moves on before saving, so that a resumed
        run starts the next epoch rather than repeating the validation."""
        started = time.perf_counter()
        self.validated_at = self.step
        loss = self.dev_loss()
        hypotheses = self.translate(self.dev)
        bleu = corpus_bleu(hypotheses, self.dev.tgt_lines)
        # Every process validates the same weights; rank 0's numbers make the decisions everywhere.
        loss, bleu = from_main(self.world, (loss, bleu))
        improved = bleu > self.best_bleu
        if improved:
            self.best_bleu, self.best_step = bleu, self.step
            self.validations_without_improvement = 0
        else:
            self.validations_without_improvement += 1
        self.schedule.after_validation(bleu, loss)
        record = {"event": "valid", "step": self.step, "epoch": self.epoch + 1, "dev_loss": round(loss, 5),
                  "dev_ppl": round(math.exp(min(loss, 50.0)), 3), "dev_bleu": round(bleu, 2),
                  "best_dev_bleu": round(self.best_bleu, 2), "valid_s": round(time.perf_counter() - started, 1)}
        self.record(**record)
        log.info("validation at step %d: dev loss %.4f, ppl %.2f, BLEU %.2f%s", self.step, loss,
                 record["dev_ppl"], bleu, " (new best)" if improved else "")
        for source, reference, hypothesis in list(zip(self.dev.src_lines, self.dev.tgt_lines, hypotheses))[:2]:
            log.info("  src: %s\n  ref: %s\n  hyp: %s", source, reference, hypothesis)
        if end_of_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        if improved and self.world.is_main:
            save_checkpoint(self.run_dir / "checkpoints" / "best.pt", self._payload(full=False))
        self.save_last()
        if self.world.is_main:
            plot_curves(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "curves.png")
        patience = self.training.patience
        return bool(patience) and self.validations_without_improvement >= patience

    def _payload(self, full: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {"config": to_dict(self.config), "model_args": self.model_args,
                                   "model": self.model.state_dict(), "step": self.step, "epoch": self.epoch,
                                   "best_dev_bleu": self.best_bleu, "best_step": self.best_step}
        if full:
            payload["trainer"] = {
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "batch_in_epoch": self.batch_in_epoch,
                "validations_without_improvement": self.validations_without_improvement,
                "saved_steps": list(self.saved_steps), "interval_loss": self.interval_loss,
                "interval_tokens": self.interval_tokens, "skipped_steps": self.skipped_steps,
                "elapsed_s": self.elapsed(), "validated_at": self.validated_at,
                "rng": gather_all(self.world, _rng_states()),  # one per process
            }
        return payload

    def _restore(self, payload: dict[str, Any]) -> None:
        state = payload["trainer"]
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step, self.epoch = payload["step"], payload["epoch"]
        self.best_bleu, self.best_step = payload["best_dev_bleu"], payload["best_step"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.validations_without_improvement = state["validations_without_improvement"]
        self.saved_steps = list(state["saved_steps"])
        self.interval_loss, self.interval_tokens = state["interval_loss"], state["interval_tokens"]
        self.skipped_steps, self.elapsed_before = state["skipped_steps"], state["elapsed_s"]
        self.validated_at = state["validated_at"]
        if len(state["rng"]) != self.world.size:
            raise UserError(f"the checkpoint was saved by {len(state['rng'])} process(es); resume it with the same "
                            f"number (now {self.world.size}) to continue exactly")
        _set_rng_states(state["rng"][self.world.rank])

    def save_last(self) -> None:
        """Every process calls this (the RNG states are gathered); rank 0 writes."""
        folder = self.run_dir / "checkpoints"
        keep = self.training.keep_last
        if keep > 1:
            self.saved_steps = ([s for s in self.saved_steps if s != self.step] + [self.step])[-keep:]
        payload = self._payload(full=True)
        if not self.world.is_main:
            return
        save_checkpoint(folder / "last.pt", payload)
        if keep > 1:
            # Older states are kept as hard links (no extra disk) to each saved last.pt; any other
            # step file (e.g. from a killed run's future) goes.
            snapshot = folder / f"step-{self.step:08d}.pt"
            snapshot.unlink(missing_ok=True)
            try:
                os.link(folder / "last.pt", snapshot)
            except OSError:
                shutil.copyfile(folder / "last.pt", snapshot)
            wanted = {f"step-{s:08d}.pt" for s in self.saved_steps}
            for stale in folder.glob("step-*.pt"):
                if stale.name not in wanted:
                    stale.unlink(missing_ok=True)

    def evaluate_test(self) -> float:
        best = load_checkpoint(self.run_dir / "checkpoints" / "best.pt")
        self.model.load_state_dict(best["model"])
        bleu = corpus_bleu(self.translate(self.test), self.test.tgt_lines)
        log.info("test BLEU (best checkpoint, greedy): %.2f", bleu)
        return round(bleu, 2)


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class _catch_signals:
    """While training, SIGINT and SIGTERM ask the loop to save and stop after the current step.

    A second signal of either kind stops at once, as it would without s2s."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.trainer.signal_received = signum
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _progress_bar(total_steps: int, initial: int = 0):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total_steps or None, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)


def _report(progress, record: dict[str, Any]) -> None:
    if progress is not None:
        progress.set_postfix(loss=f"{record['train_loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}",
                             lr=f"{record['lr']:.2e}", refresh=False)
    else:
        log.info("step %d epoch %d: loss %.4f, lr %.2e, %.0f tokens/s", record["step"], record["epoch"],
                 record["train_loss"], record["lr"], record["tokens_per_s"])


def _same_experiment(config: Config, saved: Config, run_dir: Path) -> None:
    """A resumed run may change how long it trains, not what it trains."""
    for section in ("data", "tokenizer", "model"):
        ours, theirs = dataclasses.asdict(getattr(config, section)), dataclasses.asdict(getattr(saved, section))
        for key in ours:
            if ours[key] != theirs[key]:
                raise UserError(f"cannot resume {run_dir}: {section}.{key} is {ours[key]!r} but the run was "
                                f"trained with {theirs[key]!r}; drop the change or start a new run")


def train(config: Config, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train a model as ``config`` says (or continue the run in its run_dir); returns the end summary."""
    trainer = build_trainer(config, overwrite, resume)
    try:
        summary = trainer.fit()
        # Rank 0 scores the test set after the others have finished; a rank that tears its
        # gloo connections down meanwhile can abort (SIGABRT) on exit.
        barrier(trainer.world)
        return summary
    finally:
        leave(trainer.world)


def _prepare_data(config: Config, run_dir: Path, overwrite: bool, resume_from: Optional[dict[str, Any]],
                  writer: bool = True):
    """The tokenizer and tokenized corpora; the ``writer`` also prepares the run directory.

    With ``data.prepared_dir`` the training corpus comes from binary shards (prepared here
    first if ``s2s prepare`` has not done it) and its tokenizer from the same folder."""
    fresh = resume_from is None and writer
    if fresh:
        prepare_run_dir(run_dir, overwrite)
    sharded = None
    if config.data.prepared_dir:
        if writer:
            shards.prepare(config)
        sharded = shards.ShardedCorpus.open(config)
    lines = None
    if fresh:
        set_seed(config.training.seed)
        if sharded is not None:
            vocabs = sharded.vocabularies()
        else:
            lines = read_parallel(config.data.train_src, config.data.train_tgt)
            vocabs = build_vocabularies(config.tokenizer, *lines)
        save_atomically(run_dir / "tokenizer", vocabs.save)
    else:
        vocabs = Vocabularies.load(run_dir / "tokenizer")
        if resume_from is not None and writer:
            truncate_metrics(run_dir / "metrics.jsonl", resume_from["step"])
            log.info("resuming %s from step %d", run_dir, resume_from["step"])
    if writer:
        atomic_write(run_dir / "config.yaml", lambda out: out.write(to_yaml(config).encode("utf-8")))
    data = config.data
    if sharded is not None:
        if vocabs.fingerprint() != sharded.meta["tokenizer_fingerprint"]:
            raise UserError(f"the tokenizer of {run_dir} is not the one {data.prepared_dir} was prepared with; "
                            "train a new run on these shards")
        corpus = sharded
    else:
        corpus = tokenize_corpus(vocabs, data.train_src, data.train_tgt, data.cache_dir, lines)
    dev = tokenize_corpus(vocabs, data.dev_src, data.dev_tgt, data.cache_dir)
    test = tokenize_corpus(vocabs, data.test_src, data.test_tgt, data.cache_dir) if data.test_src else None
    return vocabs, corpus, dev, test


def build_trainer(config: Config, overwrite: bool = False, resume: bool = False) -> Trainer:
    """Everything up to the first step: run directory, tokenizer, corpora, model, optimizer.

    Under torchrun, rank 0 prepares the run directory, tokenizer and corpus caches first;
    the other processes then read them."""
    check_training_files(config)
    run_dir = Path(config.run_dir)
    device = select_device(config.training.device)
    world = join(device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not world.is_main:
        logging.getLogger("seq2seq_cli").setLevel(logging.WARNING)  # one log, from rank 0
    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    resume_from = None
    if resume:
        last = run_dir / "checkpoints" / "last.pt"
        if not last.is_file():
            raise UserError(f"cannot resume {run_dir}: no checkpoints/last.pt there; start it without --resume")
        resume_from = load_checkpoint(last)
        if "trainer" not in resume_from:
            raise UserError(f"{last}: holds no training state to resume from")
        _same_experiment(config, checkpoint_config(resume_from, last), run_dir)
    if world.is_main:
        vocabs, corpus, dev, test = _prepare_data(config, run_dir, overwrite, resume_from)
    barrier(world)  # the others read the tokenizer and corpus caches rank 0 has written
    if not world.is_main:
        vocabs, corpus, dev, test = _prepare_data(config, run_dir, overwrite, resume_from, writer=False)
    corpus, empty, too_long = filter_pairs(corpus, config.data.max_len)
    log.info("training pairs: %d kept, %d empty and %d longer than %d tokens dropped",
             len(corpus), empty, too_long, config.data.max_len)
    if not len(corpus):
        raise UserError(f"{config.data.train_src}: no training pairs left after filtering; "
                        f"check the files or raise data.max_len")

    set_seed(config.training.seed)
    bert = None
    if config.model.embed_type == "bert" and resume_from is None:
        bert = load_bert_embeddings(config.model.bert_model or config.tokenizer.pretrained)
    if resume_from is not None:
        model = Seq2Seq(config.model, **resume_from["model_args"])
    else:
        model = build_model(config.model, vocabs.src_size, vocabs.tgt_size, vocabs.pad_id, bert)
    model = model.to(device)
    if world.rank:
        torch.manual_seed(config.training.seed + 1000 * world.rank)  # own dropout masks per process
    parameters = sum(p.numel() for p in model.parameters())
    if world.is_main:
        check_disk_space(run_dir, parameters)
    log.info("device %s x %d process(es), %d parameters, vocab %d/%d, %d train / %d dev pairs, "
             "%d tokens per batch, run dir %s", device, world.size, parameters, vocabs.src_size, vocabs.tgt_size,
             len(corpus), len(dev), config.training.batch_tokens, run_dir)
    batches = TokenBatches(corpus, vocabs, config.training.batch_tokens, shuffle=True, seed=config.training.seed)
    trainer = Trainer(config, model, vocabs, batches, dev, device, run_dir, test, resume_from, world)
    trainer.record(event="resume" if resume else "start", step=trainer.step, epoch=trainer.epoch + 1,
                   device=str(device), processes=world.size, parameters=parameters,
                   src_vocab_size=vocabs.src_size, tgt_vocab_size=vocabs.tgt_size, train_pairs=len(corpus),
                   dropped_empty=empty, dropped_too_long=too_long, dev_pairs=len(dev),
                   batch_tokens=config.training.batch_tokens, seed=config.training.seed)
    return trainer
