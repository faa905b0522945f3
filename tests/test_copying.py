"""Unknown source words (read as [UNK]) copied into the translation: placed by the attention,
or where a model trained with data.unknown_placeholders wrote [UNK]; never lost, and the
alignment and markup of a translation follow its copied words."""

import pytest
from transformers import BertTokenizer

from seq2seq_cli.config import load_config
from seq2seq_cli.constraints import held_in
from seq2seq_cli.copying import UnknownSpan, copy_unknown, unknown_spans
from seq2seq_cli.data import tokenize_corpus, with_unknown_placeholders
from seq2seq_cli.launch import train
from seq2seq_cli.shards import ShardedCorpus, prepare
from seq2seq_cli.translation import Translator

from conftest import s2s_forked, tiny_config, toy_lines, write_corpus

TRANSLATION = "Two men are playing soccer in the field."  # of "Zwei Männer spielen Fußball in Москва."


def one_hot(source: int, sources: int = 6) -> list[float]:
    return [float(word == source) for word in range(sources)]


def test_an_unknown_word_takes_the_place_of_the_words_that_looked_at_it():
    # "the" looks mostly elsewhere, "field." at the unknown word: only "field" is replaced,
    # its full stop kept; the rest of the translation is the model's, word for word.
    attention = [one_hot(0), one_hot(1), one_hot(2), one_hot(3), one_hot(3), one_hot(4),
                 [0, 0, 0, 0, 0.6, 0.4], [0, 0, 0, 0, 0.05, 0.95]]
    copied = copy_unknown(TRANSLATION, attention, [UnknownSpan("Москва.", (5,))])
    assert copied.text == "Two men are playing soccer in the Москва."
    assert copied.origins == (0, 1, 2, 3, 4, 5, 6, -6)
    pairs = [(0, 0), (1, 1), (2, 2), (3, 3), (3, 4), (4, 5), (4, 6), (4, 7)]  # the model's words' links
    assert copied.alignment(pairs) == [(0, 0), (1, 1), (2, 2), (3, 3), (3, 4), (4, 5), (4, 6), (5, 7)]
    assert copied.word_attention(attention, 6)[-1] == one_hot(5)
    # Two neighbouring words looking at it are replaced together, as one copy.
    attention[6] = [0, 0, 0, 0, 0.2, 0.8]
    assert copy_unknown(TRANSLATION, attention, [UnknownSpan("Москва", (5,))]).text == \
        "Two men are playing soccer in Москва."


def test_an_unknown_word_no_word_looked_at_goes_after_the_words_of_the_source_before_it():
    attention = [one_hot(0), one_hot(1), one_hot(2), one_hot(3), one_hot(3), one_hot(4), one_hot(4), one_hot(4)]
    source_words = 7  # "Zwei Männer spielen Fußball in Москва heute."
    attention = [row + [0.0] for row in attention]
    attention[-1] = one_hot(6, source_words)
    copied = copy_unknown(TRANSLATION, attention, [UnknownSpan("Москва", (5,))])
    assert copied.text == "Two men are playing soccer in the Москва field."
    assert copied.origins == (0, 1, 2, 3, 4, 5, 6, -6, 7)
    # A written [UNK] goes where the model wrote it, whatever the attention says.
    written = copy_unknown(TRANSLATION, attention, [UnknownSpan("Москва", (5,))], written={0: 0})
    assert written.text == "Москва Two men are playing soccer in the field."


def test_each_of_several_unknown_spans_is_copied_once():
    attention = [one_hot(0), one_hot(1), one_hot(2), one_hot(3), one_hot(3), one_hot(4), one_hot(5), one_hot(5)]
    spans = [UnknownSpan("Нижний Новгород", (1, 2)), UnknownSpan("北京", (5,))]
    copied = copy_unknown("A man from the city in the field.", attention, spans)
    # "man from" looked at "Нижний Новгород" (source words 1 and 2), "the field." at "北京".
    assert copied.text == "A Нижний Новгород the city in 北京."
    assert copied.origins == (0, -2, -3, 3, 4, 5, -6)


KNOWN_NAMES = ["Anna", "Paul", "Maria", "Tom", "Lena", "Jonas", "Clara", "Felix", "Emma", "Oskar", "Mila", "Karl",
          "Sofia", "Ben", "Ida", "Max", "Greta", "Leo", "Nora", "Hugo"]
UNKNOWN_NAMES = ["Иван", "Ωμέγα", "Наташа", "Σοφία", "Дмитрий", "Νίκος", "Ольга", "Борис"]


