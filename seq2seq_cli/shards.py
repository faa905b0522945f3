"""Prepared corpora: a training corpus tokenized once into binary shards on disk.

``s2s prepare`` turns the training files into a data directory (``data.prepared_dir``)::

    DATA/tokenizer/              the tokenizer(s), as in a run directory
    DATA/plan.json               what is being prepared: files, tokenizer, shard boundaries
    DATA/shard-00000.src.bin     source token ids of the shard's pairs, back to back (uint16/32)
    DATA/shard-00000.tgt.bin     target token ids
    DATA/shard-00000.idx.npy     (pairs, 4) int64: source offset, source length, target offset, length
    DATA/shard-00000.json        written after the three files above: the shard is complete
    DATA/meta.json               written last: every shard is complete and training may use them

Shards are tokenized in parallel worker processes, each reading only its own byte ranges
of the two files. An interrupted prepare keeps its finished shards and redoes the rest when
run again, and since ``meta.json`` comes last, training never reads a half-written
directory. Training memory-maps the shards: only the length index is read into memory, and
each batch reads its own sentences, so a corpus of ten million pairs starts as quickly as
one of a million.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from seq2seq_cli.files import FolderLock, atomic_write, remedy, save_atomically
from seq2seq_cli.config import COMPRESSED_SUFFIXES, Config, check_training_files, split_files
from seq2seq_cli.data import (BOM, EXACT_TOKENS, corpus_errors, decode_lines, exact_tokens, open_corpus, split_tsv_line,
                              stream_lines, with_unknown_placeholders)
from seq2seq_cli.errors import UserError
from seq2seq_cli.rundir import RunDir
from seq2seq_cli.tokenization import LineStream, Tokenizers, build_tokenizers

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_SHARD_PAIRS = 100_000
# Every file of a data directory that s2s writes; --overwrite removes these and nothing else.
_OWN_FILES = ("meta.json", "plan.json", "shard-*", ".shard-*", "tokenizer", "plain.src", "plain.tgt", ".plain.*")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# -- preparing ------------------------------------------------------------------------------


def prepare(config: Config, workers: int = 0, shard_pairs: int = DEFAULT_SHARD_PAIRS,
            overwrite: bool = False) -> Path:
    """Tokenize ``config``'s training corpus into shards in ``data.prepared_dir``; return that folder.

    Does nothing when the folder already holds this corpus prepared with this tokenizer
    config, continues an interrupted prepare of it (with its first shard size), and refuses
    (unless ``overwrite``) to replace shards of anything else."""
    data_dir = _data_dir(config)
    if RunDir(data_dir).holds_run():  # its tokenizer/ would be replaced, and its checkpoints then misread
        raise UserError(f"data.prepared_dir {data_dir} holds a training run (config.yaml, checkpoints/), whose "
                        "tokenizer/ preparing would replace; give the shards a folder of their own")
    recipe = _recipe(config)
    meta = _finished_meta(data_dir, recipe)
    if meta is not None:
        log.info("%s: already prepared (%d pairs in %d shards)", data_dir, meta["pairs"], len(meta["shards"]))
        return data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create data.prepared_dir {data_dir} ({err.strerror})") from None
    # One writer at a time: a second prepare (or a training that prepares) is refused meanwhile.
    with FolderLock(data_dir, "s2s prepare"):
        _prepare_locked(config, data_dir, recipe, workers, shard_pairs, overwrite)
    return data_dir


def _finished_meta(data_dir: Path, recipe: dict[str, Any]) -> Optional[dict[str, Any]]:
    meta = _read_json(data_dir / "meta.json")
    return meta if _made_by(meta, recipe) else None


def _made_by(found: Optional[dict[str, Any]], recipe: dict[str, Any]) -> bool:
    """Whether ``found`` (a plan or meta) was made by ``recipe``. Shards from before
    ``exact_tokens`` hold every line's ids whole, exact for any data.max_len."""
    if found is None:
        return False
    made_with = found.get("recipe")
    return made_with == recipe or made_with == {key: value for key, value in recipe.items() if key != "exact_tokens"}


