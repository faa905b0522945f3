import pytest
import torch

from seq2seq_cli.config import TokenizerConfig
from seq2seq_cli.data import (EXACT_TOKENS, ParallelCorpus, TokenBatches, collate, filter_pairs, read_lines,
                              read_parallel, tokenize_corpus)
from seq2seq_cli.errors import UserError
from seq2seq_cli.tokenization import build_tokenizers

from conftest import toy_lines, write_corpus


@pytest.fixture(scope="module")
def tokenizers():
    en, de = toy_lines("train", 500)
    return build_tokenizers(TokenizerConfig(vocab_size=300), en, de)


def test_unequal_line_counts(tmp_path):
    src, tgt = write_corpus(tmp_path, "c", ["a", "b"], ["x"])
    with pytest.raises(UserError, match=r"has 2 lines but .* has 1"):
        read_parallel(src, tgt)


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.en"
    path.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(UserError, match=r"bad.en: line 3 is not valid UTF-8"):
        read_lines(path)


def test_bom_crlf_and_unicode_line_separators(tmp_path):
    path = tmp_path / "x.en"
    path.write_bytes("\ufeffone\r\ntwo\u2028still two\r\nthree".encode("utf-8"))
    assert read_lines(path) == ["one", "two\u2028still two", "three"]


def test_empty_corpus_and_missing_file(tmp_path):
    src, tgt = write_corpus(tmp_path, "c", [], [])
    with pytest.raises(UserError, match="empty"):
        read_parallel(src, tgt)
    with pytest.raises(UserError, match="not found"):
        read_lines(tmp_path / "missing.en")


def test_filter_counts_empty_and_long_pairs():
    corpus = ParallelCorpus([[1], [], [1, 2, 3], [4]], [[1], [2], [3], []], ["a", "", "c", "d"], ["a", "b", "c", ""])
    kept, empty, too_long = filter_pairs(corpus, max_len=2)
    assert (len(kept), empty, too_long) == (1, 2, 1)


def test_collate_shapes_and_shifted_targets(tokenizers):
    batch = collate([[10, 11], [12]], [[20], [21, 22, 23]], tokenizers)
    assert batch.src_ids.tolist() == [[10, 11, tokenizers.eos_id], [12, tokenizers.eos_id, tokenizers.pad_id]]
    assert batch.src_lengths.tolist() == [3, 2]
    pad, bos, eos = tokenizers.pad_id, tokenizers.bos_id, tokenizers.eos_id
    assert batch.tgt_in.tolist() == [[bos, 20, pad, pad], [bos, 21, 22, 23]]
    assert batch.tgt_out.tolist() == [[20, eos, pad, pad], [21, 22, 23, eos]]
    assert batch.n_tgt_tokens == 6


def test_token_batches_cover_corpus_within_budget(tmp_path, tokenizers):
    src, tgt = write_corpus(tmp_path, "c", *toy_lines("train", 500))
    corpus = tokenize_corpus(tokenizers, str(src), str(tgt))
    batches = TokenBatches(corpus, tokenizers, batch_tokens=300, seed=3)
    epoch0 = [b.tolist() for b in batches.epoch_batches(0)]
    assert sorted(i for b in epoch0 for i in b) == list(range(len(corpus)))
    for indices in epoch0:
        batch = batches.make_batch(indices)
        assert len(indices) == 1 or max(batch.src_ids.numel(), batch.tgt_in.numel()) <= 300
    assert epoch0 == [b.tolist() for b in TokenBatches(corpus, tokenizers, 300, seed=3).epoch_batches(0)]  # (seed, epoch)
    assert epoch0 != [b.tolist() for b in batches.epoch_batches(1)]
    # Length bucketing keeps padding small.
    padded = sum(batches.make_batch(b).tgt_in.numel() for b in epoch0)
    real = sum(len(t) + 1 for t in corpus.tgt_ids)
    assert padded < 1.1 * real


