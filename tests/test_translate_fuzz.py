"""Property test: whatever bytes arrive, s2s translate answers one line per line and exits 0."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from seq2seq_cli.cli import app
from seq2seq_cli.config import load_config
from seq2seq_cli.launch import train

from conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    config = load_config(tiny_config(tmp_path, training={"max_steps": 2, "validate_every": 0},
                                     data={"max_len": 20}))
    train(config)
    return config.run_dir


text_lines = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300).map(
    lambda line: line.replace("\n", " ").encode("utf-8"))
byte_lines = st.binary(max_size=300).map(lambda line: line.replace(b"\n", b" "))
long_lines = st.integers(min_value=100, max_value=3000).map(lambda n: ("Wort " * n).encode())
lines = st.lists(st.one_of(text_lines, byte_lines, long_lines, st.just(b""), st.just(b"\x00\x00")), max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=lines, beam=st.sampled_from(["1", "3"]))
def test_any_input_gives_one_line_per_line(run_dir, lines, beam):
    stdin = b"".join(line + b"\n" for line in lines)
    result = CliRunner().invoke(app, ["translate", "--checkpoint", run_dir, "--beam-size", beam], input=stdin)
    assert result.exception is None, result.exception
    assert result.exit_code == 0
    out = result.stdout_bytes.decode("utf-8")
    assert out.count("\n") == len(lines)
    for line, translation in zip(lines, out.split("\n")):
        if not line.strip(b" \t\r\x00"):
            assert translation == ""
