"""Glossaries (``s2s translate --glossary``): does a target term take the place of the model's
own word for its source term, and what does it do to the translation?

    python benchmarks/glossary.py --checkpoint runs/multi30k --src test_2016_flickr.de \
        --ref test_2016_flickr.en [--beam-size 5] [--json out.json]

Two glossaries for Multi30k German->English, written out here so that the run is reproducible:
"house style", terms the model does not write (Hund -> pup, Mädchen -> lass, ...), and
"agreeing", terms it mostly writes anyway (Hund -> dog, ...). Each term comes with the words a
reference uses for it ("dog" for "pup"). For the house style the references are rewritten the
way the glossary asks (in a line whose source holds "Hund", the reference's "dog" becomes
"pup"), and scored are the lines whose source holds a term: BLEU and chrF against those
rewritten references, and the lines holding a term together with a word it stands for ("The
brown dog is standing on the sandy pup."). For both: the terms held (``constraints.held_in``,
as ``s2s evaluate --glossary`` counts them), BLEU of the whole set against the references as
they are, and seconds; then the same count over the entries of n-best lists as long as the
beam (``--nbest``, ``alternatives`` in ``s2s serve``), and their seconds. Run it with
``PYTHONPATH`` at another checkout to compare.
"""

from __future__ import annotations

import json
import re
import time

import sacrebleu

from constraints import plain_beam_search  # benchmarks/ is on sys.path when this runs
from seq2seq_cli.constraints import held_in
from seq2seq_cli.glossary import Glossary
from seq2seq_cli.translation import Translator

# source term: (target term, the words references write for it)
HOUSE_STYLE = {"Hund": ("pup", ["dog"]), "Mädchen": ("lass", ["girl"]), "Junge": ("lad", ["boy"]),
               "Kinder": ("kids", ["children"]), "Fahrrad": ("bike", ["bicycle"]), "Straße": ("road", ["street"]),
               "Gebäude": ("edifice", ["building"]), "Strand": ("shore", ["beach"]), "Auto": ("car", []),
               "Wasser": ("water", [])}
AGREEING = {"Mann": ("man", []), "Frau": ("woman", []), "Hund": ("dog", []), "Straße": ("street", []),
            "Kinder": ("children", []), "Mädchen": ("girl", []), "Junge": ("boy", []), "Wasser": ("water", []),
            "Strand": ("beach", []), "Fahrrad": ("bike", ["bicycle"])}


def holds_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


def source_terms(source: str, glossary: dict) -> list[str]:
    """The source terms a line holds, as ``s2s translate --glossary`` finds them."""
    targets = Glossary.of({term: target for term, (target, _) in glossary.items()}).targets(source)
    return [term for term, (target, _) in glossary.items() if target in targets]  # one term a target here


def house_references(sources: list[str], references: list[str], glossary: dict) -> list[str]:
    """Each reference with the words it writes for a source term of its line replaced by the
    target term, capitalized where the word was."""
    rewritten = []
    for source, reference in zip(sources, references):
        for term in source_terms(source, glossary):
            target, words = glossary[term]
            for word in words:
                reference = re.sub(rf"\b{word}\b", target, reference)
                reference = re.sub(rf"\b{word.capitalize()}\b", target.capitalize(), reference)
        rewritten.append(reference)
    return rewritten


def measure(translator: Translator, name: str, glossary: dict, sources: list[str], references: list[str]) -> dict:
    terms = {term: target for term, (target, _) in glossary.items()}
    started = time.perf_counter()
    translations = translator.with_settings(glossary=terms).translate(sources)
    seconds = time.perf_counter() - started
    found = [source_terms(source, glossary) for source in sources]
    lines = [i for i, terms in enumerate(found) if terms]
    wanted = [(i, *glossary[term]) for i in lines for term in found[i]]
    row = {"glossary": name, "lines_with_a_term": len(lines), "terms": len(wanted),
           "held": sum(held_in(translations[i], target) for i, target, _ in wanted),
           "term_and_a_word_it_stands_for": sum(
               held_in(translations[i], target) and any(holds_word(translations[i], word) for word in words)
               for i, target, words in wanted),
           "bleu": round(sacrebleu.corpus_bleu(translations, [references]).score, 2), "seconds": round(seconds, 1)}
    started = time.perf_counter()
    lists = translator.with_settings(glossary=terms).translate_nbest(sources, translator.decoding.beam_size)
    row["nbest_seconds"] = round(time.perf_counter() - started, 1)
    row["nbest_entries_with_a_term_and_a_word_it_stands_for"] = sum(
        held_in(candidate.text, target) and any(holds_word(candidate.text, word) for word in words)
        for i, target, words in wanted for candidate in lists[i])
    if any(words for _, words in glossary.values()):
        rewritten = house_references(sources, references, glossary)
        ours, theirs = [translations[i] for i in lines], [rewritten[i] for i in lines]
        row["bleu_as_the_glossary_asks"] = round(sacrebleu.corpus_bleu(ours, [theirs]).score, 2)
        row["chrf_as_the_glossary_asks"] = round(sacrebleu.corpus_chrf(ours, [theirs]).score, 2)
    return row


def main() -> None:
    args, sources, references, translator, plain, seconds = plain_beam_search(__doc__.splitlines()[0])
    print(f"plain beam {args.beam_size}: BLEU {sacrebleu.corpus_bleu(plain, [references]).score:.2f}, {seconds:.1f} s")
    rows = [measure(translator, "house style", HOUSE_STYLE, sources, references),
            measure(translator, "agreeing", AGREEING, sources, references)]
    for row in rows:
        print("  ".join(f"{key} {value}" for key, value in row.items()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
