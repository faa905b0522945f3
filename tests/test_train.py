import json
from pathlib import Path

import pytest
import torch
import yaml

from seq2seq_cli.config import load_config
from seq2seq_cli.errors import UserError
from seq2seq_cli.evaluation import corpus_bleu
from seq2seq_cli.launch import train
from seq2seq_cli.precision import cpu_computes_bf16
from seq2seq_cli.translation import Translator

from conftest import (TOY_LEARNING_SIZES, assert_user_error, needs_cpu_bf16, s2s, s2s_forked, tiny_config, toy_domain,
                      toy_lines, write_corpus)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_directory_is_complete(tmp_path):
    config = load_config(tiny_config(tmp_path))
    summary = train(config)
    run = Path(config.run_dir)
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "checkpoints" / "last.pt").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["training"]["max_steps"] == 6 and saved["data"]["train_src"] == config.data.train_src
    events = read_metrics(run)
    train_events = [e for e in events if e["event"] == "train"]
    valid_events = [e for e in events if e["event"] == "valid"]
    assert [e["step"] for e in train_events] == [2, 4, 6]
    assert [e["step"] for e in valid_events] == [3, 6]
    assert {"epoch", "train_loss", "lr", "tokens_per_s"} <= train_events[0].keys()
    assert {"epoch", "dev_loss", "dev_ppl", "dev_bleu"} <= valid_events[0].keys()
    assert summary["step"] == 6
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 6 and "optimizer" in last["trainer"]


def test_fixed_seed_gives_bit_identical_runs(tmp_path):
    finals = []
    for name in ("a", "b"):
        config = load_config(tiny_config(tmp_path / name), ["training.teacher_forcing_ratio=0.7"])
        train(config)
        finals.append(torch.load(Path(config.run_dir) / "checkpoints" / "last.pt", weights_only=True)["model"])
    assert finals[0].keys() == finals[1].keys()
    for key in finals[0]:
        assert torch.equal(finals[0][key], finals[1][key]), key


def test_existing_run_is_never_overwritten_silently(tmp_path):
    config = load_config(tiny_config(tmp_path, training={"max_steps": 2, "validate_every": 0}))
    train(config)
    run = Path(config.run_dir)
    (run / "notes.txt").write_text("mine")
    before = (run / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(UserError, match="--overwrite"):
        train(config)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    train(config, overwrite=True)
    assert (run / "notes.txt").read_text() == "mine"  # only what s2s wrote is replaced


def test_stops_at_max_epochs_and_validates_each_epoch(tmp_path):
    config = load_config(tiny_config(tmp_path, train_pairs=60, training={
        "max_steps": 0, "max_epochs": 2, "validate_every": 0, "batch_tokens": 1000}))
    summary = train(config)
    valid = [e for e in read_metrics(Path(config.run_dir)) if e["event"] == "valid"]
    assert [e["epoch"] for e in valid] == [1, 2]
    assert summary["reason"] == "reached max_epochs=2"


def test_batches_added_up_make_the_update_of_their_union(tmp_path):
    """training.batches_per_update: the gradient of three batches added up is the gradient of
    one batch of all their pairs (fp32 rounding apart), and so is the loss it reports."""
    import numpy as np

    from seq2seq_cli.launch import build_trainer

    trainers = [build_trainer(load_config(tiny_config(tmp_path / name), [
        "model.dropout=0", "training.clip_grad_norm=0"])) for name in ("added", "union")]
    added, union = trainers
    for ours, theirs in zip(added.model.parameters(), union.model.parameters()):
        assert torch.equal(ours, theirs)  # the same start
    group = added.epoch_batches(0)[:3]
    batches = [added.train_batches.make_batch(indices) for indices in group]
    assert len({batch.src_ids.size(1) for batch in batches}) > 1  # unlike shapes, so padding differs too
    added_loss = added.update(batches)
    union_loss = union.update([union.train_batches.make_batch(np.concatenate(group))])
    assert added_loss == pytest.approx(union_loss, rel=1e-5)
    gradients = [(ours.grad, theirs.grad) for ours, theirs in zip(added.model.parameters(), union.model.parameters())]
    assert all(float(g.abs().max()) > 0 for g, _ in gradients[:3])
    for ours, theirs in gradients:
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)


