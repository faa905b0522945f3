"""Sentence segmentation: a paragraph is translated one sentence at a time.

Models are trained on sentence pairs. A line holding a paragraph is read as one long source:
past ``data.max_len`` tokens it is cut, and well before that the decoder loses its place (four
Multi30k test sentences on one line came out as one made-up sentence). LibreTranslate and Argos
split text into sentences before translating it; with ``split_sentences`` s2s does the same,
with sentencex (Wikimedia's rule-based segmenter: abbreviations and punctuation of about 300
languages, offline), and joins the translations back into one line. A sentence still longer
than the model reads is cut into pieces that fit, best at the end of a clause, rather than
losing its end.
"""

from typing import Callable, Optional, Sequence

from sentencex import segment

from seq2seq_cli.tokenization import line_head, words_within

# Targets written without spaces between sentences.
_UNSPACED_LANGUAGES = {"zh", "ja", "th", "lo", "km", "my", "bo"}
# Characters that end a clause: a long sentence is best cut after one of them.
_CLAUSE_ENDS = set(",;:)]–—…、，；：")

Token = tuple[int, int, int]  # one subword of a text: its first and past-the-end characters, and its word's index


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


def fit_sentences(sentences: list[str], limit: int, tokenize: Callable[[Sequence[str]], list[list[Token]]]
                  ) -> list[str]:
    """``sentences`` with each one of more than ``limit`` tokens (as ``tokenize`` reads texts)
    cut into the fewest pieces of at most ``limit`` tokens, each cut between words, and of those
    cuts the ones that make pieces of even length, after a clause's end (a comma, a semicolon,
    ...) where one is near; inside a word only where one word is longer than ``limit``. No text
    is lost: the pieces joined with spaces are the sentence, up to the whitespace at the cuts."""
    fitted, heads = [], [line_head(sentence, limit) for sentence in sentences]
    for sentence, head, tokens in zip(sentences, heads, tokenize(heads)):
        fits = len(tokens) <= limit and len(head) == len(sentence)
        fitted.extend([sentence] if fits else _pieces(sentence, limit, tokenize))
    return fitted


# Characters read per token wanted (twice as many tokens as the limit): a typical token is 4
# to 5 characters long. A sentence read whole in that window, and of at most _PLANNED_PIECES
# times the limit in tokens, is cut where the whole is best cut; longer text (a document
# without sentence ends) a piece at a time, each as long as it can be.
_CHARACTERS_PER_TOKEN = 8
_PLANNED_PIECES = 8


def _pieces(text: str, limit: int, tokenize: Callable[[Sequence[str]], list[list[Token]]]) -> list[str]:
    """``text`` (over ``limit`` tokens) cut as ``fit_sentences`` says."""
    pieces, start = [], 0  # ``start``: the first character of the text left to cut
    while True:
        head, tokens = _head(text, start, limit, tokenize)
        whole = start + len(head) == len(text)
        if whole and len(tokens) <= limit:
            return pieces + [head.strip()]
        if whole and len(tokens) <= _PLANNED_PIECES * limit:
            cuts = _planned_cuts(head, tokens, limit)
            # The rest of a word cut in two reads as other tokens: plan again from there.
            inside_word = next((cut for cut in cuts if not _between_words(tokens, cut)), None)
            cuts = cuts + [len(tokens)] if inside_word is None else cuts[:cuts.index(inside_word) + 1]
        else:
            cuts = [_cut_near_limit(head, tokens, limit)]
        head_start = start  # the tokens' characters count from here
        for cut in cuts:
            end = head_start + tokens[cut][0] if cut < len(tokens) else len(text)
            pieces.append(text[start:end].strip())
            start = end
        if start == len(text):
            return pieces


def _head(text: str, start: int, limit: int, tokenize: Callable[[Sequence[str]], list[list[Token]]]
          ) -> tuple[str, list[Token]]:
    """A head of ``text[start:]`` and its tokens: whole words, more than ``limit`` tokens
    unless it is all the text left (and then all of it when that is not much more). Only a
    window of the text is read, so a document on one line is cut in time proportional to its
    length."""
    characters = 2 * _CHARACTERS_PER_TOKEN * limit
    while True:
        head = words_within(text[start:start + characters + 1], characters)  # the window's whole words
        (tokens,) = tokenize([head])
        if start + len(head) == len(text) or len(tokens) > limit:
            return head, tokens
        characters *= 4  # long words, or no whitespace in the window


def _clause_end(text: str, tokens: list[Token], cut: int) -> bool:
    """Whether the token before ``cut`` ends a clause."""
    return text[tokens[cut - 1][1] - 1] in _CLAUSE_ENDS


def _between_words(tokens: list[Token], cut: int) -> bool:
    return cut == len(tokens) or tokens[cut][2] != tokens[cut - 1][2]


def _planned_cuts(text: str, tokens: list[Token], limit: int) -> list[int]:
    """Where to cut ``tokens`` (the indices of the tokens that start pieces after the first):
    the fewest pieces, then the least cost, found by dynamic programming from the end. A
    piece's cost is its length squared (even pieces cost least) plus, unless it ends the text
    or a clause, (limit / 2) squared: a clause's end up to about a third of the limit away
    from the even cut still beats it."""
    count = len(tokens)
    best: list[tuple[int, float]] = [(0, 0.0)] * (count + 1)  # pieces and cost of tokens[start:]
    next_start = [count] * (count + 1)
    for start in range(count - 1, -1, -1):
        ends = [end for end in range(start + 1, min(start + limit, count) + 1) if _between_words(tokens, end)]
        best[start] = (count + 1, 0.0)
        for end in ends or [start + limit]:  # inside a word only where no word ends in reach
            penalty = 0 if end == count or _clause_end(text, tokens, end) else (limit / 2) ** 2
            pieces, cost = best[end]
            candidate = (pieces + 1, cost + (end - start) ** 2 + penalty)
            if candidate < best[start]:
                best[start], next_start[start] = candidate, end
    cuts, start = [], next_start[0]
    while start < count:
        cuts.append(start)
        start = next_start[start]
    return cuts


def _cut_near_limit(text: str, tokens: list[Token], limit: int) -> int:
    """Where to end the first piece of a long text: the index of the next piece's first token,
    between words as near the limit as can be, after a clause's end when one is within a
    quarter of the limit."""
    between_words = [cut for cut in range(1, limit + 1) if _between_words(tokens, cut)]
    if not between_words:
        return limit  # one word of more than ``limit`` tokens
    return min(between_words, key=lambda cut: limit - cut + (0 if _clause_end(text, tokens, cut) else limit / 4))
