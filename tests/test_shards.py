"""Prepared corpora: shards hold exactly the tokenized corpus, training from them equals
training from text, and an interrupted or damaged prepare is never used."""

import errno
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import seq2seq_cli.shards as shards
from seq2seq_cli.config import load_config
from seq2seq_cli.data import TokenBatches, filter_pairs, tokenize_corpus
from seq2seq_cli.errors import UserError
from seq2seq_cli.shards import ShardedCorpus, prepare
from seq2seq_cli.launch import train

from conftest import assert_user_error, s2s_forked, tiny_config, toy_lines, write_corpus


def sharded_config(tmp_path, **sections):
    return load_config(tiny_config(tmp_path, data={"prepared_dir": str(tmp_path / "prepared")}, **sections))


def test_shards_hold_exactly_the_tokenized_corpus(tmp_path):
    config = sharded_config(tmp_path)
    prepare(config, workers=2, shard_pairs=70)  # 400 pairs: 6 shards over 2 processes
    corpus = ShardedCorpus.open(config)
    assert len(corpus.meta["shards"]) == 6 and len(corpus) == 400
    tokenizers = corpus.tokenizers()
    text = tokenize_corpus(tokenizers, config.data.train_src, config.data.train_tgt)
    src, tgt = corpus.pairs(range(len(corpus)))
    assert src == text.src_ids and tgt == text.tgt_ids
    for ours, theirs in zip(corpus.lengths(), text.lengths()):
        assert ours.tolist() == theirs.tolist()
    # The same batches as the in-memory corpus, so the choice of path never changes a run.
    assert [b.tolist() for b in TokenBatches(corpus, tokenizers, 300, seed=4).epoch_batches(2)] == \
        [b.tolist() for b in TokenBatches(text, tokenizers, 300, seed=4).epoch_batches(2)]
    subset = corpus.subset(np.array([5, 0, 399]))
    assert subset.pairs([0, 1, 2])[1] == [text.tgt_ids[5], text.tgt_ids[0], text.tgt_ids[399]]


def test_a_line_of_megabytes_costs_a_worker_only_its_head(tmp_path, monkeypatch):
    """As from text: the giant line's pair is dropped all the same and the others hold their
    exact ids; shards prepared before lines were cut (every line whole) are still used."""
    from seq2seq_cli import tokenization

    en, de = toy_lines("train", 200)
    giant_en, giant_de = " ".join(en * 50), " ".join(de * 50)  # about 0.5 MB each
    src, tgt = write_corpus(tmp_path / "giant", "train", en[:100] + [giant_en] + en[100:],
                            de[:100] + [giant_de] + de[100:])
    config_file = tiny_config(tmp_path, data={"train_src": str(src), "train_tgt": str(tgt),
                                              "prepared_dir": str(tmp_path / "prepared")})
    config = load_config(config_file)
    read, encode = [], tokenization._encode
    monkeypatch.setattr(tokenization, "_encode", lambda tokenizer, lines: read.extend(map(len, lines)) or
                        encode(tokenizer, lines))
    prepare(config, workers=1)
    assert max(read) <= tokenization.HEAD_CHARACTERS_PER_TOKEN * shards.EXACT_TOKENS < len(giant_de)
    monkeypatch.undo()
    corpus = ShardedCorpus.open(config)
    kept, _, too_long = filter_pairs(corpus, config.data.max_len)
    text, _, text_too_long = filter_pairs(tokenize_corpus(corpus.tokenizers(), str(src), str(tgt)), config.data.max_len)
    assert too_long == text_too_long >= 1 and kept.pairs(range(len(kept))) == (text.src_ids, text.tgt_ids)
    # Cut lines are too long for any data.max_len up to 1024; a larger one needs other shards.
    assert len(ShardedCorpus.open(load_config(config_file, ["data.max_len=1024"]))) == 201
    with pytest.raises(UserError, match=r"or for another data.max_len over 1024\); run: s2s prepare"):
        ShardedCorpus.open(load_config(config_file, ["data.max_len=1025"]))
    meta_file = tmp_path / "prepared" / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["recipe"]["exact_tokens"]  # as written before lines were cut: every line whole
    meta_file.write_text(json.dumps(meta))
    assert len(ShardedCorpus.open(load_config(config_file, ["data.max_len=1025"]))) == 201


