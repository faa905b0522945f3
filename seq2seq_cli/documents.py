"""Texts with a layout: what of them is translated, and what comes back exactly as it was.

A text is cut into pieces, each either markup, kept as it is (HTML tags, comments and code;
a text file's line breaks and the spacing around its lines), or a run of text to translate.
The translations of the runs are then put back between the markup, so a page or a file
keeps its layout. ``s2s serve`` translates HTML (``format: html`` and .html files) and text
files this way; a text in a request is translated line by line (``text_lines``). HTML's
inline elements (``<b>``, ``<a href>``) do not end a run: a sentence is translated whole and
they are put back around the words of its translation that the model's attention links to
theirs (``Inline``). A Word or OpenDocument file (``OfficeDocument``) is a zip of XML parts,
whose paragraphs' text is translated so; an EPUB e-book is a zip of XHTML documents, each
translated as HTML is.
"""

from __future__ import annotations

import dataclasses
import bisect
import html
import io
import re
import unicodedata
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

# (markup, "") for what is kept, (None, text) for a run of text to translate; (None, Inline) for
# a run of HTML text with inline elements in it, (None, OfficeStretch) for an office
# paragraph's text that its runs cut into pieces.
Piece = tuple[Optional[str], "str | Inline | OfficeStretch"]
# The attention each word of a translation paid to each word of its source (one row per
# target word, one weight per source word: ``seq2seq_cli.alignment.word_attention``).
WordAttention = list[list[float]]
# A run's translation, with its word attention where the run is an Inline one.
Rendering = str | tuple[str, Optional[WordAttention]]

# What a file's name says it holds, for the file formats translated.
FILE_FORMATS = {".txt": "text file", ".html": "html", ".htm": "html", ".docx": "docx", ".odt": "odt", ".pptx": "pptx",
                ".odp": "odp", ".epub": "epub"}

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
# A run of text with markup inside (``Inline``, ``OfficeStretch``) of more words than this is
# translated as before them, piece by piece: placing markup costs time that grows with the
# square of a run's words, and a run's word attention takes memory that does too.
MAX_PLACED_WORDS = 1000
# The least attention a word of a translation pays to an element's words to be placed in it.
_LEAST_LOOK = 0.1


@dataclass(frozen=True)
class Inline:
    """A run of HTML text with inline elements in it (``Ein <b>Mann</b> fährt <a href=x>Rad</a>.``):
    its text (``Ein Mann fährt Rad.``) is translated whole, and each element is put back around
    the words of the translation that looked at the words it held, by the model's attention
    (``A <b>man</b> rides a <a href=x>bike</a>.``), so elements move as their words move. An
    element whose words no word of the translation looked at is kept, empty, where its words
    were; markup that is not an element around words (``<img>``, a tag not closed inside the
    run) stays between the words it stood between."""

    original: str  # the HTML it was read from
    text: str  # its text to translate: the markup left out, entities read as characters
    markup: tuple[tuple[int, str], ...]  # each tag, and where in ``text`` it stood

    @classmethod
    def of(cls, tokens: list[tuple[str, str]]) -> "Inline":
        """From ``html_pieces``' ("text", text) and ("inline", tag) tokens."""
        text, markup = "", []
        for kind, token in tokens:
            if kind == "text":
                text += html.unescape(token)
            else:
                markup.append((len(text), token))
        return cls("".join(token for _, token in tokens), text, tuple(markup))

    def translated(self, translation: str, attention: Optional[WordAttention], escape: bool = True) -> str:
        """The run in HTML with ``translation`` for its text, spaced as the text was, the elements
        placed by ``attention``: how much each space-separated word of the translation looked at
        each of the text's (``WordAttention``). Without it (or with one that does not fit) each
        word is taken to look at the word as far along the text as it is along the translation."""
        source_words = [match.span() for match in _WORD.finditer(self.text)]
        target_words = [match.span() for match in _WORD.finditer(translation)]
        weights = _articles_look_back(_word_weights(attention, len(source_words), len(target_words)))
        root = _Element("", "", 0, len(self.text), [], [], frozenset(range(len(source_words))))
        _nest(root, self.text, self.markup, source_words)
        source_of = [max(range(len(row)), key=row.__getitem__) for row in weights]  # what each word looked at most
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
    # Whether it holds no punctuation at its start or at its end (``"<b>Hallo</b>",``): then the
    # punctuation its translation's first or last word starts or ends with stays outside it.
    after_punctuation: bool = False
    before_punctuation: bool = False


