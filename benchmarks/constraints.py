"""Lexically constrained decoding (``s2s translate --constraints``): are the phrases put in, what
does it do to BLEU, and what does it cost?

    python benchmarks/constraints.py --checkpoint RUN --src test.de --ref test.en [--beam-size 5] [--json out.json]

The usual check of constrained decoding (Post & Vilar 2018): constraints taken from the
reference, words the plain translation lacks. For each line, its reference's words of four
letters or more (punctuation off) that the plain beam translation does not hold and the target
vocabulary spells; "1 word" constrains the longest of them, "2 words" the two longest. Reported
for plain beam search and for each: the lines constrained, how many of their translations hold
every phrase as written and as whole words (``constraints.held_in``, as ``s2s evaluate
--constraints`` counts them), BLEU and chrF of the whole set (sacreBLEU, 13a), and seconds.
"""

from __future__ import annotations

import argparse
import json
import string
import time
from pathlib import Path

import sacrebleu

from seq2seq_cli.constraints import held_in
from seq2seq_cli.data import read_lines
from seq2seq_cli.translation import Translator


def words(text: str) -> list[str]:
    return [word.strip(string.punctuation + "„“”‚‘’") for word in text.split()]


def missing_words(translation: str, reference: str, tokenizers) -> list[str]:
    """The reference's words of 4 letters or more that the translation lacks and the target
    vocabulary spells, longest first."""
    have = set(words(translation))
    unknown = tokenizers.tgt_unk_id
    found = [w for w in dict.fromkeys(words(reference)) if len(w) >= 4 and w.isalpha() and w not in have
             and unknown not in tokenizers.encode_tgt([w])[0]]
    return sorted(found, key=len, reverse=True)


def plain_beam_search(description: str
                      ) -> tuple[argparse.Namespace, list[str], list[str], Translator, list[str], float]:
    """A script's command line (``--checkpoint``, ``--src``, ``--ref``, ``--beam-size``,
    ``--json``), its test set, the translator, the test set's plain beam search translations
    and their seconds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--ref", type=Path, required=True)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sources, references = read_lines(args.src), read_lines(args.ref)
    translator = Translator.load(args.checkpoint, device="cpu", beam_size=args.beam_size)
    started = time.perf_counter()
    plain = translator.translate(sources)
    return args, sources, references, translator, plain, time.perf_counter() - started


def main() -> None:
    args, sources, references, translator, plain, seconds = plain_beam_search(__doc__.splitlines()[0])
    rows = [{"variant": f"plain beam {args.beam_size}", "lines": 0, "held": 0, "seconds": seconds,
             **scores(plain, references)}]
    missing = [missing_words(t, r, translator.tokenizers) for t, r in zip(plain, references)]
    constrained = translator.with_settings(constraints=True)
    for count in (1, 2):
        phrases = [found[:count] if len(found) >= count else [] for found in missing]
        lines = [source + "".join("\t" + phrase for phrase in wanted) for source, wanted in zip(sources, phrases)]
        started = time.perf_counter()
        translations = constrained.translate(lines)
        seconds = time.perf_counter() - started
        held = sum(bool(wanted) and all(held_in(text, phrase) for phrase in wanted)
                   for text, wanted in zip(translations, phrases))
        rows.append({"variant": f"{count} reference word{'s' if count > 1 else ''}",
                     "lines": sum(map(bool, phrases)), "held": held, "seconds": seconds,
                     **scores(translations, references)})
    print(f"{args.checkpoint}: {len(sources)} lines of {args.src.name}, beam {args.beam_size}")
    print(f"{'variant':<22}{'lines':>7}{'held':>7}{'BLEU':>8}{'chrF':>8}{'s':>8}")
    for row in rows:
        print(f"{row['variant']:<22}{row['lines']:>7}{row['held']:>7}{row['bleu']:>8.2f}{row['chrf']:>8.2f}"
              f"{row['seconds']:>8.1f}")
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": args.checkpoint, "rows": rows}, indent=2) + "\n")


def scores(translations: list[str], references: list[str]) -> dict:
    return {"bleu": round(sacrebleu.corpus_bleu(translations, [references]).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(translations, [references]).score, 2)}


if __name__ == "__main__":
    main()
