"""pinstack.leaf.RealtimeSegment by example: every method and behaviour of
the contract (src/pinstack/_core/_index.pyi), one test per behaviour, most
of them checked against the pure-Python reference model (leaf_model.py)
as well as against values written out by hand.

    documents    add / get / len, doc ids, keys as str or bytes, defaults
    text         ASCII-only lowercasing, token bytes, UTF-8, 255-byte limit
    terms        verbatim, shared term space, term frequency
    orders       score / bm25 / recent, their tie-breaks, k
    versions     updates, stale drops, versioned deletes, tombstones
    seal, full   SegmentSealed, SegmentFull, reads after both
    add_batch    the same index as add, whatever writer_threads
    bad input    clear errors for every malformed argument
    syntax       the human query syntax and parse_query
    stats        the counters and their arithmetic
"""

from __future__ import annotations

import math
import re

import pytest
from leaf_model import (
    C_CHOICES,
    ORDERS,
    ModelSegment,
    assert_hit,
    check_reads,
    check_search,
    evaluate,
    make_doc,
    parse,
    tokenize,
)

from pinstack.leaf import Hit, RealtimeSegment, SegmentFull, SegmentSealed, parse_query

# A deadlock inside the C blocks the main thread with the GIL released,
# where pytest-timeout's default (signal) method never gets to run: the
# thread method fails the run instead of hanging it (with --timeout=N).
pytestmark = pytest.mark.timeout(method="thread")

# ---- helpers ---------------------------------------------------------------


class Both:
    """A RealtimeSegment and a ModelSegment fed the same writes."""

    def __init__(self, **kwargs) -> None:
        self.seg = RealtimeSegment(**kwargs)
        self.model = ModelSegment(**kwargs, **C_CHOICES)

    def add(self, key, version, **kw) -> int:
        got = self.seg.add(key, version, **kw)
        want = self.model.add(key, version, **kw)
        assert got == want, f"add({key!r}, {version}) returned {got}, model {want}"
        return got

    def add_batch(self, docs) -> int:
        got = self.seg.add_batch(docs)
        want = self.model.add_batch(docs)
        assert got == want, f"add_batch returned {got}, model {want}"
        return got

    def delete(self, key, version=None) -> bool:
        got = self.seg.delete(key, version)
        want = self.model.delete(key, version)
        assert got == want, f"delete({key!r}, {version}) returned {got}, model {want}"
        return got

    def check(self, *queries, keys=(), ks=(1, 3, 1000)) -> None:
        check_reads(self.seg, self.model, list(queries), ks=ks, keys=keys)


def ids(hits) -> list[int]:
    return [h.doc_id for h in hits]


def keys_of(hits) -> list[bytes]:
    return [h.key for h in hits]


def finds(seg, term) -> bool:
    return seg.count(("term", term)) > 0


def bm25(tf, df, n, dl, avgdl, k1=1.2, b=0.75) -> float:
    """The BM25 of one term, written out independently of the model."""
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))


@pytest.fixture
def seg():
    return RealtimeSegment()


# ---- documents -------------------------------------------------------------


def test_doc_ids_count_from_zero_in_add_order(seg):
    assert [seg.add(f"k{i}", 1) for i in range(5)] == [0, 1, 2, 3, 4]


def test_document_is_searchable_when_add_returns(seg):
    for i in range(200):
        seg.add(f"k{i}", 1, text=f"word{i} common", terms=[f"id:{i}"])
        assert seg.count(("term", f"word{i}")) == 1
        assert seg.count(("term", f"id:{i}")) == 1
        assert seg.count("common") == i + 1
        assert seg.get(f"k{i}").doc_id == i


def test_hit_carries_key_version_score_blob_doc_id(seg):
    seg.add("pin:1", 7, text="a cat", score=0.5, blob=b"\x00payload\xff")
    (hit,) = seg.search("cat")
    assert isinstance(hit, Hit) and isinstance(hit, tuple)
    assert hit == Hit(b"pin:1", 7, 0.5, b"\x00payload\xff", 0)
    assert (hit.key, hit.version, hit.score, hit.blob, hit.doc_id) == tuple(hit)
    assert isinstance(hit.key, bytes) and isinstance(hit.blob, bytes)
    assert seg.get("pin:1") == hit


def test_defaults_no_text_no_terms_zero_score_empty_blob(seg):
    assert seg.add(b"k", 1) == 0
    assert seg.get(b"k") == Hit(b"k", 1, 0.0, b"", 0)
    assert seg.count(("all",)) == 1
    assert seg.search("*") == [Hit(b"k", 1, 0.0, b"", 0)]


def test_str_and_bytes_keys_are_one_key(seg):
    seg.add("clé", 1, text="old")
    assert seg.get("clé".encode()).version == 1
    assert seg.add("clé".encode(), 2, text="new") == 1
    assert seg.get("clé").version == 2
    assert seg.get("clé").key == "clé".encode()
    assert seg.count("old") == 0 and len(seg) == 1


def test_get_of_a_missing_key_is_none(seg):
    assert seg.get("nope") is None
    seg.add("k", 1)
    assert seg.get("nope") is None
    assert seg.get("k\x00") is None


def test_keys_with_nul_and_high_bytes_are_distinct(seg):
    keys = [b"a", b"a\x00", b"\x00a", b"a\x00b", b"\xff", b"\xff\xfe"]
    for i, k in enumerate(keys):
        seg.add(k, i, blob=k)
    for i, k in enumerate(keys):
        assert seg.get(k) == Hit(k, i, 0.0, k, i)
    assert len(seg) == len(keys)


def test_len_counts_live_documents(seg):
    assert len(seg) == 0
    seg.add("a", 1)
    seg.add("b", 1)
    seg.add("a", 2)
    assert len(seg) == 2
    seg.delete("b")
    assert len(seg) == 1


def test_count_equals_the_number_of_matches(seg):
    for i in range(50):
        seg.add(f"k{i}", 1, text="even" if i % 2 == 0 else "odd", terms=[f"m3:{i % 3}"])
    assert seg.count("even") == 25
    assert seg.count("odd") == 25
    assert seg.count("m3:0") == 17
    assert seg.count("even m3:0") == 9
    assert len(seg.search("even", k=1000)) == 25
    assert seg.count("missing") == 0 and seg.search("missing") == []


def test_empty_segment_reads(seg):
    assert seg.search("*") == [] and seg.count("*") == 0
    assert seg.search(("term", "x"), order="bm25") == []
    assert len(seg) == 0
    assert seg.stats()["docs_committed"] == 0


# ---- text ------------------------------------------------------------------


@pytest.mark.parametrize("text, tokens", [
    ("Hello WORLD hello", [b"hello", b"world", b"hello"]),
    ("don't stop-me, now_then!  (ok)", [b"don", b"t", b"stop", b"me", b"now", b"then", b"ok"]),
    ("abc123 4x4 007", [b"abc123", b"4x4", b"007"]),
    ("tab\tnew\nline\rcr", [b"tab", b"new", b"line", b"cr"]),
    ("cat\x00dog\x01\x7fbird", [b"cat", b"dog", b"bird"]),
    ("naïve café", ["naïve".encode(), "café".encode()]),
    ("ÉCOLE Straße", ["École".encode(), "straße".encode()]),
    ("a—b a\u00a0b", ["a—b".encode(), "a\u00a0b".encode()]),
    ("日本語のテキスト", ["日本語のテキスト".encode()]),
    ("emoji😀inside", ["emoji😀inside".encode()]),
    ("", []),
    ("  ,,, !!! ", []),
])
def test_text_tokenizer(seg, text, tokens):
    assert tokenize(text) == tokens  # the model agrees with the table
    seg.add("k", 1, text=text)
    for t in set(tokens):
        assert seg.count(("term", t)) == 1, f"token {t!r} of {text!r} not found"
    seg.add("probe", 1, text=text, terms=["probe"])
    # No other token: the doc length (BM25) and the term count say so.
    stats = seg.stats()
    assert stats["terms"] == len(set(tokens)) + 1
    assert stats["postings"] == 2 * len(set(tokens)) + 1


