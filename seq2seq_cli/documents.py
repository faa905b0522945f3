"""Texts with a layout: what of them is translated, and what comes back exactly as it was.

A text is cut into pieces, each either markup, kept as it is (HTML tags, comments and code;
a text file's line breaks and the spacing around its lines), or a run of text to translate.
The translations of the runs are then put back between the markup, so a page or a file
keeps its layout. ``s2s serve`` translates HTML (``format: html`` and .html files) and text
files this way; a text in a request is translated line by line (``text_lines``). HTML's
inline elements (``<b>``, ``<a href>``) do not end a run: a sentence is translated whole and
they are put back around the words of its translation that the model's attention links to
theirs (``Inline``). Office documents and e-books are ``seq2seq_cli.office``'s, cut into
pieces the same way.
"""

from __future__ import annotations

import bisect
import html
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol

from seq2seq_cli.alignment import (WordAttention, articles_look_back, best_stretch, leading_punctuation, looked_at_most,
                                    word_weights)

# (markup, "") for what is kept, (None, text) for a run of text to translate; (None, PlacedRun)
# for a run with markup inside it: HTML text with inline elements (Inline), an office
# paragraph's text that its runs cut into pieces (office.OfficeStretch).
Piece = tuple[Optional[str], "str | PlacedRun"]
# A run's translation, with its word attention where the run is an Inline one.
Rendering = str | tuple[str, Optional[WordAttention]]


# Markup kept exactly: comments, CDATA, tags, and whole elements whose content is code, not
# text to translate (a translated script would no longer run).
_CODE_ELEMENT = r"<(?P<code>script|style|code|kbd|samp)\b[^>]*>.*?</(?P=code)\s*>"
_MARKUP = re.compile(rf"<!--.*?-->|<!\[CDATA\[.*?\]\]>|{_CODE_ELEMENT}|<[^>]*>", re.S | re.I)
_CODE = re.compile(_CODE_ELEMENT, re.S | re.I)
_LINE_BREAK = re.compile(r"\r\n|\n|\r")
_TAG = re.compile(r"<(?P<end>/?)(?P<name>[A-Za-z][\w:.-]*)")
_TRANSLATE = re.compile(r"""\stranslate\s*=\s*["']?(?P<value>yes|no)\b""", re.I)
_NO_TRANSLATE_CLASS = re.compile(r"""\sclass\s*=\s*(?:"[^"]*|'[^']*|)\bnotranslate\b""", re.I)
# Elements that never have an end tag, nor anything inside.
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
# Elements that mark words inside a sentence (HTML's phrasing content, less code and forms):
# text with them in it is translated whole and they are put back around its translation's words.
_INLINE = frozenset("a abbr b bdi bdo big cite data del dfn em font i img ins mark q s small span strong sub sup "
                    "time tt u var wbr".split())
_WORD = re.compile(r"\S+")
# Code inside a sentence ("Run <code>ls -l</code> now."): kept whole, in the run.
_INLINE_CODE = frozenset({"code", "kbd", "samp"})
_MARKUP_ONLY = re.compile(r"<!--.*?-->|<[^>]*>", re.S)
# A run of text with markup inside (a ``PlacedRun``) of more words than this is
# translated as before them, piece by piece: placing markup costs time that grows with the
# square of a run's words, and a run's word attention takes memory that does too.
MAX_PLACED_WORDS = 1000
# The least attention a word of a translation pays to an element's words to be placed in it.
_LEAST_LOOK = 0.1


class PlacedRun(Protocol):
    """A run of text with markup inside it, translated whole and put back together around its
    translation by the attention each of its words paid (``Inline``, ``office.OfficeStretch``)."""

    @property
    def text(self) -> str:
        """What is translated: the run's text, markup left out, entities read as characters."""

    def translated(self, translation: str, attention: Optional[WordAttention], escape: bool = True) -> str:
        """The run with ``translation`` for its text and its markup put back."""


