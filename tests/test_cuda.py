"""On CUDA, s2s computes what it computes on the CPU, trains, and its files move between the two.

Skipped where PyTorch sees no GPU (CI has none); run on a lent GPU with
``python -m pytest tests/test_cuda.py``. Full-precision comparisons switch TF32 off, so the
only differences left are the order of floating-point sums.
"""

import copy
from types import SimpleNamespace

import pytest
import torch

from conftest import (IDS, SOURCES, final_weights, make_batch, tiny_config, tiny_model, toy_learning_config,
                      toy_lines)
from seq2seq_cli.checkpoint import load_model
from seq2seq_cli.config import DecodingConfig, ModelConfig, TrainingConfig, load_config
from seq2seq_cli.data import pad_sources
from seq2seq_cli.constraints import Constraints
from seq2seq_cli.decoding import (Sampling, beam_search, constrained_beam_search, greedy_search, translate_corpus,
                                  translate_ids)
from seq2seq_cli.precision import autocast
from seq2seq_cli.model import build_model
from seq2seq_cli.launch import train
from seq2seq_cli.metrics import read_metrics
from seq2seq_cli.loss import sequence_loss
from seq2seq_cli.scoring import score_ids
from seq2seq_cli.search_graphs import SearchGraphs
from seq2seq_cli.translation import Translator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def padded_batch():
    """Sources of different lengths (the packed encoder path) and padded targets."""
    generator = torch.Generator().manual_seed(3)
    sources = [torch.randint(4, 40, (n,), generator=generator).tolist() for n in (7, 3, 5, 1)]
    src_ids, src_lengths = pad_sources(sources, 0, 3)
    tgt = torch.randint(4, 30, (4, 6), generator=generator)
    tgt[1, 4:] = 0
    tgt[3, 2:] = 0
    return src_ids, src_lengths, tgt[:, :-1], tgt[:, 1:]


def test_forward_and_gradients_match_cpu():
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=16, hidden_size=24, dropout=0.0, output_dim=12), 40, 30, pad_id=0)
    on_gpu = copy.deepcopy(model).to(CUDA)
    src_ids, src_lengths, tgt_in, tgt_out = padded_batch()
    losses = []
    for net, device in ((model, CPU), (on_gpu, CUDA)):
        logits = net(src_ids.to(device), src_lengths.to(device), tgt_in.to(device))
        loss = sequence_loss(logits, tgt_out.to(device), 0, 0.1)
        loss.backward()
        losses.append((logits, loss))
    torch.testing.assert_close(losses[1][0].cpu(), losses[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses[1][1].cpu(), losses[0][1], rtol=1e-5, atol=1e-5)
    for (name, cpu_param), gpu_param in zip(model.named_parameters(), on_gpu.parameters()):
        assert gpu_param.grad is not None, name
        torch.testing.assert_close(gpu_param.grad.cpu(), cpu_param.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_bf16_autocast_stays_close_to_full_precision():
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=16, hidden_size=24, dropout=0.0), 40, 30, pad_id=0).to(CUDA)
    src_ids, src_lengths, tgt_in, tgt_out = (t.to(CUDA) for t in padded_batch())
    full = sequence_loss(model(src_ids, src_lengths, tgt_in), tgt_out, 0)
    with autocast(CUDA):
        logits = model(src_ids, src_lengths, tgt_in)
        mixed = sequence_loss(logits, tgt_out, 0)
    assert logits.dtype == torch.bfloat16  # autocast is really on
    assert mixed.dtype == torch.float32  # the loss is summed in full precision
    assert abs(mixed.item() - full.item()) < 0.02 * full.item()


