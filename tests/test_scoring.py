"""s2s score and Translator.score: the model's log-probability of translations it is given.

Checked against what must equal it: the log-probabilities search reports for its own
hypotheses (greedy, beam, an ensemble), a teacher-forced pass over whole targets in double
precision (another code path), and the same pair scored in other batches; on a trained model,
real translations score far above mismatched ones; the command line prints what the Python
API returns and refuses bad input in one line."""

import concurrent.futures
import json
import math
import random

import pytest
import torch

from conftest import (IDS, SOURCES, assert_user_errors, ensemble_log_probs, s2s, s2s_forked, tiny_model,
                      toy_lines, write_corpus)
from seq2seq_cli import Score, Translator
from seq2seq_cli.config import DecodingConfig
from seq2seq_cli.data import read_lines
from seq2seq_cli.decoding import Ensemble, translate_ids
from seq2seq_cli.scoring import score_ids

CPU = torch.device("cpu")
VOCAB = 12  # [PAD] [UNK] [CLS] [SEP] and eight tokens 4..11


def models_and_weights(ensemble: bool):
    models = [tiny_model(0, vocab=VOCAB, sharpness=2.0)]
    if ensemble:
        models.append(tiny_model(1, vocab=VOCAB, sharpness=2.0, hidden=12))
    weights = [1.0, 3.0][: len(models)]
    return models, weights, (Ensemble(models, weights) if ensemble else models[0])


@pytest.mark.parametrize("ensemble", [False, True])
@pytest.mark.parametrize("beam", [1, 4])
def test_a_translation_search_found_scores_its_own_log_prob(beam, ensemble):
    _, _, model = models_and_weights(ensemble)
    found = translate_ids(model, SOURCES, IDS, CPU, DecodingConfig(beam_size=beam, max_length_offset=4), nbest=beam)
    sources = [source for source, hypotheses in zip(SOURCES, found) for _ in hypotheses]
    hypotheses = [h for nbest in found for h in nbest]
    assert any(len(h.tokens) >= 3 for h in hypotheses)  # not only [SEP]s: the test would prove little
    scores = score_ids(model, sources, [h.tokens for h in hypotheses], IDS, CPU, batch_size=3)
    for token_scores, hypothesis in zip(scores, hypotheses, strict=True):
        assert len(token_scores) == len(hypothesis.tokens) + 1
        assert sum(token_scores) == pytest.approx(hypothesis.log_prob, abs=1e-5)


@pytest.mark.parametrize("ensemble", [False, True])
def test_scores_equal_a_teacher_forced_pass_over_whole_targets(ensemble):
    models, weights, model = models_and_weights(ensemble)
    rng = random.Random(5)
    targets = [[[rng.randrange(4, VOCAB) for _ in range(length)] for length in (0, 1, 3, 6, 9)] for _ in SOURCES]
    expected = [ensemble_log_probs(models, weights, source, sequences) for source, sequences in zip(SOURCES, targets)]
    scores = score_ids(model, [s for s, seqs in zip(SOURCES, targets) for _ in seqs],
                       [seq for seqs in targets for seq in seqs], IDS, CPU, batch_size=4)
    assert [sum(row) for row in scores] == pytest.approx([lp for row in expected for lp in row], abs=1e-5)


def test_the_batch_a_pair_is_scored_in_changes_nothing():
    _, _, model = models_and_weights(ensemble=False)
    rng = random.Random(9)
    sources = [[rng.randrange(4, VOCAB) for _ in range(rng.randrange(0, 12))] for _ in range(40)]
    targets = [[rng.randrange(4, VOCAB) for _ in range(rng.randrange(0, 15))] for _ in range(40)]
    alone = [score_ids(model, [s], [t], IDS, CPU, batch_size=1)[0] for s, t in zip(sources, targets)]
    for batch_size in (1, 7, 64):
        together = score_ids(model, sources, targets, IDS, CPU, batch_size=batch_size)
        assert [len(row) for row in together] == [len(t) + 1 for t in targets]  # each pair in its own place
        assert [x for row in together for x in row] == pytest.approx([x for row in alone for x in row], abs=1e-6)


