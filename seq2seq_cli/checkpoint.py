"""Checkpoints: written atomically, read without ever running code from the file.

A checkpoint is a plain dict of tensors, numbers and strings saved with ``torch.save`` and
read with ``torch.load(weights_only=True)``. It carries the resolved config and the model's
structural sizes, so a checkpoint plus its run directory's tokenizer rebuild the model.
"""

from __future__ import annotations

import pickle
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seq2seq_cli import __version__
from seq2seq_cli.config import Config, config_from_dict, to_dict, to_yaml
from seq2seq_cli.errors import UserError
from seq2seq_cli.files import atomic_torch_save, out_of_space, save_atomically
from seq2seq_cli.model import Seq2Seq
from seq2seq_cli.rundir import RunDir
from seq2seq_cli.tokenization import Tokenizers

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any],
                    then: str = "continue with s2s train --resume") -> None:
    """Save atomically; a failed write (a full disk) is a clear error (ending "free disk space,
    then ``then``") and leaves the previous checkpoint as it was."""
    payload = {"format_version": FORMAT_VERSION, "s2s_version": __version__, **payload}
    try:
        atomic_torch_save(path, payload)
    except OSError as err:
        fix = "Free disk space" if out_of_space(err) else "Fix that"
        raise UserError(f"cannot write checkpoint {path} ({err.strerror or err}); the previous one is "
                        f"unchanged. {fix}, then {then}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        with open(path, "rb") as handle:
            is_zip = handle.read(4) == b"PK\x03\x04"
    except OSError as err:
        raise UserError(f"cannot read checkpoint {path} ({err.strerror})") from None
    if not is_zip:  # every checkpoint s2s writes is a PyTorch zip archive
        raise UserError(f"{path}: not a readable s2s checkpoint (not a PyTorch checkpoint file at all); give a "
                        "run directory or a checkpoints/*.pt file written by s2s train")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: not a readable s2s checkpoint (it holds Python objects other than tensors "
                        "and numbers, which s2s never loads: loading them could run code)") from None
    except (zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as err:
        if not zipfile.is_zipfile(path):  # a zip's directory is at its end: a copy cut short loses it
            reason = f"the file is cut short or damaged, {path.stat().st_size:,} bytes without a zip directory"
        else:
            reason = (str(err).splitlines()[0] if str(err) else type(err).__name__)[:200]
        raise UserError(f"{path}: not a readable s2s checkpoint ({reason})") from None
    if not isinstance(payload, dict) or "model" not in payload or "model_args" not in payload:
        raise UserError(f"{path}: not an s2s checkpoint (no model weights or sizes in it)")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {version} (written by s2s {payload.get('s2s_version', '?')}) "
                        f"but this s2s {__version__} reads format {FORMAT_VERSION}")
    return payload


def checkpoint_config(payload: dict[str, Any], path: Path) -> Config:
    """The config stored in a checkpoint, or an error that says how it does not fit this s2s."""
    try:
        return config_from_dict(payload["config"], source=str(path))
    except UserError as err:
        raise UserError(f"{path} was written by s2s {payload.get('s2s_version', '?')} with a config this "
                        f"s2s {__version__} does not accept: {str(err).split(': ', 1)[-1]}") from None


@dataclass
class _Opened:
    """A checkpoint read with its config and its run's tokenizers, each checked against it."""

    file: Path  # the checkpoint file a run directory or file name led to
    run: RunDir
    payload: dict[str, Any]
    config: Config
    tokenizers: Tokenizers


def _open(path: str | Path) -> _Opened:
    checkpoint_file, run = RunDir.resolve_checkpoint(path)
    payload = load_checkpoint(checkpoint_file)
    config = checkpoint_config(payload, checkpoint_file)
    tokenizer_dir = run.tokenizer
    if not tokenizer_dir.is_dir():
        raise UserError(f"{tokenizer_dir}: tokenizer folder missing; a run directory needs it to translate")
    tokenizers = Tokenizers.load(tokenizer_dir)
    if (tokenizers.src_size, tokenizers.tgt_size) != (payload["model_args"]["src_vocab_size"],
                                                      payload["model_args"]["tgt_vocab_size"]):
        raise UserError(f"{tokenizer_dir}: vocabulary sizes do not match {checkpoint_file}")
    return _Opened(checkpoint_file, run, payload, config, tokenizers)


def load_model(path: str | Path, device: torch.device) -> tuple[Seq2Seq, Tokenizers, Config]:
    """Everything needed to translate: the model (in eval mode), its tokenizers and its config."""
    opened = _open(path)
    model = Seq2Seq(opened.config.model, **opened.payload["model_args"])
    try:
        model.load_state_dict(opened.payload["model"])  # weights stored in half precision become fp32 here
    except RuntimeError as err:
        raise UserError(f"{opened.file}: weights do not fit the model in its config "
                        f"({str(err).splitlines()[0]})") from None
    return model.to(device).eval(), opened.tokenizers, opened.config


def parameter_count(weights: dict[str, torch.Tensor]) -> int:
    """The model's parameters, a tied weight (one tensor under two names) counted once."""
    return sum(tensor.numel() for tensor in {_place(t): t for t in weights.values()}.values())


def _place(tensor: torch.Tensor) -> tuple:
    """Where a tensor's numbers are: the same for the two names of a tied weight."""
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride()


def _halved(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point weights in fp16, a tied weight still one tensor (stored once)."""
    halves: dict[tuple, torch.Tensor] = {}
    for tensor in weights.values():
        if _place(tensor) not in halves:
            halves[_place(tensor)] = tensor.half() if tensor.is_floating_point() else tensor
    return {name: halves[_place(tensor)] for name, tensor in weights.items()}


def export_model(path: str | Path, output: str | Path, fp16: bool = False) -> tuple[Path, Path]:
    """A model folder to share or serve, from a run directory (its best checkpoint) or a
    checkpoint file: ``config.yaml``, ``tokenizer/``, ``checkpoints/best.pt`` holding only the
    weights (no optimizer or training state) and the run's ``metrics.jsonl`` (how it was
    trained, for ``s2s info``). Every command that takes a run directory takes it.
    ``fp16``: the weights stored in half precision, half the size (read back into fp32, which
    changes a translation now and then). ``output`` must be new or empty; it is written
    complete or not at all. Returns the folder and the checkpoint exported."""
    opened = _open(path)
    config = opened.config
    target = RunDir(output)
    if target.root.exists() and (not target.root.is_dir() or any(target.root.iterdir())):
        raise UserError(f"--output {target.root}: already exists and is not an empty folder; export to a new folder")
    weights = opened.payload["model"]
    if fp16:
        largest = max((t.abs().max().item() for t in weights.values() if t.is_floating_point() and t.numel()),
                      default=0.0)
        if largest > torch.finfo(torch.float16).max:
            raise UserError(f"{opened.file}: a weight of {largest:g} does not fit in fp16; export without --fp16")
        weights = _halved(weights)
    headline = {key: value for key, value in opened.payload.items()
                if key not in ("format_version", "s2s_version", "model", "trainer", "config")}
    config.run_dir = str(target.root)

    def write(folder: Path) -> None:
        exported = RunDir(folder)
        opened.tokenizers.save(exported.tokenizer)
        exported.config.write_text(to_yaml(config), encoding="utf-8")
        if opened.run.metrics.is_file():
            shutil.copyfile(opened.run.metrics, exported.metrics)
        exported.checkpoints.mkdir()
        save_checkpoint(exported.best, {**headline, "config": to_dict(config), "model": weights,
                                        "exported_from": str(opened.file.resolve()),
                                        "weights_dtype": "float16" if fp16 else "float32"},
                        then="export again")

    try:
        target.root.parent.mkdir(parents=True, exist_ok=True)
        save_atomically(target.root, write)
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        raise UserError(f"--output {target.root}: cannot write it ({where}{err.strerror or err}); nothing was "
                        "written, choose a folder you may write to (with free space)") from None
    return target.root, opened.file


def average_checkpoints(run_dir: str | Path, last: int, output: str | Path | None = None) -> Path:
    """Average the weights of the run's ``last`` newest step checkpoints into one checkpoint.

    Returns the path written (default ``checkpoints/averaged.pt``), which ``translate`` and
    ``evaluate`` take like any other checkpoint."""
    run = RunDir(run_dir)
    folder = run.checkpoints
    snapshots = run.step_checkpoints()
    if last < 2:
        raise UserError(f"--last must be at least 2 to average, got {last}")
    if len(snapshots) < last:
        raise UserError(f"{folder} has {len(snapshots)} step checkpoints but --last {last} asks for more; "
                        f"train with training.keep_last={last} (or more)")
    target = Path(output) if output is not None else run.averaged
    if RunDir.is_training_checkpoint(target):
        raise UserError(f"--output {target}: s2s train writes and reads that file ({target.name} holds the run's "
                        f"{'best weights' if target.name == 'best.pt' else 'training state'}); write the average "
                        f"to another file, e.g. the default {run.averaged}")
    chosen = snapshots[-last:]
    payloads = [load_checkpoint(path) for path in chosen]
    newest = payloads[-1]
    averaged = {}
    for name, tensor in newest["model"].items():
        if tensor.is_floating_point():
            averaged[name] = sum(p["model"][name].double() for p in payloads).div(last).to(tensor.dtype)
        else:
            averaged[name] = tensor
    save_checkpoint(target, {"config": newest["config"], "model_args": newest["model_args"], "model": averaged,
                             "step": newest["step"], "epoch": newest["epoch"],
                             "best_dev_bleu": newest.get("best_dev_bleu"), "best_step": newest.get("best_step"),
                             "averaged_steps": [p["step"] for p in payloads]},
                    then="average again")
    return target