def _prepare_locked(config: Config, data_dir: Path, recipe: dict[str, Any], workers: int, shard_pairs: int,
                    overwrite: bool) -> None:
    meta = _read_json(data_dir / "meta.json")
    plan = _read_json(data_dir / "plan.json")
    if _made_by(meta, recipe):
        return  # finished by another process just before this one took the lock
    if any(found is not None and not _made_by(found, recipe) for found in (meta, plan)):
        if not overwrite:
            raise UserError(f"{data_dir} holds a corpus prepared from other files or tokenizer settings (or another "
                            f"data.max_len over {EXACT_TOKENS}); replace it with s2s prepare --config CONFIG "
                            "--overwrite, or set another data.prepared_dir")
        _remove_own_files(data_dir)
        plan = None
    started = time.perf_counter()
    try:
        if plan is None:
            plan = _make_plan(config, data_dir, recipe, shard_pairs)
        else:
            log.info("%s: continuing an interrupted prepare", data_dir)
            for leftover in data_dir.glob(".shard-*.tmp"):  # from a writer that was killed
                leftover.unlink(missing_ok=True)
        shards = _tokenize_shards(config, data_dir, plan, workers or default_workers())
        meta = {**plan, "pairs": sum(s["pairs"] for s in shards), "shards": shards}
        _write_json(data_dir / "meta.json", meta)
    except OSError as err:
        raise UserError(f"cannot write to {data_dir} ({err.strerror or err}); {remedy(err)} or choose another "
                        "data.prepared_dir, then run s2s prepare again: finished shards are kept") from None
    seconds = time.perf_counter() - started
    log.info("%s: %d pairs in %d shards prepared in %.1f s (%.0f pairs/s)", data_dir, meta["pairs"],
             len(shards), seconds, meta["pairs"] / max(seconds, 1e-9))


def _data_dir(config: Config) -> Path:
    if not config.data.prepared_dir:
        raise UserError("data.prepared_dir is not set; set it in the config or on the command line "
                        "(e.g. data.prepared_dir=data/prepared)")
    return Path(config.data.prepared_dir)


def _file_identity(path: str) -> dict[str, Any]:
    """Name, size and modification time: enough to notice a changed file without reading it."""
    stat = os.stat(path)
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _recipe(config: Config) -> dict[str, Any]:
    """Everything the shards' contents depend on; a prepared folder is reused only when it matches."""
    check_training_files(config, ("train_src", "train_tgt", "train_tsv"))
    src, tgt = split_files(config.data, "train")
    recipe = {"format": FORMAT_VERSION, "src": _file_identity(src), "tgt": _file_identity(tgt),
              "tsv": config.data.train_tsv is not None, "tokenizer": dataclasses.asdict(config.tokenizer),
              "exact_tokens": exact_tokens(config.data.max_len)}  # shards hold ids exact up to this
    if config.data.unknown_placeholders:  # absent when 0, so folders prepared before it still match
        recipe["unknown_placeholders"] = config.data.unknown_placeholders
    return recipe


def _plain_training_files(config: Config, data_dir: Path) -> tuple[str, str]:
    """Two plain text files that the workers can read at any byte offset: the training files
    themselves, or, for a compressed or tab-separated corpus, its two sides written once into
    the data folder (``plain.src``/``plain.tgt``, removed with it) by streaming the input."""
    src, tgt = split_files(config.data, "train")
    if config.data.train_tsv is None and not any(Path(path).suffix in COMPRESSED_SUFFIXES for path in (src, tgt)):
        return src, tgt
    plain = data_dir / "plain.src", data_dir / "plain.tgt"
    if all(path.is_file() for path in plain):  # written atomically, so complete
        return str(plain[0]), str(plain[1])
    for leftover in data_dir.glob(".plain.*.tmp"):  # from a writer that was killed
        leftover.unlink(missing_ok=True)
    started = time.perf_counter()
    if config.data.train_tsv is not None:
        _split_tsv(src, plain)
    else:
        for source, target in zip((src, tgt), plain):
            atomic_write(target, lambda out, source=source: out.writelines(_checked_lines(source)))
    log.info("%s: the training corpus written out as plain text in %.1f s (%s)", data_dir,
             time.perf_counter() - started, ", ".join(path.name for path in plain))
    return str(plain[0]), str(plain[1])


def _checked_lines(path: str, first_line: int = 1) -> Iterator[bytes]:
    """The file's lines as bytes, decompressed, each ending in ``\n``, checked to be UTF-8 here so
    that an error names this file and line (not the plain copy); a BOM and CRLF are dropped."""
    with corpus_errors(path), open_corpus(path) as handle:
        for number, line in enumerate(handle, first_line):
            if number == 1 and line.startswith(BOM):
                line = line[len(BOM):]
            line = line.rstrip(b"\n")
            if line.endswith(b"\r"):
                line = line[:-1]
            decode_lines(line, path, number)  # raises the named error
            yield line + b"\n"