def test_text_is_lowercased_ascii_only(seg):
    seg.add("k", 1, text="Cat ÀB")
    assert finds(seg, "cat")
    assert not finds(seg, "Cat")
    assert finds(seg, "Àb")       # À is not ASCII: kept; B is: lowered
    assert not finds(seg, "àb")
    assert not finds(seg, "ÀB")


def test_text_none_and_empty_text(seg):
    seg.add("a", 1, text=None, terms=["t"])
    seg.add("b", 1, text="", terms=["t"])
    assert seg.count("t") == 2
    assert seg.stats()["terms"] == 1


def test_tokens_of_255_bytes_are_kept_longer_ones_dropped(seg):
    kept_ascii = "a" * 255
    dropped_ascii = "b" * 256
    kept_utf8 = "é" * 127 + "c"   # 255 bytes
    dropped_utf8 = "é" * 128      # 256 bytes
    seg.add("k", 1, text=" ".join([kept_ascii, dropped_ascii, kept_utf8, dropped_utf8, "x"]))
    assert finds(seg, kept_ascii)
    assert finds(seg, kept_utf8)
    assert finds(seg, "x")
    assert seg.stats()["terms"] == 3
    assert seg.stats()["postings"] == 3


def test_dropped_long_tokens_do_not_count_in_the_document_length():
    """dl is the count of tokens that are terms (the model's reading of
    'tokens longer than 255 bytes are dropped')."""
    both = Both()
    both.add("a", 1, text="cat " + "z" * 300 + " " + "y" * 400)
    both.add("b", 1, text="cat dog")
    both.add("c", 1, text="cat dog bird fish")
    both.check("cat", "dog")


def test_long_text_of_many_tokens(seg):
    words = [f"w{i % 1000}" for i in range(20000)]
    seg.add("big", 1, text=" ".join(words))
    assert seg.stats()["terms"] == 1000
    assert seg.count("w999 w0") == 1


# ---- terms -----------------------------------------------------------------


def test_terms_are_indexed_verbatim(seg):
    terms = ["Lang:EN", "hello world", "e-mail", "ÀB", "-x", "*", "AND", "a\"b", "x\\y",
             b"\xff\xfe", b"nul\x00inside", "t" * 255]
    seg.add("k", 1, terms=terms)
    for t in terms:
        assert seg.count(("term", t)) == 1, f"term {t!r}"
    for absent in ["lang:en", "hello", "LANG:EN", "àb", "x", b"nul", "t" * 254]:
        assert seg.count(("term", absent)) == 0, f"term {absent!r} should not match"
    assert seg.stats()["terms"] == len(terms)


def test_str_and_bytes_terms_are_the_same_term(seg):
    seg.add("a", 1, terms=["café"])
    seg.add("b", 1, terms=["café".encode()])
    assert seg.count(("term", "café")) == 2
    assert seg.count(("term", "café".encode())) == 2
    assert seg.stats()["terms"] == 1


def test_terms_accept_any_iterable(seg):
    seg.add("a", 1, terms=(t for t in ["x", "y"]))
    seg.add("b", 1, terms={"z"})
    seg.add("c", 1, terms=("x",))
    assert seg.count("x") == 2 and seg.count("y") == 1 and seg.count("z") == 1


def test_terms_and_text_tokens_share_one_term_space(seg):
    seg.add("a", 1, text="Cat")
    seg.add("b", 1, terms=["cat"])
    seg.add("c", 1, terms=["Cat"])
    assert seg.count("cat") == 2
    assert seg.count("Cat") == 1
    assert seg.stats()["terms"] == 2


def test_repeated_terms_add_to_the_term_frequency():
    both = Both()
    both.add("once", 1, terms=["x", "pad"], text="a b c")
    both.add("twice", 1, terms=["x", "x"], text="a b c")
    both.add("text_and_term", 1, terms=["x"], text="x b c")
    both.add("thrice", 1, text="x x x")
    both.add("other", 1, text="y y")
    hits = check_search(both.seg, both.model, "x", order="bm25")
    assert keys_of(hits)[0] == b"thrice"
    # one posting per (term, doc), whatever the frequency
    assert both.seg.stats()["postings"] == both.model.stats()["postings"]


# ---- orders ----------------------------------------------------------------


def test_order_score_is_static_score_descending_ties_newest_first(seg):
    scores = [0.5, 2.0, -1.0, 2.0, 0.0, 0.5, 1e9, -1e9]
    for i, s in enumerate(scores):
        seg.add(f"k{i}", 1, terms=["t"], score=s)
    hits = seg.search("t", k=100, order="score")
    assert ids(hits) == [6, 3, 1, 5, 0, 4, 2, 7]
    assert [h.score for h in hits] == [1e9, 2.0, 2.0, 0.5, 0.5, 0.0, -1.0, -1e9]
    assert seg.search("t", k=100) == hits  # score is the default order


def test_static_score_keeps_double_precision(seg):
    seg.add("k", 1, score=0.1)
    seg.add("j", 1, score=1 / 3)
    assert seg.get("k").score == 0.1
    assert seg.get("j").score == 1 / 3


def test_order_recent_is_doc_id_descending(seg):
    for i in range(6):
        seg.add(f"k{i}", 1, terms=["t"], score=float(i % 3))
    seg.add("k2", 2, terms=["t"])  # an update is a new, newer doc
    hits = seg.search("t", k=100, order="recent")
    assert ids(hits) == [6, 5, 4, 3, 1, 0]
    assert [h.score for h in hits] == [0.0, 2.0, 1.0, 0.0, 1.0, 0.0]  # static scores


def test_order_bm25_by_hand():
    """Three docs, numbers written out from the contract's formula."""
    seg = RealtimeSegment()
    seg.add("a", 1, text="cat cat dog")      # dl 3
    seg.add("b", 1, text="cat")              # dl 1
    seg.add("c", 1, text="dog bird fish a")  # dl 4
    n, avgdl = 3, 8 / 3
    hits = seg.search("cat", order="bm25")
    want = {b"a": bm25(2, 2, n, 3, avgdl), b"b": bm25(1, 2, n, 1, avgdl)}
    assert keys_of(hits) == sorted(want, key=want.get, reverse=True)
    for h in hits:
        assert h.score == pytest.approx(want[h.key], rel=1e-4)
    hits = seg.search("cat OR dog", order="bm25")
    want = {
        b"a": bm25(2, 2, n, 3, avgdl) + bm25(1, 2, n, 3, avgdl),
        b"b": bm25(1, 2, n, 1, avgdl),
        b"c": bm25(1, 2, n, 4, avgdl),
    }
    assert keys_of(hits) == sorted(want, key=want.get, reverse=True)
    for h in hits:
        assert h.score == pytest.approx(want[h.key], rel=1e-4)


def test_bm25_idf_of_a_rare_term_beats_a_common_one():
    both = Both()
    for i in range(20):
        both.add(f"k{i}", 1, text="common " + ("rare" if i == 7 else "filler"))
    hits = check_search(both.seg, both.model, "common OR rare", k=3, order="bm25")
    assert hits[0].key == b"k7"


def test_bm25_shorter_documents_score_higher():
    both = Both()
    both.add("long", 1, text="cat " + " ".join(f"w{i}" for i in range(30)))
    both.add("short", 1, text="cat dog")
    hits = check_search(both.seg, both.model, "cat", order="bm25")
    assert keys_of(hits) == [b"short", b"long"]


def test_bm25_ties_newest_first(seg):
    for i in range(5):
        seg.add(f"k{i}", 1, text="same words here")
    hits = seg.search("same", k=10, order="bm25")
    assert ids(hits) == [4, 3, 2, 1, 0]
    assert len({h.score for h in hits}) == 1 and hits[0].score > 0