@dataclass(frozen=True)
class Inline:
    """A run of HTML text with inline elements in it (``Ein <b>Mann</b> fährt <a href=x>Rad</a>.``):
    its text (``Ein Mann fährt Rad.``) is translated whole, and each element is put back around
    the words of the translation that looked at the words it held, by the model's attention
    (``A <b>man</b> rides a <a href=x>bike</a>.``), so elements move as their words move. An
    element whose words no word of the translation looked at is kept, empty, where its words
    were; markup that is not an element around words (``<img>``, a tag not closed inside the
    run) stays between the words it stood between. Code and kept text (``translate="no"``) are
    read as part of the text and come back whole in place of the words that translate them."""

    original: str  # the HTML it was read from
    text: str  # its text to translate: the markup left out, entities read as characters
    # Each tag, where in ``text`` it stood, and for an element kept whole (code, translate="no")
    # where its text ends (else -1).
    markup: tuple[tuple[int, str, int], ...]

    @classmethod
    def of(cls, tokens: list[tuple[str, str]]) -> "Inline":
        """From ``html_pieces``' ("text", text), ("inline", tag) and ("kept", element) tokens."""
        text, markup = "", []
        for kind, token in tokens:
            if kind == "text":
                text += html.unescape(token)
            elif kind == "kept":
                markup.append((len(text), token, len(text) + len(_kept_text(token))))
                text += _kept_text(token)
            else:
                markup.append((len(text), token, -1))
        return cls("".join(token for _, token in tokens), text, tuple(markup))

    def translated(self, translation: str, attention: Optional[WordAttention], escape: bool = True) -> str:
        """The run in HTML with ``translation`` for its text, spaced as the text was, the elements
        placed by ``attention``: how much each space-separated word of the translation looked at
        each of the text's (``WordAttention``). Without it (or with one that does not fit) each
        word is taken to look at the word as far along the text as it is along the translation."""
        source_words = [match.span() for match in _WORD.finditer(self.text)]
        target_words = [match.span() for match in _WORD.finditer(translation)]
        weights = articles_look_back(word_weights(attention, len(source_words), len(target_words)))
        root = _Element("", "", 0, len(self.text), [], [], frozenset(range(len(source_words))))
        _nest(root, self.text, self.markup, source_words)
        source_of = looked_at_most(weights)
        _place(root, 0, len(target_words) - 1, weights, list(map(sum, weights)), source_of, source_words)
        parts: list[str] = []
        _render(root, 0, len(target_words) - 1, translation, target_words, escape, parts)
        lead = self.text[:len(self.text) - len(self.text.lstrip())]
        trail = self.text[len(self.text.rstrip()):]
        return lead + "".join(parts) + trail


@dataclass
class _Element:
    """An inline element of an ``Inline`` run: its tags, where in the text it starts and ends,
    its source words, and what it holds."""

    open: str
    close: str
    start: int
    end: int
    children: list["_Element"]
    points: list[tuple[int, str]]  # markup that stands between words: (where in the text, markup)
    words: frozenset[int] = frozenset()
    span: Optional[tuple[int, int]] = None  # the target words it is placed around
    # Kept whole (its ``open``): it stands in for the target words it is placed around, which
    # translate text that was not to be translated.
    kept: bool = False
    # Whether it holds no punctuation at its start or at its end (``"<b>Hallo</b>",``): then the
    # punctuation its translation's first or last word starts or ends with stays outside it.
    after_punctuation: bool = False
    before_punctuation: bool = False


