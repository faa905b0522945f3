"""Sampling (``s2s translate --sample``): translations drawn at random from the model.

Checked where exact answers exist: on a model small enough to list every translation, the
frequencies of 20,000 draws match the probabilities the model, the temperature and the top-k
cut give each one; a draw's log_prob is the model's own (as ``s2s score`` computes it); top-1
sampling is greedy search; and a sentence's samples depend on the seed and its place in the
input only, not on the batch, the threads or how the input was split."""

import concurrent.futures
import itertools
import math
import random

import pytest
import torch

from conftest import IDS, VOCAB, assert_user_error, s2s, s2s_forked, tiny_model, toy_lines, write_corpus
from seq2seq_cli.config import DecodingConfig
from seq2seq_cli.data import pad_sources
from seq2seq_cli.decoding import Sampling, TokenSampler, translate_ids
from seq2seq_cli.errors import UserError
from seq2seq_cli.scoring import score_ids
from seq2seq_cli.translation import Translator

CPU = torch.device("cpu")
CHOICES = [1, 4, 5]  # every token search may write before [SEP]: [UNK], a, b


def sampling_probability(model, source, sequence, limit, sampling: Sampling) -> float:
    """The chance that one draw is ``sequence``, computed teacher-forced from the model's
    distribution at each position: divided by the temperature, cut to the top k, [PAD] and
    [CLS] never; at the length limit [SEP] is certain."""
    src_ids, src_lengths = pad_sources([source], IDS.pad, IDS.eos)
    with torch.no_grad():
        logits = model(src_ids, src_lengths, torch.tensor([[IDS.bos, *sequence]]))[0].double()
    logits[:, [IDS.pad, IDS.bos]] = float("-inf")
    weights = torch.log_softmax(logits, dim=-1) / sampling.temperature
    if sampling.topk:
        kth = weights.topk(sampling.topk, dim=-1).values[:, -1:]
        weights = weights.masked_fill(weights < kth, float("-inf"))
    probs = torch.softmax(weights, dim=-1)
    chance = math.prod(float(probs[i, token]) for i, token in enumerate(sequence))
    return chance * (float(probs[len(sequence), IDS.eos]) if len(sequence) < limit else 1.0)


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.6, seed=3), Sampling(topk=2, temperature=1.5)])
def test_draws_follow_the_distribution_the_settings_give(sampling):
    model = tiny_model(2, sharpness=2.0)
    source, limit, draws = [4, 5, 1], 3, 20000
    decoding = DecodingConfig(max_length_ratio=0.01, max_length_offset=limit, batch_size=1)
    samples = translate_ids(model, [source], IDS, CPU, decoding, nbest=draws, sampling=sampling)[0]
    counts: dict[tuple, int] = {}
    for sample in samples:
        counts[tuple(sample.tokens)] = counts.get(tuple(sample.tokens), 0) + 1
    expected = {seq: sampling_probability(model, source, seq, limit, sampling)
                for n in range(limit + 1) for seq in itertools.product(CHOICES, repeat=n)}
    assert sum(expected.values()) == pytest.approx(1.0, abs=1e-6)
    assert set(counts) <= {seq for seq, p in expected.items() if p > 0}  # nothing the settings rule out
    assert len(counts) >= 4  # a distribution, not one answer
    for seq, p in expected.items():  # each within 5 standard deviations of its expected count
        assert abs(counts.get(seq, 0) - draws * p) <= 5 * math.sqrt(draws * p * (1 - p)) + 1, (seq, p, counts.get(seq))
    distance = sum(abs(counts.get(seq, 0) / draws - p) for seq, p in expected.items()) / 2
    assert distance < 0.02
    ranked = [sample.score for sample in samples]
    assert ranked == sorted(ranked, reverse=True)  # the n samples come highest log-probability first


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(topk=5, temperature=0.7)])
def test_one_draw_per_row_follows_the_distribution_over_a_wide_vocabulary(sampling):
    """The draw itself, over more columns than one block of its two-level running sum: a whole
    block and single tokens at -inf, and a last block that is not full."""
    torch.manual_seed(0)
    width, rows = 200, 20000  # blocks of 64: three whole ones and 8 columns
    log_probs = torch.randn(width) * 2
    log_probs[[0, 130, 199]] = float("-inf")
    log_probs[64:128] = float("-inf")
    log_probs = torch.log_softmax(log_probs, dim=0)
    weights = log_probs.double() / sampling.temperature
    if sampling.topk:
        weights[weights < weights.topk(sampling.topk).values[-1]] = float("-inf")
    expected = torch.softmax(weights, dim=0) * rows
    sampler = TokenSampler(sampling, [sampling.generator(row, 0, CPU) for row in range(rows)])
    chosen, tokens = sampler(log_probs.expand(rows, width).clone(), IDS, torch.zeros(rows, dtype=torch.bool), None)
    counts = torch.bincount(tokens.squeeze(1), minlength=width).double()
    assert counts.size(0) == width and bool((counts[expected == 0] == 0).all())
    assert torch.equal(chosen.squeeze(1), log_probs[tokens.squeeze(1)])
    p = expected / rows
    assert bool(((counts - expected).abs() <= 5 * (expected * (1 - p)).sqrt() + 1).all())
    assert float((counts - expected).abs().sum() / rows / 2) < 0.03


