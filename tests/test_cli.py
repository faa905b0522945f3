"""The command line as a user meets it: exit codes, one-line errors, pipes."""

import concurrent.futures
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import assert_user_error, assert_user_errors, s2s, s2s_forked, tiny_config, toy_lines, write_corpus


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cli")
    config = tiny_config(tmp_path, training={"max_steps": 4, "validate_every": 0})
    result = s2s("train", "--config", config, "--run-dir", tmp_path / "run")
    log = result.stderr.decode()
    assert result.returncode == 0, log
    # A summary before training, dev examples at validation, all on stderr.
    assert "parameters" in log and "tokens per batch" in log and f"run dir {tmp_path / 'run'}" in log
    assert "src: " in log and "ref: " in log and "hyp: " in log
    assert result.stdout == b""
    return tmp_path / "run"


def test_version():
    result = s2s("--version")
    assert result.returncode == 0 and result.stdout.decode().startswith("s2s ")


def test_train_user_errors(tmp_path):
    config = tiny_config(tmp_path)
    broken = yaml.safe_load(config.read_text())
    broken["data"]["dev_tgt"] = str(tmp_path / "missing.de")
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    assert_user_errors(
        (("train", "--config", tmp_path / "nope.yaml"), "nope.yaml not found"),
        (("train", "--config", config, "model.hidden_size=-1"), "model.hidden_size must be positive"),
        (("train", "--config", config, "training.bogus=1"), "training.bogus"),
        (("train", "--config", tmp_path / "broken.yaml"), "data.dev_tgt"))


def test_misaligned_corpus_is_refused(tmp_path):
    config = tiny_config(tmp_path)
    data = yaml.safe_load(config.read_text())["data"]
    Path(data["train_tgt"]).write_text("nur eine Zeile\n", encoding="utf-8")
    assert_user_error(s2s_forked("train", "--config", config), "parallel files must have one line per sentence pair")


def test_existing_run_dir_is_refused(trained_run, tmp_path):
    config = tiny_config(tmp_path)
    before = (trained_run / "checkpoints" / "last.pt").read_bytes()
    assert_user_error(s2s_forked("train", "--config", config, "--run-dir", trained_run), "--overwrite")
    assert (trained_run / "checkpoints" / "last.pt").read_bytes() == before


def test_translate_one_line_per_input_line(trained_run, tmp_path):
    lines = ["The man sees the dog.", "", "A woman reads a book today."]
    result = s2s("translate", "--checkpoint", trained_run, stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr.decode()
    assert len(result.stdout.decode("utf-8").split("\n")) == len(lines) + 1
    # From a checkpoint file and a file argument the result is the same (and CUDA graphs asked
    # for where there is no GPU change nothing).
    source = tmp_path / "in.en"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    again = s2s_forked("translate", "--checkpoint", trained_run / "checkpoints" / "best.pt", "--input", source,
                "--output", tmp_path / "out.de", "--cuda-graphs", "auto")
    assert again.returncode == 0, again.stderr.decode()
    assert (tmp_path / "out.de").read_bytes() == result.stdout


def test_translate_rejects_a_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "run" / "checkpoints" / "best.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")
    assert_user_error(s2s_forked("translate", "--checkpoint", tmp_path / "run"), "not a readable s2s checkpoint")


def test_evaluate_matches_sacrebleu_cli(tmp_path):
    refs = toy_lines("test", 100)[1]
    hyps = [line.replace("der", "die") if i % 3 else line for i, line in enumerate(refs)]
    hyp_path, ref_path = write_corpus(tmp_path, "x", hyps, refs, src="hyp", tgt="ref")
    ours = s2s_forked("evaluate", "--hyp", hyp_path, "--ref", ref_path, "--json", tmp_path / "report.json",
                      "--sentences", tmp_path / "sentences.tsv")
    assert ours.returncode == 0, ours.stderr.decode()
    reference = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref_path), "-i", str(hyp_path), "-m", "bleu",
                                "chrf", "ter", "-w", "2"], capture_output=True, check=True)
    # Each sentence's scores, as `sacrebleu -sl` gives them.
    header, *rows = [line.split("\t") for line in (tmp_path / "sentences.tsv").read_text().splitlines()]
    assert header == ["line", "bleu", "chrf"] and [row[0] for row in rows] == [str(i) for i in range(1, 101)]
    for column, metric in ((1, "bleu"), (2, "chrf")):
        sentence_level = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref_path), "-i", str(hyp_path), "-m",
                                         metric, "-sl", "-w", "4"], capture_output=True, check=True)
        assert [row[column] for row in rows] == [line.split(" = ", 1)[1].split()[0]
                                                 for line in sentence_level.stdout.decode().splitlines()]
    assert len({row[1] for row in rows}) > 2  # sentences that differ score differently
    expected = json.loads(reference.stdout)
    report = json.loads((tmp_path / "report.json").read_text())
    for key, metric in zip(("bleu", "chrf", "ter"), expected):
        assert (report[key]["name"], report[key]["score"], report[key]["signature"]) == \
            (metric["name"], metric["score"], metric["signature"])
        assert f"{metric['score']:7.2f}   {metric['signature']}" in ours.stdout.decode()
    assert f"ratio = {report['length_ratio']:.3f}" in expected[0]["verbose_score"]
    assert report["sentences"] == 100
    short = write_corpus(tmp_path, "y", hyps[:5], refs, src="hyp", tgt="ref")[0]
    assert_user_error(s2s_forked("evaluate", "--hyp", short, "--ref", ref_path), "has 5 lines")


