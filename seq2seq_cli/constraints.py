"""Lexical constraints: phrases a translation must contain (terminology, a name's spelling).

A constraint is a phrase of the target language, given as its ways of being written in tokens:
a vocabulary that splits at spaces only learns a word with the full stop on it ("bicycle.") as a
token of its own, so "bicycle" is met by the token "bicycle" or by "bicycle.". A translation
meets the constraint when the tokens of one of its ways follow one another somewhere in it.

Beam search meets them with dynamic beam allocation (Post & Vilar 2018; fairseq's
``--constraints``, Hu et al. 2019): besides its best extensions, each beam is offered the tokens
that advance a constraint, and the beams kept are shared out over "banks" by how many
constraint tokens they have in place, so a hypothesis that has just put a phrase in is not
crowded out by ones that have not, which score better until they too must. A hypothesis may
end only once it has met every constraint.

This module is the bookkeeping, in plain Python over token ids; ``decoding`` runs the search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

Phrase = Sequence[Sequence[int]]  # one constraint: its ways of being written, each a list of token ids


@dataclass(frozen=True)
class Constraints:
    """One sentence's phrases, and the tokens of its vocabulary that go on a word ("##en"): a
    phrase is met only where the word it ends on ends too ("Bruder" is not in "Brudern")."""

    phrases: Sequence[Phrase]
    continuation: frozenset[int] = frozenset()
    starts: frozenset[int] = field(init=False)  # the first tokens of the phrases' ways

    def __post_init__(self):
        object.__setattr__(self, "starts", frozenset(way[0] for phrase in self.phrases for way in phrase))


@dataclass(frozen=True)
class ConstraintState:
    """How far one hypothesis is: the constraints it has met; the one whose tokens it has just
    put in, met once the next token starts a word (``pending``); and the ways of the phrase it
    is in the middle of that its last tokens follow, as (constraint, way, tokens in place)."""

    met: frozenset[int] = frozenset()
    partial: frozenset[tuple[int, int, int]] = frozenset()
    pending: Optional[int] = None

    def tokens_met(self, constraints: Constraints) -> int:
        """The bank of the hypothesis: constraint tokens in place, a phrase begun counting too."""
        complete = self.met | ({self.pending} if self.pending is not None else set())
        return (sum(len(constraints.phrases[c][0]) for c in complete)
                + max((done for _, _, done in self.partial), default=0))

    def done(self, constraints: Constraints) -> bool:
        """Every constraint met: the hypothesis may end (``ended`` first)."""
        return len(self.met) == len(constraints.phrases)

    def ended(self) -> "ConstraintState":
        """The state at the end of the translation, which ends the word of a pending phrase."""
        return ConstraintState(self.met | {self.pending}) if self.pending is not None else self

    def advancing(self, constraints: Constraints) -> list[int]:
        """The tokens that would put one more constraint token in place: the next of the phrase
        begun, else the first of each phrase not yet met."""
        phrases = constraints.phrases
        if self.partial:
            return list(dict.fromkeys(phrases[c][way][done] for c, way, done in sorted(self.partial)))
        return list(dict.fromkeys(tokens[0] for c, phrase in enumerate(phrases) if c not in self.met
                                  and c != self.pending for tokens in phrase))

    def after(self, token: int, constraints: Constraints) -> "ConstraintState":
        """The state once ``token`` is appended. A phrase begun and not continued is dropped
        (its tokens stay in the translation, as ordinary words), and so is one just put in
        whose last word the token goes on; the token may begin another."""
        if self.pending is None and not self.partial and token not in constraints.starts:
            return self  # most tokens: nothing begun, nothing begins
        phrases = constraints.phrases
        starts_word = token not in constraints.continuation
        met = self.met | ({self.pending} if self.pending is not None and starts_word else set())
        going = {(c, way, done + 1) for c, way, done in self.partial if phrases[c][way][done] == token}
        if not going and starts_word:
            going = {(c, way, 1) for c, phrase in enumerate(phrases) if c not in met
                     for way, tokens in enumerate(phrase) if tokens[0] == token}
        complete = {c for c, way, done in going if done == len(phrases[c][way])}
        if complete:  # one phrase at a time: the first complete one waits for its word to end
            return ConstraintState(met, pending=min(complete))
        return ConstraintState(met, frozenset(going))


def allocate(banks: Sequence[int], scores: Sequence[float], count: int) -> list[int]:
    """Dynamic beam allocation: the indices of ``count`` candidates (of which ``banks[i]`` is how
    many constraint tokens candidate i has in place and ``scores[i]`` its log-probability), taken
    in turn from each bank, the fullest first, best score first within a bank: so the beams kept
    spread over every stage of meeting the constraints. A bank with no candidates left gives its
    turn to the next."""
    by_bank: dict[int, list[int]] = {}
    for index in sorted(range(len(scores)), key=lambda i: -scores[i]):
        by_bank.setdefault(banks[index], []).append(index)
    queues = [by_bank[bank] for bank in sorted(by_bank, reverse=True)]
    chosen: list[int] = []
    turn = 0
    while len(chosen) < count and any(queues):
        queue = queues[turn % len(queues)]
        if queue:
            chosen.append(queue.pop(0))
        turn += 1
    return chosen


def holds(tokens: Sequence[int], phrase: Phrase, continuation: frozenset[int] = frozenset()) -> bool:
    """Whether one of ``phrase``'s ways occurs in ``tokens``, its tokens one after another and
    the next token, if any, not one of ``continuation`` (going on its last word)."""
    tokens = list(tokens)
    for way in map(list, phrase):
        for start in range(len(tokens) - len(way) + 1):
            end = start + len(way)
            if tokens[start:end] == way and (end == len(tokens) or tokens[end] not in continuation):
                return True
    return False


# Marks a vocabulary that splits at spaces only may have learned as part of a word's last token.
TRAILING_PUNCTUATION = (".", ",", "!", "?", ":", ";")


def ways_of_writing(phrase_ids: list[int], with_marks: Sequence[list[int]]) -> list[list[int]]:
    """A phrase's ways of being written: its own tokens, and each of its encodings with a mark
    after it (``with_marks``) that does not start with those ("bicycle." read as one token, not
    as "bicycle" and "##."): the mark then comes with the phrase."""
    ways = [phrase_ids]
    for marked in with_marks:
        if marked[:len(phrase_ids)] != phrase_ids and marked not in ways:
            ways.append(marked)
    return ways
