"""Scores from sacreBLEU, on detokenized text against raw references."""

from __future__ import annotations

from typing import Sequence

from sacrebleu.metrics import BLEU


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Cased, detokenized corpus BLEU with sacreBLEU's default 13a tokenization."""
    return BLEU().corpus_score(list(hypotheses), [list(references)]).score


def score_report(hypotheses: Sequence[str], references: Sequence[str]) -> str:
    """BLEU, chrF2 and TER with their sacreBLEU signatures, as a small table."""
    from sacrebleu.metrics import CHRF, TER

    lines = []
    for metric in (BLEU(), CHRF(), TER()):
        score = metric.corpus_score(list(hypotheses), [list(references)])
        lines.append(f"{score.name:<6} {score.score:7.2f}   {metric.get_signature()}")
    return "\n".join(lines)