def _nest(root: _Element, text: str, markup: tuple[tuple[int, str, int], ...], source_words: list[tuple[int, int]]
          ) -> None:
    """The elements of ``markup`` as a tree under ``root``: a start tag with its end tag is an
    element; the rest (a tag without an end, an end tag without a start) stands between words,
    and so does an element around no word, with everything inside it."""
    open_elements: list[tuple[_Element, int, str]] = [(root, -1, "")]  # (element, index of its start tag, name)
    tags = []  # (index of its start tag, index of its end tag, element) for each closed element
    for index, (offset, tag, kept_end) in enumerate(markup):
        match = _TAG.match(tag) if kept_end < 0 else None  # an element kept whole is no tag to pair
        name = match.group("name").lower() if match else ""
        if match and match.group("end"):
            if any(open_name == name for _, _, open_name in open_elements[1:]):
                while True:
                    element, start, open_name = open_elements.pop()
                    if open_name == name:
                        element.close, element.end = tag, offset
                        tags.append((start, index, element))
                        break
        elif match and name not in _VOID and not tag.endswith("/>"):
            open_elements.append((_Element(tag, "", offset, offset, [], []), index, name))
    closed = {start: (end, element) for start, end, element in tags}
    word_starts, word_ends = [start for start, _ in source_words], [stop for _, stop in source_words]
    parents = [root]  # the innermost closed element around each tag
    ends: list[int] = []
    index = 0
    while index < len(markup):
        while ends and index > ends[-1]:
            ends.pop()
            parents.pop()
        offset, tag, kept_end = markup[index]
        if kept_end >= 0:  # an element kept whole: around its words, or between words if it has none
            kept = _Element(tag, "", offset, kept_end, [], [], kept=True)
            kept.words = frozenset(range(bisect.bisect_right(word_ends, offset),
                                         bisect.bisect_left(word_starts, kept_end)))
            if kept.words:
                _set_punctuation(kept, text)
                parents[-1].children.append(kept)
            else:
                parents[-1].points.append((offset, tag))
            index += 1
            continue
        if index in closed:
            end, element = closed[index]
            # The source words it overlaps: those starting before its end and ending after its start.
            element.words = frozenset(range(bisect.bisect_right(word_ends, element.start),
                                            bisect.bisect_left(word_starts, element.end)))
            if element.words:
                _set_punctuation(element, text)
                parents[-1].children.append(element)
                parents.append(element)
                ends.append(end)
                index += 1
                continue
            parents[-1].points.append((offset, "".join(tag for _, tag, _ in markup[index:end + 1])))
            index = end + 1
            continue
        if not (ends and index == ends[-1]):  # an end tag of an element is its element's
            parents[-1].points.append((offset, tag))
        index += 1


def _set_punctuation(element: _Element, text: str) -> None:
    held = text[element.start:element.end].strip()
    element.after_punctuation = not unicodedata.category(held[0]).startswith("P")
    element.before_punctuation = not unicodedata.category(held[-1]).startswith("P")


def _place(element: _Element, low: int, high: int, weights: list[list[float]], totals: list[float],
           source_of: list[int], source_words: list[tuple[int, int]]) -> None:
    """Place ``element``'s children, each inside its parent (target words ``low`` to ``high``)
    and beside its siblings, around the stretch of target words that looked at its words more
    than at all others together, the most so (``best_stretch``); a child no target word looked
    at is a point. When all of the element's text is in its children (``<span class=a>Der
    Bäcker </span><span class=b>bringt</span>``, as word processors write HTML), so is all of
    its translation: a word no child took goes to a child beside it."""
    text_in_children = element.words <= frozenset().union(*(child.words for child in element.children))
    placed: list[tuple[int, int]] = []
    for child in list(element.children):
        gaps, position = [], low  # the stretches of target words no sibling holds yet
        for first, last in sorted(placed):
            gaps.append((position, first - 1))
            position = last + 1
        gaps.append((position, high))
        held = [sum(row[word] for word in child.words) for row in weights]  # each target word's look at it
        stretches = [best_stretch(held, totals, first, last) for first, last in gaps if first <= last]
        best = max(stretches, key=lambda stretch: stretch[0], default=None)
        # No target word looked at its words; or an element kept whole, which would replace
        # the words it is placed around, without a stretch looking mostly at its words.
        if best is None or best[0] < (0 if child.kept else _LEAST_LOOK - 1):
            element.children.remove(child)
            element.points.append((child.start, child.open + _all_markup(child) + child.close))
            continue
        child.span = best[1]
        placed.append(child.span)
    if text_in_children and element.children and not any(child.kept for child in element.children):
        _fill(sorted(element.children, key=lambda child: child.span), low, high, weights)
    for child in element.children:
        _place(child, *child.span, weights, totals, source_of, source_words)
    points = [(_point_position(offset, low, high, source_of, source_words), tag)
              for offset, tag in sorted(element.points, key=lambda point: point[0])]
    element.points = sorted(points, key=lambda point: point[0])  # stable: in the text's order where tied