def test_bm25_counts_deleted_documents_in_n_and_df():
    both = Both()
    for i in range(6):
        both.add(f"k{i}", 1, text="cat" if i < 4 else "dog", terms=["t"])
    both.delete("k0")
    both.delete("k1")
    both.add("k2", 2, text="cat cat mouse")  # update: k2 v1 deleted, still counted
    both.check("cat", "dog", "cat OR dog", "t cat")


def test_bm25_scores_only_the_branches_that_match():
    """BM25 sums the terms of the branches through which the doc matches
    (as Lucene's boolean scoring does). Doc A matches
    ("or", t3, ("andnot", w4, t1)) through t3 only (it has t1, so the
    andnot branch does not match it): w4 does not count for A, although A
    contains it. B matches through both branches."""
    seg, model = RealtimeSegment(), ModelSegment(bm25_terms="matched")
    for m in (seg, model):
        m.add("A", 1, terms=["t3", "w4", "t1"])
        m.add("B", 1, terms=["t3", "w4"])
        m.add("C", 1, terms=["t3"])
        m.add("D", 1, terms=["w4", "x"])
    q = ("or", ("term", "t3"), ("andnot", ("term", "w4"), ("term", "t1")))
    idf = math.log(1 + (4 - 3 + 0.5) / (3 + 0.5))
    one = idf * 2.2 / (1 + 1.2 * 0.25)  # tf 1, dl 0, avgdl 1.0 (no text)
    want = {b"A": one, b"B": 2 * one, b"C": one, b"D": one}
    got = {h.key: h.score for h in seg.search(q, order="bm25")}
    assert got == pytest.approx(want, rel=1e-4)
    check_search(seg, model, q, order="bm25")


def test_bm25_scores_only_positive_terms():
    both = Both()
    both.add("a", 1, text="cat dog")
    both.add("b", 1, text="cat bird bird")
    both.add("c", 1, text="cat")
    both.add("d", 1, text="dog bird")
    for q in ["cat -dog", "cat -(dog OR fish)", ("andnot", ("term", "cat"), ("term", "fish")),
              "-dog", "* -cat", ("andnot", ("andnot", ("term", "cat"), ("term", "x")),
                                 ("andnot", ("term", "dog"), ("term", "bird")))]:
        check_search(both.seg, both.model, q, order="bm25")
    # the excluded term adds nothing: "cat -fish" scores as "cat"
    plain = both.seg.search("cat", order="bm25")
    excluded = both.seg.search("cat -fish", order="bm25")
    assert [(h.doc_id, h.score) for h in plain] == [(h.doc_id, h.score) for h in excluded]


def test_bm25_of_a_query_without_positive_terms_is_zero_newest_first(seg):
    for i in range(4):
        seg.add(f"k{i}", 1, text="cat" if i % 2 else "dog")
    for q in ["*", "-cat", ("all",), ("andnot", ("all",), ("term", "cat"))]:
        hits = seg.search(q, order="bm25")
        assert all(h.score == 0.0 for h in hits), q
        assert ids(hits) == sorted(ids(hits), reverse=True), q


def test_bm25_repeated_query_term_counts_once_per_occurrence():
    both = Both()
    both.add("a", 1, text="cat dog")
    both.add("b", 1, text="cat cat cat bird fish mouse")
    both.add("c", 1, text="dog dog")
    once = both.seg.search("cat OR dog", order="bm25")
    twice = both.seg.search("cat cat OR dog", order="bm25")  # (cat AND cat) OR dog
    by_id = {h.doc_id: h.score for h in once}
    for h in twice:
        if h.key == b"c":
            assert h.score == pytest.approx(by_id[h.doc_id], rel=1e-6)
        else:
            assert h.score > by_id[h.doc_id]
    for q in ["cat cat OR dog", ("or", ("term", "cat"), ("term", "cat")),
              ("and", ("term", "cat"), ("or", ("term", "cat"), ("term", "dog")))]:
        check_search(both.seg, both.model, q, order="bm25")


def test_bm25_uses_k1_and_b_from_the_constructor():
    for k1, b in [(1.2, 0.75), (2.0, 0.0), (0.5, 1.0), (0.0, 0.5)]:
        both = Both(k1=k1, b=b)
        both.add("a", 1, text="cat cat dog " + "x " * 10)
        both.add("b", 1, text="cat dog")
        both.add("c", 1, text="cat cat cat")
        both.check("cat", "cat OR dog")


def test_bm25_of_terms_given_as_terms_with_no_text():
    both = Both()
    both.add("a", 1, terms=["lang:en", "lang:en"])   # dl 0
    both.add("b", 1, terms=["lang:en"], text="some words")
    both.add("c", 1, terms=["lang:fr"])
    both.check("lang:en", "lang:en OR lang:fr")


def test_bm25_when_no_document_has_text():
    """avgdl is 0: the contract says use 1.0."""
    both = Both()
    both.add("a", 1, terms=["x"])
    both.add("b", 1, terms=["x", "x"])
    both.add("c", 1, terms=["y"])
    both.check("x", "x OR y")


def test_bm25_term_frequency_above_255():
    """A token repeated 300 times has term frequency 300 (the contract
    states no cap); a C that saturates tf at 255 scores it measurably lower."""
    both = Both()
    both.add("many", 1, text="cat " * 300)
    both.add("few", 1, text="cat dog " * 20)
    both.add("none", 1, text="dog")
    check_search(both.seg, both.model, "cat", order="bm25")


def test_orders_after_deletes_and_updates():
    both = Both()
    for i in range(30):
        both.add(f"k{i % 10}", i, text=f"w{i % 4} w{i % 7} common", score=float(i % 5))
    both.delete("k3")
    both.delete("k4", 100)
    both.check("common", "w1", "w2 OR w3", "common -w0", "*", keys=[f"k{i}" for i in range(12)])


def test_top_k_over_many_posting_blocks_agrees_with_the_model():
    """Thousands of postings per term (many blocks of a posting list, where
    a top-K of one term or of an OR may skip blocks), skewed term
    frequencies, lengths and scores, with updates and deletes: every order
    and k, against the model."""
    import random

    rng = random.Random(11)
    both = Both(writer_threads=2)
    batch = []
    for i in range(6000):
        words = ["hot"] * rng.choice([1, 1, 1, 2, 3, 8]) + ["warm"] * rng.randrange(3)
        words += [f"f{rng.randrange(50)}" for _ in range(rng.choice([0, 1, 5, 30]))]
        if i % 97 == 0:
            words += ["rare"] * rng.randrange(1, 20)
        rng.shuffle(words)
        score = rng.choice([0.0, 1.0, 2.5]) if i % 500 else 100.0 + i
        batch.append((f"k{rng.randrange(4000)}", i, " ".join(words), [f"m{i % 3}"], score, b""))
        if len(batch) == 500:
            both.add_batch(batch)
            batch = []
    for i in range(0, 4000, 7):
        both.delete(f"k{i}")
    both.add("k1", 10**6, text="hot " * 40, score=1e9)  # a late winner
    both.check("hot", "rare", "warm", "hot warm", "hot OR rare", "m1", "rare -m0",
               ks=(1, 3, 10, 100))
    for q in ["hot", "hot OR warm OR rare", "f1 OR f2 OR f3 OR hot", "rare OR m2"]:
        for order in ORDERS:
            ranked = both.model.scored(q, order)
            for k in (1, 7, 128, 129, 1000):
                check_search(both.seg, both.model, q, k, order, ranked)


