"""``s2s serve``: a translation service over HTTP that batches concurrent requests.

Concurrent requests become batched searches in ``seq2seq_cli.batching`` (a queue and decoder
processes per model), so every answer equals what ``s2s translate`` prints for the line (with
``--split-sentences``, unless the server was told not to split). This module is the HTTP side.

The API speaks LibreTranslate's (``POST /translate``, ``POST /detect``, ``GET /languages``,
``GET /frontend/settings``), so its clients work unchanged, plus ``POST /v1/translate`` for
what LibreTranslate cannot say (scores, n-best lists, subword tokens and attention),
``GET /health``, ``GET /metrics`` (Prometheus) and ``/docs``. With ``source: auto`` each text
goes to the model of the language it is detected in (``language_id``), as on LibreTranslate,
and a text detected in the target language comes back untranslated.
"""


import asyncio
import functools
import hmac
import json
import logging
import math
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from importlib import resources
from typing import Any, Optional
from urllib.parse import parse_qs, quote

import torch

from seq2seq_cli.batching import (BatchingWorker, Decoded, DecoderProcess, LoadOptions, Search, ServedModel,
                                  load_models)
from seq2seq_cli.device import select_device
from seq2seq_cli.documents import has_inline_markup, html_pieces, reassemble, relabel_languages, runs, text_lines
from seq2seq_cli.errors import ClientError, UserError
from seq2seq_cli.glossary import Glossary
from seq2seq_cli.language_id import LanguageDetector
from seq2seq_cli.office import FILE_FORMATS, OFFICE_FORMATS, read_file
from seq2seq_cli.precision import check_decoding_format
from seq2seq_cli.segmentation import split_sentences

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
# A file to translate may be larger: a .docx carries its pictures.
MAX_FILE_BYTES = 16 << 20
# What an office file may unpack to: its parts are read whole to be written back.
MAX_UNPACKED_FILE_BYTES = 64 << 20
_MEDIA_TYPES = {"text file": "text/plain; charset=utf-8", "html": "text/html; charset=utf-8",
                "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "odt": "application/vnd.oasis.opendocument.text",
                "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
                "odp": "application/vnd.oasis.opendocument.presentation", "epub": "application/epub+zip"}
LANGUAGE_NAMES = {"ar": "Arabic", "cs": "Czech", "de": "German", "en": "English", "es": "Spanish", "fr": "French",
                  "it": "Italian", "ja": "Japanese", "nl": "Dutch", "pl": "Polish", "pt": "Portuguese",
                  "ru": "Russian", "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese"}


class TranslatedFiles:
    """Translated files waiting to be downloaded (LibreTranslate's /download_file), in memory:
    each for ``keep_s`` seconds after its translation, ``max_bytes`` in all (the oldest go first).
    Used on the event loop only, so it needs no lock."""

    def __init__(self, keep_s: float = 1800, max_bytes: int = 128 << 20, clock=time.monotonic):
        self.keep_s = keep_s
        self.max_bytes = max_bytes
        self.clock = clock
        self._files: dict[str, tuple[float, str, bytes, str]] = {}  # oldest first
        self._bytes = 0

    def add(self, name: str, data: bytes, media_type: str) -> str:
        """Keep a file; returns the name to download it by (a random part, then ``name``)."""
        now = self.clock()
        # Oldest first: the expired files come first, then those that leave no room for this one.
        while self._files and (self._bytes + len(data) > self.max_bytes
                               or now - next(iter(self._files.values()))[0] > self.keep_s):
            oldest = next(iter(self._files))
            self._bytes -= len(self._files.pop(oldest)[2])
        download = f"{secrets.token_hex(16)}.{name}"
        self._files[download] = (now, name, data, media_type)
        self._bytes += len(data)
        return download

    def get(self, download: str) -> Optional[tuple[str, bytes, str]]:
        """The file's name, contents and media type; None if there is none by that name (any more)."""
        stored = self._files.get(download)
        if stored is None or self.clock() - stored[0] > self.keep_s:
            return None
        return stored[1:]


