"""Starting a training run: from a checked config to a ``Trainer`` ready for its first step.

``train(config)`` is what ``s2s train`` calls. It checks everything it can before writing
anything (files exist, parallel files line up, a resumed run fits its config and has not
already finished), locks the run directory, gets the tokenizer and the tokenized corpora,
builds the model and runs ``Trainer.fit``. A fresh start that fails before training removes
what it wrote, so the same command works again once the problem is fixed.

The run directory is prepared in one of three ways, one function each: ``_start_fresh`` (a
new run), ``_continue`` (``--resume``) and ``_follow`` (a torchrun process other than rank 0,
which reads what rank 0 wrote once it is there).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from seq2seq_cli import shards
from seq2seq_cli.checkpoint import checkpoint_config, load_checkpoint
from seq2seq_cli.config import DEV_METRICS, Config, check_training_files, split_files, to_yaml
from seq2seq_cli.data import ParallelCorpus, TokenBatches, filter_pairs, read_split, tokenize_corpus
from seq2seq_cli.device import select_device
from seq2seq_cli.distributed import World, barrier, join, leave
from seq2seq_cli.errors import UserError
from seq2seq_cli.evaluation import composition_warnings, run_bleu_tokenizer
from seq2seq_cli.files import atomic_write_text, remedy, save_atomically
from seq2seq_cli.metrics import read_metrics, truncate_metrics
from seq2seq_cli.model import Seq2Seq, build_model, load_bert_embeddings
from seq2seq_cli.precision import check_cpu_bf16, resolve as resolve_precision
from seq2seq_cli.rundir import RunDir
from seq2seq_cli.tokenization import Tokenizers, build_tokenizers
from seq2seq_cli.state import TrainingState, out_of_time
from seq2seq_cli.train import Trainer, check_same_processes

log = logging.getLogger(__name__)


class RunAlreadyFinished(Exception):
    """``--resume`` of a run that reached a limit and finished: nothing to do, nothing touched."""


@dataclass
class _Texts:
    """The raw corpora, read (and their line counts checked) before anything is written."""

    train: Optional[tuple[list[str], list[str]]]  # None when training reads prepared shards
    dev: tuple[list[str], list[str]]
    test: Optional[tuple[list[str], list[str]]]


@dataclass
class _Corpora:
    tokenizers: Tokenizers
    train: Any  # a ParallelCorpus, or a shards.ShardedCorpus
    dev: ParallelCorpus
    test: Optional[ParallelCorpus]


def train(config: Config, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train a model as ``config`` says (or continue the run in its run_dir); returns the end summary.

    A write that fails (a full disk, a quota, a folder made read-only) is a one-line error that
    says how to go on: before the first step the start has been undone, after it the last
    checkpoint is intact."""
    try:
        trainer = build_trainer(config, overwrite, resume)
    except OSError as err:
        raise UserError(f"cannot start the run in {config.run_dir}: {_failed_write(err)}; "
                        f"{remedy(err)} and run the same command again") from None
    try:
        summary = trainer.fit()
        # Rank 0 scores the test set after the others have finished; a rank that tears its
        # gloo connections down meanwhile can abort (SIGABRT) on exit.
        barrier(trainer.world)
        return summary
    except OSError as err:
        go_on = (f"the last checkpoint is intact: {remedy(err)}, then continue with s2s train --resume {trainer.run}"
                 if trainer.run.last.is_file() else f"no checkpoint was saved yet: {remedy(err)}, then start "
                 "again with --overwrite")
        raise UserError(f"training stopped at step {trainer.state.step}: {_failed_write(err)}; {go_on}") from None
    finally:
        trainer.run.unlock()
        leave(trainer.world)


def check_before_launch(config: Config, processes: int, overwrite: bool = False, resume: bool = False) -> None:
    """What ``build_trainer`` in ``processes`` processes would refuse before any work, checked
    without starting anything: ``s2s train --nproc`` checks here before it starts torchrun, so a
    mistake is one line from one process (raises ``RunAlreadyFinished`` for a finished run
    resumed with the same limits)."""
    check_training_files(config)
    check_cpu_bf16(config.training.precision, select_device(config.training.device), "training.precision=")
    run = RunDir(config.run_dir)
    if resume:
        resume_from = _checkpoint_to_resume(config, run)
        _resumable(config, resume_from, run)
        check_same_processes(resume_from, processes)
        return
    run.refuse_existing(overwrite)
    if config.training.init_from:
        _parent(config)


