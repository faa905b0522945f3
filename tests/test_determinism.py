"""Same seed, same run: across separate processes, at the sizes users run.

Each run here starts its own Python process with its own corpus cache, so nothing (a
tokenizer trained once, a cached corpus, a warm allocator) is shared between the runs compared.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seq2seq_cli.metrics import read_metrics

from conftest import ROOT, TOY, final_weights, multi30k, needs_cpu_bf16, saved_step

TRAIN_VOCABULARY = """
import sys
from seq2seq_cli.data import read_lines
from seq2seq_cli.tokenization import Tokenizers, train_wordpiece
src, tgt, size, out = sys.argv[1:]
tokenizer = train_wordpiece(read_lines(src) + read_lines(tgt), int(size))
Tokenizers(tokenizer, tokenizer).save(out)
"""


def tokenizer_files(folder: Path) -> tuple[bytes, bytes]:
    return (folder / "vocab.txt").read_bytes(), (folder / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("corpus, size", [((TOY / "train.en", TOY / "train.de"), 1000),
                                          ((multi30k("train.en"), multi30k("train.de")), 8000)],
                         ids=["toy-1000", "multi30k-8000"])
def test_vocabulary_training_is_the_same_in_every_process(tmp_path, corpus, size):
    if not corpus[1].is_file():
        corpus, size = (TOY / "train.en", TOY / "train.de"), 8000  # no Multi30k here: the toy corpus's largest
    # Three processes at once (on two cores: a busy machine).
    outs = [tmp_path / f"tokenizer-{number}" for number in range(3)]
    procs = [subprocess.Popen([sys.executable, "-c", TRAIN_VOCABULARY, *corpus, str(size), out]) for out in outs]
    assert [proc.wait(timeout=300) for proc in procs] == [0, 0, 0]
    outputs = [tokenizer_files(out) for out in outs]
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(outputs[0][0].splitlines()) >= 1000


def toy_run(run: Path, *overrides: str) -> subprocess.Popen:
    """``s2s train --config configs/toy.yaml`` in a process of its own, with a cache of its own."""
    env = {**os.environ, "XDG_CACHE_HOME": str(run.parent / f"{run.name}-cache")}
    return subprocess.Popen([sys.executable, "-m", "seq2seq_cli", "train", "--config", "configs/toy.yaml",
                             "--run-dir", str(run), "training.max_minutes=0", "training.num_threads=2", *overrides],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> None:
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr.decode()


def assert_same_run(run: Path, reference: Path) -> None:
    assert tokenizer_files(run / "tokenizer") == tokenizer_files(reference / "tokenizer")
    ours, theirs = final_weights(run), final_weights(reference)
    assert ours.keys() == theirs.keys()
    different = [key for key in theirs if not torch.equal(ours[key], theirs[key])]
    if different:  # say where the runs parted, for whoever has to find out why
        logged = [{r["step"]: r["train_loss"] for r in read_metrics(path / "metrics.jsonl") if r["event"] == "train"}
                  for path in (run, reference)]
        parted = [(step, loss, logged[1].get(step)) for step, loss in sorted(logged[0].items())
                  if loss != logged[1].get(step)]
        resumed_at = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["event"] == "resume"]
        raise AssertionError(f"{len(different)} of {len(theirs)} tensors differ: {different[:3]}; logged train "
                             f"losses (step, run, reference) first differ at {parted[:2]}; resumed at {resumed_at}")
    for event, field in (("train", "train_loss"), ("valid", "dev_loss"), ("valid", "dev_bleu")):
        assert [(r["step"], r[field]) for r in read_metrics(run / "metrics.jsonl") if r["event"] == event] == \
            [(r["step"], r[field]) for r in read_metrics(reference / "metrics.jsonl") if r["event"] == event]


# 30 steps at the toy config's real model size; dev validations at 20 and 30; no test set, which
# only adds decoding time after the last checkpoint.
SCHEDULE = ("training.max_steps=30", "training.save_every=10", "training.validate_every=20", "training.log_every=5",
            "data.test_src=null", "data.test_tgt=null")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """A toy run of SCHEDULE never interrupted, in a process of its own."""
    run = tmp_path_factory.mktemp("toy") / "straight"
    finish(toy_run(run, *SCHEDULE))
    return run


def test_toy_run_killed_and_resumed_equals_one_never_interrupted(tmp_path, straight_run):
    """Each side trains its own tokenizer in its own process, at the toy config's real size.

    Three processes (uninterrupted; killed after step 10; resumed) must agree bit for bit,
    which also proves that two runs of the same config in separate processes are identical.
    (One after the other: two trainings of 2 threads each on 2 cores take 5 times as long.)"""
    run = tmp_path / "killed"
    proc = toy_run(run, *SCHEDULE)
    deadline = time.time() + 300
    while saved_step(run) < 10:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert saved_step(run) < 30, "the run finished before it could be killed"
    resumed = subprocess.run([sys.executable, "-m", "seq2seq_cli", "train", "--resume", str(run)],
                             cwd=ROOT, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "resume-cache")},
                             capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert_same_run(run, straight_run)
    records = read_metrics(straight_run / "metrics.jsonl")
    assert len([r for r in records if r["event"] == "train"]) == 6
    assert [r["step"] for r in records if r["event"] == "valid"] == [20, 30]


@needs_cpu_bf16
def test_bf16_cpu_training_is_the_same_in_every_process(tmp_path):
    """``training.precision=bf16`` on the CPU (bf16 autocast) is as reproducible as fp32: two
    processes at once, one thread each (a busy machine), the toy config's real model size."""
    runs = [tmp_path / f"bf16-{number}" for number in range(2)]
    procs = [toy_run(run, "training.precision=bf16", "training.num_threads=1", "training.max_steps=8",
                     "training.validate_every=0", "training.log_every=4", "data.test_src=null", "data.test_tgt=null")
             for run in runs]
    for proc in procs:
        finish(proc)
    assert_same_run(runs[1], runs[0])
    start = next(r for r in read_metrics(runs[0] / "metrics.jsonl") if r["event"] == "start")
    assert start["precision"] == "bf16"
    assert [r["step"] for r in read_metrics(runs[0] / "metrics.jsonl") if r["event"] == "valid"] == [8]


