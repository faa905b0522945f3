"""Scores from sacreBLEU, on detokenized text against raw references.

BLEU splits text into words as sacreBLEU's command line does for ``-l SRC-TGT``: its 13a
tokenizer, but ``zh`` for a Chinese target, ``ja-mecab`` for Japanese and ``ko-mecab`` for
Korean (13a sees a sentence without spaces as one or two words); ``tokenize`` chooses another
of sacreBLEU's tokenizers. ``paired_report`` compares systems with sacreBLEU's paired
significance tests.
"""

from __future__ import annotations

import copy
import logging
import unicodedata
from typing import Any, Optional, Sequence

from sacrebleu.metrics import BLEU, CHRF, TER

from seq2seq_cli.config import Config, language_pair
from seq2seq_cli.constraints import held_in, split_line
from seq2seq_cli.errors import UserError
from seq2seq_cli.glossary import Glossary


def bleu_tokenizer(tgt_lang: Optional[str] = None, tokenize: Optional[str] = None) -> str:
    """The name of the tokenizer BLEU splits ``tgt_lang`` text with: ``tokenize``, else the one
    sacreBLEU picks for that language (``-l``)."""
    return tokenize or BLEU._TOKENIZER_MAP.get(tgt_lang or "", BLEU.TOKENIZER_DEFAULT)


def bleu_metric(tgt_lang: Optional[str] = None, tokenize: Optional[str] = None) -> BLEU:
    """sacreBLEU's BLEU for text in ``tgt_lang`` (an ISO 639-1 code, or None: unknown)."""
    try:
        return BLEU(trg_lang=tgt_lang or "", tokenize=bleu_tokenizer(tgt_lang, tokenize))
    except KeyError:
        raise UserError(f"BLEU tokenizer {tokenize!r} is not one of sacreBLEU's: use one of "
                        f"{', '.join(BLEU.TOKENIZERS)}") from None
    except (RuntimeError, ImportError, OSError) as err:  # ja-mecab and ko-mecab need packages of their own
        which = repr(tokenize) if tokenize else f"for target language {tgt_lang}"
        reason = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise UserError(f"sacreBLEU's BLEU tokenizer {which} cannot be set up: {reason}") from None


def run_bleu_tokenizer(config: Config) -> str:
    """The tokenizer a run's BLEU uses: its ``training.bleu_tokenize``, else by its target language."""
    return bleu_tokenizer(language_pair(config.data)[1], config.training.bleu_tokenize)


def run_bleu_metric(config: Config, tokenize: Optional[str] = None) -> BLEU:
    """The BLEU a run is scored with: with ``tokenize``, else ``run_bleu_tokenizer``'s."""
    return bleu_metric(language_pair(config.data)[1], tokenize or config.training.bleu_tokenize)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], metric: Optional[BLEU] = None) -> float:
    """Cased, detokenized corpus BLEU (``metric``: from ``bleu_metric``; default 13a)."""
    return (metric or BLEU()).corpus_score(list(hypotheses), [list(references)]).score


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacreBLEU's corpus chrF2 (character 6-grams, recall weighted twice), as ``s2s evaluate`` reports it."""
    return CHRF().corpus_score(list(hypotheses), [list(references)]).score


def score_report(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                 bleu: Optional[BLEU] = None) -> dict[str, Any]:
    """BLEU (``bleu``: from ``bleu_metric``; default 13a), chrF2 and TER with their signatures,
    the length ratio and the sentence count, against one or more sets of ``references`` (each
    line-aligned with ``hypotheses``, as ``sacrebleu REF1 REF2 ...`` takes them)."""
    if references and isinstance(references[0], str):
        raise TypeError("references is a list of strings: give one list per reference set, e.g. [references]")
    report: dict[str, Any] = {"sentences": len(hypotheses), "references": len(references)}
    for key, metric in (("bleu", bleu or BLEU()), ("chrf", CHRF()), ("ter", TER())):
        score = metric.corpus_score(list(hypotheses), [list(reference) for reference in references])
        report[key] = {"name": score.name, "score": round(score.score, 2), "signature": str(metric.get_signature())}
        if key == "bleu":
            report[key]["verbose"] = score.format(width=2)
            report["length_ratio"] = round(score.sys_len / score.ref_len, 4) if score.ref_len else 0.0
            report["hyp_length"], report["ref_length"] = score.sys_len, score.ref_len
    return report