def test_a_trained_model_scores_real_translations_far_above_mismatched_ones(learned_toy_run):
    translator = Translator.load(learned_toy_run, device="cpu")
    english, german = toy_lines("test", 100)
    real = translator.score(english, german)
    mismatched = translator.score(english, german[1:] + german[:1])
    better = sum(r.per_token > m.per_token for r, m in zip(real, mismatched))
    assert better >= 95, better
    # Over the run's dev set: the loss training logged for these weights, less the little mass
    # its softmax spreads on [PAD] and [CLS], which search and scoring exclude (the logged loss
    # is rounded to 5 decimals).
    dev = translator.score(*(read_lines(learned_toy_run.parent / "no-animals" / f"dev.{lang}") for lang in ("en", "de")))
    logged = [json.loads(line) for line in (learned_toy_run / "metrics.jsonl").read_text().splitlines()]
    dev_loss = [record for record in logged if record.get("event") == "valid"][-1]["dev_loss"]
    cross_entropy = -sum(r.log_prob for r in dev) / sum(len(r.tokens) for r in dev)
    assert 0.99 * dev_loss < cross_entropy <= dev_loss + 1e-5
    first = real[0]
    assert first.tokens[-1] == "[SEP]" and len(first.tokens) == len(first.token_log_probs)
    assert first.tokens[:-1] == translator.tokenizers.tgt_pieces(translator.tokenizers.encode_tgt([german[0]])[0])
    assert first.log_prob == pytest.approx(sum(first.token_log_probs)) and first.log_prob < 0
    one = translator.score(english[0], german[0])
    assert isinstance(one, Score) and one.log_prob == pytest.approx(first.log_prob, abs=1e-5)
    with pytest.raises(ValueError, match="2 sources but 1 targets"):
        translator.score(english[:2], german[:1])
    with pytest.raises(TypeError, match="targets is bytes"):
        translator.score(english[:1], b"Der Hund.")
    with pytest.raises(TypeError, match=r"sources\[1\] is int"):
        translator.score([english[0], 3], german[:2])


def test_s2s_score_prints_what_translator_score_returns(learned_toy_run, tmp_path):
    english, german = toy_lines("test", 60)
    src, tgt = write_corpus(tmp_path, "test", english, german)
    out = tmp_path / "scores.txt"
    out.write_text("an earlier file\n")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        plain, normalized = pool.map(lambda extra: s2s("score", "--checkpoint", learned_toy_run, "--src", src,
                                                       "--tgt", tgt, *extra),
                                     [(), ("--normalize", "-o", out, "--batch-size", "7")])
    assert plain.returncode == 0 and normalized.returncode == 0, plain.stderr.decode() + normalized.stderr.decode()
    expected = Translator.load(learned_toy_run, device="cpu").score(english, german)
    printed = [float(line) for line in plain.stdout.decode().splitlines()]
    assert printed == pytest.approx([s.log_prob for s in expected], abs=1e-4)
    assert normalized.stdout == b""
    written = [float(line) for line in out.read_text().splitlines()]
    assert written == pytest.approx([s.per_token for s in expected], abs=1e-4)
    tokens = sum(len(s.tokens) for s in expected)
    perplexity = math.exp(-sum(s.log_prob for s in expected) / tokens)
    summary = plain.stderr.decode().strip().splitlines()[-1]
    assert f"scored 60 pairs, {tokens:,} target tokens" in summary
    assert float(summary.rsplit("perplexity ", 1)[1]) == pytest.approx(perplexity, rel=1e-3)


