"""The served models, their queues and their decoder processes: how ``s2s serve`` turns
concurrent requests into batched searches (the HTTP side is ``seq2seq_cli.serve``).

Each served model has a queue and decoders (``--decoders N``; by default one per CPU thread,
one on a GPU), each searching one batch at a time on one thread. A free decoder takes every
sentence waiting, up to ``max_batch_sentences``, waiting at most ``max_wait_ms`` after the
first one arrived (or after it came free), and searches them as one batch; each request then
gets its own sentences back. Requests with different search settings never share a batch.
Since a sentence's translation does not depend on the batch it is in, every answer equals
what ``s2s translate`` prints for the line.

The search runs in a decoder process of the model's own, not in the server's: in one Python
process the decoder's step loop and the event loop answering HTTP take turns holding the
interpreter lock, and on two cores the server then decoded at about half the offline rate
(benchmarks/README.md). Only texts and finished translations cross between the two processes.
"""

import dataclasses
import functools
import logging
import multiprocessing
import signal
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Optional

import torch

from seq2seq_cli.config import language_pair
from seq2seq_cli.errors import ClientError, UserError
from seq2seq_cli.glossary import Glossary
from seq2seq_cli.progress import log_to_stderr
from seq2seq_cli.translation import Translator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Search:
    """The settings a batch is searched with; requests with different ones never share a batch."""

    beam_size: int
    nbest: int = 1
    attention: bool = False
    split_sentences: bool = False  # each text translated sentence by sentence
    alignment: bool = False  # the best translation's word alignment (seq2seq_cli.alignment)
    word_attention: bool = False  # each translation's word attention, to put inline HTML elements back
    constraints: bool = False  # each text is SOURCE<TAB>PHRASE...: its translations hold the phrases
    glossary: Optional[Glossary] = None  # a request's own terms, beside (and before) the server's glossary


@dataclass
class Decoded:
    """One sentence as the decoder process gives it back."""

    translations: list[str]  # the n-best list, detokenized, best first
    scores: list[float]  # what the search ranked them by
    log_prob: float  # the best translation's log-probability, [SEP] included
    source_tokens: Optional[list[str]] = None  # with attention: the subwords along its two axes,
    target_tokens: Optional[list[str]] = None
    attention: Optional[list[list[float]]] = None  # one row per target subword
    alignment: Optional[list[tuple[int, int]]] = None  # with alignment: (source word, target word) pairs
    word_attention: Optional[list[list[list[float]]]] = None  # with word_attention: each translation's

    def renderings(self) -> list:
        """The n-best list as ``documents.reassemble`` takes it: with word attention, (text, attention)."""
        return self.translations if self.word_attention is None else list(zip(self.translations, self.word_attention))


@functools.lru_cache(maxsize=32)
def _with_request_terms(served: Glossary, requested: Glossary) -> Glossary:
    """The server's glossary with a request's own terms beside it, the request's winning where
    both name a term. Kept: requests with one set of terms come again, and the pattern of a
    glossary of 5,000 terms takes a quarter of a second to build."""
    return Glossary({**served.terms, **requested.terms})


def decode_batch(translator: Translator, texts: list[str], search: Search) -> list[Decoded]:
    """One batched search over ``texts`` with ``search``'s settings: what ``s2s translate`` does."""
    glossary = search.glossary
    if glossary is not None and translator.glossary is not None:
        glossary = _with_request_terms(translator.glossary, glossary)
    translator = translator.with_settings(nbest=search.nbest, keep_attention=search.attention or search.word_attention,
                                          beam_size=search.beam_size, split_sentences=search.split_sentences,
                                          alignment=search.alignment, constraints=search.constraints,
                                          glossary=glossary,
                                          # A client sees no warning: cut nothing off (with
                                          # constraints the server has checked that each text fits).
                                          fit_long_lines=not search.constraints)
    sources, results = translator.translate_raw([text.encode("utf-8") for text in texts])
    decoded = []
    for source_ids, hypotheses in zip(sources, results):
        best = hypotheses[0]
        sentence = Decoded(translator.detokenize(hypotheses), [h.score for h in hypotheses], best.log_prob)
        if search.attention:
            sentence.source_tokens, sentence.target_tokens = translator.attention_labels(source_ids, best)
            sentence.attention = [] if best.attention is None else [
                [round(weight, 4) for weight in row] for row in best.attention.tolist()]
        if search.alignment:
            sentence.alignment = translator.word_alignment(source_ids, best)
        if search.word_attention:
            sentence.word_attention = [translator.word_attention(source_ids, h) for h in hypotheses]
        decoded.append(sentence)
    return decoded


