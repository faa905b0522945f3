"""Ensembles: several models decoding as one, from the log of their mean probabilities.

Checked where exact answers exist: a model with itself is the model; beam search with a beam
as large as the search space equals exhaustive search over the ensemble's distribution; the
batch a sentence is decoded in changes nothing; and the command line takes --checkpoint more
than once, refusing models whose tokenizers differ."""

import concurrent.futures
import copy
import dataclasses
import itertools

import pytest
import torch

from conftest import (IDS, SOURCES, assert_user_errors, ensemble_log_probs, s2s, tiny_config, tiny_model, toy_lines,
                      write_corpus)
from seq2seq_cli.config import DecodingConfig, load_config
from seq2seq_cli.data import pad_sources
from seq2seq_cli.decoding import Ensemble, beam_search, gnmt_penalty, greedy_search, translate_ids
from seq2seq_cli.launch import train

CPU = torch.device("cpu")


@pytest.mark.parametrize("beam", [1, 2, 5])
def test_an_ensemble_of_a_model_with_itself_is_the_model(beam):
    model = tiny_model(0, vocab=12, sharpness=2.0)
    twice = Ensemble([model, copy.deepcopy(model)])
    src_ids, src_lengths = pad_sources(SOURCES, IDS.pad, IDS.eos)
    limits = torch.full((len(SOURCES),), 7)
    if beam == 1:
        alone, together = (greedy_search(m, src_ids, src_lengths, IDS, limits) for m in (model, twice))
        pairs = [([a], [t]) for a, t in zip(alone, together)]
    else:
        alone, together = (beam_search(m, src_ids, src_lengths, IDS, limits, beam, nbest=beam) for m in (model, twice))
        pairs = list(zip(alone, together))
    for a, t in pairs:
        assert [h.tokens for h in t] == [h.tokens for h in a]
        assert [h.score for h in t] == [h.score for h in a]  # exactly: the mean of equal numbers is the number


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("seed", range(3))
def test_large_beam_over_an_ensemble_equals_exhaustive_search(seed, alpha):
    """Two models of different sizes, weighted 2:1, on a vocabulary of three tokens."""
    models, weights = [tiny_model(seed, sharpness=3.0), tiny_model(seed + 10, sharpness=3.0, hidden=12)], [2.0, 1.0]
    ensemble = Ensemble(models, weights)
    source, limit = [4, 5, 1], 4
    sequences = [seq for n in range(limit + 1) for seq in itertools.product([1, 4, 5], repeat=n)]
    scores = ensemble_log_probs(models, weights, source, sequences)
    best = max((score / gnmt_penalty(len(seq) + 1, alpha), seq) for score, seq in zip(scores, sequences))
    src_ids, src_lengths = pad_sources([source], IDS.pad, IDS.eos)
    found = beam_search(ensemble, src_ids, src_lengths, IDS, torch.tensor([limit]), beam_size=128,
                        length_penalty=alpha)[0][0]
    assert tuple(found.tokens) == best[1]
    assert found.score == pytest.approx(best[0], abs=1e-4)
    # Not simply one of the members' answers when they disagree: the search is over the mixture.
    assert found.log_prob == pytest.approx(scores[sequences.index(tuple(found.tokens))], abs=1e-4)


@pytest.mark.parametrize("beam", [1, 4])
def test_batch_composition_does_not_change_an_ensembles_output(beam):
    ensemble = Ensemble([tiny_model(0, vocab=12, sharpness=3.0), tiny_model(1, vocab=12, sharpness=3.0, hidden=16)],
                        [1.0, 3.0])
    settings = DecodingConfig(beam_size=beam, max_length_offset=4)
    alone = [translate_ids(ensemble, [s], IDS, CPU, settings)[0] for s in SOURCES]
    together = translate_ids(ensemble, SOURCES[::-1], IDS, CPU, dataclasses.replace(settings, batch_size=3))[::-1]
    for a, t in zip(alone, together):
        assert [h.tokens for h in t] == [h.tokens for h in a]
        assert t[0].score == pytest.approx(a[0].score, abs=1e-4)


def test_translate_and_evaluate_take_several_checkpoints(tmp_path):
    runs = []
    for seed in (1, 2):
        train(load_config(tiny_config(tmp_path / f"seed{seed}", training={"seed": seed, "max_steps": 12,
                                                                          "validate_every": 12})))
        runs.append(tmp_path / f"seed{seed}" / "run")
    train(load_config(tiny_config(tmp_path / "other", tokenizer={"vocab_size": 250})))
    sources, references = toy_lines("dev", 40)
    src, ref = write_corpus(tmp_path, "eval", sources, references)

    def commands(*calls):  # two processes at a time: each spends ~2 s importing PyTorch
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda args: s2s(*args), calls))
        for result in results:
            assert result.returncode == 0, result.stderr.decode()
        return [result.stdout.decode().splitlines() for result in results]

    translate = ("translate", "--input", src, "--beam-size", "3")
    single, twice = commands((*translate, "--checkpoint", runs[0]),
                             (*translate, "--checkpoint", runs[0], "--checkpoint", runs[0]))
    assert twice == single
    ensemble, weighted = commands((*translate, "--checkpoint", runs[0], "--checkpoint", runs[1]),
                                  (*translate, "--checkpoint", runs[0], "--checkpoint", runs[1], "--weights", "1,1"))
    assert len(ensemble) == len(sources) and ensemble != single and weighted == ensemble
    hyp = tmp_path / "ensemble.hyp"
    hyp.write_text("\n".join(ensemble) + "\n", encoding="utf-8")
    evaluated, scored = commands(("evaluate", "--checkpoint", runs[0], "--checkpoint", runs[1], "--src", src,
                                  "--ref", ref, "--beam-size", "3"), ("evaluate", "--hyp", hyp, "--ref", ref))
    bleu = [line for line in evaluated if line.startswith("BLEU")]
    assert bleu and bleu == [line for line in scored if line.startswith("BLEU")]

    assert_user_errors(
        (("translate", "--checkpoint", runs[0], "--checkpoint", tmp_path / "other" / "run"),
         "different target vocabularies"),
        (("translate", "--checkpoint", runs[0], "--checkpoint", runs[1], "--weights", "1"),
         "--weights gives 1 weight(s) for 2 checkpoint(s)"))


def test_weights_must_be_positive_numbers():
    from seq2seq_cli.cli import _weights
    from seq2seq_cli.errors import UserError

    assert _weights("2,1") == [2.0, 1.0] and _weights(None) is None
    for text in ("1,-2", "1,,2", "a,b", "0", "inf,1"):
        with pytest.raises(UserError, match="give positive numbers separated by commas"):
            _weights(text)
