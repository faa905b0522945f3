"""Fine-tuning (``training.init_from``): a run that starts from another run's weights.

The toy corpus is split into two domains: sentences without animals (the parent's) and with
them (words and noun forms the parent never saw). Fine-tuning on the second starts from the
parent's score there, not from zero, ends above it, resumes exactly, and refuses a tokenizer
or model size that is not the parent's."""

import re
from pathlib import Path

import torch
import yaml

from conftest import (TOY_LEARNING_SIZES, assert_user_errors, final_weights, s2s, s2s_forked, tiny_config, toy_domain,
                      toy_domain_files)
from seq2seq_cli.config import load_config
from seq2seq_cli.evaluation import corpus_bleu
from seq2seq_cli.launch import train
from seq2seq_cli.metrics import read_metrics
from seq2seq_cli.translation import Translator


def animals_config(folder: Path, training: dict) -> Path:
    """The parent's sizes, trained on the pairs with animals."""
    return tiny_config(folder, data=toy_domain_files(folder / "animals", animals=True), **TOY_LEARNING_SIZES,
                       training={"batch_tokens": 2500, **training})


def test_fine_tuning_adapts_to_a_new_domain_and_resumes_exactly(tmp_path, learned_toy_run):
    parent_run = learned_toy_run  # trained on the pairs without animals
    dev_en, dev_de = toy_domain("dev", animals=True)
    hypotheses, _ = Translator.load(parent_run, "cpu").translate_lines(dev_en)
    parent_score = corpus_bleu(hypotheses, dev_de)

    child = animals_config(tmp_path / "child", training={
        "max_steps": 20, "validate_every": 5, "learning_rate": 0.001, "init_from": str(parent_run)})
    result = s2s("train", "--config", child)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    records = read_metrics(tmp_path / "child" / "run" / "metrics.jsonl")
    start = records[0]
    assert start["event"] == "start" and start["init_from"] == str(parent_run / "checkpoints" / "best.pt")
    valid = [r for r in records if r["event"] == "valid"]
    # Fresh optimizer, schedule, step and best score; the weights are the parent's.
    assert [r["step"] for r in valid] == [5, 10, 15, 20] and records[1]["step"] > 0
    assert records[1]["lr"] == 0.001
    assert valid[0]["dev_bleu"] > 0.8 * parent_score, (valid, parent_score)
    assert valid[-1]["best_dev_bleu"] > parent_score + 3, (valid, parent_score)
    assert (tmp_path / "child" / "run" / "tokenizer" / "vocab.txt").read_bytes() == \
        (parent_run / "tokenizer" / "vocab.txt").read_bytes()
    saved = yaml.safe_load((tmp_path / "child" / "run" / "config.yaml").read_text())
    assert saved["training"]["init_from"] == str(parent_run)
    info = s2s_forked("info", tmp_path / "child" / "run").stdout.decode()
    assert re.search(rf"started from +{re.escape(str(parent_run / 'checkpoints' / 'best.pt'))} "
                     r"\(step 160\)", info), info

    # Stopped at step 10 and resumed to 20: the same weights as the run that went straight through.
    halfway = load_config(child, [f"run_dir={tmp_path / 'resumed'}", "training.max_steps=10"])
    train(halfway)
    train(load_config(tmp_path / "resumed" / "config.yaml", ["training.max_steps=20"]), resume=True)
    straight, resumed = final_weights(tmp_path / "child" / "run"), final_weights(tmp_path / "resumed")
    for name, weight in straight.items():
        assert torch.equal(resumed[name], weight), name

    # What the parent cannot give is refused before anything is written, and so is replacing a
    # run (--overwrite) by one that reads it: it would remove its own parent or tokenizer first.
    child_run = tmp_path / "child" / "run"
    before = {path: path.read_bytes() for path in child_run.rglob("*") if path.is_file()}
    assert_user_errors(
        (("train", "--config", child, f"run_dir={tmp_path / 'x'}", "tokenizer.vocab_size=500"),
         "tokenizer.vocab_size is 500 but training.init_from"),
        (("train", "--config", child, f"run_dir={tmp_path / 'y'}", "model.hidden_size=64"),
         "model.hidden_size is 64 but training.init_from"),
        (("train", "--config", child, "--overwrite", f"training.init_from={child_run}"),
         f"--overwrite would remove {child_run / 'checkpoints'}, which training.init_from "
         f"({child_run / 'checkpoints' / 'best.pt'}) needs"),
        (("train", "--config", child, "--overwrite", "training.init_from=null",
          f"tokenizer.pretrained={child_run / 'tokenizer'}"), "which tokenizer.pretrained ("))
    assert not any((tmp_path / name).exists() for name in "xy")
    assert {path: path.read_bytes() for path in child_run.rglob("*") if path.is_file()} == before
