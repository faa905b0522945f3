"""Who may write a run directory, and when: one trainer at a time, a failed start leaves
nothing behind, and a finished run is not trained again by accident."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seq2seq_cli.config import load_config
from seq2seq_cli.errors import UserError
from seq2seq_cli.files import FolderLock
from seq2seq_cli.launch import RunAlreadyFinished, train

from conftest import (assert_user_error, assert_user_errors, final_weights, s2s, s2s_forked, saved_step, tiny_config,
                      toy_lines, write_corpus)


def snapshot(run: Path) -> dict:
    """Every file s2s wrote in the run, with its bytes and modification time."""
    return {str(path.relative_to(run)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(run.rglob("*")) if path.is_file() and path.name != FolderLock.FILE_NAME}


def test_a_second_trainer_is_refused_while_the_first_lives(tmp_path):
    config = tiny_config(tmp_path, training={"max_steps": 100000, "save_every": 2, "validate_every": 0})
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "seq2seq_cli", "train", "--config", str(config)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while saved_step(run) < 2:
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.01)
        assert_user_errors(*((("train", *args), f"{run} is in use by process {first.pid} (s2s train)")
                             for args in (("--resume", run), ("--config", config, "--overwrite"))))
        assert (run / "checkpoints" / "last.pt").is_file() and first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # A lock dies with its holder: the killed run resumes at once.
    resumed = s2s("train", "--resume", run, "training.max_steps=4")
    assert resumed.returncode == 0, resumed.stderr.decode()


def test_prepare_is_refused_while_another_holds_the_folder(tmp_path):
    config = tiny_config(tmp_path, data={"prepared_dir": str(tmp_path / "prepared")})
    (tmp_path / "prepared").mkdir()
    with FolderLock(tmp_path / "prepared", "s2s prepare"):
        assert_user_error(s2s_forked("prepare", "--config", config),
                          f"is in use by process {os.getpid()} (s2s prepare)")
    assert s2s("prepare", "--config", config).returncode == 0


def test_overwrite_never_removes_what_the_new_run_reads(tmp_path):
    """A prepared-shards folder used as the run directory: --overwrite would remove the shards'
    tokenizer/ (one of a run's entries) before the run reads it."""
    prepared = tmp_path / "prepared"
    config = tiny_config(tmp_path, data={"prepared_dir": str(prepared)})
    assert s2s("prepare", "--config", config).returncode == 0
    before = snapshot(prepared)
    assert_user_error(s2s_forked("train", "--config", config, f"run_dir={prepared}", "--overwrite"),
                      f"--overwrite would remove {prepared / 'tokenizer'}, which data.prepared_dir ({prepared}) needs")
    assert snapshot(prepared) == before


def test_prepare_never_writes_into_a_run(tmp_path):
    """Shards written into a run directory would replace its tokenizer/, after which its
    checkpoints read other token ids (an error at best, wrong translations at worst)."""
    config = tiny_config(tmp_path, training={"max_steps": 2, "validate_every": 0})
    assert s2s("train", "--config", config).returncode == 0
    run = tmp_path / "run"
    before = snapshot(run)
    assert_user_errors(*(((command, "--config", config, f"data.prepared_dir={run}", "tokenizer.lowercase=true",
                           *extra), f"data.prepared_dir {run} holds a training run")
                         for command, extra in (("prepare", ()), ("train", (f"run_dir={tmp_path / 'other'}",)))))
    assert snapshot(run) == before and not (tmp_path / "other").exists()


def test_files_get_the_modes_the_umask_allows(tmp_path):
    """Written through temporary files, checkpoints and the tokenizer came out private (0600,
    0700) whatever the umask: a server's account or a colleague could not read the run."""
    config = tiny_config(tmp_path, training={"max_steps": 2, "validate_every": 0})
    result = subprocess.run([sys.executable, "-m", "seq2seq_cli", "train", "--config", str(config)],
                            capture_output=True, timeout=300, preexec_fn=lambda: os.umask(0o027))
    assert result.returncode == 0, result.stderr.decode()
    run = tmp_path / "run"
    modes = {str(path.relative_to(run)): path.stat().st_mode & 0o777 for path in run.rglob("*")}
    assert {"checkpoints/best.pt", "checkpoints/last.pt", "config.yaml", "tokenizer/vocab.txt"} <= set(modes)
    assert {name: mode for name, mode in modes.items()
            if mode != (0o750 if (run / name).is_dir() else 0o640)} == {}

    from seq2seq_cli.files import atomic_write_text
    mine = tmp_path / "report.json"
    mine.write_text("old")
    mine.chmod(0o604)
    link = tmp_path / "link.json"
    link.symlink_to(mine)
    atomic_write_text(link, "new")  # through the link: the file it names is replaced, keeping its mode
    assert link.is_symlink() and mine.read_text() == "new" and mine.stat().st_mode & 0o777 == 0o604
    pipe = tmp_path / "pipe"  # as /dev/null or /dev/stdout: written into, never renamed over
    os.mkfifo(pipe)
    reader = subprocess.Popen(["cat", str(pipe)], stdout=subprocess.PIPE)
    atomic_write_text(pipe, "through")
    assert reader.communicate(timeout=60)[0] == b"through" and pipe.is_fifo()


def test_a_failed_atomic_write_names_the_file_asked_for(tmp_path, monkeypatch):
    """An error reaches the user as one line naming a file: the one they asked for, never the
    temporary file it is written through (a read-only folder, a rename that fails)."""
    import errno
    import tempfile

    from seq2seq_cli import files

    target = tmp_path / "out.txt"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".out.txt.x1y2.tmp"))

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", read_only)
        with pytest.raises(OSError) as raised:
            files.atomic_write_text(target, "text")
    assert (raised.value.filename, raised.value.strerror) == (str(target), "Read-only file system")

    def failed_rename(source, destination):
        raise OSError(errno.EIO, "Input/output error", source, destination)

    monkeypatch.setattr(os, "replace", failed_rename)
    with pytest.raises(OSError) as raised:
        files.atomic_write_text(target, "text")
    assert raised.value.filename == str(target) and list(tmp_path.iterdir()) == []


