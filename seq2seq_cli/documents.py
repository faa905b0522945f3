"""Texts with a layout: what of them is translated, and what comes back exactly as it was.

A text is cut into pieces, each either markup, kept as it is (HTML tags, comments and code;
a text file's line breaks and the spacing around its lines), or a run of text to translate.
The translations of the runs are then put back between the markup, so a page or a file
keeps its layout. ``s2s serve`` translates HTML (``format: html`` and .html files) and text
files this way; a text in a request is translated line by line (``text_lines``). A Word or
OpenDocument file (``OfficeDocument``) is a zip of XML parts, whose paragraphs' text is
translated so.
"""

from __future__ import annotations

import dataclasses
import html
import io
import re
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

# (markup, "") for what is kept, (None, text) for a run of text to translate.
Piece = tuple[Optional[str], str]

# What a file's name says it holds, for the file formats translated.
FILE_FORMATS = {".txt": "text file", ".html": "html", ".htm": "html", ".docx": "docx", ".odt": "odt", ".pptx": "pptx",
                ".odp": "odp"}

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
    the element, unless an element inside it says ``translate="yes"``."""
    pieces: list[Piece] = []
    open_elements: list[tuple[str, bool]] = []  # (name, whether its text is kept as it is), outermost first
    for markup, piece in _split(text, _MARKUP):
        kept = bool(open_elements) and open_elements[-1][1]
        if markup is None:
            pieces.append((piece, "") if kept else (None, piece))
            continue
        pieces.append((markup, ""))
        tag = _TAG.match(markup)
        if tag is None or _CODE.fullmatch(markup):  # a comment, a declaration, or code kept whole
            continue
        name = tag.group("name").lower()
        if tag.group("end"):
            if any(open_name == name for open_name, _ in open_elements):  # else a stray end tag
                while open_elements.pop()[0] != name:
                    pass
        elif name not in _VOID and not markup.endswith("/>"):
            says = _TRANSLATE.search(markup)
            if says:
                kept = says.group("value").lower() == "no"
            elif _NO_TRANSLATE_CLASS.search(markup):
                kept = True
            open_elements.append((name, kept))
    return pieces


def text_file_pieces(text: str) -> list[Piece]:
    """A text file: its line breaks (\\n, \\r\\n or \\r) kept, each line a run to translate."""
    return _split(text, _LINE_BREAK)


def _split(text: str, markup: re.Pattern) -> list[Piece]:
    pieces: list[Piece] = []

    def add_text(part: str) -> None:
        pieces.append((part, "") if not part.strip() else (None, part))

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
    return [html.unescape(text) if html_entities else text for markup, text in pieces if markup is None]


def reassemble(pieces: list[Piece], translations: Iterator[list[str]], alternatives: int, escape: bool = False,
               keep_spacing: bool = False) -> tuple[str, list[str]]:
    """The text translated, and ``alternatives`` other versions of it: each run replaced by the
    next of ``translations`` (a run's n-best list, best first; its last stands in where it is
    shorter), with the markup between. ``escape``: translations are HTML-escaped;
    ``keep_spacing``: the whitespace around a run is kept around its translation."""
    versions: list[list[str]] = [[] for _ in range(alternatives + 1)]
    for markup, piece in pieces:
        if markup is not None:
            for version in versions:
                version.append(markup)
            continue
        texts = next(translations)
        lead, trail = piece[: len(piece) - len(piece.lstrip())], piece[len(piece.rstrip()):]
        for index, version in enumerate(versions):
            translation = texts[min(index, len(texts) - 1)]
            if escape:
                translation = html.escape(translation, quote=False)
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


WORD = OfficeFormat(
    "a Word document", "word/document.xml",
    re.compile(r"word/(document|header\d*|footer\d*|footnotes|endnotes)\.xml"),
    frozenset({"w:p"}), frozenset({"w:tab", "w:br", "w:cr", "w:ptab"}), text_element="w:t", space_preserved=True)
POWERPOINT = OfficeFormat(
    "a PowerPoint presentation", "ppt/presentation.xml",
    re.compile(r"ppt/(slides/slide|notesSlides/notesSlide)\d+\.xml"),  # not the layouts' prompts
    frozenset({"a:p"}), frozenset({"a:br"}), text_element="a:t", kept=frozenset({"a:fld"}))  # a slide number
OPEN_DOCUMENT = OfficeFormat(
    "an OpenDocument text", "content.xml", re.compile(r"(content|styles)\.xml"),  # styles.xml: headers, footers
    frozenset({"text:p", "text:h"}), frozenset({"text:tab", "text:line-break"}), spaces_element="text:s",
    kept=frozenset(f"text:{field}" for field in (
        "note-citation page-number page-count page-continuation date time file-name template-name author-name "
        "author-initials chapter sequence sequence-ref bookmark-ref reference-ref note-ref sheet-name title "
        "subject word-count character-count paragraph-count").split()))
OPEN_DOCUMENT_PRESENTATION = dataclasses.replace(
    OPEN_DOCUMENT, name="an OpenDocument presentation", text_parts=re.compile(r"content\.xml"))
OFFICE_FORMATS = {"docx": WORD, "odt": OPEN_DOCUMENT, "pptx": POWERPOINT, "odp": OPEN_DOCUMENT_PRESENTATION}
_XML_TOKEN = re.compile(r"<[^>]*>|[^<]+")
_XML_TAG = re.compile(r"<(?P<end>/?)(?P<name>[A-Za-z][\w.-]*:[\w.-]+)\b[^>]*?(?P<empty>/?)>")
_SPACE_COUNT = re.compile(r"""\stext:c\s*=\s*["'](\d+)""")


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
    for stretch in stretches:
        texts = [index for index in stretch if index not in spaces]
        text = "".join(" " * spaces[index] if index in spaces else pieces[index][0] for index in stretch)
        if not texts or not text.strip():
            continue
        first = texts[0]
        if office.space_preserved:  # the element holding the first text must keep its spaces
            opening, element = pieces[first - 1][0], office.text_element
            if "xml:space" not in opening:
                pieces[first - 1] = (opening.replace(f"<{element}", f'<{element} xml:space="preserve"', 1), "")
        pieces[first] = (None, text)
        for index in stretch:
            if index != first:
                pieces[index] = ("", "")
    return pieces


