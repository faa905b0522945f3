"""Configuration: a typed schema, YAML loading, command-line overrides and checks.

A config file is OmegaConf YAML merged onto the dataclasses below, so a misspelt key or a
string where a number belongs is caught when the file is read, named by its full path
(``training.batch_tokens``), not an hour into training.

Relative paths (data files, ``run_dir``, a pretrained tokenizer folder) are resolved against
the current working directory, as in JoeyNMT and fairseq: run ``s2s`` from the project root
and write ``data/toy/train.en``. The resolved config saved in a run directory holds absolute
paths.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from seq2seq_cli.errors import UserError


@dataclass
class DataConfig:
    """Parallel corpora: one sentence per line, line i of ``*_src`` translates line i of ``*_tgt``;
    or one tab-separated file per split (``*_tsv``: source, tab, target), as OPUS and Tatoeba
    ship them. Files ending in .gz, .xz or .bz2 are read as the text they compress."""

    train_src: Optional[str] = None
    train_tgt: Optional[str] = None
    dev_src: Optional[str] = None
    dev_tgt: Optional[str] = None
    test_src: Optional[str] = None
    test_tgt: Optional[str] = None
    train_tsv: Optional[str] = None
    dev_tsv: Optional[str] = None
    test_tsv: Optional[str] = None
    # Training pairs with more subword tokens than this on either side are dropped.
    max_len: int = 100
    # Where tokenized corpora are cached; None means $XDG_CACHE_HOME/s2s (~/.cache/s2s).
    cache_dir: Optional[str] = None
    # A folder for the training corpus tokenized into binary shards (``s2s prepare``). When
    # set, training reads batches from the shards instead of holding the text in memory, and
    # prepares them first if ``s2s prepare`` has not. For corpora of millions of pairs.
    prepared_dir: Optional[str] = None
    # The languages, as ISO 639-1 codes (de, en, ...): what s2s serve offers. None: the training
    # files' suffix when it is such a code (train.de -> de).
    src_lang: Optional[str] = None
    tgt_lang: Optional[str] = None
    # The share of training pairs whose shared names and numbers (a capitalised word or one
    # with a digit, written the same on both sides: "London", "2012") are read as [UNK] on
    # both sides, so the model learns to write [UNK] where its input has one, and s2s copies
    # the unknown source word there when translating ("Москва", "北京"). 0: none.
    unknown_placeholders: float = 0.0


SPLITS = ("train", "dev", "test")
# What a compressed corpus file's name ends in; it is read as the text it compresses.
COMPRESSED_SUFFIXES = (".gz", ".xz", ".bz2")


def split_files(data: DataConfig, split: str) -> Optional[tuple[str, str]]:
    """The (source, target) files of a split: its tab-separated file twice, or its two files;
    None for a split that is not set (only test may be missing)."""
    tsv = getattr(data, f"{split}_tsv")
    if tsv is not None:
        return tsv, tsv
    src, tgt = getattr(data, f"{split}_src"), getattr(data, f"{split}_tgt")
    return (src, tgt) if src is not None else None


def language_pair(data: DataConfig) -> tuple[Optional[str], Optional[str]]:
    """(source, target) language codes: the config's, else the training files' suffixes
    (train.de, or train.de.gz; a tab-separated file names no language)."""

    def code(explicit: Optional[str], path: Optional[str]) -> Optional[str]:
        if explicit or path is None:
            return explicit
        name = Path(path)
        if name.suffix in COMPRESSED_SUFFIXES:
            name = name.with_suffix("")
        suffix = name.suffix[1:]
        return suffix if LANGUAGE_CODE.fullmatch(suffix) else None

    return code(data.src_lang, data.train_src), code(data.tgt_lang, data.train_tgt)


LANGUAGE_CODE = re.compile(r"[a-z]{2}")


@dataclass
class TokenizerConfig:
    """A BERT WordPiece tokenizer: loaded (``pretrained``) or trained on the training corpus."""

    # A folder written by ``save_pretrained`` or a model name in the local Hugging Face cache.
    pretrained: Optional[str] = None
    vocab_size: int = 8000
    min_frequency: int = 2
    # One vocabulary for both languages: German and English share names, numbers and many
    # subwords, and a joint vocabulary keeps them one token each on both sides.
    shared_vocab: bool = True
    lowercase: bool = False


@dataclass
class ModelConfig:
    """Bidirectional LSTM encoder, additive attention, GRU decoder."""

    embed_dim: int = 256
    hidden_size: int = 512
    encoder_layers: int = 1
    # Size of the additive attention's hidden layer; 0 means hidden_size.
    attention_dim: int = 0
    dropout: float = 0.3
    # rand: learned from scratch; bert: initialised from a pretrained BertModel's word embeddings.
    embed_type: str = "rand"
    # The BertModel for embed_type=bert; None means the same path/name as tokenizer.pretrained.
    bert_model: Optional[str] = None
    # N > 0: a tanh layer from [gru output; context; embedding] down to N units before the
    # vocabulary projection (Luong-style). The default because it shrinks the largest matmul,
    # the one over the vocabulary; 0: project straight to the vocabulary.
    output_dim: int = 256
    # Share weights between embeddings and the output projection (Press & Wolf 2017):
    # none; output (target embedding = output projection, needs output_dim == embed_dim);
    # all (also the source embedding, needs one shared vocabulary).
    tie_embeddings: str = "none"


@dataclass
class TrainingConfig:
    # Fine-tuning: a run directory (its best checkpoint) or checkpoint file whose weights this
    # run starts from. Its tokenizer is used and its model sizes must be this config's;
    # optimizer, schedule, step and best score start fresh.
    init_from: Optional[str] = None
    seed: int = 42
    # auto (CUDA when available), cpu, cuda or cuda:N.
    device: str = "auto"
    # CPU threads for PyTorch; 0 keeps PyTorch's default.
    num_threads: int = 0
    # Stop at whichever limit comes first; 0 means no limit (max_epochs must then be set).
    max_steps: int = 0
    max_epochs: int = 10
    max_minutes: float = 0.0
    # Tokens per batch, padding included, counted on the longer side of each pair.
    batch_tokens: int = 4096
    # Batches whose gradients add up to one update (fairseq's --update-freq): an update of N x
    # batch_tokens in the memory of one batch, e.g. a recipe for N GPUs on one. Steps, and the
    # limits, validation and saving counted in them, are updates.
    batches_per_update: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    clip_grad_norm: float = 1.0
    # constant | plateau (decay when the plateau_metric stops improving) | inverse_sqrt (after warm-up)
    lr_schedule: str = "plateau"
    warmup_steps: int = 0
    lr_decay_factor: float = 0.5
    lr_decay_patience: int = 2
    # What the plateau schedule watches: dev BLEU or chrF (higher is better) or dev loss (lower
    # is better). BLEU can creep up for thousands of steps after the loss has stopped falling,
    # which keeps the rate high for that long; the loss says sooner that a decay is due.
    plateau_metric: str = "bleu"
    min_learning_rate: float = 1e-5
    label_smoothing: float = 0.1
    # Probability of feeding the gold previous token to the decoder (1.0 = always).
    teacher_forcing_ratio: float = 1.0
    # Validate every N steps; 0 means at the end of every epoch.
    validate_every: int = 1000
    # Write checkpoints/last every N steps; 0 means at every validation only.
    save_every: int = 0
    keep_last: int = 1
    # Stop after this many validations without a better best_metric; 0 disables early stopping.
    patience: int = 0
    # What picks checkpoints/best.pt and counts for patience: dev BLEU, dev chrF (sacreBLEU's
    # chrF2, kinder to languages rich in word forms) or dev loss (lower is better).
    best_metric: str = "bleu"
    # sacreBLEU's tokenizer for dev and test BLEU (13a, intl, char, zh, ja-mecab, ...); none:
    # as sacrebleu -l picks it for the target language (zh, ja-mecab, ko-mecab, else 13a).
    bleu_tokenize: Optional[str] = None
    log_every: int = 100
    # Also log the scalars of metrics.jsonl to RUN/tensorboard (needs the tensorboard extra).
    tensorboard: bool = False
    # Stop (keeping the last good checkpoint) after this many non-finite losses in a row.
    max_nonfinite_steps: int = 5
    # auto: bf16 autocast on CUDA, fp32 on the CPU; fp32; bf16 (on the CPU: faster on CPUs with
    # AVX512-BF16 or AMX, refused on CPUs without bf16 arithmetic, and still the same run for
    # the same seed on the same machine).
    precision: str = "auto"
    # auto: on CUDA (one process), replay each training step from a CUDA graph, batches padded
    # to a few dozen fixed shapes; off: launch every operation from Python (the eager step).
    cuda_graphs: str = "auto"


@dataclass
class DecodingConfig:
    beam_size: int = 1
    length_penalty: float = 1.0
    # Hypotheses stop at max_length_ratio * source length + max_length_offset tokens.
    max_length_ratio: float = 1.5
    max_length_offset: int = 10
    # Never produce the same n-gram of this many tokens twice in one hypothesis (0 = off).
    no_repeat_ngram_size: int = 0
    # Sentences per batch when translating and validating.
    batch_size: int = 64
    # auto: on CUDA, replay each batch shape's decoder steps from a CUDA graph (search_graphs).
    # Off by default until measured on a GPU.
    cuda_graphs: str = "off"


@dataclass
class Config:
    run_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply ``key=value`` overrides, check it and resolve its paths."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found: pass an existing YAML file to --config")
    try:
        text = path.read_text(encoding="utf-8")
        loaded = yaml.safe_load(text)
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        # The parser notices some mistakes (a missing ':', an open quote) only on a later line;
        # its context mark is where the offending token started, the line to fix.
        where = getattr(err, "context_mark", None) or getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}:{line} malformed YAML: {problem}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: a config must be a YAML mapping of sections, got {type(loaded).__name__}")
    config = _merge(loaded, overrides, source=str(path))
    check_config(config, source=str(path), overrides=overrides)
    return resolve_paths(config)


def config_from_dict(values: dict[str, Any], source: str = "config") -> Config:
    """Build and check a Config from a plain dict (a checkpoint's or a saved run's config)."""
    config = _merge(values, (), source=source)
    check_config(config, source=source)
    return config


def _merge(values: dict[str, Any], overrides, source: str) -> Config:
    """The schema, then the file's values, then each override: an error names where the bad key came from."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UserError(f"override {item!r} is not KEY=VALUE (e.g. training.max_steps=200)")
    merged = _omegaconf(lambda: OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(values)), source)
    for item in overrides:
        merged = _omegaconf(lambda: OmegaConf.merge(merged, OmegaConf.from_dotlist([item])),
                            f"command-line override {item}")
    if overrides:
        source = f"{source} (with command-line overrides)"
    return _omegaconf(lambda: OmegaConf.to_object(merged), source)