@dataclass(frozen=True)
class LoadOptions:
    """How ``s2s serve`` loads its runs (the same in the server and in each decoder process)."""

    device: str = "auto"
    beam_size: Optional[int] = None
    dtype: str = "auto"
    quantize: str = "none"
    cuda_graphs: Optional[str] = None  # None: each run's decoding.cuda_graphs
    copy_unknown: bool = True  # a source word read as [UNK] copied into the translation (seq2seq_cli.copying)
    # Terms put into a language pair's translations (seq2seq_cli.glossary): (the --glossary
    # option as given, (source, target) or None for the only pair served, the glossary).
    glossaries: tuple[tuple[str, Optional[tuple[str, str]], Glossary], ...] = ()

    def for_model(self, model: "ServedModel") -> "LoadOptions":
        """These options as one model's decoder processes load it: with the glossary the server
        gave it (the terms its vocabulary spells), under its pair."""
        glossary = model.translator.glossary
        pair = (model.source, model.target)
        return dataclasses.replace(self, glossaries=((f"{pair[0]}:{pair[1]}", pair, glossary),) if glossary else ())


class DecoderProcess:
    """A served model's searches, run in a process of its own (see the module docstring) on one
    thread, as ``s2s translate`` searches each of its batches. The process loads the model the
    way the server did; ``ready`` waits for it.

    Called from one thread at a time (a BatchingWorker thread) with texts and settings, it
    sends them through a pipe and waits, without holding the interpreter lock, for the
    ``Decoded`` sentences."""

    def __init__(self, checkpoints: list[str], options: LoadOptions):
        self._arguments = (checkpoints, options)
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # fork would copy the parent's threads' locks
        self._connection, child_end = context.Pipe()
        self._process = context.Process(target=_decoder_main, args=(child_end, *self._arguments),
                                        name="s2s-decoder", daemon=True)
        self._process.start()
        child_end.close()

    def ready(self) -> None:
        self._answer()

    def __call__(self, texts: list[str], search: Search) -> list[Decoded]:
        """The batch's sentences; a decoder process that died (killed, out of memory) is
        replaced and the batch searched again, once."""
        for _ in range(2):
            try:
                self._connection.send((texts, search))
                return self._answer()
            except (EOFError, OSError):
                log.error("the decoder process of %s ended (exit code %s); starting another",
                          " + ".join(self._arguments[0]), self._process.exitcode)
                self._connection.close()
                self._start()
                self.ready()
        raise RuntimeError("the decoder process ended twice while searching this batch")

    def _answer(self):
        kind, payload = self._connection.recv()
        if kind == "error":
            raise RuntimeError(f"in the decoder process: {payload}")
        return payload

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._connection.send(None)
            except OSError:
                pass
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
        self._connection.close()


def _decoder_main(connection, checkpoints: list[str], options: LoadOptions) -> None:
    """The decoder process: load the model, then search each batch sent until None arrives.

    Ctrl+C and SIGTERM reach the whole process group; the server decides when this process
    ends (after the last accepted request), so it ignores them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log_to_stderr()
    # One thread, as s2s translate searches each batch: the decoders are the parallelism, so a
    # batch longer than decoding.batch_size does not spread over more threads either.
    torch.set_num_threads(1)
    try:
        model, = load_models(checkpoints, options, ensemble=True)
        connection.send(("ready", None))
    except BaseException:
        connection.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            request = connection.recv()
        except EOFError:  # the server is gone
            return
        if request is None:
            return
        try:
            answer = ("ok", decode_batch(model.translator, *request))
        except Exception:
            answer = ("error", traceback.format_exc())
        connection.send(answer)


@dataclass
class _Job:
    texts: list[str]
    search: Search
    sentences: int  # what the queue and batches count: the texts, or their sentences when split
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class BatchingWorker:
    """One model's queue, and one thread per decoder (a callable: texts, Search -> one Decoded
    per text) that takes batches from it; several decoders search several batches at once.
    Queue and batch limits count sentences as the decoder will search them
    (``count_sentences``: texts, Search -> int)."""

    def __init__(self, decoders: list, max_batch_sentences: int, max_wait_ms: float, max_queue: int,
                 count_sentences, on_batch=None):
        self.max_batch_sentences = max_batch_sentences
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch  # called with the number of sentences of each batch (metrics)
        self.count_sentences = count_sentences
        self._jobs: deque[_Job] = deque()
        self._queued_sentences = 0
        self._condition = threading.Condition()
        self._closing = False
        self._threads = [threading.Thread(target=self._run, args=(decode,), name="s2s-batcher", daemon=True)
                         for decode in decoders]
        for thread in self._threads:
            thread.start()

    @property
    def queued_sentences(self) -> int:
        return self._queued_sentences

    @property
    def decoders(self) -> int:
        """How many batches are searched at once."""
        return len(self._threads)

    def submit(self, texts: list[str], search: Search) -> Future:
        """Queue ``texts``; the future gives one Decoded per text. Full queue: ClientError 429."""
        job = _Job(texts, search, self.count_sentences(texts, search))
        with self._condition:
            if self._closing:
                raise ClientError("the server is shutting down", 503)
            if self._queued_sentences + job.sentences > self.max_queue and self._queued_sentences:
                raise ClientError(f"too many sentences waiting (limit {self.max_queue}); try again shortly", 429,
                                  {"Retry-After": "1"})
            self._jobs.append(job)
            self._queued_sentences += job.sentences
            self._condition.notify_all()
        return job.future

    def close(self) -> None:
        """Finish every queued job, then stop the threads."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join()

    def _take_batch(self) -> Optional[list[_Job]]:
        """Jobs with the first job's settings, up to max_batch_sentences (a larger job comes
        alone), for a decoder that has just come free; None once closed and empty."""
        free_since = time.monotonic()
        with self._condition:
            while True:
                if not self._jobs:
                    if self._closing:
                        return None
                    self._condition.wait()
                    continue
                # Waiting counts from the first arrival, or from when this decoder came free if
                # sentences were already waiting: those then wait a little for the clients the last
                # batch just answered, and batches stay large instead of splitting the clients
                # into turns (benchmarks/README.md).
                deadline = max(self._jobs[0].arrived, free_since) + self.max_wait
                left = deadline - time.monotonic()
                full = self._waiting_for(self._jobs[0].search) >= self.max_batch_sentences
                if self._closing or full or left <= 0:
                    break
                self._condition.wait(left)
            search, batch, size = self._jobs[0].search, [], 0
            for job in list(self._jobs):
                if job.search != search or (batch and size + job.sentences > self.max_batch_sentences):
                    continue
                self._jobs.remove(job)
                self._queued_sentences -= job.sentences
                # From here on a client that goes away cannot cancel the job: it is decoded with
                # the others, and its answer dropped.
                if job.future.set_running_or_notify_cancel():
                    batch.append(job)
                    size += job.sentences
            return batch

    def _waiting_for(self, search: Search) -> int:
        return sum(job.sentences for job in self._jobs if job.search == search)

    def _run(self, decode) -> None:
        while (batch := self._take_batch()) is not None:
            if not batch:
                continue
            search = batch[0].search
            texts = [text for job in batch for text in job.texts]
            try:
                outputs = decode(texts, search)
            except Exception as err:  # a bug must fail these requests, not the worker
                log.exception("decoding failed")
                for job in batch:
                    job.future.set_exception(err)
                continue
            if self.on_batch is not None:
                self.on_batch(sum(job.sentences for job in batch))
            start = 0
            for job in batch:
                job.future.set_result(outputs[start: start + len(job.texts)])
                start += len(job.texts)


