"""What a character the vocabulary never learned costs, with and without `CharacterFolding`.

    python benchmarks/unknown_characters.py --checkpoint RUN --src test.de --ref test.en [--json out.json]

The test set is translated as it is and as text from a word processor or another country
would bring it: each final period written as an ellipsis ("…"), each sentence quoted in
guillemets (»…«), and an accent the corpus lacks on its nouns (every "a" of a capitalised word
after the first as "å"; exaggerated, as every German noun gets it). For each, the table gives
how many lines hold a word the vocabulary reads as [UNK] and the BLEU (sacreBLEU, 13a) without
folding (each such word one [UNK], as before) and with it (what s2s does). Folding gives back
the plain text for the ellipsis and the accents, so there it must score as the plain text.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import sacrebleu

from seq2seq_cli.data import read_lines
from seq2seq_cli.translation import Translator

VARIANTS = {
    "as it is": lambda line: line,
    "ellipsis": lambda line: line[:-1] + "\u2026" if line.endswith(".") else line,
    "guillemets": lambda line: f"\u00bb{line}\u00ab",
    "å in nouns": lambda line: re.sub(r"(?<=\S )[A-ZÄÖÜ]\w+", lambda m: m.group().replace("a", "å"), line),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--ref", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    translator = Translator.load(args.checkpoint, "cpu")
    tokenizers, folding = translator.tokenizers, translator.tokenizers.src_folding
    sources, references = read_lines(args.src), read_lines(args.ref)
    rows = []
    print(f"{'source':<12} {'lines':>6} {'[UNK] lines before':>19} {'after':>6} {'BLEU before':>12} {'after':>6}")
    for name, variant in VARIANTS.items():
        text = [variant(line) for line in sources]
        row = {"variant": name, "lines_changed": sum(a != b for a, b in zip(text, sources))}
        for label, applies in (("before", False), ("after", True)):
            folding.applies = applies
            unk = tokenizers.src_unk_id
            row[f"unk_lines_{label}"] = sum(unk in ids for ids in tokenizers.encode_src(text))
            row[f"bleu_{label}"] = round(sacrebleu.corpus_bleu(translator.translate(text), [references]).score, 2)
        rows.append(row)
        print(f"{name:<12} {row['lines_changed']:>6} {row['unk_lines_before']:>19} {row['unk_lines_after']:>6} "
              f"{row['bleu_before']:>12.2f} {row['bleu_after']:>6.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
