"""s2s translate as a filter, interactively, with n-best lists and attention pictures."""

import os
import select
import struct
import subprocess
import sys
import zlib

import pytest

from conftest import tiny_config
from test_cli import assert_user_error, s2s


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("translate")
    config = tiny_config(tmp_path, training={"max_steps": 30, "validate_every": 0},
                         data={"max_len": 30}, decoding={"max_length_offset": 4})
    result = s2s("train", "--config", config, "--run-dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr.decode()
    return tmp_path / "run"


def test_bad_input_never_breaks_the_stream(run_dir):
    long_line = " ".join(["the big red dog"] * 50)
    lines = [b"The man sees the dog.", b"", b"bad \xff\xfe bytes here", b"tab\tand\x00nul and \x1b[31m escape",
             long_line.encode(), "emoji \U0001F600 and \u200b zero width \u202e rtl".encode(), b"\r", b"   "]
    result = s2s("translate", "--checkpoint", run_dir, stdin="")  # empty input: empty output
    assert result.returncode == 0 and result.stdout == b""
    proc = subprocess.run([sys.executable, "-m", "seq2seq_cli", "translate", "--checkpoint", str(run_dir)],
                          input=b"\n".join(lines) + b"\n", capture_output=True, timeout=120)
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    out = proc.stdout.decode("utf-8").split("\n")
    assert len(out) == len(lines) + 1 and out[-1] == ""
    assert out[1] == "" and out[6] == "" and out[7] == ""
    assert "Traceback" not in stderr
    assert "line 3: invalid UTF-8" in stderr
    assert stderr.count("truncated to the model's limit of 30") == 1


def test_nbest_output(run_dir):
    result = s2s("translate", "--checkpoint", run_dir, "--beam-size", "4", "--nbest", "3",
                 stdin="The man sees the dog.\n\nA cat.\n")
    assert result.returncode == 0, result.stderr.decode()
    rows = [line.split(" ||| ") for line in result.stdout.decode().splitlines()]
    assert [int(r[0]) for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for index in (0, 2):
        scores = [float(r[2]) for r in rows if int(r[0]) == index]
        assert scores == sorted(scores, reverse=True)
    # The first of an n-best list is the 1-best translation with the same beam.
    best = s2s("translate", "--checkpoint", run_dir, "--beam-size", "4", stdin="The man sees the dog.\n")
    assert best.stdout.decode().strip() == rows[0][1]
    assert_user_error(s2s("translate", "--checkpoint", run_dir, "--nbest", "3", stdin="x\n"), "--beam-size")


def test_beam_of_one_matches_greedy_output(run_dir, tmp_path):
    text = "The man sees the dog.\nA woman reads a red book today.\nI think that the cat likes the boy.\n"
    greedy = s2s("translate", "--checkpoint", run_dir, stdin=text)
    beam_one = s2s("translate", "--checkpoint", run_dir, "--beam-size", "1", stdin=text)
    assert greedy.returncode == 0 and greedy.stdout == beam_one.stdout


def test_interactive_lines_are_answered_at_once(run_dir):
    proc = subprocess.Popen([sys.executable, "-m", "seq2seq_cli", "translate", "--checkpoint", str(run_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        for sentence in (b"The man sees the dog.\n", b"A cat.\n"):
            proc.stdin.write(sentence)
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 60)  # stdin stays open
            assert ready, "no answer while input is still open"
            assert os.read(proc.stdout.fileno(), 4096).endswith(b"\n")
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    assert zlib.crc32(data[12:16 + length]) == struct.unpack(">I", data[16 + length: 20 + length])[0]
    return struct.unpack(">II", data[16:24])


def test_attention_pictures(run_dir, tmp_path):
    from seq2seq_cli.plotting import attention_figure_size
    from seq2seq_cli.tokenization import Vocabularies

    sentences = ["The man sees the dog.", "", "A woman reads a red book today and the boy paints it."]
    result = s2s("translate", "--checkpoint", run_dir, "--plot-attention", tmp_path / "att",
                 stdin="\n".join(sentences) + "\n")
    assert result.returncode == 0, result.stderr.decode()
    translations = result.stdout.decode().splitlines()
    assert sorted(p.name for p in (tmp_path / "att").iterdir()) == ["00000.png", "00002.png"]
    vocabs = Vocabularies.load(run_dir / "tokenizer")
    for index in (0, 2):
        source_pieces = min(len(vocabs.encode_src([sentences[index]])[0]), 30) + 1  # truncated at data.max_len
        target_pieces = len(vocabs.encode_tgt([translations[index]])[0]) + 1
        assert png_size(tmp_path / "att" / f"{index:05d}.png") == attention_figure_size(source_pieces, target_pieces)
