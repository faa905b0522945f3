"""Word alignment from attention: `s2s translate --alignment` and `Translation.alignment`."""

import re
import sys

import pytest
import torch

from seq2seq_cli.alignment import format_alignment, word_alignment, words_of_sentences
from seq2seq_cli.data import read_lines
from seq2seq_cli.translation import Translator

from conftest import TOY, assert_user_error, s2s_forked

sys.path.insert(0, str(TOY))
from generate import content_word_links  # noqa: E402


def test_each_target_word_takes_the_source_word_its_first_subword_attends_to_most():
    # Source: "ab cd" as a ##b, c ##d, then [SEP]; target: "xy z" as x ##y, z, then [SEP].
    attention = torch.tensor([
        [0.2, 0.3, 0.4, 0.1, 0.0],  # x: a + ##b = 0.5 beats c (0.4) and ##d alone; the word sums win
        [0.0, 0.0, 0.0, 0.9, 0.1],  # ##y: not the word's first subword, so it does not count
        [0.1, 0.0, 0.2, 0.3, 0.4],  # z: c + ##d = 0.5; the [SEP] column is no word
        [0.0, 0.0, 0.0, 0.0, 1.0],  # the final [SEP] row
    ])
    assert word_alignment(attention, [0, 0, 1, 1], [0, 0, 1]) == [(0, 0), (1, 1)]
    assert format_alignment([(0, 0), (1, 1), (3, 2)]) == "0-0 1-1 3-2"
    assert word_alignment(attention[:, -1:], [], [0]) == []  # nothing to point at