def _failed_write(err: OSError) -> str:
    return f"{err.filename}: {err.strerror}" if err.filename else str(err.strerror or err)


def build_trainer(config: Config, overwrite: bool = False, resume: bool = False) -> Trainer:
    """Everything up to the first step: checks, run directory, tokenizer, corpora, model, optimizer."""
    check_training_files(config)
    run = RunDir(config.run_dir)
    device = select_device(config.training.device)
    world = join(device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    check_cpu_bf16(config.training.precision, device, "training.precision=")  # before any slow work
    if not world.is_main:
        logging.getLogger("seq2seq_cli").setLevel(logging.WARNING)  # one log, from rank 0
    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    resume_from = _checkpoint_to_resume(config, run) if resume else None
    if resume_from is not None:
        resumed = _resumable(config, resume_from, run)
        if resumed.training.bleu_tokenize != config.training.bleu_tokenize:  # said here, not in the --nproc check
            log.info("%s: dev BLEU stays split by sacreBLEU's %s tokenizer, as its best so far was", run,
                     resumed.training.bleu_tokenize)
        config = resumed
    # A resumed run has its own weights: the parent matters only to a fresh start.
    parent = _parent(config) if config.training.init_from and resume_from is None else None
    texts = _read_texts(config)
    if world.is_main:  # the others log warnings too
        _warn_of_uncomposed_references(config, texts)
        run.lock()
    try:
        if world.is_main:
            corpora = (_start_fresh(config, run, overwrite, texts, parent) if resume_from is None
                       else _continue(config, run, resume_from["step"], texts))
        barrier(world)  # the others read the tokenizer and corpus caches rank 0 has written
        if not world.is_main:
            corpora = _follow(config, run, texts)
        return _make_trainer(config, run, corpora, device, world, resume_from, parent)
    except BaseException:
        if world.is_main:
            run.remove_failed_start() if resume_from is None else run.unlock()
        raise


@dataclass
class _Parent:
    """The run a fine-tuning run starts from (``training.init_from``)."""

    checkpoint: Path
    run: RunDir
    payload: dict[str, Any]


# Model settings that fix the weights' shapes (and so must be the parent's); dropout may change.
_SIZE_KEYS = ("embed_dim", "hidden_size", "encoder_layers", "attention_dim", "output_dim", "tie_embeddings",
              "embed_type")


def _parent(config: Config) -> _Parent:
    """The checkpoint to fine-tune from, once it is clear that this config fits it."""
    checkpoint, parent_run = RunDir.resolve_checkpoint(config.training.init_from)
    payload = load_checkpoint(checkpoint)
    saved = checkpoint_config(payload, checkpoint)
    ours, theirs = dataclasses.asdict(config.tokenizer), dataclasses.asdict(saved.tokenizer)
    for key in ours:
        if ours[key] != theirs[key]:
            raise UserError(f"tokenizer.{key} is {ours[key]!r} but training.init_from {checkpoint} was trained with "
                            f"{theirs[key]!r}; a fine-tuned run keeps its parent's tokenizer: set it as there "
                            f"(e.g. start from {parent_run.config})")
    for key in _SIZE_KEYS:
        ours, theirs = getattr(config.model, key), getattr(saved.model, key)
        if ours != theirs:
            raise UserError(f"model.{key} is {ours!r} but training.init_from {checkpoint} has {theirs!r}; a "
                            f"fine-tuned run has its parent's sizes: set it as there (e.g. start from {parent_run.config})")
    if config.data.prepared_dir:
        raise UserError("training.init_from with data.prepared_dir: prepared shards carry a tokenizer of their own, "
                        "so fine-tune from the text files (leave data.prepared_dir unset)")
    if not parent_run.tokenizer.is_dir():
        raise UserError(f"{parent_run.tokenizer}: tokenizer folder missing; training.init_from needs the run directory "
                        "its checkpoint came from")
    return _Parent(checkpoint, parent_run, payload)


def _checkpoint_to_resume(config: Config, run: RunDir) -> dict[str, Any]:
    """``last.pt`` of the run, once it is clear that resuming it makes sense."""
    if not run.last.is_file():
        raise UserError(f"cannot resume {run}: no checkpoints/last.pt there; start it without --resume")
    payload = load_checkpoint(run.last)
    if "trainer" not in payload:
        raise UserError(f"{run.last}: holds no training state to resume from")
    _same_experiment(config, checkpoint_config(payload, run.last), run)
    state = TrainingState.from_checkpoint(payload)
    stop = state.limit_reached(config.training, out_of_time(config.training, state.elapsed_s))
    finished = any(r.get("event") == "end" and r.get("step") == state.step for r in _records(run))
    if stop is not None and finished:
        raise RunAlreadyFinished(
            f"{run} finished at step {state.step} ({stop.reason}); nothing to do. To train on, raise that limit: "
            f"s2s train --resume {run} training.{stop.key}={stop.raised:g}")
    return payload


def _records(run: RunDir) -> list[dict[str, Any]]:
    return read_metrics(run.metrics) if run.metrics.is_file() else []


def _same_experiment(config: Config, saved: Config, run: RunDir) -> None:
    """A resumed run may change how long it trains, not what it trains."""
    for section in ("data", "tokenizer", "model"):
        ours, theirs = dataclasses.asdict(getattr(config, section)), dataclasses.asdict(getattr(saved, section))
        for key in ours:
            if ours[key] != theirs[key]:
                raise UserError(f"cannot resume {run}: {section}.{key} is {ours[key]!r} but the run was "
                                f"trained with {theirs[key]!r}; drop the change or start a new run")


def _resumable(config: Config, resume_from: dict[str, Any], run: RunDir) -> Config:
    """The config a resumed run goes on with, once it is clear that it can: the same metric
    picks best.pt, and dev BLEU is split as its best so far was (``_same_bleu``)."""
    state = TrainingState.from_checkpoint(resume_from)
    _same_best_metric(config, state, run)
    return _same_bleu(config, state, run)


def _same_best_metric(config: Config, state: TrainingState, run: RunDir) -> None:
    """best.pt and patience go on comparing with the best of the metric that chose it so far."""
    metric = config.training.best_metric
    if metric != state.best_metric and state.best_score != -math.inf:
        raise UserError(f"cannot resume {run}: its best checkpoint was chosen by dev {DEV_METRICS[state.best_metric]} "
                        f"(step {state.best_step}), not {DEV_METRICS[metric]}; drop training.best_metric={metric}, "
                        f"or fine-tune from it in a new run (training.init_from={run})")


def _same_bleu(config: Config, state: TrainingState, run: RunDir) -> Config:
    """A resumed run scores dev BLEU as it did: best.pt, patience and the schedule compare each
    validation with its best so far. A run whose BLEU tokenizer was left to its target language
    keeps the one it was measured with (a run from before s2s chose by language used 13a)."""
    measured_with = state.bleu_tokenize
    if run_bleu_tokenizer(config) == measured_with or state.best_dev_bleu == -math.inf:  # or nothing measured yet
        return config
    if config.training.bleu_tokenize is not None:
        raise UserError(f"cannot resume {run}: its dev BLEU (best {state.best_dev_bleu:.2f}) was measured with "
                        f"sacreBLEU's {measured_with} tokenizer, and {config.training.bleu_tokenize} scores "
                        f"differently; drop training.bleu_tokenize={config.training.bleu_tokenize} or start a new run")
    return dataclasses.replace(config, training=dataclasses.replace(config.training, bleu_tokenize=measured_with))


def _warn_of_uncomposed_references(config: Config, texts: _Texts) -> None:
    """Dev and test BLEU compare the model's translations, written composed, with references
    as written: a reference file with accents as combining marks scores low for no fault of
    the model (``evaluation.composition_warnings``)."""
    for split, pair in (("dev", texts.dev), ("test", texts.test)):
        if pair is not None:
            references = f"the {split} references {split_files(config.data, split)[1]}"
            # The translations are composed: an empty text stands for them.
            for warning in composition_warnings([(references, pair[1]), ("the translations", [])]):
                log.warning(warning)


def _read_texts(config: Config) -> _Texts:
    data = config.data
    return _Texts(train=None if data.prepared_dir else read_split(data, "train"), dev=read_split(data, "dev"),
                  test=read_split(data, "test"))


def _start_fresh(config: Config, run: RunDir, overwrite: bool, texts: _Texts, parent: Optional[_Parent]) -> _Corpora:
    """A new run: the directory made ready, the tokenizer trained (or loaded: a fine-tuned run's
    parent's, or the shards') and saved."""
    reads = {"tokenizer.pretrained": config.tokenizer.pretrained, "model.bert_model": config.model.bert_model,
             "data.prepared_dir": config.data.prepared_dir}
    if parent is not None:
        reads.update({"training.init_from": parent.checkpoint, "the tokenizer of training.init_from": parent.run.tokenizer})
    run.start_fresh(overwrite, reads)
    sharded = _open_shards(config, writer=True)
    if parent is not None:
        tokenizers = Tokenizers.load(parent.run.tokenizer)
    elif sharded is not None:
        tokenizers = sharded.tokenizers()
    else:
        tokenizers = build_tokenizers(config.tokenizer, *texts.train)
    save_atomically(run.tokenizer, tokenizers.save)
    atomic_write_text(run.config, to_yaml(config))
    return _tokenize(config, run, tokenizers, sharded, texts)


def _continue(config: Config, run: RunDir, step: int, texts: _Texts) -> _Corpora:
    """A resumed run: its own tokenizer; the records after the saved step go (they are made again)."""
    sharded = _open_shards(config, writer=True)
    tokenizers = Tokenizers.load(run.tokenizer)
    truncate_metrics(run.metrics, step)
    atomic_write_text(run.config, to_yaml(config))
    log.info("resuming %s from step %d", run, step)
    return _tokenize(config, run, tokenizers, sharded, texts)


def _follow(config: Config, run: RunDir, texts: _Texts) -> _Corpora:
    """A torchrun process other than rank 0: the tokenizer, shards and corpus caches rank 0 wrote."""
    return _tokenize(config, run, Tokenizers.load(run.tokenizer), _open_shards(config, writer=False), texts)


def _open_shards(config: Config, writer: bool) -> Optional[shards.ShardedCorpus]:
    """With ``data.prepared_dir``, the training corpus as shards (the writer prepares missing ones)."""
    if not config.data.prepared_dir:
        return None
    if writer:
        shards.prepare(config)
    return shards.ShardedCorpus.open(config)


def _tokenize(config: Config, run: RunDir, tokenizers: Tokenizers, sharded: Optional[shards.ShardedCorpus],
              texts: _Texts) -> _Corpora:
    data = config.data
    if sharded is not None:
        if tokenizers.fingerprint() != sharded.meta["tokenizer_fingerprint"]:
            raise UserError(f"the tokenizer of {run} is not the one {data.prepared_dir} was prepared with; "
                            "train a new run on these shards")
        train_corpus = sharded
    else:
        train_corpus = tokenize_corpus(tokenizers, *split_files(data, "train"), data.cache_dir, texts.train,
                                       data.max_len, data.unknown_placeholders)
    dev = tokenize_corpus(tokenizers, *split_files(data, "dev"), data.cache_dir, texts.dev, data.max_len)
    test = (tokenize_corpus(tokenizers, *split_files(data, "test"), data.cache_dir, texts.test, data.max_len)
            if texts.test else None)
    return _Corpora(tokenizers, train_corpus, dev, test)


def _log_unknown_tokens(corpus: ParallelCorpus, tokenizers: Tokenizers, placeholders: float = 0.0) -> None:
    """Say how much of the training corpus the vocabulary reads as [UNK] (as fairseq-preprocess
    does), when any: words in another script, say, which translations cannot spell either, and
    the names and numbers ``data.unknown_placeholders`` writes as [UNK]."""
    counts = []
    for sequences, unk in ((corpus.src_ids, tokenizers.src_unk_id), (corpus.tgt_ids, tokenizers.tgt_unk_id)):
        total = sum(map(len, sequences))
        counts.append((sum(ids.count(unk) for ids in sequences) if unk is not None else 0, total))
    if any(unknown for unknown, _ in counts):
        (src_unk, src_total), (tgt_unk, tgt_total) = counts
        log.info("training pairs: %d of %d source tokens (%.2f%%) and %d of %d target tokens (%.2f%%) are [UNK]: "
                 "words with a character the vocabulary lacks%s (see README, Tokenization)",
                 src_unk, src_total, 100 * src_unk / max(src_total, 1), tgt_unk, tgt_total,
                 100 * tgt_unk / max(tgt_total, 1),
                 " and the shared names and numbers of data.unknown_placeholders" if placeholders else "")


def _make_trainer(config: Config, run: RunDir, corpora: _Corpora, device: torch.device, world: World,
                  resume_from: Optional[dict[str, Any]], parent: Optional[_Parent]) -> Trainer:
    tokenizers = corpora.tokenizers
    train_corpus, empty, too_long = filter_pairs(corpora.train, config.data.max_len)
    log.info("training pairs: %d kept, %d empty and %d longer than %d tokens dropped",
             len(train_corpus), empty, too_long, config.data.max_len)
    if not len(train_corpus):
        raise UserError(f"{split_files(config.data, 'train')[0]}: no training pairs left after filtering; "
                        f"check the files or raise data.max_len")
    if isinstance(train_corpus, ParallelCorpus):  # shards are not read whole for a log line
        _log_unknown_tokens(train_corpus, tokenizers, config.data.unknown_placeholders)
    _set_seed(config.training.seed)
    if resume_from is not None:
        model = Seq2Seq(config.model, **resume_from["model_args"])
    elif parent is not None:
        model = Seq2Seq(config.model, **parent.payload["model_args"])
        model.load_state_dict(parent.payload["model"])  # every process: the same start under torchrun
    else:
        bert = None
        if config.model.embed_type == "bert":
            bert = load_bert_embeddings(config.model.bert_model or config.tokenizer.pretrained)
        model = build_model(config.model, tokenizers.src_size, tokenizers.tgt_size, tokenizers.pad_id, bert)
    model = model.to(device)
    if world.rank:
        torch.manual_seed(config.training.seed + 1000 * world.rank)  # own dropout masks per process
    parameters = sum(p.numel() for p in model.parameters())
    if world.is_main:
        _check_disk_space(run, parameters, config.training.keep_last)
    log.info("device %s x %d process(es), %d parameters, vocab %d/%d, %d train / %d dev pairs, "
             "%d tokens per batch, run dir %s", device, world.size, parameters, tokenizers.src_size, tokenizers.tgt_size,
             len(train_corpus), len(corpora.dev), config.training.batch_tokens, run)
    batches = TokenBatches(train_corpus, tokenizers, config.training.batch_tokens, shuffle=True, seed=config.training.seed)
    trainer = Trainer(config, model, tokenizers, batches, corpora.dev, device, run, corpora.test, resume_from, world)
    trainer.record(event="resume" if resume_from is not None else "start", step=trainer.state.step,
                   epoch=trainer.state.epoch + 1, device=str(device), processes=world.size, parameters=parameters,
                   src_vocab_size=tokenizers.src_size, tgt_vocab_size=tokenizers.tgt_size, train_pairs=len(train_corpus),
                   dropped_empty=empty, dropped_too_long=too_long, dev_pairs=len(corpora.dev),
                   batch_tokens=config.training.batch_tokens, seed=config.training.seed,
                   cuda_graphs=trainer.graphed is not None, precision=resolve_precision(config.training.precision, device),
                   **({"init_from": str(parent.checkpoint), "init_from_step": parent.payload["step"]} if parent else {}))
    return trainer


def _set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _check_disk_space(run: RunDir, parameters: int, keep_last: int) -> None:
    """Fail before training when checkpoints cannot fit: best + ``keep_last`` states with Adam's
    two moments (``last.pt`` is the newest of them) + the temporary copy written before each
    rename, 4 bytes per number. A resumed run's checkpoints are replaced, so they count as room."""
    needed = parameters * 4 * (1 + 3 * keep_last + 3)
    existing = {}  # by inode: a step checkpoint is a hard link to the last.pt it was
    for path in (run.best, run.last, *run.step_checkpoints()):
        if path.is_file():
            info = path.stat()
            existing[info.st_dev, info.st_ino] = info.st_size
    more = needed - sum(existing.values())
    free = shutil.disk_usage(run.root).free
    if free < more:
        raise UserError(f"run directory {run} has {free / 2**20:.0f} MB free but checkpoints of this "
                        f"model need about {more / 2**20:.0f} MB more; free space, lower training.keep_last "
                        "or choose another --run-dir")
