"""Sentence splitting (``--split-sentences``, ``s2s serve``): a paragraph on one line is
translated sentence by sentence, and its translation is exactly its sentences' translations
joined, whatever the search, the sampling seed's numbering or the batches."""

import itertools

import pytest
import sacrebleu
import torch

from conftest import assert_user_errors, s2s_forked, toy_lines, write_corpus
from seq2seq_cli.decoding import Sampling
from seq2seq_cli.segmentation import fit_sentences, sentence_joiner, split_sentences
from seq2seq_cli.tokenization import Tokenizers
from seq2seq_cli.translation import Translator


def paragraphs(sentences: list[str], sizes=(3, 1, 4, 2)) -> tuple[list[str], list[list[str]]]:
    """``sentences`` grouped into lines of ``sizes`` sentences in turn (the last may be shorter)."""
    groups, start = [], 0
    while start < len(sentences):
        size = sizes[len(groups) % len(sizes)]
        groups.append(sentences[start:start + size])
        start += size
    return [" ".join(group) for group in groups], groups


def test_sentences_end_where_the_language_ends_them():
    german = "Dr. Müller kam z.B. am 3. Mai um 10 Uhr. Er lachte!  Wirklich? Ja."
    assert split_sentences(german, "de") == ["Dr. Müller kam z.B. am 3. Mai um 10 Uhr.", "Er lachte!", "Wirklich?",
                                             "Ja."]
    assert split_sentences("Mr. Smith paid 3.5 dollars, e.g. for tea. He left.", "en") == \
        ["Mr. Smith paid 3.5 dollars, e.g. for tea.", "He left."]
    assert split_sentences("我喜欢猫。你呢？", "zh") == ["我喜欢猫。", "你呢？"]
    assert split_sentences("  no end mark  ", None) == ["no end mark"]
    for blank in ("", "   "):  # a line always has something to translate, even if nothing
        assert split_sentences(blank, "en") == [""]
    assert sentence_joiner("de") == " " and sentence_joiner("ja") == "" and sentence_joiner(None) == " "


