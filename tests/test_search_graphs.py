"""Searches over fixed-shape batches (``decoding.cuda_graphs``): the same translations as the
eager searches. On the CPU the recorded steps run as they are, so everything but the capture
is checked here; tests/test_cuda.py replays them from CUDA graphs."""

import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from seq2seq_cli.config import DecodingConfig, ModelConfig
from seq2seq_cli.data import pad_sources
from seq2seq_cli.decoding import Ensemble, beam_search, greedy_search, max_lengths, translate_ids
from seq2seq_cli.model import build_model
from seq2seq_cli.search_graphs import UNROLL, SearchGraphs

from conftest import IDS, SOURCES, SPELLED_IDS, make_batch, spelled, tiny_model, toy_lines

CPU = torch.device("cpu")


def random_model(seed: int, vocab: int, hidden: int = 16):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(embed_dim=16, hidden_size=hidden, dropout=0.0), vocab, vocab, IDS.pad).eval()
    with torch.no_grad():
        model.decoder.output.weight.mul_(3.0)  # peaked enough that sentences end at different steps
    return model


def random_batch(seed: int, vocab: int, sentences: int):
    rng = random.Random(seed)
    sources = [[rng.randrange(4, vocab) for _ in range(rng.randint(1, 21))] for _ in range(sentences)]
    src_ids, src_lengths = pad_sources(sources, IDS.pad, IDS.eos)
    return src_ids, src_lengths, max_lengths(src_lengths - 1, 1.5, rng.randint(0, 5))


def assert_same(eager, fixed):
    """Token for token; scores as far as batches of other sizes round alike (fp32)."""
    assert [[h.tokens for h in n] for n in eager] == [[h.tokens for h in n] for n in fixed]
    for eager_nbest, fixed_nbest in zip(eager, fixed):
        for e, f in zip(eager_nbest, fixed_nbest):
            assert f.score == pytest.approx(e.score, abs=1e-4)
            assert f.log_prob == pytest.approx(e.log_prob, abs=1e-4)


# 300 tokens: search ranks with torch.topk; 1,100: greedy and beam 2 rank block by block
# (decoding.top_by_blocks).
@pytest.mark.parametrize("vocab", [300, 1100])
@pytest.mark.parametrize("seed", range(3))
def test_greedy_search_over_a_fixed_shape_finds_the_eager_translations(seed, vocab):
    model = random_model(seed, vocab)
    src_ids, src_lengths, limits = random_batch(seed, vocab, sentences=7 + 9 * seed)
    graphs = SearchGraphs(model, IDS, CPU)
    eager = greedy_search(model, src_ids, src_lengths, IDS, limits)
    fixed = graphs.greedy(src_ids, src_lengths, limits)
    assert_same([[h] for h in eager], [[h] for h in fixed])
    assert max(len(h.tokens) for h in eager) > UNROLL  # several replays, sentences ending in different ones
    assert len({len(h.tokens) for h in eager}) > 2


@pytest.mark.parametrize("vocab", [300, 1100])
@pytest.mark.parametrize("beam, length_penalty, nbest", [(2, 1.0, 1), (4, 0.0, 2), (5, 1.0, 5), (5, 2.0, 3)])
@pytest.mark.parametrize("seed", range(2))
def test_beam_search_over_a_fixed_shape_finds_the_eager_hypotheses(seed, beam, length_penalty, nbest, vocab):
    model = random_model(seed, vocab)
    src_ids, src_lengths, limits = random_batch(seed + 10, vocab, sentences=5 + 11 * seed)
    graphs = SearchGraphs(model, IDS, CPU)
    eager = beam_search(model, src_ids, src_lengths, IDS, limits, beam, length_penalty, nbest)
    fixed = graphs.beam(src_ids, src_lengths, limits, beam, length_penalty, nbest)
    assert_same(eager, fixed)
    assert all(len(n) == nbest for n in fixed)


def test_a_sentence_done_in_beam_search_takes_no_more_hypotheses():
    """A sentence is done once K hypotheses have ended (or none left can beat its n-th best),
    but its beams go on computing in the fixed batch: what they end later is not its. With a
    length penalty of 2 a later, longer hypothesis would rank first, so taking one would show."""
    model = random_model(7, 300)
    with torch.no_grad():
        model.decoder.output.bias[IDS.eos] += 0.3  # sentences end early, so some are done early
    src_ids, src_lengths, limits = random_batch(7, 300, sentences=20)
    graphs = SearchGraphs(model, IDS, CPU)
    assert_same(beam_search(model, src_ids, src_lengths, IDS, limits, 5, 2.0, 3),
                graphs.beam(src_ids, src_lengths, limits, 5, 2.0, 3))


