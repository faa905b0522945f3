"""Paragraphs: a test set put several sentences to a line, translated whole and with
``--split-sentences``, beside the same sentences one per line.

    python benchmarks/paragraphs.py --checkpoint runs/multi30k --data ../shared/data/multi30k \
        [--src test_2016_flickr.de --ref test_2016_flickr.en] [--per-line 4] [--json out.json]

Prints a table and writes JSON. Consecutive sentences of the test set are joined with a space,
--per-line to a line, and so are their references; BLEU is sacreBLEU's corpus BLEU of the joined
lines (the one-per-line row is scored line by line, as usual). A model trained on single
sentences reads a paragraph as one long source; splitting translates its sentences one by one,
so its BLEU and speed should be those of the sentences one per line.

The last two rows are sentences longer than the model reads: consecutive sentences joined with
commas (their final stops dropped) until the line is over ``data.max_len`` tokens, so sentencex
finds no boundary in it; read whole, each is cut to the limit, and split it is translated in
pieces that fit.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import sacrebleu
import torch

from decode_speed import add_model_and_test_set, timed  # benchmarks/ is on sys.path when this runs
from seq2seq_cli.data import read_lines
from seq2seq_cli.segmentation import split_sentences
from seq2seq_cli.translation import Translator


def joined(lines: list[str], per_line: int) -> list[str]:
    return [" ".join(lines[start:start + per_line]) for start in range(0, len(lines), per_line)]


def glued_over_limit(sentences: list[str], references: list[str], translator: Translator
                     ) -> tuple[list[str], list[str], int]:
    """Consecutive sentences joined with commas, as few as make a line over the model's limit,
    their references joined alike, and how many sentences they hold (a last line that stays
    under the limit is dropped)."""
    def glue(parts: list[str]) -> str:
        return ", ".join(part.rstrip(" .") for part in parts) + "."

    lines, line_references, start = [], [], 0
    for end in range(1, len(sentences) + 1):
        line = glue(sentences[start:end])
        if len(translator.tokenizers.encode_src([line])[0]) > translator.max_source_tokens:
            lines.append(line)
            line_references.append(glue(references[start:end]))
            start = end
    return lines, line_references, start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_test_set(parser)
    parser.add_argument("--per-line", type=int, default=4, help="sentences joined into one line")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    sentences, references = read_lines(args.data / args.src), read_lines(args.data / args.ref)
    paragraphs, paragraph_references = joined(sentences, args.per_line), joined(references, args.per_line)
    translator = Translator.load(args.checkpoint, args.device, beam_size=args.beam_size, batch_size=args.batch_size)
    split = translator.with_settings(split_sentences=True)
    long_lines = glued_over_limit(sentences, references, translator)
    translator.translate(sentences[:args.batch_size])  # warm-up
    rows = []
    one_per_line = (sentences, references, len(sentences))
    in_paragraphs = (paragraphs, paragraph_references, len(sentences))
    for name, chosen, lines, refs, count in (("one sentence per line", translator, *one_per_line),
                                             (f"{args.per_line} per line, whole", translator, *in_paragraphs),
                                             (f"{args.per_line} per line, --split-sentences", split, *in_paragraphs),
                                             ("over the limit, whole", translator, *long_lines),
                                             ("over the limit, --split-sentences", split, *long_lines)):
        hypotheses, seconds = timed(translator.device, lambda: chosen.translate(lines))
        rows.append({"input": name, "lines": len(lines), "seconds": round(seconds, 2),
                     "sentences_per_s": round(count / seconds, 1),
                     "bleu": round(sacrebleu.corpus_bleu(hypotheses, [refs]).score, 2),
                     "output_words_per_reference_word": round(
                         sum(len(h.split()) for h in hypotheses) / sum(len(r.split()) for r in refs), 3)})

    print(f"{args.checkpoint}, {args.src}, beam {args.beam_size}, {translator.device}")
    print(f"{'input':<34} {'lines':>6} {'seconds':>8} {'sent/s':>8} {'BLEU':>7} {'len ratio':>10}")
    for row in rows:
        print(f"{row['input']:<34} {row['lines']:>6} {row['seconds']:>8} {row['sentences_per_s']:>8} "
              f"{row['bleu']:>7} {row['output_words_per_reference_word']:>10}")
    found = sum(len(split_sentences(line, translator.source_language)) for line in paragraphs)
    whole_lines = sum(len(split_sentences(line, translator.source_language)) == 1 for line in sentences)
    print(f"sentencex finds {found} sentences in the {len(paragraphs)} lines of {len(sentences)} "
          f"({whole_lines} of the {len(sentences)} sentences alone are one sentence to it)")
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint), "src": args.src,
                                         "beam_size": args.beam_size, "per_line": args.per_line,
                                         "device": str(translator.device), "cpu": platform.processor(),
                                         "torch": torch.__version__, "rows": rows,
                                         "sentences_found": found}, indent=2) + "\n")


if __name__ == "__main__":
    main()
