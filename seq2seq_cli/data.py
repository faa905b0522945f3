"""Parallel corpora: reading, tokenizing (with a cache), filtering and token-count batching.

Reading is strict where a silent mistake would misalign the corpus: line counts must match,
bytes must be UTF-8, and lines are split on ``\\n`` only (``str.splitlines`` would also split
on U+2028 and friends, shifting every later pair). A UTF-8 BOM and CRLF line ends are
normalised and logged.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import itertools
import logging
import lzma
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from seq2seq_cli.config import COMPRESSED_SUFFIXES, DataConfig, split_files
from seq2seq_cli.errors import UserError
from seq2seq_cli.files import atomic_torch_save
from seq2seq_cli.tokenization import Tokenizers

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"
# A word as its punctuation before, its core, and its punctuation after.
_WORD_EDGES = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)

# Training corpora get each line's ids exactly up to this many tokens (or data.max_len, when
# larger): a longer line may get only the first of its ids, still too many for training to
# keep its pair, so a line of megabytes costs the tokenizer no gigabytes (Tokenizers.encode_src),
# and one tokenized corpus serves every data.max_len up to this.
EXACT_TOKENS = 1024


def exact_tokens(max_len: int) -> int:
    """Up to how many tokens a line's ids are exact in a corpus tokenized for ``max_len``."""
    return max(EXACT_TOKENS, max_len)


_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
assert tuple(_OPENERS) == COMPRESSED_SUFFIXES


def open_corpus(path: str | Path) -> BinaryIO:
    """A corpus file opened for reading bytes: the text it compresses when its name ends in
    .gz, .xz or .bz2 (streamed, so a compressed corpus is never held whole for this)."""
    return _OPENERS.get(Path(path).suffix, open)(path, "rb")


@contextmanager
def corpus_errors(path: str | Path) -> Iterator[None]:
    """Turn what reading (and decompressing) ``path`` can raise into a one-line UserError."""
    try:
        yield
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, EOFError, lzma.LZMAError) as err:
        suffix = Path(path).suffix
        if suffix in _OPENERS:
            raise UserError(f"{path}: cannot decompress it as {suffix[1:]} ({getattr(err, 'strerror', None) or err}); "
                            "check that the file is complete and of the kind its name says") from None
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None


def count_lines(path: str | Path) -> int:
    """How many lines a file (or the text it compresses) holds, a last line without a line end
    included, as ``read_lines`` and ``s2s translate`` count them; read in blocks, never whole."""
    with corpus_errors(path), open_corpus(path) as handle:
        return count_block_lines(iter(lambda: handle.read(1 << 20), b""))


def count_block_lines(blocks: Iterable[bytes]) -> int:
    """How many lines consecutive blocks of bytes hold, counted as ``count_lines`` does."""
    count, last = 0, b"\n"
    for block in blocks:
        count += block.count(b"\n")
        last = block[-1:]
    return count + (last != b"\n")


def read_lines(path: str | Path) -> list[str]:
    """Read a UTF-8 text file (or a compressed one) as a list of lines (without line ends)."""
    path = Path(path)
    with corpus_errors(path), open_corpus(path) as handle:
        raw = handle.read()
    if raw.startswith(BOM):
        log.info("%s: removed the UTF-8 byte-order mark", path)
    if b"\r\n" in raw:
        log.info("%s: converted CRLF line ends to LF", path)
    return decode_lines(raw, path)


def stream_lines(path: str | Path) -> Iterator[str]:
    """The lines of a file (or of the text it compresses) as ``read_lines`` gives them, read in
    blocks of 16 MB: a corpus of any size in constant memory."""
    first_line = 1
    with corpus_errors(path), open_corpus(path) as handle:
        while True:
            block = handle.readlines(1 << 24)
            if not block:
                return
            lines = decode_lines(b"".join(block), path, first_line)
            first_line += len(lines)
            yield from lines


