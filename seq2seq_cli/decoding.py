"""Batched decoding: greedy search, beam search, and the loop that translates many sentences.

Both searches run a whole batch of sentences (and, for beam search, all their beams) through
each decoder step together. Every hypothesis stops at [SEP] or at
``max_length_ratio * source length + max_length_offset`` tokens; a batch stops when every
sentence is done. [PAD] and [CLS] are never generated.

Scores are sums of token log-probabilities, the final [SEP] included. Beam search ranks
finished hypotheses by that sum divided by the GNMT length penalty
``((5 + length) / 6) ** length_penalty`` (``length_penalty = 0`` ranks by the plain sum);
greedy search's score is the sum itself.

Sampling (``Sampling``) replaces greedy search's choice of the most probable token with a
random draw, for back-translation and diverse candidates; its scores are the model's own
log-probabilities of what it drew, as a search's are.

An ``Ensemble`` of models searches like one model, batched the same way: each step's
log-probabilities are those of the weighted mean of the models' distributions.

``constrained_beam_search`` is beam search whose translations must hold given phrases
(``seq2seq_cli.constraints``), its beams shared out by how far each is with them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seq2seq_cli.config import DecodingConfig
from seq2seq_cli.constraints import Constraints, ConstraintState, StateTable, allocate
from seq2seq_cli.data import pad_sources
from seq2seq_cli.device import cut_into_batches, fill_in_batches
from seq2seq_cli.precision import autocast
from seq2seq_cli.model import EncoderState, Seq2Seq
from seq2seq_cli.tokenization import Tokenizers

if TYPE_CHECKING:
    from seq2seq_cli.search_graphs import SearchGraphs


@dataclass
class Hypothesis:
    tokens: list[int]  # without [CLS]/[SEP]
    score: float  # the ranking score: log_prob / GNMT penalty in beam search; log_prob in greedy search
    log_prob: float  # sum of token log-probabilities, [SEP] included
    attention: Optional[torch.Tensor] = None  # (len(tokens) + 1, source length incl. [SEP])


@dataclass(frozen=True)
class SpecialIds:
    """The special tokens search needs, and how target tokens read as text."""

    pad: int
    bos: int
    eos: int
    # The text of a translation's tokens (special tokens kept), so that an n-best list holds
    # each text once: a word has more than one tokenization ("weißen", "weiße ##n"), all
    # printed alike. None: every token sequence is a text of its own.
    text: Optional[Callable[[Sequence[int]], str]] = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, tokenizers: Tokenizers) -> "SpecialIds":
        return cls(tokenizers.pad_id, tokenizers.bos_id, tokenizers.eos_id, tokenizers.tgt_text)


@dataclass(frozen=True)
class Sampling:
    """Draw each token at random instead of searching (``s2s translate --sample``): from the
    model's distribution with its log-probabilities divided by ``temperature`` (below 1:
    sharper, above: flatter), among the ``topk`` most probable tokens only when ``topk`` > 0.
    Each sample draws from a generator of its own, seeded from ``seed``, the sentence's
    position in the input and which of its samples it is, so the same seed and input give the
    same samples whatever the batches and threads."""

    topk: int = 0
    temperature: float = 1.0
    seed: int = 0

    def generator(self, sentence: int, sample: int, device: torch.device) -> torch.Generator:
        # SeedSequence mixes the three numbers, so that nearby sentences get unrelated streams.
        seed = int(np.random.SeedSequence([self.seed, sentence, sample]).generate_state(1, np.uint64)[0])
        return torch.Generator(device).manual_seed(seed)


class TokenSampler:
    """The next token of each row of a batch, drawn as ``sampling`` says with the rows' own
    generators (``select`` keeps them in step as finished rows leave the batch)."""

    def __init__(self, sampling: Sampling, generators: list[torch.Generator]):
        self.sampling = sampling
        self.generators = generators

    def select(self, keep: torch.Tensor) -> None:
        self.generators = [self.generators[row] for row in keep.tolist()]

    def __call__(self, log_probs: torch.Tensor, ids: SpecialIds, at_limit: torch.Tensor, generated: torch.Tensor,
                 no_repeat_ngram_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``best_next_tokens(..., count=1)``: each row's drawn token (R, 1) and the model's
        log-probability of it (R, 1), rows at their length limit ending."""
        restrict_next_tokens(log_probs, ids, at_limit, generated, no_repeat_ngram_size)
        weights = log_probs / self.sampling.temperature  # (R, V)
        if 0 < self.sampling.topk < weights.size(1):
            # Draw among the k best columns only: no pass over the whole vocabulary after this.
            weights, candidates = top_by_blocks(weights, self.sampling.topk)  # (R, K) each
            tokens = candidates.gather(1, self.draw(weights))
        else:
            tokens = self.draw(weights)
        return log_probs.gather(1, tokens), tokens

    def draw(self, weights: torch.Tensor) -> torch.Tensor:
        """One column (R, 1) of each row of ``weights`` (R, C), drawn with the row's generator
        from ``softmax(weights)``.

        Inverse transform sampling, one uniform number per row (Gumbel noise for every column
        cost as much as the output layer): the column drawn is the first whose running sum of
        probabilities exceeds u x the row's total. The sum runs in two levels, over blocks of
        BLOCK columns and then within the chosen block, in float64 (one float64 running sum
        over the whole row took several times as long, and a float32 one blurs the rare tokens).
        A running sum rises only at a column (block) of probability above 0, never at one at
        -inf (never generated, banned), and each threshold is kept below its total, so the
        column found always has a probability above 0."""
        rows, width = weights.shape
        probs = torch.softmax(weights, dim=1)
        if width % BLOCK:
            probs = F.pad(probs, (0, BLOCK - width % BLOCK))
        blocks = probs.view(rows, -1, BLOCK)  # (R, C / BLOCK, BLOCK)
        # A block's sum of 64 in float32 is off by a few parts in a million of itself: that much
        # more or less chance for the block, nothing for how its tokens share it.
        running = blocks.sum(dim=2).double().cumsum_(dim=1)  # (R, C / BLOCK)
        uniform = torch.cat([torch.rand(1, generator=g, dtype=torch.float64, device=weights.device)
                             for g in self.generators]).unsqueeze(1)  # (R, 1)
        threshold = _below(uniform * running[:, -1:], running[:, -1:])
        block = torch.searchsorted(running, threshold, right=True)  # (R, 1)
        before = torch.where(block > 0, running.gather(1, (block - 1).clamp_(min=0)), 0.0)
        within = blocks.gather(1, block.unsqueeze(2).expand(rows, 1, BLOCK)).squeeze(1).double().cumsum_(dim=1)
        offset = torch.searchsorted(within, _below(threshold - before, within[:, -1:]), right=True)  # (R, 1)
        return block * BLOCK + offset