def test_top_k_of_ties_over_many_blocks_is_the_newest():
    """Thousands of documents that score exactly alike (one tag, the same
    length, the same static score): top-K must be the k newest live ones,
    in every order, though a block or range whose bound only equals the
    worst kept hit is skipped (query.c walks newest first, so a tie never
    displaces what it keeps). Some documents tie higher, some are deleted,
    some updated."""
    both = Both(writer_threads=2)
    docs = [(f"k{i}", 1, "same length text", ["tag:x"], 1.0, b"") for i in range(5000)]
    docs[1234] = ("k1234", 1, "same", ["tag:x"], 2.0, b"")  # shorter, higher static score
    docs[77] = ("k77", 1, "same", ["tag:x"], 2.0, b"")
    for i in range(0, 5000, 1000):
        both.add_batch(docs[i:i + 1000])
    for i in range(4990, 5000, 3):
        both.delete(f"k{i}")
    both.add("k5", 2, text="same length text", terms=["tag:x"], score=1.0)  # now newest
    for q in ["tag:x", "tag:x OR same", "tag:x same", "same -length", "text OR length"]:
        for order in ORDERS:
            ranked = both.model.scored(q, order)
            for k in (1, 10, 200):
                check_search(both.seg, both.model, q, k, order, ranked)
    top = both.seg.search("tag:x", 10, "bm25")
    assert [h.key for h in top[:3]] == [b"k1234", b"k77", b"k5"]
    assert [h.doc_id for h in top[3:]] == sorted((h.doc_id for h in top[3:]), reverse=True)


def test_unknown_order_raises(seg):
    seg.add("k", 1)
    for order in ["", "Score", "BM25", "relevance", "newest"]:
        with pytest.raises(ValueError, match="order"):
            seg.search("*", order=order)


# ---- k ---------------------------------------------------------------------


def test_k_limits_the_results(seg):
    for i in range(20):
        seg.add(f"k{i}", 1, terms=["t"], score=float(i))
    for order in ORDERS:
        full = seg.search("t", k=20, order=order)
        assert len(full) == 20
        for k in [1, 2, 5, 19, 20, 21, 1000]:
            assert seg.search("t", k=k, order=order) == full[:k]
    assert len(seg.search("t")) == 10  # default k


def test_k_must_be_positive(seg):
    seg.add("k", 1)
    for k in [0, -1, -(1 << 20)]:
        with pytest.raises(ValueError, match="k"):
            seg.search("*", k=k)
    with pytest.raises((ValueError, OverflowError)):
        seg.search("*", k=-(1 << 70))


def test_k_not_an_int_raises(seg):
    """A float k is refused, not truncated (k=1.5 is a caller's bug)."""
    for k in [1.5, 2.0, "3", None]:
        with pytest.raises(TypeError):
            seg.search("*", k=k)


def test_k_huge(seg):
    for i in range(3):
        seg.add(f"k{i}", 1)
    with pytest.raises((ValueError, OverflowError)):
        seg.search("*", k=10**30)
    for k in [(1 << 31) - 1, 1 << 40]:  # no giant allocation: all hits, or a clear refusal
        try:
            hits = seg.search("*", k=k)
        except (ValueError, OverflowError):
            pass
        else:
            assert ids(hits) == [2, 1, 0]


# ---- versions, updates, deletes --------------------------------------------


def test_update_replaces_the_old_version(seg):
    assert seg.add("k", 1, text="cat", blob=b"v1") == 0
    assert seg.add("k", 2, text="dog", blob=b"v2") == 1
    assert seg.count("cat") == 0
    assert seg.count("dog") == 1
    assert seg.get("k") == Hit(b"k", 2, 0.0, b"v2", 1)
    assert len(seg) == 1
    assert seg.search("*") == [Hit(b"k", 2, 0.0, b"v2", 1)]
    s = seg.stats()
    assert (s["docs_committed"], s["docs_live"], s["docs_deleted"]) == (2, 1, 1)


def test_update_with_an_equal_version_replaces(seg):
    seg.add("k", 5, text="cat")
    assert seg.add("k", 5, text="dog") == 1
    assert seg.get("k").doc_id == 1 and seg.count("cat") == 0


def test_older_version_is_dropped_as_stale(seg):
    seg.add("k", 5, text="new")
    assert seg.add("k", 4, text="old") == -1
    assert seg.add("k", -100, text="old") == -1
    assert seg.count("old") == 0
    assert seg.get("k").version == 5
    s = seg.stats()
    assert s["stale_dropped"] == 2
    assert s["docs_committed"] == 1
    assert seg.add("other", 1) == 1  # a dropped add takes no doc id


def test_search_never_returns_a_key_twice(seg):
    for v in range(10):
        seg.add("k", v, text="cat", score=float(v))
    for order in ORDERS:
        hits = seg.search("cat", k=100, order=order)
        assert [(h.key, h.version, h.doc_id) for h in hits] == [(b"k", 9, 9)]
    assert seg.count("cat") == 1


def test_delete_without_version(seg):
    seg.add("k", 3, text="cat")
    assert seg.delete("k") is True
    assert seg.get("k") is None and seg.count("cat") == 0 and len(seg) == 0
    assert seg.delete("k") is False
    assert seg.delete("never") is False
    s = seg.stats()
    assert (s["docs_live"], s["docs_deleted"]) == (0, 1)


def test_delete_str_and_bytes_key(seg):
    seg.add(b"\xc3\xa9", 1)
    assert seg.delete("é") is True


def test_versioned_delete_of_a_newer_document_does_nothing(seg):
    seg.add("k", 5, text="cat")
    assert seg.delete("k", 4) is False
    assert seg.get("k").version == 5 and seg.count("cat") == 1


def test_versioned_delete_of_an_equal_or_older_document(seg):
    seg.add("a", 5)
    seg.add("b", 5)
    assert seg.delete("a", 5) is True
    assert seg.delete("b", 9) is True
    assert len(seg) == 0


def test_versioned_delete_leaves_a_tombstone(seg):
    seg.add("k", 5, text="cat")
    assert seg.delete("k", 7) is True
    assert seg.add("k", 6, text="old") == -1       # older than the delete
    assert seg.add("k", 3, text="old") == -1
    assert seg.get("k") is None and seg.count("old") == 0
    assert seg.add("k", 8, text="new") >= 0        # newer than the delete
    assert seg.get("k").version == 8
    assert seg.stats()["stale_dropped"] == 2


def test_tombstone_without_a_live_document(seg):
    """A delete that arrives before its add (out-of-order streams)."""
    assert seg.delete("k", 10) is False
    assert seg.add("k", 9) == -1
    assert seg.get("k") is None
    assert seg.add("k", 11) == 0
    assert seg.get("k").version == 11


def test_add_with_the_tombstone_version_is_not_older(seg):
    """'an add older than a versioned delete is dropped': an equal version
    is not older, so it is added (as an equal-version update is)."""
    seg.delete("k", 10)
    assert seg.add("k", 10, text="cat") == 0
    assert seg.get("k").version == 10


def test_a_key_keeps_its_highest_tombstone(seg):
    seg.delete("k", 10)
    seg.delete("k", 5)
    assert seg.add("k", 7) == -1
    assert seg.add("k", 10) == 0


def test_unversioned_delete_leaves_no_tombstone(seg):
    """delete(key) without a version leaves no tombstone (only a versioned
    delete does), and after it the key has no live document: so an add of
    any version is accepted."""
    seg.add("k", 7, text="seven")
    assert seg.delete("k") is True
    assert seg.add("k", 6, text="six") == 1
    assert seg.get("k").version == 6


def test_plain_delete_keeps_an_earlier_tombstone(seg):
    """A plain delete leaves no tombstone of its own, but it does not erase
    the tombstone of an earlier versioned delete: an add older than that
    delete is still dropped."""
    assert seg.delete("k", 1) is False
    assert seg.delete("k") is False
    assert seg.add("k", 0) == -1
    assert seg.delete("j", 5) is False
    assert seg.add("j", 7) == 0
    assert seg.delete("j") is True
    assert seg.add("j", 3) == -1
    assert seg.get("k") is None and seg.get("j") is None


def test_versions_span_int64(seg):
    lo, hi = -(1 << 63), (1 << 63) - 1
    assert seg.add("k", lo) == 0
    assert seg.add("k", hi) == 1
    assert seg.get("k").version == hi
    assert seg.add("k", hi - 1) == -1
    assert seg.delete("k", hi) is True
    for bad in [1 << 63, -(1 << 63) - 1, 1 << 100]:
        with pytest.raises((OverflowError, ValueError)):
            seg.add("j", bad)
        with pytest.raises((OverflowError, ValueError)):
            seg.delete("j", bad)