@pytest.mark.parametrize("seed", range(3))
def test_constrained_search_on_cuda_equals_cpu(seed):
    """The candidates, banks and allocation are tensors on the model's device; the states stay
    in Python: the same translations, holding the same phrases, as on the CPU."""
    model = tiny_model(seed, vocab=12, sharpness=2.0)
    on_gpu = copy.deepcopy(model).to(CUDA)
    src_ids, src_lengths, limits = make_batch(SOURCES)
    phrases = [[[[5, 4]]], [[[1]], [[5]]], [], [[[4, 4], [6]]], [[[4], [8, 1]]]]
    opening = [frozenset(), frozenset(), frozenset(), frozenset(), frozenset({(0, 1)})]  # 8 1 only where it begins
    wanted = [Constraints(phrases[i % len(phrases)], continuation=frozenset({7}), opening=opening[i % len(phrases)])
              for i in range(len(SOURCES))]
    found = [constrained_beam_search(net, src_ids.to(device), src_lengths.to(device), IDS, limits.to(device) + 3, 6,
                                     wanted, 1.0, nbest=2) for net, device in ((model, CPU), (on_gpu, CUDA))]
    for on_cpu, on_cuda in zip(*found):
        assert [h.tokens for h in on_cuda] == [h.tokens for h in on_cpu]
        assert on_cuda[0].score == pytest.approx(on_cpu[0].score, abs=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_search_on_cuda_equals_cpu(seed):
    model = tiny_model(seed, vocab=12, sharpness=2.0)
    on_gpu = copy.deepcopy(model).to(CUDA)
    src_ids, src_lengths, limits = make_batch(SOURCES)
    gpu_inputs = (src_ids.to(CUDA), src_lengths.to(CUDA), IDS, limits.to(CUDA))
    pairs = [(greedy_search(model, src_ids, src_lengths, IDS, limits), greedy_search(on_gpu, *gpu_inputs))]
    for beam in (2, 5):
        pairs.append((beam_search(model, src_ids, src_lengths, IDS, limits, beam_size=beam, length_penalty=1.0),
                      beam_search(on_gpu, *gpu_inputs, beam_size=beam, length_penalty=1.0)))
    greedy_cpu, greedy_gpu = pairs[0]
    for c, g in zip(greedy_cpu, greedy_gpu):
        assert g.tokens == c.tokens
        assert g.log_prob == pytest.approx(c.log_prob, abs=1e-4)
    for beam_cpu, beam_gpu in pairs[1:]:
        for c, g in zip(beam_cpu, beam_gpu):
            assert [h.tokens for h in g] == [h.tokens for h in c]
            assert g[0].score == pytest.approx(c[0].score, abs=1e-4)


def test_trains_on_cuda_then_translates_on_either_device(tmp_path):
    """A CUDA run (bf16 autocast, fused AdamW, validation searching from CUDA graphs) learns
    the toy task; its checkpoint loads on the CPU, where greedy output matches the GPU's almost
    everywhere (bf16 vs fp32 ties aside); search replayed from graphs translates as the eager
    search does; and the run resumes on CUDA from its saved optimizer state."""
    config = load_config(toy_learning_config(tmp_path, device="cuda", decoding={"cuda_graphs": "auto"}))
    summary = train(config)
    assert summary["best_dev_bleu"] > 50, summary
    assert summary["cuda_graph_shapes"] > 0  # the default on CUDA: the steps were graphed

    run_dir = tmp_path / "run"
    on_cpu, tokenizers, saved = load_model(run_dir, CPU)
    on_gpu, _, _ = load_model(run_dir, CUDA)
    assert all(p.device.type == "cpu" for p in on_cpu.parameters())
    sources = tokenizers.encode_src(toy_lines("dev", 200)[0])
    outputs = [[n[0].tokens for n in translate_corpus(net, tokenizers, sources, saved.decoding, device)]
               for net, device in ((on_cpu, CPU), (on_gpu, CUDA))]
    same = sum(a == b for a, b in zip(*outputs)) / len(sources)
    assert same >= 0.9, same

    lines = toy_lines("dev", 200)[0]
    for beam in (1, 5):
        eager = Translator.load(run_dir, "cuda", beam_size=beam, cuda_graphs="off")
        graphed = eager.with_settings(cuda_graphs="auto")
        translations = [eager.translate(lines), graphed.translate(lines)]
        assert graphed._search_graphs().shapes(), beam  # the graphed translator recorded its searches
        same = sum(a == b for a, b in zip(*translations)) / len(lines)
        assert same >= 0.97, (beam, same)

    more = load_config(run_dir / "config.yaml", ["training.max_steps=200"])
    resumed = train(more, resume=True)
    assert resumed["step"] == 200


# -- CUDA graphs (training.cuda_graphs) ------------------------------------------------------


def graph_config(tmp_path, cuda_graphs: str, dropout: float, max_steps: int):
    return load_config(tiny_config(
        tmp_path, train_pairs=3000, dev_pairs=40, model={"embed_dim": 32, "hidden_size": 48, "dropout": dropout},
        training={"max_steps": max_steps, "batch_tokens": 600, "validate_every": max_steps, "log_every": 1,
                  "device": "cuda", "cuda_graphs": cuda_graphs, "learning_rate": 0.003}))


def train_losses(run_dir):
    return [r["train_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["event"] == "train"]


def test_graphed_steps_follow_the_eager_loss_curve(tmp_path):
    """50 steps replayed from graphs (padded batches, unpacked encoder, device-side skip test)
    against the eager step on the same batches: the same curve to bf16 precision."""
    curves = {}
    for mode in ("auto", "off"):
        summary = train(graph_config(tmp_path / mode, mode, dropout=0.0, max_steps=50))
        assert (summary["cuda_graph_shapes"] > 0) == (mode == "auto"), summary
        curves[mode] = train_losses(tmp_path / mode / "run")
    graphed, eager = curves["auto"], curves["off"]
    assert len(graphed) == len(eager) == 50
    assert eager[-1] < 0.8 * eager[0]  # it learns
    for step, (g, e) in enumerate(zip(graphed, eager), 1):
        assert abs(g - e) < 0.03 * e, (step, g, e)
    assert abs(sum(graphed[-10:]) - sum(eager[-10:])) < 0.015 * sum(eager[-10:])


def test_graphed_training_resumes_exactly(tmp_path):
    """With dropout on (the graph-safe generator), 40 straight steps equal 20 + a resume to 40."""
    assert train(graph_config(tmp_path / "straight", "auto", dropout=0.2, max_steps=40))["cuda_graph_shapes"] > 0
    train(graph_config(tmp_path / "resumed", "auto", dropout=0.2, max_steps=20))
    train(load_config(tmp_path / "resumed" / "run" / "config.yaml", ["training.max_steps=40"]), resume=True)
    assert train_losses(tmp_path / "resumed" / "run") == train_losses(tmp_path / "straight" / "run")
    straight, resumed = (final_weights(tmp_path / name / "run") for name in ("straight", "resumed"))
    for name, weight in straight.items():
        assert torch.equal(resumed[name], weight), name


def test_a_graphed_step_that_is_not_finite_changes_nothing():
    from seq2seq_cli.data import collate
    from seq2seq_cli.graphs import GraphedSteps

    torch.manual_seed(0)
    special = SimpleNamespace(pad_id=0, bos_id=2, eos_id=3)
    model = build_model(ModelConfig(embed_dim=16, hidden_size=24, dropout=0.1), 40, 30, pad_id=0).to(CUDA).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    steps = GraphedSteps(model, optimizer, TrainingConfig(batch_tokens=64), special, CUDA)
    batch = collate([[5, 6, 7], [8, 9]], [[4, 5], [6, 7, 8, 9]], special)
    assert steps.launch(batch, 1e-3).loss() > 0
    before = copy.deepcopy(model.state_dict())
    moments = copy.deepcopy(optimizer.state_dict()["state"])
    with torch.no_grad():
        model.decoder.output.bias[5] = float("inf")
    assert steps.launch(batch, 1e-3).loss() is None  # skipped, decided on the device
    for name, weight in model.state_dict().items():
        if name != "decoder.output.bias":
            assert torch.equal(weight, before[name]), name
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(value, moments[index][key]), (index, key)
    with torch.no_grad():
        model.decoder.output.bias[5] = 0.0
    assert steps.launch(batch, 1e-3).loss() > 0  # the same graph steps again
    assert not torch.equal(model.encoder.bridge.weight, before["encoder.bridge.weight"])
    assert len(steps.graphs) == 1


# -- CUDA graphs of search (decoding.cuda_graphs) ---------------------------------------------


@pytest.mark.parametrize("vocab", [300, 1100])
def test_search_replayed_from_graphs_equals_eager_search(vocab):
    """In fp32, greedy and beam search from CUDA graphs find the eager search's hypotheses with
    its scores, over several batches of one shape (each replaying the graphs recorded once).
    The eager batch shrinks as sentences finish and cuBLAS may sum another way for another
    shape, so a near tie may go the other way: 95% of the sentences, and their scores."""
    from test_search_graphs import random_batch, random_model

    model = random_model(0, vocab).to(CUDA)
    graphs = SearchGraphs(model, IDS, CUDA, "fp32")
    pairs = []
    for seed in range(3):
        src_ids, src_lengths, limits = (t.to(CUDA) for t in random_batch(seed, vocab, sentences=21 + seed))
        pairs += zip([[h] for h in greedy_search(model, src_ids, src_lengths, IDS, limits)],
                     [[h] for h in graphs.greedy(src_ids, src_lengths, limits)])
        pairs += zip(beam_search(model, src_ids, src_lengths, IDS, limits, 5, 1.0, 2),
                     graphs.beam(src_ids, src_lengths, limits, 5, 1.0, 2))
    same = [(eager, graphed) for eager, graphed in pairs if [h.tokens for h in eager] == [h.tokens for h in graphed]]
    assert len(same) >= 0.95 * len(pairs), (len(same), len(pairs))
    for eager, graphed in same:
        assert [h.score for h in graphed] == pytest.approx([h.score for h in eager], abs=1e-4)
    recorded = graphs._recorded.values()
    assert len(recorded) < 6  # 6 searches: some replayed graphs recorded for another batch of their shape
    assert all(isinstance(getattr(replay, "__self__", None), torch.cuda.CUDAGraph) for _, replay in recorded)


def test_search_replayed_from_graphs_under_bf16_autocast():
    """Under bf16 autocast (the default on CUDA) graphs record the casts too: the translations of
    the eager bf16 search, bar near ties."""
    from test_search_graphs import random_batch, random_model

    model = random_model(1, 300).to(CUDA)
    graphs = SearchGraphs(model, IDS, CUDA, "bf16")
    src_ids, src_lengths, limits = (t.to(CUDA) for t in random_batch(1, 300, sentences=40))
    with autocast(CUDA, "bf16"):
        eager = greedy_search(model, src_ids, src_lengths, IDS, limits)
        graphed = graphs.greedy(src_ids, src_lengths, limits)
        eager_beam = beam_search(model, src_ids, src_lengths, IDS, limits, 4, 1.0, 1)
        graphed_beam = graphs.beam(src_ids, src_lengths, limits, 4, 1.0, 1)
    assert sum(e.tokens == g.tokens for e, g in zip(eager, graphed)) >= 0.9 * len(eager)
    assert sum(e[0].tokens == g[0].tokens for e, g in zip(eager_beam, graphed_beam)) >= 0.9 * len(eager)
    assert graphs.shapes()[0][-1] == torch.bfloat16


def test_scoring_and_sampling_on_cuda():
    """Forced decoding on the GPU gives the CPU's scores; sampling there gives each draw the
    model's own log-probability, and the same draws whatever the batch (the generators are
    the GPU's own, so the draws differ from the CPU's)."""
    model = tiny_model(4, sharpness=2.0)
    on_gpu = copy.deepcopy(model).to(CUDA)
    targets = [[4, 5], [], [1, 4, 4, 5, 5], [5], [4]]
    cpu_scores, gpu_scores = (score_ids(net, SOURCES, targets, IDS, device, batch_size=2, precision="fp32")
                              for net, device in ((model, CPU), (on_gpu, CUDA)))
    assert [x for row in gpu_scores for x in row] == pytest.approx([x for row in cpu_scores for x in row], abs=1e-5)
    drawn = [translate_ids(on_gpu, SOURCES, IDS, CUDA, DecodingConfig(max_length_offset=4, batch_size=size), nbest=3,
                           precision="fp32", sampling=Sampling(topk=3, seed=2)) for size in (1, 64)]
    assert [[h.tokens for h in samples] for samples in drawn[0]] == [[h.tokens for h in samples] for samples in drawn[1]]
    found = [h for samples in drawn[1] for h in samples]
    rescored = score_ids(model, [s for s in SOURCES for _ in range(3)], [h.tokens for h in found], IDS, CPU, 8)
    assert [h.log_prob for h in found] == pytest.approx([sum(row) for row in rescored], abs=1e-4)
