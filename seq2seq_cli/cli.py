"""The ``s2s`` command line: thin wiring from options to the modules that do the work."""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import sys
from pathlib import Path
from typing import BinaryIO, Callable, List, Optional

import typer
from typer.core import TyperGroup

try:  # newer typer versions carry their own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:
    from click import exceptions as click_exceptions

from seq2seq_cli import __version__
from seq2seq_cli.errors import UserError
from seq2seq_cli.files import atomic_write, atomic_write_text, is_same_file, out_of_space
from seq2seq_cli.progress import lines_progress, log_to_stderr
from seq2seq_cli.rundir import RunDir


class _Commands(TyperGroup):
    """A mistyped command, option or value is one line like every other user error, rather than
    click's usage block (a usage line, a hint, a blank line, then the error)."""

    def parse_args(self, ctx, args):  # s2s's own options: --verison
        try:
            return super().parse_args(ctx, args)
        except click_exceptions.UsageError as err:
            # `s2s` alone shows the help (newer click raises that as a usage error, too)
            if isinstance(err, getattr(click_exceptions, "NoArgsIsHelpError", ())):
                raise
            raise _one_line(err, ctx.command_path) from None

    def invoke(self, ctx):  # a command's name, options and values
        try:
            return super().invoke(ctx)
        except click_exceptions.UsageError as err:
            raise _one_line(err, " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))) from None


def _one_line(err, command_path: str) -> UserError:
    where = err.ctx.command_path if err.ctx is not None else command_path
    message = " ".join(err.format_message().split()).rstrip(".")
    return UserError(f"{message} (see {where} --help)")


log = logging.getLogger(__name__)
app = typer.Typer(cls=_Commands, help="Train and run attention RNN translation models.", no_args_is_help=True,
                  rich_markup_mode=None, pretty_exceptions_enable=False, add_completion=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"s2s {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    log_to_stderr()


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", metavar="FILE", help="YAML config file (with --resume: default RUN/config.yaml)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", metavar="DIR", help="Run directory (default: the config's run_dir)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run an existing run directory holds."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN", help="Continue the run in this directory from checkpoints/last.pt."),
    nproc: int = typer.Option(1, "--nproc", min=1, metavar="N", help="Data-parallel processes on this machine (runs torchrun): GPUs, or CPU cores."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="KEY=VALUE", hidden=True),
) -> None:
    """Train a model from a config file, or resume a run.

    KEY=VALUE arguments override the config, e.g. training.max_steps=200.

    Example: s2s train --config configs/toy.yaml training.max_steps=200
    """
    from seq2seq_cli.config import load_config, resolve_paths
    from seq2seq_cli.launch import RunAlreadyFinished, check_before_launch
    from seq2seq_cli.launch import train as run_training
    from seq2seq_cli.train import TrainingInterrupted

    if config is None and resume is None:
        raise UserError("give --config FILE to start a run, or --resume RUN_DIR to continue one")
    if resume is not None and overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it; choose one")
    if resume is not None and run_dir is not None and run_dir.resolve() != resume.resolve():
        raise UserError(f"--run-dir {run_dir} and --resume {resume} name different runs; give only --resume")
    if config is None and not RunDir(resume).config.is_file():
        raise UserError(f"cannot resume {resume}: no run there (no config.yaml); give the run directory s2s train wrote")
    settings = load_config(config if config is not None else RunDir(resume).config, overrides or [])
    if resume is not None or run_dir is not None:
        settings.run_dir = str(resume if resume is not None else run_dir)
        resolve_paths(settings)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        try:
            check_before_launch(settings, nproc, overwrite=overwrite, resume=resume is not None)
        except RunAlreadyFinished as finished:
            print(f"s2s: {finished}", file=sys.stderr)
            return
        _run_torchrun(nproc, RunDir(settings.run_dir), config, run_dir, overwrite, resume, overrides or [])
    try:
        run_training(settings, overwrite=overwrite, resume=resume is not None)
    except TrainingInterrupted as stop:
        print(f"s2s: {stop}", file=sys.stderr)
        raise typer.Exit(stop.exit_code)
    except RunAlreadyFinished as finished:
        print(f"s2s: {finished}", file=sys.stderr)


@app.command()
def prepare(
    config: Path = typer.Option(..., "--config", "-c", metavar="FILE", help="YAML config file; data.prepared_dir says where to write."),
    workers: int = typer.Option(0, "--workers", min=0, metavar="N", help="Tokenizing processes (default: one per CPU core)."),
    shard_size: int = typer.Option(100_000, "--shard-size", min=1, metavar="N", help="Sentence pairs per shard."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace shards prepared from other files or settings."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="KEY=VALUE", hidden=True),
) -> None:
    """Tokenize the training corpus once into binary shards that training memory-maps.

    For corpora too large to hold in memory; run it again to finish an interrupted prepare.
    KEY=VALUE arguments override the config, e.g. data.prepared_dir=data/wmt-bin.

    Example: s2s prepare --config configs/multi30k_cpu.yaml data.prepared_dir=data/multi30k-bin
    """
    from seq2seq_cli.config import load_config
    from seq2seq_cli.shards import prepare as prepare_shards

    settings = load_config(config, overrides or [])
    data_dir = prepare_shards(settings, workers=workers, shard_pairs=shard_size, overwrite=overwrite)
    typer.echo(f"prepared {data_dir}")


def _run_torchrun(nproc, run: RunDir, config, run_dir, overwrite, resume, overrides) -> None:
    """Start ``nproc`` training processes on this machine with torchrun (training ``run``), and
    exit as they do, but for one case: a process that aborted on its way out of a run that had
    finished."""
    import subprocess
    import time

    from seq2seq_cli.metrics import finished_since

    args = ["train"]
    for flag, value in (("--config", config), ("--run-dir", run_dir), ("--resume", resume)):
        if value is not None:
            args += [flag, str(value)]
    args += ["--overwrite"] if overwrite else []
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "seq2seq_cli", *args, *overrides]
    started = time.time()
    code = subprocess.run(command).returncode
    step = finished_since(run, started) if code != 0 else None
    if step is not None:
        # Now and then a gloo process aborts while tearing down after its work is done (SIGABRT,
        # "terminate called without an active exception", in PyTorch's C++), and torchrun then
        # reports the whole run as failed.
        print(f"s2s: warning: a training process failed on its way out (torchrun exit {code}), after the run "
              f"had finished: {run.metrics} ends with this run's end record and {run.last} holds step {step}; "
              "nothing is lost", file=sys.stderr)
        code = 0
    raise typer.Exit(code)


def _weights(text: Optional[str]) -> Optional[list[float]]:
    """--weights W1,W2,...: positive numbers, one per --checkpoint."""
    if text is None:
        return None
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        weights = []
    if not weights or not all(w > 0 and w < float("inf") for w in weights):
        raise UserError(f"--weights {text!r}: give positive numbers separated by commas, one per --checkpoint "
                        "(e.g. --weights 2,1)")
    return weights


def _stdin_descriptor() -> Optional[int]:
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a stream without one (tests, embedding)
        return None


def _stdin_lines() -> Optional[int]:
    """The lines left on stdin when it is a regular file (``s2s translate < FILE``), counted
    without reading them off it (``pread``); None for a pipe or a terminal."""
    from seq2seq_cli.data import count_block_lines

    fd = _stdin_descriptor()
    if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
        return None

    def blocks():
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        while block := os.pread(fd, 1 << 20, offset):
            offset += len(block)
            yield block

    return count_block_lines(blocks())


def _refuse_overwriting_inputs(output: Optional[Path], option: str, inputs: dict[str, Optional[Path]]) -> None:
    """A one-line error when ``output`` is one of the files a command reads."""
    for name, path in inputs.items():
        if output is not None and path is not None and is_same_file(output, path):
            raise UserError(f"{option} {output} is the {name} file; writing it would replace that file: "
                            f"choose another {option}")


def _input_batches(input_file: Optional[Path], batch_size: int):
    """Batches of raw lines from stdin, or from --input (decompressed when its name ends in .gz,
    .xz or .bz2, as every corpus s2s reads)."""
    from seq2seq_cli.data import corpus_errors, open_corpus
    from seq2seq_cli.translation import read_line_batches

    if input_file is None:
        yield from read_line_batches(sys.stdin.buffer, batch_size)
        return
    with corpus_errors(input_file), open_corpus(input_file) as source:
        yield from read_line_batches(source, batch_size)


@app.command()
def translate(
    checkpoint: List[Path] = typer.Option(..., "--checkpoint", metavar="RUN", help="Run directory (its best checkpoint) or checkpoint file; repeat for an ensemble."),
    weights: Optional[str] = typer.Option(None, "--weights", metavar="W1,W2,..", help="Ensemble weights, one per --checkpoint (default: equal)."),
    input_file: Optional[Path] = typer.Option(None, "--input", "-i", metavar="FILE", help="Source text, one sentence per line (default: stdin); a .docx, .odt, .pptx, .odp or .epub file is translated into one."),
    output_file: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help="Where to write translations, complete or not at all (default: stdout)."),
    beam_size: Optional[int] = typer.Option(None, "--beam-size", min=1, metavar="K", help="Beam size; 1 is greedy search (default: the config's)."),
    nbest: int = typer.Option(1, "--nbest", min=1, metavar="N", help="Hypotheses per sentence, as INDEX ||| HYPOTHESIS ||| SCORE lines."),
    length_penalty: Optional[float] = typer.Option(None, "--length-penalty", min=0.0, metavar="ALPHA", help="GNMT length penalty alpha."),
    max_length_ratio: Optional[float] = typer.Option(None, "--max-length-ratio", min=0.01, metavar="R", help="Maximum output length per source token."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, metavar="N", help="Sentences per batch."),
    no_repeat_ngram_size: Optional[int] = typer.Option(None, "--no-repeat-ngram-size", min=0, metavar="N", help="Never repeat an n-gram of this size (0 = off)."),
    sample: bool = typer.Option(False, "--sample", help="Draw each token at random from the model's distribution instead of searching (back-translation, diverse candidates); --nbest N draws N."),
    sample_topk: Optional[int] = typer.Option(None, "--sample-topk", min=0, metavar="K", help="With --sample: draw among the K most probable tokens only (default 0: all)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", metavar="T", help="With --sample: divide log-probabilities by T first (below 1 sharper; default 1)."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, metavar="N", help="With --sample: the same seed and input give the same samples (default 0)."),
    split_sentences: bool = typer.Option(False, "--split-sentences", help="Translate each line sentence by sentence (a paragraph per line) and join the translations on one line."),
    plot_attention: Optional[Path] = typer.Option(None, "--plot-attention", metavar="DIR", help="Write one attention heatmap PNG per sentence here."),
    alignment: bool = typer.Option(False, "--alignment", help="End each line with ' ||| ' and its word alignment from the attention: SOURCE-TARGET word pairs (0-0 1-2 ...)."),
    as_html: bool = typer.Option(False, "--html", help="The input is one HTML document (UTF-8): translate its text, keep its markup and code."),
    copy_unknown: bool = typer.Option(True, "--copy-unknown/--no-copy-unknown", help="Copy a source word the vocabulary cannot spell (read as [UNK]: a name in another script) into the translation where its translation would be (default), or leave it to the model."),
    constraints: bool = typer.Option(False, "--constraints", help="Each line is SOURCE<TAB>PHRASE<TAB>PHRASE...: the translation must hold each phrase (terminology; fairseq's format). Needs --beam-size 2 or more."),
    glossary: Optional[Path] = typer.Option(None, "--glossary", metavar="FILE", help="Lines SOURCE TERM<TAB>TARGET TERM (or a .csv of SOURCE TERM,TARGET TERM rows): each sentence that holds a source term gets its target term in its translation. Needs --beam-size 2 or more."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", metavar="DTYPE", help="auto (bf16 on CUDA, fp32 on the CPU), fp32 or bf16."),
    quantize: str = typer.Option("none", "--quantize", metavar="Q", help="none, or int8: int8 weights (CPU only)."),
    cuda_graphs: Optional[str] = typer.Option(None, "--cuda-graphs", metavar="MODE", help="auto: on a GPU, replay decoder steps from CUDA graphs; off (default: the run's decoding.cuda_graphs)."),
) -> None:
    """Translate text, one output line per input line.

    Example: echo "Ein Mann fährt Fahrrad." | s2s translate --checkpoint runs/multi30k --beam-size 5
    """
    from seq2seq_cli.data import count_lines
    from seq2seq_cli.decoding import Sampling
    from seq2seq_cli.office import OFFICE_FORMATS
    from seq2seq_cli.translation import Translator

    sampling_options = {"--sample-topk": sample_topk, "--temperature": temperature, "--seed": seed}
    if not sample and any(value is not None for value in sampling_options.values()):
        given = ", ".join(name for name, value in sampling_options.items() if value is not None)
        verb = "applies" if "," not in given else "apply"
        raise UserError(f"{given} only {verb} with --sample (translations drawn at random); add --sample, or drop "
                        f"{'it' if verb == 'applies' else 'them'}")
    if input_file is not None and not input_file.exists():
        raise UserError(f"--input {input_file}: file not found")
    # An office document (--input report.docx) is translated into one: its text, its layout kept.
    office = input_file.suffix.lower()[1:] if input_file is not None else ""
    office = office if office in OFFICE_FORMATS else None
    if office and output_file is None and sys.stdout.isatty():
        raise UserError(f"--input {input_file} is translated into a .{office} file, not text for a terminal; "
                        f"give --output FILE.{office}")
    if as_html or office:
        _check_document_options(f"--input {input_file}" if office else "--html", nbest=nbest > 1, sample=sample,
                                alignment=alignment, plot_attention=plot_attention, html=as_html and bool(office),
                                constraints=constraints)
    if output_file is not None and is_same_file(output_file, input_file or _stdin_descriptor()):
        raise UserError(f"--output {output_file} is the file being translated: its translation would replace it; "
                        "write to another file")
    translator = Translator.load(checkpoint, device, weights=_weights(weights), nbest=nbest,
                                 keep_attention=plot_attention is not None,
                                 beam_size=beam_size, length_penalty=length_penalty,
                                 max_length_ratio=max_length_ratio, batch_size=batch_size,
                                 no_repeat_ngram_size=no_repeat_ngram_size, dtype=dtype, quantize=quantize,
                                 cuda_graphs=cuda_graphs,
                                 sampling=Sampling(sample_topk or 0, 1.0 if temperature is None else temperature,
                                                   seed or 0) if sample else None,
                                 split_sentences=split_sentences or as_html or office is not None,  # paragraphs
                                 alignment=alignment, copy_unknown=copy_unknown, constraints=constraints,
                                 glossary=glossary)
    if as_html:
        document = _read_document(input_file)
        _write_output(output_file, lambda out: out.write(translator.translate_html(document).encode("utf-8")),
                      "translate")
        _report_glossary(glossary, translator, "paragraphs")
        return
    if office:
        try:
            translated = translator.translate_office(input_file.read_bytes(), office)
        except ValueError as err:
            raise UserError(f"--input {input_file}: {err}") from None
        _write_output(output_file, lambda out: out.write(translated), "translate")
        _report_glossary(glossary, translator, "paragraphs")
        return
    if plot_attention is not None:
        try:
            plot_attention.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create {plot_attention} ({err.strerror})") from None

    def write_translations(out: BinaryIO, advance) -> None:
        index = 0
        for sources, results in translator.translate_stream(_input_batches(input_file, translator.decoding.batch_size)):
            for source_ids, hypotheses in zip(sources, results):
                out.write(translator.output_lines(index, hypotheses, source_ids).encode("utf-8"))
                if plot_attention is not None and hypotheses[0].attention is not None:
                    translator.plot_attention(plot_attention / f"{index:05d}.png", source_ids, hypotheses[0])
                index += 1
            out.flush()
            advance(len(sources))

    typed_or_shown = (input_file is None and sys.stdin.isatty()) or (output_file is None and sys.stdout.isatty())
    count_total = (lambda: count_lines(input_file)) if input_file is not None else _stdin_lines
    with lines_progress(count_total, interactive=typed_or_shown) as advance:
        _write_output(output_file, lambda out: write_translations(out, advance), "translate")
    _report_glossary(glossary, translator)


def _report_glossary(path: Optional[Path], translator, pieces: str = "lines") -> None:
    """How many of a glossary's terms went into the translation: none at all is most often a
    glossary whose source terms are not written as the input writes them."""
    if path is None:
        return
    if translator.glossary_terms:
        log.info("--glossary %s: %d source terms found, in %d of %d %s", path, translator.glossary_terms,
                 translator.glossary_lines, translator.lines_read, pieces)
    elif translator.lines_read and translator.glossary.terms:  # (terms it cannot spell were named already)
        log.warning("--glossary %s: none of its %d source terms occurs in the %d %s translated (terms are found as "
                    "written and as whole words)", path, len(translator.glossary.terms), translator.lines_read, pieces)


def _check_document_options(what: str, **given) -> None:
    """--html and office documents translate a whole document into one: options about lines
    and lists do not apply."""
    names = {"nbest": "--nbest", "sample": "--sample", "alignment": "--alignment", "plot_attention": "--plot-attention",
             "html": "--html", "constraints": "--constraints"}
    clashing = [names[name] for name, value in given.items() if value]
    if clashing:
        one = len(clashing) == 1
        raise UserError(f"{what} {'translates' if what == '--html' else 'is translated'} as one document: "
                        f"{', '.join(clashing)} {'does' if one else 'do'} not apply; drop {'it' if one else 'them'}"
                        + (" or translate lines without --html" if what == "--html" else ""))


def _read_document(input_file: Optional[Path]) -> str:
    """The whole input (--input or stdin) as text: UTF-8, a byte-order mark dropped."""
    from seq2seq_cli.documents import decode_text_file

    where = f"--input {input_file}" if input_file is not None else "stdin"
    try:
        data = input_file.read_bytes() if input_file is not None else sys.stdin.buffer.read()
        return decode_text_file(data)
    except ValueError as err:
        raise UserError(f"{where}: {err}; --html reads UTF-8") from None


def _write_output(output_file: Optional[Path], write: Callable[[BinaryIO], None], command: str) -> None:
    """``write`` to stdout, or to ``output_file`` complete or not at all (an interrupted run
    leaves an earlier file as it was); a reader that goes away ends the command quietly."""
    try:
        if output_file is None:
            write(sys.stdout.buffer)
        else:
            atomic_write(output_file, write)
    except BrokenPipeError:
        # The reader went away (`s2s translate ... | head`): not an error of ours. Typer would
        # exit with 1; stdout goes to /dev/null so that flushing it at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0)
    except OSError as err:  # a full disk, a quota
        fix = "free space or write elsewhere" if out_of_space(err) else "write elsewhere"
        raise UserError(f"cannot write {err.filename or output_file or 'to stdout'} ({err.strerror}); {fix}, "
                        f"then {command} again") from None


@app.command()
def evaluate(
    ref: List[Path] = typer.Option(..., "--ref", metavar="FILE", help="Reference translations, one per line; repeat for several references of each sentence."),
    hyp: Optional[List[Path]] = typer.Option(None, "--hyp", metavar="FILE", help="Existing translations to score (no model needed); repeat to compare systems with a paired significance test, the first as the baseline."),
    checkpoint: Optional[List[Path]] = typer.Option(None, "--checkpoint", metavar="RUN", help="Run directory or checkpoint to translate --src with; repeat for an ensemble."),
    weights: Optional[str] = typer.Option(None, "--weights", metavar="W1,W2,..", help="Ensemble weights, one per --checkpoint (default: equal)."),
    src: Optional[Path] = typer.Option(None, "--src", metavar="FILE", help="Source sentences to translate and score."),
    beam_size: Optional[int] = typer.Option(None, "--beam-size", min=1, metavar="K", help="Beam size (default: the config's)."),
    length_penalty: Optional[float] = typer.Option(None, "--length-penalty", min=0.0, metavar="ALPHA", help="GNMT length penalty alpha."),
    no_repeat_ngram_size: Optional[int] = typer.Option(None, "--no-repeat-ngram-size", min=0, metavar="N", help="Never repeat an n-gram of this size (0 = off)."),
    split_sentences: bool = typer.Option(False, "--split-sentences", help="Translate each line sentence by sentence (a paragraph per line) and join the translations on one line."),
    copy_unknown: bool = typer.Option(True, "--copy-unknown/--no-copy-unknown", help="Copy a source word the vocabulary cannot spell (read as [UNK]: a name in another script) into the translation where its translation would be (default), or leave it to the model."),
    constraints: bool = typer.Option(False, "--constraints", help="Each --src line is SOURCE<TAB>PHRASE<TAB>...: put its phrases into the translation (as translate --constraints), or with --hyp read them from --src; report how many phrases the translations hold."),
    glossary: Optional[Path] = typer.Option(None, "--glossary", metavar="FILE", help="Lines SOURCE TERM<TAB>TARGET TERM (or a .csv of SOURCE TERM,TARGET TERM rows): translate with it (as translate --glossary), or with --hyp look its source terms up in --src; report how many target terms the translations hold."),
    json_file: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="Also write the report as JSON here."),
    sentences_file: Optional[Path] = typer.Option(None, "--sentences", metavar="FILE", help="Also write each sentence's BLEU and chrF here, tab-separated, a column pair per system (for finding where systems differ)."),
    paired: Optional[str] = typer.Option(None, "--paired", metavar="TEST", help="With several --hyp: bs (paired bootstrap resampling, the default) or ar (approximate randomization), sacreBLEU's tests."),
    paired_n: int = typer.Option(0, "--paired-n", min=0, metavar="N", help="Bootstrap resamples or randomization trials (default 1000 for bs, 10000 for ar)."),
    tokenize: Optional[str] = typer.Option(None, "--tokenize", metavar="TOK", help="sacreBLEU's BLEU tokenizer: 13a, intl, char, zh, ja-mecab, ... (default: the run's training.bleu_tokenize, else by its target language as sacrebleu -l does; 13a with --hyp)."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", metavar="DTYPE", help="auto (bf16 on CUDA, fp32 on the CPU), fp32 or bf16."),
    quantize: str = typer.Option("none", "--quantize", metavar="Q", help="none, or int8: int8 weights (CPU only)."),
    cuda_graphs: Optional[str] = typer.Option(None, "--cuda-graphs", metavar="MODE", help="auto: on a GPU, replay decoder steps from CUDA graphs; off (default: the run's decoding.cuda_graphs)."),
) -> None:
    """Score translations with sacreBLEU: BLEU, chrF2 and TER with signatures.

    Example: s2s evaluate --checkpoint runs/toy --src data/toy/test.en --ref data/toy/test.de

    Compare systems: s2s evaluate --hyp base.de --hyp new.de --ref data/toy/test.de

    Terminology (lines SOURCE<TAB>PHRASE...): s2s evaluate --checkpoint runs/toy --src terms.en
    --ref data/toy/test.de --constraints --beam-size 5
    """
    import json

    from seq2seq_cli.data import read_lines
    from seq2seq_cli.glossary import Glossary
    from seq2seq_cli.evaluation import (PAIRED_TESTS, bleu_metric, composition_warnings, format_paired_report,
                                        format_report, paired_report, phrase_report, run_bleu_metric, score_report,
                                        sentence_table, wanted_phrases)

    if paired is not None and paired not in PAIRED_TESTS:
        raise UserError(f"--paired {paired!r}: use bs (paired bootstrap resampling) or ar (approximate randomization)")
    if len(hyp or []) < 2 and (paired is not None or paired_n):
        raise UserError("--paired and --paired-n compare systems: give --hyp twice or more (the first is the baseline)")
    if hyp and checkpoint:  # which would be scored?
        raise UserError("give --hyp FILE (translations to score) or --checkpoint RUN with --src FILE "
                        "(a model to translate them), not both")
    if hyp and src is not None and not (constraints or glossary):
        raise UserError(f"--src {src} would be translated with --checkpoint; --hyp {hyp[0]} is scored as it is, "
                        "reading --src only for --constraints' phrases or --glossary's terms: drop --src, or add "
                        "--constraints or --glossary")
    if constraints and src is None:
        raise UserError("--constraints reads each line's phrases from --src (SOURCE<TAB>PHRASE<TAB>...): give --src FILE")
    if glossary is not None and src is None:
        raise UserError("--glossary looks its source terms up in --src: give --src FILE")
    if hyp:  # a decoding option would be silently ignored: the file is scored as it is
        decoding_options = {"--weights": weights is not None, "--beam-size": beam_size is not None,
                            "--length-penalty": length_penalty is not None,
                            "--no-repeat-ngram-size": no_repeat_ngram_size is not None,
                            "--device": device != "auto", "--dtype": dtype != "auto",
                            "--quantize": quantize != "none", "--cuda-graphs": cuda_graphs is not None,
                            "--split-sentences": split_sentences, "--no-copy-unknown": not copy_unknown}
        given = [name for name, is_given in decoding_options.items() if is_given]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise UserError(f"{', '.join(given)} only {verb} to translating with --checkpoint; --hyp {hyp[0]} "
                            "is scored as it is: drop them, or give --checkpoint RUN --src FILE instead")
    for written, option in ((json_file, "--json"), (sentences_file, "--sentences")):
        for reference_file in ref:
            _refuse_overwriting_inputs(written, option, {"--ref": reference_file, "--src": src})
        for hypothesis_file in hyp or []:
            _refuse_overwriting_inputs(written, option, {"--hyp": hypothesis_file})
    if json_file is not None and sentences_file is not None and is_same_file(json_file, sentences_file):
        raise UserError(f"--json and --sentences both name {json_file}; give each a file of its own")
    bleu = bleu_metric(tokenize=tokenize)  # an unknown --tokenize is refused before any work
    reference_sets = [read_lines(reference_file) for reference_file in ref]
    for reference_file, references in zip(ref, reference_sets):
        if len(references) != len(reference_sets[0]):
            raise UserError(f"--ref {reference_file} has {len(references)} lines but --ref {ref[0]} has "
                            f"{len(reference_sets[0])}; every reference file has one line per sentence")
    references = reference_sets[0]
    named_references = [(f"--ref {path}", lines) for path, lines in zip(ref, reference_sets)]  # for warnings
    if not references:  # sacreBLEU has no score for no sentences
        raise UserError(f"--ref {ref[0]} is empty: there is nothing to score; give a file with one reference per line")
    sources = read_lines(src) if src is not None else None
    if sources is not None and len(sources) != len(references):
        raise UserError(f"{src} has {len(sources)} lines but {ref[0]} has {len(references)}; "
                        "source and reference must be line-aligned")
    terms = Glossary.read(glossary) if glossary is not None else None
    phrases = wanted_phrases(sources, constraints, terms) if constraints or terms is not None else None
    speed = None
    if hyp:
        systems = [(str(path), read_lines(path)) for path in hyp]
        for path, (_, hypotheses) in zip(hyp, systems):
            if len(hypotheses) != len(references):
                raise UserError(f"--hyp {path} has {len(hypotheses)} lines but {ref[0]} has {len(references)}; "
                                "they must be line-aligned")
        for warning in composition_warnings(named_references + [("--hyp " + name, lines) for name, lines in systems]):
            log.warning(warning)
        if len(systems) > 1:
            report = paired_report(systems, reference_sets, bleu, paired or "bs", paired_n)
            if phrases is not None:
                for row, (_, hypotheses) in zip(report["systems"], systems):
                    row["phrases"] = phrase_report(hypotheses, phrases)
            typer.echo(format_paired_report(report))
            _write_text(json_file, json.dumps(report, indent=2) + "\n")
            _write_text(sentences_file, sentence_table(systems, reference_sets, bleu))
            return
        hypotheses = systems[0][1]
    elif checkpoint and src is not None:
        from seq2seq_cli.translation import Translator

        translator = Translator.load(checkpoint, device, weights=_weights(weights), beam_size=beam_size,
                                     length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                                     dtype=dtype, quantize=quantize, cuda_graphs=cuda_graphs,
                                     split_sentences=split_sentences, copy_unknown=copy_unknown,
                                     constraints=constraints, glossary=terms)
        with lines_progress(lambda: len(sources), interactive=False) as advance:  # the report comes after
            hypotheses, speed = translator.translate_lines(sources, advance)
        bleu = run_bleu_metric(translator.config, tokenize)  # the (first) run's
        for warning in composition_warnings(named_references + [("the translations", hypotheses)]):
            log.warning(warning)
    else:
        raise UserError("give --hyp FILE, or --checkpoint RUN with --src FILE, to score against --ref")
    report = score_report(hypotheses, reference_sets, bleu)
    if phrases is not None:
        report["phrases"] = phrase_report(hypotheses, phrases)
    if speed:
        report["decoding"] = speed
    typer.echo(format_report(report))
    _write_text(json_file, json.dumps(report, indent=2) + "\n")
    _write_text(sentences_file, sentence_table([("", hypotheses)], reference_sets, bleu))


def _write_text(path: Optional[Path], text: str) -> None:
    """A report file of ``evaluate``, written whole or not at all (an earlier one stays)."""
    if path is not None:
        try:
            atomic_write_text(path, text)
        except OSError as err:
            raise UserError(f"cannot write {path} ({err.strerror})") from None


SCORE_CHUNK_PAIRS = 20_000  # pairs read, scored and written at a time by s2s score


@app.command()
def score(
    checkpoint: List[Path] = typer.Option(..., "--checkpoint", metavar="RUN", help="Run directory (its best checkpoint) or checkpoint file; repeat for an ensemble."),
    src: Path = typer.Option(..., "--src", metavar="FILE", help="Source sentences, one per line."),
    tgt: Optional[Path] = typer.Option(None, "--tgt", metavar="FILE", help="Their translations to score, line-aligned with --src."),
    nbest: Optional[Path] = typer.Option(None, "--nbest", metavar="FILE", help="Instead of --tgt: an n-best list of --src (INDEX ||| HYPOTHESIS ||| SCORE, as translate --nbest writes it); each line is written back with this model's score added as a last field."),
    output_file: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help="Where to write the scores, complete or not at all (default: stdout)."),
    normalize: bool = typer.Option(False, "--normalize", help="Divide each score by its target's tokens ([SEP] included): log-probability per token, comparable across lengths."),
    reverse: bool = typer.Option(False, "--reverse", help="The model translates the other way: score log P(source | translation), the channel model of noisy-channel reranking."),
    alignment: bool = typer.Option(False, "--alignment", help="End each line with ' ||| ' and the pair's word alignment, read from the attention as the model reads the translation (forced alignment)."),
    weights: Optional[str] = typer.Option(None, "--weights", metavar="W1,W2,..", help="Ensemble weights, one per --checkpoint (default: equal)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, metavar="N", help="Sentence pairs per batch (default: decoding.batch_size)."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", metavar="DTYPE", help="auto (bf16 on CUDA, fp32 on the CPU), fp32 or bf16."),
    quantize: str = typer.Option("none", "--quantize", metavar="Q", help="none, or int8: int8 weights (CPU only)."),
) -> None:
    """Score given translations: log P(target | source) of each pair, one number per line.

    The model's log-probability in nats, the end of the sentence included, as beam search
    scores what it finds (with --length-penalty 0); the set's perplexity goes to stderr. For
    ranking n-best lists (--nbest adds a field to each of their lines) and filtering parallel
    corpora.

    Example: s2s score --checkpoint runs/toy --src data/toy/test.en --tgt data/toy/test.de
    """
    import itertools
    import math

    from seq2seq_cli.data import count_lines, stream_lines
    from seq2seq_cli.alignment import format_alignment
    from seq2seq_cli.scoring import NBEST_SEPARATOR, nbest_pairs
    from seq2seq_cli.translation import Translator

    if (tgt is None) == (nbest is None):
        raise UserError("give the translations to score: --tgt FILE (one per --src line) or --nbest FILE "
                        "(an n-best list), one of them")
    _refuse_overwriting_inputs(output_file, "--output", {"--src": src, "--tgt": tgt, "--nbest": nbest})
    if alignment and reverse:
        raise UserError("--alignment with --reverse: a model of the other direction would align each source word "
                        "to the translation; align with a model of this direction (drop --reverse)")
    if nbest is not None:
        pairs = count_lines(nbest)
    else:
        pairs, target_lines = count_lines(src), count_lines(tgt)  # before any work: a mismatch is found at once
        if target_lines != pairs:
            raise UserError(f"{src} has {pairs} lines but {tgt} has {target_lines}; "
                            "source and target must be line-aligned")
    translator = Translator.load(checkpoint, device, weights=_weights(weights), batch_size=batch_size, dtype=dtype,
                                 quantize=quantize, alignment=alignment)
    totals = {"pairs": 0, "tokens": 0, "log_prob": 0.0}

    def write_scores(out: BinaryIO, advance) -> None:
        # A chunk at a time: a corpus of any size is scored in constant memory, each chunk's
        # pairs sorted by length into batches.
        if nbest is None:
            lines = ((source, target, None) for source, target in zip(stream_lines(src), stream_lines(tgt)))
        else:
            lines = nbest_pairs(src, nbest)
        while chunk := list(itertools.islice(lines, SCORE_CHUNK_PAIRS)):
            sources, targets, nbest_lines = zip(*chunk)
            if reverse:  # a model of the other direction reads each translation and scores its source
                sources, targets = targets, sources
            scores = translator.score(sources, targets, advance)
            values = [f"{s.per_token if normalize else s.log_prob:.4f}" for s in scores]
            if nbest is not None:  # the n-best line, its new field last
                values = [f"{line}{NBEST_SEPARATOR}{value}" for line, value in zip(nbest_lines, values)]
            if alignment:
                values = [f"{value}{NBEST_SEPARATOR}{format_alignment(s.alignment)}" for value, s in zip(values, scores)]
            out.write("".join(f"{value}\n" for value in values).encode())
            totals["pairs"] += len(scores)
            totals["tokens"] += sum(len(s.tokens) for s in scores)
            totals["log_prob"] += sum(s.log_prob for s in scores)

    with lines_progress(lambda: pairs, interactive=False) as advance:
        _write_output(output_file, lambda out: write_scores(out, advance), "score")
    if totals["tokens"]:
        cross_entropy = -totals["log_prob"] / totals["tokens"]
        pairs_scored = f"{totals['pairs']:,} pair{'s' if totals['pairs'] != 1 else ''}"
        scored_side = "source" if reverse else "target"
        print(f"s2s: scored {pairs_scored}, {totals['tokens']:,} {scored_side} tokens ([SEP] included): "
              f"{cross_entropy:.4f} nats per token, perplexity {math.exp(cross_entropy):.3f}", file=sys.stderr)


@app.command()
def average(
    run_dir: Path = typer.Argument(..., help="A run directory trained with training.keep_last >= K."),
    last: int = typer.Option(..., "--last", metavar="K", help="Average the K newest step checkpoints."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help="Where to write (default RUN/checkpoints/averaged.pt)."),
) -> None:
    """Average the weights of the last K checkpoints into one (often +0.3-1 BLEU).

    Example: s2s average runs/multi30k --last 5
    """
    from seq2seq_cli.checkpoint import average_checkpoints

    written = average_checkpoints(run_dir, last, output)
    typer.echo(f"wrote {written}")


@app.command()
def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", metavar="RUN", help="A run directory (its best checkpoint) or a checkpoint file, e.g. checkpoints/averaged.pt."),
    output: Path = typer.Option(..., "--output", "-o", metavar="DIR", help="A new (or empty) folder to write the model to."),
    fp16: bool = typer.Option(False, "--fp16", help="Store the weights in half precision: half the size; a translation now and then comes out differently."),
) -> None:
    """Write a model folder to share or serve: config, tokenizer and one checkpoint's weights, no training state.

    translate, evaluate, score, serve and training.init_from take the folder as they take a run.

    Example: s2s export --checkpoint runs/multi30k/checkpoints/averaged.pt --output models/de-en
    """
    from seq2seq_cli.checkpoint import export_model

    folder, exported = export_model(checkpoint, output, fp16=fp16)
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    typer.echo(f"wrote {folder} ({size / 2**20:.1f} MiB) from {exported}")


