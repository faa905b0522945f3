"""BERT WordPiece tokenizers: trained on the user's corpus, or loaded pretrained.

A trained vocabulary uses BERT's WordPiece model, special tokens and ``##`` continuation
pieces, with two changes that make translations come out as normal text:

* cased and accent-preserving (German output needs "fährt", not "fahrt");
* words are split on whitespace only. The stock BERT pre-tokenizer also splits punctuation
  into words of its own, which loses whether a space was there: "T-shirt" would come back as
  "T - shirt". Here punctuation stays inside its word ("T", "##-", "##shirt"), so
  ``decode(encode(line)) == line`` up to whitespace normalisation.

The pipeline is stored whole in ``tokenizer.json`` (``save_pretrained`` form), so
``AutoTokenizer.from_pretrained(run_dir / "tokenizer")`` rebuilds exactly this tokenizer; a
``vocab.txt`` is written beside it for tools that read BERT vocabularies. Before it, a
character no piece of the vocabulary holds is read as a look-alike that one does
(``CharacterFolding``), so one foreign letter does not make its whole word [UNK]; and text is
read composed (Unicode NFC, ``composing``), so "ä" written as "a" and a combining diaeresis,
as macOS and text taken from PDFs often write it, is the "ä" the vocabulary learned.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import unicodedata
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from seq2seq_cli.config import TokenizerConfig
from seq2seq_cli.errors import UserError

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                  "sep_token": "[SEP]", "mask_token": "[MASK]"}

# How many characters of a line are read per token that can be used: far more than a token
# ever needs (Multi30k averages 4.6 characters per token), so only absurd lines are cut.
HEAD_CHARACTERS_PER_TOKEN = 64
# Symbols that no vocabulary learned from text is likely to hold: one of them stands for a name
# that data.unknown_placeholders hides (Tokenizers.unspellable_character).
UNSPELLABLE_CANDIDATES = "\u2603\u2604\u2646\u2698\u26c7\u2bd1"
# The tokens of a line a vocabulary is learned from, at most: a longer line is no sentence (a
# document without newlines, a binary file), and whole it would cost the trainer gigabytes.
TRAINING_LINE_TOKENS = 1024


def line_head(text: str, tokens: int) -> str:
    """``text``, or when longer than ``HEAD_CHARACTERS_PER_TOKEN x tokens`` characters its words
    before the last whitespace in that many (all of it when there is no whitespace there).

    Both BERT pre-tokenizers split at whitespace, so the head's tokens are the first tokens of
    the whole line."""
    return words_within(text, HEAD_CHARACTERS_PER_TOKEN * tokens)


def words_within(text: str, characters: int) -> str:
    """``text``, or when longer than ``characters`` its words before the last whitespace in
    that many (all of it when there is no whitespace there)."""
    if len(text) <= characters:
        return text
    match = re.match(r"(.*)\s", text[:characters], re.DOTALL)  # greedy: up to the last whitespace
    return match.group(1) if match else text


def _silence_transformers() -> None:
    # transformers warns about unrelated optional backends on import; keep stderr for our logs.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def train_wordpiece(lines: Iterable[str], vocab_size: int, min_frequency: int = 2,
                    lowercase: bool = False):
    """Train a reversible BERT WordPiece tokenizer on ``lines``.

    ``lines`` is read twice (a list, or an iterable whose ``iter`` starts over: see
    ``LineStream``). The result depends on the lines and settings only, never on the process.
    """
    from transformers import PreTrainedTokenizerFast

    _check_rereadable(lines, "train_wordpiece")
    _silence_transformers()
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=lowercase)
    # Learned from the text composed, as it is read (``composing``); saved without it, so that
    # every tokenizer, trained or pretrained, is composed the same way and keeps its fingerprint.
    reading = normalizers.Sequence([normalizers.NFC(), normalizer])
    specials = list(SPECIAL_TOKENS.values())
    # The trainer gives each "##c" piece its id in the order it meets words in a hash map, which
    # changes from process to process, and merges of equal count are ranked by those ids, so the
    # vocabulary itself would change. Listing every possible "##c" up front (sorted) as reserved
    # tokens fixes their ids; the trainer's alphabet and merge ids are then deterministic.
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, continuing_subword_prefix="##",
        special_tokens=specials + _continuation_pieces(lines, normalizer), show_progress=False)
    tokenizer = _wordpiece_pipeline(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"),
                                    reading)
    tokenizer.train_from_iterator(lines, trainer)
    # Renumber (specials first, then sorted) and rebuild, so the "##c" pieces are ordinary
    # vocabulary again rather than special tokens that decoding would drop.
    vocab = tokenizer.get_vocab()
    ordered = specials + sorted(token for token in vocab if token not in specials)
    tokenizer = _wordpiece_pipeline(
        models.WordPiece({token: i for i, token in enumerate(ordered)}, unk_token="[UNK]",
                         continuing_subword_prefix="##"), normalizer)
    tokenizer.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False,
                                   **SPECIAL_TOKENS)


def _check_rereadable(lines: Iterable[str], reader: str) -> None:
    """A TypeError unless ``lines`` can be read twice: an iterator would be empty the second time."""
    if iter(lines) is lines:
        raise TypeError(f"{reader} reads its lines twice; pass a list or a re-iterable, not an iterator")


def _wordpiece_pipeline(model, normalizer) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return tokenizer


def _continuation_pieces(lines: Iterable[str], normalizer) -> list[str]:
    """Every "##c" piece the trainer can make from ``lines``, composed, sorted: one for each
    character the normalizer can leave inside a word (a superset of those that occur there)."""
    raw_characters: set[str] = set()
    for line in lines:
        raw_characters.update(unicodedata.normalize("NFC", line))
    characters: set[str] = set()
    for raw in raw_characters:
        # BERT's normalizer works character by character: clean-up, lowercasing, and spaces put
        # around CJK characters, which makes those words of their own, never continuations.
        normalized = normalizer.normalize_str(raw)
        if normalized == normalized.strip():
            characters.update(c for c in normalized if not c.isspace())
    return ["##" + c for c in sorted(characters)]


class LineStream:
    """The lines of text files, read afresh each time it is iterated (never held whole)."""

    def __init__(self, read: Callable[[], Iterator[str]]):
        self._read = read

    def __iter__(self) -> Iterator[str]:
        return self._read()


def load_pretrained(name_or_path: str | Path):
    """Load any BERT tokenizer saved with ``save_pretrained`` (or cached by name), offline."""
    from transformers import AutoTokenizer

    _silence_transformers()
    if Path(name_or_path).is_absolute() and not Path(name_or_path).is_dir():  # a folder, not a model name
        raise UserError(f"tokenizer folder {name_or_path!s} not found; give a folder written by save_pretrained "
                        "(a run's tokenizer/) or a model in the local cache")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"tokenizer {name_or_path!s} could not be loaded ({str(err).splitlines()[0]}); "
                        "give a folder written by save_pretrained or a model in the local cache") from None
    # A saved tokenizer may carry truncation or padding settings; s2s encodes whole sentences.
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    for role in ("pad_token_id", "cls_token_id", "sep_token_id"):
        if getattr(tokenizer, role, None) is None:
            raise UserError(f"tokenizer {name_or_path!s} has no {role[:-3]}; s2s needs BERT's "
                            "[PAD], [CLS] (start) and [SEP] (end) tokens")
    return tokenizer


# Latin typographic ligatures (ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ), as text taken from PDFs holds them: ``composing``.
LIGATURES = "\ufb00\ufb01\ufb02\ufb03\ufb04\ufb05\ufb06"
# Look-alikes of characters that do not come apart under NFKD: typographic punctuation, and
# the letters of European alphabets drawn with a stroke or without a dot.
LOOK_ALIKES = {**dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u2039\u203a", "'"),
               **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),
               **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
               "\u2026": ".", **dict(zip("ŁłØøĐđĦħıŦŧſƒ", "LlOoDdHhiTtsf"))}


def composing(backend: Tokenizer) -> Tokenizer:
    """A copy of the tokenizer ``backend`` that composes text (Unicode NFC) before its own
    normalizer: a letter with an accent can be written as the letter and a combining mark (macOS,
    text taken from PDFs, some keyboards) and looks the same, but without composing it, the
    vocabulary, learned from composed text, reads the word as [UNK] ("Ein Mädchen fährt
    Fahrrad." came out "Mädchen fährt."). A typographic ligature of PDFs ("ﬁ") that no piece of
    a WordPiece vocabulary holds is read as its letters ("ﬁndet" as "findet"). Offsets stay those
    of the text as given. A copy, so the tokenizer saved and its fingerprint are the tokenizer
    as given."""
    copy = Tokenizer.from_str(backend.to_str())
    steps = [normalizers.NFC()]
    alphabet = _wordpiece_alphabet(backend)
    if alphabet is not None:
        steps += [normalizers.Replace(ligature, unicodedata.normalize("NFKD", ligature))
                  for ligature in LIGATURES if ligature not in alphabet]
    if backend.normalizer is not None:
        steps.append(backend.normalizer)
    copy.normalizer = normalizers.Sequence(steps)
    return copy


def _wordpiece_alphabet(backend: Tokenizer) -> Optional[set[str]]:
    """The characters of a WordPiece vocabulary's pieces (continuation prefix left off): a
    character in none can be in no word it spells. None for other models (byte-level BPE),
    which spell anything."""
    if not isinstance(backend.model, models.WordPiece):
        return None
    prefix = backend.model.continuing_subword_prefix
    return set().union(*(piece.removeprefix(prefix) for piece in backend.get_vocab(with_added_tokens=False)))


class CharacterFolding:
    """A WordPiece vocabulary spells a word from the characters it learned, and reads a word
    with any other character as one [UNK]: a name with one letter the training corpus lacked
    ("Ålesund", "Dvořák") is lost whole, and so is a word with typographic punctuation
    attached ("»Fahrrad«", "Fahrrad…"). Before encoding, such a character is read as a
    look-alike the vocabulary has: its letter without the accent (NFKD), or for punctuation
    and a few letters one from ``LOOK_ALIKES``. Only a character that is in no piece of the
    vocabulary (after the normalizer) is folded, so no word the vocabulary can spell changes;
    one character for one, so character offsets and words stay those of the text. A character
    without a look-alike is kept (its word stays [UNK]). Other tokenizer models
    (byte-level BPE) spell anything and are left alone."""

    def __init__(self, backend: Tokenizer):
        alphabet = _wordpiece_alphabet(backend)
        self.applies = alphabet is not None
        if not self.applies:
            return
        # Only characters in no piece are folded, so a word the vocabulary can spell is never changed.
        self._alphabet = alphabet
        self._normalizer = backend.normalizer
        # Lines with nothing outside the alphabet (almost all) are found by one regex search.
        self._outside = re.compile("[^%s\\s]" % "".join(map(re.escape, sorted(self._alphabet))))
        self._table: dict[int, str] = {}
        self._decided: set[str] = set()

    def __call__(self, lines: Sequence[str]) -> Sequence[str]:
        if not self.applies:
            return lines
        return [self._fold(line) if self._outside.search(line) else line for line in lines]

    def _fold(self, line: str) -> str:
        for character in set(line).difference(self._decided):
            look_alike = self._look_alike(character)
            if look_alike is not None:
                self._table[ord(character)] = look_alike
            self._decided.add(character)
        return line.translate(self._table)

    def _spelled(self, character: str) -> bool:
        normalized = self._normalizer.normalize_str(character) if self._normalizer else character
        return all(c in self._alphabet or c.isspace() for c in normalized)

    def _look_alike(self, character: str) -> Optional[str]:
        if self._spelled(character):
            return None
        base = "".join(c for c in unicodedata.normalize("NFKD", character) if not unicodedata.combining(c))
        for candidate in (LOOK_ALIKES.get(character), base):
            if candidate and len(candidate) == 1 and not candidate.isspace() and self._spelled(candidate):
                return candidate
        return None


class Tokenizers:
    """The source and target tokenizers (one object when the vocabulary is shared).

    Sentences are encoded without special tokens; the data and decoding code add
    ``bos_id`` ([CLS]) and ``eos_id`` ([SEP]) where the model needs them.
    """

    def __init__(self, src, tgt):
        self.src = src
        self.tgt = tgt
        if (src.pad_token_id, src.sep_token_id) != (tgt.pad_token_id, tgt.sep_token_id):
            raise UserError("source and target tokenizers must use the same [PAD] and [SEP] ids")
        self.pad_id: int = tgt.pad_token_id
        self.bos_id: int = tgt.cls_token_id
        self.eos_id: int = tgt.sep_token_id
        # What encodes: a copy of each tokenizer's pipeline reading text composed (``composing``).
        self.src_encoder = composing(src.backend_tokenizer)
        self.tgt_encoder = self.src_encoder if tgt is src else composing(tgt.backend_tokenizer)
        self.src_folding = CharacterFolding(self.src_encoder)
        self.tgt_folding = self.src_folding if tgt is src else CharacterFolding(self.tgt_encoder)

    @property
    def shared(self) -> bool:
        return self.src is self.tgt

    @property
    def src_unk_id(self) -> Optional[int]:
        """The id of the source vocabulary's [UNK]: None when it spells any text (byte-level BPE)."""
        return _unk_id(self.src)

    @property
    def tgt_unk_id(self) -> Optional[int]:
        return _unk_id(self.tgt)

    @cached_property
    def tgt_word_continuations(self) -> frozenset[int]:
        """The target pieces that go on a word, a letter or digit after the WordPiece prefix
        ("##en", not "##."): none for a vocabulary without such pieces (byte-level BPE)."""
        return _word_continuations(self.tgt)

    @cached_property
    def src_word_continuations(self) -> frozenset[int]:
        """The source pieces that go on a word (``tgt_word_continuations``)."""
        return _word_continuations(self.src)

    @property
    def src_size(self) -> int:
        return len(self.src)

    @property
    def tgt_size(self) -> int:
        return len(self.tgt)

    def encode_src(self, lines: Sequence[str], limit: Optional[int] = None) -> list[list[int]]:
        """The ids of each source line; with ``limit``, see ``encode_up_to``."""
        return _encode(self.src_encoder, self.src_folding(lines)) if limit is None else \
            encode_up_to(self.src_encoder, lines, limit, self.src_folding)

    def encode_tgt(self, lines: Sequence[str], limit: Optional[int] = None) -> list[list[int]]:
        """The ids of each target line; with ``limit``, see ``encode_up_to``."""
        return _encode(self.tgt_encoder, self.tgt_folding(lines)) if limit is None else \
            encode_up_to(self.tgt_encoder, lines, limit, self.tgt_folding)

    def src_words(self, lines: Sequence[str]) -> list[list[tuple[int, int, int]]]:
        """Each source line's subwords as (first character, past-the-end character, index of
        the word it is part of), without special tokens: where a line can be cut between words."""
        if not lines:
            return []
        encodings = self.src_encoder.encode_batch(list(self.src_folding(lines)), add_special_tokens=False)
        return [[(start, end, word) for (start, end), word in zip(encoding.offsets, encoding.word_ids)]
                for encoding in encodings]

    def unknown_src_words(self, line: str) -> list[str]:
        """The words of ``line`` (as spaces separate them) that the source vocabulary reads as
        [UNK], even after ``CharacterFolding``: each once, in order."""
        unknown = self.src_unk_id
        if unknown is None:
            return []
        ids, offsets = self.src_offsets(line)
        starts = [start for id_, (start, _) in zip(ids, offsets) if id_ == unknown]
        words = [match for match in re.finditer(r"\S+", line) if any(match.start() <= s < match.end() for s in starts)]
        return list(dict.fromkeys(match.group() for match in words))

    def unspellable_character(self) -> str:
        """A character that the source and the target vocabulary each read as [UNK], alone and
        in a word: what ``data.unknown_placeholders`` writes a name as. UserError if there is
        none (a vocabulary that spells anything, such as byte-level BPE, has no [UNK])."""
        src_unk, tgt_unk = self.src_unk_id, self.tgt_unk_id
        for character in UNSPELLABLE_CANDIDATES:
            if src_unk is not None and tgt_unk is not None and \
                    self.encode_src([character, f"a{character}"]) == [[src_unk]] * 2 and \
                    self.encode_tgt([character, f"a{character}"]) == [[tgt_unk]] * 2:
                return character
        raise UserError("data.unknown_placeholders needs vocabularies that read a character they lack as [UNK] "
                        "(WordPiece, as s2s trains); this tokenizer spells everything: set it to 0")

    def src_offsets(self, line: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids of ``line`` as ``encode_src`` reads it, and each token's characters in it
        (first, past the end): ``CharacterFolding`` changes one character for one, and the
        tokenizer's offsets are those of the text before it is composed."""
        encoding = self.src_encoder.encode(self.src_folding([line])[0], add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def decode_tgt(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        return self.tgt.batch_decode([list(s) for s in sequences], skip_special_tokens=True)

    def tgt_text(self, ids: Sequence[int]) -> str:
        """The text of target ids with special tokens kept: what tells translations apart
        (``decoding.SpecialIds.text``), one [UNK] from another word included."""
        return self.tgt.backend_tokenizer.decode(list(ids), skip_special_tokens=False)

    def src_token_words(self, ids: Sequence[int]) -> list[Optional[int]]:
        """Each source token's word in the source text (``_word_indices``)."""
        return _word_indices(self.src, ids, skip_special_tokens=False)

    def tgt_token_words(self, ids: Sequence[int]) -> list[Optional[int]]:
        """Each target token's word in the translation as printed (``_word_indices``)."""
        return _word_indices(self.tgt, ids, skip_special_tokens=True)

    def src_pieces(self, ids: Sequence[int]) -> list[str]:
        return self.src.convert_ids_to_tokens(list(ids))

    def tgt_pieces(self, ids: Sequence[int]) -> list[str]:
        return self.tgt.convert_ids_to_tokens(list(ids))

    def fingerprint(self) -> str:
        """A hash of the exact tokenization pipelines, used as part of the corpus cache key."""
        digest = hashlib.sha256()
        for tokenizer in (self.src, self.tgt):
            digest.update(tokenizer.backend_tokenizer.to_str().encode("utf-8"))
        return digest.hexdigest()[:16]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        if self.shared:
            _save(self.src, folder)
        else:
            _save(self.src, folder / "source")
            _save(self.tgt, folder / "target")

    @classmethod
    def load(cls, folder: str | Path) -> "Tokenizers":
        """The tokenizer(s) ``save`` wrote into ``folder`` (a run's or a prepared corpus')."""
        folder = Path(folder)
        if (folder / "source").is_dir():
            return cls(_load_saved(folder / "source"), _load_saved(folder / "target"))
        shared = _load_saved(folder)
        return cls(shared, shared)


class SavedTokenizer:
    """A tokenizer folder s2s wrote, read with the Rust ``tokenizers`` library alone.

    It gives the same ids, pieces and text as transformers' fast tokenizer over the same
    ``tokenizer.json`` (tested), without importing transformers, which took about 2 seconds of
    every ``s2s translate`` start."""

    def __init__(self, folder: Path, settings: dict):
        self.backend_tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._settings = settings
        ids = {role: self.backend_tokenizer.token_to_id(_token_text(settings.get(role)) or "")
               for role in ("pad_token", "cls_token", "sep_token")}
        self.pad_token_id, self.cls_token_id, self.sep_token_id = ids.values()

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def batch_decode(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return self.backend_tokenizer.decode_batch([list(s) for s in sequences],
                                                   skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.backend_tokenizer.id_to_token(i) for i in ids]

    def save_pretrained(self, folder: str) -> None:
        self.backend_tokenizer.save(str(Path(folder) / "tokenizer.json"))
        with open(Path(folder) / "tokenizer_config.json", "w", encoding="utf-8") as handle:
            json.dump(self._settings, handle, indent=2)


def _token_text(token) -> Optional[str]:
    return token.get("content") if isinstance(token, dict) else token


def _load_saved(folder: Path):
    """Our own saved tokenizers without transformers; anything else through ``load_pretrained``."""
    try:
        settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        if (folder / "tokenizer.json").is_file() and all(settings.get(role) for role in SPECIAL_TOKENS):
            tokenizer = SavedTokenizer(folder, settings)
            if None not in (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id):
                return tokenizer
    except Exception:  # not one of ours, or damaged: the full loader says what is wrong
        pass
    return load_pretrained(folder)


def _word_continuations(tokenizer) -> frozenset[int]:
    model = tokenizer.backend_tokenizer.model
    if not isinstance(model, models.WordPiece):
        return frozenset()
    prefix = model.continuing_subword_prefix
    return frozenset(token for piece, token in tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False).items()
                     if piece.startswith(prefix) and piece[len(prefix):len(prefix) + 1].isalnum())


def _unk_id(tokenizer) -> Optional[int]:
    model = tokenizer.backend_tokenizer.model
    unknown = getattr(model, "unk_token", None) if isinstance(model, models.WordPiece) else None
    return None if unknown is None else tokenizer.backend_tokenizer.token_to_id(unknown)


def _word_indices(tokenizer, ids: Sequence[int], skip_special_tokens: bool) -> list[Optional[int]]:
    """Each token's word (counting from 0) among the space-separated words of the text ``ids``
    decode to, found by decoding each prefix: whatever the tokenizer's decoder joins or cleans
    up. A token that adds no text before the first word (a special token skipped) has None.
    The source keeps special tokens (an unknown word reads [UNK]), the target skips them, as
    translations are printed."""
    ids = list(ids)
    prefixes = tokenizer.batch_decode([ids[:end] for end in range(1, len(ids) + 1)],
                                      skip_special_tokens=skip_special_tokens)
    return [len(text.split()) - 1 if text.split() else None for text in prefixes]


def _encode(encoder: Tokenizer, lines: Sequence[str]) -> list[list[int]]:
    if not lines:
        return []
    # The Rust tokenizer's batch call, without the transformers wrapper around it: the same
    # ids (no special tokens, no truncation), 1.5x faster on a million lines.
    encodings = encoder.encode_batch(list(lines), add_special_tokens=False)
    return [encoding.ids for encoding in encodings]


def encode_up_to(encoder: Tokenizer, lines: Sequence[str], limit: int, folding: CharacterFolding) -> list[list[int]]:
    """The ids of each line read through ``folding``, exact up to ``limit`` tokens: a line with
    more may give only a prefix of its ids, longer than ``limit``.

    A line thousands of times longer than ``limit`` tokens (a document without newlines, a
    binary file) would cost the tokenizer gigabytes (a 20 MB line: 3.6 GB and 32 s), so only its
    ``line_head`` is read; unless the head proves the line too long, giving more tokens than
    ``limit``, the whole line is read (a few very long words)."""
    heads = [line_head(line, limit) for line in lines]
    ids = _encode(encoder, folding(heads))
    for index, (line, head) in enumerate(zip(lines, heads)):
        if len(head) < len(line) and len(ids[index]) <= limit:
            ids[index] = _encode(encoder, folding([line]))[0]
    return ids


def _save(tokenizer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    vocab = tokenizer.get_vocab()
    with open(folder / "vocab.txt", "w", encoding="utf-8") as handle:
        for token in sorted(vocab, key=vocab.__getitem__):
            handle.write(token + "\n")


def _training_heads(lines: Iterable[str]) -> LineStream:
    """``lines``, each cut to its ``line_head`` for ``TRAINING_LINE_TOKENS``, read afresh each time."""
    _check_rereadable(lines, "build_tokenizers")
    return LineStream(lambda: (line_head(line, TRAINING_LINE_TOKENS) for line in lines))


def build_tokenizers(config: TokenizerConfig, train_src: Iterable[str],
                     train_tgt: Iterable[str]) -> Tokenizers:
    """Load the pretrained tokenizer, or train WordPiece vocabularies on the training corpus
    (lines in lists, or ``LineStream``s for corpora too large to hold); of a line far longer
    than a sentence only the first words are learned from (``TRAINING_LINE_TOKENS``)."""
    if config.pretrained:
        shared = load_pretrained(config.pretrained)
        return Tokenizers(shared, shared)
    options = dict(vocab_size=config.vocab_size, min_frequency=config.min_frequency,
                   lowercase=config.lowercase)
    train_src, train_tgt = _training_heads(train_src), _training_heads(train_tgt)
    if config.shared_vocab:
        both = LineStream(lambda: itertools.chain(train_src, train_tgt))
        shared = train_wordpiece(both, **options)
        return Tokenizers(shared, shared)
    return Tokenizers(train_wordpiece(train_src, **options), train_wordpiece(train_tgt, **options))
