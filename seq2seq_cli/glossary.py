"""Glossaries: terms that must be translated a given way (DeepL's and ModernMT's glossaries).

A glossary is a text file of ``SOURCE TERM<TAB>TARGET TERM`` lines (blank lines and lines
starting with ``#`` are skipped), or a ``.csv`` file of ``SOURCE TERM,TARGET TERM`` rows as
DeepL and spreadsheets write them (a term holding a comma in double quotes). Every sentence
that holds a source term, as written and as whole words, gets its target term as a
constraint (``seq2seq_cli.constraints``): its translation holds that term at least once, in
place of the model's own word for the source term where the model has one
(``Translator._with_terms_placed``), else where the constrained search puts it. A
term written in lower case is also found with its first letter capitalized where a sentence
begins ("dog" in "Dog owners ..."), as sentences are written, and a target term so written
begins the translation capitalized where it begins it ("Kids are playing."). Where source
terms overlap ("New York" and "York"), the one that starts first wins, and of those the
longest. Terms and text are compared composed (Unicode NFC), as the tokenizer reads them:
accents match however they are written.

A glossary works sentence by sentence, so unlike phrases given per line (``--constraints``)
it goes with translating a line sentence by sentence: a term goes to the sentence that holds it.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from seq2seq_cli.constraints import SENTENCE_STARTS, capitalized, whole_words
from seq2seq_cli.data import read_lines
from seq2seq_cli.errors import UserError


@dataclass(frozen=True, eq=False)  # equal and hashable by its terms (a dict is not hashable): see __eq__
class Glossary:
    """Source terms and their target terms."""

    terms: dict[str, str]  # source term -> target term
    _pattern: re.Pattern = field(init=False, repr=False)
    _capitalized: dict[str, str] = field(init=False, repr=False)  # "Dog" -> "dog", found where a sentence begins
    _capitalized_pattern: re.Pattern = field(init=False, repr=False)

    def __post_init__(self):
        at_starts = {written: term for term in self.terms
                     if (written := capitalized(term)) is not None and written not in self.terms}
        object.__setattr__(self, "_capitalized", at_starts)
        object.__setattr__(self, "_pattern", _longest_first(self.terms))
        object.__setattr__(self, "_capitalized_pattern", _longest_first(at_starts))

    @classmethod
    def of(cls, terms: Mapping[str, str]) -> "Glossary":
        """A glossary of ``terms`` (source term -> target term), each holding a word and no tab
        or line break, no source term twice (a ``UserError`` otherwise)."""
        for source, target in terms.items():
            for term in (source, target):
                if not isinstance(term, str) or not term.strip() or "\t" in term or "\n" in term:
                    raise UserError(f"glossary: {source!r} -> {target!r}: a term must be text holding a word, "
                                    "without tabs or line breaks")
        stripped = {_composed(source.strip()): _composed(target.strip()) for source, target in terms.items()}
        if len(stripped) < len(terms):
            raise UserError("glossary: a source term is given twice (as written without spaces at its ends)")
        return cls(stripped)

    @classmethod
    def read(cls, path: str | Path) -> "Glossary":
        """The glossary in ``path``; a line that is not two terms, or a source term given two
        translations, is refused with its line number."""
        terms: dict[str, str] = {}
        first_given: dict[str, int] = {}
        comma_separated = Path(path).suffix.lower() == ".csv"
        for number, line in enumerate(read_lines(path), 1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = [_composed(term.strip()) for term in (_csv_fields(line) if comma_separated else line.split("\t"))]
            if len(fields) != 2 or not all(fields) or any("\t" in term for term in fields):
                layout = "SOURCE TERM,TARGET TERM" if comma_separated else "SOURCE TERM<TAB>TARGET TERM"
                separator = 'a comma (a term with a comma in "double quotes")' if comma_separated else "a tab"
                raise UserError(f"glossary {path} line {number}: {line!r} is not {layout}; "
                                f"write one term pair per line, separated by {separator}")
            source, target = fields
            if terms.get(source, target) != target:
                raise UserError(f"glossary {path} line {number}: {source!r} is given as {terms[source]!r} on line "
                                f"{first_given[source]} and as {target!r} here; keep one")
            terms[source] = target
            first_given.setdefault(source, number)
        return cls(terms)

    # Settings holding a glossary (a served request's search) are compared and hashed: two
    # requests with the same terms are searched in one batch.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Glossary) and self.terms == other.terms

    def __hash__(self) -> int:  # not kept: a glossary sent to a decoder process is hashed there anew
        return hash(frozenset(self.terms.items()))

    def targets(self, text: str) -> list[str]:
        """The target terms of the source terms ``text`` holds, in the order they first occur,
        each once."""
        return list(dict.fromkeys(target for _, target in self.found(text)))

    def found(self, text: str) -> list[tuple[str, str]]:
        """Each source term ``text`` holds, as written there (composed), and its target term, in
        the order they occur."""
        text = _composed(text)
        # Terms capitalized where a sentence begins are looked for there only (a few places per
        # text: one alternation tried everywhere with them took 8 times as long).
        at_starts = [] if not self._capitalized else [
            self._capitalized_pattern.match(text, start.start()) for start in SENTENCE_STARTS.finditer(text)]
        capitalized = [match for match in at_starts if match is not None]  # in order
        found: list[tuple[str, str]] = []
        position = 0
        while True:  # the leftmost match of either kind, the longer where both start at one place
            match = self._pattern.search(text, position)
            capitalized = [start for start in capitalized if start.start() >= position]
            if capitalized and (match is None or (capitalized[0].start(), -capitalized[0].end())
                                < (match.start(), -match.end())):
                match = capitalized[0]
                found.append((match.group(), self.terms[self._capitalized[match.group()]]))
            elif match is not None:
                found.append((match.group(), self.terms[match.group()]))
            else:
                break
            position = match.end()
        return found

    def added_to(self, phrases: list[str], text: str) -> list[str]:
        """``phrases`` (a line's own, ``--constraints``), then the target terms of the source
        terms ``text`` holds that are not among them."""
        return phrases + [term for term in self.targets(text) if term not in phrases]

    def without(self, targets: set[str]) -> "Glossary":
        """The glossary less the entries whose target term is one of ``targets``."""
        return Glossary({source: target for source, target in self.terms.items() if target not in targets})


def _composed(text: str) -> str:
    """``text`` composed (Unicode NFC), as the tokenizer reads it (``tokenization.composing``):
    a term and a text that look alike match, however their accents are written."""
    return unicodedata.normalize("NFC", text)


def _csv_fields(line: str) -> list[str]:
    """The fields of one CSV line; a quote left open makes it no pair of terms."""
    try:
        return next(csv.reader([line], strict=True))
    except csv.Error:
        return []


def _longest_first(terms) -> re.Pattern:
    """One alternation of ``terms`` as whole words, longest first: at each place the longest
    term that starts there."""
    return whole_words("|".join(map(re.escape, sorted(terms, key=len, reverse=True))) or r"(?!)")
