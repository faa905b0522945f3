"""Texts with a layout: what of them is translated, and what comes back exactly as it was.

A text is cut into pieces, each either markup, kept as it is (HTML tags, comments and code;
a text file's line breaks and the spacing around its lines), or a run of text to translate.
The translations of the runs are then put back between the markup, so a page or a file
keeps its layout. ``s2s serve`` translates HTML (``format: html`` and .html files) and text
files this way; a text in a request is translated line by line (``text_lines``).
"""

from __future__ import annotations

import html
import re
from typing import Iterator, Optional

# (markup, "") for what is kept, (None, text) for a run of text to translate.
Piece = tuple[Optional[str], str]

# What a file's name says it holds, for the file formats translated.
FILE_FORMATS = {".txt": "text file", ".html": "html", ".htm": "html"}

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


def decode_text_file(data: bytes) -> str:
    """A file's bytes as text: UTF-8, a byte-order mark dropped; ValueError if it is not."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text (byte {err.start} is not UTF-8)") from None
