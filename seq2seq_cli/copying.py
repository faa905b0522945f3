"""Source words the vocabulary cannot spell, copied into the translation.

A word with a character the tokenizer never learned (a name in another script, "Москва",
"北京", a symbol, "☕") reaches the model as [UNK]. The model cannot know what it says, and a
model trained on targets without [UNK] writes something in its place, usually a likely word
of its training data: "Zwei Männer spielen Fußball in Москва." came out "Two men are playing
soccer in the field.", the name lost and a wrong fact in its place. As attention models have
done since Luong et al. (2015), the unknown word is copied from the source instead:

- where the model wrote [UNK] for it, if it learned to (``data.unknown_placeholders`` teaches
  it: names written the same on both sides of training pairs are read as [UNK] there);
- else in place of the stretch of the translation that looked mostly at it (by the model's
  attention, a maximum subarray as for HTML's inline elements: "... soccer in the Москва."),
  or where no stretch did, after the words that looked most at the source words before it.

Each unknown stretch of the source (consecutive [UNK] tokens with only spaces between them,
"Нижний Новгород") is copied once. Put in place of words, it leaves the punctuation at its
ends to theirs; written as [UNK], it keeps the punctuation its [UNK] was read with.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Optional

from seq2seq_cli.alignment import WordAttention, best_stretch, leading_punctuation, looked_at_most, word_weights

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class UnknownSpan:
    """A stretch of a source line that the model read as [UNK]: its text, and the source words
    (as ``seq2seq_cli.alignment.word_attention`` counts them) its [UNK] tokens are in."""

    text: str
    words: tuple[int, ...]
    tokens: tuple[int, ...] = ()  # where its [UNK] tokens are in the source ids


@dataclass(frozen=True)
class Copied:
    """A translation with the unknown source words copied in, and where each of its words
    comes from: a word of the model's translation (its index, from 0), or a copied one
    (``-1 - source word``). Origins None: the model's words one for one, only their letters
    rewritten (a constraint's phrase written as given, ``seq2seq_cli.constraints.as_written``)."""

    text: str
    origins: Optional[tuple[int, ...]] = None

    def alignment(self, pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The word alignment of ``text`` from ``pairs``, the model's translation's: each word
        linked as the word of the translation it is, a copied word to its source word."""
        if self.origins is None:
            return pairs
        source_of = {target: source for source, target in pairs}
        return [(-1 - origin if origin < 0 else source_of[origin], word)
                for word, origin in enumerate(self.origins) if origin < 0 or origin in source_of]

    def word_attention(self, rows: WordAttention, sources: int) -> WordAttention:
        """The word attention of ``text`` from ``rows``, the model's translation's: a copied
        word looks at its source word alone."""
        if self.origins is None:
            return rows
        return [(rows[origin] if origin < len(rows) else [0.0] * sources) if origin >= 0
                else [float(word == -1 - origin) for word in range(sources)] for origin in self.origins]


def copy_unknown(translation: str, attention: WordAttention, unknown: list[UnknownSpan],
                 written: Optional[dict[int, int]] = None) -> Copied:
    """``translation`` with each of ``unknown`` copied in. A span the model wrote as [UNK]
    (``written``: its index in ``unknown`` -> before which word of the translation) goes there;
    the others are placed by ``attention``: how much each space-separated word of the
    translation looked at each source word."""
    written = written or {}
    target_words = [match.span() for match in _WORD.finditer(translation)]
    count = len(target_words)
    # One row per word of the translation (else each word taken to look as far along the source
    # as it stands along the translation), one weight per source word.
    sources = max([len(row) for row in attention] + [word + 1 for span in unknown for word in span.words])
    attention = word_weights(attention, sources, count)
    totals = [sum(row) for row in attention]
    replaced: dict[int, tuple[int, UnknownSpan]] = {}  # first target word -> (last target word, span)
    # (before which target word, source order, span): a written one with its punctuation, which the
    # model wrote as part of the [UNK] as its tokenizer read it; one placed between words without.
    inserted: list[tuple[int, int, UnknownSpan]] = []
    for order, span in enumerate(unknown):
        if order in written:
            inserted.append((written[order], order, span))
            continue
        held = [sum(row[word] for word in span.words) for row in attention]
        gaps, position = [], 0  # the stretches of target words no copy has taken yet
        for first, (last, _) in sorted(replaced.items()):
            gaps.append((position, first - 1))
            position = last + 1
        gaps.append((position, count - 1))
        stretches = [best_stretch(held, totals, first, last) for first, last in gaps if first <= last]
        score, (first, last) = max(stretches, default=(-1.0, (0, 0)))
        if score > 0:  # a stretch looked at it more than at everything else: it translated it
            replaced[first] = (last, span)
        else:
            inserted.append((_insertion_point(span, attention, replaced), order, span))

    parts: list[str] = []
    origins: list[int] = []

    def copy(span: UnknownSpan, lead: str = "", trail: str = "", whole: bool = False) -> None:
        core = span.text if whole else _core(span.text)
        parts.append(lead + core + trail)
        words = core.split()
        # Word for word when it has as many words as it spans source words ("Нижний Новгород").
        origins.extend(-1 - (span.words[k] if len(words) == len(span.words) else span.words[0])
                       for k in range(len(words)))

    insertions = sorted(inserted)
    target = 0
    while target < count or insertions:
        while insertions and insertions[0][0] <= target:
            if parts:
                parts.append(" ")
            _, order, span = insertions.pop(0)
            copy(span, whole=order in written)
        if target >= count:
            break
        if parts:
            parts.append(translation[target_words[target - 1][1]:target_words[target][0]] if target else " ")
        if target in replaced:
            last, span = replaced[target]
            first_word = translation[slice(*target_words[target])]
            last_word = translation[slice(*target_words[last])]
            copy(span, first_word[:leading_punctuation(first_word)],
                 last_word[len(last_word) - leading_punctuation(last_word[::-1]):])
            target = last + 1
        else:
            parts.append(translation[slice(*target_words[target])])
            origins.append(target)
            target += 1
    return Copied("".join(parts), tuple(origins))


def _insertion_point(span: UnknownSpan, attention: WordAttention, replaced: dict[int, tuple[int, UnknownSpan]]
                     ) -> int:
    """Before which target word an unknown span no stretch translated goes: after the last one
    that looked most at a source word before it, and not inside a copy's stretch."""
    source_of = looked_at_most(attention) if attention and attention[0] else []
    point = max((target + 1 for target, source in enumerate(source_of) if source < span.words[0]), default=0)
    for first, (last, _) in replaced.items():
        if first < point <= last:
            point = last + 1
    return point


def _core(text: str) -> str:
    """``text`` without the punctuation at its ends (the translation's words bring their own),
    unless it is all punctuation."""
    start, stop = 0, len(text)
    while start < stop and unicodedata.category(text[start]).startswith("P"):
        start += 1
    while stop > start and unicodedata.category(text[stop - 1]).startswith("P"):
        stop -= 1
    return text[start:stop] if start < stop else text


def unknown_spans(text: str, offsets: list[tuple[int, int]], is_unknown: list[bool],
                  words: list[Optional[int]], first_token: int = 0) -> list[UnknownSpan]:
    """The unknown stretches of a source ``text`` from its tokens: each token's character
    ``offsets`` in ``text``, whether it is [UNK], and its source word (``words``); the first
    token is ``first_token`` in the source ids. Consecutive [UNK] tokens with nothing but
    spaces between them are one stretch."""
    spans: list[tuple[int, int, list[int], list[int]]] = []  # (start, stop, words, tokens)
    previous_unknown = False
    for token, ((start, stop), unknown, word) in enumerate(zip(offsets, is_unknown, words), first_token):
        if unknown and word is not None:
            if previous_unknown and not text[spans[-1][1]:start].strip():
                spans[-1] = (spans[-1][0], stop, spans[-1][2] + [word], spans[-1][3] + [token])
            else:
                spans.append((start, stop, [word], [token]))
        previous_unknown = unknown
    return [UnknownSpan(text[start:stop], tuple(dict.fromkeys(span_words)), tuple(tokens))
            for start, stop, span_words, tokens in spans]