def _below(values: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    """``values``, each kept strictly below its limit (the largest float below it at most)."""
    return torch.minimum(values, torch.nextafter(limits, torch.zeros_like(limits)))


def gnmt_penalty(length: torch.Tensor | int, length_penalty: float):
    """GNMT's ((5 + |Y|) / 6) ** length_penalty, with |Y| counting [SEP]."""
    return ((5.0 + length) / 6.0) ** length_penalty


def max_lengths(src_lengths: torch.Tensor, ratio: float, offset: int) -> torch.Tensor:
    """The length limit of each hypothesis, from its source length (tokens, [SEP] excluded)."""
    return (src_lengths.double() * ratio).floor().long() + offset


class EnsembleState:
    """The members' encoder states, selected together; ``hidden`` is their decoder states side
    by side (N, H1 + H2 + ...), so search reorders it as it reorders one model's."""

    def __init__(self, states: list[EncoderState]):
        self.states = states
        self.hidden = torch.cat([state.hidden for state in states], dim=1)

    def select(self, index: torch.Tensor) -> "EnsembleState":
        return EnsembleState([state.select(index) for state in self.states])


class Ensemble(nn.Module):
    """Several models that search as one: at each step the next-token distribution is the
    weighted mean of the models' probabilities, and search ranks its log (the usual "log of
    mean probabilities" of fairseq, Marian and Sockeye). The models share the tokenizer and
    so the target vocabulary; their sizes may differ."""

    def __init__(self, models: Sequence[Seq2Seq], weights: Optional[Sequence[float]] = None):
        super().__init__()
        weights = [1.0] * len(models) if weights is None else list(weights)
        if len(weights) != len(models) or any(not w > 0 for w in weights):
            raise ValueError("an ensemble needs one positive weight per model")
        self.members = nn.ModuleList(models)
        total = sum(weights)
        self.weights = [w / total for w in weights]

    def encode(self, src_ids: torch.Tensor, src_lengths: torch.Tensor) -> EnsembleState:
        return EnsembleState([member.encode(src_ids, src_lengths) for member in self.members])

    def step_log_probs(self, tokens: torch.Tensor, hidden: torch.Tensor, state: EnsembleState,
                       ids: SpecialIds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sizes = [member_state.hidden.size(1) for member_state in state.states]
        results = [step_log_probs(member, tokens, member_hidden, member_state, ids) for member, member_hidden, member_state
                   in zip(self.members, hidden.split(sizes, dim=1), state.states)]
        # log sum_m w_m exp(lp_m), taken around the largest lp_m: models that agree give back
        # exactly their own log-probabilities (an ensemble of a model with itself is the model).
        # In place, pass by pass: at (N, V) each pass costs about as much as a model's step.
        member_log_probs = [log_probs for log_probs, _, _ in results]  # each (N, V)
        top = member_log_probs[0]
        for other in member_log_probs[1:]:
            top = torch.maximum(top, other)
        top = top.clamp(min=-1e30)  # a token every model rules out (-inf) stays at -inf, not NaN
        mixed = torch.zeros_like(top)
        for weight, log_probs in zip(self.weights, member_log_probs):
            mixed.add_((log_probs - top).exp_(), alpha=weight)
        log_probs = mixed.log_().add_(top)
        weights = sum(w * attention.float() for w, (_, _, attention) in zip(self.weights, results))
        return log_probs, torch.cat([new_hidden for _, new_hidden, _ in results], dim=1), weights


def step_log_probs(model: Seq2Seq | Ensemble, tokens: torch.Tensor, hidden: torch.Tensor, state,
                   ids: SpecialIds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoder step from the previous tokens (N,): the next tokens' log-probabilities
    (N, V; [PAD] and [CLS] never), the new decoder state and the attention weights (N, S)."""
    if isinstance(model, Ensemble):
        return model.step_log_probs(tokens, hidden, state, ids)
    features, hidden, weights = model.decoder.step(model.decoder.embed(tokens), hidden, state)
    logits = model.decoder.logits(features).float()  # (N, V)
    logits[:, ids.pad] = float("-inf")
    logits[:, ids.bos] = float("-inf")
    return torch.log_softmax(logits, dim=-1), hidden, weights


def best_next_tokens(log_probs: torch.Tensor, ids: SpecialIds, at_limit: torch.Tensor,
                     count: int, generated: Optional[torch.Tensor] = None,
                     no_repeat_ngram_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` (at most V) most probable next tokens of each row and their log-probabilities.

    Rows at their length limit may only end: they keep the true log P([SEP]), so a score is
    always the model's own. Beam search asks each beam for its 2K best tokens instead of
    ranking all K x V extensions of a sentence: the 2K best extensions are among them, and
    no (B, K x V) matrix of scored extensions is built."""
    restrict_next_tokens(log_probs, ids, at_limit, generated, no_repeat_ngram_size)
    return top_by_blocks(log_probs, min(count, log_probs.size(1)))


def restrict_next_tokens(log_probs: torch.Tensor, ids: SpecialIds, at_limit: torch.Tensor,
                         generated: Optional[torch.Tensor] = None, no_repeat_ngram_size: int = 0) -> None:
    """In place on log_probs (R, V), before a next token is chosen (searched or drawn): rows at
    their length limit may only end, and with ``no_repeat_ngram_size`` no row may repeat an
    n-gram of ``generated`` (R, t)."""
    if bool(at_limit.any()):  # most steps have none: skip the pass over (R, V)
        only_end_at_limit(log_probs, at_limit, ids.eos)
    if no_repeat_ngram_size and generated is not None:
        ban_repeated_ngrams(log_probs, generated, no_repeat_ngram_size)


def only_end_at_limit(log_probs: torch.Tensor, at_limit: torch.Tensor, eos: int) -> None:
    """In place on log_probs (R, V): the rows at their length limit (at_limit (R,)) may only end,
    keeping their true log P([SEP]). Reads nothing back to the host, so a CUDA graph can record it."""
    eos_log_probs = log_probs[:, eos].clone()
    log_probs.masked_fill_(at_limit.unsqueeze(1), float("-inf"))
    log_probs[:, eos] = eos_log_probs


BLOCK = 64  # columns; the fastest of 16 to 256 here for greedy and beam 5 over 8,000 tokens


def top_by_blocks(scores: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores.topk(count, dim=1)`` (R, count) of scores (R, V), ranking on the CPU only the
    ``count`` blocks of ``BLOCK`` columns with the largest maxima, plus the columns after the last
    whole block.

    Were one of a row's ``count`` best entries in a block not chosen, the chosen blocks' maxima
    would be ``count`` other entries at least as large, so it would not be among the best.
    On the CPU a row's maximum (``amax``) costs a seventh of ``max`` with its index, and
    ``topk`` over the vocabulary took a fifth of a beam search; on a GPU one ``topk`` is one
    kernel launch, which several smaller operations would not beat. Equal scores may come in
    another order than ``topk``'s, which does not promise one either."""
    rows, width = scores.shape
    whole = width // BLOCK * BLOCK
    if scores.device.type != "cpu" or count * BLOCK * 4 > whole:  # on the CPU: too few blocks to skip any
        return scores.topk(count, dim=1)
    block_maxima = scores[:, :whole].view(rows, whole // BLOCK, BLOCK).amax(dim=2)  # (R, V // BLOCK)
    blocks = block_maxima.topk(count, dim=1).indices  # (R, count)
    columns = (blocks.unsqueeze(2) * BLOCK + torch.arange(BLOCK, device=scores.device)).view(rows, count * BLOCK)
    if whole < width:
        columns = torch.cat([columns, torch.arange(whole, width, device=scores.device).expand(rows, -1)], dim=1)
    best, where = scores.gather(1, columns).topk(count, dim=1)
    return best, columns.gather(1, where)


def ban_repeated_ngrams(log_probs: torch.Tensor, generated: torch.Tensor, size: int) -> None:
    """Forbid, in place, each next token that would repeat an n-gram of ``size`` tokens.

    log_probs (R, V); generated (R, t): the tokens each row has produced so far."""
    steps = generated.size(1)
    if size <= 0 or steps < size - 1:
        return
    if size == 1:
        log_probs.scatter_(1, generated, float("-inf"))
        return
    prefix = generated[:, steps - size + 1:]  # (R, size-1): what the next token would extend
    windows = generated.unfold(1, size - 1, 1)[:, : steps - size + 1]  # (R, steps-size+1, size-1)
    matches = (windows == prefix.unsqueeze(1)).all(-1)  # (R, steps-size+1)
    rows, starts = matches.nonzero(as_tuple=True)
    log_probs[rows, generated[rows, starts + size - 1]] = float("-inf")


@torch.inference_mode()
def greedy_search(model: Seq2Seq | Ensemble, src_ids: torch.Tensor, src_lengths: torch.Tensor, ids: SpecialIds,
                  limits: torch.Tensor, keep_attention: bool = False, no_repeat_ngram_size: int = 0,
                  sampler: Optional[TokenSampler] = None) -> list[Hypothesis]:
    """Pick the most probable token at each step (with ``sampler``, a drawn one), for a whole
    batch at once.

    Sentences that have ended leave the batch, so a long sentence does not make the short
    ones in its batch cost as much as itself."""
    device = src_ids.device
    batch_size = src_ids.size(0)
    state = model.encode(src_ids, src_lengths)
    hidden = state.hidden
    limits = limits.to(device)
    steps = int(limits.max()) + 1
    active = torch.arange(batch_size, device=device)  # original rows still decoding
    tokens = torch.full((batch_size,), ids.bos, dtype=torch.long, device=device)
    output = torch.full((batch_size, steps), ids.eos, dtype=torch.long, device=device)
    log_prob = torch.zeros(batch_size, device=device)
    attention = torch.zeros(batch_size, steps, src_ids.size(1)) if keep_attention else None
    for t in range(steps):
        log_probs, hidden, weights = step_log_probs(model, tokens, hidden, state, ids)
        if sampler is None:
            best, tokens = best_next_tokens(log_probs, ids, limits <= t, 1, output[active, :t],
                                            no_repeat_ngram_size)  # (active, 1)
        else:
            best, tokens = sampler(log_probs, ids, limits <= t, output[active, :t], no_repeat_ngram_size)
        best, tokens = best.squeeze(1), tokens.squeeze(1)
        output[active, t] = tokens
        log_prob[active] += best
        if attention is not None:
            attention[active.cpu(), t] = weights.float().cpu()
        going = tokens != ids.eos
        if not bool(going.all()):
            if not bool(going.any()):
                break
            keep = going.nonzero().squeeze(1)
            active, tokens, hidden, limits = active[keep], tokens[keep], hidden[keep], limits[keep]
            state = state.select(keep)
            if sampler is not None:
                sampler.select(keep)
    hypotheses = []
    for row, sequence in enumerate(output.tolist()):
        length = sequence.index(ids.eos)
        row_attention = None
        if attention is not None:
            row_attention = attention[row, : length + 1, : int(src_lengths[row])]
        score = float(log_prob[row])
        hypotheses.append(Hypothesis(sequence[:length], score, score, row_attention))
    return hypotheses


def _first_beams(model: Seq2Seq | Ensemble, src_ids: torch.Tensor, src_lengths: torch.Tensor, ids: SpecialIds,
                 limits: torch.Tensor, k: int) -> tuple[EncoderState | EnsembleState, torch.Tensor, torch.Tensor,
                                                        torch.Tensor]:
    """The K beams of each sentence before the first step: their encoder state (B*K, ...),
    decoder state (B*K, H), length limits (B*K,) and first tokens ([CLS], (B*K,))."""
    batch_size = src_ids.size(0)
    state = model.encode(src_ids, src_lengths)
    # Every beam of a sentence reads the same encoder state: expanded once, never reordered.
    beam_state = state.select(torch.arange(batch_size, device=src_ids.device).repeat_interleave(k))
    tokens = torch.full((batch_size * k,), ids.bos, dtype=torch.long, device=src_ids.device)
    return beam_state, beam_state.hidden, limits.repeat_interleave(k), tokens


@torch.inference_mode()
def beam_search(model: Seq2Seq | Ensemble, src_ids: torch.Tensor, src_lengths: torch.Tensor, ids: SpecialIds,
                limits: torch.Tensor, beam_size: int, length_penalty: float = 1.0, nbest: int = 1,
                keep_attention: bool = False, no_repeat_ngram_size: int = 0) -> list[list[Hypothesis]]:
    """The ``nbest`` best hypotheses of each sentence, best first, with all beams in one batch.

    At each step the 2K best extensions of the K live beams are ranked. Those ending in [SEP]
    among the first K are finished; the K best others live on. A sentence is done when it has
    K finished translations of different texts, or when no live beam can still beat its n-th
    best one (``Ended``). Done sentences leave the batch.
    """
    device = src_ids.device
    batch_size, k = src_ids.size(0), beam_size
    limits = limits.to(device)
    beam_state, hidden, beam_limits, tokens = _first_beams(model, src_ids, src_lengths, ids, limits, k)
    generated = torch.zeros(batch_size * k, 0, dtype=torch.long, device=device)  # for no_repeat_ngram_size
    scores = torch.full((batch_size, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam to start with
    rank = torch.arange(2 * k, device=device)
    active = list(range(batch_size))  # original rows still searching, in batch order
    # Per step: the active rows, the parent beam and token of each new beam, attention weights.
    history: list[tuple[dict[int, int], torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = []
    ended = Ended(history, limits, length_penalty, k, nbest, ids)
    for t in range(int(limits.max()) + 1):
        n = len(active)
        log_probs, hidden, weights = step_log_probs(model, tokens, hidden, beam_state, ids)
        # The 2K best extensions of a sentence are among its beams' 2K best tokens each, so
        # rank K x 2K candidates per sentence, not K x V.
        beam_log_probs, beam_tokens = best_next_tokens(log_probs, ids, beam_limits <= t, 2 * k,
                                                       generated, no_repeat_ngram_size)  # (n*K, 2K)
        per_beam = beam_tokens.size(1)
        candidates = (scores.view(-1, 1) + beam_log_probs).view(n, k * per_beam)
        top_scores, top_index = candidates.topk(min(2 * k, k * per_beam), dim=1)  # (n, 2K)
        top_beam, top_token = top_index // per_beam, beam_tokens.view(n, k * per_beam).gather(1, top_index)
        is_eos = top_token == ids.eos

        ending = is_eos & (rank[: top_scores.size(1)] < k) & torch.isfinite(top_scores)
        if bool(ending.any()):
            where = ending.nonzero().tolist()
            for (position, _), raw, beam in zip(where, top_scores[ending].tolist(), top_beam[ending].tolist()):
                ended.add(active[position], raw, t, beam)

        live_scores, choice = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)  # (n, K)
        parent = top_beam.gather(1, choice)
        next_tokens = top_token.gather(1, choice)
        attention = weights.view(n, k, -1).float().cpu() if keep_attention else None
        history.append(({row: i for i, row in enumerate(active)}, parent.cpu(), next_tokens.cpu(), attention))
        scores = live_scores
        offsets = (torch.arange(n, device=device) * k).unsqueeze(1)
        parent_rows = (parent + offsets).view(-1)
        hidden = hidden.index_select(0, parent_rows)
        tokens = next_tokens.view(-1)
        if no_repeat_ngram_size:
            generated = torch.cat([generated.index_select(0, parent_rows), tokens.unsqueeze(1)], dim=1)

        keep = ended.searching(active, scores[:, 0].tolist())
        if not keep:
            break
        if len(keep) < n:
            rows, beams = _kept_rows(keep, k, device)
            active = [active[p] for p in keep]
            scores, beam_state, hidden = scores[rows], beam_state.select(beams), hidden[beams]
            tokens, beam_limits, generated = tokens[beams], beam_limits[beams], generated[beams]

    return [ended.hypotheses(row, int(src_lengths[row]), keep_attention) for row in range(batch_size)]


@torch.inference_mode()
def constrained_beam_search(model: Seq2Seq | Ensemble, src_ids: torch.Tensor, src_lengths: torch.Tensor,
                            ids: SpecialIds, limits: torch.Tensor, beam_size: int, constraints: Sequence[Constraints],
                            length_penalty: float = 1.0, nbest: int = 1, keep_attention: bool = False
                            ) -> list[list[Hypothesis]]:
    """``beam_search`` whose translations contain each sentence's ``constraints`` (phrases of
    target ids), by dynamic beam allocation (``seq2seq_cli.constraints``).

    Each step ranks, per sentence, every beam's 2K best tokens and the tokens that advance its
    constraints, and keeps 2K of them taken in turn from the banks of how many constraint
    tokens they have met. Of those, the ones ending in [SEP] among the first K finish if they
    have met every constraint; the first K others live on. A sentence that cannot meet them all
    before its length limit gets its best endings that do not (the caller can tell by looking).

    The candidates are tensors, as in ``beam_search``; Python sees one state per beam (and the
    few candidates that touch a phrase), looked up in each sentence's ``StateTable``."""
    device = src_ids.device
    batch_size, k = src_ids.size(0), beam_size
    limits = limits.to(device)
    beam_state, hidden, beam_limits, tokens = _first_beams(model, src_ids, src_lengths, ids, limits, k)
    scores = torch.full((batch_size, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    tables = [StateTable(sentence) for sentence in constraints]
    states = [[ConstraintState(opening=True)] * k for _ in range(batch_size)]  # of the active sentences' beams
    active = list(range(batch_size))
    history: list[tuple[dict[int, int], torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = []
    ended = Ended(history, limits, length_penalty, k, nbest, ids)
    for t in range(int(limits.max()) + 1):
        n = len(active)
        log_probs, hidden, weights = step_log_probs(model, tokens, hidden, beam_state, ids)
        if t == 0:
            goes_on, group = _word_continuations(constraints, log_probs.size(1), device)
        restrict_next_tokens(log_probs, ids, beam_limits <= t)
        best_log_probs, best_tokens = top_by_blocks(log_probs, min(2 * k, log_probs.size(1)))  # (n*K, 2K)
        summaries = [tables[row].summary(state) for position, row in enumerate(active) for state in states[position]]
        offered = _padded([summary.advancing for summary in summaries], device)  # (n*K, A), -1 for none
        offered_log_probs = log_probs.gather(1, offered.clamp(min=0)).masked_fill(offered < 0, float("-inf"))
        # A token among a beam's best is a candidate once.
        offered_log_probs.masked_fill_((offered.unsqueeze(2) == best_tokens.unsqueeze(1)).any(2), float("-inf"))
        candidate_tokens = torch.cat([best_tokens, offered.clamp(min=0)], dim=1)  # (n*K, C)
        candidate_scores = scores.view(-1, 1) + torch.cat([best_log_probs, offered_log_probs], dim=1)
        per_beam = candidate_tokens.size(1)

        beam_banks = torch.tensor([[s.bank_starting_word, s.bank_going_on, s.bank_ended, s.may_end] for s in summaries],
                                  device=device)  # (n*K, 4)
        is_eos = candidate_tokens == ids.eos
        going_on = goes_on[group[active].repeat_interleave(k).unsqueeze(1), candidate_tokens]
        banks = torch.where(going_on, beam_banks[:, 1:2], beam_banks[:, 0:1])
        banks = torch.where(is_eos, beam_banks[:, 2:3], banks)
        is_candidate = candidate_scores > float("-inf")
        ending_unmet = is_candidate & is_eos & (beam_banks[:, 3:4] == 0)
        if bool(ending_unmet.any()):
            for beam_row, raw in zip(ending_unmet.nonzero()[:, 0].tolist(), candidate_scores[ending_unmet].tolist()):
                ended.add(active[beam_row // k], raw, t, beam_row % k, short=True)
            candidate_scores = candidate_scores.masked_fill(ending_unmet, float("-inf"))
        special = _padded([summary.special for summary in summaries], device)  # (n*K, S)
        touching = (candidate_tokens.unsqueeze(2) == special.unsqueeze(1)).any(2) & is_candidate & ~is_eos
        if bool(touching.any()):  # the candidates that begin or go on a phrase: their banks one by one
            where = touching.nonzero()[:, 0].tolist()
            banks[touching] = torch.tensor(
                [tables[active[beam_row // k]].after(states[beam_row // k][beam_row % k], token)[1]
                 for beam_row, token in zip(where, candidate_tokens[touching].tolist())], device=device)

        taken, is_taken = allocate(banks.view(n, -1), candidate_scores.view(n, -1), 2 * k)  # (n, 2K), in turn
        taken_scores = candidate_scores.view(n, -1).gather(1, taken)
        taken_tokens = candidate_tokens.view(n, -1).gather(1, taken)
        taken_beams = taken // per_beam
        taken_eos = is_taken & (taken_tokens == ids.eos)
        ending = taken_eos.clone()
        ending[:, k:] = False
        if bool(ending.any()):
            for (position, _), raw, beam in zip(ending.nonzero().tolist(), taken_scores[ending].tolist(),
                                                taken_beams[ending].tolist()):
                ended.add(active[position], raw, t, beam)
        living = is_taken & ~taken_eos
        live = (~living).to(torch.uint8).argsort(dim=1, stable=True)[:, :k]  # the first K that live on, in turn
        live_ones = living.gather(1, live)
        parent = taken_beams.gather(1, live).masked_fill(~live_ones, 0)  # (n, K)
        next_tokens = taken_tokens.gather(1, live).masked_fill(~live_ones, ids.eos)
        scores = taken_scores.gather(1, live).masked_fill(~live_ones, float("-inf"))
        states = [[tables[row].after(states[position][beam], token)[0] if alive else ConstraintState()
                   for beam, token, alive in zip(beams, chosen, alives)]
                  for position, (row, beams, chosen, alives) in enumerate(
                      zip(active, parent.tolist(), next_tokens.tolist(), live_ones.tolist()))]

        attention = weights.view(n, k, -1).float().cpu() if keep_attention else None
        history.append(({row: i for i, row in enumerate(active)}, parent.cpu(), next_tokens.cpu(), attention))
        parent_rows = (parent + (torch.arange(n, device=device) * k).unsqueeze(1)).view(-1)
        hidden = hidden.index_select(0, parent_rows)
        tokens = next_tokens.view(-1)

        keep = ended.searching(active, scores.max(dim=1).values.tolist())
        if not keep:
            break
        if len(keep) < n:
            rows, beams = _kept_rows(keep, k, device)
            active = [active[p] for p in keep]
            scores, states = scores[rows], [states[p] for p in keep]
            beam_state, hidden, tokens, beam_limits = beam_state.select(beams), hidden[beams], tokens[beams], beam_limits[beams]

    return [ended.hypotheses(row, int(src_lengths[row]), keep_attention) for row in range(batch_size)]


def _word_continuations(constraints: Sequence[Constraints], vocab_size: int,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tokens go on a word, as a table (G, V) of each distinct set of the sentences'
    ``continuation`` and each sentence's row in it (B,): one vocabulary gives one row."""
    distinct: dict[frozenset[int], int] = {}
    group = [distinct.setdefault(sentence.continuation, len(distinct)) for sentence in constraints]
    table = torch.zeros(len(distinct), vocab_size, dtype=torch.bool)
    for row, continuation in enumerate(distinct):
        table[row, sorted(continuation)] = True
    return table.to(device), torch.tensor(group, device=device)


def _padded(lists: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """Lists of token ids as rows of one tensor, -1 after each list's end (one column at least)."""
    width = max(1, max(map(len, lists), default=0))
    return torch.tensor([list(row) + [-1] * (width - len(row)) for row in lists], dtype=torch.long, device=device)


def phrase_tokens(constraints: Constraints) -> int:
    """The most tokens a sentence's phrases put into its translation (each written its longest way
    but for those that begin a translation: "Sh ##irt" for "shirt" widened every line's beam)."""
    return sum(max(len(phrase[way]) for way in constraints.ways_from(c, False))
               for c, phrase in enumerate(constraints.phrases))


def constrained_beam_width(beam_size: int, constraints: Constraints, per_bank: int = 2) -> int:
    """The beam that meets a sentence's constraints: each bank (constraint tokens in place, 0 to
    all of them) keeps ``per_bank`` beams, two at least; with one, the words around a phrase of
    many tokens are left to one beam each. Two serve an n-best list too (translations end over
    many steps, so the last bank's two beams finish n of them), so that it begins with the
    1-best; a list they leave short is searched again with n a bank. A sentence without
    phrases keeps ``beam_size``."""
    if not constraints.phrases:
        return beam_size
    return max(beam_size, max(2, per_bank) * (phrase_tokens(constraints) + 1))


def _holds_all(hypothesis: Hypothesis, constraints: Constraints) -> bool:
    return all(constraints.held(hypothesis.tokens))


def _best_holding(hypotheses: list[Hypothesis], constraints: Constraints, nbest: int,
                  text: Optional[Callable[[Sequence[int]], str]], first: Optional[Hypothesis] = None
                  ) -> list[Hypothesis]:
    """The ``nbest`` best of ``hypotheses`` that hold every phrase (the others after them, for a
    sentence that cannot hold them all), each text once where there are enough; ``first``, if
    given, before them all."""
    ranked = sorted(hypotheses, key=lambda h: (_holds_all(h, constraints), h.score), reverse=True)
    ranked = ranked if first is None else [first] + [h for h in ranked if h is not first]
    seen: set = set()
    distinct, repeats = [], []
    for h in ranked:
        key = _text_key(h, text)
        (repeats if key in seen else distinct).append(h)
        seen.add(key)
    return (distinct + repeats)[:nbest]


def _text_key(hypothesis: Hypothesis, text: Optional[Callable[[Sequence[int]], str]]):
    """What tells ``hypothesis`` apart from another: its text, or its tokens where ``text`` is None."""
    return tuple(hypothesis.tokens) if text is None else text(hypothesis.tokens)


def _kept_rows(keep: list[int], k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions of the sentences still searching, and the rows of all their beams."""
    rows = torch.tensor(keep, device=device)
    return rows, (rows.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)


Ending = tuple[float, float, int, int]  # score, log-probability, step, beam


class Ended:
    """The translations each sentence of a beam search has ended, as (score, log-probability,
    the step that chose [SEP], the beam it chose it on), read back through the search's
    ``history`` (per step: the active rows' positions, each new beam's parent beam and token,
    attention weights or None) into ``Hypothesis``es.

    A sentence is done when K translations have ended, or when no live beam can still beat its
    n-th best one (log-probabilities only fall, and the length penalty is largest at the length
    limit). Translations are told apart by their text (``SpecialIds.text``): one that prints
    as an earlier one does (the same words tokenized another way) counts once, the better
    scoring of the two, so an n-best list holds n different texts. Only where the search ends
    with fewer (at the length limit) is the list filled up with such repeats.

    Constrained search also keeps endings ``short`` of the phrases: they never count, and rank
    after every ending that holds them."""

    def __init__(self, history: list, limits: torch.Tensor, length_penalty: float, k: int, nbest: int,
                 ids: SpecialIds):
        self.history, self.length_penalty, self.k, self.nbest, self.text = history, length_penalty, k, nbest, ids.text
        self.best_bound = gnmt_penalty(limits.double() + 1, length_penalty).float().tolist()  # the largest penalty
        rows = limits.size(0)
        self.distinct: list[dict[object, Ending]] = [{} for _ in range(rows)]  # by text
        self.repeats: list[list[Ending]] = [[] for _ in range(rows)]
        self.short: list[list[Ending]] = [[] for _ in range(rows)]
        self._steps: dict[int, tuple[dict[int, int], list[list[int]], list[list[int]]]] = {}

    def add(self, row: int, log_prob: float, step: int, beam: int, short: bool = False) -> None:
        ending = (log_prob / gnmt_penalty(step + 1, self.length_penalty), log_prob, step, beam)
        if short:
            self.short[row].append(ending)
            return
        text = ending if self.text is None else self.text(self._path(row, step, beam)[0])
        earlier = self.distinct[row].get(text)
        if earlier is not None:
            self.repeats[row].append(min(earlier, ending))
        if earlier is None or ending > earlier:
            self.distinct[row][text] = ending

    def searching(self, active: list[int], best_live: list[float]) -> list[int]:
        """Positions in ``active`` of the sentences not done; ``best_live`` is the best score
        of each one's live beams."""
        keep = []
        for position, row in enumerate(active):
            bound = best_live[position] / self.best_bound[row]  # no live beam can end better than this
            ranked = sorted(self.distinct[row].values(), reverse=True)
            done = (len(ranked) >= self.k or bound == float("-inf")
                    or (len(ranked) >= self.nbest and ranked[self.nbest - 1][0] >= bound))
            if not done:
                keep.append(position)
        return keep

    def best(self, row: int) -> list[Ending]:
        """The ``nbest`` best endings of sentence ``row``, best first, each text once unless
        there are too few texts; then those short of their phrases."""
        ranked = sorted(self.distinct[row].values(), reverse=True)[: self.nbest]
        ranked += sorted(self.repeats[row], reverse=True)[: self.nbest - len(ranked)]
        return (sorted(ranked, reverse=True) + sorted(self.short[row], reverse=True))[: self.nbest]

    def hypotheses(self, row: int, source_length: int, keep_attention: bool) -> list[Hypothesis]:
        """Sentence ``row``'s ``best`` endings: their tokens, and with ``keep_attention`` the
        attention row of each step, cut to the source's length."""
        found = []
        for score, log_prob, step, beam in self.best(row):
            tokens, beams = self._path(row, step, beam)
            attention = None
            if keep_attention:
                attention = torch.stack([self.history[s][3][self.history[s][0][row], beam_then]
                                         for s, beam_then in enumerate(beams)])[:, :source_length]
            found.append(Hypothesis(tokens, score, log_prob, attention))
        return found

    def _path(self, row: int, step: int, beam: int) -> tuple[list[int], list[int]]:
        """The tokens before [SEP] of the translation that ended at ``step`` on ``beam``, and the
        beam it was on at each step from the first to ``step``, read back through the parents."""
        tokens, beams = [], [beam]
        for s in range(step - 1, -1, -1):
            if s not in self._steps:  # each step's records once as lists: indexing tensors costs more
                positions, parents, chosen, _ = self.history[s]
                self._steps[s] = positions, parents.tolist(), chosen.tolist()
            positions, parents, chosen = self._steps[s]
            tokens.append(chosen[positions[row]][beams[-1]])
            beams.append(parents[positions[row]][beams[-1]])
        return tokens[::-1], beams[::-1]


def translate_ids(model: Seq2Seq | Ensemble, sources: Sequence[Sequence[int]], ids: SpecialIds, device: torch.device,
                  decoding: DecodingConfig, nbest: int = 1, keep_attention: bool = False,
                  precision: str = "auto", graphs: Optional["SearchGraphs"] = None,
                  sampling: Optional[Sampling] = None, first_index: int = 0,
                  progress: Optional[Callable[[int], object]] = None,
                  constraints: Optional[Sequence[Constraints]] = None,
                  placing: Optional[Callable[[list[int], list[Hypothesis]], list[Optional[Hypothesis]]]] = None
                  ) -> list[list[Hypothesis]]:
    """Translate token-id sources (no special tokens): ``nbest`` hypotheses each, in input order,
    searched as ``decoding`` says (beam size, length penalty and limits, batch size), computing
    in ``precision`` (see ``seq2seq_cli.precision``: auto is bf16 autocast on CUDA, fp32 on the CPU).
    With ``graphs`` the searches replay their decoder steps from CUDA graphs, except where
    attention weights or ``no_repeat_ngram_size`` ask for the eager search.

    With ``sampling``, ``nbest`` samples of each source are drawn instead (greedy search's
    loop, ``decoding.beam_size`` unused), highest log-probability first; ``first_index`` is the
    position of ``sources[0]`` in the whole input, which seeds each sentence's draws.

    With ``constraints`` (one list of target-id phrases per source) beam search puts each
    source's phrases into its translations (``constrained_beam_search``), the length limit
    raised by their tokens and the beam widened as they need (``constrained_beam_width``); a
    batch holds sentences of one width, so that a translation never depends on its neighbours.
    A sentence whose plain beam search translations hold its phrases already keeps them.
    ``placing``, given sources' indices and plain translations of them, may give each
    translation with phrases put in place of words of its own (a glossary's terms,
    ``Translator``): where the 1-best so made holds every phrase it is the translation, the
    first of an n-best list, which the plain n-best so made fill (searching under constraints
    only where they are too few). It is called in the search's thread, under its autocast.

    An empty source (a blank line, or one the tokenizer reads as nothing) translates to nothing,
    without a search: training never shows the model one (empty pairs are dropped).

    Sentences are sorted by length so that a batch holds similar lengths, then put back. On the
    CPU, as many batches are searched at once as torch has threads, each on one thread
    (``seq2seq_cli.device.decoding_threads`` says why). ``progress`` is told how many sentences
    each finished batch held (a progress bar's ``update``)."""
    if nbest > decoding.beam_size and sampling is None:
        raise ValueError(f"nbest ({nbest}) cannot exceed the beam size ({decoding.beam_size})")
    if constraints is not None and (sampling is not None or decoding.beam_size < 2 or decoding.no_repeat_ngram_size):
        raise ValueError("constraints need beam search (beam size 2 or more), without sampling or no_repeat_ngram_size")
    if keep_attention or decoding.no_repeat_ngram_size or sampling is not None or constraints is not None:
        graphs = None

    def batch(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The padded sources (on the device), their lengths and length limits."""
        src_ids, src_lengths = pad_sources([sources[i] for i in indices], ids.pad, ids.eos)
        limits = max_lengths(src_lengths - 1, decoding.max_length_ratio, decoding.max_length_offset)
        return src_ids.to(device), src_lengths, limits

    def search(chunk: list[int]) -> list[list[Hypothesis]]:
        # Sampling draws each of a sentence's samples in a row of its own.
        rows = [(i, k) for i in chunk for k in range(nbest)] if sampling is not None else [(i, 0) for i in chunk]
        src_ids, src_lengths, limits = batch([i for i, _ in rows])
        with autocast(device, precision):  # per thread: autocast is a thread's own state
            if sampling is not None:
                sampler = TokenSampler(sampling, [sampling.generator(first_index + i, k, device) for i, k in rows])
                drawn = greedy_search(model, src_ids, src_lengths, ids, limits, keep_attention,
                                      decoding.no_repeat_ngram_size, sampler)
                return [sorted(drawn[start: start + nbest], key=lambda h: -h.score)
                        for start in range(0, len(drawn), nbest)]
            if graphs is not None:
                if decoding.beam_size == 1:
                    return [[h] for h in graphs.greedy(src_ids, src_lengths, limits)]
                return graphs.beam(src_ids, src_lengths, limits, decoding.beam_size, decoding.length_penalty, nbest)
            if constraints is not None:  # the K best whatever nbest is: the same candidates for every list
                return constrained(chunk, beam_search(model, src_ids, src_lengths, ids, limits, decoding.beam_size,
                                                      decoding.length_penalty, decoding.beam_size, keep_attention))
            if decoding.beam_size == 1:
                return [[h] for h in greedy_search(model, src_ids, src_lengths, ids, limits, keep_attention,
                                                   decoding.no_repeat_ngram_size)]
            return beam_search(model, src_ids, src_lengths, ids, limits, decoding.beam_size,
                               decoding.length_penalty, nbest, keep_attention, decoding.no_repeat_ngram_size)

    def constrained(chunk: list[int], plain: list[list[Hypothesis]]) -> list[list[Hypothesis]]:
        """The ``nbest`` first of the plain translations ``plain`` of ``chunk`` (each sentence's
        K best), but for the sentences whose n-best entries do not all hold their phrases: the
        best of those searched under constraints and plain ones that hold them. A phrase changes
        no translation that has it already: a plain 1-best that holds them stays first, so an
        n-best list begins with the 1-best."""
        kept = [found[:nbest] for found in plain]

        def short(positions: list[int]) -> list[int]:
            return [p for p in positions if not all(_holds_all(h, constraints[chunk[p]]) for h in kept[p])]

        def searched(positions: list[int], width: int) -> list[list[Hypothesis]]:
            indices = [chunk[position] for position in positions]
            wanted = [constraints[i] for i in indices]
            src_ids, src_lengths, limits = batch(indices)
            room = torch.tensor([phrase_tokens(sentence) for sentence in wanted])
            return constrained_beam_search(model, src_ids, src_lengths, ids, limits + room, width, wanted,
                                           decoding.length_penalty, nbest, keep_attention)

        lacking = short(range(len(chunk)))
        if not lacking:
            return kept
        # Plain translations with the phrases put in (``placing``): the 1-best's so made is the
        # first; a list of enough of them is the n-best list, without a search under constraints.
        placed_first: dict[int, Hypothesis] = {}
        placed: dict[int, list[Hypothesis]] = {}
        if placing is not None:
            tried = [(position, h) for position in lacking for h in plain[position][:1 if nbest == 1 else None]]
            for (position, h), found in zip(tried, placing([chunk[p] for p, _ in tried], [h for _, h in tried])):
                if found is not None and _holds_all(found, constraints[chunk[position]]):
                    placed.setdefault(position, []).append(found)
                    if h is plain[position][0]:
                        placed_first[position] = found
            settled = set()
            for position, first in placed_first.items():
                made = _best_holding(placed[position], constraints[chunk[position]], nbest, ids.text, first)
                if len({_text_key(h, ids.text) for h in made}) == nbest:
                    kept[position] = made
                    settled.add(position)
            lacking = [position for position in lacking if position not in settled]
            if not lacking:
                return kept
        # Beams shared out over banks leave fewer to the words before a phrase, so a plain
        # translation that holds the phrases (a lower entry of the K) can score better than any
        # found under constraints: the better of both is kept.
        for position, found in zip(lacking, searched(lacking, widths[chunk[lacking[0]]])):
            sentence, best_plain = constraints[chunk[position]], plain[position][0]
            kept[position] = _best_holding(found + placed.get(position, []) + plain[position], sentence, nbest,
                                           ids.text, placed_first.get(
                                               position, best_plain if _holds_all(best_plain, sentence) else None))
        # Lists still short of translations that hold the phrases are searched with nbest beams a
        # bank (more than the two a bank that a list of two has had already), their first kept.
        if nbest > 2:
            wider = {}
            for position in short(lacking):
                wider.setdefault(constrained_beam_width(decoding.beam_size, constraints[chunk[position]], nbest),
                                 []).append(position)
            for width, positions in wider.items():
                for position, found in zip(positions, searched(positions, width)):
                    kept[position] = _best_holding(found + kept[position] + plain[position], constraints[chunk[position]],
                                                   nbest, ids.text, kept[position][0])
        return kept

    was_training = model.training
    model.eval()
    widths = [decoding.beam_size] * len(sources)
    if constraints is not None:
        widths = [constrained_beam_width(decoding.beam_size, sentence) for sentence in constraints]
    order = sorted((i for i, source in enumerate(sources) if source), key=lambda i: (widths[i], len(sources[i])),
                   reverse=True)
    batches = [batch for _, same_width in itertools.groupby(order, key=widths.__getitem__)
               for batch in cut_into_batches(list(same_width), decoding.batch_size)]
    results = [[Hypothesis([], 0.0, 0.0)] * nbest for _ in sources]
    if progress is not None:
        progress(len(sources) - len(order))  # the empty ones, done already
    try:
        fill_in_batches(results, batches, search, device, progress)
    finally:
        model.train(was_training)
    return results


def translate_corpus(model: Seq2Seq | Ensemble, tokenizers: Tokenizers, sources: Sequence[Sequence[int]],
                     decoding: DecodingConfig, device: torch.device, nbest: int = 1,
                     keep_attention: bool = False, precision: str = "auto",
                     graphs: Optional["SearchGraphs"] = None, sampling: Optional[Sampling] = None,
                     first_index: int = 0, progress: Optional[Callable[[int], object]] = None,
                     constraints: Optional[Sequence[Constraints]] = None,
                     placing: Optional[Callable[[list[int], list[Hypothesis]], list[Optional[Hypothesis]]]] = None
                     ) -> list[list[Hypothesis]]:
    """``translate_ids`` with the tokenizers' special ids."""
    return translate_ids(model, sources, SpecialIds.of(tokenizers), device, decoding, nbest, keep_attention, precision,
                         graphs, sampling, first_index, progress, constraints, placing)
