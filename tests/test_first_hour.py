"""What a new user meets in the first hour: messages that point at the right place, a run
that says what it is doing, and `s2s info` that reads well."""

import logging
import os
import re
import subprocess
import sys

import pytest

from seq2seq_cli.config import load_config
from seq2seq_cli.launch import train

from conftest import ROOT, assert_user_error, s2s, s2s_forked, tiny_config


def test_an_unknown_override_is_blamed_on_the_command_line_not_the_file(tmp_path):
    result = s2s("train", "--config", ROOT / "configs" / "toy.yaml", "--run-dir", tmp_path / "run", "model.hiden_size=128")
    assert_user_error(result, "command-line override model.hiden_size=128: model.hiden_size")
    assert "toy.yaml" not in result.stderr.decode()
    assert not (tmp_path / "run").exists()


def test_a_yaml_mistake_names_the_line_to_fix(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  train_src: a\ntraining:\n  max_epochs: 3\n  batch_tokens 2500\n  log_every: 25\n")
    assert_user_error(s2s_forked("train", "--config", config), f"{config}: line 5 malformed YAML")


def test_a_config_file_given_as_checkpoint_is_called_not_a_checkpoint():
    result = s2s_forked("translate", "--checkpoint", ROOT / "configs" / "toy.yaml", stdin="Hello.\n")
    assert_user_error(result, "toy.yaml: not a readable s2s checkpoint (not a PyTorch checkpoint file at all)")
    assert "weights_only" not in result.stderr.decode()


def test_info_reads_well_and_says_why_the_run_stopped(tmp_path):
    config = load_config(tiny_config(tmp_path, training={"max_steps": 4, "validate_every": 2, "keep_last": 2}))
    train(config)
    result = s2s_forked("info", tmp_path / "run")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    column = lines[0].index(str(tmp_path / "run"))
    for line in lines:  # every value starts in one column, after at least two spaces
        assert line[column - 2: column] == "  " and line[column] != " ", line
    assert any(re.fullmatch(r"status +finished: reached max_steps=4", line) for line in lines), lines
    assert any(line.startswith("best checkpoint  ") for line in lines)
    missing = s2s_forked("info", tmp_path / "nope")
    assert_user_error(missing, f"{tmp_path / 'nope'}: no such run directory")


def test_without_a_terminal_training_logs_progress_with_a_total_and_eta(tmp_path, monkeypatch, caplog):
    import seq2seq_cli.progress as progress_module

    monkeypatch.setattr(progress_module, "PLAIN_LOG_SECONDS", 0.0)  # a line after every step
    config = load_config(tiny_config(tmp_path, training={"max_steps": 5, "validate_every": 0, "log_every": 100}))
    with caplog.at_level(logging.INFO, logger="seq2seq_cli"):
        train(config)
    lines = [r.getMessage() for r in caplog.records if "(running)" in r.getMessage()]
    assert len(lines) == 5
    assert lines[0].startswith("step 1/5 epoch 1: loss ") and ", ETA " in lines[0]


def test_a_run_stopped_by_time_says_what_it_gave_up(tmp_path, caplog):
    config = load_config(tiny_config(tmp_path, training={"max_steps": 100000, "max_minutes": 0.0001,
                                                         "validate_every": 0}))
    with caplog.at_level(logging.INFO, logger="seq2seq_cli"):
        summary = train(config)
    assert summary["reason"] == "reached max_minutes=0.0001"
    assert f"after {summary['step']} steps of ~100000 that max_steps/max_epochs allow" in caplog.text


@pytest.mark.parametrize("command", ["train", "prepare", "translate", "evaluate", "average", "export", "score", "serve", "info"])
def test_help_reads_well_at_80_columns(command):
    result = subprocess.run([sys.executable, "-m", "seq2seq_cli", command, "--help"], capture_output=True,
                            env={**os.environ, "COLUMNS": "80"}, timeout=60)
    text = result.stdout.decode()
    assert result.returncode == 0
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "<bool>" not in text and "…" not in text