def _nest(root: _Element, text: str, markup: tuple[tuple[int, str], ...], source_words: list[tuple[int, int]]
          ) -> None:
    """The elements of ``markup`` as a tree under ``root``: a start tag with its end tag is an
    element; the rest (a tag without an end, an end tag without a start) stands between words,
    and so does an element around no word, with everything inside it."""
    open_elements: list[tuple[_Element, int, str]] = [(root, -1, "")]  # (element, index of its start tag, name)
    tags = []  # (index of its start tag, index of its end tag, element) for each closed element
    for index, (offset, tag) in enumerate(markup):
        match = _TAG.match(tag)
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
        offset, tag = markup[index]
        if index in closed:
            end, element = closed[index]
            # The source words it overlaps: those starting before its end and ending after its start.
            element.words = frozenset(range(bisect.bisect_right(word_ends, element.start),
                                            bisect.bisect_left(word_starts, element.end)))
            if element.words:
                held = text[element.start:element.end].strip()
                element.after_punctuation = not unicodedata.category(held[0]).startswith("P")
                element.before_punctuation = not unicodedata.category(held[-1]).startswith("P")
                parents[-1].children.append(element)
                parents.append(element)
                ends.append(end)
                index += 1
                continue
            parents[-1].points.append((offset, "".join(tag for _, tag in markup[index:end + 1])))
            index = end + 1
            continue
        if not (ends and index == ends[-1]):  # an end tag of an element is its element's
            parents[-1].points.append((offset, tag))
        index += 1