def random_sources(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.choice(CHOICES) for _ in range(rng.randrange(1, 9))] for _ in range(count)]


def test_a_draw_scores_its_own_log_prob_and_top_one_is_greedy():
    model = tiny_model(1, sharpness=1.5)
    sources = random_sources(12, seed=1)
    decoding = DecodingConfig(max_length_offset=4, batch_size=5)
    drawn = translate_ids(model, sources, IDS, CPU, decoding, nbest=3, sampling=Sampling(temperature=1.3))
    rows = [(source, h) for source, samples in zip(sources, drawn) for h in samples]
    scores = score_ids(model, [source for source, _ in rows], [h.tokens for _, h in rows], IDS, CPU, batch_size=8)
    for token_scores, (_, h) in zip(scores, rows, strict=True):
        assert h.score == h.log_prob
        assert sum(token_scores) == pytest.approx(h.log_prob, abs=1e-5)
    greedy = translate_ids(model, sources, IDS, CPU, decoding)
    top_one = translate_ids(model, sources, IDS, CPU, decoding, sampling=Sampling(topk=1, seed=9))
    assert [h[0].tokens for h in top_one] == [h[0].tokens for h in greedy]


def test_samples_depend_on_the_seed_and_the_sentence_not_on_batches_or_threads():
    model = tiny_model(3, vocab=VOCAB)
    sources = random_sources(30, seed=2)
    sampling = Sampling(seed=11)

    def drawn(batch_size: int, chunk=slice(None), first_index: int = 0, seed: int = 11) -> list[list[tuple]]:
        found = translate_ids(model, sources[chunk], IDS, CPU, DecodingConfig(max_length_offset=4, batch_size=batch_size),
                              nbest=2, sampling=Sampling(seed=seed), first_index=first_index)
        return [[tuple(h.tokens) for h in samples] for samples in found]

    whole = drawn(64)
    assert drawn(1) == whole and drawn(7) == whole
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two batches drawn side by side, each on a thread of its own
    try:
        assert drawn(4) == whole
    finally:
        torch.set_num_threads(threads)
    # What s2s translate does with input that arrives in pieces: each piece knows where it starts.
    assert drawn(64, slice(0, 13)) + drawn(64, slice(13, None), first_index=13) == whole
    other = drawn(64, seed=12)
    assert sum(a != b for a, b in zip(other, whole)) >= 10
    assert sampling.generator(0, 0, CPU).initial_seed() != sampling.generator(0, 1, CPU).initial_seed()


def test_s2s_translate_sample_is_the_same_in_every_process_and_refuses_what_does_not_apply(learned_toy_run, tmp_path):
    english, _ = toy_lines("test", 40)
    src, _ = write_corpus(tmp_path, "test", english, english)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # a process spends ~2 s importing torch
        runs = list(pool.map(lambda extra: s2s("translate", "--checkpoint", learned_toy_run, "--input", src, "--sample",
                                                "--nbest", "2", *extra),
                             [("--seed", "5"), ("--seed", "5", "--batch-size", "3"), ("--seed", "6"),
                              ("--sample-topk", "3", "--beam-size", "3")]))
    for run in runs[:3]:
        assert run.returncode == 0, run.stderr.decode()
    first, rebatched, other_seed = (run.stdout.decode().splitlines() for run in runs[:3])
    assert len(first) == 80 and first[0].startswith("0 ||| ") and first[-1].startswith("39 ||| ")
    def split(lines):  # (index and text, score): a score's last bits may vary with the batch it was in
        return [line.rsplit(" ||| ", 1)[0] for line in lines], [float(line.rsplit(" ||| ", 1)[1]) for line in lines]

    assert split(rebatched)[0] == split(first)[0]
    assert split(rebatched)[1] == pytest.approx(split(first)[1], abs=1e-3)
    assert split(other_seed)[0] != split(first)[0]
    assert_user_error(runs[3], "cannot use --beam-size 3")
    # Refused before loading a model:
    assert_user_error(s2s_forked("translate", "--checkpoint", learned_toy_run, "--temperature", "2",
                                 "--sample-topk", "5"), "--sample-topk, --temperature only apply with --sample")
    with pytest.raises(UserError, match="--temperature 0: must be a positive number"):
        Translator.load(learned_toy_run, device="cpu", sampling=Sampling(temperature=0))