def test_an_ensemble_searches_over_a_fixed_shape_as_it_does_eagerly():
    ensemble = Ensemble([random_model(0, 300), random_model(1, 300, hidden=24)], [1.0, 2.0])
    src_ids, src_lengths, limits = random_batch(3, 300, sentences=9)
    graphs = SearchGraphs(ensemble, IDS, CPU)
    assert_same([[h] for h in greedy_search(ensemble, src_ids, src_lengths, IDS, limits)],
                [[h] for h in graphs.greedy(src_ids, src_lengths, limits)])
    assert_same(beam_search(ensemble, src_ids, src_lengths, IDS, limits, 3, 1.0, 2),
                graphs.beam(src_ids, src_lengths, limits, 3, 1.0, 2))


def test_a_length_limit_ends_every_sentence_and_padding_rows_stay_out():
    """Limits of 0 and 1 token, sentences a replay apart, and a batch padded from 5 rows to 8:
    the limits bind exactly as in the eager search, and nothing of the padding comes back."""
    model = random_model(4, 300)
    src_ids, src_lengths, _ = random_batch(4, 300, sentences=5)
    limits = torch.tensor([0, 1, UNROLL, UNROLL + 1, 3 * UNROLL])
    graphs = SearchGraphs(model, IDS, CPU)
    for beam in (1, 3):
        eager = (beam_search(model, src_ids, src_lengths, IDS, limits, beam, 1.0, 1) if beam > 1 else
                 [[h] for h in greedy_search(model, src_ids, src_lengths, IDS, limits)])
        fixed = (graphs.beam(src_ids, src_lengths, limits, beam, 1.0, 1) if beam > 1 else
                 [[h] for h in graphs.greedy(src_ids, src_lengths, limits)])
        assert len(fixed) == 5
        assert_same(eager, fixed)
        assert [len(n[0].tokens) <= limit for n, limit in zip(fixed, limits.tolist())] == [True] * 5
        assert fixed[0][0].tokens == []
    assert [shape[1] for shape in graphs.shapes()] == [8, 8]


def test_fixed_shape_beam_search_tells_translations_apart_by_text_as_the_eager_search_does():
    """n-best lists hold each text once (``decoding.Ended``) in both searches, on a model whose
    vocabulary spells a text several ways (``conftest.spelled``)."""
    model = tiny_model(3, vocab=12)
    src_ids, src_lengths, limits = make_batch(SOURCES)
    for beam in (3, 5):
        eager = beam_search(model, src_ids, src_lengths, SPELLED_IDS, limits, beam, 1.0, beam)
        assert_same(eager, SearchGraphs(model, SPELLED_IDS, CPU).beam(src_ids, src_lengths, limits, beam, 1.0, beam))
        plain = beam_search(model, src_ids, src_lengths, IDS, limits, beam, 1.0, beam)
        repeats, plain_repeats = ([beam - len({spelled(h.tokens) for h in nbest}) for nbest in found]
                                  for found in (eager, plain))
        for count, nbest, limit in zip(repeats, eager, limits.tolist()):
            assert count == 0 or max(len(h.tokens) for h in nbest) == limit  # repeats: the search ran out
        assert sum(repeats) < sum(plain_repeats) or beam == 3


def test_translating_through_graphs_gives_the_same_translations_with_few_shapes():
    """``translate_ids(graphs=...)`` over batches of many sizes and lengths: the eager search's
    n-best lists, from at most a shape per rounded (sentences, source length) pair."""
    model = random_model(5, 300)
    rng = random.Random(5)
    sources = [[rng.randrange(4, 300) for _ in range(rng.randint(1, 30))] for _ in range(61)]
    graphs = SearchGraphs(model, IDS, CPU)
    for decoding, nbest in ((DecodingConfig(batch_size=13), 1), (DecodingConfig(beam_size=3, batch_size=7), 2)):
        eager = translate_ids(model, sources, IDS, CPU, decoding, nbest)
        assert_same(eager, translate_ids(model, sources, IDS, CPU, decoding, nbest, graphs=graphs))
    greedy = [shape for shape in graphs.shapes() if shape[0] == "greedy"]
    assert {shape[1] for shape in greedy} == {12, 16}  # 13 sentences, and the last batch's 9
    assert len(graphs.shapes()) < 61 // 13 + 1 + 61 // 7 + 1


def test_attention_weights_and_ngram_bans_search_eagerly():
    model = random_model(6, 300)
    sources = [[5, 6, 7], [8, 9]]
    graphs = SearchGraphs(model, IDS, CPU)
    with_attention = translate_ids(model, sources, IDS, CPU, DecodingConfig(), keep_attention=True, graphs=graphs)
    translate_ids(model, sources, IDS, CPU, DecodingConfig(no_repeat_ngram_size=2), graphs=graphs)
    assert graphs.shapes() == []
    assert with_attention[0][0].attention is not None


