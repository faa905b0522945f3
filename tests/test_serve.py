"""s2s serve as its clients meet it: a real uvicorn process on a loopback port, spoken to over HTTP.

Every answer must equal what `s2s translate` prints for the same lines, however requests
interleave; bad requests get LibreTranslate's error codes and the server goes on serving.
"""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from html import escape

import pytest

httpx = pytest.importorskip("httpx", reason='s2s serve needs the serve extra: pip install -e ".[serve]"')
pytest.importorskip("fastapi")

from conftest import (  # noqa: E402
    assert_user_error,
    assert_user_errors,
    png_size,
    s2s_forked,
    tiny_config,
    toy_lines,
)

from seq2seq_cli.batching import LoadOptions  # noqa: E402
from seq2seq_cli.config import load_config  # noqa: E402
from seq2seq_cli.constraints import held_in  # noqa: E402
from seq2seq_cli.glossary import Glossary  # noqa: E402
from seq2seq_cli.launch import train  # noqa: E402
from seq2seq_cli.serve import server_models  # noqa: E402
from seq2seq_cli.tokenization import Tokenizers  # noqa: E402
from seq2seq_cli.translation import Translator  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``s2s serve`` in a process of its own; ``url`` once /health answers."""

    def __init__(self, run, *options):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "seq2seq_cli", "serve", "--checkpoint", str(run), "--port", str(self.port),
             "--device", "cpu", *map(str, options)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while True:
            assert self.process.poll() is None, self.process.stderr.read().decode()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).json() == {"status": "ok"}:
                    return
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.1)

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=60)
        return self.process.returncode, stderr.decode()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("serve")
    config = tiny_config(tmp_path, training={"max_steps": 30, "validate_every": 0}, data={"max_len": 30},
                         decoding={"max_length_offset": 4})
    train(load_config(config))
    return tmp_path / "run"


@pytest.fixture(scope="module")
def server(run):
    served = Server(run)
    yield served
    code, log = served.stop()
    assert code == 0, log


def cli_translations(run, lines, *options) -> list[str]:
    result = s2s_forked("translate", "--checkpoint", run, "--device", "cpu", *options,
                        stdin="".join(line + "\n" for line in lines))
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()


def test_fifty_concurrent_clients_get_exactly_what_the_cli_prints(run, server):
    lines = toy_lines("dev", 150)[0]
    # As the server splits (by default): a sentence over this run's data.max_len is translated in pieces.
    expected = dict(zip(lines, cli_translations(run, lines, "--split-sentences")))
    assert expected != dict(zip(lines, cli_translations(run, lines)))
    requests = []  # mixed sizes: 1 to 5 texts a request
    start = 0
    while start < len(lines):
        size = 1 + len(requests) % 5
        requests.append(lines[start: start + size])
        start += size

    def ask(texts):
        with httpx.Client(timeout=60) as client:
            answer = client.post(f"{server.url}/translate", json={"q": texts, "source": "en", "target": "de"})
        assert answer.status_code == 200, answer.text
        return texts, answer.json()["translatedText"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        for texts, translated in pool.map(ask, requests):
            assert translated == [expected[text] for text in texts]
    metrics = httpx.get(f"{server.url}/metrics").text
    batches = float(next(l.split()[1] for l in metrics.splitlines() if l.startswith("s2s_batch_sentences_count")))
    sentences = float(next(l.split()[1] for l in metrics.splitlines() if l.startswith("s2s_batch_sentences_sum")))
    assert sentences >= len(lines) and batches < len(requests)  # requests were batched together


def test_libretranslate_requests_and_answers(run, server):
    line = toy_lines("test", 1)[0][0]
    (expected,) = cli_translations(run, [line])
    single = httpx.post(f"{server.url}/translate", json={"q": line, "source": "en", "target": "de"}).json()
    assert single == {"translatedText": expected}
    form = httpx.post(f"{server.url}/translate", data={"q": line, "source": "auto", "target": "de"}).json()
    assert form == {"translatedText": expected, "detectedLanguage": {"confidence": 100.0, "language": "en"}}
    # multipart/form-data, as a browser's FormData sends it (LibreTranslate's own page does).
    multipart = httpx.post(f"{server.url}/translate", data={"source": "en", "target": "de"},
                           files={"q": (None, line.encode())})
    assert multipart.request.headers["content-type"].startswith("multipart/form-data")
    assert multipart.json() == {"translatedText": expected}
    malformed = httpx.post(f"{server.url}/translate", content=b"q=x", headers={"content-type": "multipart/form-data"})
    assert malformed.status_code == 400 and malformed.json()["error"].startswith("malformed multipart/form-data body")
    # Fields in the URL's query string, as LibreTranslate reads them too; the body's win.
    query = httpx.post(f"{server.url}/translate", params={"q": line, "source": "fr", "target": "de"},
                       data={"source": "en"})
    assert query.json() == {"translatedText": expected}
    assert httpx.post(f"{server.url}/translate", params={"q": line, "source": "en", "target": "de"}).json() == \
        {"translatedText": expected}
    nbest = cli_translations(run, [line], "--beam-size", "3", "--nbest", "3")
    with_alternatives = httpx.post(f"{server.url}/translate",
                                   json={"q": line, "source": "en", "target": "de", "alternatives": 2}).json()
    assert [with_alternatives["translatedText"], *with_alternatives["alternatives"]] == \
        [row.split(" ||| ")[1] for row in nbest]
    # A name the vocabulary cannot spell comes back copied into the translation, as the CLI copies it.
    unknown = "The baker sees Ωμέγα."
    (copied,) = cli_translations(run, [unknown], "--split-sentences")
    assert copied.count("Ωμέγα") == 1
    assert httpx.post(f"{server.url}/translate", json={"q": unknown, "source": "en", "target": "de"}).json() == \
        {"translatedText": copied}
    assert httpx.get(f"{server.url}/languages").json() == [{"code": "en", "name": "English", "targets": ["de"]}]
    assert httpx.get(f"{server.url}/docs").status_code == 200
    # The bodies parsed by hand are described in the OpenAPI schema, and its examples work.
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for path, fields in (("/translate", {"q", "source", "target", "format", "alternatives", "api_key"}),
                         ("/v1/translate", {"texts", "beam_size", "nbest", "attention", "api_key"})):
        operation = paths[path]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert fields <= set(schema["properties"]) and {"400", "429"} <= set(operation["responses"])
        example = {**schema["example"], "source": "en", "target": "de"}
        example["q" if path == "/translate" else "texts"] = line if path == "/translate" else [line]
        answer = httpx.post(f"{server.url}{path}", json=example)
        assert answer.status_code == 200 and set(answer.json()) <= set(
            operation["responses"]["200"]["content"]["application/json"]["schema"]["properties"]), answer.text
    assert "s2s_requests_total" in httpx.get(f"{server.url}/metrics").text


def test_html_keeps_its_markup_and_translates_the_text(run, server):
    first, second = toy_lines("test", 2)[0]
    html = f'<p class="intro">{first}</p>\n<b>{second.replace("the", "the &amp;", 1)}</b><!-- note -->'
    answer = httpx.post(f"{server.url}/translate",
                        json={"q": html, "source": "en", "target": "de", "format": "html"}).json()["translatedText"]
    a, b = cli_translations(run, [first, second.replace("the", "the &", 1)])
    assert answer == f'<p class="intro">{a}</p>\n<b>{b.replace("&", "&amp;")}</b><!-- note -->'
    expected_html = answer
    # A script, a style sheet and code are code, not text, and an element may say translate="no":
    # they come back exactly as they were (code and kept text in a paragraph once each, in it).
    head = f'<script type="module">const note = "{first}";</script><STYLE>p {{ color: red }}</Style>'
    code = f'{head}<p>{first} <code>{second}</code> <span translate="no">{second}</span></p>'
    answer = httpx.post(f"{server.url}/translate",
                        json={"q": code, "source": "en", "target": "de", "format": "html"}).json()["translatedText"]
    assert answer.startswith(f"{head}<p>") and answer.endswith("</p>")
    assert answer.count(f"<code>{second}</code>") == answer.count(f'<span translate="no">{second}</span>') == 1
    # Offline, s2s translate --html (and Translator.translate_html) translate a document the same way.
    result = s2s_forked("translate", "--checkpoint", run, "--html", stdin=html)  # splitting, as the server does
    assert result.returncode == 0 and result.stdout.decode() == expected_html
    assert Translator.load(run, "cpu", split_sentences=True).translate_html([code, html]) == [answer, expected_html]
    assert_user_error(s2s_forked("translate", "--checkpoint", run, "--html", "--alignment", stdin=html),
                      "--html translates as one document: --alignment does not apply; drop it or translate lines without --html")


def test_a_sentence_with_inline_elements_is_translated_whole_by_the_server_and_offline_alike(run, server):
    """<b>, <a href> inside a sentence: the sentence is translated as if they were not there,
    and they come back around the words the attention places them at, in every alternative, the
    same from /translate, /translate_file, `s2s translate --html` and Translator.translate_html."""
    first, second = toy_lines("test", 2)[0]
    words = first.split()
    marked = " ".join([f'<a href="/x?a=1&amp;b=2">{words[0]}</a>', *words[1:-2], f"<b>{words[-2]}</b>", words[-1]])
    page = f'<div lang="en"><p>{marked}</p>\n<p>{second}</p></div>'
    answer = httpx.post(f"{server.url}/translate", json={"q": page, "source": "en", "target": "de", "format": "html",
                                                         "alternatives": 1}).json()
    strip = lambda text: re.sub(r"<[^>]*>", "", text)  # noqa: E731
    nbest = [line.split(" ||| ")[1] for line in
             cli_translations(run, [first, second], "--split-sentences", "--nbest", 2, "--beam-size", 2)]
    for version, (a, b) in ((answer["translatedText"], nbest[0::2]), (answer["alternatives"][0], nbest[1::2])):
        assert strip(version) == strip(page).replace(first, escape(a, quote=False)).replace(
            second, escape(b, quote=False))
    a1, b1 = cli_translations(run, [first, second], "--split-sentences")
    for tag in ('<a href="/x?a=1&amp;b=2">', "</a>", "<b>", "</b>"):
        assert answer["translatedText"].count(tag) == 1 and answer["alternatives"][0].count(tag) == 1
    # Without alternatives, the run's own beam: what s2s translate --html prints.
    answer = httpx.post(f"{server.url}/translate", json={"q": page, "source": "en", "target": "de",
                                                         "format": "html"}).json()["translatedText"]
    assert strip(answer) == strip(page).replace(first, escape(a1, quote=False)).replace(second, escape(b1, quote=False))
    assert answer.startswith('<div lang="de">')  # the language it declared is the target's now
    result = s2s_forked("translate", "--checkpoint", run, "--html", stdin=page)
    assert result.returncode == 0 and result.stdout.decode() == answer
    assert Translator.load(run, "cpu", split_sentences=True).translate_html(page) == answer
    upload = httpx.post(f"{server.url}/translate_file", data={"source": "en", "target": "de"},
                        files={"file": ("page.html", page.encode("utf-8"))})
    assert httpx.get(upload.json()["translatedFileUrl"]).text == answer


def test_files_are_translated_with_their_layout_and_downloaded_by_their_name(run, server):
    """LibreTranslate's /translate_file and /download_file: a text file comes back line for line
    (line ends, empty lines and indentation kept), an HTML file with its markup and code."""
    lines = toy_lines("test", 4)[0]
    translated = cli_translations(run, lines, "--split-sentences")
    text = f"\ufeff{lines[0]}\r\n\r\n    {lines[1]}\r\n{lines[2]} {lines[3]}\n"
    upload = httpx.post(f"{server.url}/translate_file", data={"source": "en", "target": "de"},
                        files={"file": ("my notes ü#1.txt", text.encode("utf-8"), "text/plain")})
    assert upload.status_code == 200, upload.text
    url = upload.json()["translatedFileUrl"]
    assert url.startswith(f"{server.url}/download_file/") and url.endswith("my%20notes%20%C3%BC%231.txt")
    download = httpx.get(url)
    assert download.status_code == 200 and download.headers["content-type"] == "text/plain; charset=utf-8"
    assert download.headers["content-disposition"] == \
        "attachment; filename=\"my notes _#1.txt\"; filename*=UTF-8''my%20notes%20%C3%BC%231.txt"
    (both,) = cli_translations(run, [f"{lines[2]} {lines[3]}"], "--split-sentences")
    assert download.text == f"{translated[0]}\r\n\r\n    {translated[1]}\r\n{both}\n"
    assert httpx.get(url).text == download.text  # kept: a second download gets it again

    page = (f'<html><head><script>var s = "{lines[0]}";</script></head>\n'
            f'<body><p class="x">{lines[0]}</p><p>{lines[1].replace("the", "the &amp;", 1)}</p></body></html>')
    upload = httpx.post(f"{server.url}/translate_file", data={"source": "auto", "target": "de"},
                        files={"file": ("page.HTML", page.encode("utf-8"))})
    first, second = cli_translations(run, [lines[0], lines[1].replace("the", "the &", 1)], "--split-sentences")
    download = httpx.get(upload.json()["translatedFileUrl"])
    assert download.headers["content-type"] == "text/html; charset=utf-8"
    assert download.text == (f'<html><head><script>var s = "{lines[0]}";</script></head>\n'
                             f'<body><p class="x">{first}</p><p>{second.replace("&", "&amp;")}</p></body></html>')

    def refused(name: str, data: bytes, status: int = 400) -> str:
        answer = httpx.post(f"{server.url}/translate_file", data={"source": "en", "target": "de"},
                            files={"file": (name, data)})
        assert answer.status_code == status, answer.text
        return answer.json()["error"]

    assert refused("latin1.txt", "Größe".encode("latin-1")) == "latin1.txt: not UTF-8 text (byte 2 is not UTF-8)"
    assert "the limit for a file is 320000" in refused("long.txt", b"a " * 160_001)
    assert refused("big.txt", b"a" * (16 << 20), 413) == f"request body over {16 << 20} bytes"
    assert refused("notes", b"text") == \
        "notes: this server translates .txt, .html, .htm, .docx, .odt, .pptx, .odp, .epub files"
    missing = httpx.get(f"{server.url}/download_file/0123.notes.txt")
    assert missing.status_code == 404 and "kept for 30 minutes" in missing.json()["error"]
    # Metrics name endpoints, not the paths clients make up; an unknown path or method is an
    # error like any other.
    unknown = httpx.get(f"{server.url}/no/such/page/{time.time()}")
    assert unknown.status_code == 404 and "no such endpoint; the API is at /docs" in unknown.json()["error"]
    wrong_method = httpx.delete(f"{server.url}/translate_file")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json() == {"error": "DELETE /translate_file: not allowed; use POST"}
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'endpoint="/download_file/{download}",status="404"' in metrics
    assert 'endpoint="other",status="404"' in metrics and "no/such/page" not in metrics


def test_word_and_opendocument_files_come_back_translated_paragraph_by_paragraph(run, server, tmp_path):
    """A .docx (or .odt) keeps everything but its text; each stretch of a paragraph's text is translated
    as /translate translates a text, whatever runs Word cut it into."""
    import io
    import zipfile

    from test_documents import make_docx

    from seq2seq_cli.office import WORD, OfficeDocument

    original = make_docx()
    upload = httpx.post(f"{server.url}/translate_file", data={"source": "en", "target": "de"},
                        files={"file": ("Bericht.docx", original)})
    assert upload.status_code == 200, upload.text
    download = httpx.get(upload.json()["translatedFileUrl"])
    assert download.status_code == 200
    assert download.headers["content-type"] == \
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    texts = OfficeDocument(original, WORD).runs()
    assert OfficeDocument(download.content, WORD).runs() == cli_translations(run, texts, "--split-sentences")
    assert zipfile.ZipFile(io.BytesIO(download.content)).read("word/media/image1.png") == bytes(range(256)) * 4
    # A picture-heavy document is over the 1 MiB of a request, and within a file's 16 MiB.
    padded = io.BytesIO(original)
    with zipfile.ZipFile(padded, "a") as archive:
        archive.writestr("word/media/photo.jpg", os.urandom(3 << 20), zipfile.ZIP_STORED)
    big = httpx.post(f"{server.url}/translate_file", data={"target": "de"}, files={"file": ("big.docx", padded.getvalue())})
    assert big.status_code == 200, big.text
    broken = httpx.post(f"{server.url}/translate_file", data={"target": "de"}, files={"file": ("x.docx", b"PK junk")})
    assert broken.status_code == 400 and broken.json()["error"].startswith("x.docx: not a Word document that can be read")
    # An OpenDocument text the same way.
    from test_documents import make_odt

    from seq2seq_cli.office import OPEN_DOCUMENT

    upload = httpx.post(f"{server.url}/translate_file", data={"target": "de"}, files={"file": ("b.odt", make_odt())})
    download = httpx.get(upload.json()["translatedFileUrl"])
    assert download.headers["content-type"] == "application/vnd.oasis.opendocument.text"
    texts = OfficeDocument(make_odt(), OPEN_DOCUMENT).runs()
    assert [text.strip() for text in OfficeDocument(download.content, OPEN_DOCUMENT).runs()] == \
        cli_translations(run, texts, "--split-sentences")  # "Page " keeps its space before the page number
    # An e-book comes back as `s2s translate --input book.epub` writes it, byte for byte (its
    # chapter's inline elements placed by the same attention).
    from test_documents import make_epub

    book = tmp_path / "book.epub"
    book.write_bytes(make_epub())
    upload = httpx.post(f"{server.url}/translate_file", data={"target": "de"}, files={"file": ("Buch.epub", book.read_bytes())})
    download = httpx.get(upload.json()["translatedFileUrl"])
    assert download.headers["content-type"] == "application/epub+zip"
    offline = s2s_forked("translate", "--checkpoint", run, "--device", "cpu", "--input", book, "--output", tmp_path / "de.epub")
    assert offline.returncode == 0, offline.stderr.decode()
    assert download.content == (tmp_path / "de.epub").read_bytes()


def test_translated_files_are_kept_for_a_while_within_a_memory_budget():
    from seq2seq_cli.serve import TranslatedFiles

    now = [0.0]
    files = TranslatedFiles(keep_s=60, max_bytes=10, clock=lambda: now[0])
    first = files.add("a.txt", b"1234", "text/plain")
    second = files.add("a.txt", b"5678", "text/plain")
    assert first != second and first.endswith(".a.txt") and len(first) == 32 + len(".a.txt")
    assert files.get(first) == ("a.txt", b"1234", "text/plain")
    third = files.add("b.txt", b"90ab", "text/plain")  # 12 bytes in all: the oldest goes
    assert files.get(first) is None and files.get(second) is not None and files.get(third) is not None
    now[0] = 61
    assert files.get(second) is None
    files.add("c.txt", b"c", "text/plain")  # expired files are dropped as new ones come
    assert len(files._files) == 1 and files._bytes == 1


def test_paragraphs_are_translated_sentence_by_sentence(run, server):
    """As LibreTranslate does: a text is split into sentences (``s2s translate --split-sentences``),
    in plain text, in HTML and on /v1 unless a request says otherwise."""
    tokenizers = Tokenizers.load(run / "tokenizer")
    by_length = sorted(toy_lines("test", 40)[0], key=lambda line: len(tokenizers.encode_src([line])[0]))
    paragraph = " ".join(by_length[:2])
    assert len(tokenizers.encode_src([paragraph])[0]) <= 30  # within data.max_len whole
    split_nbest, (split,), (whole,) = (
        cli_translations(run, [paragraph], *options) for options in (
            ["--split-sentences", "--beam-size", "2", "--nbest", "2"], ["--split-sentences"], []))
    # LibreTranslate's alternatives: a beam of alternatives + 1 (the run's beam is smaller).
    answer = httpx.post(f"{server.url}/translate", json={"q": paragraph, "source": "en", "target": "de",
                                                         "alternatives": 1}).json()
    assert [answer["translatedText"], *answer["alternatives"]] == [row.split(" ||| ")[1] for row in split_nbest]
    html = httpx.post(f"{server.url}/translate", json={"q": f"<p>{paragraph}</p>", "source": "en", "target": "de",
                                                       "format": "html"}).json()["translatedText"]
    assert html == f"<p>{split}</p>"
    def sentences_translated() -> float:  # what /metrics says, queue and batch limits count
        metrics = httpx.get(f"{server.url}/metrics").text
        return float(next(l.split()[1] for l in metrics.splitlines() if l.startswith("s2s_sentences_translated_total")))

    before = sentences_translated()
    native = httpx.post(f"{server.url}/v1/translate", json={"texts": [paragraph]}).json()["translations"][0]
    assert native["translation"] == split
    assert sentences_translated() == before + 2
    unsplit = httpx.post(f"{server.url}/v1/translate", json={"texts": [paragraph], "split_sentences": False}).json()
    assert sentences_translated() == before + 3
    assert unsplit["translations"][0]["translation"] == whole != split
    # Unsplit, a text over the run's data.max_len (30) is translated in pieces as a sentence
    # that long is when splitting, not cut off as s2s translate cuts it (with a warning no
    # client would see).
    long_text = " and ".join(line.rstrip(".") for line in toy_lines("test", 6)[0])
    (pieces,), (cut,) = (cli_translations(run, [long_text], *options) for options in (["--split-sentences"], []))
    assert pieces != cut and len(pieces.split()) > 1.5 * len(cut.split())
    for split_on_the_server in (True, False):
        answer = httpx.post(f"{server.url}/v1/translate",
                            json={"texts": [long_text], "split_sentences": split_on_the_server}).json()
        assert answer["translations"][0]["translation"] == pieces
    bad = httpx.post(f"{server.url}/v1/translate", json={"texts": [paragraph], "split_sentences": "yes"})
    assert bad.status_code == 400 and "split_sentences must be true or false" in bad.json()["error"]


def test_text_already_in_the_target_language_comes_back_as_it_is(run, server):
    """As LibreTranslate answers it: with source auto, a text detected in the target language
    is not translated (the en->de model would make up German from German); so is a text whose
    source is named as the target. /detect ranks every served language, targets included."""
    english, german = (lines[:2] for lines in toy_lines("test", 2))
    expected = cli_translations(run, english, "--split-sentences", "--beam-size", "2", "--nbest", "2")
    mixed = [english[0], german[0], english[1], german[1]]
    answer = httpx.post(f"{server.url}/translate", json={"q": mixed, "source": "auto", "target": "de",
                                                         "alternatives": 1}).json()
    translated = [row.split(" ||| ")[1] for row in expected]
    assert answer["translatedText"] == [translated[0], german[0], translated[2], german[1]]
    assert answer["alternatives"] == [[translated[1]], [], [translated[3]], []]
    assert [d["language"] for d in answer["detectedLanguage"]] == ["en", "de", "en", "de"]
    assert all(d["confidence"] > 90 for d in answer["detectedLanguage"])
    html = f"<p>{german[0]}</p>\n<b>{german[1]}</b>"
    assert httpx.post(f"{server.url}/translate", json={"q": html, "source": "auto", "target": "de",
                                                       "format": "html"}).json()["translatedText"] == html
    assert httpx.post(f"{server.url}/translate", json={"q": german[0], "source": "de", "target": "de"}).json() == \
        {"translatedText": german[0]}
    detected = httpx.post(f"{server.url}/detect", json={"q": german[0]}).json()
    assert [d["language"] for d in detected] == ["de", "en"] and detected[0]["confidence"] > 90


def test_native_endpoint_gives_scores_nbest_and_attention(run, server):
    line = toy_lines("test", 1)[0][0]
    nbest = cli_translations(run, [line], "--beam-size", "3", "--nbest", "2")
    answer = httpx.post(f"{server.url}/v1/translate",
                        json={"texts": [line], "beam_size": 3, "nbest": 2, "attention": True}).json()
    (item,) = answer["translations"]
    assert [(n["translation"], f"{n['score']:.4f}") for n in item["nbest"]] == \
        [tuple(row.split(" ||| ")[1:]) for row in nbest]
    assert item["translation"] == item["nbest"][0]["translation"]
    assert len(item["attention"]) == len(item["target_tokens"])
    assert all(len(row) == len(item["source_tokens"]) for row in item["attention"])
    assert item["source_tokens"][-1] == "[SEP]" and item["target_tokens"][-1] == "[SEP]"
    # The word alignment s2s translate --alignment prints (the server splits sentences by default).
    (printed,) = cli_translations(run, [line], "--alignment", "--split-sentences")
    aligned = httpx.post(f"{server.url}/v1/translate", json={"texts": [line], "alignment": True}).json()
    (item,) = aligned["translations"]
    assert f"{item['translation']} ||| {' '.join(f'{s}-{t}' for s, t in item['alignment'])}" == printed
    assert "attention" not in item
    bad = httpx.post(f"{server.url}/v1/translate", json={"texts": [line], "alignment": "yes"})
    assert bad.status_code == 400 and bad.json()["error"] == "alignment must be true or false"


def test_native_endpoint_puts_constraints_in_as_the_cli_does(run, server):
    """/v1/translate's constraints: each text's phrases in its translations, what s2s translate
    --constraints prints for SOURCE<TAB>PHRASE lines; what they need is said in a 400."""
    lines = [line for line in toy_lines("test", 3)[0]]
    phrases = [["Katze"], ["Katze", "sehr"], []]
    printed = cli_translations(run, [f"{line}\t" + "\t".join(wanted) for line, wanted in zip(lines, phrases)],
                               "--constraints", "--beam-size", "4")
    answer = httpx.post(f"{server.url}/v1/translate",
                        json={"texts": lines, "beam_size": 4, "constraints": phrases}).json()
    assert [item["translation"] for item in answer["translations"]] == printed
    assert all(phrase in item["translation"] for item, wanted in zip(answer["translations"], phrases) for phrase in wanted)
    for body, fragment in (({"beam_size": 1}, "constraints need beam search"),
                           ({"beam_size": 4, "split_sentences": True}, "set split_sentences to false"),
                           ({"beam_size": 4, "constraints": [["Katze"]]}, "a list of 3 list(s) of phrases"),
                           ({"beam_size": 4, "constraints": [["a\tb"], [], []]}, "no tab or line break"),
                           ({"beam_size": 4, "texts": [" ".join(lines) * 20] * 3}, "over the model's limit")):
        bad = httpx.post(f"{server.url}/v1/translate", json={"texts": lines, "constraints": phrases, **body})
        assert bad.status_code == 400 and fragment in bad.json()["error"], bad.text


def test_native_endpoint_takes_a_glossary_of_its_own_as_the_cli_does(run, server, tmp_path):
    """/v1/translate's glossary: each sentence holding a source term gets its target term, what
    s2s translate --glossary prints for the same terms; what it needs is said in a 400."""
    english = toy_lines("dev", 12)[0]
    texts = [f"{a} {b}" for a, b in zip(english[::2], english[1::2])]
    terms = {"bird": "Arzt", "sister": "Vater"}
    file = tmp_path / "terms.tsv"
    file.write_text("".join(f"{source}\t{target}\n" for source, target in terms.items()))
    printed = cli_translations(run, texts, "--glossary", file, "--beam-size", "4", "--split-sentences")
    assert printed != cli_translations(run, texts, "--beam-size", "4", "--split-sentences")
    answer = httpx.post(f"{server.url}/v1/translate", json={"texts": texts, "beam_size": 4, "glossary": terms},
                        timeout=60).json()
    assert [item["translation"] for item in answer["translations"]] == printed
    for body, fragment in (({"beam_size": 1}, "set beam_size to 2 or more"),
                           ({"glossary": [["bird", "Arzt"]]}, "must be an object of source term -> target term"),
                           ({"glossary": {"bird": "Arzt\tHund"}}, "without tabs or line breaks"),
                           ({"glossary": {"bird": " "}}, "a term must be text holding a word"),
                           ({"glossary": {"bird": "Arzt", " bird": "Hund"}}, "a source term is given twice"),
                           ({"glossary": {"bird": "ሰላም"}}, "vocabulary cannot spell 'ሰላም'"),
                           ({"glossary": {f"w{i}": "Arzt" for i in range(1001)}}, "at most 1000 terms")):
        bad = httpx.post(f"{server.url}/v1/translate", json={"texts": texts, "beam_size": 4, "glossary": terms, **body})
        assert bad.status_code == 400 and fragment in bad.json()["error"], bad.text


def test_a_glossary_goes_into_every_translation_served_as_the_cli_puts_it_in(run, three_pairs, tmp_path):
    """``serve --glossary en:de=FILE`` beside a de->en run: LibreTranslate's /translate (sentence
    by sentence) gives what s2s translate --glossary --split-sentences prints, each en->de
    sentence with its terms, and de->en as without it; a search that cannot put them in is
    refused, and so is a glossary whose pair is not served or not named where several are."""
    terms = tmp_path / "terms.tsv"
    terms.write_text("bird\tArzt\nsister\tVater\n")
    english, german = toy_lines("dev", 12)
    texts = [f"{a} {b}" for a, b in zip(english[::2], english[1::2])]
    _, runs = three_pairs
    printed = cli_translations(run, texts, "--glossary", terms, "--beam-size", "4", "--split-sentences")
    untouched = cli_translations(runs["de", "en"], german, "--beam-size", "4", "--split-sentences")
    served = Server(run, "--checkpoint", runs["de", "en"], "--glossary", f"en:de={terms}", "--beam-size", "4",
                    "--decoders", "1")
    try:
        answer = httpx.post(f"{served.url}/translate", json={"q": texts, "source": "en", "target": "de"}, timeout=60)
        assert answer.json()["translatedText"] == printed
        with_term = [translated for text, translated in zip(texts, printed) if held_in(text, "bird")]  # not "birds"
        assert len(with_term) == 3 and all(held_in(translated, "Arzt") for translated in with_term)
        other = httpx.post(f"{served.url}/translate", json={"q": german, "source": "de", "target": "en"}, timeout=60)
        assert other.json()["translatedText"] == untouched
        refused = httpx.post(f"{served.url}/v1/translate", json={"texts": texts, "beam_size": 1, "target": "de"})
        assert refused.status_code == 400 and "set beam_size to 2 or more" in refused.json()["error"]
        greedy = httpx.post(f"{served.url}/v1/translate", json={"texts": german, "beam_size": 1, "target": "en"})
        assert greedy.status_code == 200  # the pair without a glossary searches as it is asked
        # A request's own terms go beside the server's, and win where both name a term.
        merged = tmp_path / "merged.tsv"
        merged.write_text("bird\tArzt\nsister\tMutter\n")
        own = httpx.post(f"{served.url}/v1/translate", timeout=60,
                         json={"texts": texts, "beam_size": 4, "target": "de", "glossary": {"sister": "Mutter"}})
        assert [item["translation"] for item in own.json()["translations"]] == \
            cli_translations(run, texts, "--glossary", merged, "--beam-size", "4", "--split-sentences")
    finally:
        code, log = served.stop()
    assert code == 0, log
    both = ("serve", "--checkpoint", run, "--checkpoint", runs["de", "en"], "--device", "cpu", "--beam-size", "2")
    assert_user_errors(
        ((*both, "--glossary", terms), f"--glossary {terms}: this server serves en:de, de:en; name the pair"),
        ((*both, "--glossary", f"fr:de={terms}"), "no run served translates fr -> de"),
        ((*both, "--glossary", f"en:de={terms}", "--glossary", f"en:de={terms}"), "are both for en -> de"))
    alone = server_models([str(run)], LoadOptions(beam_size=2, glossaries=((str(terms), None, Glossary.read(terms)),)))
    assert alone[0].translator.glossary.terms == {"bird": "Arzt", "sister": "Vater"}  # the only pair needs no name


@pytest.mark.parametrize("body, content_type, status, fragment", [
    (b'{"q": "Hello", "target": ', "application/json", 400, "malformed JSON"),
    (b'{"q": 5, "target": "de"}', "application/json", 400, "q must be a string or a list of strings"),
    (b'{"q": "Hello", "source": "fr", "target": "de"}', "application/json", 400, "no model translates fr -> de"),
    (b'{"q": "Hello", "target": "de", "alternatives": "many"}', "application/json", 400, "alternatives must be"),
    (b'{"q": "Hello", "target": "de", "alternatives": true}', "application/json", 400, "from 0 to 10, not true"),
    (b'{"q": "\xff\xfe", "target": "de"}', "application/json", 400, "not valid UTF-8"),
    (json.dumps({"q": ["Hi"] * 65, "target": "de"}).encode(), "application/json", 400, "limit is 64"),
    (json.dumps({"q": "x" * 5001, "target": "de"}).encode(), "application/json", 400, "over the limit of 5000"),
    (b'{"q": "' + b"x" * (1 << 20) + b'"}', "application/json", 413, "request body over"),
])
def test_bad_requests_get_clear_errors_and_the_server_goes_on(server, body, content_type, status, fragment):
    answer = httpx.post(f"{server.url}/translate", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == status and fragment in answer.json()["error"], answer.text
    assert httpx.post(f"{server.url}/translate", json={"q": "Hello", "target": "de"}).status_code == 200


def test_a_client_that_leaves_does_not_break_its_batch(server):
    url = f"{server.url}/translate"
    body = json.dumps({"q": toy_lines("dev", 40)[0], "target": "de"}).encode()
    with ThreadPoolExecutor(max_workers=2) as pool:
        staying = pool.submit(httpx.post, url, json={"q": ["Hello", "The dog runs."], "target": "de"}, timeout=30)
        for _ in range(3):  # whole requests sent, then the connection closed without reading the answer
            with socket.create_connection(("127.0.0.1", server.port)) as leaving:
                leaving.sendall(b"POST /translate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert staying.result().status_code == 200
    assert httpx.post(url, json={"q": "Hi", "target": "de"}).status_code == 200


def decoder_processes(server) -> list[int]:
    """The pids of the server's decoder processes (its spawned children, not the resource tracker)."""
    pid = server.process.pid
    children = [int(c) for task in os.listdir(f"/proc/{pid}/task")
                for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
    return [c for c in children if b"spawn_main" in open(f"/proc/{c}/cmdline", "rb").read()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the decoder process in /proc")
def test_a_killed_decoder_process_is_replaced_and_no_answer_is_lost(run, server):
    lines = toy_lines("dev", 6)[0]
    expected = cli_translations(run, lines)
    killed = decoder_processes(server)  # one per CPU thread
    assert killed
    for decoder in killed:  # all of them, so that the request meets a dead one
        os.kill(decoder, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    answer = httpx.post(f"{server.url}/translate", json={"q": lines, "target": "de"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["translatedText"] == expected
    answer = httpx.post(f"{server.url}/translate", json={"q": lines[::-1], "target": "de"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["translatedText"] == expected[::-1]
    replacements = decoder_processes(server)  # a dead one is replaced when a batch meets it
    assert replacements and not set(replacements) & set(killed)


def test_api_key_full_queue_then_sigterm_answers_every_accepted_request(run):
    """Also with two decoder processes, which must both stop only after the last batch."""
    lines = toy_lines("dev", 20)[0]
    expected = cli_translations(run, lines)
    server = Server(run, "--api-key", "secret", "--max-queue", "20", "--max-wait-ms", "8000", "--decoders", "2")
    url = f"{server.url}/translate"
    assert httpx.post(url, json={"q": "Hi", "target": "de"}).status_code == 400
    assert httpx.post(url, json={"q": "Hi", "target": "de", "api_key": "wrong"}).status_code == 403

    def ask(text):
        return httpx.post(url, json={"q": text, "target": "de", "api_key": "secret"}, timeout=60)

    def queued() -> float:
        metrics = httpx.get(f"{server.url}/metrics").text
        return float(next(l.split()[1] for l in metrics.splitlines() if l.startswith("s2s_queue_sentences ")))

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = [pool.submit(ask, line) for line in lines]
        # The batch waits 8 s for more sentences (shutting down waits for it too), time for a busy
        # machine to deliver all 20 before it leaves.
        deadline = time.time() + 7
        while queued() < 20:  # all 20 accepted, waiting for their batch
            assert time.time() < deadline
            time.sleep(0.02)
        full = ask("one more")
        assert full.status_code == 429 and full.headers["Retry-After"] == "1" and "limit 20" in full.json()["error"]
        server.process.send_signal(signal.SIGTERM)
        results = [answer.result() for answer in answers]
    assert [r.status_code for r in results] == [200] * 20
    assert [r.json()["translatedText"] for r in results] == expected
    code, log = server.stop()
    assert code == 0, log
    assert f"serving en->de at {server.url}/" in log


def test_req_limit_refuses_a_client_over_its_requests_a_minute(run):
    """--req-limit 3: three translate/detect requests from one address, then 429 with Retry-After
    (the next one comes back after 20 s); the other endpoints are not limited."""
    server = Server(run, "--req-limit", 3)
    try:
        assert httpx.post(f"{server.url}/translate", json={"q": "Hi", "source": "en", "target": "de"}).status_code == 200
        assert httpx.post(f"{server.url}/detect", json={"q": "The man sees the dog."}).status_code == 200
        assert httpx.post(f"{server.url}/v1/translate", json={"texts": ["Hi"]}).status_code == 200
        refused = httpx.post(f"{server.url}/translate", json={"q": "Hi", "source": "en", "target": "de"})
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 20
        assert "too many requests from 127.0.0.1: the limit is 3 a minute (--req-limit)" in refused.json()["error"]
        # A reverse proxy on this machine names its client: that client has an allowance of its own.
        proxied = httpx.post(f"{server.url}/translate", json={"q": "Hi", "source": "en", "target": "de"},
                             headers={"X-Forwarded-For": "203.0.113.7"})
        assert proxied.status_code == 200, proxied.text
        assert httpx.get(f"{server.url}/languages").status_code == 200
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 's2s_requests_total{endpoint="/translate",status="429"} 1.0' in metrics
    finally:
        code, log = server.stop()
    assert code == 0, log


def test_request_limit_is_a_token_bucket_per_client():
    from seq2seq_cli.errors import ClientError
    from seq2seq_cli.serve import RequestLimit

    now = [100.0]
    limit = RequestLimit(6, clock=lambda: now[0], max_clients=2)  # one request back each 10 s

    def refused(client: str):
        with pytest.raises(ClientError) as error:
            limit.take(client)
        return error.value

    for _ in range(6):  # a burst of the whole minute's allowance
        limit.take("a")
    error = refused("a")
    assert error.status == 429 and error.headers == {"Retry-After": "10"}
    limit.take("b")  # each address has its own
    now[0] += 7.5
    assert refused("a").headers == {"Retry-After": "3"}  # a refused request costs nothing
    now[0] += 2.5
    limit.take("a")
    refused("a")
    now[0] += 600  # a client idle for long gets its whole allowance back, no more
    for _ in range(6):
        limit.take("a")
    refused("a")
    limit.take("c")  # a third client: "b", whose allowance is whole again, is forgotten
    assert set(limit._buckets) == {"a", "c"}


def test_serve_user_errors(run, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_user_errors(
            (("serve", "--checkpoint", tmp_path / "nothing"), "no such checkpoint file or run directory"),
            (("serve", "--checkpoint", run, "--checkpoint", run, "--device", "cpu"), "both translate en -> de"),
            (("serve", "--checkpoint", run, "--device", "cpu", "--quantize", "int4"), "--quantize int4: unknown"),
            (("serve", "--checkpoint", run, "--port", port, "--device", "cpu"), f"cannot listen on 127.0.0.1:{port}"))


def test_the_decoder_processes_search_in_the_number_format_asked_for(run):
    """The server's own copy of a run is only for its settings: the decoders load theirs as told."""
    lines = toy_lines("dev", 8)[0]

    def scored(rows):  # `s2s translate --nbest` lines -> (translation, score) pairs
        return [tuple(row.split(" ||| ")[1:]) for row in rows]

    expected = scored(cli_translations(run, lines, "--quantize", "int8", "--beam-size", "2", "--nbest", "2"))
    assert expected != scored(cli_translations(run, lines, "--beam-size", "2", "--nbest", "2"))  # int8 shows
    served = Server(run, "--quantize", "int8", "--decoders", "1")
    try:
        answer = httpx.post(f"{served.url}/v1/translate", json={"texts": lines, "beam_size": 2, "nbest": 2},
                            timeout=60).json()
        assert [(n["translation"], f"{n['score']:.4f}") for item in answer["translations"]
                for n in item["nbest"]] == expected
    finally:
        code, log = served.stop()
    assert code == 0, log


def chromium():
    """Headless Debian Chromium driven by selenium; a skip here, a failure where .ci/run set S2S_REQUIRE_BROWSER."""
    binary = shutil.which("chromium")
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if webdriver is None or binary is None or not os.path.exists(driver):
        message = ("no browser for the page test: apt-get install chromium chromium-driver, "
                   "and pip install -e '.[dev]' for selenium")
        if os.environ.get("S2S_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def test_the_page_in_a_real_browser(run, server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    sentence = " ".join(toy_lines("dev", 2)[0])  # a paragraph: split into its sentences by default
    expected = cli_translations(run, [sentence], "--beam-size", "5", "--split-sentences")[0]
    api = httpx.post(f"{server.url}/v1/translate",
                     json={"texts": [sentence], "beam_size": 5, "attention": True, "alignment": True},
                     timeout=60).json()["translations"][0]
    browser = chromium()
    try:
        browser.get(server.url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#pair option"))
        assert [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#pair option")] == ["English → German"]
        browser.find_element(By.ID, "source").send_keys(sentence)
        browser.find_element(By.ID, "translate").click()
        wait.until(lambda b: b.find_element(By.ID, "result").is_displayed())
        assert browser.find_element(By.ID, "translation").text == expected
        assert len(browser.find_elements(By.CSS_SELECTOR, "#alternatives li")) == 3
        assert " s" in browser.find_element(By.ID, "timing").text
        # The heatmap: one cell per source x target subword, labelled with both.
        sources, targets = api["source_tokens"], api["target_tokens"]
        assert len(browser.find_elements(By.CSS_SELECTOR, "#heatmap td.cell")) == len(sources) * len(targets)
        assert [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#heatmap tbody th")] == targets
        assert len(browser.find_elements(By.CSS_SELECTOR, "#heatmap thead th")) == len(sources) + 1
        # The word alignment: pointing at a translated word lights up the source word it came from.
        source_words = browser.find_elements(By.CSS_SELECTOR, "#align-source span")
        target_words = browser.find_elements(By.CSS_SELECTOR, "#align-target span")
        assert [w.text for w in source_words] == sentence.split() and [w.text for w in target_words] == expected.split()
        for source_index, target_index in api["alignment"][:3]:
            ActionChains(browser).move_to_element(target_words[target_index]).perform()
            lit = [w.get_attribute("data-index") for w in source_words if "linked" in w.get_attribute("class")]
            assert lit == [str(source_index)]
        # A glossary typed into the page puts its terms in, as s2s translate --glossary does.
        assert "bird" in sentence.split()
        terms = tmp_path / "terms.tsv"
        terms.write_text("bird\tArzt\n")
        # The page asks for 3 alternatives: each bank of the constrained search keeps 3 beams.
        with_terms = cli_translations(run, [sentence], "--beam-size", "5", "--nbest", "3", "--split-sentences",
                                      "--glossary", terms)[0].split(" ||| ")[1]
        assert with_terms != expected and "Arzt" in with_terms
        browser.find_element(By.CSS_SELECTOR, "#glossary-box summary").click()
        browser.find_element(By.ID, "glossary").send_keys("# house style\nbird = Arzt")
        browser.find_element(By.ID, "translate").click()
        wait.until(lambda b: b.find_element(By.ID, "translation").text == with_terms)
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert png_size(tmp_path / "page.png")[0] >= 1000
        browser.find_element(By.ID, "glossary").send_keys("\nbird")  # a line without its target term
        browser.find_element(By.ID, "translate").click()
        wait.until(lambda b: b.find_element(By.ID, "error").is_displayed())
        assert "Glossary line 3" in browser.find_element(By.ID, "error").text
        browser.find_element(By.ID, "glossary").clear()
        # Ctrl+Enter sends too; an error the server gives is shown in the page, and the button comes back.
        beam = browser.find_element(By.ID, "beam")
        beam.clear()
        beam.send_keys("65")
        browser.find_element(By.ID, "source").send_keys(Keys.CONTROL, Keys.ENTER)
        wait.until(lambda b: b.find_element(By.ID, "error").is_displayed())
        assert "beam_size" in browser.find_element(By.ID, "error").text
        assert browser.find_element(By.ID, "translate").is_enabled()
        # A file, sent as LibreTranslate's page sends it (multipart form data): a link to its translation.
        lines = toy_lines("test", 2)[0]
        notes = tmp_path / "notes.txt"
        notes.write_text("\n".join(lines) + "\n", encoding="utf-8")
        browser.find_element(By.ID, "file").send_keys(str(notes))
        browser.find_element(By.ID, "translate-file").click()
        wait.until(lambda b: b.find_elements(By.ID, "download"))
        link = browser.find_element(By.ID, "download")
        assert link.text == "Download notes.txt" and link.get_attribute("download") == "notes.txt"
        translated = httpx.get(link.get_attribute("href")).text
        assert translated == "\n".join(cli_translations(run, lines, "--split-sentences")) + "\n"
        assert not browser.find_element(By.ID, "error").is_displayed()
    finally:
        browser.quit()


FRENCH = "Le chat mange une petite souris dans la cuisine."


@pytest.fixture(scope="module")
def three_pairs(run, tmp_path_factory):
    """A server of en->de, de->en and "fr"->de (the English corpus under a French label, another
    seed), and the runs it serves."""
    tmp_path = tmp_path_factory.mktemp("three-pairs")
    corpus = tmp_path / "corpus"
    swapped = {f"{split}_{side}": str(corpus / f"{split}.{language}")  # the same corpus, German -> English
               for split in ("train", "dev") for side, language in (("src", "de"), ("tgt", "en"))}
    tiny = dict(decoding={"max_length_offset": 4}, run_dir=str(tmp_path / "de-en"))
    train(load_config(tiny_config(tmp_path, training={"max_steps": 10, "validate_every": 0}, data=swapped, **tiny)))
    tiny["run_dir"] = str(tmp_path / "fr-de")
    train(load_config(tiny_config(tmp_path, training={"max_steps": 10, "validate_every": 0, "seed": 7},
                                  data={"src_lang": "fr"}, **tiny)))
    runs = {("en", "de"): run, ("de", "en"): tmp_path / "de-en", ("fr", "de"): tmp_path / "fr-de"}
    served = Server(run, "--checkpoint", runs["de", "en"], "--checkpoint", runs["fr", "de"], "--decoders", "1")
    yield served, runs
    code, log = served.stop()
    assert code == 0, log


def test_runs_of_three_pairs_serve_from_one_process_and_auto_detects_the_source(three_pairs):
    """Each text of a `source: auto` request goes to the model of the language it is in, as
    LibreTranslate does, and /detect ranks the served source languages."""
    served, runs = three_pairs
    lines = toy_lines("dev", 4)
    english, german = lines[0][0], lines[1][0]
    expected = {pair: cli_translations(runs[pair], texts) for pair, texts in zip((("en", "de"), ("de", "en")), lines)}
    (french,) = cli_translations(runs["fr", "de"], [FRENCH])
    assert french != cli_translations(runs["en", "de"], [FRENCH])[0]  # so the answer says which model translated
    assert httpx.get(f"{served.url}/languages").json() == [
        {"code": "de", "name": "German", "targets": ["en"]}, {"code": "en", "name": "English", "targets": ["de"]},
        {"code": "fr", "name": "French", "targets": ["de"]}]
    for (source, target), texts in zip(expected, lines):
        answer = httpx.post(f"{served.url}/translate", json={"q": texts, "source": source, "target": target})
        assert answer.json() == {"translatedText": expected[source, target]}

    detected = httpx.post(f"{served.url}/detect", data={"q": german}).json()
    assert [d["language"] for d in detected][0] == "de" and len(detected) == 3
    assert abs(sum(d["confidence"] for d in detected) - 100) < 0.1 and detected[0]["confidence"] > 90
    # Two models go to German: each text to the one of its language, one submission each.
    auto = httpx.post(f"{served.url}/translate",
                      json={"q": [english, FRENCH, f"<b>{FRENCH}</b>"], "source": "auto", "target": "de",
                            "format": "html"})
    assert auto.status_code == 200, auto.text
    assert auto.json()["translatedText"] == [expected["en", "de"][0], french, f"<b>{french}</b>"]
    assert [d["language"] for d in auto.json()["detectedLanguage"]] == ["en", "fr", "fr"]
    assert all(d["confidence"] > 90 for d in auto.json()["detectedLanguage"])
    # One model goes to English: "auto" means German there, with the confidence /detect gives.
    auto = httpx.post(f"{served.url}/translate", json={"q": german, "source": "auto", "target": "en"}).json()
    assert auto == {"translatedText": expected["de", "en"][0], "detectedLanguage": detected[0]}
    # LibreTranslate's own Python client, unchanged.
    from libretranslatepy import LibreTranslateAPI

    client = LibreTranslateAPI(served.url)
    assert client.detect(german) == detected
    assert client.translate(FRENCH, "auto", "de") == french
    assert client.translate(english, "en", "de") == expected["en", "de"][0]
    assert [language["code"] for language in client.languages()] == ["de", "en", "fr"]
    # Already in the target language, a text comes back as it is, as on LibreTranslate.
    english_to_english = httpx.post(f"{served.url}/translate", json={"q": english, "target": "en"}).json()
    assert english_to_english["translatedText"] == english
    assert english_to_english["detectedLanguage"]["language"] == "en"
    assert english_to_english["detectedLanguage"]["confidence"] > 90
    assert httpx.post(f"{served.url}/translate", json={"q": german, "source": "de", "target": "de"}).json() == \
        {"translatedText": german}
    for wrong in ({"q": "x", "source": "it", "target": "it"}, {"q": "x", "source": "auto", "target": "fr"}):
        answer = httpx.post(f"{served.url}/translate", json=wrong)
        assert answer.status_code == 400 and "error" in answer.json()
    ambiguous = httpx.post(f"{served.url}/v1/translate", json={"texts": [english], "target": "de"})
    assert ambiguous.status_code == 400 and "set source to one of en, fr" in ambiguous.json()["error"]


def test_the_page_detects_the_language_where_two_go_to_one_target(three_pairs):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    served, runs = three_pairs
    expected = cli_translations(runs["fr", "de"], [FRENCH], "--beam-size", "5")[0]
    browser = chromium()
    try:
        browser.get(served.url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#pair option"))
        assert [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#pair option")] == [
            "German → English", "English → German", "French → German", "Detect language → German"]
        Select(browser.find_element(By.ID, "pair")).select_by_visible_text("Detect language → German")
        browser.find_element(By.ID, "source").send_keys(FRENCH)
        browser.find_element(By.ID, "translate").click()
        wait.until(lambda b: b.find_element(By.ID, "result").is_displayed())
        assert browser.find_element(By.ID, "translation").text == expected
        assert browser.find_element(By.ID, "timing").text.startswith("detected French (")
    finally:
        browser.quit()


def test_libretranslate_client_endpoints_beside_translate():
    """/detect, /frontend/settings and LibreTranslate's answers for what is off; a served
    language the detector does not know is never guessed."""
    from seq2seq_cli.batching import LoadOptions, ServedModel
    from seq2seq_cli.serve import ServeSettings, create_app

    models = [ServedModel("a", ["a"], "en", "de", translator=None), ServedModel("b", ["b"], "qq", "de", None)]
    app = create_app(models, ServeSettings(char_limit=30, api_key="k"), LoadOptions("cpu"))

    async def ask():  # no lifespan: nothing here reaches a decoder
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.get("/frontend/settings"),
                    await client.post("/detect", json={"q": "The man sees the dog.", "api_key": "k"}),
                    await client.post("/detect", json={"q": "The man sees the dog."}),
                    await client.post("/detect", json={"q": "x" * 31, "api_key": "k"}),
                    await client.post("/detect", json={"api_key": "k"}),
                    await client.post("/translate", json={"q": "The man.", "target": "de", "api_key": "k"}),
                    await client.post("/suggest", data={"q": "a", "s": "b"}),
                    await client.post("/translate_file", data={"api_key": "k"}),
                    await client.post("/translate_file", data={"api_key": "k", "target": "de"},
                                      files={"file": ("report.pdf", b"%PDF")})]

    settings, detect, keyless, too_long, empty, auto, suggest, no_file, docx = asyncio.run(ask())
    assert settings.json() == {"apiKeys": True, "keyRequired": True, "charLimit": 30, "frontendTimeout": 500,
                               "suggestions": False, "filesTranslation": True,
                               "supportedFilesFormat": [".txt", ".html", ".htm", ".docx", ".odt", ".pptx", ".odp",
                                                        ".epub"],
                               "language": {"source": {"code": "auto", "name": "Auto Detect"},
                                            "target": {"code": "de", "name": "German"}}}
    assert [d["language"] for d in detect.json()] == ["en", "de"]  # qq cannot be ranked
    assert detect.json()[0]["confidence"] > 90
    assert keyless.status_code == 400 and too_long.status_code == 400 and empty.status_code == 400
    assert "q is required" in empty.json()["error"]
    assert auto.status_code == 400 and "does not know qq" in auto.json()["error"]
    assert suggest.status_code == 403 and suggest.json() == {"error": "Suggestions are disabled on this server."}
    assert no_file.status_code == 400 and no_file.json()["error"].startswith("file is required")
    assert docx.status_code == 400 and docx.json()["error"] == \
        "report.pdf: this server translates .txt, .html, .htm, .docx, .odt, .pptx, .odp, .epub files"


def test_the_language_detector_ranks_the_languages_it_is_given():
    from seq2seq_cli.language_id import LanguageDetector

    detector = LanguageDetector(["fr", "de", "en", "qq", "en"])
    assert detector.languages == ["de", "en", "fr"] and detector.unknown == ["qq"]
    for text, language in (("Der Mann sieht den Hund.", "de"), ("The man sees the dog.", "en"), (FRENCH, "fr")):
        ranking = detector.rank(text)
        assert [code for code, _ in ranking][0] == language and sorted(c for c, _ in ranking) == detector.languages
        assert abs(sum(p for _, p in ranking) - 1) < 1e-5
    assert LanguageDetector(["xx"]).rank("anything") == [("xx", 1.0)]  # one language needs no model


def test_several_languages_without_py3langid_is_a_clear_error(monkeypatch):
    from seq2seq_cli.errors import UserError
    from seq2seq_cli.language_id import LanguageDetector

    monkeypatch.setitem(sys.modules, "py3langid", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "py3langid.langid", None)
    with pytest.raises(UserError, match=r"needs py3langid .*pip install"):
        LanguageDetector(["de", "en"])
    assert LanguageDetector(["de"]).languages == ["de"]  # one language (an xx -> xx run) does not need it


def test_runs_of_one_pair_are_served_as_an_ensemble_with_ensemble(run):
    """--ensemble: runs that translate the same pair become one model; a model with itself is the model."""
    from seq2seq_cli.batching import LoadOptions, load_models

    single, = load_models([str(run)], LoadOptions("cpu"))
    twice, = load_models([str(run), str(run)], LoadOptions("cpu"), ensemble=True)
    assert (twice.source, twice.target) == (single.source, single.target) == ("en", "de")
    assert twice.name == f"{run} + {run}"
    lines = toy_lines("dev", 12)[0]
    assert twice.translator.translate(lines) == single.translator.translate(lines)


def test_an_unhandled_error_is_a_json_500_that_is_counted_and_logged():
    """The observing middleware answers a bug with {"error": ...} (never a traceback to the client),
    and still records the request with its status; answers that went well pass through unchanged."""
    from seq2seq_cli.serve import _Observe

    async def app(scope, receive, send):
        if scope["path"] == "/broken":
            raise RuntimeError("a bug")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"fine"})

    seen = []
    transport = httpx.ASGITransport(app=_Observe(app, lambda *request: seen.append(request[:3])),
                                    raise_app_exceptions=False)

    async def ask():
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/broken"), await client.get("/fine")

    broken, fine = asyncio.run(ask())
    assert broken.status_code == 500 and broken.json() == {"error": "internal error; see the server log"}
    assert fine.status_code == 200 and fine.text == "fine"
    assert seen == [("GET", "/broken", 500), ("GET", "/fine", 200)]
