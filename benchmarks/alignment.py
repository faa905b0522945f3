"""How often `s2s translate --alignment` links a content word to the word it translates.

    python benchmarks/alignment.py --checkpoint RUN [--beam-size 1] [--json out.json]

RUN is an English->German run on the bundled toy corpus (e.g. `s2s train --config
configs/toy.yaml`). Its test set is translated with alignments; for each translation, the
toy grammar's lexicon gives the certain links of its content words (nouns, adjectives, verbs,
adverbs: `content_word_links` in data/toy/generate.py), and the table says how many of them
the alignment has, and what the misses pointed at instead (the most frequent pairs).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

TOY = Path(__file__).resolve().parent.parent / "data" / "toy"
sys.path.insert(0, str(TOY))

from generate import content_word_links  # noqa: E402

from seq2seq_cli.data import read_lines  # noqa: E402
from seq2seq_cli.translation import Translator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    translator = Translator.load(args.checkpoint, "cpu", beam_size=args.beam_size, alignment=True)
    sources = read_lines(TOY / "test.en")
    right = total = 0
    misses: collections.Counter = collections.Counter()
    for source, translation in zip(sources, translator.translate_nbest(sources, 1)):
        best = translation[0]
        aligned = {target: source_word for source_word, target in best.alignment}
        source_words, target_words = source.split(), best.text.split()
        for target, source_word in content_word_links(source, best.text).items():
            total += 1
            if aligned.get(target) == source_word:
                right += 1
            else:
                got = source_words[aligned[target]] if target in aligned else "(none)"
                misses[(target_words[target], source_words[source_word], got)] += 1
    share = right / total
    print(f"toy test set, {len(sources)} sentences, beam {args.beam_size}: {right} of {total} content-word "
          f"links right ({share:.1%})")
    print("most frequent misses (target word, its source word, where the alignment pointed):")
    for (target, wanted, got), count in misses.most_common(8):
        print(f"  {count:>4}  {target} -> {wanted}, got {got}")
    if args.json:
        args.json.write_text(json.dumps({"beam_size": args.beam_size, "links": total, "right": right,
                                         "share": round(share, 4)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
