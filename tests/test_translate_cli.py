"""s2s translate as a filter, interactively, with n-best lists and attention pictures."""

import concurrent.futures
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seq2seq_cli.errors import UserError

from conftest import (TOY, assert_user_error, assert_user_errors, png_size, s2s, s2s_forked, tiny_config,
                      toy_domain)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("translate")
    config = tiny_config(tmp_path, training={"max_steps": 30, "validate_every": 0},
                         data={"max_len": 30}, decoding={"max_length_offset": 4})
    result = s2s("train", "--config", config, "--run-dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr.decode()
    return tmp_path / "run"


def test_bad_input_never_breaks_the_stream(run_dir):
    long_line = " ".join(["the big red dog"] * 50)
    lines = [b"The man sees the dog.", b"", b"bad \xff\xfe bytes here", b"tab\tand\x00nul and \x1b[31m escape",
             long_line.encode(), "emoji \U0001F600 and \u200b zero width \u202e rtl".encode(), b"\r", b"   "]
    result = s2s("translate", "--checkpoint", run_dir, stdin="")  # empty input: empty output
    assert result.returncode == 0 and result.stdout == b""
    proc = subprocess.run([sys.executable, "-m", "seq2seq_cli", "translate", "--checkpoint", str(run_dir)],
                          input=b"\n".join(lines) + b"\n", capture_output=True, timeout=120)
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    out = proc.stdout.decode("utf-8").split("\n")
    assert len(out) == len(lines) + 1 and out[-1] == ""
    assert out[1] == "" and out[6] == "" and out[7] == ""
    assert "Traceback" not in stderr
    assert "line 3: invalid UTF-8" in stderr
    assert stderr.count("truncated to the model's limit of 30") == 1


def test_a_word_with_a_character_the_model_never_saw_is_translated_or_named(run_dir):
    """A name with a foreign letter or a word with typographic punctuation attached is read as
    its look-alike (the same translation as the plain text); a word still unreadable is named
    on stderr, with its line, rather than silently dropped."""
    lines = ["The baker brings back an apple…", "The baker brings back an apple.",
             "The bäker brings back an äpple.", "The Жук brings back an apple.", "The baker brings back an apple."]
    result = s2s_forked("translate", "--checkpoint", run_dir, stdin="\n".join(lines) + "\n")
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    out = result.stdout.decode().splitlines()
    assert len(out) == 5 and out[0] == out[1]
    assert "input line 4: a word the model's vocabulary cannot spell, read as [UNK]: Жук" in stderr
    assert stderr.count("cannot spell") == 1  # ä is German: the toy vocabulary has it
    # A text the vocabulary cannot read at all warns of its first lines only.
    result = s2s_forked("translate", "--checkpoint", run_dir, stdin="Жук Жук\n" * 14)
    stderr = result.stderr.decode()
    assert result.returncode == 0 and len(result.stdout.decode().splitlines()) == 14
    assert stderr.count("2 words the model's vocabulary cannot spell, read as [UNK]: Жук, Жук") == 0
    assert stderr.count("a word the model's vocabulary cannot spell, read as [UNK]: Жук") == 10
    assert "input line 11: more lines hold words the model's vocabulary cannot spell; no more are named" in stderr
    assert "input line 12" not in stderr


def test_office_documents_are_translated_into_documents(run_dir, tmp_path):
    """--input report.docx (or .odt, .pptx, .odp, .epub): the document's text translated as
    --split-sentences translates lines, the rest kept, into --output."""
    from test_documents import make_docx, make_epub, make_odt, make_pptx

    from seq2seq_cli.office import OFFICE_FORMATS, OfficeDocument

    for name, data in (("report.docx", make_docx()), ("notes.odt", make_odt()), ("slides.pptx", make_pptx()),
                       ("book.epub", make_epub())):
        office = OFFICE_FORMATS[name.rsplit(".", 1)[1]]
        (tmp_path / name).write_bytes(data)
        translated = s2s_forked("translate", "--checkpoint", run_dir, "--input", tmp_path / name,
                                "--output", tmp_path / f"de-{name}")
        assert translated.returncode == 0, translated.stderr.decode()
        texts = OfficeDocument(data, office).runs()
        lines = s2s_forked("translate", "--checkpoint", run_dir, "--split-sentences", stdin="\n".join(texts) + "\n")
        # A stretch keeps the spaces around it (the odt's "Page " before its page number field).
        assert [text.strip() for text in OfficeDocument((tmp_path / f"de-{name}").read_bytes(), office).runs()] \
            == lines.stdout.decode().splitlines(), name
    # The documents now say they are German where they said English (the run is en -> de).
    import zipfile

    assert '<w:lang w:val="de-DE"' in zipfile.ZipFile(tmp_path / "de-report.docx").read("word/styles.xml").decode()
    assert "<dc:language>de</dc:language>" in zipfile.ZipFile(tmp_path / "de-book.epub").read("OEBPS/content.opf").decode()
    (tmp_path / "notes.docx").write_text("The dog.\n")
    assert_user_errors(
        (("translate", "--checkpoint", run_dir, "--nbest", "2", "--input", tmp_path / "report.docx"),
         f"--input {tmp_path / 'report.docx'} is translated as one document: --nbest does not apply; drop it"),
        (("translate", "--checkpoint", run_dir, "--input", tmp_path / "notes.docx", "--output", tmp_path / "x"),
         "notes.docx: not a Word document that can be read (File is not a zip file)"))
    assert not (tmp_path / "x").exists()


def test_a_line_far_longer_than_the_model_reads_gives_the_whole_lines_first_tokens(run_dir, monkeypatch, caplog):
    """Only the head of such a line is tokenized (a 20 MB line took 3.6 GB and 32 s), and the
    model gets exactly the tokens it would get from the whole line, cut to data.max_len."""
    import random

    from seq2seq_cli import Translator, tokenization
    from seq2seq_cli.tokenization import HEAD_CHARACTERS_PER_TOKEN

    translator = Translator.load(run_dir, "cpu")
    limit, tokenizers = translator.max_source_tokens, translator.tokenizers
    words, rng = (TOY / "train.en").read_text().split()[:5000], random.Random(0)
    head, halfway = HEAD_CHARACTERS_PER_TOKEN * limit, limit // 2
    unknown = "x" * ((head - 60) // halfway - 1)  # over 100 characters: one [UNK]
    lines = [" ".join(rng.choice(words) for _ in range(30_000)),  # the head is enough
             " ".join(["x" * 400] * 100 + words[:200]),  # long words first: the head has too few tokens
             "y" * 50_000,  # no whitespace to cut at
             "a\tb  c\u3000d\u00a0e, f " * 3_000,  # other whitespace, punctuation
             # A word across the head's end: one [UNK] whole, but cut there it would be many pieces.
             " ".join([unknown] * halfway + ["the" * 50] + words[:3_000])]
    assert len(lines[4].split(" ")[halfway]) > 100 and lines[4].index("the") < head < lines[4].index("the") + 150
    expected = [ids[:limit] for ids in tokenizers.encode_src(lines)]
    read, encode = [], tokenization._encode
    monkeypatch.setattr(tokenization, "_encode", lambda tokenizer, texts: read.extend(map(len, texts)) or
                        encode(tokenizer, texts))
    sources, _ = translator.translate_raw([line.encode() for line in lines])
    assert sources == expected
    assert read[0] <= HEAD_CHARACTERS_PER_TOKEN * limit < len(lines[0])  # not read whole
    assert f"input line 1: over {limit} tokens in {len(lines[0])} characters, truncated" in caplog.text


def test_small_batches_decoded_side_by_side_keep_order_and_line_numbers(run_dir):
    """With --batch-size 3, 40 lines are 14 batches that the CPU's threads decode side by side:
    the output is still line for line the one-batch output, and warnings name the right lines."""
    lines = (TOY / "test.en").read_bytes().splitlines()[:40]
    lines[22] = b"bad \xff bytes"
    lines[30] = b" ".join([b"the big red dog"] * 50)
    text = b"\n".join(lines) + b"\n"
    outputs = {}
    for batch_size in ("3", "128"):
        proc = subprocess.run([sys.executable, "-m", "seq2seq_cli", "translate", "--checkpoint", str(run_dir),
                               "--batch-size", batch_size], input=text, capture_output=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "2"})
        stderr = proc.stderr.decode()
        assert proc.returncode == 0, stderr
        assert "input line 23: invalid UTF-8" in stderr and re.search(r"input line 31: \d+ tokens, truncated", stderr)
        outputs[batch_size] = proc.stdout, [line.split(" ", 1)[1] for line in stderr.splitlines()]  # no time
    assert len(outputs["3"][0].splitlines()) == 40 and outputs["3"] == outputs["128"]


def test_nbest_output(run_dir):
    result = s2s_forked("translate", "--checkpoint", run_dir, "--beam-size", "4", "--nbest", "3",
                 stdin="The man sees the dog.\n\nA cat.\n")
    assert result.returncode == 0, result.stderr.decode()
    rows = [line.split(" ||| ") for line in result.stdout.decode().splitlines()]
    assert [int(r[0]) for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for index in (0, 2):
        scores = [float(r[2]) for r in rows if int(r[0]) == index]
        assert scores == sorted(scores, reverse=True)
    # The first of an n-best list is the 1-best translation with the same beam.
    best = s2s_forked("translate", "--checkpoint", run_dir, "--beam-size", "4", stdin="The man sees the dog.\n")
    assert best.stdout.decode().strip() == rows[0][1]
    assert_user_error(s2s_forked("translate", "--checkpoint", run_dir, "--nbest", "3", stdin="x\n"), "--beam-size")


def test_an_nbest_list_holds_each_translation_once(learned_toy_run):
    """WordPiece spells a word more than one way ("weißen", "weiße ##n"), printed alike: a
    list of five translations that held both would show four. Each text once, the first of
    them the 1-best translation."""
    from seq2seq_cli import Translator

    translator = Translator.load(learned_toy_run, device="cpu", beam_size=5)
    sources = toy_domain("test", animals=False)[0][:300]
    nbest = translator.translate_nbest(sources, 5)
    assert [len({candidate.text for candidate in candidates}) for candidates in nbest] == [5] * len(sources)
    assert [candidates[0].text for candidates in nbest] == translator.translate(sources)


def test_beam_of_one_matches_greedy_output(run_dir, tmp_path):
    text = "The man sees the dog.\nA woman reads a red book today.\nI think that the cat likes the boy.\n"
    greedy = s2s_forked("translate", "--checkpoint", run_dir, stdin=text)
    beam_one = s2s_forked("translate", "--checkpoint", run_dir, "--beam-size", "1", stdin=text)
    assert greedy.returncode == 0 and greedy.stdout == beam_one.stdout


def test_an_output_that_is_an_input_is_refused_and_left_as_it_was(run_dir, tmp_path):
    """An --output named as the input or redirected to stdin would be replaced by its own
    translation, and evaluate's --json over --src or --ref emptied: the text would be gone."""
    source, reference = tmp_path / "test.en", tmp_path / "test.de"
    source.write_bytes(b"The man sees the dog.\nA cat.\n")
    reference.write_bytes("Der Mann sieht den Hund.\nEine Katze.\n".encode())
    with open(source, "rb") as stdin:
        redirected = subprocess.run([sys.executable, "-m", "seq2seq_cli", "translate", "--checkpoint", str(run_dir),
                                     "--output", str(source)], stdin=stdin, capture_output=True, timeout=120)
    assert_user_error(redirected, f"--output {source} is the file being translated")
    assert_user_errors(
        (("translate", "--checkpoint", run_dir, "--input", source, "--output", tmp_path / "." / "test.en"),
         "is the file being translated"),
        (("evaluate", "--checkpoint", run_dir, "--src", source, "--ref", reference, "--json", reference),
         f"--json {reference} is the --ref file"),
        (("evaluate", "--checkpoint", run_dir, "--src", source, "--ref", reference, "--json", source),
         "is the --src file"),
        (("evaluate", "--hyp", reference, "--ref", source, "--json", reference), "is the --hyp file"))
    assert source.read_bytes() == b"The man sees the dog.\nA cat.\n"
    assert reference.read_bytes() == "Der Mann sieht den Hund.\nEine Katze.\n".encode()
    # Other files are written as before (stdout by name, a report in a new folder).
    named_stdout = s2s("translate", "--checkpoint", run_dir, "--input", source, "--output", "/dev/stdout")
    assert named_stdout.returncode == 0 and named_stdout.stdout.count(b"\n") == 2
    (tmp_path / "out.de").write_bytes(named_stdout.stdout)
    scored = s2s_forked("evaluate", "--hyp", tmp_path / "out.de", "--ref", reference,
                        "--json", tmp_path / "new" / "r.json")
    assert scored.returncode == 0 and '"bleu"' in (tmp_path / "new" / "r.json").read_text()
    # A pipe is written into, not replaced by a file (as /dev/stdout or /dev/null would be).
    pipe = tmp_path / "report.pipe"
    os.mkfifo(pipe)
    reader = subprocess.Popen(["cat", str(pipe)], stdout=subprocess.PIPE)
    scored = s2s("evaluate", "--hyp", tmp_path / "out.de", "--ref", reference, "--json", pipe)
    assert scored.returncode == 0 and b'"bleu"' in reader.communicate(timeout=60)[0]
    assert pipe.is_fifo()


def test_an_interrupted_translation_leaves_an_earlier_output_as_it_was(run_dir, tmp_path):
    """--output is complete or not there: Ctrl-C halfway through leaves yesterday's file, not
    half of today's (and no temporary file); a finished run replaces it, keeping its mode."""
    source, output = tmp_path / "many.en", tmp_path / "out.de"
    source.write_text((TOY / "test.en").read_text() * 100)
    output.write_text("earlier translations\n")
    output.chmod(0o640)
    proc = subprocess.Popen([sys.executable, "-m", "seq2seq_cli", "translate", "--checkpoint", str(run_dir),
                             "--batch-size", "4", "--input", str(source), "--output", str(output)],
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not any(path.stat().st_size for path in tmp_path.glob(".out.de.*.tmp")):  # translating
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert output.read_text() == "earlier translations\n" and not list(tmp_path.glob(".out.de.*"))
    short = tmp_path / "short.en"
    short.write_text("The man sees the dog.\nA cat.\n")
    finished = s2s_forked("translate", "--checkpoint", run_dir, "--input", short, "--output", output)
    assert finished.returncode == 0, finished.stderr.decode()
    assert output.read_text().count("\n") == 2 and output.stat().st_mode & 0o777 == 0o640
    assert_user_error(s2s_forked("translate", "--checkpoint", run_dir, "--input", short, "--output", tmp_path),
                      f"cannot write {tmp_path} (Is a directory); write elsewhere, then translate again")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a device that is always full")
def test_a_full_disk_is_a_one_line_error(run_dir, tmp_path):
    assert_user_error(s2s_forked("translate", "--checkpoint", run_dir, "--output", "/dev/full", stdin="A cat.\n"),
                      "cannot write /dev/full (No space left on device)")
    with open("/dev/full", "wb") as full:
        to_stdout = subprocess.run([sys.executable, "-m", "seq2seq_cli", "translate", "--checkpoint", str(run_dir)],
                                   input=b"A cat.\n", stdout=full, stderr=subprocess.PIPE, timeout=120)
    assert to_stdout.returncode == 2 and b"cannot write to stdout (No space left on device)" in to_stdout.stderr
    assert b"Traceback" not in to_stdout.stderr


def test_a_reader_that_goes_away_ends_translation_quietly(run_dir):
    """`s2s translate ... | head -1`: the pipe closes after the first line; that is no error."""
    proc = subprocess.Popen([sys.executable, "-m", "seq2seq_cli", "translate", "--checkpoint", str(run_dir),
                             "--batch-size", "4", "--input", str(TOY / "test.en")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().endswith(b"\n")
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and stderr == b"", stderr.decode()


def test_interactive_lines_are_answered_at_once(run_dir):
    proc = subprocess.Popen([sys.executable, "-m", "seq2seq_cli", "translate", "--checkpoint", str(run_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        for sentence in (b"The man sees the dog.\n", b"A cat.\n"):
            proc.stdin.write(sentence)
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 60)  # stdin stays open
            assert ready, "no answer while input is still open"
            assert os.read(proc.stdout.fileno(), 4096).endswith(b"\n")
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0





def test_attention_pictures(run_dir, tmp_path):
    from seq2seq_cli.plotting import attention_figure_size
    from seq2seq_cli.tokenization import Tokenizers

    sentences = ["The man sees the dog.", "", "A woman reads a red book today and the boy paints it."]
    result = s2s_forked("translate", "--checkpoint", run_dir, "--plot-attention", tmp_path / "att",
                 stdin="\n".join(sentences) + "\n")
    assert result.returncode == 0, result.stderr.decode()
    translations = result.stdout.decode().splitlines()
    assert sorted(p.name for p in (tmp_path / "att").iterdir()) == ["00000.png", "00002.png"]
    tokenizers = Tokenizers.load(run_dir / "tokenizer")
    for index in (0, 2):
        source_pieces = min(len(tokenizers.encode_src([sentences[index]])[0]), 30) + 1  # truncated at data.max_len
        target_pieces = len(tokenizers.encode_tgt([translations[index]])[0]) + 1
        assert png_size(tmp_path / "att" / f"{index:05d}.png") == attention_figure_size(source_pieces, target_pieces)


def test_the_python_api_takes_one_string_as_one_text(run_dir):
    """A string is a sequence too: translate("A cat.") must not translate "A", " ", "c", ...;
    and a generator is read once, not checked and then found empty."""
    from seq2seq_cli import Translator

    translator = Translator.load(run_dir, "cpu", beam_size=3)
    texts = ["The man sees the dog.", "A cat."]
    assert translator.translate(texts[0]) == translator.translate(texts)[0]
    assert translator.translate_nbest(texts[1], 2) == translator.translate_nbest(texts, 2)[1]
    assert len(translator.translate_nbest(texts[1], 2)) == 2
    with pytest.raises(TypeError, match=r"texts\[1\] is bytes, not str"):
        translator.translate(["A cat.", b"A dog."])
    assert translator.translate(text for text in texts) == translator.translate(texts)
    assert translator.translate_nbest(iter(texts), 2) == translator.translate_nbest(texts, 2)
    with pytest.raises(TypeError, match="texts is NoneType: give a string or a list of strings"):
        translator.translate(None)
    with pytest.raises(TypeError, match=r"texts is bytes: give a string or a list of strings \(decode bytes first\)"):
        translator.translate(b"A dog.")  # not one 'text' per byte
    with pytest.raises(UserError, match="--nbest 0: ask for 1 or more"):  # not one translation regardless
        translator.translate_nbest(texts, 0)
    with pytest.raises(UserError, match="no checkpoint given"):
        Translator.load([], "cpu")
    with pytest.raises(TypeError, match="weights is a string"):
        Translator.load([run_dir, run_dir], "cpu", weights="1,2")
    # Settings given in code are held to the config file's rules (no schema has seen them).
    for settings, error in (({"batch_size": 0}, "batch_size must be positive, got 0"),
                            ({"beam_size": 2.5}, "beam_size must be int, got 2.5"),
                            ({"max_length_ratio": -1.0}, "max_length_ratio must be positive")):
        with pytest.raises(UserError, match=error):
            Translator.load(run_dir, "cpu", **settings)
        with pytest.raises(UserError, match=error):
            translator.with_settings(**settings)


def test_the_readme_python_example_runs_and_equals_the_cli(run_dir, tmp_path):
    """The README's Python example, run as a user would (a new process, runs/toy beside it)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    example = readme.split("## Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "toy").symlink_to(run_dir)
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    printed = result.stdout.decode().splitlines()
    cli = s2s_forked("translate", "--checkpoint", run_dir, "--beam-size", "5", "--nbest", "3", "--device", "cpu",
              stdin="The man sees the dog.\nSometimes the bird loves a small newspaper.\n")
    nbest = [line.split(" ||| ") for line in cli.stdout.decode().splitlines()]  # INDEX ||| TEXT ||| SCORE
    assert printed[0] == repr([next(text for index, text, _ in nbest if index == str(i)) for i in range(2)])
    assert printed[1:] == [f"{score} {text}" for index, text, score in nbest if index == "0"]


def at_a_terminal(command: list, stdout_too: bool = False, stdin=subprocess.DEVNULL) -> tuple[int, str]:
    """Run ``command`` with stderr (and stdout, when asked) on a pseudo-terminal of 120 columns,
    as a person at a terminal runs it; its exit code and what the terminal showed."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    terminal, device = pty.openpty()
    fcntl.ioctl(device, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a new pty has 0 columns
    process = subprocess.Popen(command, stdin=stdin, stderr=device,
                               stdout=device if stdout_too else subprocess.DEVNULL)
    os.close(device)
    shown = []

    def read() -> None:  # drained as it comes: a full pty would block the process
        while True:
            try:
                chunk = os.read(terminal, 1 << 16)
            except OSError:  # the last writer has gone
                return
            if not chunk:
                return
            shown.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    code = process.wait(timeout=300)
    reader.join(timeout=30)
    os.close(terminal)
    return code, b"".join(shown).decode("utf-8", "replace")


def test_a_file_translated_at_a_terminal_shows_its_progress_and_the_same_output(run_dir, tmp_path):
    """With --input FILE a bar counts the lines to the file's total; the translations are what
    a run without a terminal writes, and with stdout on the terminal no bar tears them."""
    lines = (TOY / "dev.en").read_text(encoding="utf-8").splitlines()[:300]
    source = tmp_path / "source.en"
    source.write_text("\n".join(lines), encoding="utf-8")  # no line end after the last line
    command = [sys.executable, "-m", "seq2seq_cli", "translate", "--checkpoint", str(run_dir), "--input", str(source)]
    plain = s2s_forked("translate", "--checkpoint", run_dir, "--input", source, "--output", tmp_path / "plain.de")
    assert plain.returncode == 0 and plain.stderr.decode().count("lines/s") == 0
    code, shown = at_a_terminal(command + ["--output", str(tmp_path / "shown.de")])
    assert code == 0, shown
    assert "300/300" in shown and "lines/s" in shown
    assert (tmp_path / "shown.de").read_bytes() == (tmp_path / "plain.de").read_bytes()
    with open(source, "rb") as redirected:  # s2s translate < FILE: counted too, none of it read off
        code, shown = at_a_terminal(command[:-2] + ["--output", str(tmp_path / "redirected.de")], stdin=redirected)
    assert code == 0 and "300/300" in shown, shown
    assert (tmp_path / "redirected.de").read_bytes() == (tmp_path / "plain.de").read_bytes()
    code, shown = at_a_terminal(command, stdout_too=True)
    assert code == 0 and "lines/s" not in shown
    printed = [line for line in shown.replace("\r\n", "\n").splitlines()
               if not re.match(r"\d\d:\d\d:\d\d ", line)]  # log lines (a truncated source) go between
    assert printed == (tmp_path / "plain.de").read_text(encoding="utf-8").splitlines()


def test_evaluate_and_score_at_a_terminal_show_their_progress(run_dir, tmp_path):
    """Both decode a whole file in one call; the bar counts its lines as batches finish."""
    source, reference = (write_lines(tmp_path / f"dev.{lang}", (TOY / f"dev.{lang}").read_text(encoding="utf-8")
                                     .splitlines()[:300]) for lang in ("en", "de"))
    s2s_command = [sys.executable, "-m", "seq2seq_cli"]
    commands = [s2s_command + ["evaluate", "--checkpoint", str(run_dir), "--src", str(source), "--ref", str(reference)],
                s2s_command + ["score", "--checkpoint", str(run_dir), "--src", str(source), "--tgt", str(reference),
                               "-o", str(tmp_path / "scores.txt")]]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        (code, shown), (score_code, score_shown) = pool.map(at_a_terminal, commands)
    assert code == 0 and "300/300" in shown, shown
    assert score_code == 0 and "300/300" in score_shown and "perplexity" in score_shown, score_shown
    assert len((tmp_path / "scores.txt").read_text().splitlines()) == 300


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_count_lines_counts_as_translate_reads(tmp_path):
    import gzip

    from seq2seq_cli.data import count_lines, read_lines

    for name, data in (("empty", b""), ("one", b"a"), ("ended", b"a\nb\n"), ("open", b"a\n\nb"), ("blank", b"\n")):
        path = tmp_path / name
        path.write_bytes(data)
        packed = tmp_path / f"{name}.gz"
        packed.write_bytes(gzip.compress(data))
        assert count_lines(path) == count_lines(packed) == len(read_lines(path)), name
