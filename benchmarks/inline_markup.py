"""Inline HTML elements (``<b>word</b>``): where they come back, and what translating sentences whole gains.

    python benchmarks/inline_markup.py --checkpoint RUN [--beam-size K] [--json out.json]
    python benchmarks/inline_markup.py --checkpoint RUN --src test.de --ref test.en [--json out.json]

Without --src, RUN is an English->German run on the bundled toy corpus (e.g. `s2s train
--config configs/toy.yaml`). Each test sentence is translated once with its word attention;
then, for each of its content words whose translation the toy grammar makes certain
(`content_word_links` in data/toy/generate.py), the sentence as HTML with that word in `<b>`
is put back together around the translation as `s2s translate --html` does
(`documents.Inline`). The table counts the elements that hold exactly the word's translation,
those that hold it and more words, and those that miss it.

The same words are put in a bold run of a Word paragraph (runs before and after it) and
the translation shared out among the runs as `s2s translate --input X.docx` does
(`office.OfficeStretch`): the runs keep their order there.

With --src and --ref (e.g. Multi30k's test2016), each source sentence becomes a paragraph
with its second word in `<b>` and its last word in `<a href>`; the page is translated with
`Translator.translate_html` (each sentence whole), and, as s2s did before, piece by piece
between the tags. The table gives the BLEU of each, the tags taken out, against the plain
sentences translated as `s2s translate` translates them, and the seconds each took.
"""

from __future__ import annotations

import argparse
import collections
import json
import html
import re
import sys
import time
from pathlib import Path

from sacrebleu.metrics import BLEU

TOY = Path(__file__).resolve().parent.parent / "data" / "toy"
sys.path.insert(0, str(TOY))

from generate import content_word_links  # noqa: E402

from seq2seq_cli.data import read_lines  # noqa: E402
from seq2seq_cli.documents import Inline, html_pieces, reassemble  # noqa: E402
from seq2seq_cli.office import WORD, OfficeStretch, office_xml_pieces  # noqa: E402
from seq2seq_cli.translation import Translator  # noqa: E402

_BOLD = re.compile(r"<b>(.*?)</b>")
_TAG = re.compile(r"<[^>]*>")


def corpus_bleu(hypotheses: list[str], references: list[list[str]]):
    return BLEU().corpus_score(hypotheses, references)


def core(word: str) -> str:
    return word.strip(".,")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--beam-size", type=int, help="default: the run's own")
    parser.add_argument("--src", type=Path, help="source sentences, one a line (then --ref too)")
    parser.add_argument("--ref", type=Path, help="their reference translations")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.src:
        real_text(args)
        return

    translator = Translator.load(args.checkpoint, "cpu", beam_size=args.beam_size, keep_attention=True)
    sources = read_lines(TOY / "test.en")
    counts = {"html": collections.Counter(), "docx": collections.Counter()}
    examples: dict[str, list[str]] = collections.defaultdict(list)
    source_ids, results = translator.translate_raw([source.encode("utf-8") for source in sources])
    best = [hypotheses[0] for hypotheses in results]
    for source, translation, ids, hypothesis in zip(sources, translator.detokenize(best), source_ids, best):
        attention = translator.word_attention(ids, hypothesis)
        words, target_words = source.split(), translation.split()
        for target, source_word in content_word_links(source, translation).items():
            word, wanted = words[source_word], core(target_words[target])
            marked_words = [*words[:source_word], f"<b>{core(word)}</b>{word[len(core(word)):]}",
                            *words[source_word + 1:]]
            run = next(text for markup, text in html_pieces(" ".join(marked_words)) if markup is None)
            assert isinstance(run, Inline)
            bold = _BOLD.search(run.translated(translation, attention))
            held = {"html": [core(w) for w in bold.group(1).split()] if bold else [],
                    "docx": [core(w) for w in bold_run(words, source_word, translation, attention).split()]}
            for kind in counts:
                outcome = "exact" if held[kind] == [wanted] else "more" if wanted in held[kind] else "missed"
                counts[kind][outcome] += 1
                if kind == "html" and len(examples[outcome]) < 3:
                    examples[outcome].append(f"{core(word)} -> {' '.join(held[kind]) or '(empty)'} (wanted {wanted})")
    total = sum(counts["html"].values())
    print(f"toy test set, {len(sources)} sentences, beam {translator.decoding.beam_size}: {total} bold content words")
    print(f"{'the bold word came back':<40} {'HTML <b>':>9} {'share':>7} {'Word run':>9} {'share':>7}")
    for outcome, label in (("exact", "around exactly its translation"), ("more", "around it and more words"),
                           ("missed", "not around its translation")):
        print(f"{label:<40} {counts['html'][outcome]:>9} {counts['html'][outcome] / total:>7.1%} "
              f"{counts['docx'][outcome]:>9} {counts['docx'][outcome] / total:>7.1%}")
        for example in examples[outcome]:
            print(f"    e.g. {example}")
    if args.json:
        args.json.write_text(json.dumps({"beam_size": translator.decoding.beam_size, "elements": total,
                                         **{kind: dict(counts[kind]) for kind in counts}}, indent=2) + "\n")


