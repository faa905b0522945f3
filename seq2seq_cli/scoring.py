"""Forced decoding: the model's log-probability of translations it is given.

What ``s2s score`` and ``Translator.score`` compute, and what NMT users do with it: rank an
n-best list or another system's output, filter a noisy parallel corpus by how well its
pairs translate each other, or read a test set's perplexity.

The decoder reads the given target token by token, exactly as a search would have produced
it, through the same step (``decoding.step_log_probs``): the same distribution, [PAD] and
[CLS] excluded, and for an ensemble the same weighted mean of the members' probabilities.
So a translation the search found scores its own ``Hypothesis.log_prob``, and scores of
given and searched translations compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from seq2seq_cli.data import pad_sources, stream_lines
from seq2seq_cli.decoding import Ensemble, SpecialIds, step_log_probs
from seq2seq_cli.device import cut_into_batches, fill_in_batches
from seq2seq_cli.errors import UserError
from seq2seq_cli.model import Seq2Seq
from seq2seq_cli.precision import autocast


@torch.inference_mode()
def token_log_probs(model: Seq2Seq | Ensemble, src_ids: torch.Tensor, src_lengths: torch.Tensor,
                    tgt_in: torch.Tensor, tgt_out: torch.Tensor, ids: SpecialIds,
                    keep_attention: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """log P(tgt_out[:, t] | source, tgt_in[:, :t + 1]) for one padded batch: (B, T), 0 at
    padding; with ``keep_attention`` also the attention of each step (B, T, S), else None.

    src_ids (B, S) and src_lengths (B,) as ``pad_sources`` makes them; tgt_in ([CLS] y1 .. yn)
    and tgt_out (y1 .. yn [SEP]) (B, T), padded."""
    state = model.encode(src_ids, src_lengths)
    hidden = state.hidden
    columns, attention = [], []
    for tokens, targets in zip(tgt_in.unbind(1), tgt_out.unbind(1)):
        log_probs, hidden, weights = step_log_probs(model, tokens, hidden, state, ids)  # (B, V), _, (B, S)
        columns.append(log_probs.gather(1, targets.unsqueeze(1)))
        if keep_attention:
            attention.append(weights.float())
    scores = torch.cat(columns, dim=1)  # (B, T); [PAD] targets read -inf
    return scores.masked_fill(tgt_out == ids.pad, 0.0), torch.stack(attention, dim=1) if keep_attention else None


def score_ids(model: Seq2Seq | Ensemble, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
              ids: SpecialIds, device: torch.device, batch_size: int, precision: str = "auto",
              progress: Optional[Callable[[int], object]] = None) -> list[list[float]]:
    """The log-probability of each target's tokens, then of its final [SEP], given its source
    (token ids without special tokens), in input order.

    Pairs are sorted by length so that a batch holds similar lengths; on the CPU as many
    batches are scored at once as torch has threads, each on one thread, as in decoding. An
    empty source is scored as the model reads it, [SEP] alone (search would not translate it).
    ``progress`` is told how many pairs each finished batch held."""
    scored = _score(model, sources, targets, ids, device, batch_size, precision, progress, keep_attention=False)
    return [token_scores for token_scores, _ in scored]


def score_ids_with_attention(model: Seq2Seq | Ensemble, sources: Sequence[Sequence[int]],
                             targets: Sequence[Sequence[int]], ids: SpecialIds, device: torch.device,
                             batch_size: int, precision: str = "auto",
                             progress: Optional[Callable[[int], object]] = None
                             ) -> list[tuple[list[float], torch.Tensor]]:
    """``score_ids``, each pair's scores with the attention that read its target: (target tokens
    + 1, source tokens + 1), as a search keeps it (forced alignment)."""
    return _score(model, sources, targets, ids, device, batch_size, precision, progress, keep_attention=True)


def score_batch(model: Seq2Seq | Ensemble, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                ids: SpecialIds, device: torch.device, keep_attention: bool = False
                ) -> tuple[list[list[float]], Optional[torch.Tensor]]:
    """``score_ids`` of pairs scored as one batch on this thread, in its autocast, and the
    batch's attention (B, target tokens + 1, source tokens + 1) where kept."""
    src_ids, src_lengths = pad_sources(sources, ids.pad, ids.eos)
    tgt_out, _ = pad_sources(targets, ids.pad, ids.eos)  # y1 .. yn [SEP], padded
    # [CLS] y1 .. yn: a shorter row's [SEP] and padding are read only where no score is kept
    tgt_in = torch.cat([torch.full_like(tgt_out[:, :1], ids.bos), tgt_out[:, :-1]], dim=1)
    scores, attention = token_log_probs(model, src_ids.to(device), src_lengths, tgt_in.to(device),
                                        tgt_out.to(device), ids, keep_attention)
    return [row[: len(target) + 1] for target, row in zip(targets, scores.double().tolist())], attention


def _score(model: Seq2Seq | Ensemble, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
           ids: SpecialIds, device: torch.device, batch_size: int, precision: str,
           progress: Optional[Callable[[int], object]], keep_attention: bool
           ) -> list[tuple[list[float], Optional[torch.Tensor]]]:
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources but {len(targets)} targets")

    def score(chunk: list[int]) -> list[tuple[list[float], Optional[torch.Tensor]]]:
        with autocast(device, precision):  # per thread: autocast is a thread's own state
            rows, attention = score_batch(model, [sources[i] for i in chunk], [targets[i] for i in chunk], ids,
                                          device, keep_attention)
        if not keep_attention:
            return [(row, None) for row in rows]
        return [(row, weights[: len(targets[i]) + 1, : len(sources[i]) + 1].cpu())
                for i, row, weights in zip(chunk, rows, attention)]

    was_training = model.training
    model.eval()
    order = sorted(range(len(sources)), key=lambda i: (len(targets[i]), len(sources[i])), reverse=True)
    results: list = [None for _ in sources]
    try:
        fill_in_batches(results, cut_into_batches(order, batch_size), score, device, progress)
    finally:
        model.train(was_training)
    return results


NBEST_SEPARATOR = " ||| "


def nbest_pairs(src: str | Path, nbest: str | Path) -> Iterator[tuple[str, str, str]]:
    """(source, hypothesis, the n-best line as read) for each line of an n-best list in
    ``s2s translate --nbest``'s format, ``INDEX ||| HYPOTHESIS ||| SCORE`` (more fields may
    follow, as rescoring adds them; INDEX counts ``src``'s lines from 0). Both files are
    streamed: the entries must come in source order, as translate writes them. A line that
    breaks the format is a one-line error naming it."""
    sources = stream_lines(src)
    source, source_index = None, -1  # the source line the entries have reached
    for number, line in enumerate(stream_lines(nbest), start=1):
        where = f"{nbest}, line {number}"
        fields = line.split(NBEST_SEPARATOR)
        if len(fields) < 2 or not fields[0].strip().isdecimal():  # what int() reads
            raise UserError(f"{where}: not an n-best line (INDEX ||| HYPOTHESIS ||| SCORE, as s2s translate --nbest "
                            "writes them); give an n-best list, or the translations one per line with --tgt")
        index = int(fields[0])
        if index < source_index:
            raise UserError(f"{where}: index {index} after {source_index}; the entries must be in source order, "
                            "as s2s translate --nbest writes them (sort them by index)")
        while source_index < index:
            source = next(sources, None)
            if source is None:
                raise UserError(f"{where}: index {index}, but {src} has only {source_index + 1} lines "
                                "(indices count its lines from 0); give the source file the list translates")
            source_index += 1
        yield source, fields[1], line
