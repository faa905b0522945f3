"""Batched decoding: greedy search, beam search, and the loop that translates many sentences.

Both searches run a whole batch of sentences (and, for beam search, all their beams) through
each decoder step together. Every hypothesis stops at [SEP] or at
``max_length_ratio * source length + max_length_offset`` tokens; a batch stops when every
sentence is done. [PAD] and [CLS] are never generated.

Scores are sums of token log-probabilities, the final [SEP] included. Beam search ranks
finished hypotheses by that sum divided by the GNMT length penalty
``((5 + length) / 6) ** alpha`` (``alpha = 0`` ranks by the plain sum).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from seq2seq_cli.config import DecodingConfig
from seq2seq_cli.data import pad_sources
from seq2seq_cli.device import autocast
from seq2seq_cli.model import Seq2Seq
from seq2seq_cli.tokenization import Vocabularies


@dataclass
class Hypothesis:
    tokens: list[int]  # without [CLS]/[SEP]
    score: float  # the ranking score: log_prob / length penalty
    log_prob: float  # sum of token log-probabilities, [SEP] included
    attention: Optional[torch.Tensor] = None  # (len(tokens) + 1, source length incl. [SEP])


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    bos: int
    eos: int

    @classmethod
    def of(cls, vocabs: Vocabularies) -> "SpecialIds":
        return cls(vocabs.pad_id, vocabs.bos_id, vocabs.eos_id)


def length_penalty(length: torch.Tensor | int, alpha: float):
    """GNMT's ((5 + |Y|) / 6) ** alpha, with |Y| counting [SEP]."""
    return ((5.0 + length) / 6.0) ** alpha


def max_lengths(src_lengths: torch.Tensor, ratio: float, offset: int) -> torch.Tensor:
    """The length limit of each hypothesis, from its source length (tokens, [SEP] excluded)."""
    return (src_lengths.double() * ratio).floor().long() + offset


