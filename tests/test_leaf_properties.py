"""pinstack.leaf.RealtimeSegment against the reference model (leaf_model.py),
on sequences of writes and queries that hypothesis makes up.

    writes        add, add_batch, delete (with and without a version) over a
                  handful of keys and versions: updates, stale drops,
                  tombstones, full segments; every return value compared
    reads         random query trees over a small vocabulary (so they hit):
                  search in every order with several k, count, get, len
    syntax        a random query tree written out in the human syntax (every
                  spelling: AND or a space, NOT or '-', quoting, parentheses)
                  means what the tree means
    tokenizer     random text of awkward characters: the C's tokens, term
                  count and document length are the model's
    add_batch     the same index as add, whatever writer_threads

Every test runs writer_threads 1, 2 and 3. Examples are derandomized (the
same every run, so CI is reproducible and bounded); set
PINSTACK_HYPOTHESIS_SCALE=10 for a longer, still deterministic, search.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from leaf_model import (
    C_CHOICES,
    ORDERS,
    ModelSegment,
    ModelSegmentFull,
    assert_bm25_hits,
    assert_hits,
    check_reads,
    render,
    tokenize,
)

from pinstack.leaf import RealtimeSegment, SegmentFull, parse_query

# A deadlock inside the C blocks the main thread with the GIL released,
# where pytest-timeout's default (signal) method never gets to run: the
# thread method fails the run instead of hanging it (with --timeout=N).
pytestmark = pytest.mark.timeout(method="thread")

SCALE = int(os.environ.get("PINSTACK_HYPOTHESIS_SCALE", "1"))


def leaf_settings(examples: int) -> settings:
    # No "explain" phase: it traces every line of a failing example and can
    # take minutes; the shrunk example is what a reader needs.
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=True,
                    database=None, print_blob=True, report_multiple_bugs=False,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- strategies ------------------------------------------------------------

KEYS = ["k0", "k1", "k2", "k3", b"k4\x00", "clé"]
WORDS = ["cat", "dog", "bird", "fish", "Cat", "DOG", "héllo"]
SEPARATORS = [" ", "  ", ", ", "-", "\t", "!", "'", "\n"]
TERMS = ["t:a", "t:b", "cat", "Cat", "x", b"\xff"]
QUERY_TERMS = ["cat", "dog", "bird", "fish", "héllo", "t:a", "t:b", "Cat", "x", b"\xff",
               "missing"]
SCORES = [0.0, 0.5, 1.0, 2.0, -1.0, 1e6]  # exact in float and double

versions = st.integers(min_value=0, max_value=6)


@st.composite
def texts(draw):
    if draw(st.integers(0, 5)) == 0:
        return None
    words = draw(st.lists(st.sampled_from(WORDS), max_size=8))
    out = draw(st.sampled_from(["", " ", "("]))
    for w in words:
        out += w + draw(st.sampled_from(SEPARATORS))
    return out


@st.composite
def documents(draw):
    """(key, version, text, terms, score, blob): an add_batch item."""
    return (
        draw(st.sampled_from(KEYS)),
        draw(versions),
        draw(texts()),
        draw(st.lists(st.sampled_from(TERMS), max_size=4)),
        draw(st.sampled_from(SCORES)),
        draw(st.binary(max_size=3)),
    )


operations = st.one_of(
    st.tuples(st.just("add"), documents()),
    st.tuples(st.just("batch"), st.lists(documents(), max_size=6)),
    st.tuples(st.just("delete"), st.sampled_from(KEYS), st.none() | versions),
)


def query_trees(terms=QUERY_TERMS, max_leaves=8):
    leaves = st.sampled_from(terms).map(lambda t: ("term", t)) | st.just(("all",))

    def extend(children):
        return st.one_of(
            st.lists(children, min_size=1, max_size=3).map(lambda c: ("and", *c)),
            st.lists(children, min_size=1, max_size=3).map(lambda c: ("or", *c)),
            st.tuples(st.just("andnot"), children, children),
        )

    return st.recursive(leaves, extend, max_leaves=max_leaves)


# ---- writes and reads ------------------------------------------------------


def apply(seg, model, op) -> None:
    """One write to both; the C must return (or raise) what the model does."""
    kind = op[0]
    if kind == "add":
        key, version, text, terms, score, blob = op[1]
        args = dict(text=text, terms=terms, score=score, blob=blob)
        try:
            want = model.add(key, version, **args)
        except ModelSegmentFull:
            try:
                seg.add(key, version, **args)
            except SegmentFull:
                return
            raise AssertionError(f"{op}: the model's segment is full, the C's is not") from None
        got = seg.add(key, version, **args)
        assert got == want, f"{op}: add returned {got}, model {want}"
    elif kind == "batch":
        try:
            want = model.add_batch(op[1])
        except ModelSegmentFull:
            try:
                seg.add_batch(op[1])
            except SegmentFull:
                return
            raise AssertionError(f"{op}: the model's segment is full, the C's is not") from None
        got = seg.add_batch(op[1])
        assert got == want, f"{op}: add_batch returned {got}, model {want}"
    else:
        _, key, version = op
        got = seg.delete(key, version)
        want = model.delete(key, version)
        assert got == want, f"{op}: delete returned {got}, model {want}"


@leaf_settings(100)
@given(writer_threads=st.sampled_from([1, 2, 3]),
       max_docs=st.sampled_from([1 << 24, 1 << 24, 12]),
       ops=st.lists(operations, max_size=25),
       queries=st.lists(query_trees(), min_size=1, max_size=4))
def test_writes_then_reads_agree_with_the_model(writer_threads, max_docs, ops, queries):
    seg = RealtimeSegment(writer_threads=writer_threads, max_docs=max_docs)
    model = ModelSegment(writer_threads=writer_threads, max_docs=max_docs, **C_CHOICES)
    for op in ops:
        apply(seg, model, op)
        assert len(seg) == len(model), f"after {op}"
        assert seg.count(("all",)) == len(model)
    check_reads(seg, model, queries + [("all",)], ks=(1, 2, 1000), keys=KEYS)
    got, want = seg.stats(), model.stats()
    for name in ["docs_committed", "docs_live", "docs_deleted", "stale_dropped", "terms",
                 "postings"]:
        assert got[name] == want[name], f"stats {name}: {got[name]}, model {want[name]}"


@leaf_settings(60)
@given(writer_threads=st.sampled_from([1, 2, 3]),
       rounds=st.lists(st.tuples(st.lists(operations, max_size=6),
                                 st.lists(query_trees(max_leaves=5), max_size=2)),
                       min_size=1, max_size=6))
def test_reads_between_writes_agree_with_the_model(writer_threads, rounds):
    """Reads interleaved with writes: what a query sees moves with the index."""
    seg = RealtimeSegment(writer_threads=writer_threads)
    model = ModelSegment(**C_CHOICES)
    for ops, queries in rounds:
        for op in ops:
            apply(seg, model, op)
        check_reads(seg, model, queries, ks=(1, 1000), keys=KEYS[:3])


@leaf_settings(40)
@given(writer_threads=st.sampled_from([1, 2, 3]),
       docs=st.lists(documents(), max_size=40),
       cut=st.integers(min_value=1, max_value=10),
       queries=st.lists(query_trees(), min_size=1, max_size=3))
def test_add_batch_builds_what_add_builds(writer_threads, docs, cut, queries):
    one = RealtimeSegment(writer_threads=writer_threads)
    many = RealtimeSegment(writer_threads=writer_threads)
    added = sum(one.add(k, v, text=t, terms=ts, score=s, blob=b) >= 0
                for k, v, t, ts, s, b in docs)
    assert sum(many.add_batch(docs[i:i + cut]) for i in range(0, len(docs), cut)) == added
    for q in queries + [("all",)]:
        assert many.count(q) == one.count(q)
        for order in ORDERS:
            assert many.search(q, k=1000, order=order) == one.search(q, k=1000, order=order)
    for key in KEYS:
        assert many.get(key) == one.get(key)
    a, b = one.stats(), many.stats()
    for name in ["docs_committed", "docs_live", "stale_dropped", "terms", "postings",
                 "input_bytes"]:
        assert a[name] == b[name], name


# ---- the human syntax ------------------------------------------------------

# Terms that need every trick of the syntax: bare words, an operator and a
# star as terms (quoted), a space, quotes and backslashes inside, a leading '-'.
SYNTAX_TERMS = ["a", "b", "c", "AND", "hello world", 'q"x\\y', "-y", "*"]


def _truth_segment() -> tuple[RealtimeSegment, ModelSegment]:
    """One document per subset of SYNTAX_TERMS: a query's matches are its
    truth table. Text words of random length make BM25 differ by document."""
    seg, model = RealtimeSegment(), ModelSegment(**C_CHOICES)
    rng = random.Random(4)
    for mask in range(1 << len(SYNTAX_TERMS)):
        terms = [t for i, t in enumerate(SYNTAX_TERMS) if mask >> i & 1]
        terms += rng.sample(["a", "b", "c"], rng.randrange(3))  # tf 1 or 2
        text = " ".join(rng.choice(["a", "b", "zz", "yy"]) for _ in range(rng.randrange(6)))
        for m in (seg, model):
            m.add(f"d{mask}", 1, terms=terms, text=text, score=float(mask % 7))
    return seg, model


TRUTH = None


def truth():
    global TRUTH
    if TRUTH is None:
        TRUTH = _truth_segment()
    return TRUTH


@leaf_settings(300)
@given(tree=query_trees(SYNTAX_TERMS, max_leaves=7), seed=st.integers(0, 1 << 32))
def test_human_syntax_means_the_tree_it_spells(tree, seed):
    seg, model = truth()
    text = render(tree, random.Random(seed))
    want = model.matches(tree)
    structured = parse_query(text)
    assert model.matches(structured) == want, \
        f"parse_query({text!r}) = {structured!r} does not mean {tree!r}"
    assert seg.count(text) == len(want), f"count({text!r})"
    hits = seg.search(text, k=1000, order="recent")
    assert {h.doc_id for h in hits} == want, f"search({text!r})"
    for order in ORDERS:
        got = seg.search(text, k=5, order=order)
        assert got == seg.search(structured, k=5, order=order), (text, order)
        ranked = model.scored(structured, order)
        if order == "bm25":
            assert_bm25_hits(got, ranked, 5, f"search({text!r}, bm25)")
        else:
            assert_hits(got, ranked[:5], f"search({text!r}, {order})")


@leaf_settings(200)
@given(tree=query_trees(SYNTAX_TERMS, max_leaves=7), seed=st.integers(0, 1 << 32))
def test_reference_parser_reads_what_render_writes(tree, seed):
    """The model's own parser and renderer agree (the oracle, checked)."""
    from leaf_model import parse

    _, model = truth()
    text = render(tree, random.Random(seed))
    assert model.matches(text) == model.matches(tree)
    assert model.matches(parse(text)) == model.matches(tree)


