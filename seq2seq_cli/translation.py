"""From raw text lines to translated lines: the part of translating that deals with real input.

Input is read as bytes and never stops the stream: invalid UTF-8 is replaced (with a
warning), an empty line gives an empty translation, a word the vocabulary cannot spell is
named (with a warning) and copied into the translation (``seq2seq_cli.copying``), an over-long
line is truncated to the model's limit (with a warning), or with ``fit_long_lines`` translated
in pieces that fit.
Lines that are already available are translated together; a line typed at a terminal is
answered without waiting for more input. With ``split_sentences`` a line is translated
sentence by sentence (``seq2seq_cli.segmentation``), a sentence over the model's limit in
pieces that fit rather than truncated, and the translations are joined back into one line.
An HTML document is translated run of text by run of text, a sentence with inline elements
whole (``translate_html``), a Word or OpenDocument file stretch of text by stretch of text
(``translate_office``; ``seq2seq_cli.documents``, ``seq2seq_cli.office``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import heapq
import io
import itertools
import logging
import os
import select
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch

from seq2seq_cli.alignment import WordIndices, format_alignment, word_alignment, word_attention, words_of_sentences
from seq2seq_cli.checkpoint import load_model
from seq2seq_cli.config import Config, DecodingConfig, check_decoding_settings, language_pair
from seq2seq_cli.constraints import (TRAILING_PUNCTUATION, Constraints, as_written, capitalized, held_in, split_line,
                                     ways_of_writing)
from seq2seq_cli.copying import Copied, UnknownSpan, copy_unknown, unknown_spans
from seq2seq_cli.decoding import Ensemble, Hypothesis, Sampling, SpecialIds, gnmt_penalty, translate_corpus
from seq2seq_cli.device import decoding_threads, map_in_order, select_device
from seq2seq_cli.documents import Rendering, has_inline_markup, html_pieces, reassemble, relabel_languages, runs
from seq2seq_cli.errors import UserError
from seq2seq_cli.glossary import Glossary
from seq2seq_cli.model import Seq2Seq
from seq2seq_cli.office import OFFICE_FORMATS, OfficeDocument
from seq2seq_cli.precision import check_decoding_format, for_decoding, resolve
from seq2seq_cli.scoring import NBEST_SEPARATOR, score_batch, score_ids, score_ids_with_attention
from seq2seq_cli.search_graphs import SearchGraphs
from seq2seq_cli.segmentation import fit_sentences, sentence_joiner, split_sentences
from seq2seq_cli.tokenization import Tokenizers, line_head

log = logging.getLogger(__name__)

UNKNOWN_WORD_LINES_NAMED = 10


def read_line_batches(stream: BinaryIO, max_lines: int) -> Iterator[list[bytes]]:
    """Yield lists of complete lines (without line ends): all that can be read without waiting,
    at most ``max_lines`` at a time, and at least one line unless at end of input.

    A plain file object (a pipe, a terminal, a file) is read through its descriptor, so that a
    typed line is answered at once; any other stream (in memory, or decompressing a file, whose
    descriptor gives the compressed bytes) is read through ``read`` and never waits."""
    fd = stream.fileno() if isinstance(stream, (io.BufferedReader, io.FileIO)) else None
    pending, complete, at_end = b"", [], False

    def pull() -> None:  # one read: whatever is there, up to 64 KiB
        nonlocal pending, at_end
        chunk = os.read(fd, 1 << 16) if fd is not None else stream.read(1 << 16)
        at_end = not chunk
        *new_lines, pending = (pending + chunk).split(b"\n")
        complete.extend(new_lines)

    def more_ready() -> bool:
        return fd is None or bool(select.select([fd], [], [], 0)[0])

    while True:
        # Block for the first complete line, then take whatever else is already there.
        while not at_end and not complete:
            pull()
        while not at_end and len(complete) < max_lines and more_ready():
            pull()
        if at_end and pending:
            complete.append(pending)  # a last line without a line end
            pending = b""
        while complete:
            yield complete[:max_lines]
            del complete[:max_lines]
        if at_end:
            return


def decode_line(raw: bytes, line_number: int) -> str:
    """One raw input line as text; invalid UTF-8 is replaced, with a warning naming the line."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        log.warning("input line %d: invalid UTF-8 replaced by U+FFFD", line_number)
        return raw.decode("utf-8", errors="replace")


@dataclass
class Translation:
    """One hypothesis for one input text."""

    text: str
    score: float  # what beam search ranks by: log_prob / GNMT length penalty (greedy: log_prob)
    log_prob: float  # the model's log-probability of the translation, the final [SEP] included
    # With ``alignment``: (source word, target word) for each word of ``text`` (seq2seq_cli.alignment).
    alignment: Optional[list[tuple[int, int]]] = None


@dataclass
class CopiedHypothesis(Hypothesis):
    """A hypothesis printed with the source's unknown words copied in (``seq2seq_cli.copying``):
    its tokens, scores and attention are the model's, its text and words ``copied``'s."""

    copied: Optional[Copied] = None


@dataclass
class Score:
    """The model's log-probability of one given translation (``Translator.score``)."""

    log_prob: float  # log P(target | source) in nats, the final [SEP] included
    tokens: list[str]  # the target's subwords as the model reads them, then [SEP]
    token_log_probs: list[float]  # each token's log P given the source and the tokens before it
    # With ``alignment``: (source word, target word) for each word of the target (seq2seq_cli.alignment).
    alignment: Optional[list[tuple[int, int]]] = None

    @property
    def per_token(self) -> float:
        """The mean log-probability per token: scores of targets of different lengths compare."""
        return self.log_prob / len(self.tokens)


