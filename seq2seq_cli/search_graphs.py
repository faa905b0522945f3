"""Greedy and beam search whose decoder steps are replayed from CUDA graphs (``decoding.cuda_graphs``).

The eager searches (``seq2seq_cli.decoding``) launch some 35 small kernels per greedy decoder
step (more in beam search) and ask the host at every step which sentences have finished, to
drop them from the batch, so its shape changes as it goes. Here a batch is padded to one of
a few fixed shapes (sentences and source length rounded up as training's graphs round
theirs, ``data.rounded_up``); finished sentences stay in the batch with their outputs
ignored, and ``UNROLL`` decoder steps of each shape are recorded once and replayed with one
launch. Nothing in a recorded step reads the host: the step counter and the length limits
are device tensors.

The host looks at a batch once per replay: to stop when every sentence is done and, in beam
search, to collect finished hypotheses from the steps' records by the eager search's own
rules (``decoding.Ended``), so both searches find the
same translations with the same scores. Attention weights and ``no_repeat_ngram_size`` need
the eager search.

Nothing here needs CUDA: elsewhere the recorded steps simply run, which is how the CPU tests
compare these searches with the eager ones.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from seq2seq_cli.data import rounded_up
from seq2seq_cli.decoding import (Ended, Ensemble, EnsembleState, Hypothesis, SpecialIds, beam_search, greedy_search,
                                  only_end_at_limit, step_log_probs, top_by_blocks)
from seq2seq_cli.graphs import GraphCaptureError
from seq2seq_cli.model import EncoderState, Seq2Seq
from seq2seq_cli.precision import autocast

UNROLL = 8  # decoder steps per replay: the host checks for finished sentences this often

log = logging.getLogger(__name__)


def _copy_state(state: EncoderState | EnsembleState) -> EncoderState | EnsembleState:
    """A state of fresh tensors like ``state``'s: what a recorded step reads, refilled per batch."""
    if isinstance(state, EnsembleState):
        return EnsembleState([_copy_state(member) for member in state.states])
    return EncoderState(*(tensor.clone() for tensor in _tensors(state)))


def _fill_state(static: EncoderState | EnsembleState, state: EncoderState | EnsembleState) -> None:
    if isinstance(state, EnsembleState):
        for static_member, member in zip(static.states, state.states):
            _fill_state(static_member, member)
        return
    for target, source in zip(_tensors(static), _tensors(state)):
        target.copy_(source)


def _tensors(state: EncoderState) -> tuple[torch.Tensor, ...]:
    return state.encoder_outputs, state.keys, state.src_mask, state.hidden, state.score_bias


@dataclass
class _GreedyBuffers:
    state: EncoderState | EnsembleState
    tokens: torch.Tensor  # (N,) the previous tokens
    hidden: torch.Tensor  # (N, H)
    limits: torch.Tensor  # (N,) each sentence's length limit
    step: torch.Tensor  # (1,) the next step's position in the sentence
    done: torch.Tensor  # (N,) True once a sentence has produced [SEP]
    log_prob: torch.Tensor  # (N,) the sum of its chosen tokens' log-probabilities
    chosen: torch.Tensor  # (N, UNROLL) the tokens a replay chose; [SEP] after the end


@dataclass
class _BeamBuffers:
    state: EncoderState | EnsembleState  # (N*K, ...): every beam of a sentence reads its sentence's state
    tokens: torch.Tensor  # (N*K,)
    hidden: torch.Tensor  # (N*K, H)
    limits: torch.Tensor  # (N*K,)
    step: torch.Tensor  # (1,)
    scores: torch.Tensor  # (N, K) the live beams' log-probabilities
    first_beams: torch.Tensor  # (N, 1) the row of each sentence's first beam
    # What each of a replay's steps chose, for the host: the 2K best extensions of each
    # sentence (scores, beams, tokens) and the K that live on (parent beams, tokens).
    top_scores: torch.Tensor  # (UNROLL, N, 2K)
    top_beams: torch.Tensor  # (UNROLL, N, 2K)
    top_tokens: torch.Tensor  # (UNROLL, N, 2K)
    parents: torch.Tensor  # (UNROLL, N, K)
    chosen: torch.Tensor  # (UNROLL, N, K)