def test_updates_and_deletes_against_the_model():
    both = Both()
    script = [
        ("add", "a", 1, "cat dog"), ("add", "b", 1, "cat"), ("add", "a", 3, "bird"),
        ("add", "a", 2, "stale"), ("delete", "b", None, None), ("add", "b", 1, "cat again"),
        ("delete", "c", 4, None), ("add", "c", 3, "no"), ("add", "c", 4, "yes"),
        ("delete", "a", 2, None), ("delete", "a", 3, None), ("add", "a", 3, "back"),
        ("add", "a", 2, "no"),
    ]
    for op, key, version, text in script:
        if op == "add":
            both.add(key, version, text=text, terms=[f"key:{key}"], score=float(version))
        else:
            both.delete(key, version)
    both.check("cat", "dog", "bird", "back", "yes", "no", "stale", "*", "key:a", "key:b",
               "key:c", keys=["a", "b", "c", "d"])


# ---- seal ------------------------------------------------------------------


def test_seal_blocks_every_write(seg):
    seg.add("k", 1, text="cat")
    assert seg.sealed is False
    seg.seal()
    assert seg.sealed is True
    with pytest.raises(SegmentSealed):
        seg.add("j", 1)
    with pytest.raises(SegmentSealed):
        seg.add("k", 0)  # would be stale: still a write
    with pytest.raises(SegmentSealed):
        seg.add_batch([("j", 1, None, (), 0.0, b"")])
    with pytest.raises(SegmentSealed):
        seg.delete("k")
    with pytest.raises(SegmentSealed):
        seg.delete("missing", 3)
    assert issubclass(SegmentSealed, RuntimeError)
    assert seg.get("k").version == 1 and len(seg) == 1


def test_reads_go_on_after_seal():
    both = Both(writer_threads=2)
    for i in range(100):
        both.add(f"k{i}", 1, text=f"w{i % 3} all", score=float(i % 7))
    both.delete("k5")
    before = both.seg.stats()
    both.seg.seal()
    both.check("all", "w1", "w0 OR w2", "-w1", keys=["k5", "k6"])
    after = both.seg.stats()
    assert after["sealed"] == 1 and before["sealed"] == 0
    for name in ["docs_committed", "docs_live", "docs_deleted", "terms", "postings"]:
        assert after[name] == before[name], name


def test_seal_is_idempotent(seg):
    seg.seal()
    seg.seal()
    assert seg.sealed and seg.stats()["sealed"] == 1


def test_seal_of_an_empty_segment(seg):
    seg.seal()
    assert seg.search("*") == [] and seg.count("x") == 0 and seg.get("k") is None


# ---- max_docs --------------------------------------------------------------


def test_segment_full():
    seg = RealtimeSegment(max_docs=3)
    for i in range(3):
        seg.add(f"k{i}", 1, text="cat")
    with pytest.raises(SegmentFull):
        seg.add("k3", 1, text="cat")
    assert issubclass(SegmentFull, RuntimeError)
    assert seg.count("cat") == 3 and len(seg) == 3
    assert seg.stats()["docs_committed"] == 3 and seg.stats()["max_docs"] == 3
    assert seg.get("k3") is None
    assert seg.delete("k0") is True  # deletes take no room
    assert seg.count("cat") == 2
    with pytest.raises(SegmentFull):
        seg.add("k0", 2)  # deleting freed no doc id
    seg.seal()
    with pytest.raises(SegmentSealed):
        seg.add("k4", 1)


def test_updates_take_room():
    seg = RealtimeSegment(max_docs=2)
    seg.add("k", 1)
    seg.add("k", 2)
    with pytest.raises(SegmentFull):
        seg.add("k", 3)
    assert seg.get("k").version == 2


def test_add_batch_beyond_max_docs_indexes_nothing():
    seg = RealtimeSegment(max_docs=3, writer_threads=2)
    seg.add("k0", 1, text="cat")
    batch = [(f"b{i}", 1, "cat", ["t"], 0.0, b"") for i in range(3)]
    with pytest.raises(SegmentFull):
        seg.add_batch(batch)
    assert seg.count("cat") == 1 and seg.count("t") == 0
    assert seg.stats()["docs_committed"] == 1
    assert seg.add_batch(batch[:2]) == 2
    assert seg.count("t") == 2


def test_add_batch_that_fits_once_stale_items_are_dropped():
    seg = RealtimeSegment(max_docs=3)
    seg.add("k", 10)
    batch = [("k", 5, None, (), 0.0, b""), ("k", 6, None, (), 0.0, b""),
             ("a", 1, None, (), 0.0, b""), ("b", 1, None, (), 0.0, b"")]
    assert seg.add_batch(batch) == 2
    assert len(seg) == 3


def test_stale_add_to_a_full_segment_is_dropped_not_refused():
    """A stale add needs no room: it is dropped (-1), full segment or not."""
    seg = RealtimeSegment(max_docs=2)
    seg.add("k", 5)
    seg.add("j", 1)
    assert seg.add("k", 4) == -1
    assert seg.stats()["stale_dropped"] == 1


def test_max_docs_one():
    seg = RealtimeSegment(max_docs=1)
    assert seg.add("k", 1, text="x") == 0
    with pytest.raises(SegmentFull):
        seg.add("j", 1)
    assert seg.search("x") == [Hit(b"k", 1, 0.0, b"", 0)]


# ---- add_batch -------------------------------------------------------------


def corpus(n: int) -> list[tuple]:
    """n documents with updates, stale versions, repeated and shared terms."""
    docs = []
    for i in range(n):
        key = f"key{i % (n // 3 + 1)}"
        version = i if i % 11 else i - 50  # every 11th: older than its key's last
        text = None if i % 13 == 0 else " ".join(
            f"w{(i * j) % 17}" for j in range(1, 2 + i % 9)) + (" Common" if i % 2 else "")
        terms = [f"t{i % 5}", f"t{i % 7}", "shared"] + (["t1"] * (i % 3))
        docs.append((key, version, text, terms, float((i * 7) % 10), f"blob{i}".encode()))
    return docs


CORPUS_QUERIES = ["common", "shared", "t1", "w3 OR w5", "w1 w2", "t0 -common", "*",
                  ("or", ("term", "t3"), ("andnot", ("term", "w4"), ("term", "t1"))),
                  "-shared", "w16 OR t6 OR common"]


@pytest.mark.parametrize("writer_threads", [1, 2, 3, 8])
def test_add_batch_builds_the_same_index_as_add(writer_threads):
    docs = corpus(600)
    by_add = RealtimeSegment(writer_threads=writer_threads)
    by_batch = RealtimeSegment(writer_threads=writer_threads)
    model = ModelSegment(**C_CHOICES)
    added = 0
    for d in docs:
        key, version, text, terms, score, blob = d
        doc_id = by_add.add(key, version, text=text, terms=terms, score=score, blob=blob)
        assert doc_id == model.add(key, version, text=text, terms=terms, score=score, blob=blob)
        added += doc_id >= 0
    total = 0
    for start in range(0, len(docs), 97):  # batches of 97 and a remainder
        total += by_batch.add_batch(docs[start:start + 97])
    assert total == added
    for q in CORPUS_QUERIES:
        assert by_batch.count(q) == by_add.count(q) == model.count(q), q
        for order in ORDERS:
            for k in (1, 10, 1000):
                want = by_add.search(q, k=k, order=order)
                assert by_batch.search(q, k=k, order=order) == want, (q, k, order)
                check_search(by_batch, model, q, k, order)
    for i in range(210):
        key = f"key{i}"
        assert by_batch.get(key) == by_add.get(key), key
    sa, sb = by_add.stats(), by_batch.stats()
    for name in ["docs_added", "docs_committed", "docs_live", "docs_deleted", "stale_dropped",
                 "terms", "postings", "input_bytes"]:
        assert sa[name] == sb[name], name
    assert sb["writer_threads"] == writer_threads