@dataclass
class _Placing:
    """A translation taking a glossary's target terms in place of the model's own words for
    their source terms, a term at a time (``Translator._with_terms_placed``)."""

    source: list[int]
    tokens: list[int]  # the translation, with the terms put in so far
    missing: list[tuple[str, str]]  # (source term as written, target term) still to put in
    taken: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # the token spans of those put in
    replaced: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)  # term pair -> own word

    def without_term(self, tokenizers: Tokenizers) -> tuple[list[int], int]:
        """The source without the next source term wherever it stands as whole words, and how
        many times it stands there. A whole word reads as the same pieces alone as in its
        sentence, but for punctuation that a vocabulary may join to it ("Hund," one piece)."""
        term, goes_on = tokenizers.encode_src([self.missing[0][0]])[0], tokenizers.src_word_continuations
        term_pieces, pieces = (tokenizers.src.convert_ids_to_tokens(ids) for ids in (term, self.source))

        def bare_ends(found: list[str]) -> list[str]:
            """Pieces less the punctuation before the first and after the last."""
            found = [found[0].lstrip(_WORD_END_PUNCTUATION), *found[1:]]
            return found[:-1] + [found[-1].rstrip(_WORD_END_PUNCTUATION)]

        def stands_at(start: int) -> bool:
            return (self.source[start] not in goes_on
                    and bare_ends(pieces[start:start + len(term)]) == bare_ends(term_pieces))

        starts = [start for start in range(len(self.source) - len(term) + 1) if term and stands_at(start)
                  and (start + len(term) == len(self.source) or self.source[start + len(term)] not in goes_on)]
        places = {at for start in starts for at in range(start, start + len(term))}
        return [token for at, token in enumerate(self.source) if at not in places], len(starts)

    def put_in(self, with_term: list[float], without_term: list[float], times: int,
               own_words: tuple[frozenset[str], ...], tokenizers: Tokenizers) -> bool:
        """Put the next target term in place of the model's own word for its source term: of the
        translation's words that the model writes for the term alone (``own_words``: those of
        its 1-best, then of the others, lower case), the one whose log-probability falls
        furthest without the term in the source (``with_term``, ``without_term``: each token's
        log-probability), by half a nat at least, a word of the 1-best first ("bicycle" before
        the "riding" of "Bicycle riding."); where the term stands ``times`` in the source, up to
        as many of those words that are that same word. Punctuation at a word's ends stays.
        False where there is none, or it holds a term put in already."""
        falls = [a - b for a, b in zip(with_term[:len(self.tokens)], without_term)]
        words = self._words(tokenizers)
        candidates = [(-tiers[0], max(falls[start:end]), start, word) for start, end, word in words
                      if (tiers := [tier for tier, own in enumerate(own_words) if _bare(word) in own])
                      and max(falls[start:end]) >= 0.5]  # (-tier, fall, start, word)
        if not candidates:
            return False
        _, _, start, word = max(candidates, key=lambda candidate: candidate[:2])
        return self._put_in_place_of(words, _bare(word), times, tokenizers, first=start)

    def put_in_place_of(self, own_word: str, times: int, tokenizers: Tokenizers) -> bool:
        """Put the next target term in place of ``own_word`` (``_bare``), the first ``times``
        the translation has it. False where it has none, or one holds a term put in already."""
        return self._put_in_place_of(self._words(tokenizers), own_word, times, tokenizers)

    def _words(self, tokenizers: Tokenizers) -> list[tuple[int, int, str]]:
        """The translation's whole words: (start, end) of their tokens, and their text."""
        spans = _word_spans(self.tokens, tokenizers.tgt_word_continuations)
        return [(start, end, word) for (start, end), word in
                zip(spans, tokenizers.decode_tgt([self.tokens[start:end] for start, end in spans]))]

    def _put_in_place_of(self, words: list[tuple[int, int, str]], own_word: str, times: int, tokenizers: Tokenizers,
                         first: Optional[int] = None) -> bool:
        """``put_in_place_of`` the translation's ``words``, at the word starting at token
        ``first`` (where given) and the others after it."""
        found = [(start, end, word) for start, end, word in words if _bare(word) == own_word]
        chosen = ([found_word for found_word in found if found_word[0] == first] +
                  [found_word for found_word in found if found_word[0] != first])[:times]
        if not chosen or any(start < taken_end and taken_start < end for start, end, _ in chosen
                             for taken_start, taken_end in self.taken):
            return False
        self.replaced[self.missing[0]] = own_word
        target_term = self.missing.pop(0)[1]
        for start, end, word in sorted(chosen, reverse=True):  # the last first
            bare = word.strip(_WORD_END_PUNCTUATION) or word
            before, after = word[:word.index(bare)], word[word.index(bare) + len(bare):]
            written = before + ((capitalized(target_term) or target_term) if start == 0 else target_term) + after
            term_ids = tokenizers.encode_tgt([written])[0]
            self.tokens[start:end] = term_ids
            shift = len(term_ids) - (end - start)
            self.taken = [(a + shift, b + shift) if a >= end else (a, b) for a, b in self.taken]
            self.taken.append((start, start + len(term_ids)))
        return True


def _word_spans(tokens: list[int], continuation: frozenset[int]) -> list[tuple[int, int]]:
    """The (start, end) of each whole word of ``tokens``, its pieces that go on it included."""
    starts = [at for at, token in enumerate(tokens) if at == 0 or token not in continuation]
    return list(zip(starts, starts[1:] + [len(tokens)]))


# The source terms whose words ``Translator._own_words`` keeps, at most: a few MB.
_MOST_TERMS_KEPT = 20_000

_WORD_END_PUNCTUATION = string.punctuation + "«»„“”‘’¿¡"


def _bare(word: str) -> str:
    """A word without the punctuation at its ends, in lower case: as ``own_words`` hold them."""
    return word.strip(_WORD_END_PUNCTUATION).lower()


@dataclass
class _Lines:
    """Input lines read for one search, as what is searched for each: the line itself, or with
    sentence splitting its sentences."""

    first_line: int  # the input line number of the first line, for warnings
    sentences: list[list[str]]  # one list per line
    first_sentence: int  # the position of sentences[0][0] among all sentences read, for sampling seeds
    # With constraints or a glossary: the phrases each sentence's translation must hold.
    phrases: Optional[list[list[str]]] = None
    # With a glossary: the source terms each sentence holds, as written there, and their target terms.
    terms: Optional[list[list[tuple[str, str]]]] = None


def _join_sentences(sources: list[list[int]], results: list[list[Hypothesis]], counts: list[int],
                    separator: int, combine: Callable[[list[list[Hypothesis]]], list[tuple[Hypothesis, ...]]]
                    ) -> tuple[list[list[int]], list[list[Hypothesis]]]:
    """Each line's sentences put back together: their source ids, and the hypotheses
    ``combine`` makes of theirs, one from each sentence (``_best_combinations``, or
    ``_rank_by_rank`` for samples), ``separator`` ([SEP]) between sentences. Scores and
    log-probabilities add up; attention is block-diagonal, each sentence's translation
    attending to its own source."""
    line_sources, line_results, start = [], [], 0
    for count in counts:
        parts, part_results = sources[start:start + count], results[start:start + count]
        start += count
        if count == 1:
            line_sources.extend(parts)
            line_results.extend(part_results)
            continue
        line_sources.append(_joined(parts, separator))
        line_results.append([
            Hypothesis(_joined([h.tokens for h in choice], separator), sum(h.score for h in choice),
                       sum(h.log_prob for h in choice),
                       None if choice[0].attention is None else torch.block_diag(*(h.attention for h in choice)))
            for choice in combine(part_results)])
    return line_sources, line_results


def _rank_by_rank(part_results: list[list[Hypothesis]]) -> list[tuple[Hypothesis, ...]]:
    """The k-th of a line is every sentence's k-th: for samples, drawn sentence by sentence."""
    return list(zip(*part_results))


def _best_combinations(part_results: list[list[Hypothesis]], count: int, text: Callable[[list[int]], str]
                       ) -> list[tuple[Hypothesis, ...]]:
    """The ``count`` best translations of a line made from its sentences' n-best lists, one
    hypothesis from each, by the sum of their scores: first every sentence's first (its 1-best,
    which under constraints may score below its second), then the others best first, so the
    second mostly differs from the first in one sentence, as the n-best list of the line read
    whole would. Each prints a different text (``text`` tells a sentence's hypotheses apart);
    where fewer differ than asked for, repeats fill the list, as they do a sentence's own."""
    first = tuple(hypotheses[0] for hypotheses in part_results)
    if count == 1:
        return [first]
    spelled = {id(h): text(h.tokens) for hypotheses in part_results for h in hypotheses}
    ranked = []  # each sentence's hypotheses best first, one per text
    for hypotheses in part_results:
        by_text: dict[str, Hypothesis] = {}
        for h in sorted(hypotheses, key=lambda h: -h.score):
            by_text.setdefault(spelled[id(h)], h)
        ranked.append(list(by_text.values()))
    first_texts = tuple(spelled[id(h)] for h in first)
    # A frontier search from the best of each sentence: a choice is its departures from those,
    # (sentence, rank) pairs, and its successors each take one sentence's next hypothesis.
    chosen = [first]
    frontier, reached = [(-sum(hypotheses[0].score for hypotheses in ranked), ())], {()}
    while frontier and len(chosen) < count:
        negative_score, departures = heapq.heappop(frontier)
        taken = dict(departures)
        choice = tuple(hypotheses[taken.get(position, 0)] for position, hypotheses in enumerate(ranked))
        if tuple(spelled[id(h)] for h in choice) != first_texts:
            chosen.append(choice)
        for position, hypotheses in enumerate(ranked):
            rank = taken.get(position, 0)
            if rank + 1 < len(hypotheses):
                following = tuple(sorted({**taken, position: rank + 1}.items()))
                if following not in reached:
                    reached.add(following)
                    heapq.heappush(frontier, (negative_score + hypotheses[rank].score - hypotheses[rank + 1].score,
                                              following))
    return chosen + list(zip(*part_results))[1:][:count - len(chosen)]


