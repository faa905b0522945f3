"""Seeing what a run does: curves, TensorBoard scalars, s2s info, help texts, completion."""

import builtins
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seq2seq_cli.config import load_config
from seq2seq_cli.errors import UserError
from seq2seq_cli.metrics import read_metrics
from seq2seq_cli.launch import train

from conftest import assert_user_error, assert_user_errors, png_size, s2s, s2s_forked, tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("observe")
    config = load_config(tiny_config(tmp_path, training={"max_steps": 8, "validate_every": 4, "tensorboard": True}))
    train(config)
    return Path(config.run_dir)


def test_curves_png(run):
    width, height = png_size(run / "curves.png")
    assert width >= 800 and height >= 500  # README: at least 800 x 500 pixels


def test_tensorboard_event_files_hold_the_tags(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "dev/loss", "dev/ppl", "dev/bleu", "dev/chrf"} <= tags
    assert [e.step for e in events.Scalars("dev/bleu")] == [4, 8]


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    config = load_config(tiny_config(tmp_path, training={"tensorboard": True}))
    with pytest.raises(UserError, match=r"pip install -e \".\[tensorboard\]\""):
        train(config)


def test_info_json_matches_metrics(run):
    result = s2s_forked("info", run, "--json")
    assert result.returncode == 0, result.stderr.decode()
    summary = json.loads(result.stdout)
    records = read_metrics(run / "metrics.jsonl")
    valid = [r for r in records if r["event"] == "valid"]
    train_events = [r for r in records if r["event"] == "train"]
    best = max(valid, key=lambda r: r["dev_bleu"])
    assert summary["best_dev_bleu"] == best["dev_bleu"] and summary["best_step"] == best["step"]
    assert summary["last_step"] == 8 and summary["finished"]
    assert summary["tokens_per_s"] == pytest.approx(sum(r["tokens_per_s"] for r in train_events) / len(train_events),
                                                    abs=0.1)
    assert summary["device"] == "cpu" and summary["parameters"] > 0 and summary["bleu_tokenize"] == "13a"
    assert summary["checkpoints"]["last"]["step"] == 8
    human = s2s_forked("info", run)
    assert "best dev BLEU" in human.stdout.decode() and human.returncode == 0


def test_info_on_a_folder_that_is_not_a_run(tmp_path):
    assert_user_error(s2s_forked("info", tmp_path), "no metrics.jsonl")


def test_info_on_a_file_of_a_run_names_the_run(run, tmp_path):
    from seq2seq_cli.metrics import run_summary

    with pytest.raises(UserError, match=rf"best.pt is a file, not a run directory; give the run it is in: {run}$"):
        run_summary(run / "checkpoints" / "best.pt")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="notes.txt is a file, not a run directory; give the folder s2s train wrote"):
        run_summary(tmp_path / "notes.txt")


@pytest.mark.parametrize("command", ["train", "translate", "evaluate", "info"])
def test_help_has_purpose_and_example(command):
    result = s2s(command, "--help")
    text = result.stdout.decode()
    assert result.returncode == 0
    assert "Example:" in text and f"s2s {command}" in text


def test_shell_completion_lists_commands():
    script = shutil.which("s2s") or str(Path(sys.executable).parent / "s2s")
    env = dict(os.environ, _S2S_COMPLETE="complete_bash", COMP_WORDS="s2s tr", COMP_CWORD="1")
    result = subprocess.run([script], env=env, capture_output=True, timeout=60)
    assert result.returncode == 0
    assert {"train", "translate"} <= set(result.stdout.decode().split())


def test_average_checkpoints(tmp_path):
    import torch

    config = load_config(tiny_config(tmp_path, training={"max_steps": 6, "validate_every": 0, "save_every": 2,
                                                         "keep_last": 3}))
    train(config)
    run = Path(config.run_dir)
    result = s2s_forked("average", run, "--last", "3")
    assert result.returncode == 0, result.stderr.decode()
    averaged = torch.load(run / "checkpoints" / "averaged.pt", weights_only=True)
    steps = [torch.load(run / "checkpoints" / f"step-{s:08d}.pt", weights_only=True)["model"] for s in (2, 4, 6)]
    name = "decoder.output.weight"
    torch.testing.assert_close(averaged["model"][name], sum(s[name] for s in steps) / 3)
    assert averaged["averaged_steps"] == [2, 4, 6]
    translated = s2s_forked("translate", "--checkpoint", run / "checkpoints" / "averaged.pt",
                            stdin="The man sees a dog.\n")
    assert translated.returncode == 0 and translated.stdout.count(b"\n") == 1
    assert_user_error(s2s_forked("average", run, "--last", "5"), "training.keep_last=5")
    # The files training keeps (resume state, best weights, the averaged steps) are never the output.
    kept = {path: path.read_bytes() for path in (run / "checkpoints").glob("*.pt") if path.name != "averaged.pt"}
    assert len(kept) == 5
    assert_user_errors(*[(("average", run, "--last", "3", "--output", path), "s2s train writes and reads that file")
                         for path in sorted(kept)[:4]],
                       (("average", run, "--last", "3", "--output", tmp_path),  # a folder: no use freeing space
                        f"cannot write checkpoint {tmp_path} (Is a directory); the previous one is unchanged. "
                        "Fix that, then average again"))
    assert all(path.read_bytes() == data for path, data in kept.items())
