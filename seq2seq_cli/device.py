"""Where the model runs: device selection from config (``precision`` says in what number format),
and the CPU math library set up so that the same computation gives the same bits in every process."""

from __future__ import annotations

import torch

from seq2seq_cli.errors import UserError


def select_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {name} requested but PyTorch sees no CUDA device; use cpu or auto")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    if name != "cpu":
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device(name)


# PyTorch computes tanh, exp, log and other elementwise functions of float tensors on the CPU
# with Intel MKL's vector math, called from each thread of a parallel region. MKL sets a
# function up on its first call; when two threads make that first call at once, one of them
# can compute it along another code path, which differs in the last bits. A training
# process's first LSTM step is such a call: 2 processes in 100 computed their first parallel
# tanh differently from their second (benchmarks/README.md, "Determinism across processes"),
# which made about 1 training process in 30 differ from the others in every weight's last bits.
# One small call of each function, on this thread, before any parallel region, sets them up.
_VECTOR_MATH = ("tanh", "exp", "log", "log10", "log2", "log1p", "expm1", "sqrt", "rsqrt", "sin", "cos", "tan",
                "asin", "acos", "atan", "sinh", "cosh", "erf", "erfc", "erfinv", "lgamma", "sigmoid", "reciprocal")


def _set_up_vector_math() -> None:
    for dtype in (torch.float32, torch.float64):
        values = torch.linspace(0.1, 0.9, 16, dtype=dtype)  # 16 values: one thread does the call
        for name in _VECTOR_MATH:
            getattr(torch, name)(values)
        values.bernoulli_(0.5, generator=torch.Generator())  # dropout's MKL generator; not the global RNG


_set_up_vector_math()
