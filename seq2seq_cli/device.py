"""Where the model runs: device selection from config (``precision`` says in what number format)."""

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