def _fill(children: list[_Element], low: int, high: int, weights: list[list[float]]) -> None:
    """Widen the spans of ``children`` (in target order) to cover target words ``low`` to
    ``high``: the first from ``low``, the last to ``high``, and two neighbours split the words
    between them where those before the split look most at the first's words, those after at
    the second's."""
    children[0].span = (low, children[0].span[1])
    children[-1].span = (children[-1].span[0], high)
    for left, right in zip(children, children[1:]):
        end, start = left.span[1], right.span[0]
        if start - end <= 1:
            continue

        def looks(split: int) -> float:  # words end+1..split to the left child, the rest to the right one
            return (sum(weights[target][word] for target in range(end + 1, split + 1) for word in left.words)
                    + sum(weights[target][word] for target in range(split + 1, start) for word in right.words))

        split = max(range(end, start), key=looks)
        left.span, right.span = (left.span[0], split), (split + 1, right.span[1])


def _all_markup(element: _Element) -> str:
    """The markup inside an element, in order (its children's and its points'), for one kept whole."""
    inner = [(child.start, child.open + _all_markup(child) + child.close) for child in element.children]
    return "".join(tag for _, tag in sorted(inner + element.points, key=lambda item: item[0]))


def _point_position(offset: int, low: int, high: int, source_of: list[int], source_words: list[tuple[int, int]]
                    ) -> int:
    """Before which target word (``low`` to ``high`` + 1) markup at ``offset`` in the text goes:
    after the last one that looked most at a source word before it."""
    before = sum(stop <= offset for _, stop in source_words)  # source words wholly before it
    return max((target + 1 for target in range(low, high + 1) if source_of[target] < before), default=low)


def _render(element: _Element, low: int, high: int, translation: str, target_words: list[tuple[int, int]],
            escape: bool, parts: list[str]) -> None:
    """Write target words ``low`` to ``high``, with ``element``'s children and points among them
    (a point that falls inside a child goes after it)."""
    children = {child.span[0]: child for child in element.children}
    points = iter(element.points + [(high + 2, "")])
    point = next(points)
    target = low
    while target <= high:
        while point[0] <= target:
            # Text kept whole that no word took the place of stands between words: spaced.
            parts.append(point[1] + (" " if _kept_text(point[1]).strip() else ""))
            point = next(points)
        child = children.get(target)
        if child is not None:
            first, last = child.span
            edges = target_words[first], target_words[last]
            start, stop = edges[0][0], edges[1][1]
            lead = leading_punctuation(translation[slice(*edges[0])]) if child.after_punctuation else 0
            trail = leading_punctuation(translation[slice(*edges[1])][::-1]) if child.before_punctuation else 0
            if first == last and lead + trail >= stop - start:  # the word is punctuation: all of it inside
                lead = trail = 0
            parts.append(escaped(translation[start:start + lead], escape) + child.open)
            target_words[first] = (start + lead, target_words[first][1])
            target_words[last] = (target_words[last][0], stop - trail)
            if not child.kept:  # an element kept whole stands in for its words' translation
                _render(child, *child.span, translation, target_words, escape, parts)
            target_words[first], target_words[last] = edges
            parts.append(child.close + escaped(translation[stop - trail:stop], escape))
            target = last
        else:
            parts.append(escaped(translation[slice(*target_words[target])], escape))
        if target < high:
            parts.append(translation[target_words[target][1]:target_words[target + 1][0]])
        target += 1
    while point[0] <= high + 1:
        parts.append((" " if _kept_text(point[1]).strip() and parts else "") + point[1])
        point = next(points)


def escaped(text: str, escape: bool) -> str:
    """``text`` HTML-escaped (quotes left as they are), if ``escape``."""
    return html.escape(text, quote=False) if escape else text


def text_lines(text: str) -> list[Piece]:
    """A text of a request: each line (empty ones too) a run to translate, lines joined by "\\n"."""
    pieces: list[Piece] = []
    for number, line in enumerate(text.split("\n")):
        if number:
            pieces.append(("\n", ""))
        pieces.append((None, line))
    return pieces


