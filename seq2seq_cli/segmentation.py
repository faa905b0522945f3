"""Sentence segmentation: a paragraph is translated one sentence at a time.

Models are trained on sentence pairs. A line holding a paragraph is read as one long source:
past ``data.max_len`` tokens it is cut, and well before that the decoder loses its place (four
Multi30k test sentences on one line came out as one made-up sentence). LibreTranslate and Argos
split text into sentences before translating it; with ``split_sentences`` s2s does the same,
with sentencex (Wikimedia's rule-based segmenter: abbreviations and punctuation of about 300
languages, offline), and joins the translations back into one line.
"""

from typing import Optional

from sentencex import segment

# Targets written without spaces between sentences.
_UNSPACED_LANGUAGES = {"zh", "ja", "th", "lo", "km", "my", "bo"}


def split_sentences(text: str, language: Optional[str]) -> list[str]:
    """The sentences of ``text`` (a line: newlines are not boundaries of their own), stripped;
    a text without any is one empty sentence, so every line has at least one translation.
    ``language`` (an ISO 639-1 code) picks the abbreviation rules; None uses the generic ones."""
    sentences = [sentence.strip() for sentence in segment(language or "und", text)]
    return [sentence for sentence in sentences if sentence] or [""]


def sentence_joiner(language: Optional[str]) -> str:
    """What goes between translated sentences in ``language``: a space, or nothing for the
    scripts that put none (Chinese, Japanese, Thai, ...)."""
    return "" if language in _UNSPACED_LANGUAGES else " "