class OfficeDocument:
    """A .docx, .odt, .pptx or .odp file whose text is translated by ``office_xml_pieces``;
    everything else in it (styles, pictures, settings, the order and compression of its parts)
    is written back byte for byte."""

    def __init__(self, data: bytes, office: OfficeFormat, max_bytes: Optional[int] = None):
        """``max_bytes``: what the file may unpack to at most (a zip bomb is refused unread; a
        part is never unpacked past the size its entry states)."""
        try:
            self._archive = zipfile.ZipFile(io.BytesIO(data))
            members = self._archive.infolist()
            parts = [info for info in members if office.text_parts.fullmatch(info.filename)]
            if not any(info.filename == office.main_part for info in members):
                raise ValueError(f"not {office.name} (no {office.main_part})")
            if max_bytes is not None and sum(info.file_size for info in members) > max_bytes:
                raise ValueError(f"it unpacks to over {max_bytes >> 20} MiB")
            self._pieces = {info.filename: office_xml_pieces(self._archive.read(info).decode("utf-8"), office)
                            for info in parts}
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, UnicodeDecodeError, KeyError) as err:
            raise ValueError(f"not {office.name} that can be read ({err})") from None

    def runs(self) -> list[str]:
        """The stretches of text to translate, in order, entities read as characters."""
        return [text for pieces in self._pieces.values() for text in runs(pieces, html_entities=True)]

    @property
    def characters(self) -> int:
        """How long the file is, as a limit counts it: its text alone."""
        return sum(map(len, self.runs()))

    def translated(self, translations: Iterator[list[str]]) -> bytes:
        """The document with each stretch replaced by the next of ``translations`` (n-best
        lists, the first taken), as a file of its format."""
        output = io.BytesIO()
        with zipfile.ZipFile(output, "w") as archive:
            for info in self._archive.infolist():
                if info.filename in self._pieces:
                    xml, _ = reassemble(self._pieces[info.filename], translations, 0, escape=True, keep_spacing=True)
                    archive.writestr(info, xml.encode("utf-8"))
                else:
                    archive.writestr(info, self._archive.read(info))
        return output.getvalue()

    @classmethod
    def translate(cls, data: bytes, office: OfficeFormat, translate: Callable[[list[str]], list[str]]) -> bytes:
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

    def runs(self) -> list[str]:
        return runs(self._pieces, html_entities=self._html)

    def translated(self, translations: Iterator[list[str]]) -> bytes:
        return reassemble(self._pieces, translations, 0, escape=self._html, keep_spacing=True)[0].encode("utf-8")


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
