"""How often an inline element (``<b>word</b>``) comes back around the word that translates its word.

    python benchmarks/inline_markup.py --checkpoint RUN [--beam-size 1] [--json out.json]

RUN is an English->German run on the bundled toy corpus (e.g. `s2s train --config
configs/toy.yaml`). Each test sentence is translated once with its word alignment; then, for
each of its content words whose translation the toy grammar makes certain (`content_word_links`
in data/toy/generate.py), the sentence as HTML with that word in `<b>` is put back together
around the translation as `s2s translate --html` does (`documents.Inline`). The table counts
the elements that hold exactly the word's translation, those that hold it and more words, and
those that miss it.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

TOY = Path(__file__).resolve().parent.parent / "data" / "toy"
sys.path.insert(0, str(TOY))

from generate import content_word_links  # noqa: E402

from seq2seq_cli.data import read_lines  # noqa: E402
from seq2seq_cli.documents import Inline, html_pieces  # noqa: E402
from seq2seq_cli.translation import Translator  # noqa: E402

_BOLD = re.compile(r"<b>(.*?)</b>")


def core(word: str) -> str:
    return word.strip(".,")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    translator = Translator.load(args.checkpoint, "cpu", beam_size=args.beam_size, keep_attention=True)
    sources = read_lines(TOY / "test.en")
    counts: collections.Counter = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)
    source_ids, results = translator.translate_raw([source.encode("utf-8") for source in sources])
    best = [hypotheses[0] for hypotheses in results]
    for source, translation, ids, hypothesis in zip(sources, translator.detokenize(best), source_ids, best):
        attention = translator.word_attention(ids, hypothesis)
        words, target_words = source.split(), translation.split()
        for target, source_word in content_word_links(source, translation).items():
            word = words[source_word]
            marked = words[:source_word] + [f"<b>{core(word)}</b>{word[len(core(word)):]}"] + words[source_word + 1:]
            pieces = html_pieces(" ".join(marked))
            run = next(text for markup, text in pieces if markup is None)
            assert isinstance(run, Inline), pieces
            bold = _BOLD.search(run.translated(translation, attention))
            held = [core(w) for w in bold.group(1).split()] if bold else []
            outcome = ("exact" if held == [core(target_words[target])] else
                       "more" if core(target_words[target]) in held else "missed")
            counts[outcome] += 1
            if len(examples[outcome]) < 3:
                examples[outcome].append(f"{core(word)} -> {' '.join(held) or '(empty)'} "
                                         f"(wanted {core(target_words[target])})")
    total = sum(counts.values())
    print(f"toy test set, {len(sources)} sentences, beam {args.beam_size}: {total} bold content words")
    print(f"{'outcome':<40} {'elements':>9} {'share':>7}")
    for outcome, label in (("exact", "around exactly its translation"), ("more", "around it and more words"),
                           ("missed", "not around its translation")):
        print(f"{label:<40} {counts[outcome]:>9} {counts[outcome] / total:>7.1%}")
        for example in examples[outcome]:
            print(f"    e.g. {example}")
    if args.json:
        args.json.write_text(json.dumps({"beam_size": args.beam_size, "elements": total,
                                         **{outcome: counts[outcome] for outcome in ("exact", "more", "missed")}},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
