"""The synthetic corpus and query sets of the pinstack-leaf benchmarks.

Shared by bench/leaf_compare.py (ours against tantivy) and
tests/test_leaf_microbench.py (pytest-benchmark). Everything is a pure
function of its seed, so two runs, or two engines, see the same documents.

A document is the tuple RealtimeSegment.add_batch takes:

    (key, version, text, terms, score, blob)

    key      "pin:00000042" (str; 12 ASCII bytes)
    version  an int64, increasing with the document number
    text     10..30 words drawn from a Zipf-like law (exponent ZIPF_S) over
             a vocabulary of `vocab` lowercase ASCII pseudo-words: the word
             of frequency rank r is drawn with probability ~ r**-ZIPF_S.
             With the defaults the top word is in about half the documents,
             the 10th in about a tenth, the 10,000th in a few per 10,000.
    terms    exact tag terms: one "lang:xx" (20 languages, skewed), one or
             two "cat:NN" (100 categories, skewed)
    score    a static score in [0, 1), a float32 value (so that an engine
             storing float32 and one storing float64 order alike)
    blob     BLOB_BYTES random bytes

Words are lowercase ASCII letters only, so pinstack's tokenizer and
tantivy's "default" tokenizer (split on non-alphanumerics, lowercase, drop
tokens over 40 bytes) produce the same tokens; tags contain ':' so they can
never equal a word.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

ZIPF_S = 0.85
VOCAB = 50_000
BLOB_BYTES = 32
WORDS_MIN, WORDS_MAX = 10, 30
LANGS = ["en", "es", "pt", "fr", "de", "ja", "ko", "it", "ru", "nl",
         "sv", "pl", "tr", "zh", "id", "vi", "th", "ar", "hi", "da"]
CATEGORIES = 100

# (key: str, version: int, text: str, terms: tuple[str, ...], score: float, blob: bytes)
Doc = tuple


def make_vocab(size: int = VOCAB, seed: int = 7) -> list[str]:
    """`size` distinct lowercase pseudo-words; index i has frequency rank i+1."""
    rng = random.Random(seed)
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        syllables = rng.randint(1, 4)
        w = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))
        if rng.random() < 0.5:
            w += rng.choice(consonants)
        if len(w) >= 3 and w not in seen:
            seen.add(w)
            words.append(w)
    # Short words for the frequent ranks, as in natural language.
    words.sort(key=lambda w: (len(w), rng.random()))
    return words


@dataclass
class Corpus:
    docs: list[Doc]
    vocab: list[str]
    seed: int
    input_bytes: int = 0          # key + text + terms + blob, as stats() counts it
    doc_freq_top: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        n = len(self.docs)
        words = sum(len(d[2].split()) for d in self.docs[: min(n, 20_000)])
        return {
            "docs": n,
            "vocab": len(self.vocab),
            "seed": self.seed,
            "zipf_exponent": ZIPF_S,
            "words_per_doc_mean": round(words / max(1, min(n, 20_000)), 2),
            "blob_bytes": BLOB_BYTES,
            "input_bytes": self.input_bytes,
            "doc_fraction_of_rank": self.doc_freq_top,
        }


def make_corpus(n: int, seed: int = 1, vocab_size: int = VOCAB, key_prefix: str = "pin:",
                first_version: int = 1) -> Corpus:
    """n documents, deterministic in (n, seed, vocab_size, key_prefix)."""
    vocab = make_vocab(vocab_size)
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -ZIPF_S)
    cdf /= cdf[-1]
    lengths = rng.integers(WORDS_MIN, WORDS_MAX + 1, size=n)
    total = int(lengths.sum())
    word_ids = np.searchsorted(cdf, rng.random(total), side="right")
    word_ids = np.minimum(word_ids, vocab_size - 1)
    lang_cdf = np.cumsum(1.0 / np.arange(1, len(LANGS) + 1))
    lang_cdf /= lang_cdf[-1]
    langs = np.searchsorted(lang_cdf, rng.random(n), side="right")
    cat_cdf = np.cumsum(np.arange(1, CATEGORIES + 1, dtype=np.float64) ** -0.7)
    cat_cdf /= cat_cdf[-1]
    cats = np.searchsorted(cat_cdf, rng.random(2 * n), side="right")
    second_cat = rng.random(n) < 0.3
    scores = rng.random(n).astype(np.float32)
    blobs = rng.bytes(BLOB_BYTES * n)

    # Count documents holding the top words while the ids are at hand.
    top = 10
    holding = np.zeros(top, dtype=np.int64)

    docs: list[Doc] = []
    input_bytes = 0
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    ids_list = word_ids.tolist()
    for i in range(n):
        a, b = int(offsets[i]), int(offsets[i + 1])
        ids = ids_list[a:b]
        text = " ".join([vocab[j] for j in ids])
        for j in set(ids):
            if j < top:
                holding[j] += 1
        terms = ["lang:" + LANGS[langs[i]], f"cat:{cats[2 * i]:02d}"]
        if second_cat[i] and cats[2 * i + 1] != cats[2 * i]:
            terms.append(f"cat:{cats[2 * i + 1]:02d}")
        key = f"{key_prefix}{i:08d}"
        blob = blobs[BLOB_BYTES * i: BLOB_BYTES * (i + 1)]
        docs.append((key, first_version + i, text, tuple(terms), float(scores[i]), blob))
        input_bytes += len(key) + len(text) + sum(len(t) for t in terms) + len(blob)
    freq = {vocab[j]: round(float(holding[j]) / max(1, n), 4) for j in range(min(top, vocab_size))}
    return Corpus(docs=docs, vocab=vocab, seed=seed, input_bytes=input_bytes,
                  doc_freq_top=freq)


# --- queries --------------------------------------------------------------

# The structured form of pinstack's query API; leaf_compare.py translates
# it into tantivy Query objects.
#   ("term", word)          a text word
#   ("term", "cat:07")      a tag (raw term)
#   ("and", q1, q2) / ("or", q1, q2)

QUERY_KINDS = ("term common", "term medium", "term rare", "tag", "and", "or")


def make_queries(vocab: list[str], per_kind: int = 200, seed: int = 11) -> dict[str, list[tuple]]:
    """per_kind queries of every kind in QUERY_KINDS, deterministic.

    term common  a word of frequency rank 1..10 (in ~10-50% of documents)
    term medium  rank 100..1000 (~0.1-1%)
    term rare    rank 10,000..len(vocab) (a few per 100,000 documents)
    tag          a "cat:NN" tag (~0.2-7%)
    and          a common (rank 1..50) AND a medium (rank 50..2000) word
    or           the same pairs, ORed
    """
    rng = random.Random(seed)
    n = len(vocab)

    def word(lo: int, hi: int) -> tuple:
        return ("term", vocab[min(n, rng.randint(lo, hi)) - 1])

    out: dict[str, list[tuple]] = {
        "term common": [word(1, 10) for _ in range(per_kind)],
        "term medium": [word(100, 1000) for _ in range(per_kind)],
        "term rare": [word(min(10_000, n), n) for _ in range(per_kind)],
        "tag": [("term", f"cat:{rng.randrange(CATEGORIES):02d}") for _ in range(per_kind)],
    }
    pairs = [(word(1, 50), word(50, 2000)) for _ in range(per_kind)]
    out["and"] = [("and", a, b) for a, b in pairs]
    out["or"] = [("or", a, b) for a, b in pairs]
    return out
