"""Batched decoding: greedy search, and the loop that translates a list of sentences.

Sentences are sorted by length and decoded in batches (little padding), then put back in
input order. Every hypothesis stops at [SEP] or at ``max_length_ratio * source length +
max_length_offset`` tokens, whichever comes first; the batch stops when all have stopped.
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
    score: float  # sum of token log-probabilities, [SEP] included when it was produced
    attention: Optional[torch.Tensor] = None  # (len(tokens) + 1, source length incl. [SEP])


def max_lengths(src_lengths: torch.Tensor, ratio: float, offset: int) -> torch.Tensor:
    """The length limit of each hypothesis, from its source length (tokens, [SEP] excluded)."""
    return (src_lengths.double() * ratio).floor().long() + offset


@torch.inference_mode()
def greedy_search(model: Seq2Seq, src_ids: torch.Tensor, src_lengths: torch.Tensor, bos_id: int,
                  eos_id: int, limits: torch.Tensor, keep_attention: bool = False) -> list[Hypothesis]:
    """Pick the most probable token at each step, for a whole batch at once."""
    device = src_ids.device
    batch_size = src_ids.size(0)
    state = model.encode(src_ids, src_lengths)
    hidden = state.hidden
    tokens = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)
    limits = limits.to(device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    scores = torch.zeros(batch_size, device=device)
    steps, attentions = [], []
    for t in range(int(limits.max()) + 1):
        features, hidden, weights = model.decoder.step(model.decoder.embed(tokens), hidden, state)
        log_probs = torch.log_softmax(model.decoder.logits(features).float(), dim=-1)  # (B, V)
        # At its length limit a hypothesis may only end.
        at_limit = limits <= t
        log_probs[at_limit] = torch.where(torch.arange(log_probs.size(1), device=device) == eos_id,
                                          0.0, float("-inf"))
        best_log_prob, tokens = log_probs.max(dim=-1)
        scores += best_log_prob.masked_fill(finished, 0.0)
        steps.append(tokens.masked_fill(finished, eos_id))
        if keep_attention:
            attentions.append(weights.float())
        finished |= tokens == eos_id
        if bool(finished.all()):
            break
    output = torch.stack(steps, dim=1).tolist()  # (B, steps)
    stacked_attention = torch.stack(attentions, dim=1).cpu() if keep_attention else None  # (B, steps, S)
    hypotheses = []
    for row, sequence in enumerate(output):
        length = sequence.index(eos_id)
        attention = None
        if stacked_attention is not None:
            attention = stacked_attention[row, : length + 1, : int(src_lengths[row])]
        hypotheses.append(Hypothesis(sequence[:length], float(scores[row]), attention))
    return hypotheses


def translate_ids(model: Seq2Seq, sources: Sequence[Sequence[int]], pad_id: int, bos_id: int, eos_id: int,
                  device: torch.device, batch_size: int = 64, max_length_ratio: float = 1.5,
                  max_length_offset: int = 10, keep_attention: bool = False) -> list[Hypothesis]:
    """Translate token-id sources (no special tokens); results come back in input order."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]), reverse=True)
    results: list[Optional[Hypothesis]] = [None] * len(sources)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            src_ids, src_lengths = pad_sources([sources[i] for i in chunk], pad_id, eos_id)
            limits = max_lengths(src_lengths - 1, max_length_ratio, max_length_offset)
            hypotheses = greedy_search(model, src_ids.to(device), src_lengths, bos_id, eos_id, limits,
                                       keep_attention)
            for index, hypothesis in zip(chunk, hypotheses):
                results[index] = hypothesis
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def translate_corpus(model: Seq2Seq, vocabs: Vocabularies, sources: Sequence[Sequence[int]],
                     decoding: DecodingConfig, device: torch.device, batch_size: Optional[int] = None,
                     keep_attention: bool = False) -> list[Hypothesis]:
    """``translate_ids`` with the settings of a config's ``decoding`` section, in the device's precision."""
    with autocast(device):
        return translate_ids(model, sources, vocabs.pad_id, vocabs.bos_id, vocabs.eos_id, device,
                             batch_size or decoding.batch_size, decoding.max_length_ratio,
                             decoding.max_length_offset, keep_attention)
