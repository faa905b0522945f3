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

from typing import Callable, Optional, Sequence

import torch

# A token's word index, or None for a separator between sentences.
WordIndices = list[Optional[int]]


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