class RequestLimit:
    """LibreTranslate's ``--req-limit``: at most ``per_minute`` requests a minute from one client
    address. A token bucket: a client may send ``per_minute`` at once, then one more each
    60 / ``per_minute`` seconds; a request over the limit is refused (429, with ``Retry-After``:
    the whole seconds until the next one is allowed) and costs nothing. Checked on the event
    loop, one request at a time, so it needs no lock."""

    def __init__(self, per_minute: int, clock=time.monotonic, max_clients: int = 10_000):
        self.per_minute = per_minute
        self.interval = 60.0 / per_minute  # seconds for one request to come back
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (requests it may still send, when)
        self._prune_at = max_clients

    def take(self, client: str) -> None:
        now = self.clock()
        allowed, then = self._buckets.get(client, (float(self.per_minute), now))
        allowed = min(float(self.per_minute), allowed + (now - then) / self.interval)
        if allowed < 1:
            wait = max(1, math.ceil((1 - allowed) * self.interval))
            raise ClientError(f"too many requests from {client}: the limit is {self.per_minute} a minute "
                              f"(--req-limit); try again in {wait} s", 429, {"Retry-After": str(wait)})
        self._buckets[client] = (allowed - 1, now)
        if len(self._buckets) > self._prune_at:  # forget the clients whose allowance is whole again
            self._buckets = {c: (a, t) for c, (a, t) in self._buckets.items()
                             if a + (now - t) / self.interval < self.per_minute}
            # Many clients all busy: prune again only when their number has doubled (a pass per request would not do).
            self._prune_at = max(self.max_clients, 2 * len(self._buckets))


@dataclass
class ServeSettings:
    max_batch_sentences: Optional[int] = None
    max_wait_ms: float = 5.0
    max_queue: int = 2048
    char_limit: int = 5000
    batch_limit: int = 64
    api_key: Optional[str] = None
    cors_origin: Optional[str] = None
    decoders: Optional[int] = None  # processes per model, each searching a batch (None: one per CPU thread)
    split_sentences: bool = True  # as LibreTranslate: a paragraph is translated sentence by sentence
    req_limit: int = 0  # requests a minute per client address for translate and detect (0: no limit)


def server_models(checkpoints: list[str], options: LoadOptions, ensemble: bool = False) -> list[ServedModel]:
    """The models as the server's own process holds them, to know their language pairs and
    search settings: loaded on the CPU as stored, after checking that the decoder processes
    can load them as ``options`` say (they load their own copies, so a GPU serves without a
    second copy and CUDA context in the process that answers HTTP)."""
    check_decoding_format(select_device(options.device), options.dtype, options.quantize)
    return load_models(checkpoints, LoadOptions("cpu", options.beam_size, cuda_graphs=options.cuda_graphs,
                                                copy_unknown=options.copy_unknown, glossaries=options.glossaries),
                       ensemble)