def named_pairs(split: str, limit: int = None) -> tuple[list[str], list[str]]:
    """The toy pairs whose subject is an article and a noun ("The baker" / "Der Bäcker"), with
    a name in its place on both sides ("Anna brings back an apple." / "Anna bringt einen Apfel
    zurück."): names written the same in both languages, as a translation copies them."""
    en_lines, de_lines = toy_lines(split)
    pairs = []
    for en, de in zip(en_lines, de_lines):
        en_words, de_words = en.split(), de.split()
        if en_words[0] in ("The", "A") and en_words[1].islower() and de_words[1][0].isupper():
            name = KNOWN_NAMES[len(pairs) % len(KNOWN_NAMES)]
            pairs.append((" ".join([name] + en_words[2:]), " ".join([name] + de_words[2:])))
    pairs = pairs[:limit]
    return [en for en, _ in pairs], [de for _, de in pairs]


def test_placeholders_pick_the_same_pairs_whole_or_in_pieces_and_only_shared_names():
    src, tgt = named_pairs("train", 1000)
    whole = with_unknown_placeholders(src, tgt, 0.5, "[UNK]")
    pieces = [with_unknown_placeholders(src[start:start + 70], tgt[start:start + 70], 0.5, "[UNK]", start + 1)
              for start in range(0, 1000, 70)]
    assert whole == ([s for piece in pieces for s in piece[0]], [t for piece in pieces for t in piece[1]])
    changed = sum(a != b for a, b in zip(whole[0], src))
    assert 400 < changed < 600  # about half of the pairs, all of which share a name
    for (new_src, new_tgt), (old_src, old_tgt) in zip(zip(*whole), zip(src, tgt)):
        assert new_src.count("[UNK]") == new_tgt.count("[UNK]") == (new_src != old_src)
        assert new_src.replace("[UNK]", old_src.split()[0]) == old_src
    assert with_unknown_placeholders(src, tgt, 0.0) == (src, tgt)
    # Only what both sides write the same, with a capital or a digit; punctuation stays.
    assert with_unknown_placeholders(["Anna sieht Paul, 12 Hunde und den Mann."], ["Anna sees Tom, 12 dogs and the man."],
                                     1.0, "☃") == (["☃ sieht Paul, ☃ Hunde und den Mann."], ["☃ sees Tom, ☃ dogs and the man."])


def test_shards_hold_the_placeholders_a_corpus_read_whole_holds(tmp_path):
    src, tgt = write_corpus(tmp_path / "named", "train", *named_pairs("train", 400))
    config = load_config(tiny_config(tmp_path, data={"train_src": str(src), "train_tgt": str(tgt),
                                                     "prepared_dir": str(tmp_path / "prepared"),
                                                     "unknown_placeholders": 0.5}))
    prepare(config, workers=1, shard_pairs=70)
    corpus = ShardedCorpus.open(config)
    text = tokenize_corpus(corpus.tokenizers(), str(src), str(tgt), unknown_placeholders=0.5)
    assert corpus.pairs(range(len(corpus))) == (text.src_ids, text.tgt_ids)
    unknown = corpus.tokenizers().src_unk_id
    assert 150 < sum(unknown in ids for ids in text.src_ids) < 250
    plain = tokenize_corpus(corpus.tokenizers(), str(src), str(tgt))
    assert not any(unknown in ids for ids in plain.src_ids)


def test_a_model_that_never_saw_unknown_words_gets_them_copied_in(learned_toy_run):
    translator = Translator.load(learned_toy_run, device="cpu", beam_size=2)
    sources = [f"The baker sees {name} with a big hat." for name in UNKNOWN_NAMES[:4]]
    copied, lost = translator.translate(sources), translator.with_settings(copy_unknown=False).translate(sources)
    for source, name, with_copy, without in zip(sources, UNKNOWN_NAMES, copied, lost):
        assert with_copy.split().count(name) == 1 and name not in without
        # The translation is the model's but for the words the name took the place of.
        assert len(set(with_copy.split()) - set(without.split())) == 1
    # The alignment counts the words as printed, the name linked to the source word it copies.
    aligned = translator.with_settings(alignment=True).translate_nbest(sources[:1])[0][0]
    assert len(aligned.alignment) == len(aligned.text.split())
    assert (3, aligned.text.split().index(UNKNOWN_NAMES[0])) in aligned.alignment
    # An element around the name comes back around exactly the copy.
    html = translator.translate_html(f"<p>The baker sees <b>{UNKNOWN_NAMES[0]}</b> with a big hat.</p>")
    assert f"<b>{UNKNOWN_NAMES[0]}</b>" in html


def test_s2s_translate_copies_unknown_words_unless_told_not_to(learned_toy_run):
    line = f"The baker sees {UNKNOWN_NAMES[1]}.\n"
    copied = s2s_forked("translate", "--checkpoint", learned_toy_run, "--alignment", stdin=line)
    assert copied.returncode == 0, copied.stderr
    text, alignment = copied.stdout.decode().rstrip("\n").split(" ||| ")
    assert text.count(UNKNOWN_NAMES[1]) == 1 and len(alignment.split()) == len(text.split())
    assert "read as [UNK]" in copied.stderr.decode()  # still named: the model did not read it
    lost = s2s_forked("translate", "--checkpoint", learned_toy_run, "--no-copy-unknown", stdin=line)
    assert lost.returncode == 0 and UNKNOWN_NAMES[1] not in lost.stdout.decode()


