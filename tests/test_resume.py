"""Nothing lost: exact resume after SIGKILL, clean stops on SIGINT/SIGTERM, safe checkpoints."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import seq2seq_cli.checkpoint as checkpoint_module
from seq2seq_cli.config import load_config
from seq2seq_cli.errors import UserError
from seq2seq_cli.metrics import read_metrics, run_summary
from seq2seq_cli.launch import train
from seq2seq_cli.model import Seq2Seq

from conftest import assert_user_error, final_weights, s2s_forked, saved_step, tiny_config

STEPS = 36
SCHEDULE = {"max_steps": STEPS, "validate_every": 9, "save_every": 2, "log_every": 1, "keep_last": 3,
            "teacher_forcing_ratio": 0.8, "lr_decay_patience": 0}


def start(config: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "seq2seq_cli", "train", "--config", str(config), *map(str, extra)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_until_killed(config: Path, run: Path, after_step: int, *extra) -> None:
    """Start training and SIGKILL it once it has saved a checkpoint at or after ``after_step``."""
    proc = start(config, *extra)
    deadline = time.time() + 120
    while saved_step(run) < after_step:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert saved_step(run) < STEPS, "the run finished before it could be killed"


def resume(run: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "seq2seq_cli", "train", "--resume", str(run)],
                            capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()


def assert_same_run(run: Path, reference: Path) -> None:
    ours, theirs = final_weights(run), final_weights(reference)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    records = read_metrics(run / "metrics.jsonl")
    expected = read_metrics(reference / "metrics.jsonl")
    for event in ("train", "valid"):
        steps = [r["step"] for r in records if r["event"] == event]
        assert steps == [r["step"] for r in expected if r["event"] == event]
        assert len(steps) == len(set(steps))
    assert [r["dev_bleu"] for r in records if r["event"] == "valid"] == \
        [r["dev_bleu"] for r in expected if r["event"] == "valid"]
    assert [r["train_loss"] for r in records if r["event"] == "train"] == \
        [r["train_loss"] for r in expected if r["event"] == "train"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("straight")
    config = tiny_config(tmp_path, training=SCHEDULE)
    result = subprocess.run([sys.executable, "-m", "seq2seq_cli", "train", "--config", str(config)],
                            capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    return tmp_path / "run"


def test_killed_twice_then_resumed(uninterrupted, tmp_path):
    """SIGKILL mid-epoch, resume, SIGKILL again between validations, resume: the same run."""
    config = tiny_config(tmp_path, training=SCHEDULE)
    run = tmp_path / "run"
    run_until_killed(config, run, after_step=3)
    proc = subprocess.Popen([sys.executable, "-m", "seq2seq_cli", "train", "--resume", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = saved_step(run)
    while saved_step(run) < first + 9 and proc.poll() is None:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    resume(run)
    assert_same_run(run, uninterrupted)
    kept = sorted(p.name for p in (run / "checkpoints").glob("step-*.pt"))
    assert kept == [f"step-{s:08d}.pt" for s in (32, 34, 36)]  # keep_last=3


def test_crash_during_a_save_keeps_the_previous_checkpoint(uninterrupted, tmp_path, monkeypatch):
    config = load_config(tiny_config(tmp_path, training=SCHEDULE))
    run = Path(config.run_dir)
    real_save = torch.save
    saves = {"count": 0}

    def dying_save(payload, handle):
        saves["count"] += "format_version" in payload  # checkpoints, not the corpus cache
        if saves["count"] == 6:  # die half-way through writing the sixth checkpoint
            handle.write(b"PK\x03\x04 half a checkpoint")
            raise KeyboardInterrupt
        real_save(payload, handle)

    monkeypatch.setattr(checkpoint_module.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert not list((run / "checkpoints").glob(".*.tmp"))  # no half-written file left behind
    step = saved_step(run)
    assert 0 < step < STEPS
    train(config, resume=True)
    assert_same_run(run, uninterrupted)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigint_and_sigterm_save_and_say_how_to_resume(tmp_path, sig, code):
    config = tiny_config(tmp_path, training={**SCHEDULE, "max_steps": 100000})
    run = tmp_path / "run"
    proc = start(config)
    deadline = time.time() + 120
    while saved_step(run) < 4:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    stderr = stderr.decode()
    assert proc.returncode == code, stderr
    assert f"s2s train --resume {run}" in stderr and "Traceback" not in stderr
    stopped_at = int(stderr.split("stopped at step ")[1].split()[0])
    assert saved_step(run) == stopped_at


def test_resume_refuses_a_different_model(tmp_path):
    config = load_config(tiny_config(tmp_path, training={"max_steps": 2}))
    train(config)
    assert_user_error(s2s_forked("train", "--resume", config.run_dir, "model.hidden_size=64"),
                      "model.hidden_size is 64 but the run was trained with 24")
    assert_user_error(s2s_forked("train", "--resume", tmp_path / "nothing"), "nothing: no run there (no config.yaml)")


def test_a_resumed_run_scores_bleu_as_its_best_was_scored(tmp_path, caplog):
    """best.pt, patience and the schedule compare each validation with the best so far, so a run
    keeps its BLEU tokenizer: a run to Chinese from before s2s chose zh by language (its
    checkpoint says nothing, its BLEU was 13a's) stays on 13a, and an override is refused."""
    config = load_config(tiny_config(tmp_path, training={"max_steps": 2, "validate_every": 2}, data={"tgt_lang": "zh"}))
    train(config)
    run = Path(config.run_dir)
    last = run / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    assert payload["trainer"]["bleu_tokenize"] == "zh"
    del payload["trainer"]["bleu_tokenize"]  # as the earlier versions saved it
    torch.save(payload, last)
    assert run_summary(run)["bleu_tokenize"] == "13a"  # what s2s info says

    refused = s2s_forked("train", "--resume", run, "training.max_steps=4", "training.bleu_tokenize=zh")
    assert_user_error(refused, "its dev BLEU (best")
    assert "measured with sacreBLEU's 13a tokenizer, and zh scores differently" in refused.stderr.decode()

    def resume_to(steps: int, *overrides: str) -> None:
        train(load_config(run / "config.yaml", [f"training.max_steps={steps}", *overrides]), resume=True)

    with caplog.at_level("INFO", logger="seq2seq_cli"):
        resume_to(4)
    assert "dev BLEU stays split by sacreBLEU's 13a tokenizer" in caplog.text
    assert torch.load(last, weights_only=True)["trainer"]["bleu_tokenize"] == "13a"
    assert load_config(run / "config.yaml").training.bleu_tokenize == "13a"
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["event"] == "valid"] == [2, 4]
    # Before its first validation (say, stopped by Ctrl-C) a run has no best to compare with.
    payload = torch.load(last, weights_only=True)
    payload["best_dev_bleu"] = float("-inf")
    torch.save(payload, last)
    resume_to(6, "training.bleu_tokenize=char")
    assert torch.load(last, weights_only=True)["trainer"]["bleu_tokenize"] == "char"