def html_pieces(text: str) -> list[Piece]:
    """HTML: markup (kept exactly) and the text runs between it; the text of an element marked
    ``translate="no"`` (HTML's attribute) or ``class="notranslate"`` is kept too, to the end of
    the element, unless an element inside it says ``translate="yes"``. Text with inline elements
    in it (``Ein <b>Mann</b> fährt <a href=..>Rad</a>.``) is one run, an ``Inline``: a sentence
    is translated whole, not word group by word group; code or kept text inside a sentence
    (``Run <code>ls</code> now.``) is part of it too, read with it and kept as it is."""
    tokens: list[tuple[str, str]] = []  # ("text", text to translate), ("inline", tag) or ("markup", kept)
    open_elements: list[tuple[str, bool]] = []  # (name, whether its text is kept as it is), outermost first
    for markup, piece in _split(text, _MARKUP, whitespace_is_text=True):
        kept = bool(open_elements) and open_elements[-1][1]
        if markup is None:
            tokens.append(("markup" if kept else "text", piece))
            continue
        tag = _TAG.match(markup)
        if tag is None or _CODE.fullmatch(markup):  # a comment, a declaration, or code kept whole
            code_in_text = tag is not None and tag.group("name").lower() in _INLINE_CODE and not kept
            tokens.append(("kept" if code_in_text else "markup", markup))
            continue
        name, kept_after = tag.group("name").lower(), kept
        if tag.group("end"):
            if any(open_name == name for open_name, _ in open_elements):  # else a stray end tag
                while open_elements.pop()[0] != name:
                    pass
                kept_after = bool(open_elements) and open_elements[-1][1]
        elif name not in _VOID and not markup.endswith("/>"):
            says = _says_kept(markup)
            kept_after = kept if says is None else says
            open_elements.append((name, kept_after))
        # An inline element that starts or ends text kept as it is is kept whole inside a run
        # (_kept_elements); any other ends the run of text, as a block does.
        if name not in _INLINE or kept == kept_after:
            kind = "inline" if name in _INLINE and not kept else "markup"
        elif kept_after and not tag.group("end"):
            kind = "kept-start"  # <span translate="no">
        elif kept and tag.group("end"):
            kind = "kept-end"  # its </span>
        else:
            kind = "markup"  # <b translate="yes"> inside kept text
        tokens.append((kind, markup))
    return _runs_of(_kept_elements(tokens))


def _says_kept(tag: str) -> Optional[bool]:
    """Whether a start tag says its element's text is kept as it is (``translate="no"``, the
    ``notranslate`` class) or translated (``translate="yes"``); None if it says neither."""
    says = _TRANSLATE.search(tag)
    if says:
        return says.group("value").lower() == "no"
    return True if _NO_TRANSLATE_CLASS.search(tag) else None


