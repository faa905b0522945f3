"""BERT WordPiece tokenizers: trained on the user's corpus, or loaded pretrained.

A trained vocabulary uses BERT's WordPiece model, special tokens and ``##`` continuation
pieces, with two changes that make translations come out as normal text:

* cased and accent-preserving (German output needs "fährt", not "fahrt");
* words are split on whitespace only. The stock BERT pre-tokenizer also splits punctuation
  into words of its own, which loses whether a space was there: "T-shirt" would come back as
  "T - shirt". Here punctuation stays inside its word ("T", "##-", "##shirt"), so
  ``decode(encode(line)) == line`` up to whitespace normalisation.

The pipeline is stored whole in ``tokenizer.json`` (``save_pretrained`` form), so
``AutoTokenizer.from_pretrained(run_dir / "tokenizer")`` rebuilds exactly this tokenizer; a
``vocab.txt`` is written beside it for tools that read BERT vocabularies.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from seq2seq_cli.config import TokenizerConfig
from seq2seq_cli.errors import UserError

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                  "sep_token": "[SEP]", "mask_token": "[MASK]"}


def _silence_transformers() -> None:
    # transformers warns about unrelated optional backends on import; keep stderr for our logs.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def train_wordpiece(lines: Iterable[str], vocab_size: int, min_frequency: int = 2,
                    lowercase: bool = False):
    """Train a reversible BERT WordPiece tokenizer on ``lines``."""
    from transformers import PreTrainedTokenizerFast

    _silence_transformers()
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, continuing_subword_prefix="##",
        special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False)
    tokenizer.train_from_iterator(lines, trainer)
    # The trainer numbers its initial alphabet in hash-map order, which changes from run to run;
    # renumber (specials first, then sorted) so a fixed seed gives the same ids and the same model.
    vocab = tokenizer.get_vocab()
    specials = list(SPECIAL_TOKENS.values())
    ordered = specials + sorted(token for token in vocab if token not in specials)
    tokenizer.model = models.WordPiece({token: i for i, token in enumerate(ordered)}, unk_token="[UNK]",
                                       continuing_subword_prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False,
                                   **SPECIAL_TOKENS)


def load_pretrained(name_or_path: str | Path, allow_download: bool = False):
    """Load any BERT tokenizer saved with ``save_pretrained`` (or cached by name), offline."""
    from transformers import AutoTokenizer

    _silence_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=not allow_download)
    except (OSError, ValueError) as err:
        raise UserError(f"tokenizer {name_or_path!s} could not be loaded ({str(err).splitlines()[0]}); "
                        "give a folder written by save_pretrained or a model in the local cache") from None
    # A saved tokenizer may carry truncation or padding settings; s2s encodes whole sentences.
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    for role in ("pad_token_id", "cls_token_id", "sep_token_id"):
        if getattr(tokenizer, role, None) is None:
            raise UserError(f"tokenizer {name_or_path!s} has no {role[:-3]}; s2s needs BERT's "
                            "[PAD], [CLS] (start) and [SEP] (end) tokens")
    return tokenizer


class Vocabularies:
    """The source and target tokenizers (one object when the vocabulary is shared).

    Sentences are encoded without special tokens; the data and decoding code add
    ``bos_id`` ([CLS]) and ``eos_id`` ([SEP]) where the model needs them.
    """

    def __init__(self, src, tgt):
        self.src = src
        self.tgt = tgt
        if (src.pad_token_id, src.sep_token_id) != (tgt.pad_token_id, tgt.sep_token_id):
            raise UserError("source and target tokenizers must use the same [PAD] and [SEP] ids")
        self.pad_id: int = tgt.pad_token_id
        self.bos_id: int = tgt.cls_token_id
        self.eos_id: int = tgt.sep_token_id

    @property
    def shared(self) -> bool:
        return self.src is self.tgt

    @property
    def src_size(self) -> int:
        return len(self.src)

    @property
    def tgt_size(self) -> int:
        return len(self.tgt)

    def encode_src(self, lines: Sequence[str]) -> list[list[int]]:
        return _encode(self.src, lines)

    def encode_tgt(self, lines: Sequence[str]) -> list[list[int]]:
        return _encode(self.tgt, lines)

    def decode_tgt(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        return self.tgt.batch_decode([list(s) for s in sequences], skip_special_tokens=True)

    def src_pieces(self, ids: Sequence[int]) -> list[str]:
        return self.src.convert_ids_to_tokens(list(ids))

    def tgt_pieces(self, ids: Sequence[int]) -> list[str]:
        return self.tgt.convert_ids_to_tokens(list(ids))

    def fingerprint(self) -> str:
        """A hash of the exact tokenization pipelines, used as part of the corpus cache key."""
        digest = hashlib.sha256()
        for tokenizer in (self.src, self.tgt):
            digest.update(tokenizer.backend_tokenizer.to_str().encode("utf-8"))
        return digest.hexdigest()[:16]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        if self.shared:
            _save(self.src, folder)
        else:
            _save(self.src, folder / "source")
            _save(self.tgt, folder / "target")

    @classmethod
    def load(cls, folder: str | Path) -> "Vocabularies":
        folder = Path(folder)
        if (folder / "source").is_dir():
            return cls(load_pretrained(folder / "source"), load_pretrained(folder / "target"))
        shared = load_pretrained(folder)
        return cls(shared, shared)


def _encode(tokenizer, lines: Sequence[str]) -> list[list[int]]:
    if not lines:
        return []
    # The Rust tokenizer's batch call, without the transformers wrapper around it: the same
    # ids (no special tokens, no truncation), 1.5x faster on a million lines.
    encodings = tokenizer.backend_tokenizer.encode_batch(list(lines), add_special_tokens=False)
    return [encoding.ids for encoding in encodings]


def _save(tokenizer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    vocab = tokenizer.get_vocab()
    with open(folder / "vocab.txt", "w", encoding="utf-8") as handle:
        for token in sorted(vocab, key=vocab.__getitem__):
            handle.write(token + "\n")


def build_vocabularies(config: TokenizerConfig, train_src: Iterable[str],
                       train_tgt: Iterable[str]) -> Vocabularies:
    """Load the pretrained tokenizer, or train WordPiece vocabularies on the training corpus
    (lines in lists or streamed: each is read once)."""
    if config.pretrained:
        shared = load_pretrained(config.pretrained)
        return Vocabularies(shared, shared)
    options = dict(vocab_size=config.vocab_size, min_frequency=config.min_frequency,
                   lowercase=config.lowercase)
    if config.shared_vocab:
        shared = train_wordpiece(itertools.chain(train_src, train_tgt), **options)
        return Vocabularies(shared, shared)
    return Vocabularies(train_wordpiece(train_src, **options), train_wordpiece(train_tgt, **options))