def test_words_are_counted_on_through_the_sentences_of_a_line():
    sep = 9
    words = lambda ids: [k // 2 for k in range(len(ids))]  # noqa: E731 - two tokens a word
    assert words_of_sentences([1, 2, 3, sep, 4, 5], sep, words) == [0, 0, 1, None, 2, 2]
    # Without spaces between sentences (Chinese, Japanese) a line's first word continues the last.
    assert words_of_sentences([1, 2, 3, sep, 4, 5], sep, words, spaced=False) == [0, 0, 1, None, 1, 1]


@pytest.fixture(scope="module")
def aligned(learned_toy_run):
    translator = Translator.load(learned_toy_run, device="cpu", alignment=True)
    sources = read_lines(learned_toy_run.parent / "no-animals" / "dev.en")[:120]
    return translator, sources, [nbest[0] for nbest in translator.translate_nbest(sources, 1)]


def test_an_alignment_has_one_link_per_printed_word_and_finds_content_words(aligned):
    """Every word of the translation as printed, in order, linked to a word of its source;
    and the links the toy grammar makes certain (nouns, adjectives, verbs, adverbs) mostly
    found, after 160 steps of training (the bundled run finds 92%: benchmarks/README.md)."""
    translator, sources, translations = aligned
    right = total = 0
    for source, translation in zip(sources, translations):
        assert [target for _, target in translation.alignment] == list(range(len(translation.text.split())))
        assert all(0 <= source_word < len(source.split()) for source_word, _ in translation.alignment)
        links = content_word_links(source, translation.text)
        total += len(links)
        right += sum((source_word, target) in translation.alignment for target, source_word in links.items())
    assert total > 300 and right / total > 0.85, (right, total)


def certain_content_words(sources, translations):
    """(source words, a content word's index, the translation, the word that translates it)
    for each link the toy grammar makes certain."""
    for source, translation in zip(sources, translations):
        for target, source_word in content_word_links(source, translation.text).items():
            yield source.split(), source_word, translation.text, translation.text.split()[target].strip(".,")


def test_a_bold_word_comes_back_around_the_word_that_translates_it(aligned):
    """HTML with a content word in <b> inside a sentence (`s2s translate --html`, `s2s serve`):
    the sentence is translated whole, exactly as without the markup, and <b> comes back around
    the word that translates its word, for most of those the toy grammar makes certain (the
    bundled run: 91.5%, benchmarks/inline_markup.py)."""
    translator, sources, translations = aligned
    pages, wanted = [], []
    for words, bold, text, word in certain_content_words(sources, translations):
        core = words[bold].strip(".,")
        pages.append(" ".join([*words[:bold], f"<b>{core}</b>{words[bold][len(core):]}", *words[bold + 1:]]))
        wanted.append((text, word))
    exact = 0
    for page, (text, word) in zip(translator.translate_html(pages), wanted):
        assert re.sub(r"<[^>]*>", "", page) == text and page.count("<b>") == page.count("</b>") == 1
        exact += re.search(r"<b>(.*?)</b>", page).group(1).strip(".,") == word
    assert len(pages) > 300 and exact / len(pages) > 0.85, (exact, len(pages))


def test_a_bold_word_in_a_word_document_stays_bold_in_translation(aligned):
    """A .docx paragraph cut into runs around a bold content word: the paragraph is translated
    whole, all of it in the runs, and the bold run goes with the word that translates its word,
    wherever the translation puts it, for most of those the toy grammar makes certain (the
    bundled run: 90.5%, benchmarks/inline_markup.py)."""
    import io
    import zipfile
    from xml.sax.saxutils import escape

    from test_documents import W

    translator, sources, translations = aligned
    paragraphs, wanted = [], []
    for words, bold, text, word in certain_content_words(sources, translations):
        before = "".join(word + " " for word in words[:bold])
        after = "".join(" " + word for word in words[bold + 1:])
        paragraphs.append(f'<w:p><w:r><w:t xml:space="preserve">{escape(before)}</w:t></w:r>'
                          f'<w:r><w:rPr><w:b/></w:rPr><w:t>{escape(words[bold])}</w:t></w:r>'
                          f'<w:r><w:t xml:space="preserve">{escape(after)}</w:t></w:r></w:p>')
        wanted.append((text, word))
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("word/document.xml", f'<w:document {W}><w:body>{"".join(paragraphs)}</w:body></w:document>')
    document = zipfile.ZipFile(io.BytesIO(translator.translate_office(data.getvalue(), "docx")))
    translated = re.findall(r"<w:p>(.*?)</w:p>", document.read("word/document.xml").decode())
    assert len(translated) == len(wanted) > 100
    exact = 0
    for paragraph, (text, word) in zip(translated, wanted):
        assert "".join(re.findall(r"<w:t[^>]*>([^<]*)</w:t>", paragraph)) == text  # all of it, in order
        bold = re.findall(r"<w:b/></w:rPr><w:t[^>]*>([^<]*)</w:t>", paragraph)
        exact += len(bold) == 1 and bold[0].strip(" .,") == word.strip(".,")
    assert exact / len(wanted) > 0.8, (exact, len(wanted))  # 88% here


def test_a_line_of_sentences_is_aligned_as_its_sentences_are_one_by_one(aligned, learned_toy_run):
    """--split-sentences: the line's alignment is each sentence's, its words counted on."""
    translator, sources, translations = aligned
    line = " ".join(sources[:3])
    joined = translator.with_settings(split_sentences=True).translate_nbest([line], 1)[0][0]
    expected, source_offset, target_offset = [], 0, 0
    for source, translation in zip(sources[:3], translations[:3]):
        expected += [(s + source_offset, t + target_offset) for s, t in translation.alignment]
        source_offset += len(source.split())
        target_offset += len(translation.text.split())
    assert joined.text == " ".join(t.text for t in translations[:3]) and joined.alignment == expected

    # The command prints the same, after ' ||| ', n-best lists too.
    result = s2s_forked("translate", "--checkpoint", learned_toy_run, "--alignment", "--split-sentences",
                        stdin=f"{line}\n{sources[3]}\n")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [f"{joined.text} ||| {format_alignment(expected)}",
                                                   f"{translations[3].text} ||| "
                                                   f"{format_alignment(translations[3].alignment)}"]
    nbest = s2s_forked("translate", "--checkpoint", learned_toy_run, "--alignment", "--beam-size", 2, "--nbest", 2,
                       stdin=f"{sources[0]}\n").stdout.decode().splitlines()
    assert len(nbest) == 2 and all(len(line.split(" ||| ")) == 4 for line in nbest)
    first = nbest[0].split(" ||| ")
    assert first[0] == "0" and first[3].count("-") == len(first[1].split())


def test_forced_alignment_of_a_translation_is_the_alignment_its_search_printed(aligned, learned_toy_run, tmp_path):
    """s2s score --alignment reads a given translation as the search wrote it: the same steps,
    the same attention, so a translation the search found is aligned as translate aligned it."""
    translator, sources, translations = aligned
    scores = translator.score(sources, [t.text for t in translations])
    assert [s.alignment for s in scores] == [t.alignment for t in translations]
    src, tgt = tmp_path / "src.en", tmp_path / "tgt.de"
    src.write_text("".join(s + "\n" for s in sources[:5]), encoding="utf-8")
    tgt.write_text("".join(t.text + "\n" for t in translations[:5]), encoding="utf-8")
    result = s2s_forked("score", "--checkpoint", learned_toy_run, "--src", src, "--tgt", tgt, "--alignment")
    assert result.returncode == 0, result.stderr.decode()
    assert [line.split(" ||| ")[1] for line in result.stdout.decode().splitlines()] == \
        [format_alignment(t.alignment) for t in translations[:5]]
    assert_user_error(s2s_forked("score", "--checkpoint", learned_toy_run, "--src", src, "--tgt", tgt, "--alignment",
                                 "--reverse"), "--alignment with --reverse")
