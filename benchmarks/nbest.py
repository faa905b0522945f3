"""n-best lists (``s2s translate --nbest``): how many texts do they hold, and what does telling
translations apart by text cost?

    python benchmarks/nbest.py --checkpoint RUN --src test.de [--beam-size 5] [--nbest 5] [--json out.json]
    python benchmarks/nbest.py --checkpoint RUN --src test.de --ref test.en --constrained-words 1

WordPiece spells most words more than one way ("weißen", "weiße ##n"), all printed alike, so a
list of token sequences can show one translation twice. For the 1-best translations and the
n-best lists of a test set: seconds of each (one process, one after the other), the lists
holding a text more than once, the texts they repeat, and the lists whose first entry is not
the 1-best translation. With ``--ref`` and ``--constrained-words N``, each line is translated
under constraints (``--constraints``): the N longest reference words the plain translation
lacks, as ``constraints.py`` picks them; then also the lists with an entry that lacks a phrase.
With ``--per-line N``, N consecutive sentences go to a line, translated with
``--split-sentences`` (as ``s2s serve`` translates a text): a line's list is made from its
sentences' lists; then also, over the entries after the first, how many of a line's sentences
they change and how far their score is below the first's.
Run it with ``PYTHONPATH`` at another checkout to compare.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from constraints import missing_words
from seq2seq_cli.constraints import held_in
from seq2seq_cli.data import read_lines
from seq2seq_cli.translation import Translator


def sentences_of(tokens: list[int], separator: int) -> list[tuple[int, ...]]:
    """A split line's translation cut back into its sentences' translations."""
    sentences, start = [], 0
    for end, token in enumerate([*tokens, separator]):
        if token == separator:
            sentences.append(tuple(tokens[start:end]))
            start = end + 1
    return sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--nbest", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes of each; the fastest counts")
    parser.add_argument("--ref", type=Path, help="the references the constrained words are taken from")
    parser.add_argument("--constrained-words", type=int, default=0)
    parser.add_argument("--per-line", type=int, default=1, help="sentences to a line, translated split")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sources = read_lines(args.src)
    translator = Translator.load(args.checkpoint, device="cpu", beam_size=args.beam_size)
    if args.per_line > 1:
        if args.constrained_words:
            parser.error("--per-line does not go with --constrained-words (--constraints translates lines whole)")
        sentences = sources
        sources = [" ".join(sentences[start:start + args.per_line]) for start in range(0, len(sentences), args.per_line)]
        translator = translator.with_settings(split_sentences=True)
    phrases = [[] for _ in sources]
    if args.constrained_words:
        plain = translator.translate(sources)
        phrases = [missing_words(translation, reference, translator.tokenizers)[:args.constrained_words]
                   for translation, reference in zip(plain, read_lines(args.ref))]
        sources = ["\t".join([source, *wanted]) for source, wanted in zip(sources, phrases)]
        translator = translator.with_settings(constraints=True)

    def timed(work):
        best, result = float("inf"), None
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = work()
            best = min(best, time.perf_counter() - started)
        return best, result

    one_seconds, one_best = timed(lambda: translator.translate(sources))
    list_seconds, lists = timed(lambda: translator.translate_nbest(sources, args.nbest))
    texts = [[candidate.text for candidate in candidates] for candidates in lists]
    result = {
        "sentences": len(sources), "beam_size": args.beam_size, "nbest": args.nbest,
        "one_best_seconds": round(one_seconds, 2), "nbest_seconds": round(list_seconds, 2),
        "lists_with_a_repeated_text": sum(len(set(t)) < len(t) for t in texts),
        "repeated_texts": sum(len(t) - len(set(t)) for t in texts),
        "first_not_the_one_best": sum(t[0] != best for t, best in zip(texts, one_best)),
    }
    if args.per_line > 1:  # what the alternatives change: whole sentences of the line's 1-best
        eos = translator.tokenizers.eos_id  # which stands between a line's sentences in its tokens
        changed, below = [], []
        for hypotheses in translator.translate_raw([line.encode("utf-8") for line in sources], args.nbest)[1]:
            first = sentences_of(hypotheses[0].tokens, eos)
            for hypothesis in hypotheses[1:]:
                changed.append(sum(a != b for a, b in zip(first, sentences_of(hypothesis.tokens, eos))))
                below.append(hypotheses[0].score - hypothesis.score)
        result["sentences_per_line"] = args.per_line
        result["alternatives_sentences_changed_mean"] = round(sum(changed) / len(changed), 2)
        result["alternatives_score_below_first_mean"] = round(sum(below) / len(below), 3)
    if args.constrained_words:
        result["constrained_lines"] = sum(1 for wanted in phrases if wanted)
        result["lists_with_an_entry_lacking_a_phrase"] = sum(
            not all(held_in(text, phrase) for text in t for phrase in wanted) for t, wanted in zip(texts, phrases))
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