def _joined(parts: list[list[int]], separator: int) -> list[int]:
    joined = list(parts[0])
    for part in parts[1:]:
        joined += [separator, *part]
    return joined


def _word_rows(attention: torch.Tensor, source_words: WordIndices, target_words: WordIndices) -> list[list[float]]:
    """``alignment.word_attention`` as lists: a row per target word, a weight per source word."""
    return [weights.tolist() for _, weights in word_attention(attention, source_words, target_words)]


def _split_at(tokens: list[int], separator: int) -> list[list[int]]:
    """``tokens`` cut at each ``separator``: the sentences ``_joined`` put together."""
    if separator not in tokens:
        return [tokens]
    parts: list[list[int]] = [[]]
    for token in tokens:
        if token == separator:
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


def _in_lines(progress: Callable[[int], object], sentences: int, lines: int) -> Callable[[int], object]:
    """A progress callback counting finished sentences that tells ``progress`` lines: the same
    share of ``lines`` as of ``sentences`` (sentences are searched longest first, not by line)."""
    done = reported = 0

    def report(count: int) -> None:
        nonlocal done, reported
        done += count
        lines_done = done * lines // sentences
        if lines_done > reported:
            progress(lines_done - reported)
            reported = lines_done

    return report


def _texts(texts, name: str) -> list[str]:
    """``texts`` as a list of strings, or a TypeError that says what was given instead."""
    if isinstance(texts, (bytes, bytearray)):  # iterable, but of ints
        raise TypeError(f"{name} is {type(texts).__name__}: give a string or a list of strings (decode bytes first)")
    if not isinstance(texts, Iterable):
        raise TypeError(f"{name} is {type(texts).__name__}: give a string or a list of strings")
    texts = list(texts)  # a generator is read once, here
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{index}] is {type(text).__name__}, not str: give strings, one per sentence")
    return texts


def _decoding_with(decoding: DecodingConfig, nbest: int, overrides: dict,
                   sampling: Optional[Sampling] = None) -> DecodingConfig:
    """``decoding`` with the settings in ``overrides`` that are not None, checked for ``nbest``
    and ``sampling`` (which draws one token at a time: beam size 1 unless one is asked for)."""
    if sampling is not None and overrides.get("beam_size") is None:
        overrides = {**overrides, "beam_size": 1}
    decoding = dataclasses.replace(decoding, **{key: value for key, value in overrides.items() if value is not None})
    check_decoding_settings(decoding)
    if sampling is not None and decoding.beam_size > 1:
        raise UserError(f"--sample draws each token instead of searching; it cannot use --beam-size "
                        f"{decoding.beam_size}: drop --beam-size (--nbest N gives N samples)")
    _check_nbest(nbest, decoding.beam_size, sampling)
    return decoding


def _check_nbest(nbest: int, beam_size: int, sampling: Optional[Sampling] = None) -> None:
    if nbest < 1:
        raise UserError(f"--nbest {nbest}: ask for 1 or more translations per sentence")
    if nbest > beam_size and sampling is None:
        raise UserError(f"--nbest {nbest} needs --beam-size of at least {nbest} (it is {beam_size})")


def _check_sampling(sampling: Sampling) -> None:
    """``sampling``'s settings, which may come from Python code that no option parser checked."""
    if not isinstance(sampling, Sampling):
        raise TypeError(f"sampling is {type(sampling).__name__}: give a seq2seq_cli.Sampling")
    for name, value, ok, expected in (
            ("--sample-topk", sampling.topk, isinstance(sampling.topk, int) and sampling.topk >= 0,
             "0 (every token) or a positive number of tokens"),
            ("--temperature", sampling.temperature, isinstance(sampling.temperature, (int, float))
             and 0 < sampling.temperature < float("inf"), "a positive number (1: the model's distribution)"),
            ("--seed", sampling.seed, isinstance(sampling.seed, int) and sampling.seed >= 0, "0 or a positive integer")):
        if isinstance(value, bool) or not ok:
            raise UserError(f"{name} {value!r}: must be {expected}")


def _check_constraints(translator: "Translator") -> None:
    """Constraints are met by beam search; phrases given per line (not a glossary's, found per
    sentence), for a line as a whole."""
    name = "--constraints" if translator.constraints else "--glossary"
    clashing = [option for option, given in (
        ("--split-sentences", translator.constraints and translator.split_sentences),
        ("fit_long_lines", translator.constraints and translator.fit_long_lines),  # pieces of a line
        ("--sample", translator.sampling is not None),
        ("--no-repeat-ngram-size", translator.decoding.no_repeat_ngram_size > 0)) if given]
    if clashing:
        raise UserError(f"{name} cannot be used with {', '.join(clashing)}: phrases are met by beam search"
                        f"{' over the whole line' if translator.constraints else ''}; drop "
                        + ("it" if len(clashing) == 1 else "them"))
    if translator.decoding.beam_size < 2:
        raise UserError(f"{name} needs beam search: add --beam-size 5 (or any size of 2 or more); with one "
                        "beam a phrase would be put in first, wherever it belongs")


def _check_same_tokenizer(path: str | Path, tokenizers: Tokenizers, other_path: str | Path,
                          other: Tokenizers) -> None:
    """Models in an ensemble must read and write the same tokens: one tokenizer, one vocabulary."""
    for side, ours, theirs in (("target", tokenizers.tgt, other.tgt), ("source", tokenizers.src, other.src)):
        if ours.get_vocab() != theirs.get_vocab():
            raise UserError(f"{other_path} and {path} have different {side} vocabularies ({len(theirs)} and "
                            f"{len(ours)} tokens); an ensemble needs models trained with one tokenizer")
        if ours.backend_tokenizer.to_str() != theirs.backend_tokenizer.to_str():
            raise UserError(f"{other_path} and {path} have different {side} tokenizer files (same vocabulary, other "
                            "normalisation or splitting); an ensemble needs models trained with one tokenizer")