def test_a_failed_start_leaves_nothing_and_the_same_command_then_works(tmp_path):
    config = tiny_config(tmp_path)
    dev_en = tmp_path / "corpus" / "dev.en"
    dev_en.write_text(dev_en.read_text() + "one line too many\n")
    failed = s2s("train", "--config", config)
    assert_user_error(failed, "dev.en has 41 lines but")
    assert not (tmp_path / "run").exists()
    write_corpus(tmp_path / "corpus", "dev", *toy_lines("dev", 40))
    again = s2s("train", "--config", config)
    assert again.returncode == 0, again.stderr.decode()


def test_a_start_that_fails_after_writing_removes_only_what_it_wrote(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    # Every pair is longer than 2 tokens: the tokenizer is trained and saved before this is found.
    config = load_config(tiny_config(tmp_path, data={"max_len": 2}))
    with pytest.raises(UserError, match="no training pairs left"):
        train(config)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert (run / "notes.txt").read_text() == "mine"
    with FolderLock(run, "test"):  # and it is not left locked
        pass


def test_resuming_a_finished_run_changes_nothing_until_a_limit_is_raised(tmp_path):
    schedule = {"max_steps": 6, "validate_every": 3, "save_every": 1}
    config = load_config(tiny_config(tmp_path, training=schedule))
    train(config)
    run = tmp_path / "run"
    before = snapshot(run)
    again = s2s("train", "--resume", run)
    stderr = again.stderr.decode()
    assert again.returncode == 0, stderr
    assert f"{run} finished at step 6 (reached max_steps=6); nothing to do" in stderr
    assert f"s2s train --resume {run} training.max_steps=12" in stderr and "Traceback" not in stderr
    assert snapshot(run) == before
    # Raising the limit continues exactly: the same as a run that had it from the start.
    train(load_config(run / "config.yaml", ["training.max_steps=12"]), resume=True)
    straight = load_config(tiny_config(tmp_path / "straight", training={**schedule, "max_steps": 12}))
    train(straight)
    ours, theirs = final_weights(run), final_weights(Path(straight.run_dir))
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_a_run_stopped_early_is_finished_too(tmp_path, monkeypatch):
    import seq2seq_cli.train as train_module

    monkeypatch.setattr(train_module, "corpus_bleu", lambda hypotheses, references, metric: 5.0)  # never improves
    config = load_config(tiny_config(tmp_path, training={"max_steps": 100, "validate_every": 2, "patience": 2}))
    assert train(config)["step"] == 6
    with pytest.raises(RunAlreadyFinished, match=r"finished at step 6 \(dev BLEU did not improve for 2 "
                                                 r"validations\).*training.patience=4"):
        train(config, resume=True)
    config.training.patience = 3
    assert train(config, resume=True)["step"] == 8