def test_s2s_score_streams_a_corpus_in_chunks_and_reads_compressed_files(learned_toy_run, tmp_path, monkeypatch):
    """Chunks of 7 pairs (of 20,000 in use): the same numbers, in order, as one call scoring all."""
    import gzip

    from typer.testing import CliRunner

    from seq2seq_cli import cli

    english, german = toy_lines("test", 30)
    src, tgt = write_corpus(tmp_path, "test", english, german)
    packed = tmp_path / "test.de.gz"
    packed.write_bytes(gzip.compress(tgt.read_bytes()))
    monkeypatch.setattr(cli, "SCORE_CHUNK_PAIRS", 7)
    result = CliRunner().invoke(cli.app, ["score", "--checkpoint", str(learned_toy_run), "--src", str(src), "--tgt",
                                          str(packed), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    printed = [float(line) for line in result.stdout.splitlines() if not line.startswith("s2s: ")]
    expected = Translator.load(learned_toy_run, device="cpu").score(english, german)
    assert printed == pytest.approx([s.log_prob for s in expected], abs=1e-4)


def test_s2s_score_refuses_bad_input_in_one_line_and_keeps_existing_output(learned_toy_run, tmp_path):
    english, german = toy_lines("test", 20)
    src, tgt = write_corpus(tmp_path, "test", english, german)
    short = tmp_path / "short.de"
    short.write_text("".join(line + "\n" for line in german[:19]))
    out = tmp_path / "scores.txt"
    out.write_text("an earlier file\n")
    run = learned_toy_run
    assert_user_errors(
        (("score", "--checkpoint", run, "--src", src, "--tgt", short, "-o", out), "has 20 lines but"),
        (("score", "--checkpoint", run, "--src", src, "--tgt", tgt, "-o", src), "is the --src file"),
        (("score", "--checkpoint", tmp_path / "no-run", "--src", src, "--tgt", tgt), "no-run"),
        (("score", "--checkpoint", run, "--src", tmp_path / "missing.en", "--tgt", tgt), "missing.en"),
    )
    assert out.read_text() == "an earlier file\n"
    assert src.read_text() == "".join(line + "\n" for line in english)


def test_s2s_score_adds_a_field_to_each_line_of_an_nbest_list(learned_toy_run, tmp_path):
    """Rescoring an n-best list as s2s translate writes it: each line comes back with the
    model's log-probability of its hypothesis as a new last field, the number --tgt gives for
    the same pair; scored by the model that searched it (length penalty 0), that is the
    search's own SCORE. A rescored list can be rescored again (one more field)."""
    english = toy_lines("test", 12)[0]
    src, _ = write_corpus(tmp_path, "test", english, english)
    searched = s2s_forked("translate", "--checkpoint", learned_toy_run, "--device", "cpu", "--input", src,
                          "--beam-size", "3", "--nbest", "3", "--length-penalty", "0")
    assert searched.returncode == 0, searched.stderr.decode()
    nbest = tmp_path / "nbest.txt"
    nbest.write_bytes(searched.stdout)
    rescored = s2s_forked("score", "--checkpoint", learned_toy_run, "--device", "cpu", "--src", src, "--nbest", nbest)
    assert rescored.returncode == 0, rescored.stderr.decode()
    lines, rows = nbest.read_text().splitlines(), rescored.stdout.decode().splitlines()
    assert len(rows) == len(lines) == 36 and "scored 36 pairs" in rescored.stderr.decode()
    fields = [row.split(" ||| ") for row in rows]
    assert [" ||| ".join(row[:-1]) for row in fields] == lines
    expected = Translator.load(learned_toy_run, device="cpu").score([english[int(row[0])] for row in fields],
                                                                     [row[1] for row in fields])
    assert [float(row[3]) for row in fields] == pytest.approx([s.log_prob for s in expected], abs=1e-4)
    # Text read again as the search wrote it: the same score, but where it re-tokenizes otherwise.
    same = sum(abs(float(row[3]) - float(row[2])) < 2e-4 for row in fields)
    assert same >= 0.9 * len(fields), [row[2:] for row in fields]
    again = tmp_path / "rescored.txt"
    again.write_text(rescored.stdout.decode())
    twice = s2s_forked("score", "--checkpoint", learned_toy_run, "--device", "cpu", "--src", src, "--nbest", again)
    assert [row.split(" ||| ")[3:] for row in twice.stdout.decode().splitlines()] == [row[3:] * 2 for row in fields]

    # --reverse: a model of the other direction scores each source given its hypothesis (the
    # channel model of noisy-channel reranking); this one stands in for it.
    channel = s2s_forked("score", "--checkpoint", learned_toy_run, "--device", "cpu", "--src", src, "--nbest", nbest,
                         "--reverse")
    assert channel.returncode == 0, channel.stderr.decode()
    assert "source tokens ([SEP] included)" in channel.stderr.decode()
    reverse = Translator.load(learned_toy_run, device="cpu").score([row[1] for row in fields],
                                                                    [english[int(row[0])] for row in fields])
    channel_fields = [row.split(" ||| ") for row in channel.stdout.decode().splitlines()]
    assert [row[:3] for row in channel_fields] == [row[:3] for row in fields]
    assert [float(row[3]) for row in channel_fields] == pytest.approx([s.log_prob for s in reverse], abs=1e-4)
    assert [float(row[3]) for row in channel_fields] != pytest.approx([float(row[3]) for row in fields], abs=1e-2)

    out = tmp_path / "scores.txt"
    out.write_text("an earlier file\n")
    broken, backwards, beyond = (tmp_path / name for name in ("broken.txt", "backwards.txt", "beyond.txt"))
    broken.write_text(lines[0] + "\njust a sentence\n")
    backwards.write_text(lines[5] + "\n" + lines[0] + "\n")
    beyond.write_text(lines[-1] + "\n12 ||| Ein Hund. ||| -1.0\n")
    run = learned_toy_run
    assert_user_errors(
        (("score", "--checkpoint", run, "--src", src, "--nbest", nbest, "--tgt", src), "one of them"),
        (("score", "--checkpoint", run, "--src", src), "--tgt FILE (one per --src line) or --nbest FILE"),
        (("score", "--checkpoint", run, "--src", src, "--nbest", broken, "-o", out),
         "broken.txt, line 2: not an n-best line"),
        (("score", "--checkpoint", run, "--src", src, "--nbest", backwards), "line 2: index 0 after 1"),
        (("score", "--checkpoint", run, "--src", src, "--nbest", beyond), "index 12, but"),
        (("score", "--checkpoint", run, "--src", src, "--nbest", nbest, "-o", nbest), "is the --nbest file"),
    )
    assert out.read_text() == "an earlier file\n" and nbest.read_text().splitlines() == lines
