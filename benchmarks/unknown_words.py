"""Words the vocabulary cannot spell (names in another script): lost, or copied from the source.

    python benchmarks/unknown_words.py --checkpoint RUN --src test.de --ref test.en [--beam-size 5] [--json out.json]

A name in a script the training corpus lacks reaches the model as [UNK], and the model writes
some likely word in its place. The test set is translated as it is and in two variants whose
names no Latin-script vocabulary spells, the same name written into the source and the
reference:

- "shared words in Cyrillic": in each line, the capitalised words and numbers (after the
  first word) that the source and its reference share (names: "Boston Terrier", "Miami", "El
  Corazon"; "2007") written in Cyrillic letters (numbers in Arabic-Indic digits) in both;
- "a name added": a source starting "Ein Mann" / "Eine Frau" / "Ein Junge" / "Ein Mädchen"
  whose reference starts "A man" / "A woman" / "A boy" / "A girl" gets "namens NAME" and
  "named NAME" after them, NAME one of a list in Cyrillic, Greek, Georgian and Chinese script.

For each: the lines changed, the lines whose translation holds every such name, and BLEU
(sacreBLEU, 13a) against the references as changed, with copying off (the model's words,
as s2s translated until now) and on (``Translator.copy_unknown``, the default), and seconds.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import sacrebleu

from seq2seq_cli.data import read_lines
from seq2seq_cli.translation import Translator

_LATIN, _OTHER = "abcdefghijklmnopqrstuvwyz0123456789", "абцдефгхийклмнопкрстуввыз٠١٢٣٤٥٦٧٨٩"
_CYRILLIC = {**dict(zip(_LATIN, _OTHER)), **dict(zip(_LATIN.upper(), _OTHER.upper())), "x": "кс", "X": "Кс"}
NAMES = ["Иван", "Ωμέγα", "Наташа", "Σοφία", "თამარ", "李明", "Дмитрий", "Νίκος", "王芳", "Ольга"]
SUBJECTS = {"Ein Mann ": "A man ", "Eine Frau ": "A woman ", "Ein Junge ": "A boy ", "Ein Mädchen ": "A girl "}


def cyrillic(word: str) -> str:
    return "".join(_CYRILLIC.get(c, c) for c in word)


def shared_words(source: str, reference: str) -> tuple[str, str, list[str]]:
    """Source and reference with the words they share (after the first) in Cyrillic."""
    strip = ".,!?\"'():;"
    source_words = {w.strip(strip) for w in source.split()[1:]}
    shared = [w for w in dict.fromkeys(w.strip(strip) for w in reference.split())
              if w in source_words and len(w) > 1 and (w[0].isupper() or w[0].isdigit())]
    names = []
    for word in shared:
        pattern = re.compile(rf"(?<![^\W_]){re.escape(word)}(?![^\W_])")  # the whole word, quoted too
        source, reference = pattern.sub(cyrillic(word), source), pattern.sub(cyrillic(word), reference)
        names.append(cyrillic(word))
    return source, reference, names


def name_added(source: str, reference: str, index: int) -> tuple[str, str, list[str]]:
    for german, english in SUBJECTS.items():
        if source.startswith(german) and reference.startswith(english):
            name = NAMES[index % len(NAMES)]
            return (f"{german}namens {name} {source[len(german):]}", f"{english}named {name} {reference[len(english):]}",
                    [name])
    return source, reference, []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--ref", type=Path, required=True)
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    translator = Translator.load(args.checkpoint, "cpu", beam_size=args.beam_size)
    sources, references = read_lines(args.src), read_lines(args.ref)
    variants = {
        "as it is": [(s, r, []) for s, r in zip(sources, references)],
        "shared words in Cyrillic": [shared_words(s, r) for s, r in zip(sources, references)],
        "a name added": [name_added(s, r, i) for i, (s, r) in enumerate(zip(sources, references))],
    }
    rows = []
    print(f"{'source':<25} {'lines':>6} {'names kept: off':>16} {'on':>5} {'BLEU off':>9} {'on':>6} "
          f"{'s off':>6} {'on':>6}")
    for name, lines in variants.items():
        changed = [k for k, (s, _, names) in enumerate(lines) if names]
        row = {"variant": name, "lines_changed": len(changed)}
        text, refs = [s for s, _, _ in lines], [r for _, r, _ in lines]
        for label, copying in (("off", False), ("on", True)):
            started = time.perf_counter()
            hyps = translator.with_settings(copy_unknown=copying).translate(text)
            row[f"seconds_{label}"] = round(time.perf_counter() - started, 2)
            row[f"names_kept_{label}"] = sum(all(n in hyps[k] for n in lines[k][2]) for k in changed)
            row[f"bleu_{label}"] = round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
            if changed:
                row[f"bleu_changed_lines_{label}"] = round(sacrebleu.corpus_bleu(
                    [hyps[k] for k in changed], [[refs[k] for k in changed]]).score, 2)
                row[f"examples_{label}"] = [hyps[k] for k in changed[:3]]
        rows.append(row)
        print(f"{name:<25} {len(changed):>6} {row['names_kept_off']:>16} {row['names_kept_on']:>5} "
              f"{row['bleu_off']:>9.2f} {row['bleu_on']:>6.2f} {row['seconds_off']:>6.1f} {row['seconds_on']:>6.1f}")
        if changed:
            print(f"{'':<25} changed lines only: BLEU {row['bleu_changed_lines_off']:.2f} -> "
                  f"{row['bleu_changed_lines_on']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