# ---- the tokenizer ---------------------------------------------------------

ALPHABET = st.sampled_from(
    list("aAzZ09 ,.-_'\t\n\x00\x7f") + ["é", "É", "ß", "—", "\u00a0", "😀", "日", "À", "B"])


@leaf_settings(150)
@given(texts=st.lists(st.text(ALPHABET, max_size=40), min_size=1, max_size=5),
       writer_threads=st.sampled_from([1, 2, 3]))
def test_tokenizer_agrees_with_the_model(texts, writer_threads):
    seg = RealtimeSegment(writer_threads=writer_threads)
    model = ModelSegment(**C_CHOICES)
    for i, text in enumerate(texts):
        seg.add(f"k{i}", 1, text=text)
        model.add(f"k{i}", 1, text=text)
    tokens = {t for text in texts for t in tokenize(text)}
    assert seg.stats()["terms"] == len(tokens)
    assert seg.stats()["postings"] == model.stats()["postings"]
    queries = [("term", t) for t in sorted(tokens)[:6]]
    if len(queries) > 1:
        queries.append(("or", *queries))
    check_reads(seg, model, queries, ks=(1000,))


@leaf_settings(40)
@given(length=st.integers(250, 260), char=st.sampled_from(["a", "é", "😀", "日"]),
       tail=st.sampled_from(["", "z", "zz"]))
def test_tokens_up_to_255_bytes(length, char, tail):
    token = (char * length).encode()[:length]
    token = token.decode("utf-8", "ignore") + tail
    seg, model = RealtimeSegment(), ModelSegment(**C_CHOICES)
    for m in (seg, model):
        m.add("long", 1, text=f"x {token} y {token}")
        m.add("short", 1, text="x x")
    want = tokenize(f"x {token}")
    assert seg.stats()["terms"] == model.stats()["terms"] == len(set(want)) + 1
    queries = ["x"] + [("term", t) for t in set(want)]  # a term is at most 255 bytes
    check_reads(seg, model, queries, ks=(10,))