def next_token_log_probs(model: Seq2Seq, features: torch.Tensor, ids: SpecialIds,
                         at_limit: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (N, V) of the next token; rows at their length limit may only end."""
    logits = model.decoder.logits(features).float()
    logits[:, ids.pad] = float("-inf")
    logits[:, ids.bos] = float("-inf")
    log_probs = torch.log_softmax(logits, dim=-1)
    only_eos = torch.full_like(log_probs[0], float("-inf"))
    only_eos[ids.eos] = 0.0
    # Keep the true log P([SEP]) at the limit, so a score is always the model's own.
    return torch.where(at_limit.unsqueeze(1), log_probs + only_eos, log_probs)


@torch.inference_mode()
def greedy_search(model: Seq2Seq, src_ids: torch.Tensor, src_lengths: torch.Tensor, ids: SpecialIds,
                  limits: torch.Tensor, keep_attention: bool = False) -> list[Hypothesis]:
    """Pick the most probable token at each step, for a whole batch at once."""
    device = src_ids.device
    batch_size = src_ids.size(0)
    state = model.encode(src_ids, src_lengths)
    hidden = state.hidden
    tokens = torch.full((batch_size,), ids.bos, dtype=torch.long, device=device)
    limits = limits.to(device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    log_prob = torch.zeros(batch_size, device=device)
    steps, attentions = [], []
    for t in range(int(limits.max()) + 1):
        features, hidden, weights = model.decoder.step(model.decoder.embed(tokens), hidden, state)
        log_probs = next_token_log_probs(model, features, ids, limits <= t)  # (B, V)
        best, tokens = log_probs.max(dim=-1)
        log_prob += best.masked_fill(finished, 0.0)
        steps.append(tokens.masked_fill(finished, ids.eos))
        if keep_attention:
            attentions.append(weights.float())
        finished |= tokens == ids.eos
        if bool(finished.all()):
            break
    output = torch.stack(steps, dim=1).tolist()  # (B, steps)
    stacked_attention = torch.stack(attentions, dim=1).cpu() if keep_attention else None  # (B, steps, S)
    hypotheses = []
    for row, sequence in enumerate(output):
        length = sequence.index(ids.eos)
        attention = None
        if stacked_attention is not None:
            attention = stacked_attention[row, : length + 1, : int(src_lengths[row])]
        score = float(log_prob[row])
        hypotheses.append(Hypothesis(sequence[:length], score, score, attention))
    return hypotheses


@torch.inference_mode()
def beam_search(model: Seq2Seq, src_ids: torch.Tensor, src_lengths: torch.Tensor, ids: SpecialIds,
                limits: torch.Tensor, beam_size: int, alpha: float = 1.0, nbest: int = 1,
                keep_attention: bool = False) -> list[list[Hypothesis]]:
    """The ``nbest`` best hypotheses of each sentence, best first, with all beams in one batch.

    At each step the 2K best extensions of the K live beams are ranked. Those ending in [SEP]
    among the first K are finished; the K best others live on. A sentence is done when it has
    K finished hypotheses, or when no live beam can still beat its n-th best finished one
    (log-probabilities only fall and the length penalty is largest at the length limit).
    """
    device = src_ids.device
    batch_size, k = src_ids.size(0), beam_size
    limits = limits.to(device)
    state = model.encode(src_ids, src_lengths)
    # Every beam of a sentence reads the same encoder state, so it is expanded once, never reordered.
    beam_state = state.select(torch.arange(batch_size, device=device).repeat_interleave(k))  # (B*K, ...)
    hidden = beam_state.hidden  # (B*K, H)
    beam_limits = limits.repeat_interleave(k)  # (B*K,)
    tokens = torch.full((batch_size * k,), ids.bos, dtype=torch.long, device=device)
    scores = torch.full((batch_size, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam to start with
    rank = torch.arange(2 * k, device=device)
    row_offset = (torch.arange(batch_size, device=device) * k).unsqueeze(1)  # (B, 1)
    best_bound = length_penalty(limits.double() + 1, alpha).float()  # the largest penalty a hypothesis can get
    parents, chosen, attentions = [], [], []
    finished: list[list[tuple[float, float, int, int]]] = [[] for _ in range(batch_size)]
    done = [False] * batch_size
    for t in range(int(limits.max()) + 1):
        features, hidden, weights = model.decoder.step(model.decoder.embed(tokens), hidden, beam_state)
        log_probs = next_token_log_probs(model, features, ids, beam_limits <= t)  # (B*K, V)
        vocab = log_probs.size(1)
        candidates = (scores.view(-1, 1) + log_probs).view(batch_size, k * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=1)  # (B, 2K)
        top_beam, top_token = top_index // vocab, top_index % vocab
        is_eos = top_token == ids.eos
        if keep_attention:
            attentions.append(weights.view(batch_size, k, -1).float().cpu())

        ending = is_eos & (rank[: top_scores.size(1)] < k) & torch.isfinite(top_scores)
        if bool(ending.any()):
            penalties = length_penalty(t + 1, alpha)
            for row, col in ending.nonzero().tolist():
                if not done[row]:
                    raw = float(top_scores[row, col])
                    finished[row].append((raw / penalties, raw, t, int(top_beam[row, col])))

        live_scores, position = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)  # (B, K)
        parent = top_beam.gather(1, position)
        next_tokens = top_token.gather(1, position)
        parents.append(parent.cpu())
        chosen.append(next_tokens.cpu())
        scores = live_scores
        hidden = hidden.index_select(0, (parent + row_offset).view(-1))
        tokens = next_tokens.view(-1)

        best_live = (scores[:, 0] / best_bound).tolist()  # no live beam can end better than this
        for row in range(batch_size):
            if done[row]:
                continue
            ranked = sorted(finished[row], reverse=True)
            done[row] = (len(ranked) >= k or best_live[row] == float("-inf")
                         or (len(ranked) >= nbest and ranked[nbest - 1][0] >= best_live[row]))
        if all(done):
            break

    results = []
    for row in range(batch_size):
        hypotheses = []
        for score, raw, step, beam in sorted(finished[row], reverse=True)[:nbest]:
            sequence, rows, current = [], [], beam
            if keep_attention:
                rows.append(attentions[step][row, current])
            for s in range(step - 1, -1, -1):
                sequence.append(int(chosen[s][row, current]))
                current = int(parents[s][row, current])
                if keep_attention:
                    rows.append(attentions[s][row, current])
            attention = None
            if keep_attention:
                attention = torch.stack(rows[::-1])[:, : int(src_lengths[row])]
            hypotheses.append(Hypothesis(sequence[::-1], score, raw, attention))
        results.append(hypotheses)
    return results


def translate_ids(model: Seq2Seq, sources: Sequence[Sequence[int]], ids: SpecialIds, device: torch.device,
                  batch_size: int = 64, beam_size: int = 1, length_penalty_alpha: float = 1.0, nbest: int = 1,
                  max_length_ratio: float = 1.5, max_length_offset: int = 10,
                  keep_attention: bool = False) -> list[list[Hypothesis]]:
    """Translate token-id sources (no special tokens): ``nbest`` hypotheses each, in input order.

    Sentences are sorted by length so that a batch holds similar lengths, then put back."""
    if nbest > beam_size:
        raise ValueError(f"nbest ({nbest}) cannot exceed the beam size ({beam_size})")
    was_training = model.training
    model.eval()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]), reverse=True)
    results: list[list[Hypothesis]] = [[] for _ in sources]
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            src_ids, src_lengths = pad_sources([sources[i] for i in chunk], ids.pad, ids.eos)
            limits = max_lengths(src_lengths - 1, max_length_ratio, max_length_offset)
            src_ids = src_ids.to(device)
            if beam_size == 1:
                found = [[h] for h in greedy_search(model, src_ids, src_lengths, ids, limits, keep_attention)]
            else:
                found = beam_search(model, src_ids, src_lengths, ids, limits, beam_size, length_penalty_alpha,
                                    nbest, keep_attention)
            for index, hypotheses in zip(chunk, found):
                results[index] = hypotheses
    finally:
        model.train(was_training)
    return results


def translate_corpus(model: Seq2Seq, vocabs: Vocabularies, sources: Sequence[Sequence[int]],
                     decoding: DecodingConfig, device: torch.device, nbest: int = 1,
                     keep_attention: bool = False) -> list[list[Hypothesis]]:
    """``translate_ids`` with the settings of a config's ``decoding`` section, in the device's precision."""
    with autocast(device):
        return translate_ids(model, sources, SpecialIds.of(vocabs), device, decoding.batch_size, decoding.beam_size,
                             decoding.length_penalty, nbest, decoding.max_length_ratio,
                             decoding.max_length_offset, keep_attention)
