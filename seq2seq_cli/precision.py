"""The number formats a model computes in: fp32, bf16 autocast, and int8 weights for decoding.

``precision`` is ``auto``, ``fp32`` or ``bf16``, for training (``training.precision``) and for
decoding (``--dtype``). ``auto`` is bf16 autocast on CUDA, where it is what the tensor cores
are for, and fp32 on the CPU, where the exactness tests and bit-identical resume are defined.
bf16 on the CPU is opt-in: a CPU with AVX512-BF16 or AMX runs bf16 matrix products several
times faster, at the cost of about three significant digits in each product's inputs. On a CPU
without bf16 arithmetic (AVX2 only) it is refused: there it could only be slower.

Under bf16 autocast, matrix products and the recurrent cells' gate products run in bf16;
losses, log-probabilities and softmaxes stay in fp32 (autocast's own op lists, plus the
explicit ``.float()`` before every log-softmax), so search scores keep their precision.

``quantize_int8`` is dynamic quantization for CPU decoding: the weights of the linear layers
and of the LSTM / GRU cells are stored as int8 (per output channel), activations are quantized
on the fly, accumulation is in int32. Embeddings and attention's one-column scoring product
stay fp32.
"""

from __future__ import annotations

import copy
import functools
import warnings
from contextlib import nullcontext

import torch
import torch.nn as nn

from seq2seq_cli.errors import UserError
from seq2seq_cli.model import AdditiveAttention

PRECISIONS = ("auto", "fp32", "bf16")
QUANTIZATIONS = ("none", "int8")


def resolve(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: what ``precision`` means on ``device``."""
    if precision not in PRECISIONS:
        raise UserError(f"--dtype {precision}: unknown number format; use auto, fp32 or bf16")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


@functools.lru_cache(maxsize=None)
def cpu_computes_bf16() -> bool:
    """Whether oneDNN, which runs the LSTM and the bf16 products on the CPU, has bf16 kernels for
    this CPU (on x86: AVX-512 or AMX). Without them PyTorch's LSTM fails under bf16 autocast, and
    run outside oneDNN a bf16 training step took 25x as long as fp32 (benchmarks/README.md)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_cpu_bf16(precision: str, device: torch.device, setting: str) -> str:
    """The resolved ``precision``; a UserError naming ``setting`` (``"--dtype "``,
    ``"training.precision="``) where it is bf16 on a CPU that has no bf16 arithmetic."""
    resolved = resolve(precision, device)
    if resolved == "bf16" and device.type == "cpu" and not cpu_computes_bf16():
        raise UserError(f"{setting}bf16 needs a CPU with bf16 arithmetic (AVX-512 or AMX), which this one "
                        f"lacks; use {setting}fp32 (or auto) here, or bf16 on a GPU")
    return resolved


def autocast(device: torch.device, precision: str = "auto", cache_enabled: bool = True):
    """The context that computes in ``precision`` on ``device``: bf16 autocast or plain fp32."""
    if resolve(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
    return nullcontext()


def check_decoding_format(device: torch.device, precision: str = "auto", quantize: str = "none") -> str:
    """The resolved precision (fp32 or bf16) of decoding with ``precision`` and ``quantize`` on
    ``device``; a UserError for a combination that cannot run. Cheap: check before loading."""
    resolved = resolve(precision, device)
    if quantize not in QUANTIZATIONS:
        raise UserError(f"--quantize {quantize}: unknown; use none or int8")
    if quantize == "int8" and device.type != "cpu":
        raise UserError(f"--quantize int8 decodes on the CPU only (device is {device}); add --device cpu, or use "
                        "--dtype bf16 on a GPU")
    if quantize == "int8" and resolved != "fp32":
        raise UserError("--quantize int8 computes its int8 products with fp32 around them; leave --dtype at fp32 "
                        "(or auto) with it")
    return check_cpu_bf16(precision, device, "--dtype ")


def for_decoding(model: nn.Module, device: torch.device, precision: str = "auto", quantize: str = "none") -> nn.Module:
    """``model`` (a Seq2Seq or an Ensemble) as decoding in ``precision`` with ``quantize`` runs it.

    bf16 on the CPU decodes with a bf16 copy of the weights: autocast would cast every weight
    again at every decoder step, which took a third of the time and made bf16 slower than fp32.
    (The products are the same: autocast rounds the weights to bf16 either way.)"""
    resolved = check_decoding_format(device, precision, quantize)
    if quantize == "int8":
        return quantize_int8(model)
    if device.type == "cpu" and resolved == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16)
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (a Seq2Seq or an Ensemble, for CPU decoding in fp32 only) whose linear
    layers and recurrent cells hold int8 weights."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao's eager quantization is deprecated in favour of torchao, which does not
        # quantize recurrent cells on the CPU; it still works and is what is tested here.
        warnings.simplefilter("ignore")
        # One scale per output row of a linear layer: the output layer's rows (one per target
        # token) differ in range, and a shared scale would cost the rare tokens their precision.
        # The recurrent cells take one scale per matrix, the only kind torch.ao has for them.
        # Attention's ``v`` stays fp32: its product has one output column, so int8 saves nothing
        # there, while quantizing its (B, S, A) input at every step took 3.5x the fp32 product.
        scorers = {id(module.v) for module in model.modules() if isinstance(module, AdditiveAttention)}
        qconfigs = {name: per_channel_dynamic_qconfig if isinstance(module, nn.Linear) else default_dynamic_qconfig
                    for name, module in model.named_modules()
                    if isinstance(module, (nn.LSTM, nn.GRUCell))
                    or (isinstance(module, nn.Linear) and id(module) not in scorers)}
        return quantize_dynamic(model, qconfigs, dtype=torch.qint8, inplace=False)