def test_evaluate_warns_of_references_that_write_accents_otherwise(tmp_path):
    """References with accents written as combining marks (macOS) against composed translations:
    sacreBLEU counts those words wrong. The score stays sacreBLEU's; a warning says why and how
    to compose the file. Files written alike get none."""
    import unicodedata

    refs = toy_lines("test", 60)[1]
    decomposed = [unicodedata.normalize("NFD", line) for line in refs]
    count = sum(a != b for a, b in zip(refs, decomposed))
    hyp_path, ref_path = write_corpus(tmp_path, "x", refs, decomposed, src="hyp", tgt="ref")
    result = s2s_forked("evaluate", "--hyp", hyp_path, "--ref", ref_path, "--json", tmp_path / "report.json")
    assert result.returncode == 0, result.stderr.decode()
    assert f"--ref {ref_path}: {count} lines write accents as combining marks" in result.stderr.decode() and count > 10
    assert json.loads((tmp_path / "report.json").read_text())["bleu"]["score"] < 90
    alike = s2s_forked("evaluate", "--hyp", ref_path, "--ref", ref_path)
    assert alike.returncode == 0 and b"combining marks" not in alike.stderr


def test_evaluate_with_several_references_matches_sacrebleu_cli(tmp_path):
    """sacreBLEU's multi-reference scores (BLEU takes each n-gram's largest count over the
    references and the closest reference length), as `sacrebleu REF1 REF2 -i HYP` gives them."""
    from seq2seq_cli.evaluation import score_report

    refs = toy_lines("test", 100)[1]
    other = [line.replace("Der", "Ein").replace("die", "eine") for line in refs]
    hyps = [line.replace("der", "die") if i % 3 else other[i] for i, line in enumerate(refs)]
    hyp_path, ref_path = write_corpus(tmp_path, "x", hyps, refs, src="hyp", tgt="ref")
    other_path = write_corpus(tmp_path, "z", other, other, src="ref2", tgt="unused")[0]
    ours = s2s_forked("evaluate", "--hyp", hyp_path, "--ref", ref_path, "--ref", other_path,
                      "--json", tmp_path / "r.json")
    assert ours.returncode == 0, ours.stderr.decode()
    reference = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref_path), str(other_path), "-i", str(hyp_path),
                                "-m", "bleu", "chrf", "ter", "-w", "2"], capture_output=True, check=True)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["bleu"]["score"] > score_report(hyps, [refs])["bleu"]["score"]
    for key, metric in zip(("bleu", "chrf", "ter"), json.loads(reference.stdout)):
        assert (report[key]["name"], report[key]["score"], report[key]["signature"]) == \
            (metric["name"], metric["score"], metric["signature"])
    assert report["references"] == 2 and "2 references each" in ours.stdout.decode()
    short = write_corpus(tmp_path, "y", other[:7], other, src="ref3", tgt="unused")[0]
    assert_user_error(s2s_forked("evaluate", "--hyp", hyp_path, "--ref", ref_path, "--ref", short),
                      f"--ref {short} has 7 lines but --ref {ref_path} has 100")