class SearchGraphs:
    """Greedy and beam search for ``model`` over fixed-shape batches, each shape's decoder steps
    recorded once as a CUDA graph (on CUDA) and replayed. Thread-safe: one batch at a time.

    If CUDA refuses to record, the searches log why once and go on eagerly."""

    def __init__(self, model: Seq2Seq | Ensemble, ids: SpecialIds, device: torch.device, precision: str = "auto"):
        self.model, self.ids, self.device, self.precision = model, ids, device, precision
        self._recorded: dict[tuple, tuple[object, Callable[[], None]]] = {}
        self._pool = None  # one memory pool for all graphs: they never run at the same time
        self._lock = threading.Lock()
        self._eager = False  # after a failed capture

    @classmethod
    def when_wanted(cls, setting: str, model: Seq2Seq | Ensemble, ids: SpecialIds, device: torch.device,
                    precision: str = "auto") -> Optional["SearchGraphs"]:
        """Graphs for ``model`` if ``setting`` (``decoding.cuda_graphs``) asks for them on ``device``."""
        return cls(model, ids, device, precision) if setting == "auto" and device.type == "cuda" else None

    def shapes(self) -> list[tuple]:
        """The shapes recorded so far: (search, sentences, source length[, beams], dtype)."""
        return list(self._recorded)

    def greedy(self, src_ids: torch.Tensor, src_lengths: torch.Tensor, limits: torch.Tensor) -> list[Hypothesis]:
        """``decoding.greedy_search`` without attention weights: (B, S) sources with their lengths
        and length limits in, one hypothesis per sentence out."""
        if not self._eager:
            try:
                return self._greedy(src_ids, src_lengths, limits)
            except GraphCaptureError as err:
                self._give_up(err)
        return greedy_search(self.model, src_ids, src_lengths, self.ids, limits)

    def beam(self, src_ids: torch.Tensor, src_lengths: torch.Tensor, limits: torch.Tensor, beam_size: int,
             length_penalty: float = 1.0, nbest: int = 1) -> list[list[Hypothesis]]:
        """``decoding.beam_search`` without attention weights: the ``nbest`` best hypotheses of
        each sentence, best first."""
        if not self._eager:
            try:
                return self._beam(src_ids, src_lengths, limits, beam_size, length_penalty, nbest)
            except GraphCaptureError as err:
                self._give_up(err)
        return beam_search(self.model, src_ids, src_lengths, self.ids, limits, beam_size, length_penalty, nbest)

    def _give_up(self, err: GraphCaptureError) -> None:
        log.warning("decoding.cuda_graphs: %s; searching without CUDA graphs (set decoding.cuda_graphs=off "
                    "to skip the attempt)", err)
        self._eager = True
        self._recorded.clear()

    @torch.inference_mode()
    def _greedy(self, src_ids: torch.Tensor, src_lengths: torch.Tensor, limits: torch.Tensor) -> list[Hypothesis]:
        with self._lock:
            rows, length, state, limits = self._encode(src_ids, src_lengths, limits, 1)
            sentences = limits.size(0)
            buffers, replay = self._ready(
                ("greedy", sentences, length, state.hidden.dtype),
                lambda: _GreedyBuffers(
                    _copy_state(state), torch.empty_like(limits), state.hidden.clone(), torch.empty_like(limits),
                    torch.zeros(1, dtype=torch.long, device=self.device),
                    torch.empty_like(limits, dtype=torch.bool), torch.empty(sentences, device=self.device),
                    torch.empty((sentences, UNROLL), dtype=torch.long, device=self.device)),
                lambda buffers: self._start_greedy(buffers, state, limits, rows), self._greedy_steps)
            chosen = []
            for _ in range(0, int(limits.max()) + 1, UNROLL):
                replay()
                chosen.append(buffers.chosen.clone())
                if bool(buffers.done.all()):
                    break
            output = torch.cat(chosen, dim=1)[:rows].tolist()
            log_prob = buffers.log_prob[:rows].tolist()
        return [Hypothesis(sequence[: sequence.index(self.ids.eos)], score, score)
                for sequence, score in zip(output, log_prob)]

    def _ready(self, key: tuple, make: Callable[[], object], start: Callable[[object], None],
               steps: Callable[[object], None]) -> tuple:
        """The buffers of shape ``key`` filled by ``start`` for this batch, and what replays
        ``steps`` on them; both made, and the steps recorded, at the shape's first batch."""
        if key not in self._recorded:
            buffers = make()
            start(buffers)  # what the warm-up before capture reads
            self._recorded[key] = buffers, self._record(lambda: steps(buffers))
        buffers, replay = self._recorded[key]
        start(buffers)
        return buffers, replay

    def _start_greedy(self, b: _GreedyBuffers, state: EncoderState | EnsembleState, limits: torch.Tensor,
                      rows: int) -> None:
        _fill_state(b.state, state)
        b.tokens.fill_(self.ids.bos)
        b.hidden.copy_(state.hidden)
        b.limits.copy_(limits)
        b.step.zero_()
        b.done.copy_(torch.arange(limits.size(0), device=self.device) >= rows)  # padding rows are done
        b.log_prob.zero_()

    def _greedy_steps(self, b: _GreedyBuffers) -> None:
        """``UNROLL`` steps of greedy search, in place on ``b``."""
        for i in range(UNROLL):
            log_probs, hidden, _ = step_log_probs(self.model, b.tokens, b.hidden, b.state, self.ids)
            only_end_at_limit(log_probs, b.limits <= b.step, self.ids.eos)
            best, tokens = top_by_blocks(log_probs, 1)  # (N, 1)
            tokens = tokens.squeeze(1).masked_fill_(b.done, self.ids.eos)
            b.log_prob.add_(best.squeeze(1).masked_fill_(b.done, 0.0))
            b.chosen[:, i] = tokens
            b.done.logical_or_(tokens == self.ids.eos)
            b.tokens.copy_(tokens)
            b.hidden.copy_(hidden)
            b.step.add_(1)

    @torch.inference_mode()
    def _beam(self, src_ids: torch.Tensor, src_lengths: torch.Tensor, limits: torch.Tensor, k: int,
              length_penalty: float, nbest: int) -> list[list[Hypothesis]]:
        with self._lock:
            rows, length, state, limits = self._encode(src_ids, src_lengths, limits, k)
            sentences = limits.size(0)

            def empty(*shape, dtype=torch.long):
                return torch.empty(shape, dtype=dtype, device=self.device)

            buffers, replay = self._ready(
                ("beam", sentences, length, k, state.hidden.dtype),
                lambda: _BeamBuffers(
                    _copy_state(state), empty(sentences * k), state.hidden.clone(), empty(sentences * k),
                    torch.zeros(1, dtype=torch.long, device=self.device), empty(sentences, k, dtype=torch.float),
                    (torch.arange(sentences, device=self.device) * k).unsqueeze(1),
                    empty(UNROLL, sentences, 2 * k, dtype=torch.float), empty(UNROLL, sentences, 2 * k),
                    empty(UNROLL, sentences, 2 * k), empty(UNROLL, sentences, k), empty(UNROLL, sentences, k)),
                lambda buffers: self._start_beam(buffers, state, limits, k),
                lambda buffers: self._beam_steps(buffers, k))
            return self._beam_hypotheses(buffers, replay, limits[:rows].cpu(), src_lengths, k, length_penalty, nbest)

    def _start_beam(self, b: _BeamBuffers, state: EncoderState | EnsembleState, limits: torch.Tensor, k: int) -> None:
        _fill_state(b.state, state)
        b.tokens.fill_(self.ids.bos)
        b.hidden.copy_(state.hidden)
        b.limits.copy_(limits.repeat_interleave(k))
        b.step.zero_()
        b.scores.fill_(float("-inf"))
        b.scores[:, 0] = 0.0  # one live beam to start with

    def _beam_hypotheses(self, buffers: _BeamBuffers, replay: Callable[[], None], limits: torch.Tensor,
                         src_lengths: torch.Tensor, k: int, length_penalty: float,
                         nbest: int) -> list[list[Hypothesis]]:
        """Replay until every real sentence is done, reading each step's records as the eager
        search reads its step (``decoding.beam_search``), and read the best hypotheses back."""
        rows = limits.size(0)
        last_step = int(limits.max())
        searching = list(range(rows))  # the sentences not done, in batch order
        positions = {row: row for row in range(rows)}  # rows never move here
        history: list[tuple[dict[int, int], torch.Tensor, torch.Tensor, None]] = []
        ended = Ended(history, limits, length_penalty, k, nbest, self.ids)
        for start in range(0, last_step + 1, UNROLL):
            replay()
            records = [record[:, :rows].to("cpu", copy=True) for record in (  # a copy on the CPU too
                buffers.top_scores, buffers.top_beams, buffers.top_tokens, buffers.parents, buffers.chosen)]
            for t, (top_scores, top_beams, top_tokens, parents, chosen) in enumerate(zip(*records), start):
                if t > last_step or not searching:
                    break
                is_eos = top_tokens == self.ids.eos
                still = torch.zeros(rows, 1, dtype=torch.bool)
                still[searching] = True
                ending = (is_eos & torch.isfinite(top_scores))[:, :k] & still  # among the K best extensions
                if bool(ending.any()):
                    for row, column in ending.nonzero().tolist():
                        ended.add(row, float(top_scores[row, column]), t, int(top_beams[row, column]))
                history.append((positions, parents, chosen, None))
                best_live = top_scores.masked_fill(is_eos, float("-inf")).amax(dim=1).tolist()
                keep = ended.searching(searching, [best_live[row] for row in searching])
                searching = [searching[p] for p in keep]
            if not searching:
                break
        return [ended.hypotheses(row, int(src_lengths[row]), False) for row in range(rows)]

    def _beam_steps(self, b: _BeamBuffers, k: int) -> None:
        """``UNROLL`` steps of beam search, in place on ``b``: the eager search's arithmetic, with
        finished sentences left in the batch."""
        sentences = b.scores.size(0)
        for i in range(UNROLL):
            log_probs, hidden, _ = step_log_probs(self.model, b.tokens, b.hidden, b.state, self.ids)
            only_end_at_limit(log_probs, b.limits <= b.step, self.ids.eos)
            beam_log_probs, beam_tokens = top_by_blocks(log_probs, 2 * k)  # (N*K, 2K)
            candidates = (b.scores.view(-1, 1) + beam_log_probs).view(sentences, k * 2 * k)
            top_scores, top_index = candidates.topk(2 * k, dim=1)  # (N, 2K)
            top_beams = top_index // (2 * k)
            top_tokens = beam_tokens.view(sentences, k * 2 * k).gather(1, top_index)
            live_scores, choice = top_scores.masked_fill(top_tokens == self.ids.eos, float("-inf")).topk(k, dim=1)
            parents = top_beams.gather(1, choice)  # (N, K)
            chosen = top_tokens.gather(1, choice)
            for record, value in ((b.top_scores, top_scores), (b.top_beams, top_beams), (b.top_tokens, top_tokens),
                                  (b.parents, parents), (b.chosen, chosen)):
                record[i] = value
            b.hidden.copy_(hidden.index_select(0, (parents + b.first_beams).view(-1)))
            b.tokens.copy_(chosen.view(-1))
            b.scores.copy_(live_scores)
            b.step.add_(1)

    def _encode(self, src_ids: torch.Tensor, src_lengths: torch.Tensor, limits: torch.Tensor, k: int):
        """The batch padded to its shape and encoded: its real sentence count, the padded source
        length, the encoder state (one row per beam) and the length limits (N,) on the device."""
        rows, length = src_ids.shape
        sentences, length = rounded_up(rows), rounded_up(length)
        padded = torch.full((sentences, length), self.ids.pad, dtype=src_ids.dtype)
        padded[:rows, : src_ids.size(1)] = src_ids.cpu()
        padded[rows:, 0] = self.ids.eos  # an empty sentence, done at the first step
        padded_lengths = torch.ones(sentences, dtype=src_lengths.dtype)
        padded_lengths[:rows] = src_lengths.cpu()
        padded_limits = torch.zeros(sentences, dtype=torch.long)
        padded_limits[:rows] = limits.cpu()
        state = self.model.encode(padded.to(self.device), padded_lengths)
        if k > 1:
            state = state.select(torch.arange(sentences, device=self.device).repeat_interleave(k))
        return rows, length, state, padded_limits.to(self.device)

    def _record(self, steps: Callable[[], None]) -> Callable[[], None]:
        """What runs ``steps``: a CUDA graph of them on CUDA, else ``steps`` itself."""
        if self.device.type != "cuda":
            return steps
        graph = torch.cuda.CUDAGraph()
        rng = torch.cuda.get_rng_state(self.device)  # search draws nothing; training's random stream stays as it was
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        # Autocast's weight cache would hold casts made during capture: off inside graphs.
        with autocast(self.device, self.precision, cache_enabled=False):
            with torch.cuda.stream(side):
                steps()  # cuBLAS picks its algorithms and allocates its workspaces here, not in capture
            current.wait_stream(side)
            try:
                with torch.cuda.graph(graph, pool=self._pool):
                    steps()
            except RuntimeError as err:
                raise GraphCaptureError(f"capturing decoder steps failed: {str(err).splitlines()[0]}") from err
            finally:
                torch.cuda.set_rng_state(rng, self.device)
        if self._pool is None:
            self._pool = graph.pool()
        return graph.replay