def create_app(models: list[ServedModel], settings: ServeSettings, options: LoadOptions):
    """The FastAPI application serving ``models`` (loaded with ``options``); their workers and
    decoder processes start and stop with it."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    # Every language served, into or out of: a text may already be in the language asked for.
    served_languages = {m.source for m in models} | {m.target for m in models}
    detector = LanguageDetector(served_languages)
    if detector.unknown:
        log.warning("source 'auto' and /detect cannot recognise %s: the language detector does not know %s",
                    ", ".join(detector.unknown), "it" if len(detector.unknown) == 1 else "them")
    registry = CollectorRegistry()
    requests_total = Counter("s2s_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                             registry=registry)
    latency = Histogram("s2s_request_seconds", "request latency", ["endpoint"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    batch_sizes = Histogram("s2s_batch_sentences", "sentences per decoding batch", registry=registry,
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
    translated = Counter("s2s_sentences_translated", "sentences translated", registry=registry)
    queue_depth = Gauge("s2s_queue_sentences", "sentences waiting to be decoded", registry=registry)
    queue_depth.set_function(lambda: sum(m.worker.queued_sentences for m in models if m.worker is not None))

    def on_batch(size: int) -> None:
        batch_sizes.observe(size)
        translated.inc(size)

    @asynccontextmanager
    async def lifespan(app):
        # Each decoder searches on one thread: one per thread PyTorch would use, or one per GPU.
        count = settings.decoders or (torch.get_num_threads() if select_device(options.device).type == "cpu" else 1)
        decoders = {model.name: [DecoderProcess(model.checkpoints, options.for_model(model)) for _ in range(count)]
                    for model in models}  # they load in parallel
        for model in models:
            for decoder in decoders[model.name]:
                decoder.ready()
            model.worker = BatchingWorker(decoders[model.name],
                                          settings.max_batch_sentences or model.translator.decoding.batch_size,
                                          settings.max_wait_ms, settings.max_queue,
                                          functools.partial(_sentence_count, model.source), on_batch)
        yield
        for model in models:  # every accepted request is answered before the end
            model.worker.close()
            for decoder in decoders[model.name]:
                decoder.close()

    app = FastAPI(title="s2s translation service", lifespan=lifespan,
                  description="LibreTranslate-compatible API plus /v1/translate; batches concurrent requests.")
    if settings.cors_origin:
        app.add_middleware(CORSMiddleware, allow_origins=[settings.cors_origin], allow_methods=["*"],
                           allow_headers=["*"])

    routes: set[str] = set()  # the app's paths, once they are all made (below)

    def observed(method: str, path: str, status: int, seconds: float) -> None:
        # Metrics are labelled by endpoint, never by any path a client makes up (each label
        # value would be a series of its own, for as long as the server runs).
        endpoint = (path if path in routes else "/download_file/{download}" if path.startswith("/download_file/")
                    else "other")
        requests_total.labels(endpoint, str(status)).inc()
        latency.labels(endpoint).observe(seconds)
        log.info("%s %s %d %.1f ms", method, path, status, seconds * 1000)

    app.add_middleware(_Observe, observed=observed)

    @app.exception_handler(ClientError)
    async def client_error(request: Request, err: ClientError):
        return JSONResponse({"error": str(err)}, status_code=err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, err: StarletteHTTPException):
        # An unknown path or method answers {"error": ...} like every other error, not FastAPI's
        # {"detail": ...}: a client reads one field.
        path = request.url.path
        allowed = {name.lower(): value for name, value in (err.headers or {}).items()}.get("allow", "")
        message = {404: f"{path}: no such endpoint; the API is at /docs",
                   405: f"{request.method} {path}: not allowed; use {allowed}"}.get(err.status_code, f"{path}: {err.detail}")
        return JSONResponse({"error": message}, status_code=err.status_code, headers=err.headers)

    def models_into(source: Optional[str], target: Optional[str]) -> list[ServedModel]:
        """The models that can translate to ``target`` (the only one served, when not given) from
        ``source``; every model into ``target`` for ``auto`` (or no source)."""
        if not target and len(models) == 1:
            target = models[0].target
        if not target:
            raise ClientError(f"target is required: one of {', '.join(sorted({m.target for m in models}))}")
        candidates = [m for m in models if m.target == target and (_is_auto(source) or m.source == source)]
        if not candidates:
            pairs = ", ".join(f"{m.source}->{m.target}" for m in models)
            raise ClientError(f"no model translates {source or 'auto'} -> {target}; this server has {pairs}")
        return candidates

    def model_for(source: Optional[str], target: Optional[str]) -> ServedModel:
        """The one model for a pair; ``auto`` resolves only when one model goes to ``target``."""
        candidates = models_into(source, target)
        if len(candidates) > 1:
            raise ClientError(f"source 'auto' is ambiguous for target {candidates[0].target} here: set source to one "
                              f"of {', '.join(m.source for m in candidates)}")
        return candidates[0]

    def detected_model(text: str, candidates: list[ServedModel]
                       ) -> tuple[Optional[ServedModel], Optional[dict]]:
        """The candidate whose source language ranks first for ``text``, or None when the
        target language itself ranks above them all (the text needs no translation, as
        LibreTranslate answers it), and LibreTranslate's ``detectedLanguage`` for that language:
        its confidence (0 to 100) among the served languages, as /detect gives it (None when
        the detector does not know the candidate's language)."""
        ranking = dict(detector.rank(text))
        unknown = [m.source for m in candidates if m.source not in ranking]
        if unknown and len(candidates) > 1:
            raise ClientError(f"source 'auto' cannot choose between {', '.join(m.source for m in candidates)}: "
                              f"the language detector does not know {', '.join(unknown)}; set source")
        if unknown:
            return candidates[0], None
        target = candidates[0].target
        options = [(m, m.source) for m in candidates] + ([(None, target)] if target in ranking else [])
        model, language = max(options, key=lambda option: ranking[option[1]])  # the first of equals: translate
        return model, {"confidence": _percent(ranking[language]), "language": language}

    def candidates_for(source: Optional[str], target: Optional[str]) -> Optional[list[ServedModel]]:
        """The models a text from ``source`` may go to for ``target``; None when the text is to come
        back as it is: it is already in the language asked for (as on LibreTranslate)."""
        if not _is_auto(source) and source == target and source in served_languages:
            return None
        return models_into(source, target)

    def model_for_text(text: str, source: Optional[str], candidates: Optional[list[ServedModel]]
                       ) -> tuple[Optional[ServedModel], Optional[dict]]:
        """The model that translates ``text`` (None: it comes back as it is) and, for ``auto``,
        the language detected: each text goes to the model of the language it is in."""
        if candidates is None:
            return None, None
        return detected_model(text, candidates) if _is_auto(source) else (candidates[0], None)

    request_limit = RequestLimit(settings.req_limit) if settings.req_limit else None

    def check_limit(request: Request) -> None:
        """Refused (429) when the client has sent its --req-limit this minute; before any other work."""
        if request_limit is not None:
            request_limit.take(request.client.host if request.client else "an unknown address")

    def check_key(given: Any) -> None:
        if settings.api_key is None:
            return
        if not given:
            raise ClientError("this server needs an api_key", 400)
        # In constant time: how long a wrong key takes to refuse says nothing of how much of it was right.
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise ClientError("invalid api_key", 403)

    async def accepted_body(request: Request, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
        """The request's fields, once its client is within --req-limit and its api_key is right."""
        check_limit(request)
        body = await read_body(request, max_bytes)
        check_key(body.get("api_key"))
        return body

    def check_texts(texts: Any, name: str) -> list[str]:
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ClientError(f"{name} must be a string or a list of strings")
        if len(texts) > settings.batch_limit:
            raise ClientError(f"{name} holds {len(texts)} texts; the limit is {settings.batch_limit} per request")
        for text in texts:
            if len(text) > settings.char_limit:
                raise ClientError(f"a text of {len(text)} characters is over the limit of {settings.char_limit}")
        return texts

    @app.post("/translate", summary="Translate (LibreTranslate API): q, source, target, format, alternatives",
              **_documented(_LIBRETRANSLATE_BODY, _LIBRETRANSLATE_ANSWER, forms=True))
    async def translate(request: Request):
        body = await accepted_body(request)
        single = isinstance(body.get("q"), str)
        texts = check_texts(body.get("q"), "q")
        text_format = body.get("format") or "text"
        if text_format not in ("text", "html"):
            raise ClientError("format must be text or html")
        alternatives = _integer(body.get("alternatives", 0), "alternatives", 0, 10)
        source, target = body.get("source"), body.get("target")
        candidates = candidates_for(source, target)
        pieces = [html_pieces(text) if text_format == "html" else text_lines(text) for text in texts]
        lines = [runs(text_pieces, html_entities=text_format == "html") for text_pieces in pieces]
        resolved = [model_for_text(" ".join(text_lines), source, candidates) for text_lines in lines]
        chosen = [model for model, _ in resolved]
        detected = [language for _, language in resolved]
        # Each model gets every line of its texts at once, as one submission, all queued before any wait.
        submitted = {}
        for model in {model.name: model for model in chosen if model is not None}.values():
            model_lines = [line for text_model, text_lines in zip(chosen, lines) if text_model is model
                           for line in text_lines]
            # HTML with inline elements in a sentence: they go where its translation's attention says.
            inline = any(has_inline_markup(text_pieces) for text_model, text_pieces in zip(chosen, pieces)
                         if text_model is model)
            search = Search(beam_size=max(model.translator.decoding.beam_size, alternatives + 1),
                            nbest=alternatives + 1, split_sentences=settings.split_sentences, word_attention=inline)
            if model_lines:
                submitted[model.name] = model.worker.submit(model_lines, search)
        outputs = {name: iter(await asyncio.wrap_future(future)) for name, future in submitted.items()}

        def reassembled() -> list[tuple[str, list[str]]]:
            results = []
            for text, text_pieces, model in zip(texts, pieces, chosen):
                if model is None:
                    results.append((text, []))
                    continue
                renderings = (d.renderings() for d in outputs.get(model.name, iter(())))
                best, others = reassemble(text_pieces, renderings, alternatives, escape=text_format == "html",
                                          keep_spacing=text_format == "html")
                if text_format == "html":  # what declared the source language declares the target's
                    best, *others = [relabel_languages(version, model.source, model.target, is_html=True)
                                     for version in (best, *others)]
                results.append((best, others))
            return results

        # Placing inline markup takes CPU time: off the event loop, as translating is.
        results = await asyncio.to_thread(reassembled) if text_format == "html" else reassembled()
        answer: dict[str, Any] = {"translatedText": results[0][0] if single else [r[0] for r in results]}
        if alternatives:
            answer["alternatives"] = results[0][1] if single else [r[1] for r in results]
        if detected and None not in detected:
            answer["detectedLanguage"] = detected[0] if single else list(detected)
        return JSONResponse(answer)  # already JSON types: FastAPI's encoder pass would only cost time

    def check_constrained(model: ServedModel, texts: list[str], beam: int, split: bool) -> None:
        """What constraints need: beam search, and each text searched whole, within the model's limit."""
        if beam < 2:
            raise ClientError("constraints need beam search: set beam_size to 2 or more (5 is a good start)")
        if split:
            raise ClientError("constraints are met over a whole text: set split_sentences to false")
        limit = model.translator.max_source_tokens
        for index, source in enumerate(model.translator.tokenizers.encode_src(texts, limit + 1)):
            if len(source) > limit:
                raise ClientError(f"texts[{index}] is over the model's limit of {limit} tokens, and constraints are "
                                  "met over a whole text: send it in pieces")

    @app.post("/v1/translate", summary="Translate with scores, n-best lists and attention",
              **_documented(_NATIVE_BODY, _NATIVE_ANSWER, forms=False))
    async def translate_native(request: Request):
        body = await accepted_body(request)
        texts = check_texts(body.get("texts"), "texts")
        model = model_for(body.get("source"), body.get("target"))
        beam = _integer(body.get("beam_size", model.translator.decoding.beam_size), "beam_size", 1, 64)
        if beam < 2 and model.translator.glossary is not None:
            raise ClientError("this server puts a glossary's terms in, which needs beam search: set beam_size to 2 "
                              "or more")
        glossary = _glossary(body.get("glossary"), model.translator)
        if beam < 2 and glossary is not None:
            raise ClientError("a glossary's terms are put in by beam search: set beam_size to 2 or more (5 is a good "
                              "start)")
        nbest = _integer(body.get("nbest", 1), "nbest", 1, beam)
        attention, alignment = body.get("attention", False), body.get("alignment", False)
        phrases = _phrases(body.get("constraints"), len(texts))
        # A text's phrases are met over the whole text: it is not split unless asked to (and then refused).
        split = body.get("split_sentences", settings.split_sentences and phrases is None)
        for name, value in (("attention", attention), ("split_sentences", split), ("alignment", alignment)):
            if not isinstance(value, bool):
                raise ClientError(f"{name} must be true or false")
        texts = [t.replace("\n", " ") for t in texts]
        if phrases is not None:
            check_constrained(model, texts, beam, split)
            texts = [t.replace("\t", " ") + "".join("\t" + p for p in wanted) for t, wanted in zip(texts, phrases)]
        search = Search(beam_size=beam, nbest=nbest, attention=attention, split_sentences=split, alignment=alignment,
                        constraints=phrases is not None, glossary=glossary)
        outputs = await asyncio.wrap_future(model.worker.submit(texts, search))
        answer = []
        for sentence in outputs:
            item = {"translation": sentence.translations[0], "score": sentence.scores[0],
                    "log_prob": sentence.log_prob,
                    "nbest": [{"translation": text, "score": score}
                              for text, score in zip(sentence.translations, sentence.scores)]}
            if attention:
                item.update(source_tokens=sentence.source_tokens, target_tokens=sentence.target_tokens,
                            attention=sentence.attention)
            if alignment:
                item["alignment"] = [list(pair) for pair in sentence.alignment]
            answer.append(item)
        return JSONResponse({"translations": answer, "source": model.source, "target": model.target})

    @app.post("/detect", summary="The language of a text, among those served (LibreTranslate API)",
              **_documented(_DETECT_BODY, _DETECT_ANSWER, forms=True))
    async def detect(request: Request):
        body = await accepted_body(request)
        text = body.get("q")
        if not isinstance(text, str) or not text:
            raise ClientError("q is required: the text (one string) whose language to detect")
        check_texts(text, "q")
        if not detector.languages:
            raise ClientError(f"this server cannot detect languages: the language detector does not know "
                              f"{', '.join(detector.unknown)}")
        return JSONResponse([{"confidence": _percent(probability), "language": code}
                             for code, probability in detector.rank(text)])

    @app.get("/frontend/settings", summary="What a LibreTranslate client may ask of this server")
    async def frontend_settings():
        key_required = settings.api_key is not None
        target = models[0].target
        return {"apiKeys": key_required, "keyRequired": key_required, "charLimit": settings.char_limit,
                "frontendTimeout": 500, "suggestions": False, "filesTranslation": True,
                "supportedFilesFormat": list(FILE_FORMATS),
                "language": {"source": {"code": "auto", "name": "Auto Detect"},
                             "target": {"code": target, "name": LANGUAGE_NAMES.get(target, target)}}}

    # What LibreTranslate offers and this server does not: its own answer when they are off.
    @app.post("/suggest", include_in_schema=False)
    async def suggest():
        raise ClientError("Suggestions are disabled on this server.", 403)

    translated_files = TranslatedFiles()

    @app.post("/translate_file", summary="Translate a .txt, .html, .docx, .odt, .pptx, .odp or .epub file (LibreTranslate API): file, source, target",
              **_documented(_FILE_BODY, _FILE_ANSWER, forms=True, json_body=False))
    async def translate_file(request: Request):
        body = await accepted_body(request, MAX_FILE_BYTES)
        upload = body.get("file")
        if isinstance(upload, str) or not getattr(upload, "filename", None):
            raise ClientError(f"file is required: a {' or '.join(FILE_FORMATS)} file, sent as multipart/form-data")
        name = _file_name(upload.filename)
        kind = FILE_FORMATS.get(name[name.rfind("."):].lower() if "." in name else "")
        if kind is None:
            raise ClientError(f"{name}: this server translates {', '.join(FILE_FORMATS)} files")
        data = await upload.read()
        try:
            document = read_file(kind, data, max_unpacked=MAX_UNPACKED_FILE_BYTES)
        except ValueError as err:
            raise ClientError(f"{name}: {err}") from None
        limit = settings.char_limit * settings.batch_limit
        if document.characters > limit:
            raise ClientError(f"{name} holds {document.characters} characters"
                              f"{' of text' if kind in OFFICE_FORMATS else ''}; the limit for a file is {limit} "
                              "(the server's --char-limit x --batch-limit)")
        texts = document.runs()
        source, target = body.get("source"), body.get("target")
        model, _ = model_for_text(" ".join(texts)[:_DETECT_CHARS], source, candidates_for(source, target))
        translated = data
        if model is not None and texts:
            search = Search(beam_size=model.translator.decoding.beam_size, split_sentences=settings.split_sentences,
                            word_attention=document.inline_markup)
            decoded = await _search_in_chunks(model.worker, texts, search)
            translated = await asyncio.to_thread(document.translated, (d.renderings() for d in decoded),
                                                 (model.source, model.target))
        download = translated_files.add(name, translated, _MEDIA_TYPES[kind])
        # url_for takes the path as it is: quoted here, read back unquoted.
        url = request.url_for("download_file", download=quote(download, safe=""))
        return JSONResponse({"translatedFileUrl": str(url)})

    @app.get("/download_file/{download}", summary="A file /translate_file translated, kept for 30 minutes")
    async def download_file(download: str):
        found = translated_files.get(download)
        if found is None:
            raise ClientError(f"no translated file {download} here: a translation is kept for "
                              f"{translated_files.keep_s / 60:g} minutes", 404)
        name, data, media_type = found
        return Response(data, media_type=media_type, headers={"Content-Disposition": _attachment(name)})

    @app.get("/languages", summary="The language pairs served (LibreTranslate API)")
    async def languages():
        codes = sorted({m.source for m in models})
        return [{"code": code, "name": LANGUAGE_NAMES.get(code, code),
                 "targets": sorted(m.target for m in models if m.source == code)} for code in codes]

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    page_html = (resources.files("seq2seq_cli") / "page" / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return page_html

    routes.update(route.path for route in app.routes)
    return app


class _Observe:
    """Counts, times and logs every HTTP request, and answers an unhandled error with a JSON 500.

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` passes every answer
    through a stream between two tasks, and the event loop, which shares the CPU with the
    decoder, served 10-16% fewer sentences/s at 64 clients with it (benchmarks/README.md)."""

    def __init__(self, app, observed):
        self.app = app
        self.observed = observed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 0

        async def send_observed(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            log.exception("unhandled error on %s", scope["path"])
            if status:  # the answer had begun: nothing more can be sent
                raise
            from starlette.responses import JSONResponse

            await JSONResponse({"error": "internal error; see the server log"}, status_code=500)(
                scope, receive, send_observed)
        finally:
            self.observed(scope["method"], scope["path"], status, time.perf_counter() - started)


# OpenAPI descriptions of the bodies ``read_body`` parses by hand: by hand because LibreTranslate
# clients send JSON or form fields, and every mistake must get LibreTranslate's {"error": ...}
# answer, not a validation report. /docs shows these; tests send their examples.
_STRINGS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_ERROR = {"description": "{\"error\": message}: 400 bad input or a limit, 403 wrong api_key, 413 body over "
                         "1 MiB, 429 queue full or --req-limit reached (Retry-After)",
          "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}
_LIBRETRANSLATE_BODY = {
    "type": "object", "required": ["q", "target"],
    "properties": {
        "q": {**_STRINGS, "description": "text, or a list of texts (a line is a sentence)"},
        "source": {"type": "string", "description": "language code, or auto: each text's detected among those served "
                                          "(one already in the target language comes back as it is)",
                   "default": "auto"},
        "target": {"type": "string", "description": "language code"},
        "format": {"type": "string", "enum": ["text", "html"], "default": "text"},
        "alternatives": {"type": "integer", "minimum": 0, "maximum": 10, "default": 0},
        "api_key": {"type": "string"},
    },
    "example": {"q": "Ein Mann fährt Fahrrad.", "source": "de", "target": "en"},
}
_DETECT_BODY = {
    "type": "object", "required": ["q"],
    "properties": {"q": {"type": "string", "description": "text"}, "api_key": {"type": "string"}},
    "example": {"q": "Ein Mann fährt Fahrrad."},
}
_DETECT_ANSWER = {
    "type": "array", "description": "the server's source languages, most probable first",
    "items": {"type": "object", "properties": {"confidence": {"type": "number", "description": "0 to 100"},
                                               "language": {"type": "string"}}},
}
MAX_TERMS = 1000  # in a request's glossary, each of at most MAX_PHRASE_CHARS
_NATIVE_BODY = {
    "type": "object", "required": ["texts"],
    "properties": {
        "texts": {"type": "array", "items": {"type": "string"}},
        "source": {"type": "string", "description": "language code (default: the one served pair)"},
        "target": {"type": "string"},
        "beam_size": {"type": "integer", "minimum": 1, "maximum": 64, "description": "default: the run's"},
        "nbest": {"type": "integer", "minimum": 1, "default": 1, "description": "at most beam_size"},
        "attention": {"type": "boolean", "default": False},
        "alignment": {"type": "boolean", "default": False,
                      "description": "the best translation's word alignment, from the attention"},
        "split_sentences": {"type": "boolean", "description": "translate each text sentence by sentence (default: "
                            "the server's, on unless started with --no-split-sentences; off with constraints)"},
        "constraints": {"type": "array", "items": {"type": "array", "items": {"type": "string"}},
                        "description": "one list per text: phrases its translations must hold (terminology), "
                                       "as s2s translate --constraints; needs beam_size 2 or more"},
        "glossary": {"type": "object", "additionalProperties": {"type": "string"},
                     "description": "source term -> target term: each sentence holding a source term (as written, "
                                    "whole words) gets its target term, as s2s translate --glossary; beside the "
                                    f"server's --glossary, winning where both name a term; at most {MAX_TERMS} "
                                    "terms; needs beam_size 2 or more"},
        "api_key": {"type": "string"},
    },
    "example": {"texts": ["Ein Mann fährt Fahrrad."], "beam_size": 5, "nbest": 2, "attention": True},
}
_NATIVE_ANSWER = {
    "type": "object",
    "properties": {
        "source": {"type": "string"}, "target": {"type": "string"},
        "translations": {"type": "array", "items": {"type": "object", "properties": {
            "translation": {"type": "string"}, "score": {"type": "number"}, "log_prob": {"type": "number"},
            "nbest": {"type": "array", "items": {"type": "object", "properties": {
                "translation": {"type": "string"}, "score": {"type": "number"}}}},
            "source_tokens": {"type": "array", "items": {"type": "string"}},
            "target_tokens": {"type": "array", "items": {"type": "string"}},
            "attention": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                          "description": "one row per target token, one weight per source token"},
            "alignment": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}},
                          "description": "[source word, target word] for each word of the translation"}}}},
    },
}
_FILE_BODY = {
    "type": "object", "required": ["file", "target"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": f"a {' or '.join(FILE_FORMATS)} file (text in UTF-8)"},
        "source": {"type": "string", "description": "language code, or auto: detected among those served"},
        "target": {"type": "string", "description": "language code"},
        "api_key": {"type": "string"},
    },
}
_FILE_ANSWER = {"type": "object", "required": ["translatedFileUrl"],
                "properties": {"translatedFileUrl": {"type": "string", "description": "where to download it"}}}
_LIBRETRANSLATE_ANSWER = {
    "type": "object", "required": ["translatedText"],
    "properties": {
        "translatedText": _STRINGS,
        "alternatives": {"type": "array", "items": {}},
        "detectedLanguage": {"oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]},
    },
}


def _documented(body: dict, answer: dict, forms: bool, json_body: bool = True) -> dict:
    """``openapi_extra`` and ``responses`` arguments that describe a hand-parsed endpoint (a body
    of JSON, and also of form fields with ``forms``; or of multipart form fields alone)."""
    content = {"application/json": {"schema": body}} if json_body else {"multipart/form-data": {"schema": body}}
    if forms and json_body:
        content["application/x-www-form-urlencoded"] = content["multipart/form-data"] = {"schema": body}
    return {"openapi_extra": {"requestBody": {"required": True, "content": content}},
            "responses": {200: {"content": {"application/json": {"schema": answer}}},
                          **{code: _ERROR for code in (400, 403, 413, 429)}}}


async def read_body(request, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """A JSON object, or form fields and the URL's query fields (LibreTranslate reads both);
    malformed, oversized (over ``max_bytes``) or non-UTF-8 bodies are client errors."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > max_bytes:
        raise ClientError(f"request body over {max_bytes} bytes", 413)
    raw = bytearray()  # appended in place: bytes += would copy the body once per chunk
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise ClientError(f"request body over {max_bytes} bytes", 413)
    content_type = request.headers.get("content-type", "")
    query = _fields(parse_qs(request.url.query, keep_blank_values=True))
    if content_type.startswith("multipart/form-data"):  # parts may be files, of any bytes
        from starlette.exceptions import HTTPException

        try:
            form = await _replayed(request, bytes(raw)).form()
        except HTTPException as err:  # what Starlette makes of a malformed body
            raise ClientError(f"malformed multipart/form-data body: {err.detail}") from None
        return {**query, **_fields({key: form.getlist(key) for key in form})}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError("request body is not valid UTF-8") from None
    if content_type.startswith("application/x-www-form-urlencoded"):
        return {**query, **_fields(parse_qs(text, keep_blank_values=True))}
    if not text.strip():
        return query
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise ClientError(f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(body, dict):
        raise ClientError("the body must be a JSON object")
    return body


def _replayed(request, body: bytes):
    """The request again, with ``body`` as its body: a request's stream can be read only once."""
    from starlette.requests import Request

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


def _fields(fields: dict[str, list]) -> dict[str, Any]:
    """Form fields by name: the last value given, but every ``q`` when there are several (a list of texts)."""
    return {key: values if key == "q" and len(values) > 1 else values[-1] for key, values in fields.items()}


MAX_PHRASES = 16  # per text, each of at most MAX_PHRASE_CHARS
MAX_PHRASE_CHARS = 200


def _phrases(value: Any, texts: int) -> Optional[list[list[str]]]:
    """``/v1/translate``'s ``constraints``: a list of phrases for each text, or None."""
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != texts
            or not all(isinstance(phrases, list) and all(isinstance(p, str) for p in phrases) for phrases in value)):
        raise ClientError(f"constraints must be a list of {texts} list(s) of phrases, one per text")
    for phrases in value:
        if len(phrases) > MAX_PHRASES or any(len(p) > MAX_PHRASE_CHARS for p in phrases):
            raise ClientError(f"constraints: at most {MAX_PHRASES} phrases per text, of at most {MAX_PHRASE_CHARS} "
                              "characters each")
        if any(not p.strip() or "\t" in p or "\n" in p for p in phrases):
            raise ClientError("constraints: a phrase must hold a word, and no tab or line break")
    return value


def _glossary(value: Any, translator) -> Optional[Glossary]:
    """``/v1/translate``'s ``glossary``: source term -> target term, or None; a target term the
    model's vocabulary cannot spell is refused, where a server's own glossary leaves it out."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(term, str) for pair in value.items() for term in pair):
        raise ClientError('glossary must be an object of source term -> target term, e.g. {"Fahrrad": "bike"}')
    if len(value) > MAX_TERMS or any(len(term) > MAX_PHRASE_CHARS for pair in value.items() for term in pair):
        raise ClientError(f"glossary: at most {MAX_TERMS} terms, of at most {MAX_PHRASE_CHARS} characters each")
    try:
        glossary = Glossary.of(value)
    except UserError as err:
        raise ClientError(str(err)) from None
    unspelled = translator.unspelled(list(dict.fromkeys(glossary.terms.values())))
    if unspelled:
        raise ClientError(f"glossary: the model's target vocabulary cannot spell {', '.join(map(repr, unspelled))}")
    return glossary if glossary.terms else None


def _sentence_count(language: str, texts: list[str], search: Search) -> int:
    """How many sentences the decoder searches for ``texts``: one per text, or with sentence
    splitting the sentences it finds (``segmentation``), as ``Translator`` splits them."""
    if not search.split_sentences:
        return len(texts)
    return sum(len(split_sentences(text, language)) for text in texts)


def _is_auto(source: Optional[str]) -> bool:
    """LibreTranslate's ``source``: ``auto`` (or none) asks the server to detect the language."""
    return source in (None, "", "auto")


def _percent(probability: float) -> float:
    """A probability as LibreTranslate states a detection's confidence: 0 to 100."""
    return round(100.0 * probability, 2)


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool):  # int(true) would be 1
        raise ClientError(f"{name} must be a whole number from {low} to {high}, not {str(value).lower()}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ClientError(f"{name} must be a whole number") from None
    if isinstance(value, float) and value != number or not low <= number <= high:
        raise ClientError(f"{name} must be a whole number from {low} to {high}")
    return number


# How much of a file the language detector reads to choose a model for ``source: auto``.
_DETECT_CHARS = 2000


async def _search_in_chunks(worker: "BatchingWorker", texts: list[str], search: Search) -> list[Decoded]:
    """Every text's translation, the texts queued a batch at a time, as many batches at once as
    the worker has decoders: a long file keeps them all busy without filling the queue others
    share (a full queue is a 429, as for any request)."""
    chunk, in_flight = worker.max_batch_sentences, deque()
    decoded: list[Decoded] = []
    for start in range(0, len(texts), chunk):
        if len(in_flight) >= worker.decoders:
            decoded += await asyncio.wrap_future(in_flight.popleft())
        in_flight.append(worker.submit(texts[start:start + chunk], search))
    while in_flight:
        decoded += await asyncio.wrap_future(in_flight.popleft())
    return decoded


def _file_name(uploaded: str) -> str:
    """The name of an uploaded file without any folders or control characters (it names the download)."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", uploaded.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return name[-200:] or "file"


def _attachment(name: str) -> str:
    """A Content-Disposition that saves the download as ``name`` (RFC 6266; any characters)."""
    fallback = "".join(c if c.isascii() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