def decode_lines(raw: bytes, path: str | Path, first_line: int = 1) -> list[str]:
    """The lines of UTF-8 bytes (split on ``\\n`` only, a CRLF's ``\\r`` dropped, no empty
    line after a final ``\\n``, a byte-order mark at the start of the file dropped); a
    decoding error names the file and line (``first_line`` is the number of the first line
    in ``raw``, for pieces of a file)."""
    if first_line == 1 and raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + raw.count(b"\n", 0, err.start)
        raise UserError(f"{path}: line {line} is not valid UTF-8 ({err.reason}); "
                        "convert the file to UTF-8 (e.g. iconv -t UTF-8)") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    """Read two line-aligned files; unequal line counts are an error, never a truncation."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise UserError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
                        "parallel files must have one line per sentence pair")
    if not src:
        raise UserError(f"{src_path} and {tgt_path} are empty; a corpus needs at least one pair")
    return src, tgt


def split_tsv_line(line: str, path: str | Path, number: int) -> tuple[str, str]:
    """(source, target) of a tab-separated line; any other number of columns is an error."""
    columns = line.split("\t")
    if len(columns) != 2:
        raise UserError(f"{path}: line {number} has {len(columns)} tab-separated column(s); a TSV corpus needs "
                        "exactly 2 (source, then target) on every line")
    return columns[0], columns[1]


def read_tsv(path: str | Path) -> tuple[list[str], list[str]]:
    """Source and target lines of one tab-separated file (column 1, column 2)."""
    lines = read_lines(path)
    if not lines:
        raise UserError(f"{path} is empty; a corpus needs at least one pair")
    pairs = [split_tsv_line(line, path, number) for number, line in enumerate(lines, 1)]
    return [src for src, _ in pairs], [tgt for _, tgt in pairs]


def read_split(data: DataConfig, split: str) -> Optional[tuple[list[str], list[str]]]:
    """The source and target lines of ``split`` (train, dev or test) as the config gives them;
    None when the split is not set."""
    files = split_files(data, split)
    if files is None:
        return None
    return read_tsv(files[0]) if getattr(data, f"{split}_tsv") is not None else read_parallel(*files)


@dataclass
class ParallelCorpus:
    """Token ids of a corpus, without special tokens; ``lines`` keep the raw text.

    Batching reads a corpus through ``lengths`` and ``pairs`` only, so a corpus kept on disk
    (``shards.ShardedCorpus``) can stand in for this in-memory one.
    """

    src_ids: list[list[int]]
    tgt_ids: list[list[int]]
    src_lines: list[str]
    tgt_lines: list[str]

    def __len__(self) -> int:
        return len(self.src_ids)

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Token counts of every source and target sentence: two (N,) int64 arrays."""
        return (np.fromiter(map(len, self.src_ids), dtype=np.int64, count=len(self)),
                np.fromiter(map(len, self.tgt_ids), dtype=np.int64, count=len(self)))

    def pairs(self, indices: Sequence[int]) -> tuple[list[list[int]], list[list[int]]]:
        return [self.src_ids[i] for i in indices], [self.tgt_ids[i] for i in indices]

    def subset(self, indices: Sequence[int]) -> "ParallelCorpus":
        return ParallelCorpus(*self.pairs(indices), [self.src_lines[i] for i in indices],
                              [self.tgt_lines[i] for i in indices])


def _file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "s2s"