def test_a_paragraph_translates_as_its_sentences_joined(learned_toy_run):
    sentences = toy_lines("test", 30)[0]
    lines, groups = paragraphs(sentences)
    whole = Translator.load(learned_toy_run, device="cpu", batch_size=7)
    split = Translator.load(learned_toy_run, device="cpu", batch_size=7, split_sentences=True)
    alone = whole.translate(sentences)
    expected, start = [], 0
    for group in groups:
        expected.append(" ".join(alone[start:start + len(group)]))
        start += len(group)
    assert split.translate(lines) == expected
    # Beam search's n-best lists: a line's are the best ways of taking one translation from
    # each of its sentences' lists (searched through all of them here), the 1-best first, then
    # by their scores added up; before, the k-th joined every sentence's k-th, so the second
    # changed every sentence for a worse one.
    beam, beam_split = (translator.with_settings(beam_size=3) for translator in (whole, split))
    alone_nbest = beam.translate_nbest(sentences, 3)
    start, changed = 0, []
    for group, candidates in zip(groups, beam_split.translate_nbest(lines, 3)):
        parts = alone_nbest[start:start + len(group)]
        start += len(group)
        best = tuple(part[0] for part in parts)
        others = sorted((choice for choice in itertools.product(*parts) if choice != best),
                        key=lambda choice: -sum(t.score for t in choice))
        for candidate, choice in zip(candidates, [best, *others], strict=False):
            assert candidate.text == " ".join(t.text for t in choice)
            assert candidate.log_prob == pytest.approx(sum(t.log_prob for t in choice), abs=1e-4)
            assert candidate.score == pytest.approx(sum(t.score for t in choice), abs=1e-4)
        assert len(candidates) == 3
        if len(group) > 1:
            changed.append(sum(a != b for a, b in zip(candidates[0].text.split(), candidates[1].text.split())))
    assert changed and sorted(changed)[len(changed) // 2] <= 3  # the second is the first with a word or two changed
    # What it is for: on paragraphs the model (trained on single sentences) translates far
    # better one sentence at a time.
    joined_references = paragraphs(toy_lines("test", 30)[1])[0]
    bleu_split = sacrebleu.corpus_bleu(split.translate(lines), [joined_references]).score
    bleu_whole = sacrebleu.corpus_bleu(whole.translate(lines), [joined_references]).score
    assert bleu_split >= bleu_whole + 10, (bleu_split, bleu_whole)


def test_a_split_line_attends_sentence_by_sentence(learned_toy_run):
    sentences = toy_lines("test", 3)[0]
    translator = Translator.load(learned_toy_run, device="cpu", keep_attention=True, split_sentences=True)
    (source_ids,), ((best,),) = translator.translate_raw([" ".join(sentences).encode()])
    source_tokens, target_tokens = translator.attention_labels(source_ids, best)
    assert best.attention.shape == (len(target_tokens), len(source_tokens))
    assert source_tokens.count("[SEP]") == target_tokens.count("[SEP]") == 3  # one after each sentence
    torch.testing.assert_close(best.attention.sum(dim=1), torch.ones(len(target_tokens)))
    # Each sentence's translation attends to its own source only: the matrix is block-diagonal,
    # each block ending on a [SEP] row and column.
    source_ends = [i for i, token in enumerate(source_tokens) if token == "[SEP]"]
    target_ends = [i for i, token in enumerate(target_tokens) if token == "[SEP]"]
    row_start = column_start = 0
    for row_end, column_end in zip(target_ends, source_ends):
        block = best.attention[row_start:row_end + 1]
        assert float(block[:, :column_start].abs().sum() + block[:, column_end + 1:].abs().sum()) == 0.0
        row_start, column_start = row_end + 1, column_end + 1


def test_sampled_sentences_are_numbered_through_the_input(learned_toy_run):
    """A sample's seed counts sentences, not lines: a paragraph's sentences get different draws,
    and the same input gives the same samples however it is handed over."""
    lines = paragraphs(toy_lines("dev", 12)[0])[0]
    sampling = Sampling(seed=5)
    in_one_call = Translator.load(learned_toy_run, device="cpu", sampling=sampling, split_sentences=True,
                                  batch_size=3).translate(lines)
    one_at_a_time = Translator.load(learned_toy_run, device="cpu", sampling=sampling, split_sentences=True)
    assert [one_at_a_time.translate(line) for line in lines] == in_one_call


def test_s2s_translate_split_sentences(learned_toy_run, tmp_path):
    sentences = toy_lines("test", 10)[0]
    lines, _ = paragraphs(sentences)
    src, _ = write_corpus(tmp_path, "paragraphs", lines, lines)
    result = s2s_forked("translate", "--checkpoint", learned_toy_run, "--device", "cpu", "--input", src, "--split-sentences")
    assert result.returncode == 0, result.stderr.decode()
    expected = Translator.load(learned_toy_run, device="cpu", split_sentences=True).translate(lines)
    assert result.stdout.decode().splitlines() == expected
    assert_user_errors((("evaluate", "--hyp", src, "--ref", src, "--split-sentences"),
                        "--split-sentences only applies to translating with --checkpoint"))


def fewest_pieces(tokens: list[tuple[int, int, int]], limit: int) -> int:
    """How many pieces of at most ``limit`` tokens, cut between words, ``tokens`` need: as many
    as pieces each as long as can be, one after another, make."""
    pieces, start = 0, 0
    while start < len(tokens):
        end = min(start + limit, len(tokens))
        while end < len(tokens) and tokens[end][2] == tokens[end - 1][2]:
            end -= 1
        pieces, start = pieces + 1, end
    return pieces


def test_a_sentence_over_the_limit_is_cut_between_words_into_fewest_pieces(learned_toy_run):
    tokenizers = Tokenizers.load(learned_toy_run / "tokenizer")

    def token_count(text: str) -> int:
        return len(tokenizers.src_words([text])[0])

    sentences = toy_lines("test", 60)[0]
    lines = [", ".join(sentence.rstrip(".") for sentence in sentences[start:start + 4]) + "."
             for start in range(0, 60, 4)]
    for limit in (8, 13, 30):
        for line in lines:
            pieces = fit_sentences([line], limit, tokenizers.src_words)
            assert " ".join(pieces) == line  # nothing lost, nothing added
            assert all(token_count(piece) <= limit for piece in pieces)
            assert len(pieces) == fewest_pieces(tokenizers.src_words([line])[0], limit)
            # Cut between words, the pieces read as the same tokens as the whole line.
            assert tokenizers.encode_src(pieces) and sum(tokenizers.encode_src(pieces), []) == \
                tokenizers.encode_src([line])[0]
    # Sentences that fit are left alone, and a long one is cut after a clause's end near its
    # middle rather than at the limit: "..., she knows that ..." is cut after the comma.
    first, second = (sentence.rstrip(".") for sentence in sentences[:2])
    line = f"{first}, {second[0].lower()}{second[1:]}."
    limit = max(token_count(first), token_count(second)) + 3
    assert fit_sentences(["Short one.", line, "Another."], limit, tokenizers.src_words) == \
        ["Short one.", f"{first},", f"{second[0].lower()}{second[1:]}.", "Another."]
    # Only inside a word longer than the limit is a word cut.
    word = "Donaudampfschifffahrtsgesellschaftskapitänsmützen"
    pieces = fit_sentences([f"a {word} b"], 3, tokenizers.src_words)
    assert "".join(pieces).replace(" ", "") == f"a{word}b" and all(token_count(piece) <= 3 for piece in pieces)


def test_a_long_sentence_is_translated_in_pieces_not_truncated(learned_toy_run, caplog):
    """A sentence longer than the model's limit, with sentence splitting on, is translated in
    pieces that fit instead of losing its end: here two sentences joined by a comma, on a
    model whose limit holds only one of them."""
    sentences, references = toy_lines("test", 240)

    def glued(first: str, second: str) -> str:
        return f"{first.rstrip('.')}, {second[0].lower()}{second[1:]}"

    split = Translator.load(learned_toy_run, device="cpu", split_sentences=True)
    whole = Translator.load(learned_toy_run, device="cpu")
    limit = max(len(ids) for ids in split.tokenizers.encode_src(sentences)) + 2
    pairs = [(glued(*sentences[start:start + 2]), glued(*references[start:start + 2])) for start in range(0, 240, 2)]
    lengths = split.tokenizers.encode_src([line for line, _ in pairs])
    lines, glued_references = zip(*[pair for pair, ids in zip(pairs, lengths) if len(ids) > limit][:20])
    assert len(lines) == 20
    split.max_source_tokens = whole.max_source_tokens = limit  # as if trained with data.max_len = limit
    with caplog.at_level("WARNING"):
        in_pieces = split.translate(lines)
    assert "input line 1: over the model's limit" in caplog.text and "truncated" not in caplog.text
    pieces = [fit_sentences([line], limit, split.tokenizers.src_words) for line in lines]
    expected = whole.translate([piece for line in pieces for piece in line])
    assert in_pieces == [" ".join(expected.pop(0) for _ in line) for line in pieces]
    bleu_pieces = sacrebleu.corpus_bleu(in_pieces, [glued_references]).score
    bleu_truncated = sacrebleu.corpus_bleu(whole.translate(lines), [glued_references]).score
    assert bleu_pieces >= bleu_truncated + 10, (bleu_pieces, bleu_truncated)