def test_batches_per_update_counts_steps_in_updates_and_resumes_exactly(tmp_path):
    schedule = {"max_steps": 0, "max_epochs": 1, "validate_every": 0, "batch_tokens": 400, "batches_per_update": 3,
                "log_every": 1}
    straight = load_config(tiny_config(tmp_path / "straight", train_pairs=100, training=schedule))
    summary = train(straight)
    from seq2seq_cli.launch import build_trainer

    batches = len(build_trainer(load_config(tiny_config(tmp_path / "count", train_pairs=100, training=schedule)))
                  .epoch_batches(0))
    assert batches % 3 != 0  # the epoch's last update has fewer batches
    assert summary["step"] == -(-batches // 3)
    # Stopped after two updates, then resumed to the end of the epoch: the same run, bit for bit.
    stopped = load_config(tiny_config(tmp_path / "stopped", train_pairs=100, training={**schedule, "max_steps": 2}))
    train(stopped)
    train(load_config(Path(stopped.run_dir) / "config.yaml", ["training.max_steps=0"]), resume=True)
    ours = torch.load(Path(stopped.run_dir) / "checkpoints" / "last.pt", weights_only=True)
    theirs = torch.load(Path(straight.run_dir) / "checkpoints" / "last.pt", weights_only=True)
    assert ours["step"] == theirs["step"] == summary["step"]
    for key in theirs["model"]:
        assert torch.equal(ours["model"][key], theirs["model"][key]), key


def test_model_learns_the_toy_task(learned_toy_run):
    """After a short run, dev BLEU is far above the copy-the-source baseline."""
    run = learned_toy_run
    dev_en, dev_de = toy_domain("dev", animals=False)
    copy_baseline = corpus_bleu(dev_en, dev_de)
    assert copy_baseline < 5
    valid = [r for r in read_metrics(run) if r["event"] == "valid"]
    assert [r["step"] for r in valid] == [160] and valid[-1]["dev_bleu"] > 50, valid
    # The learned model decodes about as well in bf16 and with int8 weights as in fp32.
    dev_en, dev_de = dev_en[:100], dev_de[:100]
    fp32 = Translator.load(run, "cpu")
    fp32_bleu = corpus_bleu(fp32.translate(dev_en), dev_de)
    for options in ([{"dtype": "bf16"}] if cpu_computes_bf16() else []) + [{"quantize": "int8"}]:
        translator = Translator.load(run, "cpu", **options)
        dtypes = set()
        handle = translator.model.decoder.output.register_forward_hook(lambda m, i, output: dtypes.add(output.dtype))
        bleu = corpus_bleu(translator.translate(dev_en), dev_de)
        handle.remove()
        assert abs(bleu - fp32_bleu) < 2.0, (options, bleu, fp32_bleu)
        if "dtype" in options:
            assert dtypes == {torch.bfloat16}
        else:
            assert dtypes == {torch.float32}
            assert type(translator.model.decoder.output).__name__ == "Linear"  # the dynamic quantized one
            assert type(translator.model.decoder.output).__module__.startswith("torch.ao.nn.quantized.dynamic")
            assert type(translator.model.decoder.rnn).__module__.startswith("torch.ao.nn.quantized.dynamic")


def test_dev_bleu_is_the_score_evaluate_gives_the_best_weights(tmp_path, learned_toy_run):
    """Validation decodes the dev set as ``s2s evaluate --beam-size 1`` decodes it: a source
    longer than data.max_len cut to that many tokens, an empty source translated to nothing.
    A user who scores the dev files with the best checkpoint gets the dev BLEU of the log."""
    en, de = toy_domain("dev", animals=False)  # the parent's domain, where it scores far above 0
    long_en, long_de = ([" ".join(lines[i:i + 6]) for i in range(0, 60, 6)] for lines in (en, de))  # > 24 tokens
    dev_src, dev_tgt = write_corpus(tmp_path / "dev", "dev", en[60:120] + long_en + [""],
                                    de[60:120] + long_de + [de[0]])
    config = tiny_config(tmp_path, **TOY_LEARNING_SIZES, data={"dev_src": str(dev_src), "dev_tgt": str(dev_tgt),
                                                               "max_len": 24},
                         training={"max_steps": 2, "validate_every": 2, "batch_tokens": 2500, "learning_rate": 1e-4,
                                   "init_from": str(learned_toy_run)})
    trained = s2s("train", "--config", config)
    assert trained.returncode == 0, trained.stderr.decode()[-2000:]
    [valid] = [r for r in read_metrics(tmp_path / "run") if r["event"] == "valid"]
    evaluated = s2s("evaluate", "--checkpoint", tmp_path / "run", "--src", dev_src, "--ref", dev_tgt,
                    "--beam-size", "1", "--json", tmp_path / "report.json")
    assert evaluated.returncode == 0, evaluated.stderr.decode()[-2000:]
    assert evaluated.stderr.decode().count("truncated to the model's limit of 24") == len(long_en)
    assert valid["dev_bleu"] > 20
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["bleu"]["score"], report["chrf"]["score"]) == (valid["dev_bleu"], valid["dev_chrf"])