def _word_weights(attention: Optional[WordAttention], sources: int, targets: int) -> list[list[float]]:
    """``attention`` as (target words, source words), if it has a row for each target word and
    no more source words than there are; else as if each target word looked at the source
    word as far along the source as it is along the translation."""
    if attention is not None and len(attention) == targets and all(len(row) <= sources for row in attention):
        return [list(row) + [0.0] * (sources - len(row)) for row in attention]
    return [[float(source == target * sources // targets) for source in range(sources)] for target in range(targets)]


def _articles_look_back(weights: list[list[float]]) -> list[list[float]]:
    """``weights`` with each article's look moved from its noun to the word before it.

    An attention decoder writing an article looks ahead at the noun it agrees with ("Der" at
    "teacher" in "The teacher" -> "Der Lehrer"), so the source's own article draws no target
    word. A target word is taken for such an article when it looks most at the source word the
    next target word looks at most, and the source word before that one draws no target word:
    it then looks at that word alone."""
    most = [max(range(len(row)), key=row.__getitem__) for row in weights]
    drawn = set(most)
    refined = [list(row) for row in weights]
    for target in range(len(weights) - 1):
        source = most[target]
        first_of_run = target == 0 or most[target - 1] != source
        if first_of_run and most[target + 1] == source and source > 0 and source - 1 not in drawn:
            refined[target] = [float(word == source - 1) for word in range(len(weights[target]))]
    return refined


def _place(element: _Element, low: int, high: int, weights: list[list[float]], totals: list[float],
           source_of: list[int], source_words: list[tuple[int, int]]) -> None:
    """Place ``element``'s children, each inside its parent (target words ``low`` to ``high``)
    and beside its siblings, around the stretch of target words that looked at its words more
    than at all others together, the most so (``_best_stretch``); a child no target word looked
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
        stretches = [_best_stretch(held, totals, first, last) for first, last in gaps if first <= last]
        best = max(stretches, key=lambda stretch: stretch[0], default=None)
        if best is None or best[0] < _LEAST_LOOK - 1:  # no target word looked at its words
            element.children.remove(child)
            element.points.append((child.start, child.open + _all_markup(child) + child.close))
            continue
        child.span = best[1]
        placed.append(child.span)
    if text_in_children and element.children:
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


def _best_stretch(held: list[float], totals: list[float], first: int, last: int) -> tuple[float, tuple[int, int]]:
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
            parts.append(point[1])
            point = next(points)
        child = children.get(target)
        if child is not None:
            first, last = child.span
            kept = target_words[first], target_words[last]
            start, stop = kept[0][0], kept[1][1]
            lead = _punctuation(translation[slice(*kept[0])]) if child.after_punctuation else 0
            trail = _punctuation(translation[slice(*kept[1])][::-1]) if child.before_punctuation else 0
            if first == last and lead + trail >= stop - start:  # the word is punctuation: all of it inside
                lead = trail = 0
            parts.append(_escaped(translation[start:start + lead], escape) + child.open)
            target_words[first] = (start + lead, target_words[first][1])
            target_words[last] = (target_words[last][0], stop - trail)
            _render(child, *child.span, translation, target_words, escape, parts)
            target_words[first], target_words[last] = kept
            parts.append(child.close + _escaped(translation[stop - trail:stop], escape))
            target = last
        else:
            parts.append(_escaped(translation[slice(*target_words[target])], escape))
        if target < high:
            parts.append(translation[target_words[target][1]:target_words[target + 1][0]])
        target += 1
    while point[0] <= high + 1:
        parts.append(point[1])
        point = next(points)


def _escaped(text: str, escape: bool) -> str:
    return html.escape(text, quote=False) if escape else text


def _punctuation(word: str) -> int:
    """How many punctuation marks ``word`` starts with, short of all of it."""
    count = 0
    while count < len(word) - 1 and unicodedata.category(word[count]).startswith("P"):
        count += 1
    return count


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
    is translated whole, not word group by word group."""
    tokens: list[tuple[str, str]] = []  # ("text", text to translate), ("inline", tag) or ("markup", kept)
    open_elements: list[tuple[str, bool]] = []  # (name, whether its text is kept as it is), outermost first
    for markup, piece in _split(text, _MARKUP, whitespace_is_text=True):
        kept = bool(open_elements) and open_elements[-1][1]
        if markup is None:
            tokens.append(("markup" if kept else "text", piece))
            continue
        tag = _TAG.match(markup)
        if tag is None or _CODE.fullmatch(markup):  # a comment, a declaration, or code kept whole
            tokens.append(("markup", markup))
            continue
        name, kept_after = tag.group("name").lower(), kept
        if tag.group("end"):
            if any(open_name == name for open_name, _ in open_elements):  # else a stray end tag
                while open_elements.pop()[0] != name:
                    pass
                kept_after = bool(open_elements) and open_elements[-1][1]
        elif name not in _VOID and not markup.endswith("/>"):
            says = _TRANSLATE.search(markup)
            if says:
                kept_after = says.group("value").lower() == "no"
            elif _NO_TRANSLATE_CLASS.search(markup):
                kept_after = True
            open_elements.append((name, kept_after))
        # An element that starts or ends text kept as it is ends the run of text, as a block does.
        inline = name in _INLINE and not kept and not kept_after
        tokens.append(("inline" if inline else "markup", markup))
    return _runs_of(tokens)


def _runs_of(tokens: list[tuple[str, str]]) -> list[Piece]:
    """Pieces from ``html_pieces``' tokens: text and inline tags between markup are one
    ``Inline`` run when two or more stretches of text make it up, else as they are."""
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
        words = sum(len(token.split()) for kind, token in stretch if kind == "text")
        if sum(kind == "text" and bool(token.strip()) for kind, token in stretch) > 1 and words <= MAX_PLACED_WORDS:
            pieces.append((None, Inline.of(stretch)))
        else:
            pieces.extend((token, "") if kind == "inline" or not token.strip() else (None, token)
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
    return [text.text if isinstance(text, (Inline, OfficeStretch)) else html.unescape(text) if html_entities else text
            for markup, text in pieces if markup is None]


def has_inline_markup(pieces: list[Piece]) -> bool:
    """Whether a run of ``pieces`` has markup inside it (``Inline``, ``OfficeStretch``): its
    translations need their word attention to put the markup back."""
    return any(isinstance(text, (Inline, OfficeStretch)) for _, text in pieces)


def reassemble(pieces: list[Piece], translations: Iterator[list[Rendering]], alternatives: int,
               escape: bool = False, keep_spacing: bool = False) -> tuple[str, list[str]]:
    """The text translated, and ``alternatives`` other versions of it: each run replaced by the
    next of ``translations`` (a run's n-best list, best first; its last stands in where it is
    shorter; a translation of an ``Inline`` run with its word alignment, ``(text, alignment)``),
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
            if isinstance(piece, (Inline, OfficeStretch)):
                version.append(piece.translated(translation, attention, escape))
                continue
            if escape:
                translation = html.escape(translation, quote=False)
            lead, trail = piece[: len(piece) - len(piece.lstrip())], piece[len(piece.rstrip()):]
            version.append(lead + translation + trail if keep_spacing else translation)
    joined = ["".join(version) for version in versions]
    return joined[0], joined[1:]


@dataclass(frozen=True)
class OfficeFormat:
    """Where an office format keeps its text: which zip parts, which elements are paragraphs,
    what breaks a paragraph's text into stretches, and what is not text to translate."""

    name: str
    main_part: str  # a file of this format has it
    text_parts: re.Pattern  # the zip parts whose paragraphs are translated
    paragraphs: frozenset[str]
    breaks: frozenset[str]  # a tab, a line break: the text after it is a stretch of its own
    text_element: Optional[str] = None  # text is only inside these (Word's w:t); else anywhere in a paragraph
    space_preserved: bool = False  # the text element needs xml:space="preserve" to keep leading and trailing spaces
    spaces_element: Optional[str] = None  # ODF's <text:s text:c="N"/>: N spaces
    kept: frozenset[str] = frozenset()  # elements whose content is computed (fields), never translated
    # A run holding nothing but formatting and text, from its start to its text ("<w:r><w:rPr>
    # <w:b/></w:rPr><w:t>"), and what ends it: a stretch made of such runs alone may have its
    # runs copied and moved (OfficeStretch), as a translation moves words.
    simple_run: Optional[re.Pattern] = None
    run_end: str = ""
    between_runs: Optional[re.Pattern] = None  # markup between two runs that may be left out (spelling marks)
    run_element: str = ""
    # The parts that may declare the language of text (styles' defaults, runs, metadata).
    language_parts: re.Pattern = re.compile("")

    def pieces(self, part: str, xml: str) -> list[Piece]:
        """A text part of a file of this format, cut into pieces (``office_xml_pieces``)."""
        return office_xml_pieces(xml, self)


@dataclass(frozen=True)
class EbookFormat:
    """EPUB: a zip whose XHTML documents are translated as HTML is (``html_pieces``, inline
    elements and all), and the text of the table of contents (``toc.ncx``) and of the title
    and description in the package (``.opf``)."""

    name: str = "an EPUB e-book"
    main_part: str = "META-INF/container.xml"
    text_parts: re.Pattern = re.compile(r"(?i).*\.(xhtml|html|htm|ncx|opf)")
    language_parts: re.Pattern = re.compile(r"(?i).*\.(xhtml|html|htm|opf)")

    def pieces(self, part: str, xml: str) -> list[Piece]:
        if part.lower().endswith(".ncx"):
            return _element_text_pieces(xml, frozenset({"text"}))
        if part.lower().endswith(".opf"):
            return _element_text_pieces(xml, frozenset({"dc:title", "dc:description"}))
        bom = "\ufeff" if xml.startswith("\ufeff") else ""  # kept as it was, not text
        return ([(bom, "")] if bom else []) + html_pieces(xml[len(bom):])


def _element_text_pieces(xml: str, elements: frozenset[str]) -> list[Piece]:
    """XML whose only text to translate is that of ``elements`` (each without markup inside)."""
    pieces: list[Piece] = []
    inside = False
    for token in _XML_TOKEN.findall(xml):
        tag = _ANY_XML_TAG.match(token)
        if tag is not None:
            inside = tag.group("name") in elements and not tag.group("end") and not tag.group("empty")
            pieces.append((token, ""))
        else:
            pieces.append((None, token) if inside and token.strip() else (token, ""))
    return pieces


WORD = OfficeFormat(
    "a Word document", "word/document.xml",
    re.compile(r"word/(document|header\d*|footer\d*|footnotes|endnotes)\.xml"),
    frozenset({"w:p"}), frozenset({"w:tab", "w:br", "w:cr", "w:ptab"}), text_element="w:t", space_preserved=True,
    simple_run=re.compile(r"<w:r(?:\s[^>]*)?>(?:<w:rPr>(?:(?!<w:r\b|<w:t\b).)*</w:rPr>)?<w:t(?:\s[^>]*)?>", re.S),
    run_end="</w:t></w:r>", between_runs=re.compile(r"(?:<w:proofErr\b[^>]*/>)*"), run_element="w:r",
    language_parts=re.compile(r"word/[^/]+\.xml|docProps/core\.xml"))
POWERPOINT = OfficeFormat(
    "a PowerPoint presentation", "ppt/presentation.xml",
    re.compile(r"ppt/(slides/slide|notesSlides/notesSlide)\d+\.xml"),  # not the layouts' prompts
    frozenset({"a:p"}), frozenset({"a:br"}), text_element="a:t", kept=frozenset({"a:fld"}),  # a slide number
    simple_run=re.compile(r"<a:r>(?:<a:rPr\b[^>]*/>|<a:rPr\b[^>]*>(?:(?!<a:r\b|<a:t\b).)*</a:rPr>)?<a:t>", re.S),
    run_end="</a:t></a:r>", between_runs=re.compile(""), run_element="a:r",
    language_parts=re.compile(r"ppt/.+\.xml|docProps/core\.xml"))
OPEN_DOCUMENT = OfficeFormat(
    "an OpenDocument text", "content.xml", re.compile(r"(content|styles)\.xml"),  # styles.xml: headers, footers
    frozenset({"text:p", "text:h"}), frozenset({"text:tab", "text:line-break"}), spaces_element="text:s",
    kept=frozenset(f"text:{field}" for field in (
        "note-citation page-number page-count page-continuation date time file-name template-name author-name "
        "author-initials chapter sequence sequence-ref bookmark-ref reference-ref note-ref sheet-name title "
        "subject word-count character-count paragraph-count").split()))
OPEN_DOCUMENT_PRESENTATION = dataclasses.replace(
    OPEN_DOCUMENT, name="an OpenDocument presentation", text_parts=re.compile(r"content\.xml"))
OPEN_DOCUMENT = dataclasses.replace(OPEN_DOCUMENT, language_parts=re.compile(r"(content|styles|meta)\.xml"))
OPEN_DOCUMENT_PRESENTATION = dataclasses.replace(OPEN_DOCUMENT_PRESENTATION,
                                                 language_parts=re.compile(r"(content|styles|meta)\.xml"))
EPUB = EbookFormat()
# The formats whose files are zips of parts, some of whose text is translated (OfficeDocument).
OFFICE_FORMATS: dict[str, OfficeFormat | EbookFormat] = {
    "docx": WORD, "odt": OPEN_DOCUMENT, "pptx": POWERPOINT, "odp": OPEN_DOCUMENT_PRESENTATION, "epub": EPUB}
_XML_TOKEN = re.compile(r"<[^>]*>|[^<]+")
_XML_TAG = re.compile(r"<(?P<end>/?)(?P<name>[A-Za-z][\w.-]*:[\w.-]+)\b[^>]*?(?P<empty>/?)>")
_SPACE_COUNT = re.compile(r"""\stext:c\s*=\s*["'](\d+)""")
_ANY_XML_TAG = re.compile(r"<(?P<end>/?)(?P<name>[A-Za-z][\w:.-]*)\b[^>]*?(?P<empty>/?)>")


def office_xml_pieces(xml: str, office: OfficeFormat) -> list[Piece]:
    """An office document's XML part: everything kept but the text of its paragraphs. Word and
    LibreOffice cut a paragraph's text into runs wherever formatting, spelling marks or
    revisions change, often mid-word, so a paragraph's stretch of text (up to a tab or line
    break) is translated whole: its translation goes where the stretch's first text was (with
    that run's formatting) and the stretch's other text is emptied. A paragraph inside another
    (a text box, a note) is a paragraph of its own; fields (a page number, a note's mark) are
    kept as they are."""
    pieces: list[Piece] = []
    stretches: list[list[int]] = []  # indices into pieces of each stretch's texts
    spaces: dict[int, int] = {}  # index of a spaces element in a stretch: how many spaces it stands for
    open_paragraphs: list[int] = []  # the stretch each open paragraph is in, innermost last
    in_text, in_kept = office.text_element is None, 0
    for token in _XML_TOKEN.findall(xml):
        tag = _XML_TAG.match(token)
        reading = bool(open_paragraphs) and in_text and not in_kept
        if tag is None:
            if reading:
                stretches[open_paragraphs[-1]].append(len(pieces))
            pieces.append((token, ""))
            continue
        name, end, empty = tag.group("name"), bool(tag.group("end")), bool(tag.group("empty"))
        if name in office.paragraphs and not empty:
            if not end:
                open_paragraphs.append(len(stretches))
                stretches.append([])
            elif open_paragraphs:  # else a stray end tag
                open_paragraphs.pop()
        elif name in office.breaks and open_paragraphs:
            open_paragraphs[-1] = len(stretches)
            stretches.append([])
        elif name == office.text_element:
            in_text = not end and not empty
        elif name in office.kept and not empty:
            in_kept = max(in_kept + (-1 if end else 1), 0)
        elif name == office.spaces_element and reading:
            count = _SPACE_COUNT.search(token)
            spaces[len(pieces)] = int(count.group(1)) if count else 1
            stretches[open_paragraphs[-1]].append(len(pieces))
        pieces.append((token, ""))
    owner = {index: number for number, stretch in enumerate(stretches) for index in stretch}
    for number, stretch in enumerate(stretches):
        texts = [index for index in stretch if index not in spaces]
        text = "".join(" " * spaces[index] if index in spaces else pieces[index][0] for index in stretch)
        if not texts or not text.strip():
            continue
        first = texts[0]
        if office.space_preserved:  # the element holding the first text must keep its spaces
            pieces[first - 1] = (_space_preserved(pieces[first - 1][0], office), "")
        last = stretch[-1]
        if 1 < len(texts) and len(text.split()) <= MAX_PLACED_WORDS and \
                all(owner.get(index, number) == number for index in range(first, last + 1)):
            # Its runs, and the markup between them, as one piece (no other paragraph inside).
            parts = tuple((None, " " * spaces[index]) if index in spaces else
                          (None, pieces[index][0]) if index in texts else (pieces[index][0], "")
                          for index in range(first, last + 1))
            pieces[first] = (None, OfficeStretch(parts, office.text_element if office.space_preserved else None,
                                                 _run_starts(pieces, first, last, parts, office), office.run_end))
            pieces[first + 1:last + 1] = [("", "")] * (last - first)
            continue
        pieces[first] = (None, text)
        for index in stretch:
            if index != first:
                pieces[index] = ("", "")
    return pieces


def _run_starts(pieces: list[Piece], first: int, last: int, parts: tuple[tuple[Optional[str], str], ...],
                office: OfficeFormat) -> Optional[tuple[str, ...]]:
    """The start of each run of a stretch (from its start tag to its text: "<w:r><w:rPr><w:b/>
    </w:rPr><w:t>"), if the stretch (``pieces[first:last + 1]``, as ``parts``) is made of
    ``office.simple_run`` runs alone, side by side; else None."""
    if office.simple_run is None:
        return None
    start = next((index for index in range(first - 1, -1, -1) if pieces[index][0].startswith(f"<{office.run_element}")
                  and _ANY_XML_TAG.match(pieces[index][0]).group("name") == office.run_element), None)
    after = "".join(markup for markup, _ in pieces[last + 1:last + 3])
    if start is None or after != office.run_end:
        return None
    starts = ["".join(markup for markup, _ in pieces[start:first])]
    between = re.compile(
        rf"{re.escape(office.run_end)}(?:{office.between_runs.pattern})(?P<run>{office.simple_run.pattern})", re.S)
    markup = ""
    for kind, _ in parts[1:]:  # parts[0] is the first run's text
        if kind is not None:
            markup += kind
            continue
        found = between.fullmatch(markup)
        if found is None:
            return None
        starts.append(found.group("run"))
        markup = ""
    return tuple(starts) if not markup and office.simple_run.fullmatch(starts[0]) else None


def _space_preserved(markup: str, office: OfficeFormat) -> str:
    """The start tag of the element holding text (Word's w:t), told to keep its spaces."""
    return _keeping_spaces(markup, office.text_element)


def _keeping_spaces(markup: str, element: str) -> str:
    if markup.startswith(f"<{element}") and _XML_TAG.match(markup).group("name") == element and \
            "xml:space" not in markup and not markup.endswith("/>"):
        return markup.replace(f"<{element}", f'<{element} xml:space="preserve"', 1)
    return markup


@dataclass(frozen=True)
class OfficeStretch:
    """A stretch of an office paragraph's text that its runs cut into pieces (``Der `` and
    `` fährt.`` plain, ``Mann`` bold): translated whole, and the translation shared out among
    the runs, each word going to the run whose words it looked at most (by the model's
    attention), so bold and italic words, links and other formatting carry over to the words
    that translate them. Runs that hold formatting and text alone (``run_starts``) are copied
    and moved as the words move; others keep their order, each taking the words it can. Without
    attention, the first run takes it all."""

    parts: tuple[tuple[Optional[str], str], ...]  # (None, a run's text as written), or (markup, "") kept
    space_element: Optional[str] = None  # the element holding text, if it must be told to keep spaces (w:t)
    run_starts: Optional[tuple[str, ...]] = None  # each run's start, to its text ("<w:r><w:rPr>..</w:rPr><w:t>")
    run_end: str = ""  # what ends a run ("</w:t></w:r>")

    @property
    def text(self) -> str:
        """The stretch's text, entities read as characters."""
        return "".join(html.unescape(text) for markup, text in self.parts if markup is None)

    def translated(self, translation: str, attention: Optional[WordAttention], escape: bool = True) -> str:
        """The stretch's XML with ``translation`` shared out among its runs (``attention``: as
        ``Inline.translated``)."""
        texts = [html.unescape(text) for markup, text in self.parts if markup is None]
        whole = "".join(texts)
        lead, trail = whole[:len(whole) - len(whole.lstrip())], whole[len(whole.rstrip()):]
        target_words = [match.span() for match in _WORD.finditer(translation)]
        moved = self.run_starts is not None and attention is not None and bool(target_words)
        if attention is None or not target_words:
            groups = [[0, translation]]
        else:
            starts = [sum(map(len, texts[:run])) for run in range(len(texts))]
            source_runs = [max(run for run, start in enumerate(starts) if start <= match.start())
                           for match in _WORD.finditer(whole)]  # the run each source word starts in
            weights = _articles_look_back(_word_weights(attention, len(source_runs), len(target_words)))
            runs = (_most_looked_at if moved else _in_order)(weights, source_runs, len(texts))
            groups = _groups(translation, target_words, runs, texts)
        groups[0][1] = lead + groups[0][1]
        groups[-1][1] += trail
        if moved:
            return self._moved(groups, escape)
        shares = [""] * len(texts)
        for run, text in groups:  # in order: each run holds one group at most
            shares[run] = text
        parts, share = [], iter(shares)
        for markup, _ in self.parts:
            if markup is not None:
                parts.append(markup)
                continue
            text = next(share)
            if self.space_element and parts and text != text.strip():  # its element must keep them
                parts[-1] = _keeping_spaces(parts[-1], self.space_element)
            parts.append(_escaped(text, escape))
        return "".join(parts)

    def _moved(self, groups: list[list], escape: bool) -> str:
        """The stretch as runs copied from its own, one for each group of words, in the
        translation's order. The first run's start stands before the stretch and its end after
        it, so the stretch starts in the first run (left empty if the first words go elsewhere)."""
        if groups[0][0] != 0:
            groups = [[0, ""]] + groups
        parts = [_escaped(groups[0][1], escape)]
        for run, text in groups[1:]:
            start = self.run_starts[run]
            if self.space_element and text != text.strip():
                start = start[:start.rindex("<")] + _keeping_spaces(start[start.rindex("<"):], self.space_element)
            parts += [self.run_end, start, _escaped(text, escape)]
        return "".join(parts)


def _groups(translation: str, target_words: list[tuple[int, int]], runs: list[int], texts: list[str]) -> list[list]:
    """The translation's words gathered into [run, text] groups, a group for each stretch of
    words going to one run, in the translation's order; the space between two groups goes to a
    run that had a space at its edge in the source ("Ein " "Mann" " fährt"), the first if both did."""
    groups: list[list] = []
    space = ""  # before the next word, in its group
    for target, (run, (start, stop)) in enumerate(zip(runs, target_words)):
        if not groups or groups[-1][0] != run:
            groups.append([run, ""])
        groups[-1][1] += space + translation[start:stop]
        space = ""
        if target + 1 < len(target_words):
            between, following = translation[stop:target_words[target + 1][0]], runs[target + 1]
            if following != run and not texts[run][-1:].isspace() and texts[following] != texts[following].strip():
                space = between
            else:
                groups[-1][1] += between
    return groups


def _most_looked_at(weights: list[list[float]], source_runs: list[int], runs: int) -> list[int]:
    """The run each target word goes to: the one whose source words it looked at most. A run
    of one source word goes to one stretch of words, the one that looked at it most; the
    others (an article looking ahead at its noun past an adjective) go with the word before."""
    looks = []
    for row in weights:
        looks.append([0.0] * runs)
        for word, weight in enumerate(row):
            looks[-1][source_runs[word]] += weight
    chosen = [max(range(runs), key=row.__getitem__) for row in looks]
    for run in range(runs):
        if source_runs.count(run) != 1:
            continue
        stretches: list[list[int]] = []
        for target, chosen_run in enumerate(chosen):
            if chosen_run == run:
                if stretches and stretches[-1][-1] == target - 1:
                    stretches[-1].append(target)
                else:
                    stretches.append([target])
        kept = max(stretches, key=lambda stretch: sum(looks[target][run] for target in stretch), default=[])
        for stretch in stretches:
            if stretch is not kept:
                for target in stretch:
                    others = [other for other in (chosen[target - 1] if target else None,
                                                  chosen[stretch[-1] + 1] if stretch[-1] + 1 < len(chosen) else None)
                              if other is not None and other != run]
                    chosen[target] = others[0] if others else chosen[target]
    return chosen


def _in_order(weights: list[list[float]], source_runs: list[int], runs: int) -> list[int]:
    """The run each target word goes to, runs in their order (a word never goes to a run
    before the previous word's), the most attention kept: each word's look at the source
    words of its run, added up (dynamic programming). A word that looks nowhere stays with
    its neighbours."""
    looks = [[0.0] * runs for _ in weights]
    for target, row in enumerate(weights):
        for word, weight in enumerate(row):
            looks[target][source_runs[word]] += weight
    best: list[list[float]] = []  # best[target][run]: the most attention with the target-th word in run
    for target, row in enumerate(looks):
        previous = [0.0] * runs if target == 0 else best[-1]
        running, best_row = float("-inf"), []
        for run in range(runs):
            running = max(running, previous[run])
            best_row.append(running + row[run])
        best.append(best_row)
    chosen = [0] * len(weights)
    limit = runs - 1
    for target in range(len(weights) - 1, -1, -1):
        row = best[target]
        top = max(row[:limit + 1])
        # Ties: the last word stays with the one before it, the others with the one after.
        candidates = [run for run in range(limit + 1) if row[run] == top]
        chosen[target] = candidates[0] if target == len(weights) - 1 else candidates[-1]
        limit = chosen[target]
    return chosen


class OfficeDocument:
    """A .docx, .odt, .pptx, .odp or .epub file whose text is translated (its format's
    ``pieces``); everything else in it (styles, pictures, settings, the order and compression
    of its parts) is written back byte for byte."""

    def __init__(self, data: bytes, office: OfficeFormat | EbookFormat, max_bytes: Optional[int] = None):
        """``max_bytes``: what the file may unpack to at most (a zip bomb is refused unread; a
        part is never unpacked past the size its entry states)."""
        try:
            self._archive = zipfile.ZipFile(io.BytesIO(data))
            self._office = office
            members = self._archive.infolist()
            parts = [info for info in members if office.text_parts.fullmatch(info.filename)]
            if not any(info.filename == office.main_part for info in members):
                raise ValueError(f"not {office.name} (no {office.main_part})")
            if max_bytes is not None and sum(info.file_size for info in members) > max_bytes:
                raise ValueError(f"it unpacks to over {max_bytes >> 20} MiB")
            self._pieces = {info.filename: office.pieces(info.filename, self._archive.read(info).decode("utf-8"))
                            for info in parts}
            self.inline_markup = any(map(has_inline_markup, self._pieces.values()))  # an e-book's XHTML may have
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, UnicodeDecodeError, KeyError) as err:
            raise ValueError(f"not {office.name} that can be read ({err})") from None

    def runs(self) -> list[str]:
        """The stretches of text to translate, in order, entities read as characters."""
        return [text for pieces in self._pieces.values() for text in runs(pieces, html_entities=True)]

    @property
    def characters(self) -> int:
        """How long the file is, as a limit counts it: its text alone."""
        return sum(map(len, self.runs()))

    def translated(self, translations: Iterator[list[Rendering]], languages: Optional[tuple[str, str]] = None
                   ) -> bytes:
        """The document with each stretch replaced by the next of ``translations`` (n-best
        lists, the first taken; with its word attention where ``inline_markup``), as a file of
        its format; with ``languages`` (source, target), what declared the source language
        declares the target's (``relabel_languages``)."""
        output = io.BytesIO()
        with zipfile.ZipFile(output, "w") as archive:
            for info in self._archive.infolist():
                data = self._archive.read(info)
                if info.filename in self._pieces:
                    xml, _ = reassemble(self._pieces[info.filename], translations, 0, escape=True, keep_spacing=True)
                    is_html = isinstance(self._office, EbookFormat) and \
                        not info.filename.lower().endswith((".opf", ".ncx"))
                    data = (relabel_languages(xml, *languages, is_html=is_html) if languages else xml).encode("utf-8")
                elif languages and self._office.language_parts.fullmatch(info.filename):
                    xml = data.decode("utf-8")
                    relabeled = relabel_languages(xml, *languages, is_html=isinstance(self._office, EbookFormat))
                    data = data if relabeled == xml else relabeled.encode("utf-8")
                archive.writestr(info, data)
        return output.getvalue()

    @classmethod
    def translate(cls, data: bytes, office: OfficeFormat | EbookFormat, translate: Callable[[list[str]], list[str]]
                  ) -> bytes:
        """``data`` (a file of format ``office``) with its text translated by ``translate``."""
        document = cls(data, office)
        texts = document.runs()
        return document.translated(iter([[text] for text in translate(texts)] if texts else []))


class TextFile:
    """A UTF-8 text or HTML file, with ``runs`` and ``translated`` as ``OfficeDocument`` has them:
    each line (``text_file_pieces``) or run of HTML text (``html_pieces``) translated, its line
    ends, spacing and markup kept. ValueError if it is not UTF-8."""

    def __init__(self, data: bytes, is_html: bool):
        self.characters = len(text := decode_text_file(data))  # how long it is, as a limit counts it
        self._html = is_html
        self._pieces = html_pieces(text) if is_html else text_file_pieces(text)
        self.inline_markup = has_inline_markup(self._pieces)  # its translations need their word alignments

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
        if _TRANSLATE.search(text) and _TRANSLATE.search(text).group("value").lower() == "no" or \
                _NO_TRANSLATE_CLASS.search(text):
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


def read_file(kind: str, data: bytes, max_unpacked: Optional[int] = None) -> TextFile | OfficeDocument:
    """A file of a ``FILE_FORMATS`` kind, read to be translated; ValueError if it cannot be
    (``max_unpacked``: what an office file may unpack to)."""
    if kind in OFFICE_FORMATS:
        return OfficeDocument(data, OFFICE_FORMATS[kind], max_unpacked)
    return TextFile(data, is_html=kind == "html")


def decode_text_file(data: bytes) -> str:
    """A file's bytes as text: UTF-8, a byte-order mark dropped; ValueError if it is not."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text (byte {err.start} is not UTF-8)") from None