def bold_run(words: list[str], bold: int, translation: str, attention) -> str:
    """What a Word paragraph's bold run holds after translation, its word ``bold`` bold."""
    texts = ["".join(word + " " for word in words[:bold]), words[bold],
             "".join(" " + word for word in words[bold + 1:])]
    xml = "".join(f'<w:r>{"<w:rPr><w:b/></w:rPr>" if run == 1 else ""}<w:t xml:space="preserve">{text}</w:t></w:r>'
                  for run, text in enumerate(texts))
    pieces = office_xml_pieces(f"<w:body><w:p>{xml}</w:p></w:body>", WORD)
    stretch = next(text for markup, text in pieces if markup is None)
    translated = reassemble(pieces, iter([[(translation, attention)]]), 0)[0]
    assert isinstance(stretch, OfficeStretch)
    return " ".join(re.findall(r"<w:b/></w:rPr><w:t[^>]*>([^<]*)</w:t>", translated))


def marked(sentence: str) -> str:
    """The sentence as a paragraph, its second word in <b> and its last in <a href>."""
    words = [html.escape(word, quote=False) for word in sentence.split()]
    if len(words) >= 3:
        words[1] = f"<b>{words[1]}</b>"
        words[-1] = f'<a href="/w">{words[-1]}</a>'
    return f"<p>{' '.join(words)}</p>"


def real_text(args) -> None:
    translator = Translator.load(args.checkpoint, "cpu", beam_size=args.beam_size, split_sentences=True)
    sources, references = read_lines(args.src), read_lines(args.ref)
    page = "\n".join(marked(sentence) for sentence in sources)
    rows = []

    def timed(name: str, translate) -> None:
        started = time.perf_counter()
        lines = [html.unescape(_TAG.sub("", line)) for line in translate().split("\n")]
        seconds = time.perf_counter() - started
        rows.append({"translated": name, "bleu": round(corpus_bleu(lines, [references]).score, 2),
                     "seconds": round(seconds, 2)})

    timed("plain sentences (s2s translate --split-sentences)", lambda: "\n".join(translator.translate(sources)))
    timed("each sentence whole (Inline, now)", lambda: translator.translate_html(page))
    timed("piece by piece between the tags (before)", lambda: pieces_translated(translator, page))
    print(f"{len(sources)} sentences of {args.src.name}, two inline elements each, "
          f"beam {translator.decoding.beam_size}")
    print(f"{'translated':<52} {'BLEU':>6} {'seconds':>8}")
    for row in rows:
        print(f"{row['translated']:<52} {row['bleu']:>6.2f} {row['seconds']:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def pieces_translated(translator: Translator, page: str) -> str:
    """The page as s2s translated it before documents.Inline: each stretch of text between two tags on its own."""
    parts = re.split(r"(<[^>]*>)", page)  # text, tag, text, ...
    texts = [html.unescape(part) for part in parts[0::2] if part.strip()]
    translations = iter(translator.translate(texts))
    return "".join(html.escape(next(translations), quote=False) if index % 2 == 0 and part.strip() else part
                   for index, part in enumerate(parts))

if __name__ == "__main__":
    main()
