"""Number formats: what ``auto`` means on each device, and the combinations that are refused."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seq2seq_cli import precision
from seq2seq_cli.config import ModelConfig, load_config
from seq2seq_cli.errors import UserError
from seq2seq_cli.launch import build_trainer
from seq2seq_cli.model import build_model
from seq2seq_cli.precision import autocast, check_decoding_format, for_decoding, resolve

from conftest import assert_user_error, tiny_config


def test_auto_is_bf16_on_cuda_and_fp32_on_the_cpu():
    assert resolve("auto", torch.device("cuda")) == "bf16"
    assert resolve("auto", torch.device("cpu")) == "fp32"
    assert resolve("bf16", torch.device("cpu")) == "bf16"
    assert resolve("fp32", torch.device("cuda")) == "fp32"
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(torch.device("cpu")):
        assert (a @ b).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16


LSTM_UNDER_BF16 = """
import torch
from torch.nn.utils.rnn import pack_padded_sequence
from seq2seq_cli.precision import cpu_computes_bf16
lstm = torch.nn.LSTM(8, 8, batch_first=True, bidirectional=True)
packed = pack_padded_sequence(torch.randn(3, 5, 8), torch.tensor([5, 5, 5]), batch_first=True)
try:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lstm(packed)
    runs = True
except RuntimeError:
    runs = False
print(runs, cpu_computes_bf16())
"""


def lstm_under_bf16(env: dict) -> list[bytes]:
    """Whether PyTorch's LSTM ran under bf16 autocast, and what the check says, in a new process."""
    found = subprocess.run([sys.executable, "-c", LSTM_UNDER_BF16], env=env, capture_output=True, timeout=120)
    assert found.returncode == 0, found.stderr.decode()[-2000:]
    return found.stdout.split()


def test_the_bf16_check_says_whether_the_lstm_runs_under_bf16_autocast():
    """On a CPU without bf16 arithmetic oneDNN's LSTM fails under bf16 autocast when a batch's
    sentences are all as long (it ran otherwise), on one with it runs: the check must know which."""
    runs, says = lstm_under_bf16(dict(os.environ))
    assert runs == says


def test_bf16_on_a_cpu_without_bf16_arithmetic_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: False)
    config = load_config(tiny_config(tmp_path, training={"precision": "bf16", "device": "cpu"}))
    with pytest.raises(UserError, match=r"^training.precision=bf16 needs a CPU with bf16 arithmetic .* use "
                                        r"training.precision=fp32 \(or auto\)"):
        build_trainer(config)
    assert not Path(config.run_dir).exists()  # refused before the run directory was made
    model = build_model(ModelConfig(embed_dim=8, hidden_size=8), 20, 20, 0)
    with pytest.raises(UserError, match=r"^--dtype bf16 needs a CPU with bf16 arithmetic .* use --dtype fp32"):
        for_decoding(model, torch.device("cpu"), "bf16")
    assert for_decoding(model, torch.device("cpu"), "fp32") is model  # fp32 and auto are untouched
    assert check_decoding_format(torch.device("cuda"), "bf16") == "bf16"  # and so is bf16 on a GPU


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN's ISA cap is for x86 CPUs")
def test_a_user_on_a_cpu_without_bf16_gets_one_line_not_a_traceback(tmp_path):
    """oneDNN capped at AVX2, as on the CPUs CI and some users have: the check sees it, and
    ``s2s train training.precision=bf16`` says so in one line before making the run directory
    (it used to die with oneDNN's traceback at the first batch of equally long sources)."""
    avx2 = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert lstm_under_bf16(avx2) == [b"False", b"False"]
    config = tiny_config(tmp_path, training={"precision": "bf16"})
    result = subprocess.run([sys.executable, "-m", "seq2seq_cli", "train", "--config", str(config)], env=avx2,
                            capture_output=True, timeout=300)
    assert_user_error(result, "training.precision=bf16 needs a CPU with bf16 arithmetic")
    assert not (tmp_path / "run").exists()


def test_int8_quantization_is_for_fp32_decoding_on_the_cpu():
    model = build_model(ModelConfig(embed_dim=8, hidden_size=8), 20, 20, 0)
    with pytest.raises(UserError, match="CPU only"):
        for_decoding(model, torch.device("cuda"), quantize="int8")
    with pytest.raises(UserError, match="leave --dtype at fp32"):
        for_decoding(model, torch.device("cpu"), "bf16", "int8")
    quantized = for_decoding(model, torch.device("cpu"), quantize="int8")
    assert quantized is not model and type(model.decoder.output) is torch.nn.Linear  # the original is untouched
    # Each output row has a scale of its own (the rare target tokens keep their precision).
    weight = quantized.decoder.output.weight()
    assert weight.qscheme() == torch.per_channel_affine and weight.q_per_channel_scales().numel() == 20
    # Every linear layer and recurrent cell is int8 but attention's one-column scoring product.
    kept = {name for name, module in quantized.named_modules() if type(module) in (torch.nn.Linear, torch.nn.LSTM,
                                                                                    torch.nn.GRUCell)}
    assert kept == {"decoder.attention.v"}