def test_tokenized_corpus_is_cached(tmp_path, tokenizers, monkeypatch):
    src, tgt = write_corpus(tmp_path, "c", *toy_lines("dev", 50))
    first = tokenize_corpus(tokenizers, str(src), str(tgt), cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(type(tokenizers), "encode_src", lambda *a: pytest.fail("tokenized again"))
    second = tokenize_corpus(tokenizers, str(src), str(tgt), cache_dir=str(tmp_path / "cache"))
    assert second.src_ids == first.src_ids and second.tgt_ids == first.tgt_ids
    # A changed file is a different key: it is tokenized again.
    tgt.write_text(tgt.read_text(encoding="utf-8").replace("Der", "Die"), encoding="utf-8")
    monkeypatch.undo()
    third = tokenize_corpus(tokenizers, str(src), str(tgt), cache_dir=str(tmp_path / "cache"))
    assert third.tgt_ids != first.tgt_ids


def test_with_max_len_a_line_of_megabytes_is_read_by_its_head_and_still_dropped(tmp_path, tokenizers, monkeypatch):
    """Training tokenizes with data.max_len: a giant line (a document without newlines) costs the
    tokenizer its head only, its pair is still too long for filter_pairs, every other pair gets
    the ids it gets without a limit, and a cut line's cache is never read as whole."""
    from seq2seq_cli import tokenization

    en, de = toy_lines("train", 200)
    giant_en, giant_de = " ".join(en * 50), " ".join(de * 50)  # about 0.5 MB each
    src, tgt = write_corpus(tmp_path, "c", en[:100] + [giant_en] + en[100:], de[:100] + [giant_de] + de[100:])
    whole = tokenize_corpus(tokenizers, str(src), str(tgt), cache_dir=str(tmp_path / "cache"))
    read, encode = [], tokenization._encode
    monkeypatch.setattr(tokenization, "_encode", lambda tokenizer, lines: read.extend(map(len, lines)) or
                        encode(tokenizer, lines))
    limited = tokenize_corpus(tokenizers, str(src), str(tgt), cache_dir=str(tmp_path / "cache"), max_len=30)
    assert max(read) <= tokenization.HEAD_CHARACTERS_PER_TOKEN * EXACT_TOKENS < len(giant_de)  # none read whole
    for ours, full in ((limited.src_ids, whole.src_ids), (limited.tgt_ids, whole.tgt_ids)):
        assert ours[:100] + ours[101:] == full[:100] + full[101:]
        assert EXACT_TOKENS < len(ours[100]) < len(full[100]) and ours[100] == full[100][:len(ours[100])]
    kept, _, too_long = filter_pairs(limited, 30)
    assert too_long == filter_pairs(whole, 30)[2] and kept.src_ids == filter_pairs(whole, 30)[0].src_ids
    read.clear()  # one cache serves every data.max_len up to EXACT_TOKENS
    assert tokenize_corpus(tokenizers, str(src), str(tgt), cache_dir=str(tmp_path / "cache"), max_len=EXACT_TOKENS
                           ).src_ids == limited.src_ids and read == []
    monkeypatch.undo()
    assert tokenize_corpus(tokenizers, str(src), str(tgt), cache_dir=str(tmp_path / "cache")).src_ids == whole.src_ids


def reference_batches(src_lengths, tgt_lengths, batch_tokens, order):
    """The batching rule written sentence by sentence: sort stably by (target, source)
    length, then close a batch when one more sentence would exceed the padded budget."""
    order = sorted(order, key=lambda i: (tgt_lengths[i], src_lengths[i]))
    batches, current, longest = [], [], 0
    for i in order:
        width = max(src_lengths[i], tgt_lengths[i])
        if current and max(longest, width) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, width)
    return batches + [current] if current else batches


@pytest.mark.parametrize("batch_tokens", [1, 40, 300, 5000])
def test_vectorised_batching_equals_the_sentence_by_sentence_rule(batch_tokens, tokenizers):
    generator = torch.Generator().manual_seed(batch_tokens)
    src = [[7] * n for n in torch.randint(0, 50, (3000,), generator=generator).tolist()]
    tgt = [[7] * n for n in torch.randint(0, 50, (3000,), generator=generator).tolist()]
    corpus = ParallelCorpus(src, tgt, [""] * 3000, [""] * 3000)
    ours = [b.tolist() for b in TokenBatches(corpus, tokenizers, batch_tokens, shuffle=False).epoch_batches(0)]
    expected = reference_batches([len(s) + 1 for s in src], [len(t) + 1 for t in tgt], batch_tokens, range(3000))
    assert ours == expected