def test_add_batch_of_one_and_of_none(seg):
    assert seg.add_batch([]) == 0
    assert seg.add_batch([("k", 1, "cat", ["t"], 1.5, b"b")]) == 1
    assert seg.get("k") == Hit(b"k", 1, 1.5, b"b", 0)
    assert seg.count("cat t") == 1


def test_add_batch_returns_the_documents_added():
    seg = RealtimeSegment(writer_threads=2)
    seg.add("k", 5)
    batch = [("k", 4, None, [], 0.0, b""),     # stale
             ("a", 1, "x", [], 0.0, b""),
             ("a", 0, "y", [], 0.0, b""),      # stale against the batch's own "a"
             ("a", 2, "z", [], 0.0, b""),      # update within the batch
             ("k", 6, None, [], 0.0, b"")]
    assert seg.add_batch(batch) == 3
    assert seg.stats()["stale_dropped"] == 2
    assert seg.count("x") == 0 and seg.count("y") == 0 and seg.count("z") == 1
    assert seg.get("a").doc_id == 2 and seg.get("k").doc_id == 3


def test_add_batch_items_accept_str_bytes_and_tuples_or_lists_of_terms(seg):
    seg.add_batch([
        (b"a", 1, "text", ("x", b"y"), 1, b""),
        ("b", 2, None, ["x"], 2.5, b"\x00"),
    ])
    assert seg.count("x") == 2 and seg.count("y") == 1 and seg.count("text") == 1
    assert seg.get("a").score == 1.0


BAD_ITEMS = [
    pytest.param(("k", 1, None, [], 0.0), id="five fields"),
    pytest.param(("k", 1, None, [], 0.0, b"", 7), id="seven fields"),
    pytest.param(("", 1, None, [], 0.0, b""), id="empty key"),
    pytest.param(("k" * 1025, 1, None, [], 0.0, b""), id="key of 1025 bytes"),
    pytest.param(("k", 1, None, [""], 0.0, b""), id="empty term"),
    pytest.param(("k", 1, None, ["t" * 256], 0.0, b""), id="term of 256 bytes"),
]

BAD_TYPED_ITEMS = [
    pytest.param("not a tuple", id="a str"),
    pytest.param(None, id="None"),
    pytest.param((1, 1, None, [], 0.0, b""), id="int key"),
    pytest.param(("k", "1", None, [], 0.0, b""), id="str version"),
    pytest.param(("k", 1, b"text", [], 0.0, b""), id="bytes text"),
    pytest.param(("k", 1, None, [1], 0.0, b""), id="int term"),
    pytest.param(("k", 1, None, 5, 0.0, b""), id="int terms"),
    pytest.param(("k", 1, None, [], "x", b""), id="str score"),
    pytest.param(("k", 1, None, [], 0.0, "blob"), id="str blob"),
]


@pytest.mark.parametrize("writer_threads", [1, 2])
@pytest.mark.parametrize("bad", BAD_ITEMS)
def test_add_batch_with_a_malformed_item_raises_value_error_and_indexes_nothing(
        writer_threads, bad):
    seg = RealtimeSegment(writer_threads=writer_threads)
    good = [(f"g{i}", 1, "cat", ["t"], 0.0, b"") for i in range(5)]
    with pytest.raises(ValueError):
        seg.add_batch(good + [bad] + good)
    assert seg.count("cat") == 0 and seg.count("*") == 0 and len(seg) == 0
    assert seg.stats()["docs_committed"] == 0
    assert seg.add_batch(good) == 5  # and the segment still works


@pytest.mark.parametrize("bad", BAD_TYPED_ITEMS)
def test_add_batch_with_a_wrongly_typed_item_raises_and_indexes_nothing(bad):
    seg = RealtimeSegment(writer_threads=2)
    good = [(f"g{i}", 1, "cat", ["t"], 0.0, b"") for i in range(5)]
    with pytest.raises((TypeError, ValueError)):
        seg.add_batch(good + [bad])
    assert seg.count("*") == 0 and seg.stats()["docs_committed"] == 0


def test_add_batch_not_a_sequence(seg):
    with pytest.raises(TypeError):
        seg.add_batch(None)
    with pytest.raises(TypeError):
        seg.add_batch(5)


def test_add_batch_many_documents_many_threads():
    docs = [(f"k{i}", 1, f"a{i % 100} b{i % 37} all", [f"id:{i}"], float(i % 50), b"")
            for i in range(20000)]
    seg = RealtimeSegment(writer_threads=4)
    assert seg.add_batch(docs) == 20000
    assert seg.count("all") == 20000
    assert seg.count("a5") == 200
    assert seg.count("a5 b5") == sum(1 for i in range(20000) if i % 100 == 5 and i % 37 == 5)
    assert seg.count("id:12345") == 1
    assert seg.get("k19999").doc_id == 19999
    s = seg.stats()
    assert s["docs_committed"] == 20000 and s["terms"] == 100 + 37 + 1 + 20000


# ---- malformed arguments ---------------------------------------------------


def test_bad_keys(seg):
    with pytest.raises(ValueError):
        seg.add("", 1)
    with pytest.raises(ValueError):
        seg.add(b"", 1)
    seg.add("k" * 1024, 1)
    seg.add("é" * 512, 1)  # 1024 bytes
    with pytest.raises(ValueError):
        seg.add("k" * 1025, 1)
    with pytest.raises(ValueError):
        seg.add("é" * 512 + "x", 1)  # 1025 bytes
    for bad in [1, None, 1.5, ["k"]]:
        with pytest.raises(TypeError):
            seg.add(bad, 1)
    for bad in ["", "k" * 1025]:
        with pytest.raises(ValueError):
            seg.delete(bad)
        with pytest.raises(ValueError):
            seg.get(bad)
    for bad in [1, None]:
        with pytest.raises(TypeError):
            seg.delete(bad)
        with pytest.raises(TypeError):
            seg.get(bad)
    assert seg.stats()["docs_committed"] == 2


def test_bad_terms(seg):
    seg.add("ok", 1, terms=["t" * 255, "é" * 127 + "x"])
    for bad in [[""], [b""], ["t" * 256], ["é" * 128], ["ok", "t" * 300]]:
        with pytest.raises(ValueError, match="term"):
            seg.add("k", 1, terms=bad)
    for bad in [[1], [None], 5, [["nested"]]]:
        with pytest.raises(TypeError):
            seg.add("k", 1, terms=bad)
    assert seg.get("k") is None and seg.stats()["docs_committed"] == 1


def test_bad_fields(seg):
    for kwargs in [dict(text=b"bytes"), dict(text=5), dict(score="high"), dict(score=None),
                   dict(blob="str"), dict(blob=5)]:
        with pytest.raises(TypeError):
            seg.add("k", 1, **kwargs)
    for version in ["1", 1.0, 2.7, None]:  # a float version is refused, not truncated
        with pytest.raises(TypeError):
            seg.add("k", version)
        if version is not None:  # delete(key, None) is a delete without a version
            with pytest.raises(TypeError):
                seg.delete("k", version)
    with pytest.raises(TypeError):
        seg.add("k", 1, "positional text")
    assert seg.stats()["docs_committed"] == 0


def test_bad_constructor_arguments():
    for kwargs in [dict(writer_threads=0), dict(writer_threads=65), dict(writer_threads=-1),
                   dict(max_docs=0), dict(max_docs=-5)]:
        with pytest.raises(ValueError):
            RealtimeSegment(**kwargs)
    assert RealtimeSegment(writer_threads=64).stats()["writer_threads"] == 64


BAD_STRUCTURED = [
    ("nope", "x"), ("and",), ("or",), ("andnot", ("term", "a")),
    ("andnot", ("term", "a"), ("term", "b"), ("term", "c")), ("term",), ("term", "a", "b"),
    ("all", "x"), ("and", ("term", "a"), ("bad",)), ("TERM", "a"),
]