def test_evaluate_compares_systems_with_sacrebleus_paired_tests(tmp_path):
    """Several --hyp: each compared with the first by sacreBLEU's paired bootstrap or approximate
    randomization, the numbers `sacrebleu REF -i BASE SYS ... --paired-bs/--paired-ar` prints."""
    import re

    refs = toy_lines("test", 120)[1]
    systems = {"base": [line.replace("der", "die") if i % 4 == 0 else line for i, line in enumerate(refs)],
               "close": [line.replace("der", "die") if i % 5 == 0 else line for i, line in enumerate(refs)],
               "far": [line.replace("die", "das").replace("Der", "Die") for line in refs]}
    paths = [write_corpus(tmp_path, name, hyps, refs, src="hyp", tgt="ref")[0] for name, hyps in systems.items()]
    ref_path = tmp_path / "base.ref"
    inputs = [arg for path in paths for arg in ("--hyp", path)]

    ours = s2s_forked("evaluate", *inputs, "--ref", ref_path, "--json", tmp_path / "bs.json",
                      "--sentences", tmp_path / "sentences.tsv")
    assert ours.returncode == 0, ours.stderr.decode()
    report = json.loads((tmp_path / "bs.json").read_text())
    header, *rows = [line.split("\t") for line in (tmp_path / "sentences.tsv").read_text().splitlines()]
    assert header == ["line"] + [f"{metric}:{path}" for path in paths for metric in ("bleu", "chrf")]
    for column, hypotheses in zip((1, 3, 5), systems.values()):  # each system's BLEU: 100 where it is the reference
        assert [row[column] == "100.0000" for row in rows] == [h == r for h, r in zip(hypotheses, refs)]
    table = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref_path), "-i", *map(str, paths), "-m", "bleu",
                            "chrf", "ter", "--paired-bs", "-f", "text", "-w", "4"], capture_output=True, check=True)
    table = table.stdout.decode()
    # Row by row, metric by metric: score (mean ± 95% CI), then each test system's p-values.
    expected = re.findall(r"(\d+\.\d{4}) \((\d+\.\d{4}) ± (\d+\.\d{4})\)", table)
    assert [tuple(f"{row[key][part]:.4f}" for part in ("score", "mean", "ci"))
            for row in report["systems"] for key in ("bleu", "chrf", "ter")] == expected
    assert [f"{row[key]['p_value']:.4f}" for row in report["systems"][1:] for key in ("bleu", "chrf", "ter")] == \
        re.findall(r"p = (\d\.\d{4})", table)
    for key in ("bleu", "chrf", "ter"):
        assert report[key]["signature"] in table and "bs:1000|seed:12345" in report[key]["signature"]
    far = report["systems"][2]
    assert far["bleu"]["p_value"] < 0.05 and "p=" in ours.stdout.decode() and "*" in ours.stdout.decode()

    # Approximate randomization: sacreBLEU's JSON, to the last digit.
    ours = s2s_forked("evaluate", *inputs, "--ref", ref_path, "--paired", "ar", "--paired-n", "2000",
                      "--json", tmp_path / "ar.json")
    assert ours.returncode == 0, ours.stderr.decode()
    report = json.loads((tmp_path / "ar.json").read_text())
    reference = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref_path), "-i", *map(str, paths), "-m", "bleu",
                                "chrf", "ter", "--paired-ar", "--paired-ar-n", "2000"], capture_output=True, check=True)
    for ours_row, their_row in zip(report["systems"], json.loads(reference.stdout), strict=True):
        for key, name in (("bleu", "BLEU"), ("chrf", "chrF2"), ("ter", "TER")):
            assert (ours_row[key]["score"], ours_row[key]["p_value"]) == \
                (their_row[name]["score"], their_row[name]["p_value"])

    # A copy of the baseline is no different from it (sacreBLEU would give it the smallest p).
    copy = write_corpus(tmp_path, "copy", systems["base"], refs, src="hyp", tgt="ref")[0]
    ours = s2s_forked("evaluate", "--hyp", paths[0], "--hyp", copy, "--ref", ref_path, "--json", tmp_path / "c.json")
    same = json.loads((tmp_path / "c.json").read_text())["systems"][1]
    assert same["same_as_baseline"] and [same[key]["p_value"] for key in ("bleu", "chrf", "ter")] == [1.0] * 3

    short = write_corpus(tmp_path, "short", refs[:9], refs[:9], src="hyp", tgt="ref")[0]
    assert_user_errors(
        (("evaluate", "--hyp", paths[0], "--ref", ref_path, "--paired", "ar"), "give --hyp twice or more"),
        (("evaluate", *inputs, "--ref", ref_path, "--paired", "t"), "use bs (paired bootstrap resampling)"),
        (("evaluate", "--hyp", paths[0], "--hyp", short, "--ref", ref_path), f"--hyp {short} has 9 lines but"),
    )