def test_nonfinite_losses_are_skipped_then_stop(tmp_path, monkeypatch):
    real_forward = Seq2Seq.forward
    calls = {"n": 0}

    def sometimes_nan(model, *args, **kwargs):  # the training loss of updates 2, 3 and 9 on
        loss = real_forward(model, *args, **kwargs)
        if not model.training:
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] in (2, 3) or calls["n"] > 8 else loss

    monkeypatch.setattr(Seq2Seq, "forward", sometimes_nan)
    config = load_config(tiny_config(tmp_path, training={"max_steps": 40, "validate_every": 0, "save_every": 4,
                                                         "log_every": 1, "max_nonfinite_steps": 3}))
    with pytest.raises(UserError, match="training diverged: 3 steps in a row"):
        train(config)
    records = read_metrics(Path(config.run_dir) / "metrics.jsonl")
    assert [r["skipped_steps"] for r in records if r["event"] == "train"][:4] == [0, 1, 2, 2]
    last = torch.load(Path(config.run_dir) / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 8  # the last save before the losses went bad for good
    assert all(torch.isfinite(t).all() for t in last["model"].values())


def test_full_disk_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    config = load_config(tiny_config(tmp_path, training={"max_steps": 10, "validate_every": 0, "save_every": 2}))
    real_save = torch.save
    saves = {"count": 0}

    class FullDisk:
        """A file on a disk that fills after 64 KiB: torch.save's own zip writer meets it (and
        reports it as a RuntimeError of its own while closing the archive)."""

        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 65536:
                raise OSError(28, "No space left on device")
            return self.handle.write(data)

        def flush(self):
            self.handle.flush()

    def full_disk(payload, handle):
        saves["count"] += "format_version" in payload
        real_save(payload, FullDisk(handle) if saves["count"] == 3 else handle)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(UserError, match="No space left on device.*previous one is unchanged. Free disk space, then"):
        train(config)
    assert saved_step(Path(config.run_dir)) == 4


def test_any_failed_write_is_one_line_that_says_how_to_go_on(tmp_path, monkeypatch):
    """A full disk meets whichever file is written next: before the first step the start is
    undone, during training the run resumes from its last checkpoint."""
    import errno

    from seq2seq_cli import launch as launch_module, train as train_module

    config = load_config(tiny_config(tmp_path, training={"max_steps": 6, "validate_every": 2}))
    run = Path(config.run_dir)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "tokenizer"))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(run / "tokenizer"))

    with monkeypatch.context() as patch:
        patch.setattr(launch_module, "save_atomically", full_disk)
        with pytest.raises(UserError, match=rf"cannot start the run in {run}: {run / 'tokenizer'}: No space left on "
                                            r"device; free space and run the same command again"):
            train(config)
        patch.setattr(launch_module, "save_atomically", read_only)
        with pytest.raises(UserError, match=r"Read-only file system; fix that and run the same command again") as failed:
            train(config)
        assert "free space" not in str(failed.value)  # freeing space would not help
    assert not run.exists()

    real_plot, plots = train_module.plot_curves, {"count": 0}

    def full_at_the_second_plot(records, path):
        plots["count"] += 1
        if plots["count"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_plot(records, path)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "plot_curves", full_at_the_second_plot)
        with pytest.raises(UserError, match=rf"training stopped at step 4: {run / 'curves.png'}: No space left on device; "
                                            rf"the last checkpoint is intact: free space, then continue with "
                                            rf"s2s train --resume {run}"):
            train(config)
    assert saved_step(run) == 4
    train(load_config(run / "config.yaml"), resume=True)
    assert saved_step(run) == 6


