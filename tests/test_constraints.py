"""Lexically constrained beam search (``s2s translate --constraints``): every translation holds
its phrases, the search is exact where it can be checked exhaustively, and without phrases it
is beam search, result for result."""

import itertools
import json

import pytest
import torch

from seq2seq_cli.constraints import (Constraints, ConstraintState, StateTable, allocate, held_in, holds, split_line,
                                     ways_of_writing)
from seq2seq_cli.data import pad_sources
from seq2seq_cli.decoding import beam_search, constrained_beam_search, gnmt_penalty
from seq2seq_cli.translation import Translator

from conftest import IDS, SOURCES, assert_user_errors, make_batch, s2s_forked, tiny_model, toy_lines

from test_decoding import sequence_log_prob


def test_a_state_counts_the_constraint_tokens_in_place_and_drops_a_phrase_broken_off():
    phrases = Constraints([[[7, 8, 9], [7, 10]], [[8]]])  # the first written 7 8 9 or 7 10 ("bicycle" or "bicycle.")
    state = ConstraintState()
    assert sorted(state.advancing(phrases)) == [7, 8] and state.tokens_met(phrases) == 0
    state = state.after(7, phrases)  # 7 begins both ways of the first phrase
    assert state.advancing(phrases) == [8, 10] and state.tokens_met(phrases) == 1
    broken = state.after(5, phrases)  # neither way's next token: the phrase begun is dropped
    assert broken == ConstraintState() and broken.tokens_met(phrases) == 0
    assert state.after(10, phrases).ended().met == {0}  # its other way
    state = state.after(8, phrases).after(9, phrases)
    assert state.pending == 0 and state.tokens_met(phrases) == 3 and not state.ended().done(phrases)
    state = state.after(8, phrases)
    assert state.met == {0} and state.pending == 1 and state.advancing(phrases) == [] and state.tokens_met(phrases) == 4
    assert state.ended().done(phrases)
    # Restarted by the token that breaks it off: 7 7 8 9 holds the phrase.
    assert ConstraintState().after(7, phrases).after(7, phrases).partial == {(0, 0, 1), (0, 1, 1)}
    first = phrases.phrases[0]
    assert holds([1, 7, 10, 2], first) and holds([7, 8, 9], first) and not holds([7, 8, 10], first)


def test_a_phrase_is_met_only_where_its_last_word_ends():
    """ "Bruder" is not in "Brudern": a token that goes on the word ("##n") undoes the phrase."""
    bruder, n, der = 7, 30, 8
    wanted = Constraints([[[bruder]]], continuation=frozenset({n}))
    state = ConstraintState().after(bruder, wanted)
    assert state.pending == 0 and not state.done(wanted)
    assert not state.after(n, wanted).ended().done(wanted)  # "Brudern"
    assert state.after(der, wanted).done(wanted) and state.ended().done(wanted)  # "Bruder der", "Bruder" at the end
    assert not ConstraintState().after(n, Constraints([[[n, der]]], frozenset({n}))).partial  # no phrase starts mid-word
    assert holds([der, bruder], wanted.phrases[0], wanted.continuation)
    assert holds([bruder, der], wanted.phrases[0], wanted.continuation)
    assert not holds([der, bruder, n], wanted.phrases[0], wanted.continuation)


def test_a_phrase_in_lower_case_begins_a_translation_only_capitalized():
    """Ways of writing a phrase where the translation begins ("Kids", here 17 8) count only
    there, and its other ways ("kids", 7) only further on."""
    wanted = Constraints([[[7], [17, 8]], [[9]]], opening=frozenset({(0, 1)}))
    start = ConstraintState(opening=True)
    assert sorted(start.advancing(wanted)) == [9, 17]
    assert start.after(7, wanted) == ConstraintState()  # "kids" begins no phrase where a translation begins
    assert start.after(17, wanted).after(8, wanted).pending == 0
    later = start.after(9, wanted)
    assert later.pending == 1 and later.advancing(wanted) == [7]
    assert not later.after(17, wanted).partial and later.after(7, wanted).pending == 0
    assert wanted.held([17, 8, 9]) == [True, True] and wanted.held([9, 17, 8]) == [False, True]
    assert wanted.held([7, 9]) == [False, True] and wanted.held([9, 7]) == [True, True]
    # Where the two are written alike (an uncased vocabulary), the phrase has no ways of its own there.
    assert Constraints([[[7]]]).held([7, 9]) == [True] and ConstraintState(opening=True).after(7, Constraints([[[7]]])).pending == 0


