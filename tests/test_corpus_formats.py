"""Corpora as they are shipped: compressed (.gz, .xz, .bz2) and tab-separated (OPUS, Tatoeba).

Each is read as exactly the text of the plain two-file corpus, in training, ``s2s prepare``
and ``s2s evaluate``; a damaged file or a line with the wrong number of columns is a one-line
error naming the file (and line)."""

import bz2
import concurrent.futures
import gzip
import io
import lzma

import pytest
import yaml

from conftest import assert_user_error, s2s, s2s_forked, tiny_config, toy_lines, write_corpus
from seq2seq_cli.config import language_pair, load_config
from seq2seq_cli.data import read_lines, read_split, read_tsv, tokenize_corpus
from seq2seq_cli.errors import UserError
from seq2seq_cli.launch import train
from seq2seq_cli.metrics import read_metrics
from seq2seq_cli.shards import ShardedCorpus, prepare

COMPRESS = {".gz": gzip.compress, ".xz": lzma.compress, ".bz2": bz2.compress}


def both(first, second):
    """Two s2s commands at once (each spends ~2 s importing PyTorch), both succeeding."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda args: s2s(*args), (first, second)))
    for result in results:
        assert result.returncode == 0, result.stderr.decode()
    return results


def compressed_copy(path, suffix):
    target = path.with_name(path.name + suffix)
    target.write_bytes(COMPRESS[suffix](path.read_bytes()))
    return target


def tsv_file(path, src_lines, tgt_lines, suffix=""):
    text = "".join(f"{s}\t{t}\n" for s, t in zip(src_lines, tgt_lines)).encode("utf-8")
    path = path.with_name(path.name + suffix)
    path.write_bytes(COMPRESS[suffix](text) if suffix else text)
    return path


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".bz2"])
def test_a_compressed_file_reads_as_its_text(tmp_path, suffix):
    plain = tmp_path / "train.en"
    plain.write_bytes("\ufeffone\r\ntwo \u2028 still two\nthree\n".encode("utf-8"))
    assert read_lines(compressed_copy(plain, suffix)) == read_lines(plain) == ["one", "two \u2028 still two", "three"]


def test_damaged_compressed_files_are_one_line_errors(tmp_path):
    plain = tmp_path / "train.en"
    plain.write_text("a line\n" * 1000, encoding="utf-8")
    truncated = compressed_copy(plain, ".xz")
    truncated.write_bytes(truncated.read_bytes()[:-30])
    not_gzip = tmp_path / "train.de.gz"
    not_gzip.write_bytes(b"plain text pretending\n")
    for path in (truncated, not_gzip):
        with pytest.raises(UserError, match=rf"{path.name}: cannot decompress it as (xz|gz)") as err:
            read_lines(path)
        assert "\n" not in str(err.value)


def test_translation_input_is_read_decompressed_in_batches(tmp_path):
    """`s2s translate --input F.gz` reads lines through the decompressing stream: its descriptor
    would give the compressed bytes, translated as garbage."""
    from seq2seq_cli.data import open_corpus
    from seq2seq_cli.translation import read_line_batches

    plain = tmp_path / "test.en"
    plain.write_bytes(b"".join(b"line %d\n" % i for i in range(20000)) + b"no line end")
    expected = plain.read_bytes().split(b"\n")
    for suffix in ("", ".gz", ".xz", ".bz2"):
        path = compressed_copy(plain, suffix) if suffix else plain
        with open_corpus(path) as stream:
            batches = list(read_line_batches(stream, 64))
        assert [line for batch in batches for line in batch] == expected, suffix
        assert max(map(len, batches)) == 64
    assert [line for batch in read_line_batches(io.BytesIO(plain.read_bytes()), 7) for line in batch] == expected


def test_tab_separated_corpus(tmp_path):
    path = tsv_file(tmp_path / "pairs.tsv", ["ein Hund", "zwei"], ["a dog", "two"], ".gz")
    assert read_tsv(path) == (["ein Hund", "zwei"], ["a dog", "two"])
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nc\td\te\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.tsv: line 2 has 3 tab-separated column\(s\); a TSV corpus needs exactly 2"):
        read_tsv(bad)
    bad.write_text("a\tb\nno tab here\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.tsv: line 2 has 1 tab-separated"):
        read_tsv(bad)


def test_config_takes_a_split_as_two_files_or_one_tsv(tmp_path):
    config_path = tiny_config(tmp_path)
    values = yaml.safe_load(config_path.read_text())
    tsv = tsv_file(tmp_path / "train.tsv", *toy_lines("train", 20))
    config = load_config(config_path, ["data.train_src=null", "data.train_tgt=null", f"data.train_tsv={tsv}"])
    assert read_split(config.data, "train") == toy_lines("train", 20)
    assert language_pair(config.data) == (None, None)  # a TSV names no language; data.src_lang does
    with pytest.raises(UserError, match="data.train_tsv holds both sides; drop data.train_src and data.train_tgt"):
        load_config(config_path, [f"data.train_tsv={tsv}"])
    with pytest.raises(UserError, match=r"data.dev_src and data.dev_tgt \(or data.dev_tsv"):
        load_config(config_path, ["data.dev_src=null", "data.dev_tgt=null"])
    gz = compressed_copy(tmp_path / "corpus" / "train.en", ".gz")
    config = load_config(config_path, [f"data.train_src={gz}"])
    assert language_pair(config.data) == ("en", values["data"]["train_tgt"][-2:])


def test_training_prepare_and_evaluate_from_compressed_and_tsv_corpora(tmp_path):
    """The user's path: a gzipped TSV for training, xz dev files; prepare (shards), train, evaluate."""
    en, de = toy_lines("train", 400)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    train_tsv = tsv_file(corpus / "train.tsv", en, de, ".gz")
    dev_en, dev_de = write_corpus(corpus, "dev", *toy_lines("dev", 40))
    dev_files = [compressed_copy(path, ".xz") for path in (dev_en, dev_de)]
    config_file = tiny_config(tmp_path, data={
        "train_src": None, "train_tgt": None, "train_tsv": str(train_tsv), "dev_src": str(dev_files[0]),
        "dev_tgt": str(dev_files[1]), "src_lang": "en", "tgt_lang": "de", "prepared_dir": str(tmp_path / "prepared")})
    config = load_config(config_file)

    prepare(config, workers=2, shard_pairs=150)
    sharded = ShardedCorpus.open(config)
    plain_en, plain_de = write_corpus(tmp_path / "plain", "train", en, de)
    text = tokenize_corpus(sharded.tokenizers(), str(plain_en), str(plain_de))
    assert sharded.pairs(range(len(sharded))) == (text.src_ids, text.tgt_ids)
    assert (tmp_path / "prepared" / "plain.src").read_text(encoding="utf-8") == plain_en.read_text(encoding="utf-8")

    result = s2s("train", "--config", config_file)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    hypotheses = tmp_path / "hyp.de"
    info, translated = both(("info", tmp_path / "run"),
                            ("translate", "--checkpoint", tmp_path / "run", "--input", dev_en, "--output", hypotheses))
    assert f"{train_tsv} (400 pairs)" in info.stdout.decode()
    # Read as text instead of from the shards: the same run.
    in_memory = train(load_config(config_file, ["data.prepared_dir=null", f"run_dir={tmp_path / 'in_memory'}"]))
    assert in_memory["best_dev_bleu"] == read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["best_dev_bleu"]
    compressed_hyp = compressed_copy(hypotheses, ".bz2")
    reports = [*both(("evaluate", "--hyp", hypotheses, "--ref", dev_de),
                     ("evaluate", "--hyp", compressed_hyp, "--ref", dev_files[1])),
               *both(("evaluate", "--checkpoint", tmp_path / "run", "--src", dev_files[0], "--ref", dev_files[1]),
                     ("translate", "--checkpoint", tmp_path / "run", "--input", dev_files[0]))]
    for report in reports:
        assert report.returncode == 0, report.stderr.decode()
    assert reports.pop().stdout == hypotheses.read_bytes()  # translate --input test.en.xz reads the text
    assert reports[0].stdout == reports[1].stdout
    bleu_lines = [[line for line in r.stdout.decode().splitlines() if line.startswith("BLEU")] for r in reports]
    assert bleu_lines[2] == bleu_lines[0] and bleu_lines[0]

    # A changed compressed file is noticed: the shards are refused until prepared again.
    tsv_file(corpus / "train.tsv", en[:399], de[:399], ".gz")
    with pytest.raises(UserError, match="prepared from other training files"):
        ShardedCorpus.open(load_config(config_file))
    bad = tsv_file(corpus / "bad.tsv", en[:5] + ["no tab"], de[:6], ".gz")
    bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes()).replace(b"no tab\t", b"no tab ")))
    assert_user_error(s2s_forked("prepare", "--config", config_file, f"data.train_tsv={bad}", "data.prepared_dir="
                          f"{tmp_path / 'other'}"), "bad.tsv.gz: line 6 has 1 tab-separated column(s)")
