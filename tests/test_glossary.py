"""Glossaries (``--glossary``): each sentence that holds a source term gets its target term in
its translation, and a sentence without one is translated as without a glossary."""

import json
import re

import pytest

from seq2seq_cli.batching import Search
from seq2seq_cli.constraints import held_in
from seq2seq_cli.errors import UserError
from seq2seq_cli.glossary import Glossary
from seq2seq_cli.translation import Translator

from conftest import assert_user_errors, s2s_forked, toy_lines


def test_terms_are_found_as_written_whole_words_the_first_and_longest_where_they_overlap(tmp_path):
    path = tmp_path / "terms.tsv"
    path.write_text("# a comment\nNew York\tNY\nYork\tYK\n\nbird\tVogel\nbirds\tVögel\n York City \t NYC \n")
    glossary = Glossary.read(path)
    assert glossary.terms == {"New York": "NY", "York": "YK", "bird": "Vogel", "birds": "Vögel", "York City": "NYC"}
    assert glossary.targets("A bird flies to New York City, then to York.") == ["Vogel", "NY", "YK"]
    assert glossary.targets("Two birds and a bird; no Bird, no birdsong.") == ["Vögel", "Vogel"]
    assert glossary.targets("York City") == ["NYC"] and glossary.targets("Yorkshire") == []
    assert glossary.without({"NY", "Vogel"}).targets("A bird in New York.") == ["YK"]
    # A term in lower case is also found capitalized where a sentence begins, and only there.
    assert glossary.targets("Birds fly. Bird seed, said he. Bird!") == ["Vögel", "Vogel"]
    assert glossary.targets('He said: "Bird seed." (Birds.) ¿Bird?') == ["Vogel", "Vögel"]
    assert glossary.targets("A Bird flies; the Birds sing.") == []
    capital = Glossary({"bird": "Vogel", "Bird": "Piepmatz"})  # as written first: a capitalized term of its own
    assert capital.targets("Bird. A bird.") == ["Piepmatz", "Vogel"]
    overlapping = Glossary({"bird seed": "Vogelfutter", "seed bank": "Saatgutbank", "seed": "Samen"})
    assert overlapping.targets("Bird seed bank. A seed bank.") == ["Vogelfutter", "Saatgutbank"]
    # A .csv file as DeepL and spreadsheets write one; a dict in Python.
    csv_file = tmp_path / "terms.csv"
    csv_file.write_text('\ufeffNew York,"NY, the city"\r\n"bird ""Tweety""", Vogel \r\n\r\n', encoding="utf-8")
    assert Glossary.read(csv_file).terms == {"New York": "NY, the city", 'bird "Tweety"': "Vogel"}
    assert Glossary.of({" bird ": "Vogel"}).terms == {"bird": "Vogel"}
    # Accents written as combining marks (macOS) or not: terms and text match as they look.
    path.write_text("Ma\u0308dchen\tgirl\nboy\tJu\u0308ngling\n")
    umlauts = Glossary.read(path)
    assert umlauts.targets("Ein Mädchen.") == ["girl"] and umlauts.targets("Ein Ma\u0308dchen.") == ["girl"]
    assert umlauts.targets("A boy.") == ["Jüngling"] and Glossary.of({"Ma\u0308dchen": "girl"}) == Glossary.of({"Mädchen": "girl"})
    for terms in ({"bird": "\t"}, {"bird": 5}, {"": "Vogel"}):
        with pytest.raises(UserError, match="a term must be text holding a word"):
            Glossary.of(terms)
    with pytest.raises(UserError, match="a source term is given twice"):
        Glossary.of({"bird": "Vogel", "bird ": "Spatz"})
    # Equal by their terms, so served requests with the same terms are searched in one batch.
    searches = {Search(4, glossary=Glossary.of({"bird": "Vogel"})), Search(4, glossary=Glossary({"bird": "Vogel"})),
                Search(4, glossary=Glossary({"bird": "Spatz"})), Search(4)}
    assert len(searches) == 3
    for text, fragment in (("bird\n", "line 1: 'bird' is not SOURCE TERM<TAB>TARGET TERM"),
                           ("bird\tVogel\tx\n", "line 1"), ("\tVogel\n", "line 1"),
                           ("bird\tVogel\nsun\tSonne\nbird\tSpatz\n",
                            "line 3: 'bird' is given as 'Vogel' on line 1 and as 'Spatz' here; keep one")):
        path.write_text(text)
        with pytest.raises(UserError, match=fragment):
            Glossary.read(path)
    for text, fragment in (("bird\n", "line 1: 'bird' is not SOURCE TERM,TARGET TERM; write one term pair per "
                                       'line, separated by a comma (a term with a comma in "double quotes")'),
                           ("bird,Vogel,x\n", "line 1"), ('"bird,Vogel\n', "line 1")):
        csv_file.write_text(text)
        with pytest.raises(UserError, match=re.escape(fragment)):
            Glossary.read(csv_file)


