"""Training steps replayed from CUDA graphs (``training.cuda_graphs``).

At this model size a GPU step is about a thousand small kernels, and launching them one by one
from Python takes longer than running them (benchmarks/README.md). A CUDA graph records a
whole step once - forward, backward, gradient clipping and the AdamW update - and replays it
with one launch. A graph has fixed shapes, so each batch is padded to one of a few dozen
shapes (``data.padded_shape``; the added rows and positions carry no loss) and each shape is
captured the first time a batch of it comes up.

Nothing in a captured step reads the host: the encoder runs unpacked, the loss scale and the
learning rate are device tensors filled before each replay, and a step whose loss or
gradients are not finite is skipped on the device (fused AdamW's ``found_inf``). The step's
loss and whether it was skipped reach the host while the next step runs, so the trainer
learns them one step late. Dropout draws from PyTorch's graph-safe CUDA generator, which each
replay advances as the eager step would; warm-up and capture leave it where they found it,
so a resumed run continues the same random stream.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from seq2seq_cli.config import TrainingConfig
from seq2seq_cli.data import Batch, pad_batch, padded_shape
from seq2seq_cli.precision import autocast
from seq2seq_cli.model import Seq2Seq
from seq2seq_cli.tokenization import Tokenizers


class GraphCaptureError(RuntimeError):
    """CUDA could not record a step here (a driver or library that refuses capture)."""


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    batch: Batch  # the graph's input tensors, refilled before each replay
    scale: torch.Tensor  # () 1 / the batch's real target tokens


class PendingStep:
    """The outcome of a launched step, readable once the GPU has run it."""

    def __init__(self, outcome: torch.Tensor, done: torch.cuda.Event):
        self.outcome, self.done = outcome, done

    def loss(self) -> Optional[float]:
        """The summed loss, or None when the step was skipped as not finite (waits for the step)."""
        self.done.synchronize()
        loss, skipped = self.outcome.tolist()
        return None if skipped else loss


class GraphedSteps:
    """``launch(batch, lr)`` runs one training update of ``model`` by replaying a CUDA graph."""

    def __init__(self, model: Seq2Seq, optimizer: torch.optim.Optimizer, config: TrainingConfig,
                 tokenizers: Tokenizers, device: torch.device):
        if not optimizer.defaults.get("fused"):
            raise ValueError("CUDA graphs need a fused AdamW optimizer (it skips non-finite steps on the device)")
        self.model, self.optimizer, self.config = model, optimizer, config
        self.tokenizers, self.device = tokenizers, device
        self.graphs: dict[tuple[int, int, int], _Captured] = {}
        self.pool = None  # one memory pool for all graphs: they never run at the same time
        self.lr = torch.zeros((), device=device)
        self.found_inf = torch.zeros((), device=device)
        self.optimizer.found_inf = self.found_inf  # read by fused AdamW at every step
        self.outcome = torch.zeros(2, device=device)  # (loss, skipped) of the last replay
        # Two host copies: step n's is read while step n + 1 runs.
        self._host = [torch.zeros(2, pin_memory=True) for _ in range(2)]
        self._events = [torch.cuda.Event() for _ in range(2)]
        self._launched = 0

    def launch(self, batch: Batch, lr: float) -> PendingStep:
        """Queue one update on ``batch`` (on the CPU) at learning rate ``lr``; returns at once."""
        shape = padded_shape(batch, self.config.batch_tokens)
        captured = self.graphs.get(shape) or self._capture(shape)
        padded = pad_batch(batch, shape, self.tokenizers)
        for name in ("src_ids", "src_lengths", "tgt_in", "tgt_out"):
            getattr(captured.batch, name).copy_(getattr(padded, name), non_blocking=True)
        captured.scale.fill_(1.0 / batch.n_tgt_tokens)
        self.lr.fill_(lr)
        captured.graph.replay()
        slot = self._launched % 2
        self._launched += 1
        self._host[slot].copy_(self.outcome, non_blocking=True)
        self._events[slot].record()
        return PendingStep(self._host[slot], self._events[slot])

    def close(self) -> None:
        """Stop steering the optimizer: eager steps must not read this object's ``found_inf``."""
        del self.optimizer.found_inf
        self.graphs.clear()

    def _forward_backward(self, batch: Batch, scale: torch.Tensor) -> torch.Tensor:
        # Autocast's weight cache would hold casts made during capture: off inside graphs.
        with autocast(self.device, self.config.precision, cache_enabled=False):
            loss = self.model(batch.src_ids, batch.src_lengths, batch.tgt_in, self.config.teacher_forcing_ratio,
                              packed=False, tgt_out=batch.tgt_out, label_smoothing=self.config.label_smoothing)
        (loss * scale).backward()
        return loss

    def _step(self, batch: Batch, scale: torch.Tensor) -> None:
        """What a graph records: the eager trainer's update, decided on the device."""
        loss = self._forward_backward(batch, scale)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm or math.inf)
        self.found_inf.copy_(~(torch.isfinite(norm) & torch.isfinite(loss)))
        self.optimizer.step()
        self.outcome.copy_(torch.stack([loss.detach().float(), self.found_inf]))

    def _capture(self, shape: tuple[int, int, int]) -> _Captured:
        empty = torch.zeros((0, 1), dtype=torch.int64)
        batch = pad_batch(Batch(empty, empty[:, 0], empty, empty, 0), shape, self.tokenizers).to(self.device)
        batch.src_lengths = batch.src_lengths.to(self.device)
        scale = torch.ones((), device=self.device)
        rng = torch.cuda.get_rng_state(self.device)
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        self.optimizer.zero_grad(set_to_none=True)
        groups = self.optimizer.param_groups
        saved = [(group["lr"], group["capturable"]) for group in groups]
        graph = torch.cuda.CUDAGraph()
        with warnings.catch_warnings():
            # The unpacked encoder hands cuDNN one direction's weights at a time.
            warnings.filterwarnings("ignore", message="RNN module weights are not part")
            with torch.cuda.stream(side):
                # cuBLAS and cuDNN choose algorithms and allocate workspaces before capture, not in it.
                for _ in range(2):
                    self._forward_backward(batch, scale)
                if not self.optimizer.state:  # create AdamW's moments outside the graph, updating nothing
                    self.found_inf.fill_(1.0)
                    self.optimizer.step()
            current.wait_stream(side)
            self.optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates its own gradients
            for group in groups:  # the rate is read from self.lr at every replay
                group["lr"], group["capturable"] = self.lr, True
            try:
                with torch.cuda.graph(graph, pool=self.pool):
                    self._step(batch, scale)
            except RuntimeError as err:
                raise GraphCaptureError(f"capturing a step of shape {shape} failed: {str(err).splitlines()[0]}") from err
            finally:
                for group, (lr, capturable) in zip(groups, saved):
                    group["lr"], group["capturable"] = lr, capturable
                torch.cuda.set_rng_state(rng, self.device)
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[shape] = _Captured(graph, batch, scale)
        return self.graphs[shape]
