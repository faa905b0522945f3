"""What a run records about itself: metrics.jsonl, optional TensorBoard scalars, and summaries.

``metrics.jsonl`` holds one JSON object per event: ``start`` (device, sizes), ``train``
(loss, learning rate, tokens/s), ``valid`` (dev loss, perplexity, BLEU), ``end``. Every
record has ``step``, ``epoch`` and ``elapsed_s`` (seconds since training started).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional


from seq2seq_cli.config import DEV_METRICS
from seq2seq_cli.errors import UserError
from seq2seq_cli.files import atomic_write_text
from seq2seq_cli.rundir import RunDir

# The scalars sent to TensorBoard, by event: record key -> tag.
TENSORBOARD_TAGS = {
    "train": {"train_loss": "train/loss", "lr": "train/lr", "tokens_per_s": "train/tokens_per_s"},
    "valid": {"dev_loss": "dev/loss", "dev_ppl": "dev/ppl", "dev_bleu": "dev/bleu", "dev_chrf": "dev/chrf"},
}


def open_tensorboard(folder: Path, purge_step: Optional[int] = None):
    """A SummaryWriter, or a clear error when the optional TensorBoard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("training.tensorboard=true needs TensorBoard: pip install -e \".[tensorboard]\" "
                        "(or set training.tensorboard=false)") from None
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step)


class MetricsLog:
    """Appends records to metrics.jsonl (flushed at once) and mirrors scalars to TensorBoard."""

    def __init__(self, path: Path, tensorboard_dir: Optional[Path] = None, first_step: int = 1):
        self.path = path
        self.tensorboard = None
        if tensorboard_dir is not None:
            # A resumed run drops what TensorBoard holds from the steps it trains again.
            self.tensorboard = open_tensorboard(tensorboard_dir, purge_step=first_step if first_step > 1 else None)

    def write(self, **record: Any) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self.tensorboard is not None:
            for key, tag in TENSORBOARD_TAGS.get(record.get("event"), {}).items():
                if key in record:
                    self.tensorboard.add_scalar(tag, record[key], record["step"])
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl; a torn last line (a crash mid-write) is skipped."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to ``step`` (a resumed run writes the later ones again), atomically."""
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step and r.get("event") != "end"]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def finished_since(run: RunDir, since: float) -> Optional[int]:
    """The step ``run`` finished at, if it finished after ``since`` (a Unix time): its
    metrics.jsonl, written since then, ends with the end record of that step, and
    checkpoints/last.pt holds that step. None otherwise."""
    from seq2seq_cli.checkpoint import load_checkpoint

    try:
        if run.metrics.stat().st_mtime < since:
            return None
        records = read_metrics(run.metrics)
        if not records or records[-1].get("event") != "end":
            return None
        step = records[-1]["step"]
        return step if load_checkpoint(run.last)["step"] == step else None
    except (OSError, UserError, KeyError):
        return None


