"""Shared helpers: small corpora and configs in temporary folders, tiny models, the CLI in a process."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from pathlib import Path

import pytest
import torch
import yaml

from seq2seq_cli.config import ModelConfig
from seq2seq_cli.data import pad_sources
from seq2seq_cli.decoding import SpecialIds
from seq2seq_cli.model import build_model
from seq2seq_cli.precision import cpu_computes_bf16

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "data" / "toy"
MULTI30K = Path(os.environ.get("S2S_MULTI30K", ROOT.parent / "shared" / "data" / "multi30k"))


# bf16 on the CPU runs where the CPU has bf16 arithmetic; elsewhere it is refused (tested there).
needs_cpu_bf16 = pytest.mark.skipif(not cpu_computes_bf16(), reason="this CPU has no bf16 arithmetic (AVX-512 or "
                                    "AMX), where bf16 is refused")


def multi30k(name: str) -> Path:
    """A Multi30k file (``train.de``) in MULTI30K, unpacked or gzipped as published (the
    unpacked path when neither is there)."""
    plain, packed = MULTI30K / name, MULTI30K / f"{name}.gz"
    return packed if packed.is_file() and not plain.is_file() else plain


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own corpus cache, so tests never see each other's files."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def write_corpus(folder: Path, name: str, src_lines, tgt_lines, src="en", tgt="de") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    src_path, tgt_path = folder / f"{name}.{src}", folder / f"{name}.{tgt}"
    src_path.write_text("".join(line + "\n" for line in src_lines), encoding="utf-8")
    tgt_path.write_text("".join(line + "\n" for line in tgt_lines), encoding="utf-8")
    return src_path, tgt_path


def toy_lines(split: str, limit: int | None = None) -> tuple[list[str], list[str]]:
    en = (TOY / f"{split}.en").read_text(encoding="utf-8").splitlines()[:limit]
    de = (TOY / f"{split}.de").read_text(encoding="utf-8").splitlines()[:limit]
    return en, de


def tiny_config(tmp_path: Path, train_pairs: int = 400, dev_pairs: int = 40, **sections) -> Path:
    """A config for a very small model on a slice of the toy corpus; ``sections`` update it.

    The slice is written to ``tmp_path / "corpus"`` whatever ``sections`` say (some tests point
    ``data`` at those files under other names): a corpus of the caller's own goes elsewhere."""
    data_dir = tmp_path / "corpus"
    train_src, train_tgt = write_corpus(data_dir, "train", *toy_lines("train", train_pairs))
    dev_src, dev_tgt = write_corpus(data_dir, "dev", *toy_lines("dev", dev_pairs))
    config = {
        "run_dir": str(tmp_path / "run"),
        "data": {"train_src": str(train_src), "train_tgt": str(train_tgt),
                 "dev_src": str(dev_src), "dev_tgt": str(dev_tgt)},
        "tokenizer": {"vocab_size": 300},
        "model": {"embed_dim": 16, "hidden_size": 24, "dropout": 0.1},
        "training": {"max_steps": 6, "max_epochs": 0, "batch_tokens": 400, "validate_every": 3,
                     "log_every": 2, "device": "cpu"},
        "decoding": {"max_length_offset": 5},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


# The vocabulary and model of toy_learning_config: what a fine-tuning child of its run must keep.
TOY_LEARNING_SIZES = {"tokenizer": {"vocab_size": 600}, "model": {"embed_dim": 64, "hidden_size": 128, "dropout": 0.1}}


def toy_learning_config(tmp_path: Path, device: str = "cpu", **sections) -> Path:
    """The short run on the toy corpus that must clear 50 dev BLEU (the quality floor)."""
    return tiny_config(
        tmp_path, train_pairs=20000, dev_pairs=200, **TOY_LEARNING_SIZES,
        training={"max_steps": 160, "batch_tokens": 2500, "learning_rate": 0.003, "validate_every": 160,
                  "log_every": 50, "device": device}, **sections)


ANIMALS = re.compile(r"\b(dogs?|cats?|horses?|birds?)\b")


def toy_domain(split: str, animals: bool) -> tuple[list[str], list[str]]:
    """The toy corpus's pairs with animals in them, or those without: two domains, the second
    with words and noun forms the first never has."""
    pairs = [(en, de) for en, de in zip(*toy_lines(split)) if bool(ANIMALS.search(en)) == animals]
    return [en for en, _ in pairs], [de for _, de in pairs]


def toy_domain_files(folder: Path, animals: bool) -> dict[str, str]:
    """``data`` keys of the train and dev pairs of ``toy_domain``, written to ``folder``."""
    files = {}
    for split in ("train", "dev"):
        files[f"{split}_src"], files[f"{split}_tgt"] = map(str, write_corpus(folder, split,
                                                                            *toy_domain(split, animals)))
    return files


@pytest.fixture(scope="session")
def learned_toy_run(tmp_path_factory) -> Path:
    """The run of ``toy_learning_config`` on the pairs without animals, trained once a session:
    the learning test reads it, fine-tuning starts from it. Nothing may write into it."""
    from seq2seq_cli.config import load_config
    from seq2seq_cli.launch import train

    folder = tmp_path_factory.mktemp("learned")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(folder / "cache"))
        train(load_config(toy_learning_config(folder, data=toy_domain_files(folder / "no-animals", animals=False))))
    return folder / "run"