@pytest.fixture(scope="module")
def placeholder_run(tmp_path_factory):
    """A small toy run trained on pairs most of which name their subject, every name read as [UNK]."""
    folder = tmp_path_factory.mktemp("placeholders")
    plain_en, plain_de = toy_lines("train", 500)
    named_en, named_de = named_pairs("train", 2000)
    src, tgt = write_corpus(folder / "named", "train", plain_en + named_en, plain_de + named_de)
    dev_src, dev_tgt = write_corpus(folder / "named", "dev", *named_pairs("dev", 50))
    config = tiny_config(folder, data={"train_src": str(src), "train_tgt": str(tgt), "dev_src": str(dev_src),
                                       "dev_tgt": str(dev_tgt), "unknown_placeholders": 1.0},
                         tokenizer={"vocab_size": 600}, model={"embed_dim": 64, "hidden_size": 64, "dropout": 0.1},
                         training={"max_steps": 60, "batch_tokens": 2000, "learning_rate": 0.003,
                                   "validate_every": 60, "log_every": 30, "device": "cpu"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(folder / "cache"))
        train(load_config(config))
    return folder / "run"


def test_a_model_trained_with_placeholders_writes_unknown_names_where_they_belong(placeholder_run):
    translator = Translator.load(placeholder_run, device="cpu")
    en, _ = named_pairs("dev", 50)
    # Each dev sentence's name as one the vocabulary cannot spell: the model learned to write
    # [UNK] for it, first, where a German sentence names its subject, and the name is copied there.
    names = [UNKNOWN_NAMES[k % len(UNKNOWN_NAMES)] for k in range(len(en))]
    sources = [name + line[line.index(" "):] for name, line in zip(names, en)]
    unknown = translator.tokenizers.tgt_unk_id
    _, results = translator.with_settings(copy_unknown=False).translate_raw([s.encode() for s in sources])
    wrote_first = sum(hypotheses[0].tokens[:1] == [unknown] for hypotheses in results)
    translations = translator.translate(sources)
    at_start = sum(t.startswith(name + " ") and t.count(name) == 1 for t, name in zip(translations, names))
    assert wrote_first >= 45 and at_start >= 45, (wrote_first, at_start, translations[:5])


def test_unknown_spans_are_read_from_the_tokenizer_with_neighbours_joined(learned_toy_run):
    tokenizers = Translator.load(learned_toy_run, device="cpu").tokenizers
    line = "The baker sees Нижний Новгород, the dog and ☃."
    ids, offsets = tokenizers.src_offsets(line)
    unknown = [token == tokenizers.src_unk_id for token in ids]
    spans = unknown_spans(line, offsets, unknown, tokenizers.src_token_words(ids), first_token=5)
    # A vocabulary that splits at spaces only reads a word and the punctuation on it as one [UNK].
    assert [span.text for span in spans] == ["Нижний Новгород,", "☃."]
    assert [span.words for span in spans] == [(3, 4), (8,)]
    assert [span.tokens for span in spans] == [tuple(5 + k for k, is_unk in enumerate(unknown) if is_unk)[:2],
                                               (5 + len(ids) - 1,)]


def test_an_uncased_pretrained_tokenizer_gets_the_word_copied_as_written(tmp_path):
    """BERT's uncased tokenizers lowercase, strip accents and cut punctuation off before they
    look a word up: the copy is still the text of the line, accents, case and all, without the
    full stop after it."""
    en, de = toy_lines("train", 200)
    words = sorted({word for line in en + de for word in line.lower().replace(".", " .").replace(",", " ,").split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    BertTokenizer(vocab={token: index for index, token in enumerate(vocab)}).save_pretrained(str(tmp_path / "bert"))
    config = tiny_config(tmp_path, tokenizer={"pretrained": str(tmp_path / "bert")})
    train(load_config(config))
    translator = Translator.load(tmp_path / "run", device="cpu")
    line = "The baker sees Zoë in Москва."
    ids, _ = translator.tokenizers.src_offsets(line)
    assert ids.count(translator.tokenizers.src_unk_id) == 2  # "zoe" and "москва" are not in it
    translation = translator.translate([line])[0]
    assert translation.split().count("Zoë") == 1 and translation.split().count("Москва") == 1, translation
    # A constraint comes out as written too, not as the vocabulary writes it ("mann").
    assert translator.tokenizers.decode_tgt(translator.tokenizers.encode_tgt(["Mann"]))[0] == "mann"
    constrained = translator.with_settings(constraints=True, beam_size=3).translate([f"{line}\tMann"])[0]
    assert held_in(constrained, "Mann") and not held_in(constrained, "mann"), constrained