def test_each_sentence_gets_its_terms_and_the_others_stay_as_they_were(learned_toy_run, tmp_path):
    """Lines of two sentences, translated sentence by sentence: a sentence holding a source term
    holds its target term, in every n-best entry (a term in lower case found capitalized where
    the sentence begins too); one holding none is the plain translation."""
    glossary = {"bird": "Telefon", "the doctor": "die Schwester", "sad": "glücklich,", "she": "Morgen"}
    (tmp_path / "terms.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in glossary.items()))
    english, _ = toy_lines("dev", 24)
    lines = [f"{a} {b}" for a, b in zip(english[::2], english[1::2])]
    plain = Translator.load(learned_toy_run, device="cpu", beam_size=4)
    with_terms = plain.with_settings(glossary=tmp_path / "terms.tsv")
    split = with_terms.with_settings(split_sentences=True)
    joined = split.translate(lines)
    assert joined == [" ".join(pair) for pair in zip(with_terms.translate(english[::2]),
                                                       with_terms.translate(english[1::2]))]
    # A line's n-best list begins with its translation, though under constraints a sentence's
    # second may score above its first; then come other texts, each with its sentences' terms.
    split_nbest = split.translate_nbest(lines, 3)
    assert [candidates[0].text for candidates in split_nbest] == joined
    assert all(len({candidate.text for candidate in candidates}) == 3 for candidates in split_nbest)
    for line, candidates in zip(lines, split_nbest):
        wanted = [target for source, target in glossary.items() if held_in(line, source)]
        assert all(held_in(candidate.text, term) for candidate in candidates for term in wanted), (line, candidates)
    found = untouched = capitalized = 0
    for sentence, translated, alone, nbest in zip(english, with_terms.translate(english), plain.translate(english),
                                                  with_terms.with_settings(nbest=3).translate_nbest(english)):
        starting = [target for source, target in glossary.items() if sentence.startswith(source.capitalize() + " ")]
        wanted = [target for source, target in glossary.items() if held_in(sentence, source)] + starting
        capitalized += bool(starting)
        if wanted:
            found += 1
            assert all(held_in(h.text, term) for h in nbest for term in wanted), (sentence, wanted, nbest)
        else:
            untouched += 1
            assert translated == alone
    assert found >= 5 and untouched >= 10 and capitalized >= 2
    assert plain.with_settings(glossary=glossary).translate(english) == with_terms.translate(english)  # a dict
    document = with_terms.translate_html(f"<p>{english[3]} <b>{english[2]}</b></p>")  # as --html, sentence by sentence
    assert document.startswith("<p>") and held_in(document, "Telefon") and held_in(document, "die Schwester")


def test_a_term_takes_the_place_of_the_word_the_model_writes_for_its_source_term(learned_toy_run):
    """A house-style term ("doctor" always "Doktor", where the model writes "Arzt") replaces the
    model's own word, every time the source term stands, the rest of the translation as it
    was; before, the search put "Doktor" wherever it fitted and kept "Arzt" ("Der lange Arzt
    ist traurig, weil ... Doktor ..."). The first of an n-best list is that translation, and a
    sentence translates so among others of a line (``--split-sentences``)."""
    english = [line for line in toy_lines("dev")[0] if re.search(r"\bdoctor\b", line)][:14]
    english += ["The doctor sees the doctor.", "The old doctor knows that the doctor is tired."]
    plain = Translator.load(learned_toy_run, device="cpu", beam_size=4)
    house = plain.with_settings(glossary={"doctor": "Doktor"})
    replaced = [re.sub(r"\bArzt\b", "Doktor", text) for text in plain.translate(english)]
    twice = [text for text in replaced if len(re.findall(r"\bDoktor\b", text)) == 2]
    translated = house.translate(english)
    assert len(english) == 16 and twice and sum(map(str.__eq__, translated, replaced)) >= 14, (translated, replaced)
    assert sum(held_in(text, "Arzt") for text in translated) <= 1  # where the model wrote "Arzt" twice for one
    lists = house.translate_nbest(english, 3)
    assert [candidates[0].text for candidates in lists] == translated
    # The alternatives take the term in place of the same word, as the 1-best does.
    assert sum(held_in(candidate.text, "Arzt") for candidates in lists for candidate in candidates) <= 3
    split = house.with_settings(split_sentences=True).translate([f"{a} {b}" for a, b in zip(english[::2], english[1::2])])
    assert split == [f"{a} {b}" for a, b in zip(translated[::2], translated[1::2])]


def test_s2s_translate_evaluate_and_their_errors_with_a_glossary(learned_toy_run, tmp_path):
    (tmp_path / "terms.tsv").write_text("bird\tTelefon\nsister\tMutter\n")
    english, german = toy_lines("dev", 20)
    (tmp_path / "dev.en").write_text("\n".join(english) + "\n")
    (tmp_path / "dev.de").write_text("\n".join(german) + "\n")
    run, glossary = learned_toy_run, ("--glossary", tmp_path / "terms.tsv", "--beam-size", "4")
    printed = s2s_forked("translate", "--checkpoint", run, *glossary, "--input", tmp_path / "dev.en",
                         "--output", tmp_path / "out.de")
    assert printed.returncode == 0, printed.stderr
    translations = (tmp_path / "out.de").read_text().splitlines()
    assert translations == Translator.load(run, device="cpu", beam_size=4, glossary=tmp_path / "terms.tsv").translate(
        english)
    wanted = [[t for s, t in (("bird", "Telefon"), ("sister", "Mutter")) if held_in(line, s)] for line in english]
    # What the glossary did is said at the end; a glossary whose terms the input never holds, in a warning.
    assert (f"--glossary {tmp_path / 'terms.tsv'}: {sum(map(len, wanted))} source terms found, in "
            f"{sum(map(bool, wanted))} of 20 lines") in printed.stderr.decode()
    (tmp_path / "unused.tsv").write_text("Vogel\tbird\n")  # German terms for an English input
    unused = s2s_forked("translate", "--checkpoint", run, "--glossary", tmp_path / "unused.tsv", "--beam-size", "4",
                        stdin="\n".join(english[:3]) + "\n")
    assert unused.returncode == 0 and "none of its 1 source terms occurs in the 3 lines translated" in \
        unused.stderr.decode()
    evaluated = s2s_forked("evaluate", "--checkpoint", run, *glossary, "--src", tmp_path / "dev.en",
                           "--ref", tmp_path / "dev.de", "--json", tmp_path / "report.json")
    assert evaluated.returncode == 0, evaluated.stderr
    terms = sum(map(len, wanted))
    assert json.loads((tmp_path / "report.json").read_text())["phrases"] == {
        "lines": sum(map(bool, wanted)), "phrases": terms, "held": terms} and terms >= 6
    plain = s2s_forked("translate", "--checkpoint", run, "--beam-size", "4", "--input", tmp_path / "dev.en",
                       "--output", tmp_path / "plain.de")
    assert plain.returncode == 0, plain.stderr
    compared = s2s_forked("evaluate", "--hyp", tmp_path / "plain.de", "--src", tmp_path / "dev.en", "--ref",
                          tmp_path / "dev.de", "--glossary", tmp_path / "terms.tsv", "--json", tmp_path / "plain.json")
    assert compared.returncode == 0, compared.stderr
    assert json.loads((tmp_path / "plain.json").read_text())["phrases"]["held"] < terms / 2
    (tmp_path / "bad.tsv").write_text("bird Vogel\n")
    assert_user_errors(
        (("translate", "--checkpoint", run, "--glossary", tmp_path / "terms.tsv", "--beam-size", "1"),
         "--glossary needs beam search"),
        (("translate", "--checkpoint", run, "--glossary", tmp_path / "bad.tsv", "--beam-size", "4"),
         "bad.tsv line 1: 'bird Vogel' is not SOURCE TERM<TAB>TARGET TERM"),
        (("evaluate", "--hyp", tmp_path / "plain.de", "--ref", tmp_path / "dev.de", "--glossary", tmp_path / "terms.tsv"),
         "--glossary looks its source terms up in --src"))


def test_a_target_term_the_vocabulary_cannot_spell_is_named_once_and_left_out(learned_toy_run, tmp_path, caplog):
    (tmp_path / "terms.tsv").write_text("bird\t\u041c\u043e\u0441\u043a\u0432\u0430\nsister\tVater\n")
    english, _ = toy_lines("dev", 12)
    plain = Translator.load(learned_toy_run, device="cpu", beam_size=4)
    with caplog.at_level("WARNING"):
        with_terms = plain.with_settings(glossary=tmp_path / "terms.tsv")
        translations = with_terms.translate(english)
    named = [record.getMessage() for record in caplog.records if "cannot spell" in record.getMessage()]
    assert named == ["glossary: the target vocabulary cannot spell 'Москва'; its entries are left out"]
    assert with_terms.glossary.terms == {"sister": "Vater"}
    for sentence, translated, alone in zip(english, translations, plain.translate(english)):
        assert translated == alone or held_in(sentence, "sister")
