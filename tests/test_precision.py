"""Number formats: what ``auto`` means on each device, and the combinations that are refused."""

import pytest
import torch

from seq2seq_cli.config import ModelConfig
from seq2seq_cli.errors import UserError
from seq2seq_cli.model import build_model
from seq2seq_cli.precision import autocast, for_decoding, resolve


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