def sentence_table(systems: Sequence[tuple[str, Sequence[str]]], references: Sequence[Sequence[str]],
                   bleu: Optional[BLEU] = None) -> str:
    """Each sentence's BLEU and chrF2 for each of ``systems`` (name, hypotheses), as
    ``sacrebleu REF -i HYP -m bleu -sl`` (and ``-m chrf -sl``) give them: tab-separated, a header
    line, then ``line`` (from 1) and a BLEU and a chrF column per system, headed ``bleu`` and
    ``chrf``, or ``bleu:NAME`` and ``chrf:NAME`` where a system has a name. Sentence BLEU uses
    ``bleu``'s tokenizer with effective n-gram order, as sacreBLEU does for single sentences."""
    sentence_bleu = copy.copy(bleu or BLEU())
    sentence_bleu.effective_order = True  # a short sentence without a 4-gram match still scores
    chrf = CHRF()
    header, columns = ["line"], []
    for name, hypotheses in systems:
        header += [f"bleu:{name}" if name else "bleu", f"chrf:{name}" if name else "chrf"]
        for metric in (sentence_bleu, chrf):
            columns.append([metric.sentence_score(hypothesis, [reference[index] for reference in references]).score
                            for index, hypothesis in enumerate(hypotheses)])
    rows = ["\t".join(header)]
    rows += ["\t".join([str(index + 1)] + [f"{column[index]:.4f}" for column in columns])
             for index in range(len(systems[0][1]))]
    return "\n".join(rows) + "\n"


