"""The training loop: batches in, updates out, validation, checkpoints, and a clean stop.

``Trainer.fit`` trains until a limit of ``training`` is reached. What it must carry across a
restart is the ``TrainingState`` (in every checkpoint) plus the optimizer, the schedule and the
RNG states; with each epoch's batch order a pure function of (seed, epoch), a resumed run
continues exactly where the saved one stopped. ``launch.train`` builds a Trainer from a config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from typing import Any, Optional

import torch

from seq2seq_cli.checkpoint import load_checkpoint, save_checkpoint
from seq2seq_cli.config import DEV_METRICS, Config, to_dict
from seq2seq_cli.data import ParallelCorpus, TokenBatches, exact_tokens, within_length
from seq2seq_cli.decoding import SpecialIds, translate_corpus
from seq2seq_cli.precision import autocast, for_decoding
from seq2seq_cli.distributed import World, from_main, gather_all, sum_all
from seq2seq_cli.errors import UserError
from seq2seq_cli.evaluation import corpus_bleu, corpus_chrf, run_bleu_metric, run_bleu_tokenizer
from seq2seq_cli.graphs import GraphCaptureError, GraphedSteps, PendingStep
from seq2seq_cli.metrics import MetricsLog, metric_text, read_metrics
from seq2seq_cli.model import Seq2Seq
from seq2seq_cli.plotting import plot_curves
from seq2seq_cli.progress import Progress, StopOnSignal
from seq2seq_cli.rundir import RunDir
from seq2seq_cli.schedule import LearningRateSchedule
from seq2seq_cli.search_graphs import SearchGraphs
from seq2seq_cli.state import Stop, TrainingState, dev_score, out_of_time, rng_states, set_rng_states
from seq2seq_cli.tokenization import Tokenizers

log = logging.getLogger(__name__)

class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; ``last`` was saved. ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Trainer:
    """Trains ``model`` on ``train_batches``, validating on ``dev`` and writing ``run``."""

    def __init__(self, config: Config, model: Seq2Seq, tokenizers: Tokenizers, train_batches: TokenBatches,
                 dev: ParallelCorpus, device: torch.device, run: RunDir, test: Optional[ParallelCorpus] = None,
                 resume_from: Optional[dict[str, Any]] = None, world: World = World()):
        self.config = config
        self.training_config = config.training
        self.bleu_metric = run_bleu_metric(config)
        self.world = world
        self.model = model
        self.tokenizers = tokenizers
        self.train_batches = train_batches
        self.dev = dev
        # Dev loss leaves out the pairs whose ids may be cut short (data.tokenize_corpus): over
        # 1,024 tokens, or data.max_len when larger, no sentence. Dev BLEU reads every pair.
        limit = exact_tokens(config.data.max_len)
        self.dev_within_length, too_long = within_length(dev, limit)
        if too_long:
            log.info("dev loss over %d of %d dev pairs: %d longer than %d tokens left out (dev BLEU reads them all)",
                     len(self.dev_within_length), len(dev), too_long, limit)
        if not len(self.dev_within_length):
            raise UserError(f"every dev pair is longer than {limit} tokens on one side, so there is no dev loss; "
                            "give the dev files one sentence per line")
        self.test = test
        self.device = device
        self.run = run
        # The model the steps run through: its DistributedDataParallel wrapper under torchrun
        # (which averages the processes' gradients), else the model itself. Evaluation and
        # saving always use the plain model.
        self.ddp_model = model
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        fused = {"fused": True} if device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=self.training_config.learning_rate,
                                           weight_decay=self.training_config.weight_decay, **fused)
        self.schedule = LearningRateSchedule(self.optimizer, self.training_config)
        # Steps replayed from CUDA graphs; their outcome is read one step later (``_settle``).
        self.graphed: Optional[GraphedSteps] = None
        if self.training_config.cuda_graphs == "auto" and device.type == "cuda" and not world.distributed:
            if self.training_config.batches_per_update > 1:  # a graph records one batch's whole update
                log.info("training.cuda_graphs: off, as training.batches_per_update is %d",
                         self.training_config.batches_per_update)
            else:
                self.graphed = GraphedSteps(model, self.optimizer, self.training_config, tokenizers, device)
        self._pending: Optional[tuple[int, PendingStep, int]] = None
        self.search_graphs: Optional[SearchGraphs] = None  # validation's, with decoding.cuda_graphs
        self.state = TrainingState()
        if resume_from is not None:
            self._restore(resume_from)
        self.state.bleu_tokenize = run_bleu_tokenizer(config)
        self.state.best_metric = config.training.best_metric  # a resumed run's is the same (launch checks)
        self.metrics = None  # only rank 0 writes
        if world.is_main:
            self.metrics = MetricsLog(run.metrics, run.tensorboard if self.training_config.tensorboard else None,
                                      first_step=self.state.step + 1)
        self.started = time.perf_counter()
        self.signal_received: Optional[int] = None
        self._nonfinite_in_row = 0  # not saved: a resumed run starts counting afresh
        self._epoch_plan: tuple[int, list] = (-1, [])

    def record(self, **values: Any) -> None:
        if self.metrics is not None:
            self.metrics.write(**values, elapsed_s=round(self.elapsed(), 1))

    def elapsed(self) -> float:
        return self.state.elapsed_s + time.perf_counter() - self.started

    def epoch_batches(self, epoch: int) -> list:
        """This process's batches of an epoch: every world.size-th, the same number in every process."""
        if self._epoch_plan[0] != epoch:
            batches = self.train_batches.epoch_batches(epoch)
            if self.world.distributed:
                per_process = len(batches) // self.world.size
                batches = batches[self.world.rank:: self.world.size][:per_process]
            self._epoch_plan = (epoch, batches)
        return self._epoch_plan[1]

    def planned_steps(self) -> Optional[int]:
        """The step at which max_steps or max_epochs will stop the run (None: neither is set)."""
        limits = [self.training_config.max_steps] if self.training_config.max_steps else []
        if self.training_config.max_epochs:
            per_update = self.training_config.batches_per_update
            limits.append(self.training_config.max_epochs * -(-len(self.epoch_batches(self.state.epoch)) // per_update))
        return min(limits) if limits else None

    # -- the loop ---------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train until a limit is reached; returns the end-of-training summary."""
        state = self.state
        self.started = time.perf_counter()
        self.model.train()
        per_update = self.training_config.batches_per_update
        with Progress(self) as progress, StopOnSignal(self):
            stop = state.limit_reached(self.training_config, self._time_is_up())
            while stop is None:
                batches = self.epoch_batches(state.epoch)
                if state.batch_in_epoch < len(batches):
                    # An epoch's last update may have fewer batches than batches_per_update.
                    self._train_on(batches[state.batch_in_epoch: state.batch_in_epoch + per_update], progress)
                else:
                    self._end_epoch()
                stop = self._stop()
        return self._finish(stop)

    def _train_on(self, group: list, progress: "Progress") -> None:
        """One step on a group of batches (their indices; one unless batches_per_update says
        more), then the step's logging, validation and saving."""
        state, training = self.state, self.training_config
        batches = [self.train_batches.make_batch(indices) for indices in group]
        n_tgt_tokens = sum(batch.n_tgt_tokens for batch in batches)
        state.step += 1
        state.batch_in_epoch += len(batches)
        launched = self._launch_graphed(batches[0]) if self.graphed is not None else None
        if launched is None:
            self._account(state.step, self.update([batch.to(self.device) for batch in batches]), n_tgt_tokens)
        else:
            self._settle()  # the previous step's outcome, read while this one runs
            self._pending = (state.step, launched, n_tgt_tokens)
        progress.step(n_tgt_tokens)
        if state.step % training.log_every == 0:
            self._record_training(progress)
        if training.validate_every and state.step % training.validate_every == 0:
            self.validate_and_save()
        elif training.save_every and state.step % training.save_every == 0:
            self.save_last()

    def _launch_graphed(self, batch) -> Optional[PendingStep]:
        """Queue the step as a CUDA graph; None when a graph cannot be captured here, after
        which the run goes on with eager steps (the same update, launched from Python)."""
        self.schedule.step(self.state.step)
        try:
            return self.graphed.launch(batch, self.optimizer.param_groups[0]["lr"])
        except GraphCaptureError as err:
            log.warning("training.cuda_graphs: %s; going on without CUDA graphs (set training.cuda_graphs=off "
                        "to skip the attempt)", err)
            self._settle()
            self.graphed.close()
            self.graphed = None
            return None

    def _account(self, step: int, loss: Optional[float], n_tgt_tokens: int) -> None:
        """Count step ``step``'s loss, or its skip when it was not finite (too many in a row: stop)."""
        state = self.state
        if loss is None:
            state.skipped_steps += 1
            self._nonfinite_in_row += 1
            log.warning("step %d: loss or gradients not finite, update skipped (%d in a row)",
                        step, self._nonfinite_in_row)
            if self._nonfinite_in_row >= self.training_config.max_nonfinite_steps:
                raise UserError(
                    f"training diverged: {self._nonfinite_in_row} steps in a row with a non-finite loss at "
                    f"step {step}; the last good checkpoint is {self.run.last}. "
                    "Lower training.learning_rate or raise training.clip_grad_norm, then --resume")
        else:
            self._nonfinite_in_row = 0
            state.interval_loss += loss
            state.interval_tokens += n_tgt_tokens

    def _settle(self) -> None:
        """Account the graphed step still in flight, if any: before anything reads the counts."""
        if self._pending is not None:
            step, launched, n_tgt_tokens = self._pending
            self._pending = None
            self._account(step, launched.loss(), n_tgt_tokens)

    def _end_epoch(self) -> None:
        """The one place an epoch ends: validation when validating once per epoch, then the next epoch."""
        if self.training_config.validate_every:
            self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
        else:
            self.validate_and_save(end_of_epoch=True)

    def _stop(self) -> Optional[Stop]:
        """The one place that decides to stop: a signal (saved, raises), or a limit reached."""
        time_is_up, signalled = self._time_is_up(), self.signal_received is not None
        if self.world.distributed:  # every process must stop at the same step
            time_is_up, signalled = (v > 0 for v in sum_all(
                self.world, [float(time_is_up), float(signalled)], self.device))
        if signalled:
            self._stop_for_signal()
        return self.state.limit_reached(self.training_config, time_is_up)

    def _time_is_up(self) -> bool:
        return out_of_time(self.training_config, self.elapsed())

    def _finish(self, stop: Stop) -> dict[str, Any]:
        self._settle()
        state = self.state
        if state.validated_at != state.step:
            self.validate_and_save()
        planned = self.planned_steps()
        gave_up = (f" of ~{planned} that max_steps/max_epochs allow" if stop.key == "max_minutes" and planned
                   and state.step < planned else "")
        best = (f"best dev {metric_text(state.best_metric, state.best_value)}"
                + ("" if state.best_metric == "bleu" else f" (BLEU {state.best_dev_bleu:.2f})"))
        log.info("stopped: %s after %d steps%s (%.1f min); %s at step %d", stop.reason, state.step,
                 gave_up, self.elapsed() / 60, best, state.best_step)
        summary = {"event": "end", "step": state.step, "epoch": state.epoch + (1 if state.batch_in_epoch else 0),
                   "reason": stop.reason, "best_dev_bleu": state.best_dev_bleu, "best_step": state.best_step,
                   "best_metric": state.best_metric, "best_dev_score": state.best_value,
                   "skipped_steps": state.skipped_steps, "wall_s": round(self.elapsed(), 1),
                   "cuda_graph_shapes": len(self.graphed.graphs) if self.graphed is not None else 0}
        self.save_last()  # the final state, so that a later --resume sees the limit reached
        if self.test is not None and self.world.is_main:
            summary["test_bleu"] = self.evaluate_test()  # loads best.pt's weights into the model
        self.record(**summary)
        if self.metrics is not None:
            self.metrics.close()
        return summary

    def update(self, batches: list) -> Optional[float]:
        """One optimizer update from the gradients of ``batches`` added up; returns their summed
        loss, or None when it was not finite (no update)."""
        training = self.training_config
        self.schedule.step(self.state.step)
        self.optimizer.zero_grad(set_to_none=True)
        # The mean over the real target tokens of the global batch: DDP averages the
        # processes' gradients, so each scales its summed loss by world size / global tokens.
        global_tokens = sum_all(self.world, [sum(batch.n_tgt_tokens for batch in batches)], self.device)[0]
        losses = []
        for number, batch in enumerate(batches):
            # DDP averages the gradients across processes once, at the update's last backward.
            no_sync = self.world.distributed and number < len(batches) - 1
            with self.ddp_model.no_sync() if no_sync else contextlib.nullcontext():
                with autocast(self.device, training.precision):
                    loss = self.ddp_model(batch.src_ids, batch.src_lengths, batch.tgt_in,
                                          training.teacher_forcing_ratio, tgt_out=batch.tgt_out,
                                          label_smoothing=training.label_smoothing)
                (loss * (self.world.size / global_tokens)).backward()
            losses.append(loss)
        if len(losses) > 1:  # one batch (the usual step) adds no operation to sum
            loss = torch.stack([batch_loss.detach().float() for batch_loss in losses]).sum()
        # The gradient norm is needed anyway for clipping; a non-finite one means a bad loss.
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), training.clip_grad_norm or math.inf)
        finite, loss_value = torch.stack([torch.isfinite(norm).float(), loss.detach().float()]).tolist()  # one sync
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        return loss_value

    def _record_training(self, progress: "Progress") -> None:
        """The ``train`` record of the steps since the last one (summed over processes)."""
        self._settle()
        state = self.state
        timed_tokens, seconds = progress.take_interval()
        loss_sum, loss_tokens, timed_tokens = sum_all(
            self.world, [state.interval_loss, state.interval_tokens, timed_tokens], self.device)
        record = {"event": "train", "step": state.step, "epoch": state.epoch + 1,
                  "train_loss": round(loss_sum / max(loss_tokens, 1), 5), "lr": self.optimizer.param_groups[0]["lr"],
                  "tokens_per_s": round(timed_tokens / max(seconds, 1e-9), 1), "skipped_steps": state.skipped_steps}
        state.interval_loss, state.interval_tokens = 0.0, 0
        self.record(**record)
        progress.show(record)

    def _stop_for_signal(self) -> None:
        self.save_last()
        name = signal.Signals(self.signal_received).name
        message = (f"{name} received: stopped at step {self.state.step} (epoch {self.state.epoch + 1}) and saved "
                   f"{self.run.last}; resume with: s2s train --resume {self.run}")
        if self.metrics is not None:
            self.metrics.close()
        raise TrainingInterrupted(message, 128 + self.signal_received)

    # -- validation and checkpoints -------------------------------------------------------------

    @torch.no_grad()
    def dev_loss(self) -> float:
        self.model.eval()
        batches = TokenBatches(self.dev_within_length, self.tokenizers, self.training_config.batch_tokens,
                               shuffle=False)
        total, tokens = torch.zeros((), dtype=torch.float64), 0
        for batch in batches:
            batch = batch.to(self.device)
            with autocast(self.device, self.training_config.precision):
                loss = self.model(batch.src_ids, batch.src_lengths, batch.tgt_in, tgt_out=batch.tgt_out)
            total += loss.double().cpu()
            tokens += batch.n_tgt_tokens
        self.model.train()
        return float(total) / max(tokens, 1)

    def translate(self, corpus: ParallelCorpus) -> list[str]:
        """Greedy translations: validation BLEU tracks training, not the search settings.

        In the training's number format, decoded as ``s2s translate --dtype`` decodes (bf16 on
        the CPU: a bf16 copy of the weights, not autocast recasting them at every step), each
        source cut to ``data.max_len`` tokens as ``s2s translate`` cuts it: dev BLEU is the
        score ``s2s evaluate --beam-size 1`` gives the same weights, long dev lines included."""
        greedy = dataclasses.replace(self.config.decoding, beam_size=1)
        max_len = self.config.data.max_len
        sources = [ids[:max_len] for ids in corpus.src_ids]
        precision = self.training_config.precision
        model = for_decoding(self.model, self.device, precision)
        if self.search_graphs is None or self.search_graphs.model is not model:
            self.search_graphs = SearchGraphs.when_wanted(greedy.cuda_graphs, model, SpecialIds.of(self.tokenizers),
                                                          self.device, precision)
        hypotheses = translate_corpus(model, self.tokenizers, sources, greedy, self.device, precision=precision,
                                      graphs=self.search_graphs)
        return self.tokenizers.decode_tgt([nbest[0].tokens for nbest in hypotheses])

    def validate_and_save(self, end_of_epoch: bool = False) -> None:
        """Validate and write checkpoints. At the end of an epoch the epoch counter moves on
        before saving, so that a resumed run starts the next epoch instead of validating again."""
        self._settle()
        state = self.state
        started = time.perf_counter()
        state.validated_at = state.step
        loss = self.dev_loss()
        hypotheses = self.translate(self.dev)
        bleu = corpus_bleu(hypotheses, self.dev.tgt_lines, self.bleu_metric)
        chrf = corpus_chrf(hypotheses, self.dev.tgt_lines)
        # Every process validates the same weights; rank 0's numbers make the decisions everywhere.
        loss, bleu, chrf = from_main(self.world, (loss, bleu, chrf))
        score = dev_score(state.best_metric, bleu, chrf, loss)
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_dev_bleu, state.best_step = score, bleu, state.step
            state.validations_without_improvement = 0
        else:
            state.validations_without_improvement += 1
        self.schedule.after_validation(bleu, chrf, loss)
        record = {"event": "valid", "step": state.step, "epoch": state.epoch + 1, "dev_loss": round(loss, 5),
                  "dev_ppl": round(math.exp(min(loss, 50.0)), 3), "dev_bleu": round(bleu, 2),
                  "dev_chrf": round(chrf, 2), "best_dev_bleu": round(state.best_dev_bleu, 2),
                  "best_step": state.best_step, "valid_s": round(time.perf_counter() - started, 1)}
        self.record(**record)
        log.info("validation at step %d: dev loss %.4f, ppl %.2f, BLEU %.2f, chrF %.2f%s", state.step, loss,
                 record["dev_ppl"], bleu, chrf, f" (new best {DEV_METRICS[state.best_metric]})" if improved else "")
        for source, reference, hypothesis in list(zip(self.dev.src_lines, self.dev.tgt_lines, hypotheses))[:2]:
            log.info("  src: %s\n  ref: %s\n  hyp: %s", source, reference, hypothesis)
        if end_of_epoch:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if improved and self.world.is_main:
            save_checkpoint(self.run.best, self._payload(full=False))
        self.save_last()
        if self.world.is_main:
            plot_curves(read_metrics(self.run.metrics), self.run.curves)

    def _payload(self, full: bool) -> dict[str, Any]:
        self.state.elapsed_s = self.elapsed()
        self.started = time.perf_counter()
        headline, progress = self.state.to_checkpoint()
        payload = {"config": to_dict(self.config), "model_args": self.model.sizes, "model": self.model.state_dict(),
                   **headline}
        if full:
            payload["trainer"] = {**progress, "optimizer": self.optimizer.state_dict(),
                                  "schedule": self.schedule.state_dict(),
                                  "rng": gather_all(self.world, rng_states())}  # one per process
        return payload

    def _restore(self, payload: dict[str, Any]) -> None:
        saved = payload["trainer"]
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.state = TrainingState.from_checkpoint(payload)
        check_same_processes(payload, self.world.size)
        set_rng_states(saved["rng"][self.world.rank])

    def save_last(self) -> None:
        """Every process calls this (the RNG states are gathered); rank 0 writes."""
        self._settle()
        state, keep = self.state, self.training_config.keep_last
        if keep > 1:
            state.saved_steps = ([s for s in state.saved_steps if s != state.step] + [state.step])[-keep:]
        payload = self._payload(full=True)
        if not self.world.is_main:
            return
        save_checkpoint(self.run.last, payload)
        if keep > 1:
            self.run.keep_step_checkpoints(state.step, state.saved_steps)

    def evaluate_test(self) -> float:
        self.model.load_state_dict(load_checkpoint(self.run.best)["model"])
        bleu = corpus_bleu(self.translate(self.test), self.test.tgt_lines, self.bleu_metric)
        log.info("test BLEU (best checkpoint, greedy): %.2f", bleu)
        return round(bleu, 2)


def check_same_processes(checkpoint: dict[str, Any], processes: int) -> None:
    """A run continues exactly only in as many processes as saved its checkpoint (one RNG state each)."""
    saved = len(checkpoint["trainer"]["rng"])
    if saved != processes:
        raise UserError(f"the checkpoint was saved by {saved} process(es); resume it with the same "
                        f"number (now {processes}) to continue exactly")
