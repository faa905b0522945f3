"""Generate the bundled English->German toy corpus (data/toy/{train,dev,test}.{en,de}).

A small synchronous grammar that produces real translation phenomena:

* gender and case agreement: der/die/das, den/dem, ein/einen/einem, adjective endings;
* verb-final subordinate clauses ("..., dass der Mann das Buch liest.");
* verb-second inversion after an adverb ("Heute liest der Mann das Buch.");
* separable verbs split around the object ("Die Frau hebt den Ball auf.");
* number words with reversed order ("twenty-one" -> "einundzwanzig") and plurals.

The output is a pure function of the seed: ``python data/toy/generate.py`` rewrites the
committed files byte for byte. Test and dev sentences never occur in train.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

# (English singular, English plural, German singular, German plural, gender)
PEOPLE = [
    ("man", "men", "Mann", "Männer", "m"), ("woman", "women", "Frau", "Frauen", "f"),
    ("child", "children", "Kind", "Kinder", "n"), ("girl", "girls", "Mädchen", "Mädchen", "n"),
    ("boy", "boys", "Junge", "Jungen", "m"), ("teacher", "teachers", "Lehrer", "Lehrer", "m"),
    ("doctor", "doctors", "Arzt", "Ärzte", "m"), ("baker", "bakers", "Bäcker", "Bäcker", "m"),
    ("farmer", "farmers", "Bauer", "Bauern", "m"), ("friend", "friends", "Freund", "Freunde", "m"),
    ("sister", "sisters", "Schwester", "Schwestern", "f"), ("brother", "brothers", "Bruder", "Brüder", "m"),
    ("mother", "mothers", "Mutter", "Mütter", "f"), ("father", "fathers", "Vater", "Väter", "m"),
    ("dog", "dogs", "Hund", "Hunde", "m"), ("cat", "cats", "Katze", "Katzen", "f"),
    ("horse", "horses", "Pferd", "Pferde", "n"), ("bird", "birds", "Vogel", "Vögel", "m"),
    ("neighbour", "neighbours", "Nachbarin", "Nachbarinnen", "f"), ("king", "kings", "König", "Könige", "m"),
]
THINGS = [
    ("book", "books", "Buch", "Bücher", "n"), ("apple", "apples", "Apfel", "Äpfel", "m"),
    ("car", "cars", "Auto", "Autos", "n"), ("house", "houses", "Haus", "Häuser", "n"),
    ("table", "tables", "Tisch", "Tische", "m"), ("chair", "chairs", "Stuhl", "Stühle", "m"),
    ("door", "doors", "Tür", "Türen", "f"), ("window", "windows", "Fenster", "Fenster", "n"),
    ("letter", "letters", "Brief", "Briefe", "m"), ("cup", "cups", "Tasse", "Tassen", "f"),
    ("ball", "balls", "Ball", "Bälle", "m"), ("flower", "flowers", "Blume", "Blumen", "f"),
    ("hat", "hats", "Hut", "Hüte", "m"), ("bag", "bags", "Tasche", "Taschen", "f"),
    ("key", "keys", "Schlüssel", "Schlüssel", "m"), ("picture", "pictures", "Bild", "Bilder", "n"),
    ("lamp", "lamps", "Lampe", "Lampen", "f"), ("bottle", "bottles", "Flasche", "Flaschen", "f"),
    ("bicycle", "bicycles", "Fahrrad", "Fahrräder", "n"), ("phone", "phones", "Telefon", "Telefone", "n"),
    ("newspaper", "newspapers", "Zeitung", "Zeitungen", "f"), ("shoe", "shoes", "Schuh", "Schuhe", "m"),
    ("glass", "glasses", "Glas", "Gläser", "n"), ("box", "boxes", "Kiste", "Kisten", "f"),
    ("song", "songs", "Lied", "Lieder", "n"), ("cake", "cakes", "Kuchen", "Kuchen", "m"),
    ("boat", "boats", "Boot", "Boote", "n"), ("coat", "coats", "Mantel", "Mäntel", "m"),
    ("watch", "watches", "Uhr", "Uhren", "f"), ("stone", "stones", "Stein", "Steine", "m"),
]
ADJECTIVES = [
    ("big", "groß"), ("small", "klein"), ("old", "alt"), ("young", "jung"), ("red", "rot"),
    ("blue", "blau"), ("green", "grün"), ("new", "neu"), ("beautiful", "schön"), ("fast", "schnell"),
    ("happy", "glücklich"), ("tired", "müde"), ("heavy", "schwer"), ("cheap", "billig"),
    ("black", "schwarz"), ("white", "weiß"), ("yellow", "gelb"), ("brown", "braun"), ("loud", "laut"),
    ("strong", "stark"), ("clever", "klug"), ("friendly", "freundlich"), ("long", "lang"), ("short", "kurz"),
]
# (English 3rd person singular, German 3rd person singular)
VERBS = [
    ("sees", "sieht"), ("reads", "liest"), ("buys", "kauft"), ("finds", "findet"), ("carries", "trägt"),
    ("holds", "hält"), ("paints", "malt"), ("needs", "braucht"), ("likes", "mag"), ("knows", "kennt"),
    ("washes", "wäscht"), ("draws", "zeichnet"), ("sells", "verkauft"), ("visits", "besucht"),
    ("loves", "liebt"), ("gets", "bekommt"), ("brings", "bringt"), ("looks for", "sucht"),
    ("forgets", "vergisst"), ("hides", "versteckt"),
]
# (English, German stem in 3rd person singular, separable particle)
SEPARABLE = [
    ("picks up", "hebt", "auf"), ("puts down", "legt", "hin"), ("takes along", "nimmt", "mit"),
    ("looks at", "sieht", "an"), ("brings back", "bringt", "zurück"), ("throws away", "wirft", "weg"),
    ("shows off", "führt", "vor"), ("takes out", "holt", "heraus"),
]
ADVERBS = [("today", "heute"), ("tomorrow", "morgen"), ("now", "jetzt"), ("often", "oft"),
           ("sometimes", "manchmal"), ("in the morning", "morgens"), ("in the evening", "abends")]
THAT_CLAUSES = [("I think that", "Ich glaube, dass"), ("she knows that", "sie weiß, dass"),
                ("we hope that", "wir hoffen, dass"), ("they say that", "sie sagen, dass"),
                ("he believes that", "er glaubt, dass"), ("it is good that", "es ist gut, dass")]
STATES = [("happy", "glücklich"), ("tired", "müde"), ("sad", "traurig"), ("angry", "wütend"), ("proud", "stolz")]

ONES = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
EINS = ["", "ein", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf", "zwölf",
        "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn", "achtzehn", "neunzehn"]
ZEHNER = ["", "", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig"]

DEFINITE = {"nom": {"m": "der", "f": "die", "n": "das"}, "acc": {"m": "den", "f": "die", "n": "das"},
            "dat": {"m": "dem", "f": "der", "n": "dem"}}
INDEFINITE = {"nom": {"m": "ein", "f": "eine", "n": "ein"}, "acc": {"m": "einen", "f": "eine", "n": "ein"},
              "dat": {"m": "einem", "f": "einer", "n": "einem"}}
# Adjective endings after a definite / an indefinite article.
WEAK = {"nom": {"m": "e", "f": "e", "n": "e"}, "acc": {"m": "en", "f": "e", "n": "e"},
        "dat": {"m": "en", "f": "en", "n": "en"}}
MIXED = {"nom": {"m": "er", "f": "e", "n": "es"}, "acc": {"m": "en", "f": "e", "n": "es"},
         "dat": {"m": "en", "f": "en", "n": "en"}}


def number_words(n: int) -> tuple[str, str]:
    if n < 20:
        return ONES[n], EINS[n]
    tens, ones = divmod(n, 10)
    if not ones:
        return TENS[tens], ZEHNER[tens]
    return f"{TENS[tens]}-{ONES[ones]}", f"{EINS[ones]}und{ZEHNER[tens]}"


def inflect(adjective: str, ending: str) -> str:
    """Attach a German adjective ending ("müde" + "en" -> "müden")."""
    return adjective[:-1] + ending if adjective.endswith("e") else adjective + ending


def noun_phrase(rng: random.Random, nouns, case: str) -> tuple[str, str]:
    en_noun, _, de_noun, _, gender = rng.choice(nouns)
    definite = rng.random() < 0.6
    adjective = rng.choice(ADJECTIVES) if rng.random() < 0.5 else None
    if definite:
        en, de = ["the"], [DEFINITE[case][gender]]
    else:
        first = adjective[0] if adjective else en_noun
        en, de = ["an" if first[0] in "aeiou" else "a"], [INDEFINITE[case][gender]]
    if adjective:
        en.append(adjective[0])
        de.append(inflect(adjective[1], (WEAK if definite else MIXED)[case][gender]))
    en.append(en_noun)
    de.append(de_noun)
    return " ".join(en), " ".join(de)


def counted_phrase(rng: random.Random) -> tuple[str, str]:
    _, en_plural, _, de_plural, _ = rng.choice(THINGS + PEOPLE)
    en_number, de_number = number_words(rng.randint(2, 99))
    en, de = [en_number], [de_number]
    if rng.random() < 0.4:
        en_adj, de_adj = rng.choice(ADJECTIVES)
        en.append(en_adj)
        de.append(inflect(de_adj, "e"))
    return " ".join(en + [en_plural]), " ".join(de + [de_plural])


def clause(rng: random.Random):
    """Subject, verb and object of one clause: (en words, de subject, de verb, de object, de particle)."""
    subject_en, subject_de = noun_phrase(rng, PEOPLE, "nom")
    if rng.random() < 0.2:
        object_en, object_de = counted_phrase(rng)
    else:
        object_en, object_de = noun_phrase(rng, THINGS + PEOPLE, "acc")
    if rng.random() < 0.25:
        verb_en, verb_de, particle = rng.choice(SEPARABLE)
    else:
        (verb_en, verb_de), particle = rng.choice(VERBS), ""
    with_en = with_de = ""
    if rng.random() < 0.2:
        tool_en, tool_de = noun_phrase(rng, THINGS + PEOPLE, "dat")
        with_en, with_de = f" with {tool_en}", f" mit {tool_de}"
    english = f"{subject_en} {verb_en} {object_en}{with_en}"
    return english, subject_de, verb_de, object_de + with_de, particle


def main_clause(rng: random.Random) -> tuple[str, str]:
    english, subject, verb, rest, particle = clause(rng)
    tail = f" {particle}" if particle else ""
    if rng.random() < 0.3:
        adverb_en, adverb_de = rng.choice(ADVERBS)
        return f"{adverb_en} {english}", f"{adverb_de} {verb} {subject} {rest}{tail}"
    return english, f"{subject} {verb} {rest}{tail}"


def subordinate_clause(rng: random.Random) -> tuple[str, str]:
    english, subject, verb, rest, particle = clause(rng)
    return english, f"{subject} {rest} {particle}{verb}"


def sentence(rng: random.Random) -> tuple[str, str]:
    kind = rng.random()
    if kind < 0.45:
        en, de = main_clause(rng)
    elif kind < 0.75:
        intro_en, intro_de = rng.choice(THAT_CLAUSES)
        inner_en, inner_de = subordinate_clause(rng)
        en, de = f"{intro_en} {inner_en}", f"{intro_de} {inner_de}"
    else:
        subject_en, subject_de = noun_phrase(rng, PEOPLE, "nom")
        state_en, state_de = rng.choice(STATES)
        inner_en, inner_de = subordinate_clause(rng)
        en, de = f"{subject_en} is {state_en} because {inner_en}", f"{subject_de} ist {state_de}, weil {inner_de}"
    return en[0].upper() + en[1:] + ".", de[0].upper() + de[1:] + "."


def _content_words() -> dict[str, set[str]]:
    """Each English content word (nouns, adjectives, verbs, adverbs) and the German words that
    translate it, in every form the grammar writes."""
    words: dict[str, set[str]] = {}

    def add(english: str, german: str) -> None:
        for word in english.split():
            words.setdefault(word, set()).update(german.lower().split())

    for en, en_plural, de, de_plural, _ in PEOPLE + THINGS:
        add(en, de)
        add(en_plural, de_plural)
    for en, de in ADJECTIVES + STATES:
        add(en, de)
        for ending in ("e", "en", "er", "es"):
            add(en, inflect(de, ending))
    for en, de in VERBS + ADVERBS:
        add(en, de)
    for en, de, _ in SEPARABLE:
        add(en, de)
    function_words = {"at", "up", "down", "along", "back", "away", "off", "out", "for", "in", "the"}
    return {word: forms for word, forms in words.items() if word not in function_words}


def content_word_links(english: str, german: str) -> dict[int, int]:
    """Target word -> source word, for the content words of a sentence pair (words split on
    spaces, counting from 0) whose link is certain: the English word occurs once, and exactly
    one German word is one of its forms and of no other English word's in the sentence. What
    a word alignment of the pair must contain (benchmarks/alignment.py, tests)."""
    lexicon = _content_words()
    source = [word.strip(".,").lower() for word in english.split()]
    target = [word.strip(".,").lower() for word in german.split()]
    links = {}
    for i, word in enumerate(source):
        if word not in lexicon or source.count(word) != 1:
            continue
        matches = [j for j, other in enumerate(target) if other in lexicon[word]]
        if len(matches) == 1 and sum(target[matches[0]] in lexicon.get(w, ()) for w in source) == 1:
            links[matches[0]] = i
    return links


def generate(seed: int, train: int, dev: int, test: int) -> dict[str, list[tuple[str, str]]]:
    rng = random.Random(seed)
    pairs, seen = [], set()
    while len(pairs) < train + dev + test:
        en, de = sentence(rng)
        if en not in seen:  # every English sentence once, so no test sentence is in train
            seen.add(en)
            pairs.append((en, de))
    return {"test": pairs[:test], "dev": pairs[test: test + dev], "train": pairs[test + dev:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--dev", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    args = parser.parse_args()
    for split, pairs in generate(args.seed, args.train, args.dev, args.test).items():
        for index, language in enumerate(("en", "de")):
            with open(args.out / f"{split}.{language}", "w", encoding="utf-8") as handle:
                handle.writelines(pair[index] + "\n" for pair in pairs)


if __name__ == "__main__":
    main()
