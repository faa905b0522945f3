import pytest
from transformers import AutoTokenizer, BertTokenizer

from seq2seq_cli.config import TokenizerConfig
from seq2seq_cli.data import read_lines
from seq2seq_cli.errors import UserError
from seq2seq_cli.tokenization import Tokenizers, build_tokenizers, load_pretrained, train_wordpiece

from conftest import multi30k, toy_lines


def normalise(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.skipif(not multi30k("train.de").is_file(), reason="Multi30k not found beside the project")
def test_round_trip_on_multi30k_validation():
    """decode(encode(line)) == line for >= 99.5% of Multi30k val.de and val.en (8k joint vocab)."""
    train = read_lines(multi30k("train.de")) + read_lines(multi30k("train.en"))
    tokenizer = train_wordpiece(train, vocab_size=8000)
    for name in ("val.de", "val.en"):
        lines = read_lines(multi30k(name))
        ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
        decoded = tokenizer.batch_decode(ids, skip_special_tokens=True)
        exact = sum(normalise(d) == normalise(line) for d, line in zip(decoded, lines))
        assert exact / len(lines) >= 0.995, (name, exact, len(lines))


def test_cased_accents_and_punctuation_survive():
    lines = ["Ein Mann fährt Fahrrad.", "Eine Frau trägt ein T-Shirt und „Schuhe“!", "Größe: 3,5 km/h (neu)"]
    tokenizer = train_wordpiece(lines * 20, vocab_size=200, min_frequency=1)
    for line in lines:
        ids = tokenizer(line, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == line
    # Punctuation stays inside its whitespace-separated word, so pieces after the first are "##".
    words = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str("ein T-Shirt.")
    assert [word for word, _ in words] == ["ein", "T-Shirt."]


def test_saved_tokenizer_reloads_identically(tmp_path):
    en, de = toy_lines("train", 300)
    tokenizers = build_tokenizers(TokenizerConfig(vocab_size=300), en, de)
    assert tokenizers.shared
    tokenizers.save(tmp_path / "tok")
    assert (tmp_path / "tok" / "vocab.txt").read_text(encoding="utf-8").splitlines()[:4] == \
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    reloaded = Tokenizers.load(tmp_path / "tok")
    assert reloaded.encode_src(en[:50]) == tokenizers.encode_src(en[:50])
    assert reloaded.fingerprint() == tokenizers.fingerprint()
    # A stranger's AutoTokenizer gets the very same pipeline from tokenizer.json.
    stranger = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert stranger(de[0], add_special_tokens=False)["input_ids"] == tokenizers.encode_tgt(de[:1])[0]


def test_a_vocabulary_learns_from_the_head_of_a_line_far_longer_than_a_sentence():
    """A line of megabytes (a document without newlines) would cost the trainer gigabytes: only
    its head is read, and the vocabulary is the one its head gives."""
    from seq2seq_cli.tokenization import HEAD_CHARACTERS_PER_TOKEN, TRAINING_LINE_TOKENS, line_head

    en, de = toy_lines("train", 300)
    giant = " ".join(f"w{n}rd" for n in range(200_000))  # 1.5 MB of words seen once each
    head = line_head(giant, TRAINING_LINE_TOKENS)
    assert len(head) <= HEAD_CHARACTERS_PER_TOKEN * TRAINING_LINE_TOKENS < len(giant) and giant.startswith(head + " ")
    config = TokenizerConfig(vocab_size=400, min_frequency=1)
    with_giant = build_tokenizers(config, en + [giant], de + [giant])
    assert with_giant.src.get_vocab() == build_tokenizers(config, en + [head], de + [head]).src.get_vocab()
    assert with_giant.src.get_vocab() != build_tokenizers(config, en, de).src.get_vocab()  # the head was read
    with pytest.raises(TypeError, match="not an iterator"):
        build_tokenizers(config, iter(en), de)


def test_separate_vocabularies(tmp_path):
    en, de = toy_lines("train", 300)
    tokenizers = build_tokenizers(TokenizerConfig(vocab_size=200, shared_vocab=False), en, de)
    assert not tokenizers.shared
    tokenizers.save(tmp_path / "tok")
    reloaded = Tokenizers.load(tmp_path / "tok")
    assert not reloaded.shared
    assert reloaded.decode_tgt(reloaded.encode_tgt(de[:20])) == de[:20]
    assert reloaded.src.get_vocab() != reloaded.tgt.get_vocab()


def test_pretrained_bert_tokenizer_from_folder(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ein", "mann", "##s", ".", "fahrt"]
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}).save_pretrained(str(tmp_path / "bert"))
    tokenizers = build_tokenizers(TokenizerConfig(pretrained=str(tmp_path / "bert")), [], [])
    assert tokenizers.encode_src(["Ein Manns."]) == [[5, 6, 7, 8]]
    assert (tokenizers.pad_id, tokenizers.bos_id, tokenizers.eos_id) == (0, 2, 3)


def test_each_token_knows_its_word_in_the_text_as_written(tmp_path):
    """What word alignments count: the space-separated words of the source line and of the
    translation as printed, whatever the tokenizer splits off (a pretrained BERT tokenizer cuts
    punctuation into tokens of its own and its decoder glues it back)."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ein", "mann", "##s", ".", "fahrt"]
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}).save_pretrained(str(tmp_path / "bert"))
    bert = build_tokenizers(TokenizerConfig(pretrained=str(tmp_path / "bert")), [], [])
    (ids,) = bert.encode_src(["Ein Manns. Fahrt ⌘"])  # ein mann ##s . fahrt [UNK]
    assert bert.src_token_words(ids) == [0, 1, 1, 1, 2, 3]  # the unknown word still counts
    assert bert.tgt_token_words(ids) == [0, 1, 1, 1, 2, 2]  # printed without [UNK]: nothing of its own
    ours = train_wordpiece(["Ein T-shirt, bitte."] * 20, vocab_size=60)
    own = Tokenizers(ours, ours)
    (ids,) = own.encode_src(["Ein T-shirt, bitte."])
    assert max(own.src_token_words(ids)) == 2 and own.src_token_words(ids)[0] == 0


def test_saved_truncation_does_not_cut_sentences(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ein", "mann", "."]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})
    tokenizer.backend_tokenizer.enable_truncation(max_length=2)
    tokenizer.save_pretrained(str(tmp_path / "bert"))
    tokenizers = build_tokenizers(TokenizerConfig(pretrained=str(tmp_path / "bert")), [], [])
    assert tokenizers.encode_src(["ein mann ein mann ."]) == [[5, 6, 5, 6, 7]]


def test_unknown_pretrained_tokenizer_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=rf"tokenizer folder {tmp_path / 'missing-model'} not found; give a folder"):
        load_pretrained(tmp_path / "missing-model")  # not the hub's complaint about a repo id
    with pytest.raises(UserError, match="tokenizer missing-model could not be loaded"):
        load_pretrained("missing-model")


def test_a_saved_tokenizer_reads_back_the_same_without_transformers(tmp_path):
    """Run directories are read with the Rust library alone: same ids, pieces, text and fingerprint
    as transformers' AutoTokenizer over the same files."""
    from seq2seq_cli.tokenization import SavedTokenizer

    en, de = toy_lines("train", 2000)
    trained = build_tokenizers(TokenizerConfig(vocab_size=300), en, de)
    trained.save(tmp_path / "tok")
    ours = Tokenizers.load(tmp_path / "tok")
    assert isinstance(ours.src, SavedTokenizer)
    theirs = Tokenizers(load_pretrained(tmp_path / "tok"), load_pretrained(tmp_path / "tok"))
    lines = de[:200] + ["Größe: 3,5 km/h (neu)", "", "¿Qué? ☃"]
    assert ours.encode_tgt(lines) == theirs.encode_tgt(lines) == trained.encode_tgt(lines)
    ids = theirs.encode_tgt(lines)
    with_specials = [[theirs.bos_id, *seq, theirs.eos_id, theirs.pad_id] for seq in ids]
    assert ours.decode_tgt(with_specials) == theirs.decode_tgt(with_specials)
    assert ours.tgt_pieces(ids[0]) == theirs.tgt_pieces(ids[0])
    assert (ours.pad_id, ours.bos_id, ours.eos_id, ours.tgt_size) == (theirs.pad_id, theirs.bos_id, theirs.eos_id,
                                                                       theirs.tgt_size)
    assert ours.fingerprint() == theirs.fingerprint() == trained.fingerprint()
    ours.save(tmp_path / "again")  # and what it saves, transformers still reads
    assert AutoTokenizer.from_pretrained(str(tmp_path / "again")).backend_tokenizer.to_str() == \
        theirs.src.backend_tokenizer.to_str()


def test_accents_written_as_combining_marks_and_ligatures_read_as_the_letters_they_make(tmp_path):
    """ "ä" can be written "a" and a combining diaeresis (macOS, text from PDFs): it looks the
    same and reads the same, not as [UNK]; offsets are those of the text as given, and the
    tokenizer saved is the one trained (its fingerprint, which caches and shards are keyed by,
    unchanged). A vocabulary learned from such text is the one learned from composed text."""
    import json
    import unicodedata

    en, de = toy_lines("train", 2000)
    composed = [line for line in de if any(c in line for c in "äöüÄ")][:50]
    decomposed = [unicodedata.normalize("NFD", line) for line in composed]
    assert all(a != b for a, b in zip(composed, decomposed))
    trained = build_tokenizers(TokenizerConfig(vocab_size=300), en, de)
    ids = trained.encode_tgt(composed)
    assert trained.tgt_unk_id not in sum(ids, []) and trained.encode_tgt(decomposed) == ids
    assert trained.encode_src(decomposed) == trained.encode_src(composed)
    line = decomposed[0]
    _, offsets = trained.src_offsets(line)
    words = [word for _, _, word in trained.src_words([line])[0]]
    pieces = ["".join(line[start:end] for (start, end), w in zip(offsets, words) if w == word) for word in sorted(set(words))]
    assert pieces == line.split() and trained.unknown_src_words(line) == []
    # So are the ligatures of text taken from PDFs, which no piece of the vocabulary holds.
    ligatures = "Er \ufb01ndet das Schi\ufb00."
    assert trained.encode_src([ligatures]) == trained.encode_src(["Er findet das Schiff."])
    _, offsets = trained.src_offsets(ligatures)
    assert offsets[-1][1] == len(ligatures) and trained.unknown_src_words(ligatures) == []
    trained.save(tmp_path / "tok")
    saved = json.loads((tmp_path / "tok" / "tokenizer.json").read_text(encoding="utf-8"))
    assert saved["normalizer"]["type"] == "BertNormalizer"
    assert Tokenizers.load(tmp_path / "tok").fingerprint() == trained.fingerprint()
    learned = build_tokenizers(TokenizerConfig(vocab_size=300), en, [unicodedata.normalize("NFD", line) for line in de])
    assert learned.tgt.get_vocab() == trained.tgt.get_vocab() and learned.fingerprint() == trained.fingerprint()


def test_a_character_the_vocabulary_lacks_is_read_as_a_look_alike_it_has():
    """A WordPiece vocabulary reads a word with one character it never learned as one [UNK]: a
    name with a foreign letter, a word with typographic punctuation attached. Such a character
    is read as its letter without the accent, or a look-alike; nothing else changes."""
    en, de = toy_lines("train", 300)
    tokenizers = build_tokenizers(TokenizerConfig(vocab_size=300), en, de)
    unk = tokenizers.src_unk_id
    assert unk == tokenizers.src.backend_tokenizer.token_to_id("[UNK]")
    assert not {"Å", "Ł", "…", "—", "»", '"'} & set("".join(en + de))  # the toy corpus has none of them

    folded, plain = tokenizers.encode_src(["Ålesund… sees Łukasz—", "Alesund. sees Lukasz-"])
    assert folded == plain and unk not in folded
    assert tokenizers.encode_tgt(["Łukasz…"]) == tokenizers.encode_tgt(["Lukasz."])
    # One character for one: where a long line is cut between words is where it was.
    assert tokenizers.src_words(["Ålesund… sees"]) == tokenizers.src_words(["Alesund. sees"])
    # No look-alike the vocabulary has (» would be ", which the toy corpus lacks; Cyrillic has
    # none): the word stays [UNK], and is named.
    (ids,) = tokenizers.encode_src(["The Жук and »cat« see Ålesund."])
    assert ids.count(unk) == 2
    assert tokenizers.unknown_src_words("The Жук and »cat« see Ålesund. Жук") == ["Жук", "»cat«"]
    # Every word the vocabulary can spell is encoded exactly as the tokenizer alone encodes it.
    lines = toy_lines("dev")[0][:200] + ["Das Café öffnet", "naïve Ålesund"]
    backend = tokenizers.src.backend_tokenizer
    alone = [encoding.ids for encoding in backend.encode_batch(lines, add_special_tokens=False)]
    assert tokenizers.encode_src(lines)[:200] == alone[:200]
    assert alone[-1][0] == unk and tokenizers.encode_src(lines)[-1][0] != unk  # naïve has ï


def test_folding_spares_characters_the_vocabulary_spells_within_pieces_or_after_normalizing(tmp_path):
    """A character counts as known when any piece holds it (é inside "café") or when the
    tokenizer's normalizer turns it into one (Ä lowercased to ä): such words are not touched."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "café", "cafe", "äpfel", "apfel", "n", "##e"]
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True,
                  strip_accents=False).save_pretrained(str(tmp_path / "bert"))
    bert = build_tokenizers(TokenizerConfig(pretrained=str(tmp_path / "bert")), [], [])
    assert bert.encode_src(["Café Äpfel né ñe"]) == [[5, 7, 1, 9, 10]]  # é known: "né" stays [UNK]; ñ is n


def test_byte_level_tokenizers_are_not_folded():
    from tokenizers import Tokenizer, models

    from seq2seq_cli.tokenization import CharacterFolding

    folding = CharacterFolding(Tokenizer(models.BPE()))
    assert not folding.applies and folding(["Ålesund…"]) == ["Ålesund…"]


def test_training_says_how_much_of_its_corpus_is_unk(tmp_path, caplog):
    """As fairseq-preprocess does, but only when there is any: a pretrained vocabulary may lack
    the corpus' characters; one learned from the corpus never does."""
    import logging

    from seq2seq_cli.data import ParallelCorpus
    from seq2seq_cli.launch import _log_unknown_tokens

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ein", "mann", "##s", ".", "fahrt"]
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}).save_pretrained(str(tmp_path / "bert"))
    bert = build_tokenizers(TokenizerConfig(pretrained=str(tmp_path / "bert")), [], [])
    src, tgt = ["Ein Mann fährt.", "Ein Жук ."], ["ein mann .", "ein mann"]
    with caplog.at_level(logging.INFO, logger="seq2seq_cli"):
        _log_unknown_tokens(ParallelCorpus(bert.encode_src(src), bert.encode_tgt(tgt), src, tgt), bert)
    assert "1 of 7 source tokens (14.29%) and 0 of 5 target tokens (0.00%) are [UNK]" in caplog.text
    caplog.clear()
    en, de = toy_lines("train", 300)
    own = build_tokenizers(TokenizerConfig(vocab_size=300), en, de)
    with caplog.at_level(logging.INFO, logger="seq2seq_cli"):
        _log_unknown_tokens(ParallelCorpus(own.encode_src(en), own.encode_tgt(de), en, de), own)
    assert "[UNK]" not in caplog.text