def saved_step(run: Path) -> int:
    """The step of the run's ``last.pt`` (0 while there is none, or while it is being replaced)."""
    try:
        return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


def final_weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def s2s(*args, stdin: str = "", cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seq2seq_cli", *map(str, args)], input=stdin.encode(),
                          capture_output=True, cwd=cwd, timeout=300)


# A process that has imported what the commands import, and forks a child for each command it
# is sent: the child runs ``python -m seq2seq_cli ARGS`` as a new process would (its own argv,
# environment, folder, stdin, stdout and stderr; exit status as the interpreter sets it) without
# spending two seconds importing PyTorch (and one more for the optimizer's torch._dynamo). For
# what one command does (errors, output, files written); a test of what may differ between
# processes (hash seeds, threads, a pipe on stdin: here stdin is a file) needs ``s2s``.
_FORK_SERVER = r"""
import json, os, runpy, signal, sys, traceback
import torch._dynamo, seq2seq_cli.cli, seq2seq_cli.launch, seq2seq_cli.translation, seq2seq_cli.evaluation
import seq2seq_cli.metrics, seq2seq_cli.checkpoint
requests, answers = os.fdopen(int(sys.argv[1]), "r"), os.fdopen(int(sys.argv[2]), "w")
for line in requests:
    request = json.loads(line)
    child = os.fork()
    if child == 0:
        signal.alarm(300)  # as s2s's timeout: a command that hangs is killed, not waited for forever
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        for fd, (path, flags) in enumerate([(request["stdin"], os.O_RDONLY), (request["stdout"], os.O_WRONLY),
                                            (request["stderr"], os.O_WRONLY)]):
            os.dup2(os.open(path, flags), fd)
        sys.argv = ["-m", *request["args"]]
        try:
            runpy.run_module("seq2seq_cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    answers.write(f"{os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])}\n")
    answers.flush()
"""
_fork_server: dict = {}


@pytest.fixture(scope="session", autouse=True)
def _stop_fork_server():
    yield
    if "process" in _fork_server:
        _fork_server["requests"].close()  # the server's loop ends, and so does the server
        _fork_server["process"].wait(timeout=60)