def composition_warnings(texts: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """A warning for each of ``texts`` (name, lines: references, translations) that writes
    accents as combining marks (not Unicode NFC) where another writes them composed: sacreBLEU
    compares characters as written, so "Mädchen" so written does not match "Mädchen" composed,
    and the score falls for no fault of the translation. s2s writes translations composed."""
    uncomposed = {name: sum(not unicodedata.is_normalized("NFC", line) for line in lines) for name, lines in texts}
    composed = [name for name, count in uncomposed.items() if not count]
    if not composed:  # written alike, they match
        return []
    fix = ("python -c \"import sys, unicodedata; sys.stdout.write(unicodedata.normalize('NFC', sys.stdin.read()))\" "
           "< IN > OUT")
    return [f"{name}: {count} line{'s' if count > 1 else ''} write accents as combining marks (not Unicode NFC) "
            f"where {' and '.join(composed)} {'has' if len(composed) == 1 else 'have'} them composed; sacreBLEU "
            f"compares characters as written, so those words count as wrong: compose the file first, e.g. {fix}"
            for name, count in uncomposed.items() if count]


def wanted_phrases(sources: Sequence[str], constraints: bool, glossary: Optional[Glossary]) -> list[list[str]]:
    """What each source line's translation must hold, as the translator reads it: with
    ``constraints`` the line's own phrases (``SOURCE<TAB>PHRASE...``), then the target terms of
    the ``glossary``'s source terms the line holds."""
    fields = [split_line(line) if constraints else (line, []) for line in sources]
    return [glossary.added_to(wanted, text) if glossary else wanted for text, wanted in fields]


def phrase_report(translations: Sequence[str], phrases: Sequence[Sequence[str]]) -> dict[str, int]:
    """How many of each line's ``phrases`` (``--constraints``) its translation holds, as written
    and as whole words (``constraints.held_in``): the exact-match count of WMT's terminology
    task, case and accents counting as BLEU counts them, but for a phrase in lower case that
    begins a sentence capitalized, as the search writes it there."""
    return {"lines": sum(1 for wanted in phrases if wanted), "phrases": sum(map(len, phrases)),
            "held": sum(held_in(text, phrase) for text, wanted in zip(translations, phrases) for phrase in wanted)}


def format_phrases(counts: dict[str, int]) -> str:
    held = f" ({100 * counts['held'] / counts['phrases']:.1f}%)" if counts["phrases"] else ""
    return f"{counts['held']} of {counts['phrases']} phrases held{held}, in {counts['lines']} lines"


def format_report(report: dict[str, Any]) -> str:
    """The report as a small table for people."""
    lines = [f"{report[key]['name']:<6} {report[key]['score']:7.2f}   {report[key]['signature']}"
             for key in ("bleu", "chrf", "ter")]
    several = f", {report['references']} references each" if report.get("references", 1) > 1 else ""
    lines.append(f"length ratio {report['length_ratio']:.3f} (hyp {report['hyp_length']} / ref "
                 f"{report['ref_length']} tokens), {report['sentences']} sentences{several}")
    if "phrases" in report:
        lines.append(f"constraints: {format_phrases(report['phrases'])}")
    speed = report.get("decoding")
    if speed:
        lines.append(f"decoding: beam {speed['beam_size']}, {speed['seconds']:.1f} s, "
                     f"{speed['sentences_per_s']:.1f} sentences/s, {speed['tokens_per_s']:.0f} tokens/s")
    return "\n".join(lines)


# sacreBLEU's paired significance tests (``--paired-bs``, ``--paired-ar``) and their default sizes.
PAIRED_TESTS = {"bs": ("paired bootstrap resampling", "resamples", 1000),
                "ar": ("approximate randomization", "trials", 10000)}


def paired_report(systems: Sequence[tuple[str, Sequence[str]]], references: Sequence[Sequence[str]],
                  bleu: Optional[BLEU] = None, test: str = "bs", samples: int = 0) -> dict[str, Any]:
    """Each of ``systems`` (name, hypotheses) after the first compared with the first, the
    baseline, by sacreBLEU's paired ``test`` (``bs`` or ``ar``) with ``samples`` resamples or
    trials (0: sacreBLEU's default), as ``sacrebleu REF -i BASE SYS ... -m bleu chrf ter
    --paired-bs`` runs it: the same numbers, from sacreBLEU's own code (seeded as there, by
    ``SACREBLEU_SEED``, default 12345). Per system and metric: the score, and for a test system
    its p-value; with ``bs`` also the bootstrap mean and 95% confidence interval of every system.

    One exception: a system whose every line is the baseline's gets p = 1. sacreBLEU (after
    multeval) counts only resampled differences strictly above the observed one, so a zero
    difference gets its smallest p-value and a copy of the baseline would be reported as
    significantly different from it."""
    from sacrebleu.significance import PairedTest

    if references and isinstance(references[0], str):
        raise TypeError("references is a list of strings: give one list per reference set, e.g. [references]")
    metrics = {"bleu": bleu or BLEU(), "chrf": CHRF(), "ter": TER()}
    sacrebleu_log = logging.getLogger("sacrebleu")
    level = sacrebleu_log.level
    sacrebleu_log.setLevel(logging.WARNING)  # its progress lines, one per metric and system
    try:
        paired = PairedTest([(name, list(hypotheses)) for name, hypotheses in systems], metrics,
                            [list(reference) for reference in references], test_type=test, n_samples=samples)
        signatures, results = paired()
    finally:
        sacrebleu_log.setLevel(level)
    names = [name for name in results if name != "System"]  # the metrics' names, in metrics' order

    def number(value: Any) -> Optional[float]:
        return None if value is None else float(value)  # numpy's float32 is no JSON number

    report: dict[str, Any] = {"test": test, "samples": paired.n_samples, "sentences": len(systems[0][1]),
                              "references": len(references), "systems": []}
    baseline = list(systems[0][1])
    for index, (name, hypotheses) in enumerate(systems):
        row: dict[str, Any] = {"name": name, "baseline": index == 0,
                               "same_as_baseline": index > 0 and list(hypotheses) == baseline}
        for key, metric_name in zip(metrics, names):
            result = results[metric_name][index]
            row[key] = {"score": float(result.score), "mean": number(result.mean), "ci": number(result.ci),
                        "p_value": 1.0 if row["same_as_baseline"] else number(result.p_value)}
        report["systems"].append(row)
    for key, metric_name in zip(metrics, names):
        report[key] = {"name": metric_name, "signature": str(signatures[metric_name])}
    return report


def format_paired_report(report: dict[str, Any], threshold: float = 0.05) -> str:
    """``paired_report``'s result as a table for people: score (bootstrap mean +- 95% CI) and
    p-value, a star where p is below ``threshold``."""
    test, unit, _ = PAIRED_TESTS[report["test"]]
    keys = ("bleu", "chrf", "ter")

    def cell(numbers: dict[str, Any]) -> str:
        text = f"{numbers['score']:.2f}"
        if numbers["mean"] is not None:
            text += f" ({numbers['mean']:.2f} ± {numbers['ci']:.2f})"
        if numbers["p_value"] is not None:
            text += f" p={numbers['p_value']:.4f}{'*' if numbers['p_value'] < threshold else ' '}"
        return text

    header = ["system"] + [report[key]["name"] + (" (mean ± 95% CI)" if report["test"] == "bs" else "") for key in keys]
    rows = [[("baseline: " if row["baseline"] else "") + row["name"] + (" (the baseline's lines)"
                                                                        if row["same_as_baseline"] else "")]
            + [cell(row[key]) for key in keys] for row in report["systems"]]
    widths = [max(len(line[column]) for line in [header] + rows) for column in range(len(header))]
    lines = [f"{test}, {report['samples']} {unit}; each system against the baseline, "
             f"{report['sentences']} sentences"]
    lines += ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in [header] + rows]
    lines.append(f"* p < {threshold}: a difference this large is unlikely to be chance")
    lines += [f"constraints, {row['name']}: {format_phrases(row['phrases'])}" for row in report["systems"]
              if "phrases" in row]
    lines += [f"{report[key]['name']:<6} {report[key]['signature']}" for key in keys]
    return "\n".join(lines)