def _split_tsv(path: str, plain: tuple[Path, Path]) -> None:
    """Write a tab-separated corpus's two columns to ``plain`` (source, target)."""
    def write(out_src, out_tgt):
        for number, line in enumerate(_checked_lines(path), 1):
            if line.count(b"\t") != 1:
                split_tsv_line(line[:-1].decode("utf-8"), path, number)  # raises the named error
            source, target = line.split(b"\t")
            out_src.write(source + b"\n")
            out_tgt.write(target)

    # Each side is written atomically, the source inside the target: the target is in place
    # only after the source is, and both only when the whole file was read.
    atomic_write(plain[1], lambda out_tgt: atomic_write(plain[0], lambda out_src: write(out_src, out_tgt)))


def _make_plan(config: Config, data_dir: Path, recipe: dict[str, Any], shard_pairs: int) -> dict[str, Any]:
    """Count the lines, fix the shards' byte ranges and train (or load) the tokenizer."""
    src_path, tgt_path = _plain_training_files(config, data_dir)
    src_starts, src_lines = _shard_offsets(src_path, shard_pairs)
    tgt_starts, tgt_lines = _shard_offsets(tgt_path, shard_pairs)
    if src_lines != tgt_lines:
        raise UserError(f"{src_path} has {src_lines} lines but {tgt_path} has {tgt_lines}; "
                        "parallel files must have one line per sentence pair")
    if not src_lines:
        raise UserError(f"{src_path} and {tgt_path} are empty; a corpus needs at least one pair")
    log.info("%s: %d pairs; building the tokenizer", data_dir, src_lines)
    tokenizers = build_tokenizers(config.tokenizer, LineStream(lambda: stream_lines(src_path)),
                                  LineStream(lambda: stream_lines(tgt_path)))
    save_atomically(data_dir / "tokenizer", tokenizers.save)
    id_dtype = "uint16" if max(tokenizers.src_size, tokenizers.tgt_size) <= 1 << 16 else "uint32"
    shards = []
    for number, (src_range, tgt_range) in enumerate(zip(zip(src_starts, src_starts[1:]), zip(tgt_starts, tgt_starts[1:]))):
        shards.append({"name": f"shard-{number:05d}", "first_line": number * shard_pairs + 1,
                       "src_bytes": list(src_range), "tgt_bytes": list(tgt_range)})
    plan = {"recipe": recipe, "tokenizer_fingerprint": tokenizers.fingerprint(), "id_dtype": id_dtype,
            "lines": src_lines, "shard_pairs": shard_pairs, "shards": shards}
    _write_json(data_dir / "plan.json", plan)
    return plan


def _shard_offsets(path: str, shard_pairs: int) -> tuple[list[int], int]:
    """Byte offsets where each shard of ``shard_pairs`` lines starts (and the end), and the line count."""
    starts, lines, position = [0], 0, 0
    try:
        with open(path, "rb") as handle:
            for line in handle:
                if lines == 0 and line.startswith(BOM):
                    log.info("%s: skipping the UTF-8 byte-order mark", path)
                lines += 1
                position += len(line)
                if lines % shard_pairs == 0:
                    starts.append(position)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    if starts[-1] != position:
        starts.append(position)
    return starts, lines


def _tokenize_shards(config: Config, data_dir: Path, plan: dict[str, Any], workers: int) -> list[dict[str, Any]]:
    """Tokenize every shard not finished yet, ``workers`` at a time, with a progress bar."""
    from tqdm import tqdm

    done = {}
    for shard in plan["shards"]:
        record = _read_json(data_dir / f"{shard['name']}.json")
        if record is not None and _shard_files_match(data_dir, record, plan["id_dtype"]):
            done[shard["name"]] = record
    src_path, tgt_path = _plain_training_files(config, data_dir)
    limit = plan["recipe"].get("exact_tokens")  # None in a plan from before it: whole lines
    tasks = [dict(shard, data_dir=str(data_dir), src_path=src_path, tgt_path=tgt_path, id_dtype=plan["id_dtype"],
                  exact_tokens=limit, unknown_placeholders=plan["recipe"].get("unknown_placeholders", 0.0))
             for shard in plan["shards"] if shard["name"] not in done]
    if done:
        log.info("%s: %d of %d shards already done", data_dir, len(done), len(plan["shards"]))
    progress = tqdm(total=plan["lines"], initial=sum(r["pairs"] for r in done.values()), unit="pair",
                    unit_scale=True, file=sys.stderr, disable=None, desc="prepare")
    try:
        if workers == 1 or len(tasks) <= 1:
            for task in tasks:
                record = tokenize_shard(task)
                done[record["name"]] = record
                progress.update(record["pairs"])
        else:
            # spawn, not fork: the parent may already run PyTorch and tokenizers threads.
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=get_context("spawn"),
                                     initializer=_worker_init) as pool:
                for record in pool.map(tokenize_shard, tasks):
                    done[record["name"]] = record
                    progress.update(record["pairs"])
    finally:
        progress.close()
    return [done[shard["name"]] for shard in plan["shards"]]


