"""The ``s2s`` command line: thin wiring from options to the modules that do the work."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from seq2seq_cli import __version__
from seq2seq_cli.errors import UserError

app = typer.Typer(help="Train and run attention RNN translation models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"s2s {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)


@app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config file."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run directory (default: the config's run_dir)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run an existing run directory holds."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="[KEY=VALUE]...",
                                                    help="Config overrides, e.g. training.max_steps=200."),
) -> None:
    """Train a model from a config file.

    Example: s2s train --config configs/toy.yaml training.max_steps=200
    """
    from seq2seq_cli.config import load_config, resolve_paths
    from seq2seq_cli.train import train as run_training

    settings = load_config(config, overrides or [])
    if run_dir is not None:
        settings.run_dir = str(run_dir)
        resolve_paths(settings)
    run_training(settings, overwrite=overwrite)


def _open_output(path: Optional[Path]):
    if path is None:
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot write {path} ({err.strerror})") from None


@app.command()
def translate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run directory (its best checkpoint) or checkpoint file."),
    input_file: Optional[Path] = typer.Option(None, "--input", "-i", help="Source text, one sentence per line (default: stdin)."),
    output_file: Optional[Path] = typer.Option(None, "--output", "-o", help="Where to write translations (default: stdout)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Sentences per batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Translate text, one output line per input line (greedy search).

    Example: echo "Ein Mann fährt Fahrrad." | s2s translate --checkpoint runs/multi30k
    """
    from seq2seq_cli.checkpoint import load_model
    from seq2seq_cli.data import read_lines
    from seq2seq_cli.decoding import translate_corpus
    from seq2seq_cli.device import select_device

    torch_device = select_device(device)
    model, vocabs, settings = load_model(checkpoint, torch_device)
    if input_file is not None:
        lines = read_lines(input_file)
    else:
        lines = sys.stdin.buffer.read().decode("utf-8", errors="replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
    hypotheses = translate_corpus(model, vocabs, vocabs.encode_src(lines), settings.decoding, torch_device,
                                  batch_size)
    out = _open_output(output_file)
    for text in vocabs.decode_tgt([h.tokens for h in hypotheses]):
        out.write(text.replace("\n", " ") + "\n")
    out.flush()
    if out is not sys.stdout:
        out.close()


@app.command()
def evaluate(
    ref: Path = typer.Option(..., "--ref", help="Reference translations, one per line."),
    hyp: Optional[Path] = typer.Option(None, "--hyp", help="Existing translations to score (no model needed)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Run directory or checkpoint to translate --src with."),
    src: Optional[Path] = typer.Option(None, "--src", help="Source sentences to translate and score."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Score translations with sacreBLEU (BLEU, chrF2, TER).

    Example: s2s evaluate --checkpoint runs/toy --src data/toy/test.en --ref data/toy/test.de
    """
    from seq2seq_cli.data import read_lines
    from seq2seq_cli.evaluation import score_report

    references = read_lines(ref)
    if hyp is not None:
        hypotheses = read_lines(hyp)
    elif checkpoint is not None and src is not None:
        from seq2seq_cli.checkpoint import load_model
        from seq2seq_cli.decoding import translate_corpus
        from seq2seq_cli.device import select_device

        torch_device = select_device(device)
        model, vocabs, settings = load_model(checkpoint, torch_device)
        sources = read_lines(src)
        if len(sources) != len(references):
            raise UserError(f"{src} has {len(sources)} lines but {ref} has {len(references)}")
        found = translate_corpus(model, vocabs, vocabs.encode_src(sources), settings.decoding, torch_device)
        hypotheses = vocabs.decode_tgt([h.tokens for h in found])
    else:
        raise UserError("give --hyp FILE, or --checkpoint RUN with --src FILE, to score against --ref")
    if len(hypotheses) != len(references):
        raise UserError(f"{hyp} has {len(hypotheses)} lines but {ref} has {len(references)}")
    typer.echo(score_report(hypotheses, references))


def main() -> None:
    try:
        app()
    except UserError as err:
        print(f"s2s: error: {err}", file=sys.stderr)
        sys.exit(2)