def test_training_from_shards_equals_training_from_text(tmp_path):
    # Empty and over-long pairs are in the corpus so that filtering is compared too.
    en, de = toy_lines("train", 400)
    en[3], de[7], en[11] = "", "", " ".join(["word"] * 40)
    training = {"max_steps": 8, "validate_every": 4, "log_every": 1}
    text_config = load_config(tiny_config(tmp_path / "text", training=training, data={"max_len": 30}))
    write_corpus(tmp_path / "text" / "corpus", "train", en, de)
    shard_config_file = tiny_config(tmp_path / "sharded", training=training, data={
        "max_len": 30, "prepared_dir": str(tmp_path / "sharded" / "prepared")})
    shard_config = load_config(shard_config_file)
    write_corpus(tmp_path / "sharded" / "corpus", "train", en, de)
    # Prepared in a process of its own: its tokenizer is trained there, the text run's here.
    subprocess.run([sys.executable, "-m", "seq2seq_cli", "prepare", "--config", str(shard_config_file),
                    "--workers", "1", "--shard-size", "64"], check=True, capture_output=True, timeout=300)
    text_summary, shard_summary = train(text_config), train(shard_config)
    assert text_summary["best_dev_bleu"] == shard_summary["best_dev_bleu"]
    text_weights = torch.load(f"{text_config.run_dir}/checkpoints/last.pt", weights_only=True)["model"]
    shard_weights = torch.load(f"{shard_config.run_dir}/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(text_weights[k], shard_weights[k]) for k in text_weights)


def test_training_prepares_missing_shards_itself(tmp_path):
    config = sharded_config(tmp_path)
    train(config)
    assert (tmp_path / "prepared" / "meta.json").is_file()
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()


def test_interrupted_prepare_is_never_used_and_continues(tmp_path, monkeypatch):
    config = sharded_config(tmp_path)
    real, calls = shards.tokenize_shard, []

    def crash_after_two(task):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(task["name"])
        return real(task)

    monkeypatch.setattr(shards, "tokenize_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare(config, workers=1, shard_pairs=100)
    data_dir = tmp_path / "prepared"
    assert not (data_dir / "meta.json").exists()
    assert not list(data_dir.glob(".*.tmp"))
    with pytest.raises(UserError, match="no finished prepared corpus"):
        ShardedCorpus.open(config)
    # A shard whose files are there but whose completion record is not is redone.
    (data_dir / "shard-00001.json").unlink()
    calls.clear()
    monkeypatch.setattr(shards, "tokenize_shard", lambda task: calls.append(task["name"]) or real(task))
    prepare(config, workers=1, shard_pairs=100)
    assert calls == ["shard-00001", "shard-00002", "shard-00003"]
    resumed = ShardedCorpus.open(config)
    fresh_config = load_config(tiny_config(tmp_path / "fresh", data={"prepared_dir": str(tmp_path / "fresh" / "p")}))
    prepare(fresh_config, workers=1, shard_pairs=100)
    fresh = ShardedCorpus.open(fresh_config)
    assert resumed.pairs(range(400)) == fresh.pairs(range(400))


def test_full_disk_is_a_clear_error_and_keeps_finished_shards(tmp_path, monkeypatch):
    config = sharded_config(tmp_path)
    real, writes = shards.atomic_write, []

    def fill_up(path, write):
        writes.append(path)
        if len(writes) > 8:  # plan, tokenizer, then two shards and a bit
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, write)

    monkeypatch.setattr(shards, "atomic_write", fill_up)
    with pytest.raises(UserError, match=r"\(No space left on device\); free space or choose another data.prepared_dir, "
                                        "then run s2s prepare again: finished shards are kept"):
        prepare(config, workers=1, shard_pairs=100)

    def read_only(path, write):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(shards, "atomic_write", read_only)
    with pytest.raises(UserError, match=r"\(Read-only file system\); fix that or choose another") as failed:
        prepare(config, workers=1, shard_pairs=100)
    assert "free space" not in str(failed.value)  # freeing space would not help
    monkeypatch.undo()
    assert (tmp_path / "prepared" / "shard-00000.json").is_file()
    assert not (tmp_path / "prepared" / "meta.json").exists()
    prepare(config, workers=1, shard_pairs=100)
    assert len(ShardedCorpus.open(config)) == 400


def test_damaged_or_stale_shards_are_refused(tmp_path):
    config = sharded_config(tmp_path)
    prepare(config, workers=1, shard_pairs=150)
    data_dir = tmp_path / "prepared"
    shard = data_dir / "shard-00001.tgt.bin"
    payload = shard.read_bytes()
    shard.write_bytes(payload[:-2])
    with pytest.raises(UserError, match="shard-00001 is missing or damaged"):
        ShardedCorpus.open(config)
    shard.write_bytes(payload)
    ShardedCorpus.open(config)
    # A changed training file makes the shards stale; prepare refuses to replace them unasked.
    with open(config.data.train_tgt, "a", encoding="utf-8") as handle:
        handle.write("Noch ein Satz.\n")
    with open(config.data.train_src, "a", encoding="utf-8") as handle:
        handle.write("One more sentence.\n")
    with pytest.raises(UserError, match="prepared from other training files"):
        ShardedCorpus.open(config)
    with pytest.raises(UserError, match="--overwrite"):
        prepare(config, workers=1)
    prepare(config, workers=1, overwrite=True)
    assert len(ShardedCorpus.open(config)) == 401


def test_prepare_reports_bad_files_by_line(tmp_path):
    config = sharded_config(tmp_path)
    lines = open(config.data.train_src, "rb").read().split(b"\n")
    lines[250] = b"caf\xe9"
    open(config.data.train_src, "wb").write(b"\n".join(lines))
    with pytest.raises(UserError, match=r"line 251 is not valid UTF-8"):
        prepare(config, workers=1, shard_pairs=100)
    open(config.data.train_src, "wb").write(b"\n".join(lines[:100]))
    with pytest.raises(UserError, match="has 100 lines but .* has 400"):
        prepare(config, workers=1, overwrite=True)


def test_prepare_cli(tmp_path):
    config = tiny_config(tmp_path)
    refused = s2s_forked("prepare", "--config", config)
    assert_user_error(refused, "data.prepared_dir is not set")
    assert refused.stderr.count(b"\n") == 1  # nothing else said
    command = [sys.executable, "-m", "seq2seq_cli", "prepare", "--config", str(config)]
    result = subprocess.run(command + ["--workers", "1", f"data.prepared_dir={tmp_path / 'bin'}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "bin" / "meta.json").is_file()


def test_byte_order_mark_and_crlf_read_as_in_text(tmp_path):
    config = sharded_config(tmp_path)
    for path in (config.data.train_src, config.data.train_tgt):
        raw = open(path, "rb").read()
        open(path, "wb").write(b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n"))
    prepare(config, workers=1, shard_pairs=100)
    corpus = ShardedCorpus.open(config)
    text = tokenize_corpus(corpus.tokenizers(), config.data.train_src, config.data.train_tgt)
    assert text.src_lines[0] == toy_lines("train", 1)[0][0]
    assert corpus.pairs(range(400)) == (text.src_ids, text.tgt_ids)
