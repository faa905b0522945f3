"""Lexical constraints: phrases a translation must contain (terminology, a name's spelling).

A constraint is a phrase of the target language, given as its ways of being written in tokens:
a vocabulary that splits at spaces only learns a word with the full stop on it ("bicycle.") as a
token of its own, so "bicycle" is met by the token "bicycle" or by "bicycle.". A translation
meets the constraint when the tokens of one of its ways follow one another somewhere in it. A
phrase in lower case that begins the translation is written capitalized, as sentences are
("Kids are playing." holds "kids", "kids are playing." does not): its ways so written
(``Constraints.opening``) count only there, and its others only elsewhere.

Beam search meets them with dynamic beam allocation (Post & Vilar 2018; fairseq's
``--constraints``, Hu et al. 2019): besides its best extensions, each beam is offered the tokens
that advance a constraint, and the beams kept are shared out over "banks" by how many
constraint tokens they have in place, so a hypothesis that has just put a phrase in is not
crowded out by ones that have not, which score better until they too must. A hypothesis may
end only once it has met every constraint.

This module is the bookkeeping: a hypothesis's state in plain Python over token ids, worked out
once per distinct state of a sentence (``StateTable``), and the allocation over tensors of all
the sentences' candidates at once; ``decoding`` runs the search.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

Phrase = Sequence[Sequence[int]]  # one constraint: its ways of being written, each a list of token ids


@dataclass(frozen=True)
class Constraints:
    """One sentence's phrases, and the tokens of its vocabulary that go on a word ("##en"): a
    phrase is met only where the word it ends on ends too ("Bruder" is not in "Brudern")."""

    phrases: Sequence[Phrase]
    continuation: frozenset[int] = frozenset()
    opening: frozenset[tuple[int, int]] = frozenset()  # (phrase, way): the ways met where the translation begins
    starts: frozenset[int] = field(init=False)  # the first tokens of the phrases' ways met anywhere
    opening_starts: frozenset[int] = field(init=False)  # and of those met where the translation begins

    def __post_init__(self):
        firsts = [((c, way) in self.opening, tokens[0]) for c, phrase in enumerate(self.phrases)
                  for way, tokens in enumerate(phrase)]
        object.__setattr__(self, "starts", frozenset(token for opening, token in firsts if not opening))
        object.__setattr__(self, "opening_starts", frozenset(token for _, token in firsts))

    def ways_from(self, c: int, opening: bool) -> list[int]:
        """The ways phrase ``c`` may begin with where the translation begins (``opening``) or
        elsewhere: its ways of ``opening`` there and its others elsewhere, where it has both."""
        ways = [way for way in range(len(self.phrases[c])) if ((c, way) in self.opening) == opening]
        return ways or list(range(len(self.phrases[c])))

    def held(self, tokens: Sequence[int]) -> list[bool]:
        """Whether ``tokens`` (a translation) holds each phrase (``holds``), beginning it with
        ``ways_from(c, True)`` or further on with ``ways_from(c, False)``."""
        def phrase_held(c: int) -> bool:
            phrase, first, further = self.phrases[c], self.ways_from(c, True), self.ways_from(c, False)
            if first == further:
                return holds(tokens, phrase, self.continuation)
            return (holds(tokens, [phrase[way] for way in first], self.continuation, range(1))
                    or holds(tokens, [phrase[way] for way in further], self.continuation, range(1, len(tokens))))
        return [phrase_held(c) for c in range(len(self.phrases))]


@dataclass(frozen=True)
class ConstraintState:
    """How far one hypothesis is: the constraints it has met; the one whose tokens it has just
    put in, met once the next token starts a word (``pending``); the ways of the phrase it
    is in the middle of that its last tokens follow, as (constraint, way, tokens in place); and
    whether it has no tokens yet (``opening``: a search starts there), where a phrase begins
    with its ways of ``Constraints.opening``."""

    met: frozenset[int] = frozenset()
    partial: frozenset[tuple[int, int, int]] = frozenset()
    pending: Optional[int] = None
    opening: bool = False

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
        return list(dict.fromkeys(phrases[c][way][0] for c in range(len(phrases)) if c not in self.met
                                  and c != self.pending for way in constraints.ways_from(c, self.opening)))

    def after(self, token: int, constraints: Constraints) -> "ConstraintState":
        """The state once ``token`` is appended. A phrase begun and not continued is dropped
        (its tokens stay in the translation, as ordinary words), and so is one just put in
        whose last word the token goes on; the token may begin another."""
        if self.pending is None and not self.partial and not self.opening and token not in constraints.starts:
            return self  # most tokens: nothing begun, nothing begins
        phrases = constraints.phrases
        starts_word = token not in constraints.continuation
        met = self.met | ({self.pending} if self.pending is not None and starts_word else set())
        going = {(c, way, done + 1) for c, way, done in self.partial if phrases[c][way][done] == token}
        if not going and starts_word:
            going = {(c, way, 1) for c in range(len(phrases)) if c not in met
                     for way in constraints.ways_from(c, self.opening) if phrases[c][way][0] == token}
        complete = {c for c, way, done in going if done == len(phrases[c][way])}
        if complete:  # one phrase at a time: the first complete one waits for its word to end
            return ConstraintState(met, pending=min(complete))
        return ConstraintState(met, frozenset(going))


@dataclass(frozen=True)
class StateSummary:
    """What one state means for the search, for every token at once: most tokens (those that are
    neither a phrase's first nor the next of the phrase begun) lead to one of two banks, by
    whether they start a word or go on one; ``special`` are the others, whose state ``after``
    works out. ``advancing`` are the tokens each beam in this state is offered."""

    bank_starting_word: int
    bank_going_on: int
    bank_ended: int  # the bank of the translation ending here
    may_end: bool
    advancing: list[int]
    special: list[int]


class StateTable:
    """One sentence's constraints, and what each of its hypotheses' states leads to, each worked
    out once: a search step asks about every beam and every candidate token, and most share a
    handful of states (a token that touches no phrase leaves the state as it was)."""

    def __init__(self, constraints: Constraints):
        self.constraints = constraints
        self._summaries: dict[ConstraintState, StateSummary] = {}
        self._after: dict[tuple[ConstraintState, int], tuple[ConstraintState, int]] = {}

    def summary(self, state: ConstraintState) -> StateSummary:
        found = self._summaries.get(state)
        if found is None:
            phrases = self.constraints.phrases
            met = sum(len(phrases[c][0]) for c in state.met)
            ended = state.ended()
            # A token that is no phrase's next drops a phrase begun, and ends the word of one
            # just put in (met) unless it goes on that word (dropped): see ``after``.
            found = StateSummary(
                bank_starting_word=met + (len(phrases[state.pending][0]) if state.pending is not None else 0),
                bank_going_on=met, bank_ended=ended.tokens_met(self.constraints),
                may_end=ended.done(self.constraints), advancing=state.advancing(self.constraints),
                special=sorted((self.constraints.opening_starts if state.opening else self.constraints.starts)
                               | {phrases[c][way][done] for c, way, done in state.partial}))
            self._summaries[state] = found
        return found

    def after(self, state: ConstraintState, token: int) -> tuple[ConstraintState, int]:
        """``state.after(token)`` and its bank."""
        found = self._after.get((state, token))
        if found is None:
            reached = state.after(token, self.constraints)
            found = self._after[state, token] = (reached, reached.tokens_met(self.constraints))
        return found


def allocate(banks: torch.Tensor, scores: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic beam allocation for each row of candidates: of the candidates in row r,
    ``banks[r, i]`` is how many constraint tokens candidate i has in place and ``scores[r, i]``
    its log-probability (-inf: no candidate). The ``count`` taken are taken in turn from each
    bank, the fullest first, best score first within a bank, so the beams kept spread over
    every stage of meeting the constraints; a bank with none left gives its turn to the next.

    Returns their indices (R, count), in the order taken, and whether each is a candidate (a row
    with fewer than ``count`` fills up with others). Taking in turn is ordering by (place in its
    bank, fullness of the bank), which a sort does for all rows at once."""
    rows, width = scores.shape
    count = min(count, width)
    by_score = scores.argsort(dim=1, descending=True, stable=True)  # (R, M)
    sorted_banks = banks.gather(1, by_score)
    # Each candidate's place in its bank: its position once grouped by bank (best first within
    # one), less where its bank's group begins.
    grouped_banks, grouped = (sorted_banks * width + torch.arange(width, device=scores.device)).sort(dim=1)
    grouped_banks = grouped_banks // width
    places = torch.arange(width, device=scores.device) - torch.searchsorted(grouped_banks, grouped_banks)
    place = torch.empty_like(places).scatter_(1, grouped, places)  # back in score order
    fullest = int(banks.max()) if banks.numel() else 0
    is_candidate = scores.gather(1, by_score) > float("-inf")
    turn = (place * (fullest + 1) + (fullest - sorted_banks)).masked_fill(~is_candidate, (width + 1) * (fullest + 1))
    taken = turn.topk(count, dim=1, largest=False).indices  # ascending: the order taken
    return by_score.gather(1, taken), is_candidate.gather(1, taken)


def holds(tokens: Sequence[int], phrase: Phrase, continuation: frozenset[int] = frozenset(),
          starts: Optional[range] = None) -> bool:
    """Whether one of ``phrase``'s ways occurs in ``tokens`` (beginning at one of ``starts``, if
    given), its tokens one after another and the next token, if any, not one of
    ``continuation`` (going on its last word)."""
    tokens = list(tokens)
    for way in map(list, phrase):
        for start in range(len(tokens) - len(way) + 1) if starts is None else starts:
            end = start + len(way)
            if end <= len(tokens) and tokens[start:end] == way and (end == len(tokens) or tokens[end] not in continuation):
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


def split_line(line: str) -> tuple[str, list[str]]:
    """A line of constrained input, ``SOURCE<TAB>PHRASE<TAB>PHRASE...`` (fairseq's format): the
    source and its phrases, each without spaces at its ends, empty ones dropped."""
    source, *phrases = line.split("\t")
    return source, [phrase.strip() for phrase in phrases if phrase.strip()]


def whole_words(alternatives: str) -> re.Pattern:
    """``alternatives`` (a regular expression) matched only as whole words: no letter or digit
    goes on at either end ("Bruder" is not in "Brudern"; "bicycle" is in "a bicycle.")."""
    return re.compile(r"(?<!\w)(?:" + alternatives + r")(?!\w)")


def as_written(text: str, renderings: Sequence[tuple[str, str]]) -> str:
    """``text`` with each phrase that the vocabulary writes otherwise written as given: for each
    (rendering, phrase), the rendering ("Zoe" for "Zoë", the vocabulary spelling it with a
    look-alike letter; "cyclist" for "Cyclist", a lowercasing one) wherever it stands as whole
    words. Both have the same words, so the translation's words stay where they were."""
    for rendered, written in renderings:
        text = whole_words(re.escape(rendered)).sub(lambda _: written, text)
    return text


# Where a sentence begins: at the start of the text, after a sentence's end and a space, or after
# an opening quote or bracket. A line and the sentences it is split into agree on it.
SENTENCE_STARTS = re.compile(r"(?:(?<![\s\S])|(?<=[.!?…]\s)|(?<=[\"'„“‘«‹(\[¿¡]))(?=\w)")


def capitalized(term: str) -> Optional[str]:
    """``term`` as it begins a sentence ("Kids" for "kids"), where it is written in lower case;
    None for a term with a capital ("iPhone", "Berlin") or whose first letter has none."""
    first = term[0].upper()
    return first + term[1:] if term == term.lower() and len(first) == 1 and first != term[0] else None


def held_in(text: str, phrase: str) -> bool:
    """Whether a translation holds ``phrase`` as written and as whole words (``whole_words``),
    or capitalized where a sentence begins (``capitalized``, ``SENTENCE_STARTS``); accents
    written composed or not alike (Unicode NFC, as the tokenizer reads them)."""
    text, phrase = unicodedata.normalize("NFC", text), unicodedata.normalize("NFC", phrase)
    if whole_words(re.escape(phrase)).search(text) is not None:
        return True
    capital = capitalized(phrase)
    pattern = whole_words(re.escape(capital)) if capital else None
    return pattern is not None and any(pattern.match(text, start.start()) for start in SENTENCE_STARTS.finditer(text))