@dataclass
class ServedModel:
    """A run (or an ensemble of runs) of one language pair, and once the server runs, its queue."""

    name: str  # the checkpoint argument, for messages
    checkpoints: list[str]  # one run, or the members of an ensemble
    source: str
    target: str
    translator: Translator
    worker: Optional[BatchingWorker] = None


def load_models(checkpoints: list[str], options: LoadOptions, ensemble: bool = False) -> list[ServedModel]:
    """Load each run (on ``options.device``, decoding in its ``dtype``, with ``quantize``d
    weights); its language pair comes from its config. Runs of the same pair are one ensemble
    when ``ensemble`` is set, and an error otherwise."""
    groups: dict[tuple[str, str], list[Translator]] = {}
    for checkpoint in checkpoints:
        translator = Translator.load(checkpoint, options.device, beam_size=options.beam_size, dtype=options.dtype,
                                     quantize=options.quantize, cuda_graphs=options.cuda_graphs,
                                     copy_unknown=options.copy_unknown)
        source, target = language_pair(translator.config.data)
        if source is None or target is None:
            raise UserError(f"{checkpoint}: its language pair is unknown (the training files' suffixes are not "
                            "language codes); retrain or set data.src_lang and data.tgt_lang in its config.yaml")
        if (source, target) in groups and not ensemble:
            raise UserError(f"{checkpoint} and {groups[(source, target)][0].checkpoint} both translate {source} -> "
                            f"{target}; serve one model per language pair, or add --ensemble to serve them as one")
        groups.setdefault((source, target), []).append(translator)
    models = [ServedModel(" + ".join(t.checkpoint for t in members), [t.checkpoint for t in members], source, target,
                          members[0] if len(members) == 1 else Translator.ensemble(members))
              for (source, target), members in groups.items()]
    _put_glossaries(models, options.glossaries)
    return models


def _put_glossaries(models: list[ServedModel], glossaries) -> None:
    """Each glossary on the model of its language pair; one without a pair on the only model."""
    by_pair = {(model.source, model.target): model for model in models}
    given: dict[tuple[str, str], str] = {}
    for option, pair, glossary in glossaries:
        if pair is None:
            if len(models) > 1:
                raise UserError(f"--glossary {option}: this server serves {_pairs(models)}; name the pair the "
                                f"glossary is for, e.g. --glossary {models[0].source}:{models[0].target}={option}")
            pair = (models[0].source, models[0].target)
        if pair not in by_pair:
            raise UserError(f"--glossary {option}: no run served translates {pair[0]} -> {pair[1]} "
                            f"(this server serves {_pairs(models)})")
        if pair in given:
            raise UserError(f"--glossary {option} and --glossary {given[pair]} are both for {pair[0]} -> {pair[1]}; "
                            "put their terms in one file")
        given[pair] = option
        by_pair[pair].translator = by_pair[pair].translator.with_settings(glossary=glossary)


def _pairs(models: list[ServedModel]) -> str:
    return ", ".join(f"{model.source}:{model.target}" for model in models)