def _worker_init() -> None:
    # One process per core already: the tokenizer's own thread pool would only oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"


_worker_tokenizers: dict[str, Tokenizers] = {}


def tokenize_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Tokenize one shard's lines into its three files, then mark it complete (runs in a worker)."""
    data_dir = Path(task["data_dir"])
    if task["data_dir"] not in _worker_tokenizers:
        _worker_tokenizers[task["data_dir"]] = Tokenizers.load(data_dir / "tokenizer")
    tokenizers = _worker_tokenizers[task["data_dir"]]
    src_lines = _read_range(task["src_path"], task["src_bytes"], task["first_line"])
    tgt_lines = _read_range(task["tgt_path"], task["tgt_bytes"], task["first_line"])
    if len(src_lines) != len(tgt_lines):  # only if a file changed while we read it
        raise UserError(f"{task['src_path']} and {task['tgt_path']} changed during prepare; run it again")
    share = task.get("unknown_placeholders", 0.0)
    src_lines, tgt_lines = with_unknown_placeholders(src_lines, tgt_lines, share,
                                                     tokenizers.unspellable_character() if share else "",
                                                     task["first_line"])
    dtype = np.dtype(task["id_dtype"])
    name = task["name"]
    index = np.zeros((len(src_lines), 4), dtype=np.int64)
    tokens = {}
    for side, lines, encode, column in (("src", src_lines, tokenizers.encode_src, 0),
                                        ("tgt", tgt_lines, tokenizers.encode_tgt, 2)):
        ids = encode(lines, task["exact_tokens"])
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        index[:, column + 1] = lengths
        index[1:, column] = np.cumsum(lengths)[:-1]
        flat = np.fromiter((t for sentence in ids for t in sentence), dtype=dtype, count=int(lengths.sum()))
        _write_array(data_dir / f"{name}.{side}.bin", flat.tobytes())
        tokens[side] = int(lengths.sum())
    buffer = _npy_bytes(index)
    _write_array(data_dir / f"{name}.idx.npy", buffer)
    record = {"name": name, "pairs": len(src_lines), "src_tokens": tokens["src"], "tgt_tokens": tokens["tgt"]}
    _write_json(data_dir / f"{name}.json", record)
    return record


def _read_range(path: str, byte_range: Sequence[int], first_line: int) -> list[str]:
    start, end = byte_range
    with open(path, "rb") as handle:
        handle.seek(start)
        raw = handle.read(end - start)
    return decode_lines(raw, path, first_line)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _write_array(path: Path, payload: bytes) -> None:
    atomic_write(path, lambda out: out.write(payload))


def _write_json(path: Path, value: dict[str, Any]) -> None:
    atomic_write(path, lambda out: out.write(json.dumps(value, indent=1).encode("utf-8")))


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _shard_files_match(data_dir: Path, record: dict[str, Any], id_dtype: str) -> bool:
    """The shard's files exist with exactly the sizes its record says."""
    itemsize = np.dtype(id_dtype).itemsize
    try:
        sizes = {side: (data_dir / f"{record['name']}.{side}.bin").stat().st_size for side in ("src", "tgt")}
        index = np.load(data_dir / f"{record['name']}.idx.npy", mmap_mode="r")
    except (OSError, ValueError, KeyError):
        return False
    return (sizes["src"] == record["src_tokens"] * itemsize and sizes["tgt"] == record["tgt_tokens"] * itemsize
            and index.shape == (record["pairs"], 4))