SCORES = """
import json, sys
from seq2seq_cli import Translator
lines = open(sys.argv[2], encoding="utf-8").read().splitlines()
for beam in (1, 5):
    nbest = Translator.load(sys.argv[1], "cpu", beam_size=beam).translate_nbest(lines, min(beam, 2))
    print(json.dumps([[(t.text, t.score) for t in hypotheses] for hypotheses in nbest]))
"""


def test_translations_do_not_depend_on_the_thread_count(tmp_path, straight_run):
    """The same run and input give the same translations and scores, to the last bit, with 1 or 2
    threads: `s2s translate`'s bytes and the Python API's float scores, each thread count in a
    process of its own, at the toy config's real size (where a matrix product split across two
    threads rounds differently from one computed on one)."""
    run = straight_run

    source = tmp_path / "test.en"  # two batches of 128, decoded side by side with 2 threads
    source.write_bytes(b"".join((TOY / "test.en").read_bytes().splitlines(keepends=True)[:256]))

    def in_process(threads: int, *args: str) -> bytes:
        result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, timeout=600,
                                env={**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout

    cli = ("-m", "seq2seq_cli", "translate", "--checkpoint", str(run), "--input", str(source),
           "--beam-size", "5", "--nbest", "2")
    assert in_process(1, *cli) == in_process(2, *cli)
    api = ("-c", SCORES, str(run), str(source))
    one_thread, two_threads = (in_process(threads, *api).splitlines() for threads in (1, 2))
    assert len(one_thread) == 2 and len(json.loads(one_thread[1])) == 256  # greedy, then beam 5
    assert one_thread == two_threads  # JSON writes each float's every digit
