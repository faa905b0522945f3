"""Files translated into files of their kind: Word, PowerPoint and OpenDocument documents, EPUB
e-books, and the text and HTML files of ``seq2seq_cli.documents``.

An office document or e-book is a zip of parts. The parts that hold text are cut into pieces
(``documents.Piece``): a paragraph's text between markup, read by its format (``OfficeFormat``:
which elements are paragraphs, which hold text, what breaks a stretch of it), or an e-book's
XHTML read as HTML is. Every other part is written back byte for byte. A paragraph's stretch
that its runs cut into pieces is translated whole and shared out among the runs by the model's
attention (``OfficeStretch``), so bold words, italics and links carry over.
"""

from __future__ import annotations

import bisect
import dataclasses
import html
import io
import itertools
import re
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from seq2seq_cli.alignment import WordAttention, articles_look_back, looked_at_most, word_weights
from seq2seq_cli.documents import (MAX_PLACED_WORDS, Piece, Rendering, TextFile, escaped, has_inline_markup, html_pieces,
                                   reassemble, relabel_languages, runs)

# What a file's name says it holds, for the file formats translated.
FILE_FORMATS = {".txt": "text file", ".html": "html", ".htm": "html", ".docx": "docx", ".odt": "odt", ".pptx": "pptx",
                ".odp": "odp", ".epub": "epub"}
_WORD = re.compile(r"\S+")


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

    def is_html(self, part: str) -> bool:
        return False

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

    def is_html(self, part: str) -> bool:
        """Whether a part is an (X)HTML document, read as HTML is."""
        return part.lower().endswith((".xhtml", ".html", ".htm"))

    def pieces(self, part: str, xml: str) -> list[Piece]:
        if self.is_html(part):
            bom = "\ufeff" if xml.startswith("\ufeff") else ""  # kept as it was, not text
            return ([(bom, "")] if bom else []) + html_pieces(xml[len(bom):])
        if part.lower().endswith(".ncx"):
            return _element_text_pieces(xml, frozenset({"text"}))
        return _element_text_pieces(xml, frozenset({"dc:title", "dc:description"}))  # the package (.opf)


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
        "subject word-count character-count paragraph-count").split()),
    language_parts=re.compile(r"(content|styles|meta)\.xml"))
OPEN_DOCUMENT_PRESENTATION = dataclasses.replace(
    OPEN_DOCUMENT, name="an OpenDocument presentation", text_parts=re.compile(r"content\.xml"))
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
    break) is translated whole: a stretch of several runs is an ``OfficeStretch`` (its runs
    share the translation); one with another paragraph inside (a text box, a note), or of more
    than ``MAX_PLACED_WORDS`` words, has its translation where its first text was (with that
    run's formatting) and its other text emptied. A paragraph inside another is a paragraph of
    its own; fields (a page number, a note's mark) are kept as they are."""
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
            pieces[first - 1] = (_keeping_spaces(pieces[first - 1][0], office.text_element), "")
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


def _keeping_spaces(markup: str, element: str) -> str:
    """``markup``, if it is the start tag of ``element`` (Word's w:t), told to keep its spaces."""
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
            starts = list(itertools.accumulate(map(len, texts[:-1]), initial=0))
            source_runs = [bisect.bisect_right(starts, match.start()) - 1
                           for match in _WORD.finditer(whole)]  # the run each source word starts in
            weights = articles_look_back(word_weights(attention, len(source_runs), len(target_words)))
            looks = [[0.0] * len(texts) for _ in weights]  # each target word's look at each run's source words
            for target, row in enumerate(weights):
                for word, weight in enumerate(row):
                    looks[target][source_runs[word]] += weight
            runs = _most_looked_at(looks, source_runs) if moved else _in_order(looks)
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
            parts.append(escaped(text, escape))
        return "".join(parts)

    def _moved(self, groups: list[list], escape: bool) -> str:
        """The stretch as runs copied from its own, one for each group of words, in the
        translation's order. The first run's start stands before the stretch and its end after
        it, so the stretch starts in the first run (left empty if the first words go elsewhere)."""
        if groups[0][0] != 0:
            groups = [[0, ""]] + groups
        parts = [escaped(groups[0][1], escape)]
        for run, text in groups[1:]:
            start = self.run_starts[run]
            if self.space_element and text != text.strip():
                start = start[:start.rindex("<")] + _keeping_spaces(start[start.rindex("<"):], self.space_element)
            parts += [self.run_end, start, escaped(text, escape)]
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


def _most_looked_at(looks: list[list[float]], source_runs: list[int]) -> list[int]:
    """The run each target word goes to: the one whose source words it looked at most
    (``looks``: each target word's look at each run). A run of one source word goes to one
    stretch of words, the one that looked at it most; the others (an article looking ahead at
    its noun past an adjective) go with the word before."""
    chosen = looked_at_most(looks)
    for run in range(len(looks[0])):
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


def _in_order(looks: list[list[float]]) -> list[int]:
    """The run each target word goes to, runs in their order (a word never goes to a run
    before the previous word's), the most attention kept: each word's look at the source
    words of its run (``looks``), added up (dynamic programming). A word that looks nowhere
    stays with its neighbours."""
    runs = len(looks[0])
    best: list[list[float]] = []  # best[target][run]: the most attention with the target-th word in run
    for target, row in enumerate(looks):
        previous = [0.0] * runs if target == 0 else best[-1]
        running, best_row = float("-inf"), []
        for run in range(runs):
            running = max(running, previous[run])
            best_row.append(running + row[run])
        best.append(best_row)
    chosen = [0] * len(looks)
    limit = runs - 1
    for target in range(len(looks) - 1, -1, -1):
        row = best[target]
        top = max(row[:limit + 1])
        # Ties: the last word stays with the one before it, the others with the one after.
        candidates = [run for run in range(limit + 1) if row[run] == top]
        chosen[target] = candidates[0] if target == len(looks) - 1 else candidates[-1]
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
            # Runs with markup inside (a paragraph's runs, an e-book's inline elements): translated with attention.
            self.inline_markup = any(map(has_inline_markup, self._pieces.values()))
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
                    data = (relabel_languages(xml, *languages, is_html=self._office.is_html(info.filename))
                            if languages else xml).encode("utf-8")
                elif languages and self._office.language_parts.fullmatch(info.filename):
                    xml = data.decode("utf-8")
                    relabeled = relabel_languages(xml, *languages, is_html=self._office.is_html(info.filename))
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



def read_file(kind: str, data: bytes, max_unpacked: Optional[int] = None) -> TextFile | OfficeDocument:
    """A file of a ``FILE_FORMATS`` kind, read to be translated; ValueError if it cannot be
    (``max_unpacked``: what an office file may unpack to)."""
    if kind in OFFICE_FORMATS:
        return OfficeDocument(data, OFFICE_FORMATS[kind], max_unpacked)
    return TextFile(data, is_html=kind == "html")