def _remove_own_files(data_dir: Path) -> None:
    for pattern in _OWN_FILES:
        for path in data_dir.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


# -- reading --------------------------------------------------------------------------------


class ShardedCorpus:
    """A prepared training corpus, read from memory-mapped shards.

    Offers what batching needs (``lengths``, ``pairs``, ``subset``) like
    ``data.ParallelCorpus``. In memory are only the sentence lengths and the ids of the
    pairs in use (pair ``i`` is line ``i + 1`` of the training files): 12 bytes a pair.
    """

    def __init__(self, data_dir: Path, meta: dict[str, Any]):
        self.data_dir = data_dir
        self.meta = meta
        dtype = np.dtype(meta["id_dtype"])
        self._src, self._tgt, self._index = [], [], []
        src_lengths, tgt_lengths = [], []
        for shard in meta["shards"]:
            name = shard["name"]
            self._src.append(_memmap(data_dir / f"{name}.src.bin", dtype))
            self._tgt.append(_memmap(data_dir / f"{name}.tgt.bin", dtype))
            self._index.append(np.load(data_dir / f"{name}.idx.npy", mmap_mode="r"))
            # Copied one shard at a time, so the whole index is never in memory at once.
            index = np.load(data_dir / f"{name}.idx.npy")
            src_lengths.append(index[:, 1].astype(np.int32))
            tgt_lengths.append(index[:, 3].astype(np.int32))
        counts = [shard["pairs"] for shard in meta["shards"]]
        self._shard_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._src_lengths, self._tgt_lengths = np.concatenate(src_lengths), np.concatenate(tgt_lengths)
        total = int(self._shard_starts[-1])
        self.pair_ids = np.arange(total, dtype=np.int32 if total < 2**31 else np.int64)

    @classmethod
    def open(cls, config: Config) -> "ShardedCorpus":
        """The prepared corpus for ``config``; an error unless ``s2s prepare`` finished it for this config."""
        data_dir = _data_dir(config)
        meta = _read_json(data_dir / "meta.json")
        if meta is None:
            raise UserError(f"{data_dir} holds no finished prepared corpus; run: s2s prepare --config CONFIG")
        if not _made_by(meta, _recipe(config)):
            raise UserError(f"{data_dir} was prepared from other training files or tokenizer settings (or the files "
                            f"changed since, or for another data.max_len over {EXACT_TOKENS}); run: s2s prepare "
                            "--config CONFIG --overwrite")
        for shard in meta["shards"]:
            if not _shard_files_match(data_dir, shard, meta["id_dtype"]):
                raise UserError(f"{data_dir}: {shard['name']} is missing or damaged; "
                                "run: s2s prepare --config CONFIG --overwrite")
        return cls(data_dir, meta)

    def tokenizers(self) -> Tokenizers:
        """The tokenizer the shards were made with."""
        tokenizers = Tokenizers.load(self.data_dir / "tokenizer")
        if tokenizers.fingerprint() != self.meta["tokenizer_fingerprint"]:
            raise UserError(f"{self.data_dir}/tokenizer is not the tokenizer the shards were made with; "
                            "run: s2s prepare --config CONFIG --overwrite")
        return tokenizers

    def __len__(self) -> int:
        return len(self.pair_ids)

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Token counts of the source and target sentences: two (N,) int32 arrays."""
        return self._src_lengths[self.pair_ids], self._tgt_lengths[self.pair_ids]

    def pairs(self, indices: Sequence[int]) -> tuple[list[list[int]], list[list[int]]]:
        ids = self.pair_ids[np.asarray(indices, dtype=np.int64)].astype(np.int64)
        shards = np.searchsorted(self._shard_starts, ids, side="right") - 1
        src, tgt = [], []
        for shard, pair in zip(shards.tolist(), (ids - self._shard_starts[shards]).tolist()):
            src_offset, src_length, tgt_offset, tgt_length = self._index[shard][pair].tolist()
            src.append(self._src[shard][src_offset: src_offset + src_length].tolist())
            tgt.append(self._tgt[shard][tgt_offset: tgt_offset + tgt_length].tolist())
        return src, tgt

    def subset(self, indices: Sequence[int]) -> "ShardedCorpus":
        """The pairs at ``indices`` (of this corpus), sharing the open shards."""
        subset = copy.copy(self)
        subset.pair_ids = self.pair_ids[np.asarray(indices, dtype=np.int64)]
        return subset


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # mmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