def _flatten(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    flat = torch.tensor([t for s in sequences for t in s], dtype=torch.int32)
    return flat, lengths


def _unflatten(flat: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    return [chunk.tolist() for chunk in torch.split(flat, lengths.tolist())]


def tokenize_corpus(tokenizers: Tokenizers, src_path: str, tgt_path: str, cache_dir: Optional[str] = None,
                    lines: Optional[tuple[list[str], list[str]]] = None, max_len: Optional[int] = None,
                    unknown_placeholders: float = 0.0) -> ParallelCorpus:
    """Read and tokenize a parallel corpus, reusing a cached result for the same files and
    tokenizer (and ``exact_tokens(max_len)``).

    ``lines`` are the files' lines when the caller has already read them. With ``max_len``, a
    line's ids are exact up to ``exact_tokens(max_len)`` tokens; a longer line may get only the
    first of its ids (``Tokenizers.encode_src``), and ``filter_pairs`` drops its pair all the same.
    ``unknown_placeholders``: see ``with_unknown_placeholders`` (training pairs only)."""
    src_lines, tgt_lines = lines if lines is not None else read_parallel(src_path, tgt_path)
    limit = None if max_len is None else exact_tokens(max_len)
    cache_folder = Path(cache_dir) if cache_dir else default_cache_dir()
    # "folded", "composed": ids read through CharacterFolding and composed (``tokenization.composing``);
    # a cache written before either is not reused.
    recipe = f"{_file_digest(src_path)}:{_file_digest(tgt_path)}:{tokenizers.fingerprint()}:{limit}:folded:composed"
    if unknown_placeholders:  # absent when 0, so caches written before it are still read
        recipe += f":placeholders={unknown_placeholders}"
    key = hashlib.sha256(recipe.encode()).hexdigest()[:32]
    cache_file = cache_folder / f"corpus-{key}.pt"
    if cache_file.is_file():
        try:
            cached = torch.load(cache_file, weights_only=True)
            src_ids = _unflatten(cached["src_ids"], cached["src_lengths"])
            tgt_ids = _unflatten(cached["tgt_ids"], cached["tgt_lengths"])
            if len(src_ids) == len(src_lines):
                log.info("%s: tokenized corpus read from cache %s", src_path, cache_file)
                return ParallelCorpus(src_ids, tgt_ids, src_lines, tgt_lines)
        except Exception as err:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring unreadable corpus cache %s (%s)", cache_file, err)
    src_read, tgt_read = with_unknown_placeholders(src_lines, tgt_lines, unknown_placeholders,
                                                   tokenizers.unspellable_character() if unknown_placeholders else "")
    src_ids, tgt_ids = tokenizers.encode_src(src_read, limit), tokenizers.encode_tgt(tgt_read, limit)
    _write_cache(cache_file, src_ids, tgt_ids)
    return ParallelCorpus(src_ids, tgt_ids, src_lines, tgt_lines)


def with_unknown_placeholders(src_lines: Sequence[str], tgt_lines: Sequence[str], share: float,
                              placeholder: str = "", first_line: int = 1) -> tuple[list[str], list[str]]:
    """The pairs with, in ``share`` of those that have any, each name or number written the
    same in source and target (``data.unknown_placeholders``) written as ``placeholder``, a
    character the vocabularies lack (``Tokenizers.unspellable_character``), on both sides: the
    tokenizers read it as they read a word they cannot spell, [UNK] (with the punctuation on
    it, when they split at spaces only).

    Which pairs is fixed by their line numbers (``first_line`` is the first's), so shards
    tokenized apart and a corpus tokenized whole agree, and every run of a config trains on
    the same ids."""
    src_out, tgt_out = list(src_lines), list(tgt_lines)
    if share <= 0:
        return src_out, tgt_out
    for index, (source, target) in enumerate(zip(src_lines, tgt_lines)):
        # A multiplicative hash of the line number spreads the chosen pairs through the corpus.
        if ((first_line + index) * 2654435761) % 2 ** 32 >= share * 2 ** 32:
            continue
        shared = _copyable_words(source) & _copyable_words(target)
        if shared:
            src_out[index], tgt_out[index] = (_placeholders(source, shared, placeholder),
                                              _placeholders(target, shared, placeholder))
    return src_out, tgt_out


def _copyable_words(line: str) -> set[str]:
    """The words of ``line`` (punctuation at their ends left out) a translation copies: those
    starting with a capital letter or holding a digit."""
    cores = (_WORD_EDGES.match(word).group(2) for word in line.split())
    return {core for core in cores if core and (core[0].isupper() or any(c.isdigit() for c in core))}


def _placeholders(line: str, words: set[str], placeholder: str) -> str:
    """``line`` with each of ``words`` written as ``placeholder``, the punctuation around it and
    the spacing kept."""
    def written(match: re.Match) -> str:
        lead, core, trail = _WORD_EDGES.match(match.group()).groups()
        return f"{lead}{placeholder}{trail}" if core in words else match.group()

    return re.sub(r"\S+", written, line)


def _write_cache(cache_file: Path, src_ids: list[list[int]], tgt_ids: list[list[int]]) -> None:
    src_flat, src_lengths = _flatten(src_ids)
    tgt_flat, tgt_lengths = _flatten(tgt_ids)
    payload = {"src_ids": src_flat, "src_lengths": src_lengths, "tgt_ids": tgt_flat, "tgt_lengths": tgt_lengths}
    try:
        atomic_torch_save(cache_file, payload)
    except OSError as err:  # the cache only saves time; a read-only home must not stop training
        log.warning("could not write corpus cache %s (%s)", cache_file, err)


def filter_pairs(corpus, max_len: int):
    """Drop empty pairs and pairs longer than ``max_len`` tokens; return the corpus kept and
    the counts of empty and too-long pairs dropped."""
    src_lengths, tgt_lengths = corpus.lengths()
    empty = (src_lengths == 0) | (tgt_lengths == 0)
    too_long = ~empty & ((src_lengths > max_len) | (tgt_lengths > max_len))
    keep = np.flatnonzero(~(empty | too_long))
    return corpus.subset(keep), int(empty.sum()), int(too_long.sum())


def within_length(corpus, max_len: int):
    """The pairs of at most ``max_len`` tokens on both sides, and how many longer ones there are."""
    src_lengths, tgt_lengths = corpus.lengths()
    keep = (src_lengths <= max_len) & (tgt_lengths <= max_len)
    return corpus.subset(np.flatnonzero(keep)), int((~keep).sum())


@dataclass
class Batch:
    """A padded batch. Source sequences end in [SEP]; the decoder reads ``tgt_in``
    ([CLS] y1 .. yn) and is trained to predict ``tgt_out`` (y1 .. yn [SEP])."""

    src_ids: torch.Tensor  # (B, S)
    src_lengths: torch.Tensor  # (B,) int64, kept on the CPU for pack_padded_sequence
    tgt_in: torch.Tensor  # (B, T)
    tgt_out: torch.Tensor  # (B, T)
    n_tgt_tokens: int  # real (non-pad) target tokens, [SEP] included

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.src_ids.to(device, non_blocking=True), self.src_lengths,
                     self.tgt_in.to(device, non_blocking=True), self.tgt_out.to(device, non_blocking=True),
                     self.n_tgt_tokens)


def _padded(sequences: Sequence[Sequence[int]], pad_id: int, offset: int = 0,
            extra: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(B, offset + longest + extra) ids, each sequence written from column ``offset`` on, and
    the (B,) lengths. One vectorised fill: a boolean mask of the token cells is true in the
    same row-major order as the sequences concatenated."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    width = offset + int(lengths.max(initial=0)) + extra
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    columns = np.arange(width)
    cells = (columns >= offset) & (columns < offset + lengths[:, None])
    ids[cells] = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    return ids, lengths


def pad_sources(sequences: Sequence[Sequence[int]], pad_id: int, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append [SEP] to each source and pad: (B, S) ids and (B,) lengths."""
    ids, lengths = _padded(sequences, pad_id, extra=1)
    ids[np.arange(len(sequences)), lengths] = eos_id
    return torch.from_numpy(ids), torch.from_numpy(lengths + 1)


def collate(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], tokenizers: Tokenizers) -> Batch:
    src_ids, src_lengths = pad_sources(src, tokenizers.pad_id, tokenizers.eos_id)
    tgt_in, tgt_lengths = _padded(tgt, tokenizers.pad_id, offset=1)  # [CLS] y1 .. yn
    tgt_in[:, 0] = tokenizers.bos_id
    tgt_out, _ = _padded(tgt, tokenizers.pad_id, extra=1)  # y1 .. yn [SEP]
    tgt_out[np.arange(len(tgt)), tgt_lengths] = tokenizers.eos_id
    return Batch(src_ids, src_lengths, torch.from_numpy(tgt_in), torch.from_numpy(tgt_out),
                 int(tgt_lengths.sum()) + len(tgt))


def _length_step(length: int) -> int:
    """The rounding granule of a padded length: finer for short sentences, where it costs most."""
    return 4 if length <= 32 else 8 if length <= 64 else 16 if length <= 128 else 32


def rounded_up(length: int) -> int:
    """``length`` rounded up to its granule (``_length_step``): about an eighth more at most."""
    return -(-length // _length_step(length)) * _length_step(length)


def padded_shape(batch: Batch, batch_tokens: int) -> tuple[int, int, int]:
    """The fixed (sentences, source length, target length) that ``batch`` is padded to for a
    step replayed from a CUDA graph. Lengths round up to a multiple of 4 (8 above 32 tokens,
    16 above 64, 32 above 128), about an eighth at most; the sentences are as many as
    ``batch_tokens`` lets the narrowest batch of those rounded lengths hold, so that each pair
    of rounded lengths has one shape, and a corpus a few dozen."""
    sentences, src_len = batch.src_ids.shape
    src_len, tgt_len = rounded_up(src_len), rounded_up(batch.tgt_in.size(1))
    widest = max(src_len, tgt_len)
    narrowest = max(widest - _length_step(widest) + 1, 2)  # every sentence has a token and [SEP]
    return max(sentences, batch_tokens // narrowest), src_len, tgt_len


def pad_batch(batch: Batch, shape: tuple[int, int, int], tokenizers: Tokenizers) -> Batch:
    """``batch`` padded to ``shape``; the added rows are empty pairs (a source of one [SEP]
    and no target token), so the loss and its gradients are the batch's own."""
    sentences, src_len, tgt_len = shape
    rows, (real_src_len, real_tgt_len) = batch.src_ids.size(0), (batch.src_ids.size(1), batch.tgt_in.size(1))
    src_ids = torch.full((sentences, src_len), tokenizers.pad_id, dtype=torch.int64)
    src_ids[:rows, :real_src_len] = batch.src_ids
    src_ids[rows:, 0] = tokenizers.eos_id
    src_lengths = torch.ones(sentences, dtype=torch.int64)
    src_lengths[:rows] = batch.src_lengths
    tgt_in = torch.full((sentences, tgt_len), tokenizers.pad_id, dtype=torch.int64)
    tgt_in[:rows, :real_tgt_len] = batch.tgt_in
    tgt_in[rows:, 0] = tokenizers.bos_id
    tgt_out = torch.full((sentences, tgt_len), tokenizers.pad_id, dtype=torch.int64)
    tgt_out[:rows, :real_tgt_len] = batch.tgt_out
    return Batch(src_ids, src_lengths, tgt_in, tgt_out, batch.n_tgt_tokens)


class TokenBatches:
    """Batches of at most ``batch_tokens`` padded tokens, built from length-sorted sentences.

    Each epoch the corpus is shuffled (seeded by ``seed`` and the epoch), sorted by length
    with a stable sort so equal lengths stay in random order, cut into batches, and the
    batch order is shuffled. Sentences in a batch therefore have nearly equal lengths and
    padding stays small. The batch list of an epoch is a pure function of (seed, epoch).

    Only the length arrays are held here (numpy, vectorised), so an epoch of ten million
    pairs is planned in seconds and the sentences themselves are read batch by batch.
    """

    def __init__(self, corpus, tokenizers: Tokenizers, batch_tokens: int, shuffle: bool = True, seed: int = 0):
        self.corpus = corpus
        self.tokenizers = tokenizers
        self.batch_tokens = batch_tokens
        self.shuffle = shuffle
        self.seed = seed
        src_lengths, tgt_lengths = corpus.lengths()
        # +1 for [SEP] on the source and [CLS]/[SEP] on the target.
        self.src_lengths = src_lengths.astype(np.int32) + 1
        self.tgt_lengths = tgt_lengths.astype(np.int32) + 1

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches, each an array of corpus indices."""
        n = len(self.src_lengths)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=generator, dtype=torch.int32 if n < 2**31 else torch.int64).numpy()
        else:
            order = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
        # Stable sort by (target length, source length): ties keep their shuffled order.
        order = order[np.lexsort((self.src_lengths[order], self.tgt_lengths[order]))]
        widths = np.maximum(self.src_lengths, self.tgt_lengths)[order]
        batches, start = [], 0
        while start < n:
            # Grow the batch while (its longest sentence) x (its size) fits the budget; every
            # sentence is at least one token, so no batch holds more than batch_tokens of them.
            window = widths[start: start + self.batch_tokens]
            padded = np.maximum.accumulate(window) * np.arange(1, len(window) + 1, dtype=np.int64)
            over = np.flatnonzero(padded > self.batch_tokens)
            size = max(int(over[0]) if len(over) else len(window), 1)
            batches.append(order[start: start + size])
            start += size
        if self.shuffle:
            permutation = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[j] for j in permutation]
        return batches

    def make_batch(self, indices: Sequence[int]) -> Batch:
        return collate(*self.corpus.pairs(indices), self.tokenizers)

    def __iter__(self) -> Iterator[Batch]:
        for indices in self.epoch_batches(0):
            yield self.make_batch(indices)