def test_dev_references_with_accents_as_combining_marks_are_named_before_training(tmp_path, caplog):
    """The model writes composed text (the tokenizer reads it so) and dev BLEU compares it with
    the references as written: references with accents as combining marks (macOS) would score
    low all run long with no hint why. Training says so first, naming the file."""
    import unicodedata

    en, de = toy_lines("dev", 40)
    decomposed = [unicodedata.normalize("NFD", line) for line in de]
    dev_src, dev_tgt = write_corpus(tmp_path / "nfd", "dev", en, decomposed)
    config = load_config(tiny_config(tmp_path, data={"dev_src": str(dev_src), "dev_tgt": str(dev_tgt)},
                                     training={"max_steps": 1, "validate_every": 0}))
    with caplog.at_level("WARNING", logger="seq2seq_cli"):
        train(config)
    count = sum(a != b for a, b in zip(de, decomposed))
    assert count > 10 and any(f"the dev references {dev_tgt}: {count} lines write accents as combining marks"
                              in record.getMessage() for record in caplog.records), caplog.text


def test_dev_loss_leaves_out_only_lines_no_sentence_is_as_long_as(tmp_path, caplog):
    """Dev pairs over 1,024 tokens (a document without newlines), whose ids may be cut short,
    change dev BLEU but not dev loss; every other pair counts, longer than data.max_len or not."""
    caplog.set_level("INFO")
    en, de = toy_lines("dev", 40)
    long_en, long_de = ([" ".join(lines * 40)] * 3 for lines in (en, de))  # 1,600 words a line
    dev_loss = []
    for name, extra in (("short", 0), ("long", 3)):
        dev_src, dev_tgt = write_corpus(tmp_path / name, "dev", en + long_en[:extra], de + long_de[:extra])
        config = tiny_config(tmp_path / name, data={"dev_src": str(dev_src), "dev_tgt": str(dev_tgt), "max_len": 16})
        train(load_config(config))
        dev_loss.append([r["dev_loss"] for r in read_metrics(tmp_path / name / "run") if r["event"] == "valid"])
    assert len(dev_loss[0]) == 2 and dev_loss[0] == dev_loss[1]
    assert caplog.text.count("dev loss over") == 1
    assert "dev loss over 40 of 43 dev pairs: 3 longer than 1024 tokens left out" in caplog.text
    dev_src, dev_tgt = write_corpus(tmp_path / "none", "dev", long_en, long_de)
    config = tiny_config(tmp_path / "none", data={"dev_src": str(dev_src), "dev_tgt": str(dev_tgt)})
    with pytest.raises(UserError, match=r"every dev pair is longer than 1024 tokens .* one sentence per line"):
        train(load_config(config))


