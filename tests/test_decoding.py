"""Search correctness on tiny random models, where exact answers can be computed."""

import itertools
import threading
import time

import pytest
import torch

from seq2seq_cli.config import DecodingConfig
from seq2seq_cli.data import pad_sources
import seq2seq_cli.decoding
from seq2seq_cli.decoding import BLOCK, beam_search, gnmt_penalty, greedy_search, top_by_blocks, translate_ids
from seq2seq_cli.device import map_in_order

from conftest import IDS, SOURCES, SPELLED_IDS, make_batch, spelled, tiny_model

def sequence_log_prob(model, source, tokens, limit):
    """The model's score of one full hypothesis, computed teacher-forced (no search involved)."""
    src_ids, src_lengths = pad_sources([source], IDS.pad, IDS.eos)
    tgt_in = torch.tensor([[IDS.bos] + list(tokens)])
    with torch.no_grad():
        logits = model(src_ids, src_lengths, tgt_in)[0].float()
    logits[:, [IDS.pad, IDS.bos]] = float("-inf")
    log_probs = torch.log_softmax(logits, dim=-1)
    total = sum(float(log_probs[i, token]) for i, token in enumerate(tokens))
    assert len(tokens) <= limit
    return total + float(log_probs[len(tokens), IDS.eos])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_large_beam_equals_exhaustive_search(seed, alpha):
    model = tiny_model(seed, sharpness=3.0)
    source, limit = [4, 5, 1], 4
    choices = [1, 4, 5]
    best = max(((sequence_log_prob(model, source, seq, limit) / gnmt_penalty(len(seq) + 1, alpha), seq)
                for n in range(limit + 1) for seq in itertools.product(choices, repeat=n)))
    src_ids, src_lengths = pad_sources([source], IDS.pad, IDS.eos)
    found = beam_search(model, src_ids, src_lengths, IDS, torch.tensor([limit]), beam_size=128, length_penalty=alpha)[0][0]
    assert tuple(found.tokens) == best[1]
    assert found.score == pytest.approx(best[0], abs=1e-4)
    assert found.log_prob == pytest.approx(sequence_log_prob(model, source, found.tokens, limit), abs=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_beam_scores_are_the_models_own_and_ranked(seed):
    """What beam search guarantees (a wider beam scoring higher than greedy is not one of them):
    each hypothesis' log_prob is the model's own teacher-forced log-probability of it, its score
    is that over the GNMT penalty, and an n-best list comes best first."""
    model = tiny_model(seed, vocab=12, sharpness=2.0)
    src_ids, src_lengths, limits = make_batch(SOURCES)
    for beam in (2, 5):
        found = beam_search(model, src_ids, src_lengths, IDS, limits, beam_size=beam, length_penalty=1.0, nbest=beam)
        for source, limit, hypotheses in zip(SOURCES, limits.tolist(), found):
            scores = [h.score for h in hypotheses]
            assert scores == sorted(scores, reverse=True)
            for h in hypotheses:
                assert h.log_prob == pytest.approx(sequence_log_prob(model, source, h.tokens, limit), abs=1e-4)
                assert h.score == pytest.approx(h.log_prob / gnmt_penalty(len(h.tokens) + 1, 1.0), abs=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_beam_of_one_is_greedy(seed):
    model = tiny_model(seed, vocab=12, sharpness=2.0)
    src_ids, src_lengths, limits = make_batch(SOURCES)
    greedy = greedy_search(model, src_ids, src_lengths, IDS, limits, keep_attention=True)
    beam = beam_search(model, src_ids, src_lengths, IDS, limits, beam_size=1, length_penalty=0.0, keep_attention=True)
    for g, b in zip(greedy, beam):
        assert b[0].tokens == g.tokens
        assert b[0].log_prob == pytest.approx(g.log_prob, abs=1e-5)
        torch.testing.assert_close(b[0].attention, g.attention)


@pytest.mark.parametrize("beam", [1, 4])
def test_batch_composition_does_not_change_output(beam):
    model = tiny_model(0, vocab=12, sharpness=3.0)
    alone = [translate_ids(model, [s], IDS, torch.device("cpu"), DecodingConfig(beam_size=beam))[0] for s in SOURCES]
    for batch_size in (2, 5):
        for order in (SOURCES, SOURCES[::-1]):
            together = translate_ids(model, order, IDS, torch.device("cpu"),
                                     DecodingConfig(batch_size=batch_size, beam_size=beam))
            if order is not SOURCES:
                together = together[::-1]
            for a, t in zip(alone, together):
                assert [h.tokens for h in t] == [h.tokens for h in a]
                assert t[0].score == pytest.approx(a[0].score, abs=1e-4)


@pytest.mark.parametrize("beam", [1, 3])
def test_an_empty_source_translates_to_nothing_and_leaves_the_others_alone(beam):
    """Every caller (s2s translate, the server, validation) gets the same answer for an empty
    source: no tokens, without a search; the other sentences are translated as without it."""
    model = tiny_model(0, vocab=12, sharpness=3.0)
    decoding = DecodingConfig(beam_size=beam, batch_size=2)
    without = translate_ids(model, SOURCES, IDS, torch.device("cpu"), decoding, nbest=beam)
    mixed = translate_ids(model, [[]] + SOURCES[:2] + [[]] + SOURCES[2:], IDS, torch.device("cpu"), decoding,
                          nbest=beam)
    assert [[(h.tokens, h.score) for h in mixed[i]] for i in (0, 3)] == [[([], 0.0)] * beam] * 2
    assert [[h.tokens for h in nbest] for nbest in mixed[1:3] + mixed[4:]] == \
        [[h.tokens for h in nbest] for nbest in without]
    assert translate_ids(model, [[], []], IDS, torch.device("cpu"), decoding) == [[mixed[0][0]]] * 2


@pytest.mark.parametrize("width", [8000, 8037, 3000, 1100, 300])
@pytest.mark.parametrize("count", [1, 2, 10])
def test_top_by_blocks_is_topk(width, count):
    """Exactly torch.topk's entries, in its order: on rows with a peak in the columns after the
    last whole block, with ties (equal values), with -inf everywhere but a few columns, and with
    the best entries crowded into one block."""
    torch.manual_seed(width + count)
    scores = torch.randn(7, width)
    scores[1, -1] = 10.0  # the best entry past the last whole block
    scores[2] = scores[2].round()  # many equal values
    scores[3] = float("-inf")
    scores[3, [5, width - 2]] = torch.tensor([-1.0, -2.0])
    scores[4, 130:140] = torch.arange(10.0) + 20  # every best entry in one block
    scores[5] = torch.randn(width).double().float() * 1e-30  # tiny and close together
    best, where = top_by_blocks(scores, count)
    expected = scores.topk(count, dim=1)
    assert best.shape == where.shape == (7, count)
    assert torch.equal(best, expected.values)
    assert torch.equal(scores.gather(1, where), best)
    assert all(len(set(row)) == count for row in where.tolist())  # no column twice
    untied = [0, 1, 3, 4]
    assert torch.equal(where[untied], expected.indices[untied])
    assert [t.shape for t in top_by_blocks(scores[:0], count)] == [(0, count), (0, count)]


@pytest.mark.parametrize("beam", [1, 4])
def test_a_large_vocabulary_searches_as_with_topk(beam, monkeypatch):
    """Block-wise ranking (a vocabulary of many blocks) finds the hypotheses, scores and n-best
    lists that ranking the whole vocabulary with torch.topk finds."""
    vocab = 3000
    assert 2 * beam * BLOCK * 4 <= vocab  # enough blocks that the block-wise path runs
    model = tiny_model(2, vocab=vocab, sharpness=4.0)
    decoding = DecodingConfig(beam_size=beam, batch_size=3)
    sources = [[4 + (7 * i + j) % (vocab - 4) for j in range(1 + i % 6)] for i in range(9)]
    ours = translate_ids(model, sources, IDS, torch.device("cpu"), decoding, nbest=beam)
    monkeypatch.setattr(seq2seq_cli.decoding, "top_by_blocks", lambda scores, count: scores.topk(count, dim=1))
    reference = translate_ids(model, sources, IDS, torch.device("cpu"), decoding, nbest=beam)
    assert [[(h.tokens, h.score, h.log_prob) for h in n] for n in ours] == \
        [[(h.tokens, h.score, h.log_prob) for h in n] for n in reference]
    assert any(len(n[0].tokens) > 2 for n in ours)  # the search went somewhere


def test_nbest_lists_and_length_limits():
    model = tiny_model(1, vocab=12, sharpness=0.5)  # flat distributions: long hypotheses
    src_ids, src_lengths, _ = make_batch(SOURCES)
    limits = torch.tensor([3, 1, 6, 2, 0])
    results = beam_search(model, src_ids, src_lengths, IDS, limits, beam_size=6, nbest=4, keep_attention=True)
    for nbest, limit, length in zip(results, limits.tolist(), src_lengths.tolist()):
        assert len(nbest) == (1 if limit == 0 else 4)  # at limit 0 the empty output is all there is
        scores = [h.score for h in nbest]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in nbest}) == len(nbest)
        for h in nbest:
            assert len(h.tokens) <= limit
            assert IDS.pad not in h.tokens and IDS.bos not in h.tokens and IDS.eos not in h.tokens
            assert h.attention.shape == (len(h.tokens) + 1, length)
            torch.testing.assert_close(h.attention.sum(-1), torch.ones(len(h.tokens) + 1))
    greedy = greedy_search(model, src_ids, src_lengths, IDS, limits)
    assert all(len(g.tokens) <= limit for g, limit in zip(greedy, limits.tolist()))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_nbest_list_holds_the_best_texts_once_each_as_exhaustive_search_finds_them(seed, alpha):
    """With a beam wider than every hypothesis there is, the n-best list is exactly the n best
    texts, each as its best-scoring tokenization: all sequences scored one by one, grouped by text."""
    model = tiny_model(seed, sharpness=3.0)
    source, limit, nbest = [4, 5, 1], 4, 8
    best_of_text: dict = {}
    for n in range(limit + 1):
        for sequence in itertools.product([1, 4, 5], repeat=n):
            score = sequence_log_prob(model, source, sequence, limit) / gnmt_penalty(n + 1, alpha)
            best_of_text[spelled(sequence)] = max(best_of_text.get(spelled(sequence), (score, sequence)),
                                                  (score, sequence))
    expected = sorted(best_of_text.values(), reverse=True)[:nbest]
    src_ids, src_lengths = pad_sources([source], IDS.pad, IDS.eos)
    found = beam_search(model, src_ids, src_lengths, SPELLED_IDS, torch.tensor([limit]), beam_size=128,
                        length_penalty=alpha, nbest=nbest)[0]
    assert [tuple(h.tokens) for h in found] == [sequence for _, sequence in expected]
    assert [h.score for h in found] == pytest.approx([score for score, _ in expected], abs=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_the_first_of_an_nbest_list_of_texts_is_the_one_best(seed):
    """Telling translations apart by text, an n-best list's first entry is still the translation
    beam search gives without an n-best list (the same rule ends both searches), the list comes
    best first, and it repeats a text only where the search ran out at the length limit."""
    model = tiny_model(seed, vocab=12)
    src_ids, src_lengths, limits = make_batch(SOURCES)
    for beam in (3, 5):
        one = beam_search(model, src_ids, src_lengths, SPELLED_IDS, limits, beam_size=beam)
        nbest = beam_search(model, src_ids, src_lengths, SPELLED_IDS, limits, beam_size=beam, nbest=beam)
        for first, hypotheses, limit in zip(one, nbest, limits.tolist()):
            assert hypotheses[0].tokens == first[0].tokens
            assert [h.score for h in hypotheses] == sorted((h.score for h in hypotheses), reverse=True)
            texts = [spelled(h.tokens) for h in hypotheses]
            assert len(set(texts)) == beam or max(len(h.tokens) for h in hypotheses) == limit


def test_ban_repeated_ngrams():
    from seq2seq_cli.decoding import ban_repeated_ngrams

    generated = torch.tensor([[4, 5, 6, 4, 5], [7, 7, 7, 7, 8]])
    log_probs = torch.zeros(2, 10)
    ban_repeated_ngrams(log_probs, generated, 3)
    assert torch.isinf(log_probs).nonzero().tolist() == [[0, 6]]  # "4 5" was followed by 6 before
    log_probs = torch.zeros(2, 10)
    ban_repeated_ngrams(log_probs, generated, 2)
    assert torch.isinf(log_probs).nonzero().tolist() == [[0, 6]]  # row 1 ends in 8, never seen before
    log_probs = torch.zeros(1, 10)
    ban_repeated_ngrams(log_probs, torch.tensor([[4, 5]]), 1)
    assert torch.isinf(log_probs).nonzero().tolist() == [[0, 4], [0, 5]]


@pytest.mark.parametrize("beam", [1, 4])
def test_no_repeat_ngram_size_holds(beam):
    model = tiny_model(2, vocab=8, sharpness=0.3)
    with torch.no_grad():
        model.decoder.output.bias[IDS.eos] -= 10.0  # [SEP] unlikely: long outputs full of repeats
    sources = [[4, 5, 6, 7] * 3, [5, 6]]
    plain = translate_ids(model, sources, IDS, torch.device("cpu"), DecodingConfig(beam_size=beam, max_length_offset=30))
    banned = translate_ids(model, sources, IDS, torch.device("cpu"),
                           DecodingConfig(beam_size=beam, max_length_offset=30, no_repeat_ngram_size=2))

    def bigrams(tokens):
        return list(zip(tokens, tokens[1:]))

    assert any(len(bigrams(h[0].tokens)) != len(set(bigrams(h[0].tokens))) for h in plain)
    for hypotheses in banned:
        pairs = bigrams(hypotheses[0].tokens)
        assert len(pairs) == len(set(pairs))


def test_batches_decoded_side_by_side_come_back_in_order_as_a_stream():
    """``map_in_order``, which decodes CPU batches on several threads: results in input order
    however long each takes, input read only as far ahead as the workers can take (so a line
    typed at a terminal is answered before the next arrives), errors raised to the caller, and
    torch's thread count restored after decoding."""
    def uneven(x):
        time.sleep(0.05 if x % 3 == 0 else 0.0)  # early items finish last
        return x * x

    assert list(map_in_order(uneven, range(12), 3)) == [x * x for x in range(12)]

    more_typed = threading.Event()
    guard = threading.Timer(30, more_typed.set)  # unblocks a broken version, which then fails
    guard.start()
    read = []

    def terminal():
        for line in range(3):
            read.append(line)
            yield line
            more_typed.wait()

    results = map_in_order(lambda line: -line, terminal(), 2)
    assert next(results) == 0 and not more_typed.is_set() and read == [0]
    more_typed.set()
    guard.cancel()
    assert list(results) == [-1, -2]

    with pytest.raises(ZeroDivisionError):
        list(map_in_order(lambda x: 1 / x, [1, 0, 2], 2))

    def unreadable():
        yield 1
        raise OSError("input/output error")

    with pytest.raises(OSError, match="input/output"):
        list(map_in_order(lambda x: x, unreadable(), 2))

    threads = torch.get_num_threads()
    model = tiny_model(0)
    translate_ids(model, SOURCES, IDS, torch.device("cpu"), DecodingConfig(beam_size=2, batch_size=2))
    assert torch.get_num_threads() == threads