def test_a_phrase_is_also_written_with_a_mark_its_last_word_takes_in():
    """A vocabulary that splits at spaces reads "bicycle." as one token: that is a way to write
    "bicycle" too; "bicycle," read as "bicycle" "##," starts with the phrase and adds nothing."""
    bicycle, with_stop, with_comma = [40], [41], [40, 12]
    assert ways_of_writing(bicycle, [with_stop, with_comma, with_stop]) == [[40], [41]]


def taken_in_turn(banks: list[int], scores: list[float], count: int) -> list[int]:
    """Dynamic beam allocation as Post & Vilar describe it: a queue per bank, best first, and
    the banks take turns, the fullest first, a queue run dry giving its turn away."""
    queues: dict[int, list[int]] = {}
    for index in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if scores[index] > float("-inf"):
            queues.setdefault(banks[index], []).append(index)
    turns = [queues[bank] for bank in sorted(queues, reverse=True)]
    taken, turn = [], 0
    while len(taken) < count and any(turns):
        if turns[turn % len(turns)]:
            taken.append(turns[turn % len(turns)].pop(0))
        turn += 1
    return taken


def allocated(banks: list[list[int]], scores: list[list[float]], count: int) -> list[list[int]]:
    taken, is_candidate = allocate(torch.tensor(banks), torch.tensor(scores), count)
    return [[i for i, real in zip(row, reals) if real] for row, reals in zip(taken.tolist(), is_candidate.tolist())]


def test_allocation_takes_the_banks_in_turn_fullest_first_best_first():
    banks = [0, 0, 0, 0, 1, 2, 2]
    scores = [-1.0, -2.0, -3.0, -4.0, -9.0, -8.0, -5.0]
    assert allocated([banks], [scores], 5) == [[6, 4, 0, 5, 1]]
    assert allocated([banks], [scores], 10) == [[6, 4, 0, 5, 1, 2, 3]]  # a bank run dry gives its turn away
    assert allocated([[0, 0], [3, 0]], [[-2.0, -1.0], [-1.0, float("-inf")]], 1) == [[1], [0]]
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):  # rows of every shape against the queues taking turns
        rows, width = torch.randint(1, 4, (2,), generator=generator).tolist()
        width *= 9
        banks = torch.randint(0, 6, (rows, width), generator=generator)
        scores = torch.randn(rows, width, generator=generator)
        scores[torch.rand(rows, width, generator=generator) < 0.2] = float("-inf")  # not candidates
        count = int(torch.randint(1, width + 3, (1,), generator=generator))
        assert allocated(banks.tolist(), scores.tolist(), count) == [
            taken_in_turn(b, s, count) for b, s in zip(banks.tolist(), scores.tolist())]


def test_a_state_table_knows_every_tokens_bank_as_after_does():
    """The search reads most candidates' banks from their beam's summary, computing ``after``
    only for its special tokens: for every state reachable in a few tokens and every token,
    that gives ``after``'s own bank."""
    wanted = Constraints([[[7, 8, 9], [7, 10]], [[8]], [[11, 7]], [[12], [31, 12]]], continuation=frozenset({30, 9}),
                         opening=frozenset({(3, 1)}))
    table, vocabulary = StateTable(wanted), [2, 7, 8, 9, 10, 11, 12, 30, 31]
    states = {ConstraintState(opening=True)}
    for _ in range(4):
        states |= {state.after(token, wanted) for state in states for token in vocabulary}
    assert len(states) > 10
    for state in states:
        summary = table.summary(state)
        assert summary.may_end == state.ended().done(wanted)
        assert summary.bank_ended == state.ended().tokens_met(wanted)
        assert summary.advancing == state.advancing(wanted)
        for token in vocabulary:
            reached, bank = table.after(state, token)
            assert reached == state.after(token, wanted) and bank == reached.tokens_met(wanted)
            if token not in summary.special:
                assert bank == (summary.bank_going_on if token in wanted.continuation else summary.bank_starting_word)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("phrases", [[[[5, 4]]], [[[1]], [[5]]], [[[4, 4, 4]]], [[[1, 1], [5, 1, 4]]]])
