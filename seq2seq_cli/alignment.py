"""Word alignment from attention: which source word each target word was translated from.

What ``s2s translate --alignment`` prints, as Marian's ``--alignment`` and fairseq's
``--print-alignment`` do for attention models: for each word of the translation, the source
word its first subword attended to most, the attention of the source word's subwords added
up. Words are the space-separated words of the source line and of the printed translation.

It reads the attention the model computed, so it is as good as that attention is at pointing
at the word being translated: on the toy corpus (benchmarks/README.md) 92% of the nouns,
adjectives, verbs and adverbs point at their source word; the rest mostly at a neighbour that
belongs to the same phrase (the particle of "looks at" for "sieht ... an", "because" for the
adjective before the comma that opens "weil"). A word aligner trained for the purpose does
better on real text; this costs nothing beyond the translation.
"""

from __future__ import annotations

import unicodedata
from typing import Callable, Optional, Sequence

import torch

# A token's word index, or None for a separator between sentences.
WordIndices = list[Optional[int]]
# The attention each word of a translation paid to each word of its source (one row per
# target word, one weight per source word: ``word_attention``'s rows as lists).
WordAttention = list[list[float]]


def word_alignment(attention: torch.Tensor, source_words: Sequence[Optional[int]],
                   target_words: Sequence[Optional[int]]) -> list[tuple[int, int]]:
    """(source word, target word) pairs, one for each target word, in target order.

    ``attention`` (target tokens + 1, source tokens + 1): a hypothesis' attention, with the
    final [SEP] row and column; ``source_words`` and ``target_words``: each token's word."""
    return [(int(weights.argmax()), word) for word, weights in word_attention(attention, source_words, target_words)]


def word_attention(attention: torch.Tensor, source_words: Sequence[Optional[int]],
                   target_words: Sequence[Optional[int]]) -> list[tuple[int, torch.Tensor]]:
    """Each target word (in order) and the attention its first subword paid to each source
    word, the attention of the word's subwords added up: (source words,)."""
    columns = [k for k, word in enumerate(source_words) if word is not None]
    if not columns:
        return []
    column_words = torch.tensor([source_words[k] for k in columns])
    count = int(column_words.max()) + 1
    rows, seen = [], set()
    for row, word in enumerate(target_words):
        if word is None or word in seen:  # a word's first subword speaks for it
            continue
        seen.add(word)
        rows.append((word, torch.zeros(count).index_add_(0, column_words, attention[row, columns].float())))
    return rows


def words_of_sentences(ids: list[int], separator: int, words_of: Callable[[list[int]], WordIndices],
                       spaced: bool = True) -> WordIndices:
    """Each token's word in a line of one or more sentences (``separator`` between them, as
    ``--split-sentences`` joins them): each sentence's words (``words_of``) counted on from the
    words before it; ``spaced``: sentences are joined by a space (else the last word of one and
    the first of the next are one word, as in Chinese or Japanese text)."""
    indices: WordIndices = []
    sentence: list[int] = []
    offset = 0

    def close() -> None:
        nonlocal offset
        words = words_of(sentence)
        indices.extend(None if word is None else word + offset for word in words)
        present = [word for word in words if word is not None]
        if present:
            offset += max(present) + 1 if spaced else max(present)

    for token in ids:
        if token == separator:
            close()
            indices.append(None)
            sentence = []
        else:
            sentence.append(token)
    close()
    return indices


def format_alignment(pairs: list[tuple[int, int]]) -> str:
    """Marian's and fast_align's notation: ``SOURCE-TARGET`` pairs separated by spaces."""
    return " ".join(f"{source}-{target}" for source, target in pairs)


def word_weights(attention: Optional[WordAttention], sources: int, targets: int) -> list[list[float]]:
    """``attention`` as (target words, source words), if it has a row for each target word and
    no more source words than there are; else as if each target word looked at the source
    word as far along the source as it is along the translation."""
    if attention is not None and len(attention) == targets and all(len(row) <= sources for row in attention):
        return [list(row) + [0.0] * (sources - len(row)) for row in attention]
    return [[float(source == target * sources // targets) for source in range(sources)] for target in range(targets)]


def looked_at_most(weights: list[list[float]]) -> list[int]:
    """The source word each target word looked at most."""
    return [max(range(len(row)), key=row.__getitem__) for row in weights]


def articles_look_back(weights: list[list[float]]) -> list[list[float]]:
    """``weights`` with each article's look moved from its noun to the word before it.

    An attention decoder writing an article looks ahead at the noun it agrees with ("Der" at
    "teacher" in "The teacher" -> "Der Lehrer"), so the source's own article draws no target
    word. A target word is taken for such an article when it looks most at the source word the
    next target word looks at most, and the source word before that one draws no target word:
    it then looks at that word alone."""
    most = looked_at_most(weights)
    drawn = set(most)
    refined = [list(row) for row in weights]
    for target in range(len(weights) - 1):
        source = most[target]
        first_of_run = target == 0 or most[target - 1] != source
        if first_of_run and most[target + 1] == source and source > 0 and source - 1 not in drawn:
            refined[target] = [float(word == source - 1) for word in range(len(weights[target]))]
    return refined


def best_stretch(held: list[float], totals: list[float], first: int, last: int) -> tuple[float, tuple[int, int]]:
    """The stretch of target words ``first`` to ``last`` whose look at an element's words
    (``held``) beats their look elsewhere by the most, added up (a maximum subarray); if none
    does, the one word that looked at them the most. (score, (first word, last word))."""
    best, best_span = float("-inf"), (first, first)
    total, start = 0.0, first
    for target in range(first, last + 1):
        gain = 2 * held[target] - totals[target]  # at the element's words minus elsewhere
        if total <= 0:
            total, start = 0.0, target
        total += gain
        if total > best:
            best, best_span = total, (start, target)
    if best > 0:
        return best, best_span
    most = max(range(first, last + 1), key=held.__getitem__)
    return held[most] - 1, (most, most)  # below any stretch that wins, above nothing looked at: > -1


def leading_punctuation(word: str) -> int:
    """How many punctuation marks ``word`` starts with, short of all of it."""
    count = 0
    while count < len(word) - 1 and unicodedata.category(word[count]).startswith("P"):
        count += 1
    return count