@pytest.mark.parametrize("query", BAD_STRUCTURED, ids=repr)
def test_bad_structured_queries_raise(seg, query):
    seg.add("k", 1, terms=["a"])
    with pytest.raises(ValueError):
        seg.search(query)
    with pytest.raises(ValueError):
        seg.count(query)


def test_query_terms_have_the_length_limits_of_document_terms(seg):
    seg.add("k", 1, terms=["t" * 255])
    assert seg.count(("term", "t" * 255)) == 1
    for q in [("term", ""), ("term", b""), ("term", "t" * 256), '""', '"' + "t" * 256 + '"']:
        with pytest.raises(ValueError):
            seg.count(q)


@pytest.mark.parametrize("depth", [10, 63, 64, 65, 1000, 100_000])
def test_deep_and_wide_queries_answer_or_raise_value_error(seg, depth):
    """No query shape crashes the process (a recursive C would overflow its
    stack): a deep or wide query is answered right or refused with
    ValueError. (Any limit is the C's: the contract names none.)"""
    seg.add("k", 1, terms=["a", "b"])
    structured = ("term", "a")
    for _ in range(depth):
        structured = ("and", structured)
    queries = [
        ("(" * depth + "a" + ")" * depth, 1),
        ("-" * depth + "a", depth % 2 == 0),
        ("NOT " * depth + "a", depth % 2 == 0),
        (" OR ".join(f"t{i}" for i in range(depth)) + " OR a", 1),
        (" ".join(["a"] * depth), 1),
        (structured, 1),
        (("or", *(("term", f"t{i}") for i in range(depth)), ("term", "b")), 1),
    ]
    for q, want in queries:
        for call in (seg.count, lambda q: len(seg.search(q, order="bm25"))):
            try:
                got = call(q)
            except ValueError:
                continue
            assert got == want, str(q)[:60]


def test_queries_of_the_wrong_type_raise(seg):
    for query in [5, None, b"cat", (), ("term", 5), ("term", None)]:
        with pytest.raises((TypeError, ValueError)):
            seg.search(query)
        with pytest.raises((TypeError, ValueError)):
            seg.count(query)


# ---- human query syntax ----------------------------------------------------

# One document per subset of {a, b, c, d}: every boolean function of the
# four terms shows in the set of documents it matches.
SUBSETS = [[t for i, t in enumerate("abcd") if mask >> i & 1] for mask in range(16)]


@pytest.fixture(scope="module")
def truth():
    """A segment and a model holding the 16 subsets of {a, b, c, d}
    (plus, as terms, some odd words the syntax tests search for)."""
    seg = RealtimeSegment()
    model = ModelSegment(**C_CHOICES)
    for i, terms in enumerate(SUBSETS):
        extra = ["and", "or", "not", "Cat", "lang:en", "e-mail"] if i % 3 == 0 else []
        extra += ["hello world", "AND", '"', "\\", "*", "-x", "(", "a b"] if i % 5 == 0 else []
        for m in (seg, model):
            m.add(f"s{i}", 1, terms=terms + extra, score=float(i))
    return seg, model


def matches(seg, query) -> set[int]:
    return {h.doc_id for h in seg.search(query, k=1000, order="recent")}


def expect(truth, query, structured):
    seg, model = truth
    want = evaluate(structured, model.live_docs())
    assert model.matches(query) == want, f"the model's parser disagrees on {query!r}"
    assert matches(seg, query) == want, f"search({query!r})"
    assert seg.count(query) == len(want), f"count({query!r})"


T = {x: ("term", x) for x in "abcd"}


@pytest.mark.parametrize("query, structured", [
    ("a", T["a"]),
    ("a b", ("and", T["a"], T["b"])),
    ("a  b\tc", ("and", T["a"], T["b"], T["c"])),
    ("a AND b", ("and", T["a"], T["b"])),
    ("a OR b", ("or", T["a"], T["b"])),
    ("a -b", ("andnot", T["a"], T["b"])),
    ("a NOT b", ("andnot", T["a"], T["b"])),
    ("a AND NOT b", ("andnot", T["a"], T["b"])),
    ("a -b -c", ("andnot", T["a"], ("or", T["b"], T["c"]))),
    ("-b a", ("andnot", T["a"], T["b"])),
    ("a AND (b OR c) -d", ("andnot", ("and", T["a"], ("or", T["b"], T["c"])), T["d"])),
    ("(a)", T["a"]),
    ("((a OR (b)))", ("or", T["a"], T["b"])),
    ("*", ("all",)),
    ("* -a", ("andnot", ("all",), T["a"])),
    ("a *", T["a"]),
    ("* OR a", ("all",)),
])
def test_syntax_operators(truth, query, structured):
    expect(truth, query, structured)


@pytest.mark.parametrize("query, structured", [
    # AND binds tighter than OR
    ("a OR b c", ("or", T["a"], ("and", T["b"], T["c"]))),
    ("a b OR c", ("or", ("and", T["a"], T["b"]), T["c"])),
    ("a OR b AND c", ("or", T["a"], ("and", T["b"], T["c"]))),
    ("a AND b OR c AND d", ("or", ("and", T["a"], T["b"]), ("and", T["c"], T["d"]))),
    # NOT binds tighter than AND
    ("NOT a b", ("andnot", T["b"], T["a"])),
    ("-a b", ("andnot", T["b"], T["a"])),
    ("-a OR b", ("or", ("andnot", ("all",), T["a"]), T["b"])),
    ("a OR -b", ("or", T["a"], ("andnot", ("all",), T["b"]))),
    ("NOT a OR b", ("or", ("andnot", ("all",), T["a"]), T["b"])),
    ("-(a OR b) c", ("andnot", T["c"], ("or", T["a"], T["b"]))),
    ("NOT (a b)", ("andnot", ("all",), ("and", T["a"], T["b"]))),
    ("(a OR b) (c OR d)", ("and", ("or", T["a"], T["b"]), ("or", T["c"], T["d"]))),
])
def test_syntax_precedence(truth, query, structured):
    expect(truth, query, structured)


@pytest.mark.parametrize("query, structured", [
    ("-a", ("andnot", ("all",), T["a"])),
    ("NOT a", ("andnot", ("all",), T["a"])),
    ("-a -b", ("andnot", ("all",), ("or", T["a"], T["b"]))),
    ("-a NOT b", ("andnot", ("all",), ("or", T["a"], T["b"]))),
    ("-(a b)", ("andnot", ("all",), ("and", T["a"], T["b"]))),
    ("(-a)", ("andnot", ("all",), T["a"])),
    ("-nothing", ("all",)),
])
def test_syntax_pure_negative_means_everything_except(truth, query, structured):
    expect(truth, query, structured)


@pytest.mark.parametrize("query, term", [
    ('"a b"', "a b"),
    ('"hello world"', "hello world"),
    ('"AND"', "AND"),
    ('"*"', "*"),
    ('"-x"', "-x"),
    ('"("', "("),
    (r'"\""', '"'),
    (r'"\\"', "\\"),
    ('"lang:en"', "lang:en"),
])
def test_syntax_quotes_make_an_exact_term_of_anything(truth, query, term):
    expect(truth, query, ("term", term))


@pytest.mark.parametrize("query, structured", [
    ("and", ("term", "and")),      # operators are uppercase only
    ("or", ("term", "or")),
    ("not", ("term", "not")),
    ("a and b", ("and", T["a"], ("term", "and"), T["b"])),
    ("Cat", ("term", "Cat")),      # no lowercasing of query terms
    ("cat", ("term", "cat")),
    ("lang:en", ("term", "lang:en")),
    ("e-mail", ("term", "e-mail")),  # '-' inside a word is part of it
    ('"hello world" -a', ("andnot", ("term", "hello world"), T["a"])),
    ('a -"a b"', ("andnot", T["a"], ("term", "a b"))),
])
def test_syntax_words(truth, query, structured):
    expect(truth, query, structured)


def test_syntax_text_search_is_by_lowercase_tokens(seg):
    seg.add("k", 1, text="The Quick Brown Fox")
    assert seg.count("quick fox") == 1
    assert seg.count("Quick") == 0


