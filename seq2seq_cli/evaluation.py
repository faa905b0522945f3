"""Scores from sacreBLEU, on detokenized text against raw references."""

from __future__ import annotations

from typing import Any, Sequence

from sacrebleu.metrics import BLEU, CHRF, TER


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Cased, detokenized corpus BLEU with sacreBLEU's default 13a tokenization."""
    return BLEU().corpus_score(list(hypotheses), [list(references)]).score


def score_report(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """BLEU, chrF2 and TER with their signatures, the length ratio and the sentence count."""
    report: dict[str, Any] = {"sentences": len(hypotheses)}
    for key, metric in (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER())):
        score = metric.corpus_score(list(hypotheses), [list(references)])
        report[key] = {"name": score.name, "score": round(score.score, 2), "signature": str(metric.get_signature())}
        if key == "bleu":
            report[key]["verbose"] = score.format(width=2)
            report["length_ratio"] = round(score.sys_len / score.ref_len, 4) if score.ref_len else 0.0
            report["hyp_length"], report["ref_length"] = score.sys_len, score.ref_len
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a small table for people."""
    lines = [f"{report[key]['name']:<6} {report[key]['score']:7.2f}   {report[key]['signature']}"
             for key in ("bleu", "chrf", "ter")]
    lines.append(f"length ratio {report['length_ratio']:.3f} (hyp {report['hyp_length']} / ref "
                 f"{report['ref_length']} tokens), {report['sentences']} sentences")
    speed = report.get("decoding")
    if speed:
        lines.append(f"decoding: beam {speed['beam_size']}, {speed['seconds']:.1f} s, "
                     f"{speed['sentences_per_s']:.1f} sentences/s, {speed['tokens_per_s']:.0f} tokens/s")
    return "\n".join(lines)
