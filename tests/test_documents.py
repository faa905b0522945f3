"""Texts with a layout: which parts are translated, and that the rest comes back exactly."""

import pytest

from seq2seq_cli.documents import decode_text_file, html_pieces, reassemble, text_file_pieces, text_lines


def runs(pieces) -> list[str]:
    return [text for markup, text in pieces if markup is None]


def joined(pieces) -> str:
    return "".join(markup if markup is not None else text for markup, text in pieces)


@pytest.mark.parametrize("page, translated", [
    ('<p class="intro">The dog.</p>\n<b>A &amp; B</b><!-- a <p>note</p> -->', ["The dog.", "A &amp; B"]),
    # Code is not text: a script, a style sheet, code, keyboard input, sample output, CDATA.
    ('<script type="module">const s = "<p>The dog.</p>";</script><STYLE>p { color: red }</Style>'
     '<p>Run <code>ls -l</code> now.</p><kbd>Ctrl</kbd><samp>ok</samp><![CDATA[x < y]]>', ["Run ", " now."]),
    # HTML's translate attribute, and Google's notranslate class, to the end of the element.
    ('<p>A <span translate="no">Brand X</span> is good.</p>', ["A ", " is good."]),
    ('<div class="a notranslate b"><p>keep <b>this</b></p><p translate="yes">but this</p> and keep</div><p>this</p>',
     ["but this", "this"]),
    ("<p translate='NO'>kept<br>still kept<img src=x> kept</p>after", ["after"]),
    ('<div translate=no><p>kept<li>kept</div>free', ["free"]),  # unclosed elements end with their parent
    ('<p>x</b>y</p><span translate="no"/>free', ["x", "y", "free"]),  # a stray end tag, a self-closed element
    ('<p data-translate="no">one</p><p classification="notranslate">two</p>', ["one", "two"]),
])
def test_html_pieces_translate_the_text_and_keep_the_rest(page, translated):
    pieces = html_pieces(page)
    assert runs(pieces) == translated
    assert joined(pieces) == page


def test_a_text_file_keeps_its_line_ends_empty_lines_and_indentation():
    text = "One.\r\n\r\n    Two.\rThree.  \n\n"
    pieces = text_file_pieces(text)
    assert runs(pieces) == ["One.", "    Two.", "Three.  "] and joined(pieces) == text
    translations = iter([["Eins."], ["Zwei."], ["Drei."]])
    assert reassemble(pieces, translations, 0, keep_spacing=True) == ("Eins.\r\n\r\n    Zwei.\rDrei.  \n\n", [])


def test_a_request_text_is_translated_line_by_line_empty_lines_too():
    pieces = text_lines("a\n\n  b")
    assert runs(pieces) == ["a", "", "  b"]
    assert reassemble(pieces, iter([["A", "A2"], [""], ["B"]]), 1) == ("A\n\nB", ["A2\n\nB"])


def test_html_translations_are_escaped_between_the_markup():
    pieces = html_pieces("<p> x </p><p>y</p>")
    assert reassemble(pieces, iter([["a < b"], ["c & d"]]), 0, escape=True, keep_spacing=True) == \
        ("<p> a &lt; b </p><p>c &amp; d</p>", [])


def test_text_files_must_be_utf8():
    assert decode_text_file("\ufeffGröße".encode("utf-8")) == "Größe"
    with pytest.raises(ValueError, match="not UTF-8 text"):
        decode_text_file("Größe".encode("latin-1"))