def _kept_elements(tokens: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``tokens`` with each inline element whose text is kept (``<span translate="no">Brand
    X</span>``) made one ("kept", element) token, its markup and text as they are; one that is
    not closed where it started (so no run can hold it) stays markup."""
    merged: list[tuple[str, str]] = []
    start: Optional[int] = None
    for kind, token in tokens:
        if kind == "kept-start":
            start = len(merged)
        elif kind == "kept-end" and start is not None and all(k == "markup" for k, _ in merged[start + 1:]):
            merged[start:] = [("kept", "".join(t for _, t in merged[start:]) + token)]
            start = None
            continue
        merged.append((kind, token))
    return [("markup", token) if kind in ("kept-start", "kept-end") else (kind, token) for kind, token in merged]


def _kept_text(element: str) -> str:
    """The text of a kept element, as the model reads it: its markup left out, entities read."""
    return html.unescape(_MARKUP_ONLY.sub("", element))


def _runs_of(tokens: list[tuple[str, str]]) -> list[Piece]:
    """Pieces from ``html_pieces``' tokens: text, inline tags and kept inline elements between
    markup are one ``Inline`` run when two or more stretches of text make it up, else as they are."""
    pieces: list[Piece] = []
    start = 0
    while start < len(tokens):
        end = start
        while end < len(tokens) and tokens[end][0] != "markup":
            end += 1
        if end == start:
            pieces.append((tokens[start][1], ""))
            start += 1
            continue
        stretch = tokens[start:end]
        texts = [token if kind == "text" else _kept_text(token) for kind, token in stretch if kind in ("text", "kept")]
        words = sum(len(text.split()) for text in texts)
        translatable = any(kind == "text" and token.strip() for kind, token in stretch)
        if translatable and sum(bool(text.strip()) for text in texts) > 1 and words <= MAX_PLACED_WORDS:
            pieces.append((None, Inline.of(stretch)))
        else:
            pieces.extend((token, "") if kind != "text" or not token.strip() else (None, token)
                          for kind, token in stretch)
        start = end
    return pieces


def _with_attention(rendering: Rendering) -> tuple[str, Optional[WordAttention]]:
    return (rendering, None) if isinstance(rendering, str) else rendering


def text_file_pieces(text: str) -> list[Piece]:
    """A text file: its line breaks (\\n, \\r\\n or \\r) kept, each line a run to translate."""
    return _split(text, _LINE_BREAK)


def _split(text: str, markup: re.Pattern, whitespace_is_text: bool = False) -> list[Piece]:
    pieces: list[Piece] = []

    def add_text(part: str) -> None:
        pieces.append((part, "") if not part.strip() and not whitespace_is_text else (None, part))

    position = 0
    for match in markup.finditer(text):
        if match.start() > position:
            add_text(text[position:match.start()])
        pieces.append((match.group(), ""))
        position = match.end()
    if position < len(text):
        add_text(text[position:])
    return pieces


def runs(pieces: list[Piece], html_entities: bool = False) -> list[str]:
    """The runs of text to translate, in order; ``html_entities``: an entity (``&amp;``) read as
    the character it stands for, as ``reassemble(escape=True)`` writes it back."""
    return [text.text if not isinstance(text, str) else html.unescape(text) if html_entities else text
            for markup, text in pieces if markup is None]


def has_inline_markup(pieces: list[Piece]) -> bool:
    """Whether a run of ``pieces`` has markup inside it (a ``PlacedRun``): its translations
    need their word attention to put the markup back."""
    return any(markup is None and not isinstance(text, str) for markup, text in pieces)


def reassemble(pieces: list[Piece], translations: Iterator[list[Rendering]], alternatives: int,
               escape: bool = False, keep_spacing: bool = False) -> tuple[str, list[str]]:
    """The text translated, and ``alternatives`` other versions of it: each run replaced by the
    next of ``translations`` (a run's n-best list, best first; its last stands in where it is
    shorter; a translation of a ``PlacedRun`` with its word attention, ``(text, attention)``),
    with the markup between. ``escape``: translations are HTML-escaped; ``keep_spacing``: the
    whitespace around a run is kept around its translation."""
    versions: list[list[str]] = [[] for _ in range(alternatives + 1)]
    for markup, piece in pieces:
        if markup is not None:
            for version in versions:
                version.append(markup)
            continue
        texts = next(translations)
        for index, version in enumerate(versions):
            translation, attention = _with_attention(texts[min(index, len(texts) - 1)])
            if not isinstance(piece, str):  # a PlacedRun
                version.append(piece.translated(translation, attention, escape))
                continue
            if escape:
                translation = html.escape(translation, quote=False)
            lead, trail = piece[: len(piece) - len(piece.lstrip())], piece[len(piece.rstrip()):]
            version.append(lead + translation + trail if keep_spacing else translation)
    joined = ["".join(version) for version in versions]
    return joined[0], joined[1:]


class TextFile:
    """A UTF-8 text or HTML file, with ``runs`` and ``translated`` as ``office.OfficeDocument`` has them:
    each line (``text_file_pieces``) or run of HTML text (``html_pieces``) translated, its line
    ends, spacing and markup kept. ValueError if it is not UTF-8."""

    def __init__(self, data: bytes, is_html: bool):
        self.characters = len(text := decode_text_file(data))  # how long it is, as a limit counts it
        self._html = is_html
        self._pieces = html_pieces(text) if is_html else text_file_pieces(text)
        self.inline_markup = has_inline_markup(self._pieces)  # its translations need their word attention

    def runs(self) -> list[str]:
        return runs(self._pieces, html_entities=self._html)

    def translated(self, translations: Iterator[list[Rendering]], languages: Optional[tuple[str, str]] = None
                   ) -> bytes:
        text = reassemble(self._pieces, translations, 0, escape=self._html, keep_spacing=True)[0]
        return (relabel_languages(text, *languages, is_html=True) if languages and self._html else text).encode("utf-8")


# The region a language is written for, where a format asks for one (Word's w:val="en-US",
# ODF's fo:country): a source's region says nothing of the target's.
_USUAL_REGION = {"ar": "SA", "cs": "CZ", "da": "DK", "de": "DE", "el": "GR", "en": "US", "es": "ES", "fi": "FI",
                 "fr": "FR", "he": "IL", "hi": "IN", "hu": "HU", "it": "IT", "ja": "JP", "ko": "KR", "nl": "NL",
                 "nb": "NO", "pl": "PL", "pt": "PT", "ro": "RO", "ru": "RU", "sv": "SE", "tr": "TR", "uk": "UA",
                 "zh": "CN"}
_ANY_TAG = re.compile(r"<[A-Za-z][^>]*>")
_LANGUAGE_ATTRIBUTE = re.compile(r"""(?P<name>\s(?:xml:lang|lang|w:val|fo:language))(?P<equals>\s*=\s*)"""
                                 r"""(?P<quote>["'])(?P<value>[^"']*)(?P=quote)""")
_COUNTRY = re.compile(r"""(\sfo:country\s*=\s*)(["'])[^"']*\2""")
_DC_LANGUAGE = re.compile(r"(<dc:language\b[^>]*>)([^<]*)(</dc:language>)")


def relabel_languages(markup: str, source: str, target: str, is_html: bool = False) -> str:
    """``markup`` with each declaration of the source language made the target's: HTML's and
    XML's ``lang``/``xml:lang`` (and PowerPoint's ``lang``), Word's ``<w:lang w:val>``,
    OpenDocument's ``fo:language`` (with its ``fo:country``) and ``<dc:language>``, so spelling,
    hyphenation and screen readers take the translation for what it is. Other languages'
    declarations are kept, and so is the declaration of an element marked ``translate="no"``
    (its text was not translated). A value with a region gets the target's usual one ("de-DE"
    to "en-US"). ``is_html``: comments, CDATA and code (a script) are left as they are."""

    def relabeled(value: str) -> Optional[str]:
        parts = re.split(r"[-_]", value.strip())
        if parts[0].lower() != source.lower():
            return None
        region = _USUAL_REGION.get(target.lower())
        return f"{target}-{region}" if len(parts) > 1 and region else target

    def tag(match: re.Match) -> str:
        text = match.group()
        if not text[1:2].isalpha() or is_html and _CODE.fullmatch(text):
            return text
        if _says_kept(text):
            return text
        is_word_lang = text.startswith(("<w:lang", "<w:themeFontLang"))
        changed = False

        def attribute(found: re.Match) -> str:
            nonlocal changed
            if found.group("name").strip() == "w:val" and not is_word_lang:
                return found.group()
            value = relabeled(found.group("value"))
            if value is None:
                return found.group()
            changed = True
            if found.group("name").strip() == "fo:language":
                value = target
            return f'{found.group("name")}{found.group("equals")}{found.group("quote")}{value}{found.group("quote")}'

        text = _LANGUAGE_ATTRIBUTE.sub(attribute, text)
        if changed and "fo:country" in text:
            text = _COUNTRY.sub(lambda found: f'{found.group(1)}{found.group(2)}'
                                f'{_USUAL_REGION.get(target.lower(), "none")}{found.group(2)}', text)
        return text

    markup = (_MARKUP if is_html else _ANY_TAG).sub(tag, markup)
    return _DC_LANGUAGE.sub(lambda found: found.group(1) + (relabeled(found.group(2)) or found.group(2))
                            + found.group(3), markup)


def decode_text_file(data: bytes) -> str:
    """A file's bytes as text: UTF-8, a byte-order mark dropped; ValueError if it is not."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text (byte {err.start} is not UTF-8)") from None