def test_bleu_splits_words_as_sacrebleu_does_for_the_target_language(tmp_path):
    """Chinese has no spaces: 13a sees a sentence as one word, sacreBLEU's zh tokenizer (what
    `sacrebleu -l en-zh` uses) splits its characters. A run's target language picks it."""
    from seq2seq_cli.evaluation import bleu_metric, score_report

    refs = ["我们今天下午去公园散步。", "他喜欢读书和写字。", "这是一个很好的例子。", "小狗在草地上跑。"]
    hyps = ["我们今天去公园散步。", "他喜欢读书。", "这是一个好例子。", "小狗在草地上跑。"]
    hyp_path, ref_path = write_corpus(tmp_path, "x", hyps, refs, src="hyp", tgt="ref")
    reference = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref_path), "-i", str(hyp_path), "-l", "en-zh",
                                "-m", "bleu", "-w", "2"], capture_output=True, check=True)
    expected = json.loads(reference.stdout)
    zh = score_report(hyps, [refs], bleu_metric("zh"))["bleu"]
    assert (zh["score"], zh["signature"]) == (expected["score"], expected["signature"]) and "tok:zh" in zh["signature"]
    assert score_report(hyps, [refs])["bleu"]["score"] != zh["score"]  # 13a
    with pytest.raises(TypeError, match="one list per reference set"):
        score_report(hyps, refs)  # read as four reference sets of single characters, it would score nonsense
    # A run to Chinese (here by data.tgt_lang) validates and evaluates with zh, unless told otherwise.
    config = tiny_config(tmp_path, training={"max_steps": 2, "validate_every": 0}, data={"tgt_lang": "zh"})
    training = subprocess.Popen([sys.executable, "-m", "seq2seq_cli", "train", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ours = s2s_forked("evaluate", "--hyp", hyp_path, "--ref", ref_path, "--tokenize", "zh")
    assert f"{expected['score']:7.2f}   {expected['signature']}" in ours.stdout.decode()
    assert_user_error(s2s_forked("evaluate", "--hyp", hyp_path, "--ref", ref_path, "--tokenize", "zh-words"),
                      "BLEU tokenizer 'zh-words' is not one of sacreBLEU's")
    assert training.wait(timeout=300) == 0
    src_path, ref_path = write_corpus(tmp_path, "y", *toy_lines("test", 10))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        by_language, chosen = both_ways = list(pool.map(
            lambda extra: s2s("evaluate", "--checkpoint", tmp_path / "run", "--src", src_path, "--ref", ref_path, *extra),
            ((), ("--tokenize", "char"))))
    assert "tok:zh" in by_language.stdout.decode() and "tok:char" in chosen.stdout.decode(), both_ways


def test_the_bleu_tokenizer_s2s_names_is_the_one_sacrebleu_picks():
    """A run records its BLEU tokenizer by name (to resume scoring alike): the name must be the
    tokenizer sacreBLEU itself picks for the language."""
    from sacrebleu.metrics import BLEU

    from seq2seq_cli.evaluation import bleu_tokenizer

    for language in ("zh", "de", "en", "", None):
        picked = BLEU(trg_lang=language or "").tokenizer
        assert type(BLEU(tokenize=bleu_tokenizer(language)).tokenizer) is type(picked), language
    assert bleu_tokenizer("zh", "intl") == "intl" and bleu_tokenizer("zh") == "zh" and bleu_tokenizer("de") == "13a"


def test_a_report_that_cannot_be_written_leaves_the_earlier_one(tmp_path, monkeypatch, capsys):
    """evaluate --json on a full disk: one line, and the report already there stays whole."""
    import errno
    import os

    from seq2seq_cli.cli import main

    hyp_path, ref_path = write_corpus(tmp_path, "x", ["A man rides a bike."], ["A man rides a bike."], src="hyp", tgt="ref")
    report = tmp_path / "report.json"
    report.write_text('{"earlier": true}\n')

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    monkeypatch.setattr(sys, "argv", ["s2s", "evaluate", "--hyp", str(hyp_path), "--ref", str(ref_path),
                                      "--json", str(report)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(f"s2s: error: cannot write {report} (No space left on device)\n")
    assert report.read_text() == '{"earlier": true}\n' and not list(tmp_path.glob(".report.json.*"))


def test_an_unreadable_file_anywhere_is_one_line(monkeypatch, capsys):
    """Permissions, a lost mount or a full disk can meet any file; root (who runs CI) passes
    permission bits, so the failing read is made here, where `s2s info` reads metrics.jsonl."""
    import seq2seq_cli.checkpoint as checkpoint_module
    import seq2seq_cli.metrics as metrics_module
    from seq2seq_cli.cli import main
    from seq2seq_cli.errors import UserError

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/runs/x/metrics.jsonl")

    monkeypatch.setattr(metrics_module, "run_summary", denied)
    monkeypatch.setattr(sys, "argv", ["s2s", "info", "/runs/x"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("s2s: error: /runs/x/metrics.jsonl: Permission denied; check that it exists "
                                       "and that you may read (or write) it\n")
    # Reading a checkpoint says so.
    monkeypatch.setattr(checkpoint_module, "open", denied, raising=False)
    with pytest.raises(UserError, match=r"cannot read checkpoint .*test_cli.py \(Permission denied\)"):
        checkpoint_module.load_checkpoint(Path(__file__))  # any existing file: open() is the one denied
    monkeypatch.setattr(metrics_module, "run_summary", lambda run: (_ for _ in ()).throw(OSError("no file")))
    with pytest.raises(OSError, match="no file"):  # an OSError naming no file is a fault of ours: shown whole
        main()


def test_every_other_user_error_is_one_line_and_exit_2(trained_run, tmp_path):
    missing = tmp_path / "missing"
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").write_text("")
    src, ref = write_corpus(tmp_path, "m", ["a", "b"], ["x"])
    assert_user_errors(
        (("translate", "--checkpoint", missing), "no such checkpoint file or run directory"),
        (("translate", "--checkpoint", trained_run, "--input", missing / "in.en"), "in.en: file not found"),
        (("translate", "--checkpoint", trained_run, "--plot-attention", tmp_path / "file" / "pics"), "cannot create"),
        (("evaluate", "--ref", tmp_path / "file"), "give --hyp FILE, or --checkpoint RUN"),
        (("evaluate", "--checkpoint", trained_run, "--src", src, "--ref", ref), "line-aligned"),
        (("evaluate", "--hyp", missing, "--ref", ref), "file not found"),
        (("evaluate", "--checkpoint", trained_run, "--src", src, "--hyp", src, "--ref", ref), "not both"),
        (("evaluate", "--hyp", src, "--ref", ref, "--beam-size", "5"),
         "--beam-size only applies to translating with --checkpoint"),
        (("evaluate", "--hyp", src, "--ref", ref, "--device", "cpu", "--quantize", "int8", "--weights", "1"),
         "--weights, --device, --quantize only apply"),
        (("evaluate", "--hyp", src, "--ref", ref, "--no-copy-unknown"),
         "--no-copy-unknown only applies to translating with --checkpoint"),
        (("evaluate", "--hyp", tmp_path / "empty", "--ref", tmp_path / "empty"), "is empty: there is nothing to score"),
        (("train",), "give --config FILE to start a run, or --resume RUN_DIR"),
        (("translate", "--bogus"), "No such option: --bogus (see python -m seq2seq_cli translate --help)"),
        (("evaluate", "--hyp", ref), "Missing option '--ref' (see python -m seq2seq_cli evaluate --help)"),
        (("translate", "--checkpoint"), "Option '--checkpoint' requires an argument (see python -m seq2seq_cli translate --help)"),
        (("traain",), "No such command 'traain'. Did you mean 'train'? (see python -m seq2seq_cli --help)"),
        (("--verison",), "No such option: --verison"),
        (("train", "--resume", trained_run, "--overwrite"), "choose one"),
        (("train", "--resume", trained_run, "--run-dir", tmp_path / "other"), "name different runs"),
        (("info", trained_run / "checkpoints"), "no metrics.jsonl"),
        (("translate", "--checkpoint", trained_run, "--dtype", "fp16"), "--dtype fp16: unknown number format"),
        (("serve", "--checkpoint", trained_run, "--quantize", "int4"), "--quantize int4: unknown"),
        (("serve", "--checkpoint", trained_run, "--cuda-graphs", "on"), "--cuda-graphs on: unknown; use auto or off"),
        (("translate", "--checkpoint", trained_run, "--quantize", "int8", "--dtype", "bf16"),
         "leave --dtype at fp32"))