def test_incompatible_checkpoints_say_what_differs(tmp_path):
    config = load_config(tiny_config(tmp_path, training={"max_steps": 1}))
    train(config)
    best = Path(config.run_dir) / "checkpoints" / "best.pt"
    payload = torch.load(best, weights_only=True)
    torch.save({**payload, "format_version": 99, "s2s_version": "9.0"}, best)
    with pytest.raises(UserError, match=r"checkpoint format 99 \(written by s2s 9.0\) but this s2s .* reads format 1"):
        checkpoint_module.load_model(config.run_dir, torch.device("cpu"))
    payload["config"]["model"]["new_knob"] = 3
    torch.save(payload, best)
    with pytest.raises(UserError, match="does not accept: model.new_knob"):
        checkpoint_module.load_model(config.run_dir, torch.device("cpu"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "run" / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": Evil(), "model_args": {}}, path)
    with pytest.raises(UserError, match="not a readable s2s checkpoint"):
        checkpoint_module.load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(UserError, match=r"not a readable s2s checkpoint \(the file is cut short or damaged, 100 "
                                        r"bytes without a zip directory\)"):
        checkpoint_module.load_checkpoint(path)


def test_not_enough_disk_is_caught_before_training(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    free = {"bytes": 1000}
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - free["bytes"], free["bytes"]))
    config_file = tiny_config(tmp_path, training={"max_steps": 2, "validate_every": 0})
    config = load_config(config_file)
    with pytest.raises(UserError, match=r"has 0 MB free but checkpoints of this model need about .* MB more"):
        train(config)
    assert not (Path(config.run_dir) / "checkpoints" / "last.pt").exists()

    # A number is 4 bytes: best.pt holds one per parameter, last.pt three (weights, Adam's moments).
    free["bytes"] = 10**12
    train(config)
    run = Path(config.run_dir)
    number = 4 * sum(t.numel() for t in torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"].values())
    # Resuming replaces best.pt and last.pt: only the temporary copy of last.pt needs new room.
    free["bytes"] = int(3.2 * number)
    train(load_config(run / "config.yaml", ["training.max_steps=3"]), resume=True)
    assert saved_step(run) == 3
    # Each state training.keep_last keeps is one more last.pt.
    free["bytes"] = int(9 * number)
    train(load_config(config_file, [f"run_dir={tmp_path / 'one'}"]))
    with pytest.raises(UserError, match="lower training.keep_last"):
        train(load_config(config_file, [f"run_dir={tmp_path / 'three'}", "training.keep_last=3"]))


def test_run_dir_that_cannot_be_created(tmp_path):
    (tmp_path / "a-file").write_text("x")
    config = load_config(tiny_config(tmp_path), [f"run_dir={tmp_path / 'a-file' / 'run'}"])
    with pytest.raises(UserError, match="cannot create run directory"):
        train(config)