BAD_SYNTAX = [
    # (query, the 0-based positions a message may name: the offending token,
    # or the place where something was expected; 1-based also accepted)
    ("", {0}), ("   ", {0, 3}), ("(a", {0, 2}), ("a)", {1}), ("a ) b", {2}), ("()", {1}),
    ("AND", {0}), ("a AND", {2, 5}), ("OR b", {0}), ("a OR", {2, 4}), ("a OR OR b", {5}),
    ("a AND OR b", {6}), ('"abc', {0, 4}), ('a "b', {2, 4}), ("NOT", {0, 3}), ("-", {0, 1}),
    ("a -", {2, 3}), ("(a OR b", {0, 7}), ("((a)", {0, 4}), ("a (", {2, 3}),
]


@pytest.mark.parametrize("query, positions", BAD_SYNTAX, ids=[q for q, _ in BAD_SYNTAX])
def test_bad_syntax_raises_value_error_naming_the_position(seg, query, positions):
    with pytest.raises(ValueError):
        parse(query)  # the model agrees it is bad
    with pytest.raises(ValueError) as info:
        seg.search(query)
    message = str(info.value)
    numbers = {int(n) for n in re.findall(r"\d+", message)}
    accepted = positions | {p + 1 for p in positions}
    if not query.strip():
        assert "empty" in message, message  # nothing to point at
    else:
        assert numbers & accepted, f"{query!r}: {message!r} names none of positions {positions}"
    with pytest.raises(ValueError):
        seg.count(query)
    with pytest.raises(ValueError):
        parse_query(query)


@pytest.mark.parametrize("query, structured", [
    ("cat", ("term", "cat")),
    ("*", ("all",)),
    ('"a b"', ("term", "a b")),
    ("Cat", ("term", "Cat")),
])
def test_parse_query_of_a_single_term(query, structured):
    got = parse_query(query)
    assert isinstance(got, tuple)
    assert got[0] == structured[0]
    if len(structured) > 1:
        value = got[1]
        assert (value.encode() if isinstance(value, str) else value) == structured[1].encode()


@pytest.mark.parametrize("query", [
    "a b", "a OR b c", "a AND (b OR c) -d", "-a", "-a -b", "NOT (a b) OR c", "a OR -b",
    '"a b" OR c', "* -a", "((a))", "a AND NOT b OR NOT c d",
])
def test_parse_query_is_the_structured_form_search_runs(truth, query):
    seg, model = truth
    structured = parse_query(query)
    assert isinstance(structured, tuple)
    assert evaluate(structured, model.live_docs()) == model.matches(query)
    for order in ORDERS:
        assert seg.search(structured, k=100, order=order) == seg.search(query, k=100, order=order)
    assert seg.count(structured) == seg.count(query)


def test_parse_query_wrong_type():
    with pytest.raises(TypeError):
        parse_query(b"cat")
    with pytest.raises(TypeError):
        parse_query(("term", "cat"))


# ---- stats -----------------------------------------------------------------

INT_STATS = ["docs_added", "docs_committed", "docs_live", "docs_deleted", "stale_dropped",
             "terms", "postings", "writer_threads", "max_docs", "sealed", "bytes_postings",
             "bytes_dictionary", "bytes_forward", "bytes_arena", "bytes_total", "input_bytes",
             "generation", "retired_pending", "reclaimed"]
FLOAT_STATS = ["bytes_per_posting", "bytes_per_doc"]


def test_stats_keys_and_types():
    stats = RealtimeSegment(writer_threads=3, max_docs=1000).stats()
    for name in INT_STATS:
        assert isinstance(stats[name], int) and not isinstance(stats[name], bool), name
        assert stats[name] >= 0, name
    for name in FLOAT_STATS:
        assert isinstance(stats[name], float), name
    assert stats["writer_threads"] == 3 and stats["max_docs"] == 1000
    assert stats["sealed"] == 0
    assert RealtimeSegment().stats()["max_docs"] == 1 << 24
    assert RealtimeSegment().stats()["writer_threads"] == 1


def test_stats_counters_follow_the_model():
    both = Both(writer_threads=2)
    both.add("a", 1, text="cat dog cat", terms=["t", "t"], blob=b"xyz")
    both.add("b", 1, text="dog", terms=["u"])
    both.add("a", 2, text="bird")
    both.add("a", 1, text="stale")
    both.delete("b")
    both.add_batch([("c", 1, "fish cat", ["t"], 0.0, b"12"), ("d", 1, None, [], 0.0, b"")])
    got, want = both.seg.stats(), both.model.stats()
    for name in ["docs_added", "docs_committed", "docs_live", "docs_deleted", "stale_dropped",
                 "terms", "postings", "writer_threads", "max_docs", "sealed"]:
        assert got[name] == want[name], f"{name}: {got[name]}, model {want[name]}"
    # postings: (term, doc) pairs, not term occurrences
    assert got["postings"] == 3 + 2 + 1 + 3 + 0
    assert got["terms"] == len({"cat", "dog", "t", "u", "bird", "fish"})
    assert got["docs_committed"] - got["docs_live"] == got["docs_deleted"] == 2
    assert got["docs_live"] == len(both.seg) == 3


def test_stats_input_bytes_is_the_raw_input():
    seg = RealtimeSegment()
    seg.add("key", 1, text="héllo", terms=["ab", b"\xff"], blob=b"12345")
    assert seg.stats()["input_bytes"] == 3 + len("héllo".encode()) + 3 + 5
    seg.add_batch([("k2", 1, None, ["x"], 0.0, b"")])
    assert seg.stats()["input_bytes"] == 17 + 3


def test_stats_memory_is_reported():
    seg = RealtimeSegment(writer_threads=2)
    empty = seg.stats()
    seg.add_batch([(f"k{i}", 1, f"a{i % 50} b{i % 7} common", [f"id:{i}"], 0.0, b"x" * 10)
                   for i in range(5000)])
    s = seg.stats()
    for name in ["bytes_postings", "bytes_dictionary", "bytes_forward", "bytes_arena"]:
        assert s[name] > 0, name
        assert s[name] <= s["bytes_total"], name
    assert s["bytes_total"] > empty["bytes_total"]
    assert s["postings"] == 5000 * 4
    assert 0 < s["bytes_per_posting"] < 1000
    assert 0 < s["bytes_per_doc"] < 100_000
    assert s["input_bytes"] > 0
    # the ratios are what their names say, of some byte count
    assert s["bytes_per_posting"] * s["postings"] <= s["bytes_total"] * 1.0001
    assert s["bytes_per_doc"] * s["docs_committed"] <= s["bytes_total"] * 1.0001


def test_stats_generation_counters_move_when_tables_grow():
    seg = RealtimeSegment()
    seg.add_batch([(f"k{i}", 1, None, [f"t{i}", "common"], 0.0, b"") for i in range(50000)])
    s = seg.stats()
    assert s["terms"] == 50001
    assert s["reclaimed"] + s["retired_pending"] > 0  # dictionaries and directories grew
    assert s["generation"] >= 0


# ---- the model itself ------------------------------------------------------


def test_model_bm25_by_hand():
    """The oracle's formula, checked on its own."""
    model = ModelSegment()
    model.add("a", 1, text="cat cat dog")
    model.add("b", 1, text="cat")
    model.add("c", 1, text="dog bird fish a")
    model.delete("c")
    doc = make_doc(0, b"a", 1, "cat cat dog", [], 0.0, b"")
    scorer = model.bm25_scorer(("or", ("term", "cat"), ("term", "dog")))
    assert scorer(doc) == pytest.approx(bm25(2, 2, 3, 3, 8 / 3) + bm25(1, 2, 3, 3, 8 / 3))


def test_model_hit_equality_helper():
    model = ModelSegment()
    model.add("a", 1, score=0.25, blob=b"x")
    assert_hit(Hit(b"a", 1, 0.25, b"x", 0), model.get("a"), "self")