@needs_cpu_bf16
def test_bf16_training_precision_on_the_cpu(tmp_path):
    """``training.precision=bf16`` runs every linear layer in bf16, in the training steps and in
    validation (fp32, the CPU default, is what every exactness test runs in)."""
    config = load_config(tiny_config(tmp_path, training={"max_steps": 2, "validate_every": 2, "precision": "bf16"}))
    dtypes = set()

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            dtypes.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        summary = train(config)
    finally:
        handle.remove()
    assert dtypes == {torch.bfloat16}
    assert summary["skipped_steps"] == 0  # every step's loss and gradients were finite


def test_bert_initialised_embeddings(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    en, de = toy_lines("train", 200)
    words = sorted({w for line in en + de for w in line.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=False).save_pretrained(str(tmp_path / "bert"))
    bert_config = BertConfig(vocab_size=len(vocab), hidden_size=20, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=8)
    torch.manual_seed(0)
    bert = BertModel(bert_config)
    bert.save_pretrained(str(tmp_path / "bert"))
    config = load_config(tiny_config(tmp_path, train_pairs=200, tokenizer={"pretrained": str(tmp_path / "bert")},
                                     model={"embed_type": "bert"}, training={"max_steps": 1, "validate_every": 0}))
    train(config)
    saved = torch.load(Path(config.run_dir) / "checkpoints" / "last.pt", weights_only=True)["model"]
    table = saved["encoder.embedding.0.weight"]
    assert table.shape == (len(vocab), 20)
    # One Adam step moves weights by about the learning rate: still BERT's table.
    torch.testing.assert_close(table, bert.embeddings.word_embeddings.weight.detach(), atol=0.01, rtol=0)


def test_early_stopping_after_patience(tmp_path, monkeypatch):
    import seq2seq_cli.train as train_module

    monkeypatch.setattr(train_module, "corpus_bleu", lambda hypotheses, references, metric: 5.0)  # never improves
    config = load_config(tiny_config(tmp_path, training={"max_steps": 100, "validate_every": 2, "patience": 3}))
    summary = train(config)
    assert summary["step"] == 8  # best at step 2, then 3 validations without a better BLEU
    assert summary["reason"] == "dev BLEU did not improve for 3 validations"
    assert summary["best_step"] == 2


def test_best_metric_picks_the_best_checkpoint(tmp_path):
    """training.best_metric: best.pt holds the weights of the validation best by dev loss (the
    lowest) or dev chrF (the highest), the first of equals; a resumed run keeps its metric."""
    from seq2seq_cli.metrics import run_summary
    from seq2seq_cli.state import TrainingState

    best_steps = {}
    for metric in ("loss", "chrf"):
        config = load_config(tiny_config(tmp_path / metric, training={"max_steps": 12, "validate_every": 2,
                                                                      "best_metric": metric}))
        summary = train(config)
        valid = [r for r in read_metrics(tmp_path / metric / "run") if r["event"] == "valid"]
        assert len(valid) == 6
        if metric == "loss":
            best = min(valid, key=lambda r: r["dev_loss"])
            assert summary["best_dev_score"] == pytest.approx(best["dev_loss"], abs=1e-5)
        else:
            best = max(valid, key=lambda r: r["dev_chrf"])
        best_steps[metric] = best["step"]
        assert summary["best_step"] == best["step"] and summary["best_metric"] == metric
        assert summary["best_dev_bleu"] == pytest.approx(best["dev_bleu"], abs=0.005)
        assert torch.load(tmp_path / metric / "run" / "checkpoints" / "best.pt", weights_only=True)["step"] == best["step"]
        info = run_summary(tmp_path / metric / "run")
        assert (info["best_metric"], info["best_step"]) == (metric, best["step"])
    # A tiny model's dev loss falls at every validation while its BLEU barely moves: the metrics disagree.
    assert best_steps["loss"] == 12

    # Several runs side by side: a row each, by the metric that picked each one's best.pt.
    runs = [tmp_path / metric / "run" for metric in ("loss", "chrf")]
    table = s2s_forked("info", *runs)
    assert table.returncode == 0, table.stderr.decode()
    header, *rows = table.stdout.decode().splitlines()
    assert header.split()[:2] == ["run", "status"] and len(rows) == 2
    assert rows[0].startswith(str(runs[0])) and f" @ {best_steps['loss']} " in rows[0] and " loss " in rows[0]
    assert rows[1].startswith(str(runs[1])) and "chrF " in rows[1] and f" @ {best_steps['chrf']} " in rows[1]
    listed = json.loads(s2s_forked("info", *runs, "--json").stdout)
    assert [entry["best_metric"] for entry in listed] == ["loss", "chrf"]
    assert_user_error(s2s_forked("info", runs[0], tmp_path), f"{tmp_path}: no metrics.jsonl")

    run = tmp_path / "loss" / "run"
    assert_user_error(s2s_forked("train", "--resume", run, "training.max_steps=14", "training.best_metric=bleu"),
                      f"cannot resume {run}: its best checkpoint was chosen by dev loss (step 12), not BLEU")
    # A checkpoint from before training.best_metric kept the best dev BLEU.
    payload = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    del payload["trainer"]["best_metric"], payload["trainer"]["best_score"]
    state = TrainingState.from_checkpoint(payload)
    assert (state.best_metric, state.best_score) == ("bleu", payload["best_dev_bleu"])


@pytest.mark.parametrize("metric, decays", [("bleu", []), ("chrf", [3, 5]), ("loss", [3, 5])])
def test_plateau_schedule_watches_its_metric(metric, decays):
    """Dev BLEU creeping up while dev chrF and loss stall: only the schedules watching those decay."""
    from seq2seq_cli.config import TrainingConfig
    from seq2seq_cli.schedule import LearningRateSchedule

    config = TrainingConfig(learning_rate=0.1, lr_decay_patience=1, plateau_metric=metric)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
    schedule = LearningRateSchedule(optimizer, config)
    rates = []
    for bleu, chrf, loss in [(10, 40, 3.0), (11, 42, 2.5), (12, 41, 2.6), (13, 42, 2.5), (14, 40, 2.7), (15, 41, 2.6)]:
        schedule.after_validation(bleu, chrf, loss)
        schedule.step(1)
        rates.append(optimizer.param_groups[0]["lr"])
    expected, rate = [], 0.1
    for validation in range(6):
        rate *= 0.5 if validation in decays else 1.0
        expected.append(rate)
    assert rates == pytest.approx(expected)

    # Resumed with the other metric, the old best (in the other units) is dropped, the rate kept.
    state = schedule.state_dict()
    other = TrainingConfig(learning_rate=0.1, lr_decay_patience=1, plateau_metric="bleu" if metric == "loss" else "loss")
    resumed = LearningRateSchedule(optimizer, other)
    resumed.load_state_dict(state)
    assert resumed.best == float("-inf") and resumed.plateau_scale == schedule.plateau_scale


def test_toy_corpus_properties():
    from conftest import TOY

    splits = {name: toy_lines(name) for name in ("train", "dev", "test")}
    assert [len(splits[n][0]) for n in ("train", "dev", "test")] == [20000, 500, 500]
    assert all(len(en) == len(de) for en, de in splits.values())
    assert not set(splits["test"][0]) & set(splits["train"][0])
    assert not set(splits["dev"][0]) & set(splits["train"][0])
    words = {w for en, de in splits.values() for line in en + de for w in line.split()}
    assert len(words) >= 300
    # The committed files are exactly what the generator makes.
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate", TOY / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    regenerated = generate.generate(1234, 20000, 500, 500)
    assert [pair[0] for pair in regenerated["test"]] == splits["test"][0]
    assert [pair[1] for pair in regenerated["train"]] == splits["train"][1]