def run_summary(run_dir: Path) -> dict[str, Any]:
    """The facts ``s2s info`` prints about a run directory."""
    from seq2seq_cli.checkpoint import checkpoint_config, load_checkpoint, parameter_count
    from seq2seq_cli.config import language_pair, split_files
    from seq2seq_cli.evaluation import run_bleu_tokenizer
    from seq2seq_cli.state import TrainingState

    run = RunDir(run_dir)
    if run.root.is_file():  # a checkpoint or the config.yaml of a run, say
        owner = next((folder for folder in run.root.parents if RunDir(folder).metrics.is_file()), None)
        raise UserError(f"{run_dir} is a file, not a run directory; give "
                        + (f"the run it is in: {owner}" if owner else "the folder s2s train wrote"))
    if not run.root.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if not run.metrics.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl; is this an s2s run directory?")
    records = read_metrics(run.metrics)
    start = next((r for r in records if r["event"] == "start"), {})
    train = [r for r in records if r["event"] == "train"]
    valid = [r for r in records if r["event"] == "valid"]
    end = next((r for r in reversed(records) if r["event"] == "end"), None)
    checkpoints, bleu_tokenize = {}, None
    for name, path in (("best", run.best), ("last", run.last)):
        if path.is_file():
            payload = load_checkpoint(path)
            checkpoints[name] = {"path": str(path), "step": payload["step"]}
            parameters = parameter_count(payload["model"])
            config = checkpoint_config(payload, path)
            if "trainer" in payload:  # the tokenizer dev BLEU was measured with (best.pt has no state)
                bleu_tokenize = TrainingState.from_checkpoint(payload).bleu_tokenize
    if not checkpoints:
        raise UserError(f"{run_dir}: no checkpoints/best.pt or last.pt yet")
    # The validation best.pt was saved at (training.best_metric picked it), else the best dev BLEU.
    best_step = checkpoints["best"]["step"] if "best" in checkpoints else None
    best = next((r for r in reversed(valid) if r["step"] == best_step), None) or \
        max(valid, key=lambda r: r["dev_bleu"], default=None)
    best_metric = config.training.best_metric
    best_value = best.get(f"dev_{best_metric}") if best else None  # a valid record's dev_bleu, dev_chrf, dev_loss
    return {
        "run_dir": str(run_dir),
        "data": dict(zip(("train_src", "train_tgt"), split_files(config.data, "train"))),
        "init_from": start.get("init_from"), "init_from_step": start.get("init_from_step"),
        "languages": dict(zip(("source", "target"), language_pair(config.data))),
        "model": {"embed_dim": config.model.embed_dim, "hidden_size": config.model.hidden_size,
                  "encoder_layers": config.model.encoder_layers, "output_dim": config.model.output_dim,
                  "src_vocab_size": start.get("src_vocab_size"), "tgt_vocab_size": start.get("tgt_vocab_size")},
        "parameters": parameters,
        "device": start.get("device"),
        "train_pairs": start.get("train_pairs"),
        "best_metric": best_metric,
        "best_dev_score": best_value,
        "best_dev_bleu": best["dev_bleu"] if best else None,
        "best_step": best["step"] if best else None,
        "bleu_tokenize": bleu_tokenize or run_bleu_tokenizer(config),
        "last_step": max((r["step"] for r in records), default=0),
        "finished": end is not None,
        "stop_reason": end.get("reason") if end else None,
        "wall_s": max((r.get("elapsed_s", 0.0) for r in records), default=0.0),
        "tokens_per_s": round(sum(r["tokens_per_s"] for r in train) / len(train), 1) if train else None,
        "test_bleu": end.get("test_bleu") if end else None,
        "checkpoints": checkpoints,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """Label and value columns; the labels padded to the widest, so they never run together."""
    model = summary["model"]
    status = (f"finished: {summary['stop_reason']}" if summary["finished"]
              else "not finished (stopped or still training; s2s train --resume continues it)")
    rows = [
        ("run", summary["run_dir"]),
        ("status", status),
        ("languages", " -> ".join(code or "?" for code in summary["languages"].values())),
        ("data", (summary["data"]["train_src"] if summary["data"]["train_src"] == summary["data"]["train_tgt"]
                  else f"{summary['data']['train_src']} -> {summary['data']['train_tgt']}")
         + (f" ({summary['train_pairs']} pairs)" if summary["train_pairs"] else "")),
        *([("started from", f"{summary['init_from']} (step {summary['init_from_step']})")] if summary["init_from"] else []),
        ("model", f"emb {model['embed_dim']}, hidden {model['hidden_size']}, {model['encoder_layers']} encoder "
                  f"layer(s), output_dim {model['output_dim']}, vocab {model['src_vocab_size']}/{model['tgt_vocab_size']}"),
        ("parameters", f"{summary['parameters']:,}"),
        ("device", str(summary["device"])),
        _best_row(summary),
        ("last step", str(summary["last_step"])),
        ("wall time", f"{summary['wall_s'] / 60:.1f} min"),
        ("tokens/s", _number(summary["tokens_per_s"], ".0f")),
    ]
    if summary["test_bleu"] is not None:
        rows.append(("test BLEU", f"{summary['test_bleu']:.2f} (best checkpoint, greedy)"))
    for name, info in summary["checkpoints"].items():
        rows.append((f"{name} checkpoint", f"{info['path']} (step {info['step']})"))
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label:<{width}}{value}" for label, value in rows)


def format_summaries(summaries: list[dict[str, Any]]) -> str:
    """Several runs side by side, one row each: how far each got, on what, how well, how fast."""
    header = ("run", "status", "languages", "parameters", "best dev", "test BLEU", "last step", "wall time", "tokens/s")
    rows = []
    for summary in summaries:
        best = f"{metric_text(summary['best_metric'], summary['best_dev_score'])} @ {summary['best_step']}"
        rows.append((summary["run_dir"], "finished" if summary["finished"] else "not finished",
                     "->".join(code or "?" for code in summary["languages"].values()), f"{summary['parameters']:,}",
                     best, _number(summary["test_bleu"]), str(summary["last_step"]),
                     f"{summary['wall_s'] / 60:.1f} min", _number(summary["tokens_per_s"], ".0f")))
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def _best_row(summary: dict[str, Any]) -> tuple[str, str]:
    """``best dev BLEU 35.10 at step N (...)``, or by the metric that picked best.pt, with its BLEU."""
    metric, bleu = summary["best_metric"], _number(summary["best_dev_bleu"])
    tokenizer = f"sacreBLEU tokenizer {summary['bleu_tokenize']}"
    if metric == "bleu":
        return "best dev BLEU", f"{bleu} at step {summary['best_step']} ({tokenizer})"
    return (f"best dev {DEV_METRICS[metric]}",
            f"{metric_value(metric, summary['best_dev_score'])} at step {summary['best_step']} (BLEU {bleu}, {tokenizer})")


def metric_value(metric: str, value: Optional[float]) -> str:
    """A dev metric's value as logs and ``s2s info`` show it: a loss to 4 decimals, BLEU and chrF to 2."""
    return _number(value, ".4f" if metric == "loss" else ".2f")


def metric_text(metric: str, value: Optional[float]) -> str:
    """``BLEU 35.10``, ``chrF 58.31``, ``loss 1.2345``."""
    return f"{DEV_METRICS[metric]} {metric_value(metric, value)}"


def _number(value, spec: str = ".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)