def test_graphs_are_wanted_only_when_asked_for_on_cuda():
    model = random_model(0, 300)
    assert SearchGraphs.when_wanted("auto", model, IDS, CPU) is None
    assert SearchGraphs.when_wanted("off", model, IDS, torch.device("cuda")) is None
    assert isinstance(SearchGraphs.when_wanted("auto", model, IDS, torch.device("cuda")), SearchGraphs)


def test_a_refused_capture_is_logged_once_and_search_goes_on_eagerly(monkeypatch, caplog):
    from seq2seq_cli.graphs import GraphCaptureError

    model = random_model(7, 300)
    src_ids, src_lengths, limits = random_batch(7, 300, sentences=6)
    graphs = SearchGraphs(model, IDS, CPU)

    def refuse(steps):
        raise GraphCaptureError("capturing decoder steps failed: operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "_record", refuse)
    with caplog.at_level("WARNING"):
        assert_same([[h] for h in greedy_search(model, src_ids, src_lengths, IDS, limits)],
                    [[h] for h in graphs.greedy(src_ids, src_lengths, limits)])
        assert_same(beam_search(model, src_ids, src_lengths, IDS, limits, 3, 1.0, 1),
                    graphs.beam(src_ids, src_lengths, limits, 3, 1.0, 1))
    warnings = [r.getMessage() for r in caplog.records if "decoding.cuda_graphs" in r.getMessage()]
    assert len(warnings) == 1 and "searching without CUDA graphs" in warnings[0]
    assert graphs.shapes() == []


class OperatorLog(TorchDispatchMode):
    """The ATen operators run inside it."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


# What waits for the device (a value read back, or a shape that depends on values): a CUDA
# graph cannot record it.
READS_THE_DEVICE = {"aten.item", "aten._local_scalar_dense", "aten.is_nonzero", "aten.equal", "aten.nonzero",
                    "aten.masked_select", "aten.index", "aten.index_put", "aten.index_put_", "aten.unique",
                    "aten._unique2"}


@pytest.mark.parametrize("ensemble", [False, True])
def test_recorded_steps_never_wait_for_the_device(ensemble):
    """What a CUDA graph records - greedy's and beam search's decoder steps - runs no operator
    that reads a value back to the host; the CPU sees the same operators CUDA would record."""
    model = random_model(8, 300)
    if ensemble:
        model = Ensemble([model, random_model(9, 300)])
    src_ids, src_lengths, limits = random_batch(8, 300, sentences=6)
    graphs = SearchGraphs(model, IDS, CPU)
    logs = []

    def record(steps):
        def run():
            with OperatorLog() as log:
                steps()
            logs.append(log.names)
        return run

    graphs._record = record
    graphs.greedy(src_ids, src_lengths, limits)
    graphs.beam(src_ids, src_lengths, limits, 3, 1.0, 2)
    assert len(logs) >= 2 and all({"aten.topk", "aten.log_softmax"} <= names for names in logs)
    assert set.union(*logs) & READS_THE_DEVICE == set()


def test_a_translator_asked_for_graphs_translates_a_trained_model_as_without(learned_toy_run, monkeypatch):
    """Through ``Translator`` (what translate, evaluate and serve use), on the toy run trained
    once a session: with graphs (allowed on the CPU here) the eager translations, greedy and
    beam 5 with n-best lists, with its siblings sharing one set of recorded shapes."""
    from seq2seq_cli.translation import Translator

    monkeypatch.setattr(SearchGraphs, "when_wanted", classmethod(
        lambda cls, setting, model, ids, device, precision="auto":
        cls(model, ids, device, precision) if setting == "auto" else None))
    lines = toy_lines("test", 150)[0]
    eager = Translator.load(learned_toy_run, "cpu", cuda_graphs="off")
    graphed = eager.with_settings(cuda_graphs="auto")
    assert eager._search_graphs() is None
    assert graphed.translate(lines) == eager.translate(lines)
    beam_eager, beam_graphed = (t.with_settings(beam_size=5, nbest=3) for t in (eager, graphed))
    found, expected = beam_graphed.translate_nbest(lines), beam_eager.translate_nbest(lines)
    assert [[t.text for t in n] for n in found] == [[t.text for t in n] for n in expected]
    assert [t.score for n in found for t in n] == pytest.approx([t.score for n in expected for t in n], abs=1e-4)
    shapes = graphed._search_graphs().shapes()
    assert {shape[0] for shape in shapes} == {"greedy", "beam"}
    assert beam_graphed._search_graphs() is graphed._search_graphs()
