"""Texts with a layout: which parts are translated, and that the rest comes back exactly."""

import html
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seq_cli.documents import Inline, decode_text_file, html_pieces, reassemble, text_file_pieces, text_lines


def runs(pieces) -> list[str]:
    return [text.text if isinstance(text, Inline) else text for markup, text in pieces if markup is None]


def joined(pieces) -> str:
    return "".join(markup if markup is not None else text.original if isinstance(text, Inline) else text
                   for markup, text in pieces)


@pytest.mark.parametrize("page, translated", [
    ('<p class="intro">The dog.</p>\n<b>A &amp; B</b><!-- a <p>note</p> -->', ["The dog.", "A &amp; B"]),
    # Code is not text: a script, a style sheet, code, keyboard input, sample output, CDATA;
    # code inside a sentence is read with it (and kept: Inline).
    ('<script type="module">const s = "<p>The dog.</p>";</script><STYLE>p { color: red }</Style>'
     '<p>Run <code>ls -l</code> now.</p><kbd>Ctrl</kbd><samp>ok</samp><![CDATA[x < y]]>', ["Run ls -l now."]),
    # HTML's translate attribute, and Google's notranslate class, to the end of the element.
    ('<p>A <span translate="no">Brand X</span> is good.</p>', ["A Brand X is good."]),
    ('<div class="a notranslate b"><p>keep <b>this</b></p><p translate="yes">but this</p> and keep</div><p>this</p>',
     ["but this", "this"]),
    ("<p translate='NO'>kept<br>still kept<img src=x> kept</p>after", ["after"]),
    ('<div translate=no><p>kept<li>kept</div>free', ["free"]),  # unclosed elements end with their parent
    ('<p>x</b>y</p><span translate="no"/>free', ["xy", "free"]),  # a stray end tag, a self-closed element
    # Inline elements are inside a run, and so are code and kept text (read with it, kept as
    # they are); a block or a break ends it.
    ('<p>The <b>big</b> dog <a href="/x" title="a &lt; b">runs</a> &amp; <img src=y.png>jumps.</p>'
     '<p>Two<br>runs <span class="notranslate">kept</span> here <em>and</em> <code>x</code> here.</p>',
     ["The big dog runs & jumps.", "Two", "runs kept here and x here."]),
    ('<li><a href="/">Home</a></li>\n<li> <b>One</b> </li>', ["Home", "One"]),  # one stretch of text: as before
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


W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
DOCUMENT_XML = (
    f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document {W} xmlns:mc="urn:mc" mc:Ignorable="w14">'
    '<w:body>'
    # Word cuts a sentence into runs where formatting changes, even mid-word.
    '<w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t xml:space="preserve">The man sees </w:t></w:r>'
    '<w:r><w:rPr><w:b/></w:rPr><w:t>the d</w:t></w:r><w:proofErr w:type="spellStart"/><w:r><w:t>og.</w:t></w:r></w:p>'
    # A tab separates two stretches; an entity is a character.
    '<w:p><w:r><w:t>The baker &amp; the bird</w:t></w:r><w:r><w:tab/><w:t>The woman looks for the ball.</w:t></w:r></w:p>'
    '<w:p/><w:p><w:r><w:t xml:space="preserve">   </w:t></w:r></w:p>'
    '<w:tbl><w:tr><w:tc><w:p><w:r><w:t>A small cat.</w:t></w:r></w:p></w:tc></w:tr></w:tbl>'
    # A text box's paragraph inside a paragraph; deleted text and field codes are not text.
    '<w:p><w:r><w:pict><w:txbxContent><w:p><w:r><w:t>It is good.</w:t></w:r></w:p></w:txbxContent></w:pict></w:r>'
    '<w:del><w:r><w:delText>old</w:delText></w:r></w:del><w:r><w:instrText> PAGE </w:instrText></w:r>'
    '<w:r><w:t>The dog runs.</w:t></w:r></w:p>'
    '<w:sectPr/></w:body></w:document>')
HEADER_XML = f'<w:hdr {W}><w:p><w:r><w:t>Sometimes the bird loves a small newspaper.</w:t></w:r></w:p></w:hdr>'


def make_docx() -> bytes:
    import io
    import zipfile

    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        archive.writestr("_rels/.rels", '<?xml version="1.0"?><Relationships/>')
        archive.writestr("word/document.xml", DOCUMENT_XML)
        archive.writestr("word/header1.xml", HEADER_XML)
        archive.writestr("word/styles.xml", f'<w:styles {W}><w:docDefaults><w:rPrDefault><w:rPr><w:lang w:val="en-US" '
                         'w:eastAsia="zh-CN"/></w:rPr></w:rPrDefault></w:docDefaults><w:t>not text to translate</w:t>'
                         '</w:styles>')
        archive.writestr("word/media/image1.png", bytes(range(256)) * 4, zipfile.ZIP_STORED)
    return data.getvalue()


def test_a_word_document_has_its_paragraphs_translated_and_everything_else_kept():
    import io
    import zipfile
    from xml.dom import minidom

    from seq2seq_cli.office import WORD, OfficeDocument

    original = make_docx()
    document = OfficeDocument(original, WORD)
    assert document.runs() == ["The man sees the dog.", "The baker & the bird", "The woman looks for the ball.",
                               "A small cat.", "It is good.", "The dog runs.",
                               "Sometimes the bird loves a small newspaper."]
    translated = OfficeDocument.translate(original, WORD, lambda texts: [f"<{text.upper()}>" for text in texts])
    before, after = zipfile.ZipFile(io.BytesIO(original)), zipfile.ZipFile(io.BytesIO(translated))
    assert after.namelist() == before.namelist()
    for name in before.namelist():
        if name not in ("word/document.xml", "word/header1.xml"):
            assert after.read(name) == before.read(name), name
            assert after.getinfo(name).compress_type == before.getinfo(name).compress_type
    body = minidom.parseString(after.read("word/document.xml"))  # well-formed: the "<" and "&" escaped
    paragraphs = [[t.firstChild.data if t.firstChild else "" for t in p.getElementsByTagName("w:t")
                   if t.parentNode.parentNode is p] for p in body.getElementsByTagName("w:p")]
    assert paragraphs == [["<THE MAN SEES THE DOG.>", "", ""], ["<THE BAKER & THE BIRD>", "<THE WOMAN LOOKS FOR THE BALL.>"],
                          [], ["   "], ["<A SMALL CAT.>"], ["<THE DOG RUNS.>"], ["<IT IS GOOD.>"]]
    xml = after.read("word/document.xml").decode()
    assert "<w:b/></w:rPr><w:t></w:t>" in xml  # the bold run is emptied, its formatting kept
    assert 'mc:Ignorable="w14"' in xml and "<w:delText>old</w:delText>" in xml and "<w:tab/>" in xml
    assert xml.count('xml:space="preserve"') == DOCUMENT_XML.count('xml:space="preserve"') + 5
    header = minidom.parseString(after.read("word/header1.xml"))
    assert header.getElementsByTagName("w:t")[0].firstChild.data == "<SOMETIMES THE BIRD LOVES A SMALL NEWSPAPER.>"


@pytest.mark.parametrize("data, fragment", [
    (b"PK\x03\x04 not really", "not a Word document that can be read"),
    (b"plain text", "not a Word document that can be read"),
])
def test_what_is_not_a_word_document_is_a_value_error(data, fragment):
    import io
    import zipfile

    from seq2seq_cli.office import WORD, OfficeDocument

    with pytest.raises(ValueError, match=fragment):
        OfficeDocument(data, WORD)
    # A zip bomb (a part of zeros, small packed) is refused before anything is unpacked.
    bomb = io.BytesIO(make_docx())
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/media/zeros.bin", bytes(2 << 20))
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(ValueError, match="it unpacks to over 1 MiB"):
        OfficeDocument(bomb.getvalue(), WORD, max_bytes=1 << 20)
    assert len(OfficeDocument(bomb.getvalue(), WORD).runs()) == 7  # no limit given: read
    other = io.BytesIO()
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("content.xml", "<office:document/>")  # an .odt renamed
    with pytest.raises(ValueError, match=r"not a Word document \(no word/document.xml\)"):
        OfficeDocument(other.getvalue(), WORD)


TEXT = 'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"'
CONTENT_XML = (
    f'<?xml version="1.0" encoding="UTF-8"?>\n<office:document-content {TEXT} '
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"><office:body><office:text>'
    '<text:h text:outline-level="1">The man sees <text:span text:style-name="T1">the d</text:span>og.</text:h>'
    '<text:p>The baker &amp; the bird<text:tab/>The woman looks for the ball.</text:p>'
    # Spaces beyond the first are an element; a footnote's mark is a field, its text a paragraph.
    '<text:p>A <text:s text:c="2"/>small cat.<text:note text:id="ftn1" text:note-class="footnote">'
    '<text:note-citation>1</text:note-citation><text:note-body><text:p>It is good.</text:p></text:note-body>'
    '</text:note></text:p>'
    '<text:p>Page <text:page-number text:select-page="current">3</text:page-number></text:p><text:p/>'
    '</office:text></office:body></office:document-content>')
STYLES_XML = (f'<office:document-styles {TEXT} xmlns:style="s" xmlns:office="o"><style:master-page><style:header>'
              '<text:p>Sometimes the bird loves a small newspaper.</text:p></style:header></style:master-page>'
              '</office:document-styles>')


def make_odt() -> bytes:
    import io
    import zipfile

    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mimetype", "application/vnd.oasis.opendocument.text", zipfile.ZIP_STORED)  # first, stored
        archive.writestr("content.xml", CONTENT_XML)
        archive.writestr("styles.xml", STYLES_XML)
        archive.writestr("META-INF/manifest.xml", '<?xml version="1.0"?><manifest:manifest/>')
    return data.getvalue()


def test_an_opendocument_text_has_its_paragraphs_translated_and_its_fields_kept():
    import io
    import zipfile

    from seq2seq_cli.office import OPEN_DOCUMENT, OfficeDocument

    original = make_odt()
    assert OfficeDocument(original, OPEN_DOCUMENT).runs() == [
        "The man sees the dog.", "The baker & the bird", "The woman looks for the ball.", "A   small cat.",
        "It is good.", "Page ", "Sometimes the bird loves a small newspaper."]
    translated = OfficeDocument.translate(original, OPEN_DOCUMENT, lambda texts: [f"<{t.strip().upper()}>" for t in texts])
    before, after = zipfile.ZipFile(io.BytesIO(original)), zipfile.ZipFile(io.BytesIO(translated))
    assert [(i.filename, i.compress_type) for i in after.infolist()] == \
        [(i.filename, i.compress_type) for i in before.infolist()]
    assert after.read("mimetype") == before.read("mimetype")
    content = after.read("content.xml").decode()
    assert ('<text:h text:outline-level="1">&lt;THE MAN SEES THE DOG.&gt;<text:span text:style-name="T1"></text:span>'
            '</text:h>') in content
    assert "<text:p>&lt;THE BAKER &amp; THE BIRD&gt;<text:tab/>&lt;THE WOMAN LOOKS FOR THE BALL.&gt;</text:p>" in content
    assert ("<text:p>&lt;A   SMALL CAT.&gt;<text:note text:id=\"ftn1\" text:note-class=\"footnote\">"
            "<text:note-citation>1</text:note-citation><text:note-body><text:p>&lt;IT IS GOOD.&gt;</text:p>") in content
    assert '<text:p>&lt;PAGE&gt; <text:page-number text:select-page="current">3</text:page-number></text:p>' in content
    assert "&lt;SOMETIMES THE BIRD LOVES A SMALL NEWSPAPER.&gt;" in after.read("styles.xml").decode()


A = 'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main"'
SLIDE_XML = (
    f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<p:sld {A} xmlns:p="urn:p"><p:cSld><p:spTree>'
    '<p:sp><p:txBody><a:bodyPr/><a:p><a:r><a:rPr lang="en-US" b="1"/><a:t>The man </a:t></a:r>'
    '<a:r><a:rPr lang="en-US"/><a:t>sees the dog.</a:t></a:r><a:br/><a:r><a:t>A small cat.</a:t></a:r></a:p>'
    '<a:p><a:fld id="{1}" type="slidenum"><a:t>2</a:t></a:fld></a:p><a:p><a:endParaRPr/></a:p></p:txBody></p:sp>'
    '</p:spTree></p:cSld></p:sld>')


def make_pptx() -> bytes:
    import io
    import zipfile

    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        archive.writestr("ppt/presentation.xml", f'<p:presentation {A} xmlns:p="urn:p"/>')
        archive.writestr("ppt/slides/slide1.xml", SLIDE_XML)
        archive.writestr("ppt/notesSlides/notesSlide1.xml",
                         f'<p:notes {A} xmlns:p="urn:p"><a:p><a:r><a:t>It is good.</a:t></a:r></a:p></p:notes>')
        # A layout's prompt is not the presentation's text.
        archive.writestr("ppt/slideLayouts/slideLayout1.xml", f'<p:sldLayout {A}><a:p><a:r><a:t>Click to edit</a:t>'
                         '</a:r></a:p></p:sldLayout>')
    return data.getvalue()


def test_a_presentation_has_its_slides_and_notes_translated():
    import io
    import zipfile

    from seq2seq_cli.office import OPEN_DOCUMENT_PRESENTATION, POWERPOINT, OfficeDocument

    original = make_pptx()
    assert OfficeDocument(original, POWERPOINT).runs() == ["The man sees the dog.", "A small cat.", "It is good."]
    translated = OfficeDocument.translate(original, POWERPOINT, lambda texts: [t.upper() for t in texts])
    after = zipfile.ZipFile(io.BytesIO(translated))
    slide = after.read("ppt/slides/slide1.xml").decode()
    assert ('<a:r><a:rPr lang="en-US" b="1"/><a:t>THE MAN SEES THE DOG.</a:t></a:r><a:r><a:rPr lang="en-US"/>'
            '<a:t></a:t></a:r><a:br/><a:r><a:t>A SMALL CAT.</a:t></a:r>') in slide
    assert '<a:fld id="{1}" type="slidenum"><a:t>2</a:t></a:fld>' in slide and "xml:space" not in slide
    assert after.read("ppt/slideLayouts/slideLayout1.xml") == zipfile.ZipFile(io.BytesIO(original)).read(
        "ppt/slideLayouts/slideLayout1.xml")
    # An OpenDocument presentation is read as an OpenDocument text's content is.
    assert OfficeDocument(make_odt(), OPEN_DOCUMENT_PRESENTATION).runs()[:2] == ["The man sees the dog.",
                                                                                  "The baker & the bird"]
    with pytest.raises(ValueError, match=r"not a PowerPoint presentation \(no ppt/presentation.xml\)"):
        OfficeDocument(make_docx(), POWERPOINT)


CHAPTER_XHTML = (
    '\ufeff<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>\n'
    '<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops" lang="en" xml:lang="en">'
    '<head><title>The dog</title><link rel="stylesheet" href="style.css"/></head>\n'
    '<body><h1 id="c1">The man sees the dog.</h1>\n<p class="first">The woman <em>looks</em> for the ball.<br/>'
    '<img src="images/cat.png" alt="a cat"/></p>\n<p>A small cat &amp; <a href="#c1" epub:type="noteref">it</a>.</p>'
    '<script>var s = "The dog.";</script></body></html>')
OPF = ('<?xml version="1.0" encoding="UTF-8"?>\n<package xmlns="http://www.idpf.org/2007/opf" version="3.0" '
       'unique-identifier="id"><metadata xmlns:dc="http://purl.org/dc/elements/1.1/">'
       '<dc:identifier id="id">urn:uuid:1</dc:identifier><dc:title>The bird</dc:title><dc:language>en</dc:language>'
       '<dc:creator>A. Baker</dc:creator></metadata><manifest>'
       '<item id="c1" href="chapter1.xhtml" media-type="application/xhtml+xml"/></manifest>'
       '<spine toc="ncx"><itemref idref="c1"/></spine></package>')
NCX = ('<?xml version="1.0" encoding="UTF-8"?><ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1">'
       '<head><meta name="dtb:uid" content="urn:uuid:1"/></head><docTitle><text>The bird</text></docTitle>'
       '<navMap><navPoint id="n1" playOrder="1"><navLabel><text>The dog</text></navLabel>'
       '<content src="chapter1.xhtml#c1"/></navPoint></navMap></ncx>')


def make_epub() -> bytes:
    """An EPUB as the format asks: "mimetype" first and stored, then the container, the package,
    the table of contents, a chapter, a style sheet and a picture."""
    import io
    import zipfile

    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mimetype", "application/epub+zip", zipfile.ZIP_STORED)
        archive.writestr("META-INF/container.xml", '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:'
                         'names:tc:opendocument:xmlns:container"><rootfiles><rootfile full-path="OEBPS/content.opf" '
                         'media-type="application/oebps-package+xml"/></rootfiles></container>')
        archive.writestr("OEBPS/content.opf", OPF)
        archive.writestr("OEBPS/toc.ncx", NCX)
        archive.writestr("OEBPS/chapter1.xhtml", CHAPTER_XHTML)
        archive.writestr("OEBPS/style.css", "h1 { font-weight: bold }")
        archive.writestr("OEBPS/images/cat.png", bytes(range(256)), zipfile.ZIP_STORED)
    return data.getvalue()


def test_an_ebook_has_its_chapters_contents_and_title_translated_and_everything_else_kept():
    import io
    import zipfile
    from xml.dom import minidom

    from seq2seq_cli.office import EPUB, OfficeDocument

    original = make_epub()
    document = OfficeDocument(original, EPUB)
    # The package's title, the table of contents, then the chapter: its title, heading, and
    # paragraphs (the one with an inline element is one run), not its script.
    assert document.runs() == ["The bird", "The bird", "The dog", "The dog", "The man sees the dog.",
                               "The woman looks for the ball.", "A small cat & it."]
    assert document.inline_markup
    translated = OfficeDocument.translate(original, EPUB, lambda texts: [f"<{t.upper()}>" for t in texts])
    before, after = zipfile.ZipFile(io.BytesIO(original)), zipfile.ZipFile(io.BytesIO(translated))
    assert [(i.filename, i.compress_type) for i in after.infolist()] == \
        [(i.filename, i.compress_type) for i in before.infolist()]  # "mimetype" first, stored
    for name in ("mimetype", "META-INF/container.xml", "OEBPS/style.css", "OEBPS/images/cat.png"):
        assert after.read(name) == before.read(name)
    chapter = after.read("OEBPS/chapter1.xhtml").decode("utf-8")
    minidom.parseString(chapter.encode("utf-8"))  # still well-formed XML
    assert chapter.startswith('\ufeff<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>')
    assert "<title>&lt;THE DOG&gt;</title>" in chapter and "<h1 id=\"c1\">&lt;THE MAN SEES THE DOG.&gt;</h1>" in chapter
    assert '<a href="#c1" epub:type="noteref">' in chapter and "<em>" in chapter and "&lt;THE WOMAN" in chapter
    assert '<script>var s = "The dog.";</script>' in chapter
    assert "<dc:title>&lt;THE BIRD&gt;</dc:title><dc:language>en</dc:language><dc:creator>A. Baker</dc:creator>" \
        in after.read("OEBPS/content.opf").decode()
    assert "<navLabel><text>&lt;THE DOG&gt;</text></navLabel>" in after.read("OEBPS/toc.ncx").decode()
    with pytest.raises(ValueError, match=r"not an EPUB e-book \(no META-INF/container.xml\)"):
        OfficeDocument(make_docx(), EPUB)


def looked_at(*rows: dict[int, float], sources: int) -> list[list[float]]:
    """Word attention from each target word's {source word: weight}."""
    return [[row.get(source, 0.0) for source in range(sources)] for row in rows]


def one_to_one(*sources_of_targets: int, sources: int) -> list[list[float]]:
    return looked_at(*({source: 1.0} for source in sources_of_targets), sources=sources)


def inline(page: str) -> Inline:
    (run,) = [text for markup, text in html_pieces(page) if markup is None]
    assert isinstance(run, Inline)
    return run


def word_stretch(xml: str):
    """A Word paragraph's pieces, and its one stretch of text (an ``office.OfficeStretch``)."""
    from seq2seq_cli.office import WORD, OfficeStretch, office_xml_pieces

    pieces = office_xml_pieces(xml, WORD)
    (stretch,) = [text for markup, text in pieces if markup is None]
    assert isinstance(stretch, OfficeStretch)
    return pieces, stretch


@pytest.mark.parametrize("page, translation, attention, expected", [
    # An element moves with its words: French puts the adjective after the noun.
    ("a <b>red</b> car", "une voiture rouge", one_to_one(0, 2, 1, sources=3), "une voiture <b>rouge</b>"),
    # Nested elements, attributes and entities kept; the translation escaped; punctuation after
    # an element's last word stays outside it, as it was.
    ('Das <b>ist <i>sehr</i></b> gut &amp; <a href="/x?a=1&amp;b=2">neu</a>.', "This is very good & new.",
     one_to_one(0, 1, 2, 3, 4, 5, sources=6),
     'This <b>is <i>very</i></b> good &amp; <a href="/x?a=1&amp;b=2">new</a>.'),
    ('Er sagt "<i>ja</i>" und <b>geht!</b>', 'He says "yes" and leaves!', one_to_one(0, 1, 2, 3, 4, sources=5),
     'He says "<i>yes</i>" and <b>leaves!</b>'),
    # An element of two words around the two words that translate them, whatever their order.
    ("Ich sah <b>den großen Hund</b> gestern.", "I saw the big dog yesterday.",
     one_to_one(0, 1, 2, 3, 4, 5, sources=6), "I saw <b>the big dog</b> yesterday."),
    # An article looks ahead at its noun; when the source's article has no word of its own,
    # the article stays outside the noun's element.
    ("The <b>teacher</b> sleeps.", "Der Lehrer schläft.",
     looked_at({1: 0.85, 0: 0.1}, {1: 0.95}, {2: 0.9}, sources=3), "Der <b>Lehrer</b> schläft."),
    # A word that looks mostly elsewhere is not pulled in: a stretch gains where it looks at
    # the element's words more than at all others.
    ("Ein Mann fährt <a href=x>Fahrrad</a>.", "A man is riding a bicycle.",
     looked_at({1: 1.0}, {1: 0.8}, {2: 0.8}, {2: 0.45, 3: 0.44}, {2: 0.3, 3: 0.6}, {3: 0.96}, sources=4),
     "A man is riding <a href=x>a bicycle</a>."),
    # Markup without words: an image, an empty anchor, an unclosed tag, a stray end tag stay
    # between the words they stood between.
    ("Klick <img src=x.png> <a id=top></a>hier <u>jetzt</s>", "Click here now",
     one_to_one(0, 1, 2, sources=3), "Click <img src=x.png><a id=top></a>here <u>now</s>"),
    # A word that looks ahead at the source word the next one looks at, where the source word
    # before that draws no word, is taken to be its translation (an article, or here "happy").
    ("Er ist <b>froh</b> und ...", "He is happy and ...", one_to_one(0, 1, 3, 3, 4, sources=5),
     "He is <b>happy</b> and ..."),
    # An element no word of the translation looked at is kept, empty, where it was.
    ("Er ist <b>froh</b> und ...", "He is so and ...", one_to_one(0, 1, 1, 3, 4, sources=5),
     "He is so <b></b>and ..."),
    # Code and text marked translate="no" are read with the sentence and come back as they
    # were, in place of the words that translate them ...
    ("Run <code>ls -l</code> now.", "Führen Sie jetzt ls -l aus.", one_to_one(0, 0, 3, 1, 2, 0, sources=4),
     "Führen Sie jetzt <code>ls -l</code> aus."),
    ('Ein <span translate="no">Brand X</span> ist gut.', "A Marke Iks is good.", one_to_one(0, 1, 2, 3, 4, sources=5),
     'A <span translate="no">Brand X</span> is good.'),
    # ... or, where no stretch of words looked mostly at them, between the words, spaced, the
    # translation kept whole.
    ('Ein <span translate="no">Brand X</span> Auto.', "A car.", one_to_one(0, 3, sources=4),
     'A <span translate="no">Brand X</span> car.'),
    ('Ein Auto von <span translate="no">Brand X</span>', "A car from Marke", looked_at(
        {0: 1}, {1: 1}, {2: 1}, {3: 0.3, 2: 0.7}, sources=5), 'A car from Marke <span translate="no">Brand X</span>'),
    # Without attention words are linked in order, as far along one text as the other.
    (" Ein <b>Mann</b> fährt. ", "A man rides.", None, " A <b>man</b> rides. "),
    ("Ein <b>Mann</b> fährt.", "", [], "<b></b>"),
])
def test_inline_elements_go_around_the_words_that_translate_theirs(page, translation, attention, expected):
    assert inline(page).translated(translation, attention) == expected


def test_each_alternative_places_the_elements_by_its_own_attention():
    pieces = html_pieces("<p>a <b>red</b> car</p>")
    translations = iter([[("une voiture rouge", one_to_one(0, 2, 1, sources=3)),
                          ("une rouge voiture", one_to_one(0, 1, 2, sources=3))]])
    assert reassemble(pieces, translations, 1, escape=True, keep_spacing=True) == \
        ("<p>une voiture <b>rouge</b></p>", ["<p>une <b>rouge</b> voiture</p>"])


_TAG = re.compile(r"<[^>]*>")


@st.composite
def inline_runs(draw):
    """A run of words with well-formed inline elements, images and stray end tags in it, a
    translation of some other words, and the attention of each of them to the run's words."""
    words = iter(draw(st.lists(st.sampled_from(["Hund", "&amp;", "x<y", "Haus.", '"Ja"', "ö"]), min_size=2,
                               max_size=12)))
    parts, open_names = [], []
    for word in words:
        action = draw(st.sampled_from(["word", "word", "open", "close", "void", "stray"]))
        if action == "open":
            name = draw(st.sampled_from(["b", "i", "a", "span"]))
            parts.append(f'<{name} title="{len(parts)}">' if name != "a" else f'<a href="/{len(parts)}">')
            open_names.append(name)
        elif action == "close" and open_names:
            parts.append(f"</{open_names.pop()}>")
        elif action == "void":
            parts.append(f'<img src="{len(parts)}.png">')
        elif action == "stray":
            parts.append("</u>")
        parts.append(word.replace("<", "&lt;") + draw(st.sampled_from([" ", " ", "", "  "])))
    parts += [f"</{name}>" for name in reversed(open_names)]
    page = "<p>" + "".join(parts) + "</p>"
    translation = " ".join(draw(st.lists(st.sampled_from(["dog", "a&b", "<house>", "yes.", "(o)", "...", "«»"]),
                                         min_size=draw(st.sampled_from([0, 1, 1, 1])), max_size=10)))
    sources = len(html.unescape(_TAG.sub("", "".join(parts))).split())
    # Each target word looks at one or two source words, or anywhere.
    looks = st.lists(st.tuples(st.integers(0, sources - 1), st.floats(0, 1)), max_size=2).map(
        lambda looks: [sum(weight for word, weight in looks if word == source) for source in range(sources)])
    row = st.one_of(looks, looks, st.lists(st.floats(0, 1), min_size=sources, max_size=sources))
    rows = st.lists(row, min_size=len(translation.split()), max_size=len(translation.split()))
    attention = draw(st.one_of(st.none(), rows, rows, rows))
    return page, translation, attention


@settings(max_examples=500, deadline=None)
@given(inline_runs())
def test_inline_markup_comes_back_whole_and_well_nested_around_the_translation(case):
    page, translation, attention = case
    pieces = html_pieces(page)
    if not any(isinstance(text, Inline) for _, text in pieces):
        return  # one stretch of text: no inline run to put together
    result, _ = reassemble(pieces, iter([[(translation, attention)]]), 0, escape=True, keep_spacing=True)
    # The translation, escaped, is the text, in order, with nothing lost or added ...
    text = _TAG.sub("", result)
    assert text.split() == html.escape(translation, quote=False).split()
    # ... each tag of the page comes back once ...
    assert sorted(_TAG.findall(result)) == sorted(_TAG.findall(page))
    # ... and each element is closed inside the elements it was opened in.
    stack = []
    for tag in _TAG.findall(result):
        name = re.match(r"</?(\w+)", tag).group(1)
        if name in ("img", "u"):
            continue
        if tag.startswith("</"):
            assert stack and stack.pop() == name, result
        else:
            stack.append(name)
    assert not stack


def test_text_all_in_spans_comes_back_all_in_spans():
    """HTML from a word processor has every word in a span that sets its font; a translation's
    word that no span's words drew goes to a span beside it, not outside them all."""
    page = ('<p><span class="a">Der Bäcker </span><span class="b">bringt</span>'
            '<span class="a"> einen Apfel zurück.</span></p>')
    expected = '<span class="a">The baker</span> <span class="b">brings</span> <span class="a">back an apple.</span>'
    # "The baker brings back an apple.": "back" looks at "zurück.", "an" at "Apfel".
    assert inline(page).translated("The baker brings back an apple.", one_to_one(0, 1, 2, 5, 4, 4, sources=6)) == \
        expected
    # "back" looks at no span's words more than at the others': it goes to the neighbour whose
    # words it looks at more, "bringt" or "zurück.".
    for back, side in (({0: 0.33, 2: 0.33, 5: 0.34}, "right"), ({0: 0.3, 2: 0.36, 5: 0.34}, "left")):
        translated = inline(page).translated("The baker brings back an apple.", looked_at(
            {0: 1}, {1: 1}, {2: 1}, back, {4: 1}, {4: 1}, sources=6))
        assert translated == (expected if side == "right" else expected.replace(
            "brings</span> <span class=\"a\">back an", "brings back</span> <span class=\"a\">an"))
    # With text outside the elements, a word no element drew stays outside them.
    assert inline("Der <b>Bäcker</b> bringt <i>einen</i> Apfel.").translated(
        "The baker brings an apple.", one_to_one(0, 1, 2, 3, 4, sources=5)) == \
        "The <b>baker</b> brings <i>an</i> apple."


def test_a_paragraphs_runs_share_its_translation_as_the_attention_says():
    """Word cut "Ein **Mann** fährt [Fahrrad](link)." into runs: the translation goes to the same
    runs, in order, each taking the words that looked at its words, so the bold word and the
    link carry over; a run left without words is emptied, and every run whose text starts or
    ends in a space is told to keep it."""
    from seq2seq_cli.office import OPEN_DOCUMENT, OfficeStretch, office_xml_pieces

    xml = (f'<w:document {W}><w:body><w:p><w:r><w:t xml:space="preserve">Ein </w:t></w:r>'
           '<w:r><w:rPr><w:b/></w:rPr><w:t>Mann</w:t></w:r><w:r><w:t xml:space="preserve"> fährt </w:t></w:r>'
           '<w:hyperlink r:id="rId1"><w:r><w:t>Fahr</w:t></w:r><w:proofErr/><w:r><w:t>rad</w:t></w:r></w:hyperlink>'
           '<w:r><w:t>.</w:t></w:r></w:p></w:body></w:document>')
    pieces, stretch = word_stretch(xml)
    assert stretch.text == "Ein Mann fährt Fahrrad."
    # "A" and "man" look at "Mann" (an article looks ahead at its noun), "riding" at "fährt".
    attention = one_to_one(1, 1, 2, 2, 3, 3, sources=4)
    translated, _ = reassemble(pieces, iter([[("A man is riding a bicycle.", attention)]]), 0, escape=True,
                               keep_spacing=True)
    assert ('<w:p><w:r><w:t xml:space="preserve">A </w:t></w:r><w:r><w:rPr><w:b/></w:rPr><w:t>man</w:t></w:r>'
            '<w:r><w:t xml:space="preserve"> is riding </w:t></w:r><w:hyperlink r:id="rId1"><w:r><w:t>a bicycle.</w:t>'
            '</w:r><w:proofErr/><w:r><w:t></w:t></w:r></w:hyperlink><w:r><w:t></w:t></w:r></w:p>') in translated
    # Runs keep their order: a word that would go back to an earlier run stays in a later one.
    attention = one_to_one(0, 1, 2, 3, 1, sources=4)  # "... bicycle man": "man" looks back at "Mann"
    translated, _ = reassemble(pieces, iter([[("A man rides bicycle man", attention)]]), 0, escape=True,
                               keep_spacing=True)
    assert '<w:t xml:space="preserve"> rides </w:t></w:r><w:hyperlink r:id="rId1"><w:r><w:t>bicycle man</w:t>' in \
        translated
    # Without attention (OfficeDocument.translate with a plain function), the first run takes it all.
    assert '<w:t xml:space="preserve">A man rides.</w:t></w:r><w:r><w:rPr><w:b/></w:rPr><w:t></w:t>' in \
        reassemble(pieces, iter([["A man rides."]]), 0, escape=True, keep_spacing=True)[0]
    # OpenDocument: a span is a run; a spaces element is spaces of the text.
    odf = ('<office:text><text:p>Ein<text:s/><text:span text:style-name="T1">Mann</text:span> fährt.</text:p>'
           '<text:p>Vor <text:note><text:note-body><text:p>Note.</text:p></text:note-body></text:note>nach.</text:p>'
           '</office:text>')
    pieces = office_xml_pieces(odf, OPEN_DOCUMENT)
    assert [text.text if isinstance(text, OfficeStretch) else text for markup, text in pieces if markup is None] == \
        ["Ein Mann fährt.", "Vor nach.", "Note."]
    translations = iter([[("A man rides.", one_to_one(1, 1, 2, sources=3))], [("Before after.", None)], [("N.", None)]])
    translated, _ = reassemble(pieces, translations, 0, escape=True, keep_spacing=True)
    # A paragraph with a note inside is one run of text, as before: the note's paragraph is its own.
    assert translated == ('<office:text><text:p>A <text:span text:style-name="T1">man</text:span> rides.</text:p>'
                          '<text:p>Before after.<text:note><text:note-body><text:p>N.</text:p></text:note-body>'
                          '</text:note></text:p></office:text>')


def test_runs_of_formatting_and_text_alone_move_with_their_words():
    """Runs that hold nothing but formatting and text (Word's w:r with w:rPr and w:t, spelling
    marks between them) are copied and moved as the translation moves their words: the bold
    participle German puts last comes back bold where English puts it."""
    from seq2seq_cli.office import POWERPOINT, office_xml_pieces

    xml = (f'<w:document {W}><w:body><w:p><w:pPr><w:jc w:val="left"/></w:pPr><w:r><w:rPr><w:sz w:val="24"/></w:rPr>'
           '<w:t xml:space="preserve">Er hat den Hund </w:t></w:r><w:proofErr w:type="spellStart"/>'
           '<w:r><w:rPr><w:b/><w:sz w:val="24"/></w:rPr><w:t>gesehen</w:t></w:r><w:proofErr w:type="spellEnd"/>'
           '<w:r><w:rPr><w:sz w:val="24"/></w:rPr><w:t>.</w:t></w:r></w:p></w:body></w:document>')
    pieces, stretch = word_stretch(xml)
    assert stretch.run_starts is not None
    # "He has seen the dog.": "seen" looks at "gesehen.", "the" and "dog." at "den" and "Hund".
    translated, _ = reassemble(pieces, iter([[("He has seen the dog.", one_to_one(0, 1, 4, 2, 3, sources=5))]]), 0)
    plain, bold = '<w:r><w:rPr><w:sz w:val="24"/></w:rPr><w:t', '<w:r><w:rPr><w:b/><w:sz w:val="24"/></w:rPr><w:t'
    assert (f'<w:pPr><w:jc w:val="left"/></w:pPr>{plain} xml:space="preserve">He has </w:t></w:r>{bold}>seen</w:t></w:r>'
            f'{plain} xml:space="preserve"> the dog.</w:t></w:r></w:p>') in translated
    # Anything else between the runs (a bookmark, a field, a link) keeps them where they are.
    for between in ('<w:bookmarkStart w:id="0" w:name="x"/>', '<w:hyperlink r:id="rId1">'):
        other = xml.replace('<w:proofErr w:type="spellStart"/>', between)
        if "hyperlink" in between:
            other = other.replace('<w:proofErr w:type="spellEnd"/>', "</w:hyperlink>")
        _, stretch = word_stretch(other)
        assert stretch.run_starts is None
    # PowerPoint's runs move the same way.
    slide = ('<p:sld><a:p><a:r><a:rPr lang="de-DE"/><a:t>Er hat den Hund </a:t></a:r><a:r><a:rPr lang="de-DE" b="1"/>'
             '<a:t>gesehen.</a:t></a:r></a:p></p:sld>')
    pieces = office_xml_pieces(slide, POWERPOINT)
    translated, _ = reassemble(pieces, iter([[("He has seen the dog.", one_to_one(0, 1, 4, 2, 3, sources=5))]]), 0)
    assert translated == ('<p:sld><a:p><a:r><a:rPr lang="de-DE"/><a:t>He has </a:t></a:r><a:r><a:rPr lang="de-DE" b="1"/>'
                          '<a:t>seen</a:t></a:r><a:r><a:rPr lang="de-DE"/><a:t> the dog.</a:t></a:r></a:p></p:sld>')


def test_a_run_of_more_words_than_markup_is_placed_in_is_translated_piece_by_piece():
    """Placing markup costs time and memory growing with the square of a run's words: a
    paragraph of more than MAX_PLACED_WORDS words with inline elements is cut at them, as
    before, and so is an office paragraph's stretch left to its first run."""
    from seq2seq_cli.documents import MAX_PLACED_WORDS
    from seq2seq_cli.office import WORD, OfficeStretch, office_xml_pieces

    words = " ".join(["word"] * MAX_PLACED_WORDS)
    assert [type(text) for markup, text in html_pieces(f"<p>{words} <b>x</b></p>") if markup is None] == [str, str]
    assert [type(text) for markup, text in html_pieces(f"<p>{words[5:]} <b>x</b></p>") if markup is None] == [Inline]
    xml = f'<w:body><w:p><w:r><w:t>{words} </w:t></w:r><w:r><w:t>x</w:t></w:r></w:p></w:body>'
    assert not any(isinstance(text, OfficeStretch) for _, text in office_xml_pieces(xml, WORD))


def test_what_declared_the_source_language_declares_the_target_language():
    """A translated document says it is in the target language wherever it said it was in the
    source language (spelling, hyphenation and screen readers read by it); other languages, and
    text kept untranslated, keep theirs."""
    import io
    import zipfile

    from seq2seq_cli.documents import relabel_languages
    from seq2seq_cli.office import EPUB, WORD, OfficeDocument

    page = ('<html lang="en"><!-- <p lang="en"> --><script>var p = "<p lang=\'en\'>";</script>'
            '<p lang="en-GB">x</p><q lang="fr">y</q><span lang="en" translate="no">z</span><p xml:lang="EN">w</p></html>')
    assert relabel_languages(page, "en", "de", is_html=True) == (
        '<html lang="de"><!-- <p lang="en"> --><script>var p = "<p lang=\'en\'>";</script>'
        '<p lang="de-DE">x</p><q lang="fr">y</q><span lang="en" translate="no">z</span><p xml:lang="de">w</p></html>')
    assert relabel_languages('<w:lang w:val="en-US" w:eastAsia="zh-CN"/><w:jc w:val="en"/><a:rPr lang="en-US" b="1"/>'
                             '<style:text-properties fo:language="en" fo:country="GB" style:language-asian="zh"/>'
                             '<dc:language>en-US</dc:language><dc:language>fr</dc:language>', "en", "de") == (
        '<w:lang w:val="de-DE" w:eastAsia="zh-CN"/><w:jc w:val="en"/><a:rPr lang="de-DE" b="1"/>'
        '<style:text-properties fo:language="de" fo:country="DE" style:language-asian="zh"/>'
        '<dc:language>de-DE</dc:language><dc:language>fr</dc:language>')
    # In a Word document the styles' default language too.
    original = make_docx()
    document = OfficeDocument(original, WORD)
    translated = zipfile.ZipFile(io.BytesIO(document.translated(iter([[text] for text in document.runs()]),
                                                                ("en", "de"))))
    assert '<w:lang w:val="de-DE" w:eastAsia="zh-CN"/>' in translated.read("word/styles.xml").decode()
    book = OfficeDocument(make_epub(), EPUB)
    translated = zipfile.ZipFile(io.BytesIO(book.translated(iter([[text] for text in book.runs()]), ("en", "de"))))
    assert "<dc:language>de</dc:language>" in translated.read("OEBPS/content.opf").decode()
    assert 'lang="de" xml:lang="de"' in translated.read("OEBPS/chapter1.xhtml").decode()