def test_a_wide_constrained_beam_finds_the_best_translation_that_holds_the_phrases(seed, phrases):
    """Exhaustive search over every translation of up to 4 tokens that holds the phrases: a beam
    wider than all of them must find the best, with the model's own score."""
    model = tiny_model(seed, sharpness=3.0)
    source, limit, alpha = [4, 5, 1], 4, 1.0
    holding = [seq for n in range(limit + 1) for seq in itertools.product([1, 4, 5], repeat=n)
               if all(holds(seq, phrase) for phrase in phrases)]
    best = max((sequence_log_prob(model, source, seq, limit) / gnmt_penalty(len(seq) + 1, alpha), seq)
               for seq in holding)
    src_ids, src_lengths = pad_sources([source], IDS.pad, IDS.eos)
    found = constrained_beam_search(model, src_ids, src_lengths, IDS, torch.tensor([limit]), 128, [Constraints(phrases)],
                                    length_penalty=alpha)[0][0]
    assert tuple(found.tokens) == best[1]
    assert found.score == pytest.approx(best[0], abs=1e-4)
    assert found.log_prob == pytest.approx(sequence_log_prob(model, source, found.tokens, limit), abs=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_a_wide_constrained_beam_finds_the_best_translation_that_begins_or_holds_a_phrase_as_written_there(seed):
    """A phrase written 5 1 where the translation begins ("Kids") and 4 elsewhere ("kids"):
    exhaustive search over every translation of up to 4 tokens that holds it so."""
    model = tiny_model(seed, sharpness=3.0)
    source, limit, alpha = [4, 5, 1], 4, 1.0
    wanted = Constraints([[[4], [5, 1]]], opening=frozenset({(0, 1)}))
    sequences = [seq for n in range(limit + 1) for seq in itertools.product([1, 4, 5], repeat=n)]
    holding = [seq for seq in sequences if seq[:2] == (5, 1) or 4 in seq[1:]]
    assert [seq for seq in sequences if wanted.held(seq)[0]] == holding
    best = max((sequence_log_prob(model, source, seq, limit) / gnmt_penalty(len(seq) + 1, alpha), seq)
               for seq in holding)
    src_ids, src_lengths = pad_sources([source], IDS.pad, IDS.eos)
    found = constrained_beam_search(model, src_ids, src_lengths, IDS, torch.tensor([limit]), 128, [wanted],
                                    length_penalty=alpha)[0][0]
    assert tuple(found.tokens) == best[1]
    assert found.score == pytest.approx(best[0], abs=1e-4)


@pytest.mark.parametrize("beam", [2, 5])
def test_without_phrases_it_is_beam_search(beam):
    model = tiny_model(1, vocab=12, sharpness=2.0)
    src_ids, src_lengths, limits = make_batch(SOURCES)
    plain = beam_search(model, src_ids, src_lengths, IDS, limits, beam, 1.0, nbest=beam)
    constrained = constrained_beam_search(model, src_ids, src_lengths, IDS, limits, beam, [Constraints([]) for _ in SOURCES],
                                          1.0, nbest=beam)
    for expected, found in zip(plain, constrained):
        assert [h.tokens for h in found] == [h.tokens for h in expected]
        assert [h.score for h in found] == pytest.approx([h.score for h in expected], abs=1e-5)


def test_every_translation_holds_its_phrases_and_the_rest_stays_the_models(learned_toy_run):
    """On the toy model: a phrase its translation already holds, the last word included (its
    full stop a token of its own with it), changes nothing; a word from another sentence's
    translation is put into each, in every n-best entry."""
    translator = Translator.load(learned_toy_run, device="cpu", beam_size=5)
    english, _ = toy_lines("dev", 30)
    plain = [nbest[0] for nbest in translator.translate_nbest(english)]
    own = [max(t.text.rstrip(".").split()[1:], key=len) for t in plain]  # a word of its own translation
    same = [nbest[0] for nbest in translator.with_settings(constraints=True).translate_nbest(
        [f"{e}\t{w}" for e, w in zip(english, own)])]
    assert [t.text for t in same] == [t.text for t in plain]
    assert [t.score for t in same] == pytest.approx([t.score for t in plain], abs=1e-5)  # batched otherwise
    foreign = [own[(k + 7) % len(own)] for k in range(len(own))]
    nbest = translator.with_settings(constraints=True, nbest=3).translate_nbest(
        [f"{e}\t{w}\t{w2}" for e, w, w2 in zip(english[:12], foreign, own)])
    for words, hypotheses in zip(zip(foreign, own), nbest):
        for hypothesis in hypotheses:
            assert all(word in hypothesis.text.split() or word + "." in hypothesis.text.split()
                       for word in words), (words, hypothesis.text)


def test_an_nbest_list_under_constraints_begins_with_the_1_best(learned_toy_run):
    """Asking for alternatives does not change the translation: an n-best list's first entry is
    what the line translates to alone, with phrases and with a glossary, its entries different
    texts that hold the phrases."""
    translator = Translator.load(learned_toy_run, device="cpu", beam_size=5)
    english, _ = toy_lines("dev", 40)
    words = [max(text.rstrip(".").split()[1:], key=len) for text in translator.translate(english)]  # words it writes
    lines = [f"{e}\t{words[(k + 3) % len(words)]}" + (f"\t{words[(k + 5) % len(words)]}" if k % 2 else "")
             for k, e in enumerate(english)]
    constrained = translator.with_settings(constraints=True)
    best = constrained.translate(lines)
    for n in (2, 4, 5):
        lists = constrained.translate_nbest(lines, n)
        assert [hypotheses[0].text for hypotheses in lists] == best, n
        for line, hypotheses in zip(lines, lists):
            assert len({h.text for h in hypotheses}) == n
            assert all(held_in(h.text, phrase) for h in hypotheses for phrase in line.split("\t")[1:]), (
                line, [h.text for h in hypotheses])
    glossary = translator.with_settings(glossary={"the": "eine", "a": "der", "dog": "Katze"})
    assert [hypotheses[0].text for hypotheses in glossary.translate_nbest(english, 4)] == glossary.translate(english)


def test_a_lines_translation_does_not_depend_on_the_lines_beside_it(learned_toy_run):
    """Each line's beam is as wide as its own phrases need (a phrase of six tokens widens it to
    14): translated in a file among lines with longer and shorter phrases, and without phrases,
    a line gives what it gives alone."""
    translator = Translator.load(learned_toy_run, device="cpu", beam_size=5).with_settings(constraints=True)
    english, german = toy_lines("dev", 16)
    words = sorted({word for line in german for word in line.rstrip(".").split()[1:]}, key=len)
    pieces = [len(translator.tokenizers.encode_tgt([word])[0]) for word in words]
    assert max(pieces) >= 4 and min(pieces) == 1
    lines = [english[k] if k % 5 == 4 else f"{english[k]}\t{words[(k * 7) % len(words)]}" for k in range(16)]
    together = translator.translate(lines)
    assert [translator.translate([line])[0] for line in lines] == together


def test_a_phrase_in_lower_case_begins_a_translation_capitalized(learned_toy_run):
    """German writes "manchmal" "Manchmal" where a sentence begins: a translation beginning so
    holds the phrase, and is kept as it is (a glossary's target term too); one that does not hold
    it gets it, and where it begins the translation it begins capitalized."""
    translator = Translator.load(learned_toy_run, device="cpu", beam_size=4)
    english, _ = toy_lines("train", 400)
    sometimes = [line for line in english if line.startswith("Sometimes ")][:6]
    plain = translator.translate(sometimes)
    assert len(plain) == 6 and all(text.startswith("Manchmal ") for text in plain), plain
    assert translator.with_settings(constraints=True).translate([f"{e}\tmanchmal" for e in sometimes]) == plain
    assert translator.with_settings(glossary={"sometimes": "manchmal"}).translate(sometimes) == plain
    others = [line for line in english if not line.startswith("Sometimes ")][:12]
    constrained = translator.with_settings(constraints=True, nbest=2).translate_nbest([f"{e}\tmanchmal" for e in others])
    texts = [hypothesis.text for hypotheses in constrained for hypothesis in hypotheses]
    assert all(held_in(text, "manchmal") and not text.startswith("manchmal") for text in texts), texts


def test_s2s_translate_constraints(learned_toy_run):
    lines = "The man sees the dog.\tKatze\nThe man sees the dog.\t\u041c\u043e\u0441\u043a\u0432\u0430\n\n"
    result = s2s_forked("translate", "--checkpoint", learned_toy_run, "--constraints", "--beam-size", "4", stdin=lines)
    assert result.returncode == 0, result.stderr
    first, second, empty = result.stdout.decode().split("\n")[:3]
    assert "Katze" in first.replace(".", " ").split() and "Katze" not in second and empty == ""
    assert "input line 2: the target vocabulary cannot spell the constraint 'Москва'; left out" in result.stderr.decode()
    run = learned_toy_run
    assert_user_errors(
        (("translate", "--checkpoint", run, "--constraints", "--beam-size", "1"), "--constraints needs beam search"),
        (("translate", "--checkpoint", run, "--constraints", "--beam-size", "3", "--split-sentences"),
         "--constraints cannot be used with --split-sentences"),
        (("translate", "--checkpoint", run, "--constraints", "--beam-size", "3", "--html"), "--constraints does not apply"))


def test_a_phrase_the_vocabulary_spells_with_a_look_alike_comes_out_as_written(learned_toy_run):
    """The toy vocabulary has no "ë": "Zoë" is encoded as "Zoe" (README, Tokenization) and the
    search puts those tokens in; the translation shows the name as the user wrote it, in every
    n-best entry, its words (and alignment) the model's one for one."""
    translator = Translator.load(learned_toy_run, device="cpu", beam_size=4)
    assert translator.tokenizers.decode_tgt(translator.tokenizers.encode_tgt(["Zoë"]))[0] == "Zoe"
    constrained = translator.with_settings(constraints=True, nbest=3, alignment=True)
    for hypotheses in constrained.translate_nbest(["The man sees the dog.\tZoë", "The man sees the dog.\tZoë ist"]):
        for hypothesis in hypotheses:
            assert held_in(hypothesis.text, "Zoë") and "Zoe" not in hypothesis.text, hypothesis.text
    line = "The man sees the dog.\tZoë"
    _, (hypotheses,) = constrained.translate_raw([line.encode()])
    source_ids = translator.tokenizers.encode_src(["The man sees the dog."])[0]
    best = hypotheses[0]
    words = constrained.detokenize([best])[0].split()
    links = constrained.word_alignment(source_ids, best)
    assert sorted(target for _, target in links) == list(range(len(words)))


def test_a_phrase_with_accents_written_as_combining_marks_is_put_in(learned_toy_run):
    """ "Mädchen" typed with a combining diaeresis (macOS) looks like the word the vocabulary
    spells and is put in as it, not left out as unspellable; counted held either way."""
    import unicodedata

    translator = Translator.load(learned_toy_run, device="cpu", beam_size=4).with_settings(constraints=True)
    phrase = unicodedata.normalize("NFD", "Mädchen")
    (text,) = translator.translate([f"The man sees the dog.\t{phrase}"])
    assert held_in(text, phrase) and held_in(text, "Mädchen"), text


def test_a_phrase_is_held_as_written_and_as_whole_words():
    assert held_in("A man rides a bicycle.", "bicycle") and held_in("the red car, and", "red car")
    assert not held_in("Der Brudern", "Bruder") and not held_in("a bored car", "red car")
    assert not held_in("a Bicycle", "bicycle") and held_in("Zoë's bike", "Zoë")
    # A phrase in lower case is held capitalized where a sentence begins, as the search writes it.
    assert held_in("Bicycles are red.", "bicycles") and held_in('He came. "Bicycles!"', "bicycles")
    assert not held_in("The Bicycles", "bicycles") and not held_in("IPhone", "iPhone")
    assert held_in("Ein Ma\u0308dchen.", "Mädchen") and held_in("Ein Mädchen.", "Ma\u0308dchen")
    assert split_line("Ein Mann.\t cyclist \t\tred car") == ("Ein Mann.", ["cyclist", "red car"])


def test_s2s_evaluate_constraints_counts_the_phrases_each_system_holds(learned_toy_run, tmp_path):
    """``evaluate --constraints`` translates as ``translate --constraints`` does and scores that;
    with --hyp it reads the phrases from --src, for each system: a word of another sentence's
    reference is in every constrained translation and in few plain ones."""
    english, german = toy_lines("test", 24)
    words = [max(line.replace(".", "").replace(",", "").split(), key=len) for line in german]
    terms = [f"{e}\t{words[(k + 5) % len(words)]}" if k % 4 else e for k, e in enumerate(english)]
    (tmp_path / "terms.en").write_text("\n".join(terms) + "\n")
    (tmp_path / "plain.en").write_text("\n".join(english) + "\n")
    (tmp_path / "ref.de").write_text("\n".join(german) + "\n")
    run, beam = learned_toy_run, ("--beam-size", "4")
    translated = s2s_forked("translate", "--checkpoint", run, "--constraints", *beam, "--input", tmp_path / "terms.en",
                            "--output", tmp_path / "constrained.de")
    assert translated.returncode == 0, translated.stderr
    s2s_forked("translate", "--checkpoint", run, *beam, "--input", tmp_path / "plain.en", "--output", tmp_path / "plain.de")
    evaluated = s2s_forked("evaluate", "--checkpoint", run, "--src", tmp_path / "terms.en", "--ref", tmp_path / "ref.de",
                           "--constraints", *beam, "--json", tmp_path / "report.json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    scored = s2s_forked("evaluate", "--hyp", tmp_path / "constrained.de", "--src", tmp_path / "terms.en",
                        "--ref", tmp_path / "ref.de", "--constraints", "--json", tmp_path / "scored.json")
    assert scored.returncode == 0, scored.stderr
    again = json.loads((tmp_path / "scored.json").read_text())
    assert report["bleu"]["score"] == again["bleu"]["score"] and report["phrases"] == again["phrases"]
    constrained = (tmp_path / "constrained.de").read_text().splitlines()
    wanted = [line.split("\t")[1:] for line in terms]
    held = sum(word in text.replace(".", " ").replace(",", " ").split() for text, line in zip(constrained, wanted)
               for word in line)
    assert report["phrases"] == {"lines": 18, "phrases": 18, "held": held} and held == 18
    assert "constraints: 18 of 18 phrases held (100.0%), in 18 lines" in evaluated.stdout.decode()
    compared = s2s_forked("evaluate", "--hyp", tmp_path / "plain.de", "--hyp", tmp_path / "constrained.de",
                          "--src", tmp_path / "terms.en", "--ref", tmp_path / "ref.de", "--constraints",
                          "--json", tmp_path / "compared.json")
    assert compared.returncode == 0, compared.stderr
    plain, forced = json.loads((tmp_path / "compared.json").read_text())["systems"]
    assert forced["phrases"] == report["phrases"] and plain["phrases"]["held"] < 9
    assert_user_errors(
        (("evaluate", "--hyp", tmp_path / "plain.de", "--ref", tmp_path / "ref.de", "--constraints"),
         "--constraints reads each line's phrases from --src"),
        (("evaluate", "--hyp", tmp_path / "plain.de", "--src", tmp_path / "terms.en", "--ref", tmp_path / "ref.de"),
         "drop --src, or add --constraints"),
        (("evaluate", "--checkpoint", run, "--src", tmp_path / "terms.en", "--ref", tmp_path / "ref.de",
          "--constraints", "--beam-size", "1"), "--constraints needs beam search"))