@app.command()
def serve(
    checkpoint: List[Path] = typer.Option(..., "--checkpoint", metavar="RUN", help="A run to serve; repeat for several language pairs."),
    ensemble: bool = typer.Option(False, "--ensemble", help="Serve runs of the same language pair as one ensemble (equal weights)."),
    host: str = typer.Option("127.0.0.1", "--host", metavar="HOST", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(5000, "--port", metavar="PORT", min=0, max=65535, help="Port (0: any free one)."),
    beam_size: Optional[int] = typer.Option(None, "--beam-size", metavar="K", min=1, help="Beam size (default: each run's config)."),
    decoders: Optional[int] = typer.Option(None, "--decoders", metavar="N", min=1, help="Batches searched at once per model, each on one thread in a process of its own (default: one per CPU thread; one on a GPU)."),
    max_batch_sentences: Optional[int] = typer.Option(None, "--max-batch-sentences", metavar="N", min=1, help="Sentences per decoding batch (default: decoding.batch_size)."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", metavar="MS", min=0.0, help="How long a batch waits for more sentences after the first."),
    max_queue: int = typer.Option(2048, "--max-queue", metavar="N", min=1, help="Sentences waiting per model before 429."),
    char_limit: int = typer.Option(5000, "--char-limit", metavar="N", min=1, help="Characters per text."),
    batch_limit: int = typer.Option(64, "--batch-limit", metavar="N", min=1, help="Texts per request."),
    api_key: Optional[str] = typer.Option(None, "--api-key", metavar="KEY", help="Require this api_key in requests."),
    req_limit: int = typer.Option(0, "--req-limit", metavar="N", min=0, help="Requests a minute one client address may send to translate or detect (0: no limit), as LibreTranslate's --req-limit."),
    cors_origin: Optional[str] = typer.Option(None, "--cors-origin", metavar="ORIGIN", help="Allow browser pages from this origin."),
    split_sentences: bool = typer.Option(True, "--split-sentences/--no-split-sentences", help="Translate each text sentence by sentence, as LibreTranslate does (default), or each line whole."),
    copy_unknown: bool = typer.Option(True, "--copy-unknown/--no-copy-unknown", help="Copy a source word the vocabulary cannot spell (read as [UNK]: a name in another script) into the translation where its translation would be (default), or leave it to the model."),
    glossary: Optional[List[str]] = typer.Option(None, "--glossary", metavar="[SRC:TGT=]FILE", help="Lines SOURCE TERM<TAB>TARGET TERM (or a .csv of SOURCE TERM,TARGET TERM rows): every sentence of that language pair that holds a source term gets its target term in its translation (needs a beam of 2 or more); name the pair when serving several, and repeat for several pairs."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", metavar="DTYPE", help="auto (bf16 on CUDA, fp32 on the CPU), fp32 or bf16."),
    quantize: str = typer.Option("none", "--quantize", metavar="Q", help="none, or int8: int8 weights (CPU only)."),
    cuda_graphs: Optional[str] = typer.Option(None, "--cuda-graphs", metavar="MODE", help="auto: on a GPU, replay decoder steps from CUDA graphs; off (default: the run's decoding.cuda_graphs)."),
) -> None:
    """Serve runs over HTTP (LibreTranslate API), batching concurrent requests.

    Example: s2s serve --checkpoint runs/toy --port 5000
    """
    try:
        import uvicorn
    except ImportError:
        raise UserError('s2s serve needs FastAPI and uvicorn: pip install -e ".[serve]"') from None
    from seq2seq_cli.batching import LoadOptions
    from seq2seq_cli.glossary import Glossary
    from seq2seq_cli.serve import ServeSettings, create_app, server_models

    glossaries = []
    for given in glossary or []:  # SRC:TGT=FILE, or FILE for the only pair served
        named = re.fullmatch(r"([\w-]+):([\w-]+)=(.+)", given)
        pair, path = ((named[1], named[2]), named[3]) if named else (None, given)
        glossaries.append((given, pair, Glossary.read(path)))
    options = LoadOptions(device, beam_size, dtype, quantize, cuda_graphs, copy_unknown, tuple(glossaries))
    models = server_models([str(path) for path in checkpoint], options, ensemble)
    settings = ServeSettings(max_batch_sentences, max_wait_ms, max_queue, char_limit, batch_limit, api_key,
                             cors_origin, decoders, split_sentences, req_limit)
    _check_port_free(host, port)
    pairs = ", ".join(f"{m.source}->{m.target}" for m in models)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                bound = self.servers[0].sockets[0].getsockname()[1]
                print(f"s2s: serving {pairs} at http://{host}:{bound}/ (API docs at /docs)", file=sys.stderr,
                      flush=True)

    # SIGINT/SIGTERM: uvicorn stops accepting and answers every accepted request; it then raises
    # the signal again, which these handlers turn into a normal exit (0) instead of a kill.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    Server(uvicorn.Config(create_app(models, settings, options), host=host, port=port, log_level="warning",
                          access_log=False)).run()


def _check_port_free(host: str, port: int) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port or --host") from None


@app.command()
def info(
    runs: List[Path] = typer.Argument(..., metavar="RUN", help="Run directories written by s2s train; several give one table."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (a list for several runs)."),
) -> None:
    """Summarise a run: config highlights, size, best dev BLEU, speed, checkpoints; several runs side by side.

    Example: s2s info runs/toy --json

    Compare runs: s2s info runs/*
    """
    import json

    from seq2seq_cli.metrics import format_summaries, format_summary, run_summary

    summaries = [run_summary(run_dir) for run_dir in runs]  # any that is no run: an error before any output
    if as_json:
        typer.echo(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
    else:
        typer.echo(format_summary(summaries[0]) if len(summaries) == 1 else format_summaries(summaries))


def main() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _main_of_a_torchrun_worker()
    else:
        _main()


def _main() -> None:
    try:
        app()
    except UserError as err:
        print(f"s2s: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.filename is None:  # not about a file the user named or owns: a fault of ours, shown whole
            raise
        # A file that cannot be read or written (permissions, a full disk, a lost mount) where
        # no command expected trouble: still one line, naming the file.
        print(f"s2s: error: {err.filename}: {err.strerror}; check that it exists and that you may read (or write) it",
              file=sys.stderr)
        sys.exit(2)


def _main_of_a_torchrun_worker() -> None:
    """``_main`` in one of torchrun's processes, which then leaves at once (``os._exit``) with its
    exit code, its output flushed.

    The process group is left when training ends (``launch.train``), but gloo's C++ threads can
    outlive that, held by DistributedDataParallel; torn down with the interpreter they sometimes
    abort the process (SIGABRT, "terminate called without an active exception"), and torchrun then
    reports a finished run as failed. Nothing is left to do at that point, so the teardown is
    skipped. ``faulthandler`` prints where a process aborts should one still do so."""
    import faulthandler
    import logging
    import traceback

    faulthandler.enable()
    code = 1
    try:
        _main()
        code = 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing more to write
                pass
        os._exit(code)