class Translator:
    """A trained model with its tokenizers and search settings: text in, translations out.

    The same object serves ``s2s translate``, ``s2s evaluate`` and Python code::

        from seq2seq_cli import Translator

        translator = Translator.load("runs/toy", device="cpu", beam_size=5)
        translator.translate(["The man sees the dog."])         # -> ["Der Mann sieht den Hund."]
        translator.translate_nbest(["The man sees the dog."], 3)  # -> [[Translation(...), ...]]
        translator.score(["The man sees the dog."], ["Der Mann sieht den Hund."])  # -> [Score(...)]

    ``dtype="bf16"`` decodes under bf16 autocast (the default on CUDA), ``quantize="int8"``
    with int8 weights on the CPU; both are faster on a CPU and change the numbers slightly
    (benchmarks/README.md has the BLEU of each).
    """

    def __init__(self, model: Seq2Seq | Ensemble, tokenizers: Tokenizers, config: Config, device: torch.device,
                 nbest: int = 1, keep_attention: bool = False, checkpoint: str = "", precision: str = "auto",
                 **decoding_overrides):
        self.model = model
        self.checkpoint = checkpoint  # where the model came from, for messages
        self.tokenizers = tokenizers
        self.config = config  # the run's config, as trained
        self.device = device
        self.precision = resolve(precision, device)  # fp32 or bf16
        self.nbest = nbest
        self.keep_attention = keep_attention
        self.alignment = False  # word alignments from the attention, with each translation
        self.decoding = _decoding_with(config.decoding, nbest, decoding_overrides)
        self.sampling: Optional[Sampling] = None  # None: search
        # Translate each line sentence by sentence (seq2seq_cli.segmentation), in the run's languages.
        self.split_sentences = False
        # A line over the model's limit translated in pieces that fit rather than cut to the limit
        # (always so when splitting sentences).
        self.fit_long_lines = False
        self.source_language, self.target_language = language_pair(config.data)
        # The longest source the model was trained on; longer input is cut to it.
        self.max_source_tokens = config.data.max_len
        self.lines_read = 0
        self.sentences_read = 0
        self.unknown_word_lines = 0  # input lines with a word read as [UNK]: the first few are named
        self.glossary_terms = self.glossary_lines = 0  # target terms a glossary put in, and the lines they went to
        # The words the model writes for a glossary's source terms alone, by term and search
        # (``_own_words``): shared with the siblings of ``with_settings``, whose searches differ.
        self._words_for_terms: dict[tuple, tuple[frozenset[str], frozenset[str]]] = {}
        # A source word read as [UNK] is copied into the translation (seq2seq_cli.copying).
        self.copy_unknown = True
        # Each line is a source, then tab-separated phrases its translation must hold
        # (seq2seq_cli.constraints; fairseq's --constraints format).
        self.constraints = False
        # Each sentence holding a source term gets its target term as a constraint (seq2seq_cli.glossary).
        self.glossary: Optional[Glossary] = None
        # The CUDA graphs of this model's searches, shared with the translators ``with_settings``
        # makes (a graph is made per batch shape and kept).
        self._graphs: list[SearchGraphs] = []

    @classmethod
    def load(cls, checkpoint: str | Path | Sequence[str | Path], device: str | torch.device = "auto", *,
             weights: Optional[Sequence[float]] = None, beam_size: Optional[int] = None,
             length_penalty: Optional[float] = None, max_length_ratio: Optional[float] = None,
             no_repeat_ngram_size: Optional[int] = None, batch_size: Optional[int] = None, nbest: int = 1,
             keep_attention: bool = False, dtype: str = "auto", quantize: str = "none",
             cuda_graphs: Optional[str] = None, sampling: Optional[Sampling] = None,
             split_sentences: bool = False, alignment: bool = False, copy_unknown: bool = True,
             constraints: bool = False, glossary: Optional[Glossary | Mapping[str, str] | str | Path] = None
             ) -> "Translator":
        """Load a run directory (its best checkpoint) or a checkpoint file; several of them are
        an ensemble (``weights``: one per model, default equal). Search settings left as None
        are the (first) run's ``decoding`` section. ``dtype``: auto, fp32 or bf16; ``quantize``:
        none or int8 (CPU only); ``cuda_graphs``: auto (replay decoder steps from CUDA graphs on
        CUDA) or off; ``sampling``: draw translations at random instead of searching (e.g.
        ``Sampling(topk=10, seed=1)``; ``nbest`` is then the samples per text);
        ``split_sentences``: translate each text sentence by sentence (a sentence over the model's
        ``data.max_len`` in pieces that fit) and join the translations; ``alignment``: each
        Translation comes with its word alignment (``seq2seq_cli.alignment``); ``copy_unknown``:
        a source word the vocabulary cannot spell (read as [UNK]) is copied into the translation
        where the words that translate it would be (``seq2seq_cli.copying``); ``constraints``: each
        text is a source followed by tab-separated phrases of the target language that its
        translations must hold, e.g. ``"Ein Mann fährt Fahrrad.\tbicycle"`` (beam search of
        ``beam_size`` 2 or more; ``seq2seq_cli.constraints``); ``glossary``: a ``Glossary``, a dict
        of source term -> target term or the path of a glossary file, whose target terms are put
        into the translation of each sentence that holds their source terms
        (``seq2seq_cli.glossary``; beam search too)."""
        if cuda_graphs not in (None, "auto", "off"):
            raise UserError(f"--cuda-graphs {cuda_graphs}: unknown; use auto or off")
        if sampling is not None:
            _check_sampling(sampling)  # before the slow loading
        torch_device = device if isinstance(device, torch.device) else select_device(device)
        precision = check_decoding_format(torch_device, dtype, quantize)  # before the slow loading
        checkpoints = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
        if not checkpoints:
            raise UserError("no checkpoint given: give a run directory or checkpoint file, or a list of them")
        if isinstance(weights, str):  # not one weight per character
            raise TypeError(f"weights is a string ({weights!r}): give a list of numbers, one per checkpoint")
        if weights is not None and len(weights) != len(checkpoints):
            raise UserError(f"--weights gives {len(weights)} weight(s) for {len(checkpoints)} checkpoint(s); "
                            "give one per --checkpoint")
        loaded = [cls(*load_model(path, torch_device), torch_device, checkpoint=str(path), precision=precision)
                  for path in checkpoints]
        translator = loaded[0] if len(loaded) == 1 else cls.ensemble(loaded, weights)
        translator.model = for_decoding(translator.model, torch_device, precision, quantize)
        return translator.with_settings(nbest=nbest, keep_attention=keep_attention, beam_size=beam_size,
                                        length_penalty=length_penalty, max_length_ratio=max_length_ratio,
                                        no_repeat_ngram_size=no_repeat_ngram_size, batch_size=batch_size,
                                        cuda_graphs=cuda_graphs, sampling=sampling, split_sentences=split_sentences,
                                        alignment=alignment, copy_unknown=copy_unknown, constraints=constraints,
                                        glossary=glossary)

    @classmethod
    def ensemble(cls, members: Sequence["Translator"], weights: Optional[Sequence[float]] = None) -> "Translator":
        """One translator that searches with ``members``' models as an ensemble (``weights``:
        one per member, default equal); search settings are the first member's."""
        first = members[0]
        for other in members[1:]:
            _check_same_tokenizer(first.checkpoint, first.tokenizers, other.checkpoint, other.tokenizers)
        model = Ensemble([member.model for member in members], weights).to(first.device).eval()
        ensemble = copy.copy(first)
        ensemble.model, ensemble.checkpoint = model, " + ".join(member.checkpoint for member in members)
        ensemble._graphs = []
        # Input longer than any member was trained on is cut to the shortest limit.
        ensemble.max_source_tokens = min(member.max_source_tokens for member in members)
        return ensemble

    def with_settings(self, nbest: Optional[int] = None, keep_attention: Optional[bool] = None,
                      sampling: Optional[Sampling] = None, split_sentences: Optional[bool] = None,
                      fit_long_lines: Optional[bool] = None, alignment: Optional[bool] = None,
                      copy_unknown: Optional[bool] = None, constraints: Optional[bool] = None,
                      glossary: Optional[Glossary | Mapping[str, str] | str | Path] = None,
                      **decoding_overrides) -> "Translator":
        """A translator with other search settings that shares this one's model and tokenizers
        (settings left as None are this one's)."""
        sibling = copy.copy(self)
        sibling.nbest = self.nbest if nbest is None else nbest
        sibling.keep_attention = self.keep_attention if keep_attention is None else keep_attention
        if split_sentences is not None:
            sibling.split_sentences = bool(split_sentences)
        if fit_long_lines is not None:
            sibling.fit_long_lines = bool(fit_long_lines)
        if alignment is not None:
            sibling.alignment = bool(alignment)
        if copy_unknown is not None:
            sibling.copy_unknown = bool(copy_unknown)
        if constraints is not None:
            sibling.constraints = bool(constraints)
        if glossary is not None:
            if not isinstance(glossary, Glossary):
                glossary = Glossary.of(glossary) if isinstance(glossary, Mapping) else Glossary.read(glossary)
            sibling.glossary = self._spelled(glossary)
        sibling.keep_attention = sibling.keep_attention or sibling.alignment  # alignments are read from it
        if sampling is not None:
            _check_sampling(sampling)
            sibling.sampling = sampling
        sibling.decoding = _decoding_with(self.decoding, sibling.nbest, decoding_overrides, sibling.sampling)
        if sibling.constraints or sibling.glossary is not None:
            _check_constraints(sibling)
        return sibling

    def _spelled(self, glossary: Glossary) -> Glossary:
        """``glossary`` less the target terms the target vocabulary cannot spell, each named once."""
        unspelled = set(self.unspelled(list(glossary.terms.values())))
        for target in sorted(unspelled):
            log.warning("glossary: the target vocabulary cannot spell %r; its entries are left out", target)
        return glossary.without(unspelled) if unspelled else glossary

    def unspelled(self, phrases: list[str]) -> list[str]:
        """The ``phrases`` the target vocabulary cannot spell (they would need [UNK])."""
        unknown = self.tokenizers.tgt_unk_id
        return [phrase for phrase, ids in zip(phrases, self.tokenizers.encode_tgt(phrases)) if unknown in ids]

    def translate(self, texts: Iterable[str] | str) -> list[str] | str:
        """The best translation of each text (a text is one line; an empty text gives ""); a
        single string, rather than a list of them, gives a single string."""
        if isinstance(texts, str):  # not a sequence of one-letter texts
            return self.translate([texts])[0]
        return [nbest[0].text for nbest in self.translate_nbest(texts, 1)]

    def translate_html(self, documents: Iterable[str] | str) -> list[str] | str:
        """Each HTML document (or fragment) with its text translated and the rest as it was:
        tags, attributes, entities, comments, code, the text of elements marked ``translate="no"``
        (``seq2seq_cli.documents``), as ``s2s serve`` translates ``format: html``; a single
        string gives a single string. A sentence with inline elements in it (``<b>``, ``<a
        href>``) is translated whole, the elements put back around the words that looked at
        theirs (``documents.Inline``)."""
        if isinstance(documents, str):
            return self.translate_html([documents])[0]
        pieces = [html_pieces(document) for document in documents]
        texts = [text for document in pieces for text in runs(document, html_entities=True)]
        translations = iter(self._renderings(texts, any(map(has_inline_markup, pieces))))
        translated = [reassemble(document, translations, 0, escape=True, keep_spacing=True)[0] for document in pieces]
        languages = self._languages()
        return [relabel_languages(document, *languages, is_html=True) for document in translated] if languages \
            else translated

    def translate_office(self, document: bytes, file_format: str) -> bytes:
        """An office file's or e-book's bytes (``file_format``: "docx", "odt", "pptx", "odp" or
        "epub") with the text of its paragraphs, tables, text boxes, headers, footers, notes and
        slides (an e-book's documents, table of contents and title) translated and everything
        else kept (``office.OfficeDocument``), as ``s2s serve`` translates such a file.
        ValueError if it is not one."""
        opened = OfficeDocument(document, OFFICE_FORMATS[file_format])
        return opened.translated(iter(self._renderings(opened.runs(), opened.inline_markup)), self._languages())

    def _languages(self) -> Optional[tuple[str, str]]:
        """(source, target) language codes, when the run names both: a document's declaration
        of the one becomes the other's (``documents.relabel_languages``)."""
        if self.source_language and self.target_language:
            return self.source_language, self.target_language
        return None

    def _renderings(self, texts: list[str], inline_markup: bool) -> list[list[Rendering]]:
        """The best translation of each run of a document, as ``documents.reassemble`` takes it:
        with ``inline_markup``, with its word attention, so inline elements go where the
        attention puts their words."""
        if not texts:
            return []
        if not inline_markup:
            return [[translation] for translation in self.translate(texts)]
        translator = self.with_settings(nbest=1, keep_attention=True)
        sources, results = translator.translate_raw([text.encode("utf-8") for text in texts])
        best = [hypotheses[0] for hypotheses in results]
        return [[(text, translator.word_attention(source_ids, h))]
                for text, source_ids, h in zip(translator.detokenize(best), sources, best)]

    def translate_nbest(self, texts: Iterable[str] | str, nbest: Optional[int] = None
                        ) -> list[list[Translation]] | list[Translation]:
        """The ``nbest`` best translations of each text (default: this translator's), best first;
        ``nbest`` may not exceed the beam size (when sampling, the samples of each text, highest
        log-probability first). A single string gives its one list."""
        if isinstance(texts, str):
            return self.translate_nbest([texts], nbest)[0]
        count = self.nbest if nbest is None else nbest
        _check_nbest(count, self.decoding.beam_size, self.sampling)
        texts = _texts(texts, "texts")
        sources, results = self.translate_raw([text.encode("utf-8") for text in texts], count)
        return [[Translation(text, h.score, h.log_prob, self.word_alignment(source_ids, h) if self.alignment else None)
                 for text, h in zip(self.detokenize(hypotheses), hypotheses)]
                for source_ids, hypotheses in zip(sources, results)]

    def score(self, sources: Iterable[str] | str, targets: Iterable[str] | str,
              progress: Optional[Callable[[int], object]] = None) -> list[Score] | Score:
        """The model's log-probability of each target text as the translation of its source
        (forced decoding, ``seq2seq_cli.scoring``); two strings give one Score. A source is cut
        to the model's limit as ``translate`` cuts it; a target is scored whole. ``progress``
        is told how many pairs each finished batch held. With ``alignment`` each Score has the
        pair's word alignment, read from the attention that read the target (forced alignment)."""
        if isinstance(sources, str) and isinstance(targets, str):
            return self.score([sources], [targets])[0]
        sources, targets = _texts(sources, "sources"), _texts(targets, "targets")
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} sources but {len(targets)} targets: give one target per source")
        first_line = self._number_lines(len(sources))
        self.sentences_read += len(sources)  # as translating them would: samples after these are numbered on
        source_ids = self._encode_sources(sources, range(first_line, first_line + len(sources)))
        target_ids = self.tokenizers.encode_tgt(targets)
        settings = (SpecialIds.of(self.tokenizers), self.device, self.decoding.batch_size, self.precision, progress)
        alignments: list[Optional[list[tuple[int, int]]]] = [None] * len(target_ids)
        if self.alignment:  # each pair's scores come with the attention that read its target
            scored = score_ids_with_attention(self.model, source_ids, target_ids, *settings)
            alignments = [self._alignment(source, ids, attention)
                          for source, ids, (_, attention) in zip(source_ids, target_ids, scored)]
            scores = [token_scores for token_scores, _ in scored]
        else:
            scores = score_ids(self.model, source_ids, target_ids, *settings)
        eos = self.tokenizers.eos_id
        return [Score(sum(token_scores), self.tokenizers.tgt_pieces(ids + [eos]), token_scores, alignment)
                for ids, token_scores, alignment in zip(target_ids, scores, alignments)]

    def translate_raw(self, raw_lines: list[bytes], nbest: Optional[int] = None,
                      progress: Optional[Callable[[int], object]] = None
                      ) -> tuple[list[list[int]], list[list[Hypothesis]]]:
        """Source ids and n-best hypotheses (``nbest``, default this translator's) for each raw
        input line; ``progress`` is told how many lines each finished batch held. With
        ``split_sentences`` a line's sources and hypotheses are its sentences' joined by [SEP]."""
        return self._translate(self._read(raw_lines), nbest, progress)

    def translate_stream(self, raw_line_batches: Iterable[list[bytes]]
                         ) -> Iterator[tuple[list[list[int]], list[list[Hypothesis]]]]:
        """``translate_raw`` of each batch of raw lines, in order, taking batches from the stream as
        it goes (what ``s2s translate`` does with its input); on the CPU, as many batches at once
        as torch has threads, each on one thread, like ``translate``'s own batches."""
        read = (self._read(raw_lines) for raw_lines in raw_line_batches)  # numbered in input order
        with decoding_threads(self.device) as threads:
            yield from map_in_order(self._translate, read, threads)

    def _number_lines(self, count: int) -> int:
        """The input line number of the first of the next ``count`` lines read, for warnings."""
        self.lines_read += count
        return self.lines_read - count + 1

    def _read(self, raw_lines: list[bytes]) -> _Lines:
        """The next raw input lines as text, numbered, and split into sentences if asked to."""
        first_line = self._number_lines(len(raw_lines))
        texts = [decode_line(raw, first_line + offset) for offset, raw in enumerate(raw_lines)]
        phrases = None
        if self.constraints:  # SOURCE<TAB>PHRASE<TAB>PHRASE...: a line is one sentence
            fields = [split_line(text) for text in texts]
            texts, phrases = [source for source, _ in fields], [wanted for _, wanted in fields]
        if self.split_sentences:
            sentences = [self._fit(split_sentences(text, self.source_language), first_line + offset)
                         for offset, text in enumerate(texts)]
        elif self.fit_long_lines:
            sentences = [self._fit([text], first_line + offset) for offset, text in enumerate(texts)]
        else:
            sentences = [[text] for text in texts]
        if self.glossary is not None:  # each sentence's terms, after its line's own phrases (one sentence then)
            flat = [sentence for line in sentences for sentence in line]
            given = phrases or [[] for _ in flat]
            phrases = [self.glossary.added_to(wanted, sentence) for wanted, sentence in zip(given, flat)]
            added = iter(len(with_terms) - len(wanted) for with_terms, wanted in zip(phrases, given))
            per_line = [sum(next(added) for _ in line) for line in sentences]
            self.glossary_terms += sum(per_line)
            self.glossary_lines += sum(1 for count in per_line if count)
            terms = [self.glossary.found(sentence) for sentence in flat]
        first_sentence = self.sentences_read
        self.sentences_read += sum(len(line) for line in sentences)
        return _Lines(first_line, sentences, first_sentence, phrases, terms if self.glossary is not None else None)

    def _fit(self, sentences: list[str], line_number: int) -> list[str]:
        """A line's sentences, one longer than the model's limit cut into pieces that fit (with
        a warning naming the line): split sentence by sentence, nothing is cut off."""
        fitted = fit_sentences(sentences, self.max_source_tokens, self.tokenizers.src_words)
        if len(fitted) > len(sentences):
            cuts = len(fitted) - len(sentences)
            log.warning("input line %d: over the model's limit of %d tokens (data.max_len)%s; "
                        "translated in pieces cut between words (%d cut%s)", line_number, self.max_source_tokens,
                        " without a sentence end" if self.split_sentences else "", cuts, "" if cuts == 1 else "s")
        return fitted

    def _translate(self, lines: _Lines, nbest: Optional[int] = None,
                   progress: Optional[Callable[[int], object]] = None
                   ) -> tuple[list[list[int]], list[list[Hypothesis]]]:
        nbest = self.nbest if nbest is None else nbest
        counts = [len(line) for line in lines.sentences]
        sentences = [sentence for line in lines.sentences for sentence in line]
        line_numbers = [lines.first_line + offset for offset, count in enumerate(counts) for _ in range(count)]
        sources = self._encode_sources(sentences, line_numbers)
        split = len(sentences) != len(counts)  # some line holds several sentences
        if progress is not None and split:
            progress = _in_lines(progress, len(sentences), len(counts))
        unknown = self.tokenizers.src_unk_id if self.copy_unknown else None
        copies = unknown is not None and any(unknown in source for source in sources)
        constraints, renderings = (None, None) if lines.phrases is None else self._encode_phrases(lines.phrases,
                                                                                                  line_numbers)
        placing = None
        if lines.terms is not None and any(lines.terms):
            own_words = self._own_words({source for sentence in lines.terms for source, _ in sentence})
            placing = functools.partial(self._with_terms_placed, sources, lines.terms, own_words,
                                        self.keep_attention or copies)
        results = translate_corpus(self.model, self.tokenizers, sources, self.decoding, self.device, nbest,
                                   self.keep_attention or copies,  # a copy is placed by the attention
                                   self.precision, self._search_graphs(), self.sampling,
                                   first_index=lines.first_sentence, progress=progress, constraints=constraints,
                                   placing=placing)
        if constraints is not None:
            self._name_unmet_phrases(constraints, results, line_numbers)
        if split:
            combine = _rank_by_rank if self.sampling is not None else functools.partial(
                _best_combinations, count=nbest, text=self.tokenizers.tgt_text)
            sources, results = _join_sentences(sources, results, counts, self.tokenizers.eos_id, combine)
            if renderings is not None:  # a line's phrases are its sentences'
                starts = list(itertools.accumulate(counts, initial=0))
                renderings = [sum(renderings[start:end], []) for start, end in zip(starts, starts[1:])]
        if copies:
            results = [self._with_unknown_copied(line, source_ids, hypotheses)
                       for line, source_ids, hypotheses in zip(lines.sentences, sources, results)]
        if renderings is not None and any(renderings):
            results = [self._with_phrases_as_written(hypotheses, line) if line else hypotheses
                       for hypotheses, line in zip(results, renderings)]
        return sources, results

    def _encode_phrases(self, phrases: list[list[str]], line_numbers: list[int]
                        ) -> tuple[list[Constraints], list[list[tuple[str, str]]]]:
        """Each sentence's phrases as their ways of being written in target tokens
        (``constraints.ways_of_writing``), and the (rendering, phrase) pairs of those the
        vocabulary writes otherwise than given (a look-alike letter, lower case), which
        ``_with_phrases_as_written`` puts right. A phrase with a word the target vocabulary
        cannot spell is left out, with a warning (its [UNK] would say nothing of the word)."""
        continuation = self.tokenizers.tgt_word_continuations  # a full stop after a phrase ends its word
        encoded, renderings = [], []
        for line_number, wanted in zip(line_numbers, phrases):
            line, opening, rewritten = [], set(), []
            for phrase in wanted:
                ways, written = self._ways_of_writing(phrase)
                if not ways:
                    log.warning("input line %d: the target vocabulary cannot spell the constraint %r; left out",
                                line_number, phrase)
                    continue
                capital = capitalized(phrase)
                opening_ways, opening_written = self._ways_of_writing(capital) if capital else ([], [])
                opening_ways = [way for way in opening_ways if way not in ways]  # not where the vocabulary is uncased
                opening |= {(len(line), way) for way in range(len(ways), len(ways) + len(opening_ways))}
                line.append(ways + opening_ways)
                rewritten += written + (opening_written if opening_ways else [])
            encoded.append(Constraints(line, continuation, frozenset(opening)))
            renderings.append(rewritten)
        return encoded, renderings

    def _own_words(self, terms: set[str]) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
        """The words (``_bare``) of the translations the model gives each source term alone: of
        its 1-best, and of the rest of its beam's n-best. A translation of a sentence holding the
        term may have them for it ("dog", "a" for "Hund")."""
        search = (id(self.model), self.decoding.beam_size, self.decoding.length_penalty,
                  self.decoding.max_length_ratio, self.decoding.max_length_offset)
        new = sorted(term for term in terms if (term, search) not in self._words_for_terms)
        if len(self._words_for_terms) + len(new) > _MOST_TERMS_KEPT:  # served requests bring glossaries of their own
            self._words_for_terms.clear()
        if new:
            found = translate_corpus(self.model, self.tokenizers, self.tokenizers.encode_src(new),
                                     dataclasses.replace(self.decoding, no_repeat_ngram_size=0), self.device,
                                     self.decoding.beam_size, precision=self.precision)
            for term, hypotheses in zip(new, found):
                first, *others = (frozenset(filter(None, map(_bare, text.split())))  # no bare punctuation
                                  for text in self.tokenizers.decode_tgt([h.tokens for h in hypotheses]))
                self._words_for_terms[term, search] = (first, frozenset().union(*others) - first)
        return {term: self._words_for_terms[term, search] for term in terms}

    def _with_terms_placed(self, sources: list[list[int]], terms: list[list[tuple[str, str]]],
                           own_words: dict[str, tuple[frozenset[str], frozenset[str]]], attention: bool,
                           indices: list[int], bests: list[Hypothesis]) -> list[Optional[Hypothesis]]:
        """Plain translations ``bests`` of sentences ``indices`` with each glossary target term
        they lack put in place of the model's own word for the source term, as a glossary user
        means it: "The brown pup is standing on the sandy beach." where the search under constraints,
        free to put the term anywhere, gave "The brown dog is standing on the sandy pup.". In a
        sentence's first translation (its 1-best) the model's word is found by
        ``_Placing.put_in``, the sentences scored together, a term of each at a time; its
        further translations (an n-best list's) take the term in place of the same word, where
        they have it. None where a term has no such word, or two terms the same one: the search
        places those."""
        ids = SpecialIds.of(self.tokenizers)
        placing: dict[int, _Placing] = {}
        first_of: dict[int, int] = {}  # each sentence's first translation's position
        for position, (index, best, text) in enumerate(zip(indices, bests, self.tokenizers.decode_tgt(
                [best.tokens for best in bests]))):
            first_of.setdefault(index, position)
            missing = [pair for pair in dict.fromkeys(terms[index]) if not held_in(text, pair[1])]
            if missing and best.tokens:
                placing[position] = _Placing(sources[index], list(best.tokens), missing)
        follow = {position: placing.pop(position) for position in list(placing)
                  if first_of[indices[position]] != position}
        while pending := [position for position, sentence in placing.items() if sentence.missing]:
            pairs = {position: placing[position].without_term(self.tokenizers) for position in pending}
            for position in [position for position, (_, times) in pairs.items() if not times]:
                del placing[position], pairs[position]  # the term is beyond the source's cut
            if not pairs:
                continue
            rows = [(placing[position].source, without) for position, (without, _) in pairs.items()]
            scored, _ = score_batch(self.model, [source for pair in rows for source in pair],
                                    [placing[position].tokens for position in pairs for _ in range(2)], ids,
                                    self.device)
            for number, position in enumerate(pairs):
                sentence = placing[position]
                if not sentence.put_in(scored[2 * number], scored[2 * number + 1], pairs[position][1],
                                       own_words[sentence.missing[0][0]], self.tokenizers):
                    del placing[position]
        for position, sentence in follow.items():  # in place of the words the first's terms took
            leader = placing.get(first_of[indices[position]])
            while leader is not None and sentence.missing and sentence.missing[0] in leader.replaced:
                if not sentence.put_in_place_of(leader.replaced[sentence.missing[0]],
                                                sentence.without_term(self.tokenizers)[1], self.tokenizers):
                    break
            if not sentence.missing:
                placing[position] = sentence
        results: list[Optional[Hypothesis]] = [None] * len(bests)
        if placing:
            scored, weights = score_batch(self.model, [sentence.source for sentence in placing.values()],
                                          [sentence.tokens for sentence in placing.values()], ids, self.device,
                                          attention)
            for row, (position, sentence) in enumerate(placing.items()):
                log_prob, length = sum(scored[row]), len(sentence.tokens) + 1  # [SEP] counted
                results[position] = Hypothesis(
                    sentence.tokens, log_prob / gnmt_penalty(length, self.decoding.length_penalty), log_prob,
                    None if weights is None else weights[row, :length, :len(sentence.source) + 1].float().cpu())
        return results

    def _ways_of_writing(self, phrase: str) -> tuple[list[list[int]], list[tuple[str, str]]]:
        """A phrase's ways of being written in target tokens (none where the vocabulary cannot
        spell it), and (rendering, phrase) where the vocabulary writes it otherwise."""
        own, *marked = self.tokenizers.encode_tgt([phrase] + [phrase + mark for mark in TRAILING_PUNCTUATION])
        if not own or self.tokenizers.tgt_unk_id in own:
            return [], []
        rendered = self.tokenizers.decode_tgt([own])[0]
        rewritten = [(rendered, phrase)] if rendered != phrase and len(rendered.split()) == len(phrase.split()) else []
        return ways_of_writing(own, [ids for ids in marked if self.tokenizers.tgt_unk_id not in ids]), rewritten

    def _with_phrases_as_written(self, hypotheses: list[Hypothesis], renderings: list[tuple[str, str]]
                                 ) -> list[Hypothesis]:
        """A line's hypotheses with its phrases written as given where the vocabulary wrote them
        otherwise ("Zoe" for "Zoë"): the words are the model's, one for one."""
        return [CopiedHypothesis(h.tokens, h.score, h.log_prob, h.attention,
                                 Copied(as_written(text, renderings), h.copied.origins if isinstance(
                                     h, CopiedHypothesis) else None))
                for text, h in zip(self.detokenize(hypotheses), hypotheses)]

    def _name_unmet_phrases(self, constraints: list[Constraints], results: list[list[Hypothesis]],
                            line_numbers: list[int]) -> None:
        """Warn of a sentence whose best translation could not hold its phrases within the length
        limit (the search then gives its best translations without them)."""
        for line_number, wanted, hypotheses in zip(line_numbers, constraints, results):
            missing = [phrase for phrase, held in zip(wanted.phrases, wanted.held(hypotheses[0].tokens)) if not held]
            if missing:
                log.warning("input line %d: no translation within the length limit holds %s",
                            line_number, ", ".join(repr(self.tokenizers.decode_tgt([phrase[0]])[0])
                                                   for phrase in missing))

    def _with_unknown_copied(self, sentences: list[str], source_ids: list[int], hypotheses: list[Hypothesis]
                             ) -> list[Hypothesis]:
        """A line's hypotheses with the source words read as [UNK] copied in (``seq2seq_cli.copying``)."""
        source_words = self._source_words(source_ids)  # read once for the line, not per hypothesis
        spans = self._unknown_spans(sentences, source_ids, source_words)
        if not spans:
            return hypotheses
        copied = []
        for text, h in zip(self.detokenize(hypotheses), hypotheses):
            target_words = self._target_words(h.tokens)
            rows = _word_rows(h.attention, source_words, target_words)  # the model's own words
            copied.append(CopiedHypothesis(h.tokens, h.score, h.log_prob, h.attention, copy_unknown(
                text, rows, spans, self._written_unknown(h, spans, target_words))))
        return copied

    def _written_unknown(self, hypothesis: Hypothesis, spans: list[UnknownSpan], target_words: WordIndices
                         ) -> dict[int, int]:
        """The spans the model wrote as [UNK] (a model trained with ``data.unknown_placeholders``
        learned to): each [UNK] of the translation stands for the span whose [UNK] tokens it
        looked at most, and goes before the word of the translation that follows it. A span
        -> before which word; ``target_words``: each of its tokens' word."""
        unknown = self.tokenizers.tgt_unk_id
        if unknown is None or unknown not in hypothesis.tokens:
            return {}
        written: dict[int, int] = {}
        for position, token in enumerate(hypothesis.tokens):
            if token != unknown:
                continue
            looks = hypothesis.attention[position].tolist()
            span = max(range(len(spans)), key=lambda index: sum(looks[k] for k in spans[index].tokens))
            # [UNK] adds no text: it goes after the words of the tokens before it.
            before = [word for word in target_words[:position] if word is not None]
            written.setdefault(span, max(before) + 1 if before else 0)
        return written

    def _unknown_spans(self, sentences: list[str], source_ids: list[int], source_words: WordIndices
                       ) -> list[UnknownSpan]:
        """The stretches of a line's text read as [UNK], found by reading each sentence again
        with character offsets; a sentence that does not read as the ids searched is left out.
        ``source_words``: each source token's word."""
        unknown, eos = self.tokenizers.src_unk_id, self.tokenizers.eos_id
        parts = _split_at(source_ids, eos)
        if unknown is None or len(parts) != len(sentences):
            return []
        spans, start = [], 0
        for sentence, part in zip(sentences, parts):
            if unknown in part:
                # As ``encode_up_to`` read it: the head, unless it holds too few tokens (a 20 MB
                # line is not read whole again).
                head = line_head(sentence, len(part))
                ids, offsets = self.tokenizers.src_offsets(head)
                if len(ids) < len(part) < len(sentence):
                    ids, offsets = self.tokenizers.src_offsets(sentence)
                if ids[:len(part)] == part:
                    spans += unknown_spans(sentence, offsets[:len(part)], [id_ == unknown for id_ in part],
                                           source_words[start:start + len(part)], start)
            start += len(part) + 1
        return spans

    def _encode_sources(self, texts: list[str], line_numbers: Sequence[int]) -> list[list[int]]:
        """Source ids, each cut to the longest source the model was trained on (with a warning
        naming its input line); of a line thousands of times longer only the head is read
        (``Tokenizers.encode_src``)."""
        limit = self.max_source_tokens
        sources = self.tokenizers.encode_src(texts, limit)
        unk_id = self.tokenizers.src_unk_id
        for offset, (text, source) in enumerate(zip(texts, sources)):
            if unk_id is not None and unk_id in source[:limit]:
                self._name_unknown_words(text, limit, line_numbers[offset])
            if len(source) > limit:
                count = (f"over {limit} tokens in {len(text)} characters" if len(line_head(text, limit)) < len(text)
                         else f"{len(source)} tokens")
                log.warning("input line %d: %s, truncated to the model's limit of %d (data.max_len); "
                            "--split-sentences translates it in pieces instead", line_numbers[offset], count, limit)
                sources[offset] = source[:limit]
        return sources

    def _name_unknown_words(self, text: str, limit: int, line_number: int) -> None:
        """Warn of the words of an input line that the vocabulary reads as [UNK]; after
        ``UNKNOWN_WORD_LINES_NAMED`` lines once more, then no longer (a text in a script the
        model never saw would otherwise warn on every line)."""
        self.unknown_word_lines += 1
        if self.unknown_word_lines > UNKNOWN_WORD_LINES_NAMED + 1:
            return
        if self.unknown_word_lines > UNKNOWN_WORD_LINES_NAMED:
            log.warning("input line %d: more lines hold words the model's vocabulary cannot spell; "
                        "no more are named", line_number)
            return
        unknown = self.tokenizers.unknown_src_words(line_head(text, limit))
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        log.warning("input line %d: %s the model's vocabulary cannot spell, read as [UNK]: %s",
                    line_number, "a word" if len(unknown) == 1 else f"{len(unknown)} words", shown)

    def _search_graphs(self) -> Optional[SearchGraphs]:
        """The CUDA graphs of this translator's model, when ``decoding.cuda_graphs`` asks for them."""
        if self.decoding.cuda_graphs != "auto":
            return None
        for graphs in self._graphs:
            if graphs.model is self.model:
                return graphs
        graphs = SearchGraphs.when_wanted(self.decoding.cuda_graphs, self.model, SpecialIds.of(self.tokenizers),
                                          self.device, self.precision)
        if graphs is not None:
            self._graphs.append(graphs)
        return graphs

    def detokenize(self, hypotheses: list[Hypothesis]) -> list[str]:
        """Each hypothesis as text; one of several sentences (joined by [SEP]) is each sentence
        detokenized on its own, joined as the target language writes sentences."""
        eos = self.tokenizers.eos_id
        parts = [_split_at(h.tokens, eos) for h in hypotheses]
        texts = iter(self.tokenizers.decode_tgt([part for sentences in parts for part in sentences]))
        joiner = sentence_joiner(self.target_language)
        decoded = [joiner.join(next(texts).replace("\n", " ") for _ in sentences) for sentences in parts]
        return [h.copied.text if isinstance(h, CopiedHypothesis) else text for text, h in zip(decoded, hypotheses)]

    def output_lines(self, index: int, hypotheses: list[Hypothesis], source_ids: Optional[list[int]] = None) -> str:
        """What ``s2s translate`` prints for input line ``index``: the translation, or with
        n-best lists ``INDEX ||| HYPOTHESIS ||| SCORE`` lines; with ``alignment`` (and the
        line's ``source_ids``) each ends in `` ||| `` and the word alignment."""
        texts = self.detokenize(hypotheses)
        fields = [[text] if self.nbest == 1 else [str(index), text, f"{h.score:.4f}"]
                  for text, h in zip(texts, hypotheses)]
        if self.alignment and source_ids is not None:
            for line, h in zip(fields, hypotheses):
                line.append(format_alignment(self.word_alignment(source_ids, h)))
        return "".join(NBEST_SEPARATOR.join(line) + "\n" for line in fields[:1 if self.nbest == 1 else None])

    def word_alignment(self, source_ids: list[int], hypothesis: Hypothesis) -> list[tuple[int, int]]:
        """(source word, target word) for each word of the hypothesis as printed, from its
        attention (``seq2seq_cli.alignment``); a line of several sentences counts its words
        through all of them."""
        pairs = self._alignment(source_ids, hypothesis.tokens, hypothesis.attention)
        return hypothesis.copied.alignment(pairs) if isinstance(hypothesis, CopiedHypothesis) else pairs

    def _alignment(self, source_ids: list[int], target_ids: list[int], attention: torch.Tensor
                   ) -> list[tuple[int, int]]:
        return word_alignment(attention, *self._words(source_ids, target_ids))

    def word_attention(self, source_ids: list[int], hypothesis: Hypothesis) -> list[list[float]]:
        """The attention each word of the hypothesis as printed paid to each source word
        (``seq2seq_cli.alignment.word_attention``): a row per target word, as ``word_alignment``
        counts them, a weight per source word."""
        rows = _word_rows(hypothesis.attention, *self._words(source_ids, hypothesis.tokens))
        if isinstance(hypothesis, CopiedHypothesis):
            return hypothesis.copied.word_attention(rows, len(rows[0]) if rows else 0)
        return rows

    def _words(self, source_ids: list[int], target_ids: list[int]) -> tuple[WordIndices, WordIndices]:
        """Each source and target token's word, a line's sentences counted through."""
        return self._source_words(source_ids), self._target_words(target_ids)

    def _source_words(self, source_ids: list[int]) -> WordIndices:
        return words_of_sentences(source_ids, self.tokenizers.eos_id, self.tokenizers.src_token_words)

    def _target_words(self, target_ids: list[int]) -> WordIndices:
        return words_of_sentences(target_ids, self.tokenizers.eos_id, self.tokenizers.tgt_token_words,
                                  spaced=sentence_joiner(self.target_language) == " ")

    def attention_labels(self, source_ids: list[int], hypothesis: Hypothesis) -> tuple[list[str], list[str]]:
        """The subwords along the two axes of ``hypothesis.attention``: source and target, each
        with the final [SEP] the model read or wrote."""
        eos = self.tokenizers.eos_id
        return self.tokenizers.src_pieces(source_ids + [eos]), self.tokenizers.tgt_pieces(hypothesis.tokens + [eos])

    def plot_attention(self, path, source_ids: list[int], hypothesis: Hypothesis) -> None:
        from seq2seq_cli.plotting import plot_attention

        plot_attention(path, *self.attention_labels(source_ids, hypothesis), hypothesis.attention)

    def translate_lines(self, lines: list[str], progress: Optional[Callable[[int], object]] = None
                        ) -> tuple[list[str], dict]:
        """1-best translations of whole lines, and the decoding speed."""
        started = time.perf_counter()
        _, results = self.translate_raw([line.encode("utf-8") for line in lines], progress=progress)
        seconds = time.perf_counter() - started
        best = [nbest[0] for nbest in results]
        speed = {"beam_size": self.decoding.beam_size, "seconds": round(seconds, 3),
                 "sentences_per_s": round(len(lines) / seconds, 2),
                 "tokens_per_s": round(sum(len(h.tokens) for h in best) / seconds, 1)}
        return self.detokenize(best), speed
