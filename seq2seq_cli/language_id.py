"""Which language a text is written in, among the languages a server translates from or into.

LibreTranslate's clients ask ``POST /detect`` for a text's language and send ``source: auto``
to have it found for them; LibreTranslate answers both by ranking the languages it has loaded.
``s2s serve`` does the same over the languages of its runs, with py3langid (langid.py: a naive
Bayes model of byte n-grams for about 100 languages, ISO 639-1 codes, shipped with the package,
so it works offline). Ranking only the served languages is what makes a guess useful here: a
text is translated by one of these models, or is already in the language asked for, or neither.

A language the model does not know (a code it has no class for) cannot be ranked: it is left
out, and :attr:`LanguageDetector.unknown` names it so the server can say why ``auto`` fails.
A server with one source language needs no model: every text ranks it first, with certainty.
"""

from __future__ import annotations

from typing import Iterable

from seq2seq_cli.errors import UserError


class LanguageDetector:
    """Ranks texts over ``languages``: the ones the model knows (:attr:`languages`), the others
    listed in :attr:`unknown` (empty when there is only one language, which needs no model)."""

    def __init__(self, languages: Iterable[str]):
        wanted = sorted(set(languages))
        self._identifier = None
        if len(wanted) <= 1:
            self.languages, self.unknown = wanted, []
            return
        try:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier
        except ImportError:
            raise UserError(f"serving several languages ({', '.join(wanted)}) needs py3langid to tell "
                            'them apart: pip install -e ".[serve]"') from None
        # norm_probs: probabilities (summing to 1 over the languages set below), not log scores.
        identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        known = set(identifier.nb_classes)
        self.languages = [code for code in wanted if code in known]
        self.unknown = [code for code in wanted if code not in known]
        if len(self.languages) > 1:
            identifier.set_languages(self.languages)
            self._identifier = identifier

    def rank(self, text: str) -> list[tuple[str, float]]:
        """(language, probability) for each of :attr:`languages`, most probable first; the
        probabilities sum to 1. A text with nothing to go by (empty, digits) ranks them about
        evenly."""
        if self._identifier is None:
            return [(code, 1.0) for code in self.languages]
        return [(code, float(probability)) for code, probability in self._identifier.rank(text)]