def s2s_forked(*args, stdin: str = "") -> subprocess.CompletedProcess:
    """``s2s(*args)`` run by a child of the fork server (one command at a time)."""
    if "process" not in _fork_server:
        requests_read, requests_write = os.pipe()
        answers_read, answers_write = os.pipe()
        _fork_server["process"] = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER, str(requests_read), str(answers_write)],
            pass_fds=(requests_read, answers_write))
        os.close(requests_read)
        os.close(answers_write)
        _fork_server["requests"] = os.fdopen(requests_write, "w")
        _fork_server["answers"] = os.fdopen(answers_read, "r")
        _fork_server["lock"] = threading.Lock()
    with tempfile.TemporaryDirectory() as folder, _fork_server["lock"]:
        streams = {name: os.path.join(folder, name) for name in ("stdin", "stdout", "stderr")}
        Path(streams["stdin"]).write_text(stdin)
        Path(streams["stdout"]).touch()
        Path(streams["stderr"]).touch()
        request = {"args": [str(a) for a in args], "env": dict(os.environ), "cwd": os.getcwd(), **streams}
        _fork_server["requests"].write(json.dumps(request) + "\n")
        _fork_server["requests"].flush()
        code = int(_fork_server["answers"].readline())
        return subprocess.CompletedProcess(["s2s", *args], code, Path(streams["stdout"]).read_bytes(),
                                           Path(streams["stderr"]).read_bytes())


def assert_user_errors(*cases: tuple[tuple, str]) -> None:
    """Each ``(s2s arguments, expected fragment)`` in a process of its own, forked from one that
    has already imported PyTorch (~2 s a process otherwise)."""
    for args, fragment in cases:
        assert_user_error(s2s_forked(*args, stdin="x\n"), fragment)


def assert_user_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    """Exit 2, nothing on stdout, and the error one line, the last (log lines may come before)."""
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    last = stderr.rstrip("\n").rsplit("\n", 1)[-1]
    assert last.startswith("s2s: error: ") and fragment in last, stderr
    assert result.stdout == b""


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    assert zlib.crc32(data[12:16 + length]) == struct.unpack(">I", data[16 + length: 20 + length])[0]
    return struct.unpack(">II", data[16:24])


# Tiny random models, where search results can be checked exactly.

IDS = SpecialIds(pad=0, bos=2, eos=3)
VOCAB = 6  # [PAD] [UNK] [CLS] [SEP] a b: three tokens to choose from, plus [SEP]


def spelled(tokens) -> str:
    """A text for tiny models' tokens where texts have several spellings, as in WordPiece
    ("weißen", "weiße ##n"): [UNK] (1) reads "ab", the same as "a b" (4 5), and in a larger
    vocabulary every even token reads "a", every odd one "b"."""
    return "".join("ab" if t == 1 else "ab"[t % 2] for t in tokens)


SPELLED_IDS = dataclasses.replace(IDS, text=spelled)


def tiny_model(seed: int, vocab: int = VOCAB, sharpness: float = 1.0, hidden: int = 8):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(embed_dim=8, hidden_size=hidden, dropout=0.0), vocab, vocab, IDS.pad).eval()
    with torch.no_grad():
        model.decoder.output.weight.mul_(sharpness)
        model.decoder.output.bias.mul_(sharpness)
    return model


def make_batch(sources):
    src_ids, src_lengths = pad_sources(sources, IDS.pad, IDS.eos)
    return src_ids, src_lengths, torch.full((len(sources),), 7)


SOURCES = [[4, 5, 1, 4], [5], [1, 1, 4, 5, 5, 4, 1], [4, 4], [5, 1, 5]]


def ensemble_log_probs(models, weights, source, sequences):
    """log sum_m w_m P_m(seq [SEP] | source) of each sequence, position by position,
    teacher-forced (no search), all sequences in one batch per model."""
    width = max(map(len, sequences)) + 1
    tgt_in = torch.full((len(sequences), width), IDS.pad)
    for row, seq in enumerate(sequences):
        tgt_in[row, : len(seq) + 1] = torch.tensor([IDS.bos, *seq])
    src_ids, src_lengths = pad_sources([source] * len(sequences), IDS.pad, IDS.eos)
    probs = 0.0
    for model, weight in zip(models, weights):
        with torch.no_grad():
            logits = model(src_ids, src_lengths, tgt_in).double()
        logits[..., [IDS.pad, IDS.bos]] = float("-inf")
        probs = probs + weight / sum(weights) * torch.softmax(logits, dim=-1)
    return [sum(float(torch.log(probs[row, i, token])) for i, token in enumerate([*seq, IDS.eos]))
            for row, seq in enumerate(sequences)]