def _omegaconf(operation, source: str):
    try:
        return operation()
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
        message = str(err).splitlines()[0]
        raise UserError(f"{source}: {key}: {message}") from None


# The dev metrics training.best_metric and plateau_metric may name, as logs name them.
DEV_METRICS = {"bleu": "BLEU", "chrf": "chrF", "loss": "loss"}

# Each entry: key path, a test the value must pass, what it must be.
_RULES: list[tuple[str, Any, str]] = [
    ("data.max_len", lambda v: v >= 1, "a positive number of tokens"),
    ("data.unknown_placeholders", lambda v: 0.0 <= v <= 1.0, "a share of the training pairs, in [0, 1]"),
    ("tokenizer.vocab_size", lambda v: v >= 10, "at least 10"),
    ("tokenizer.min_frequency", lambda v: v >= 1, "at least 1"),
    ("model.embed_dim", lambda v: v >= 1, "positive"),
    ("model.hidden_size", lambda v: v >= 1, "positive"),
    ("model.encoder_layers", lambda v: v >= 1, "at least 1"),
    ("model.attention_dim", lambda v: v >= 0, "0 (= hidden_size) or positive"),
    ("model.dropout", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("model.embed_type", lambda v: v in ("rand", "bert"), "'rand' or 'bert'"),
    ("model.output_dim", lambda v: v >= 0, "0 (direct projection) or positive"),
    ("model.tie_embeddings", lambda v: v in ("none", "output", "all"), "'none', 'output' or 'all'"),
    ("training.num_threads", lambda v: v >= 0, "0 (PyTorch default) or positive"),
    ("training.max_steps", lambda v: v >= 0, "0 (no limit) or positive"),
    ("training.max_epochs", lambda v: v >= 0, "0 (no limit) or positive"),
    ("training.max_minutes", lambda v: v >= 0 and math.isfinite(v), "0 (no limit) or positive"),
    ("training.batch_tokens", lambda v: v >= 1, "positive"),
    ("training.batches_per_update", lambda v: v >= 1, "at least 1"),
    ("training.learning_rate", lambda v: v > 0 and math.isfinite(v), "positive"),
    ("training.weight_decay", lambda v: v >= 0, "0 or positive"),
    ("training.clip_grad_norm", lambda v: v >= 0, "0 (off) or positive"),
    ("training.lr_schedule", lambda v: v in ("constant", "plateau", "inverse_sqrt"),
     "'constant', 'plateau' or 'inverse_sqrt'"),
    ("training.warmup_steps", lambda v: v >= 0, "0 or positive"),
    ("training.lr_decay_factor", lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    ("training.lr_decay_patience", lambda v: v >= 0, "0 or positive"),
    ("training.plateau_metric", lambda v: v in DEV_METRICS, "'bleu', 'chrf' or 'loss'"),
    ("training.best_metric", lambda v: v in DEV_METRICS, "'bleu', 'chrf' or 'loss'"),
    ("training.min_learning_rate", lambda v: v >= 0, "0 or positive"),
    ("training.label_smoothing", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("training.teacher_forcing_ratio", lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    ("training.validate_every", lambda v: v >= 0, "0 (every epoch) or positive"),
    ("training.save_every", lambda v: v >= 0, "0 (at validation) or positive"),
    ("training.keep_last", lambda v: v >= 1, "at least 1"),
    ("training.patience", lambda v: v >= 0, "0 (off) or positive"),
    ("training.log_every", lambda v: v >= 1, "positive"),
    ("training.max_nonfinite_steps", lambda v: v >= 1, "at least 1"),
    ("training.cuda_graphs", lambda v: v in ("auto", "off"), "'auto' or 'off'"),
    ("training.precision", lambda v: v in ("auto", "fp32", "bf16"), "'auto', 'fp32' or 'bf16'"),
    ("training.bleu_tokenize", lambda v: v is None or v in _bleu_tokenizers(),
     "null (by the target language) or one of sacreBLEU's BLEU tokenizers (13a, intl, char, zh, ...)"),
    ("decoding.beam_size", lambda v: v >= 1, "at least 1"),
    ("decoding.length_penalty", lambda v: v >= 0, "0 or positive"),
    ("decoding.max_length_ratio", lambda v: v > 0, "positive"),
    ("decoding.max_length_offset", lambda v: v >= 0, "0 or positive"),
    ("decoding.no_repeat_ngram_size", lambda v: v >= 0, "0 (off) or positive"),
    ("decoding.batch_size", lambda v: v >= 1, "positive"),
    ("decoding.cuda_graphs", lambda v: v in ("auto", "off"), "'auto' or 'off'"),
]


def check_decoding_settings(decoding: DecodingConfig) -> None:
    """The ``decoding`` rules, for settings given in code rather than in a config file (the
    Python API's ``beam_size=...``), where no schema has checked their types."""
    for item in dataclasses.fields(decoding):
        value = getattr(decoding, item.name)
        expected = {"int": numbers.Integral, "float": numbers.Real, "str": str}[item.type]  # numpy's too
        if isinstance(value, bool) or not isinstance(value, expected):
            raise UserError(f"{item.name} must be {item.type}, got {value!r}")
    for key, test, expected in _RULES:
        section, name = key.split(".")
        if section == "decoding" and not test(getattr(decoding, name)):
            raise UserError(f"{name} must be {expected}, got {getattr(decoding, name)!r}")


def _bleu_tokenizers() -> tuple[str, ...]:
    from sacrebleu.metrics import BLEU

    return tuple(BLEU.TOKENIZERS)


def get_key(config: Config, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def check_config(config: Config, source: str = "config", overrides: tuple[str, ...] | list[str] = ()) -> None:
    """Reject values that type-check but cannot work, naming the key and where it was set: the
    file ``source``, or the command-line override that set it."""
    set_by = {item.split("=", 1)[0].strip(): item for item in overrides}
    for key, test, expected in _RULES:
        value = get_key(config, key)
        if not test(value):
            where = f"command-line override {set_by[key]}" if key in set_by else source
            raise UserError(f"{where}: {key} must be {expected}, got {value!r}")
    if overrides:  # what follows weighs keys together, which may come from both
        source = f"{source} (with command-line overrides)"
    training = config.training
    if training.max_steps == 0 and training.max_epochs == 0 and training.max_minutes == 0:
        raise UserError(f"{source}: training.max_steps, max_epochs and max_minutes are all 0; "
                        "set at least one limit")
    if config.model.embed_type == "bert" and not (config.model.bert_model or config.tokenizer.pretrained):
        raise UserError(f"{source}: model.embed_type=bert needs model.bert_model or tokenizer.pretrained")
    if config.model.embed_type == "bert" and not config.tokenizer.pretrained:
        raise UserError(f"{source}: model.embed_type=bert needs the model's own tokenizer: "
                        "set tokenizer.pretrained to the same BERT model")
    model = config.model
    if model.tie_embeddings != "none":
        if model.output_dim != model.embed_dim:
            raise UserError(f"{source}: model.tie_embeddings={model.tie_embeddings} shares the output projection "
                            f"with the embeddings, so model.output_dim ({model.output_dim}) must equal "
                            f"model.embed_dim ({model.embed_dim})")
        if model.embed_type != "rand":
            raise UserError(f"{source}: model.tie_embeddings needs model.embed_type=rand")
    if model.tie_embeddings == "all" and not (config.tokenizer.shared_vocab or config.tokenizer.pretrained):
        raise UserError(f"{source}: model.tie_embeddings=all needs one vocabulary for both languages "
                        "(tokenizer.shared_vocab: true)")
    device = training.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise UserError(f"{source}: training.device must be auto, cpu, cuda or cuda:N, got {device!r}")
    for key in ("src_lang", "tgt_lang"):
        value = getattr(config.data, key)
        if value is not None and not LANGUAGE_CODE.fullmatch(value):
            raise UserError(f"{source}: data.{key} must be a two-letter ISO 639-1 code such as de or en, got {value!r}")
    _check_splits(config.data, source)


def _check_splits(data: DataConfig, source: str) -> None:
    """Each split comes as two files or one tab-separated file, not both; train and dev are required."""
    for split in SPLITS:
        src, tgt, tsv = (getattr(data, f"{split}_{kind}") for kind in ("src", "tgt", "tsv"))
        if tsv is not None and (src is not None or tgt is not None):
            raise UserError(f"{source}: data.{split}_tsv holds both sides; drop data.{split}_src and data.{split}_tgt")
        if (src is None) != (tgt is None):
            raise UserError(f"{source}: set both data.{split}_src and data.{split}_tgt, or neither")
        if split != "test" and src is None and tsv is None:
            raise UserError(f"{source}: data.{split}_src and data.{split}_tgt (or data.{split}_tsv, one tab-separated "
                            "file) are required but not set")


def _absolute(path: Optional[str]) -> Optional[str]:
    return None if path is None else str(Path(path).expanduser().resolve())


def resolve_paths(config: Config) -> Config:
    """Make every relative path absolute against the current working directory."""
    data = config.data
    for name in ("train_src", "train_tgt", "dev_src", "dev_tgt", "test_src", "test_tgt", "train_tsv", "dev_tsv",
                 "test_tsv", "cache_dir", "prepared_dir"):
        setattr(data, name, _absolute(getattr(data, name)))
    config.run_dir = _absolute(config.run_dir)
    config.training.init_from = _absolute(config.training.init_from)
    # A pretrained tokenizer or model is a folder if one exists there, otherwise a hub name.
    for section, name in ((config.tokenizer, "pretrained"), (config.model, "bert_model")):
        value = getattr(section, name)
        if value is not None and Path(value).expanduser().exists():
            setattr(section, name, _absolute(value))
    return config


def check_training_files(config: Config, names: tuple[str, ...] = (
        "train_src", "train_tgt", "dev_src", "dev_tgt", "test_src", "test_tgt", "train_tsv", "dev_tsv",
        "test_tsv")) -> None:
    """Training needs its corpora (``data.<name>`` for each name); fail before any work if one is missing."""
    data = config.data
    for name in names:
        value = getattr(data, name)
        if value is not None and not Path(value).is_file():
            raise UserError(f"data.{name}: file {value} not found; check the path "
                            "(relative paths are read from the current directory)")


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
