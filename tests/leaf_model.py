"""A pure-Python reference model of pinstack.leaf.RealtimeSegment: the
oracle the leaf tests compare the C segment against (the contract is
src/pinstack/_core/_index.pyi; this file is that contract, executable).

Slow and simple on purpose: a list of documents in add order, sets for
postings, a dict per document for term frequencies. Nothing here is shared
with the C: when the two disagree, one of them misread the contract.

    ModelSegment        add / add_batch / delete / search / count / get /
                        seal / stats (the counters that have an exact value)
    tokenize(text)      the text tokenizer: list of byte tokens
    parse(text)         the human query syntax -> the structured form
    evaluate(...)       a structured query over a set of documents
    positive_terms(q)   the terms BM25 scores (one per occurrence)
    render(q, rng)      a structured query -> a human-syntax string

Choices where the contract is silent (the tests that depend on them say so):
  * doc ids count accepted documents from 0; a dropped (stale) add takes no id.
  * tokens longer than 255 bytes are dropped before counting: they add
    nothing to the document length.
  * a term given both in `terms` and as a text token is one posting whose
    term frequency is the sum of both.
  * a versioned delete records its tombstone even when the live document is
    newer (and so is not deleted); a key keeps the highest tombstone; an add
    is dropped if its version is lower than the live document's or than the
    tombstone's (an equal version wins: the later operation).
  * an unversioned delete leaves no tombstone.
  * NOT x anywhere in the human syntax means "every document except x";
    inside an AND group it becomes andnot(group, x).
  * a stale add needs no room: it is dropped (-1) even by a full segment; a
    batch is refused as full (and then indexes nothing) only if the
    documents it would add do not fit.
  * BM25 sums a term only through the branches through which the doc
    matches, as Lucene does and the contract says (the default,
    bm25_terms="matched"); bm25_terms="present" would count every positive
    term the doc contains, whichever branch made it match.
"""

from __future__ import annotations

import copy
import math
import random
import re
from typing import Any, NamedTuple

MAX_KEY = 1024
MAX_TERM = 255
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


class Hit(NamedTuple):
    key: bytes
    version: int
    score: float
    blob: bytes
    doc_id: int


class ModelSegmentFull(RuntimeError):
    pass


class ModelSegmentSealed(RuntimeError):
    pass


# ---- documents -------------------------------------------------------------

_TOKEN = re.compile(rb"[A-Za-z0-9\x80-\xff]+")


def tokenize(text: str | None) -> list[bytes]:
    """Text tokens in order: ASCII-lowercased runs of ASCII letters, digits
    and bytes >= 0x80 of the UTF-8 text; tokens over 255 bytes dropped."""
    if text is None:
        return []
    raw = text.encode("utf-8")
    return [t.lower() for t in _TOKEN.findall(raw) if len(t) <= MAX_TERM]


def as_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def check_key(key: Any) -> bytes:
    raw = as_bytes(key, "key")
    if not 1 <= len(raw) <= MAX_KEY:
        raise ValueError(f"key must be 1..{MAX_KEY} bytes, got {len(raw)}")
    return raw


def check_term(term: Any) -> bytes:
    raw = as_bytes(term, "term")
    if not 1 <= len(raw) <= MAX_TERM:
        raise ValueError(f"term must be 1..{MAX_TERM} bytes, got {len(raw)}")
    return raw


class Doc:
    __slots__ = ("doc_id", "key", "version", "tf", "dl", "score", "blob", "deleted")

    def __init__(self, doc_id: int, key: bytes, version: int, tf: dict[bytes, int], dl: int,
                 score: float, blob: bytes) -> None:
        self.doc_id = doc_id
        self.key = key
        self.version = version
        self.tf = tf
        self.dl = dl
        self.score = score
        self.blob = blob
        self.deleted = False

    def hit(self, score: float | None = None) -> Hit:
        return Hit(self.key, self.version, self.score if score is None else score,
                   self.blob, self.doc_id)


def make_doc(doc_id: int, key: bytes, version: int, text: str | None, terms: Any,
             score: float, blob: bytes) -> Doc:
    tokens = tokenize(text)
    tf: dict[bytes, int] = {}
    for t in tokens:
        tf[t] = tf.get(t, 0) + 1
    for t in terms:
        t = check_term(t)
        tf[t] = tf.get(t, 0) + 1
    return Doc(doc_id, key, version, tf, len(tokens), float(score), bytes(blob))


# ---- queries ---------------------------------------------------------------

def term_bytes(query: tuple) -> bytes:
    return as_bytes(query[1], "query term")


def check_query(query: Any) -> None:
    """ValueError (TypeError for a non-tuple) unless `query` is a well-formed
    structured query."""
    if not isinstance(query, tuple) or not query:
        raise TypeError(f"a structured query is a non-empty tuple, not {query!r}")
    op = query[0]
    if op == "term":
        if len(query) != 2:
            raise ValueError("('term', t) takes one term")
        as_bytes(query[1], "query term")
    elif op in ("and", "or"):
        if len(query) < 2:
            raise ValueError(f"({op!r}, ...) needs at least one child")
        for child in query[1:]:
            check_query(child)
    elif op == "andnot":
        if len(query) != 3:
            raise ValueError("('andnot', include, exclude) takes two children")
        check_query(query[1])
        check_query(query[2])
    elif op == "all":
        if len(query) != 1:
            raise ValueError("('all',) takes nothing")
    else:
        raise ValueError(f"unknown query operator {op!r}")


def build_index(docs: list[Doc]) -> tuple[set[int], dict[bytes, set[int]]]:
    """(every doc id, term -> doc ids) of `docs`."""
    index: dict[bytes, set[int]] = {}
    for d in docs:
        for t in d.tf:
            index.setdefault(t, set()).add(d.doc_id)
    return {d.doc_id for d in docs}, index


def evaluate(query: tuple, docs: list[Doc], built: Any = None) -> set[int]:
    """doc ids of `docs` (all live) matching the structured `query`;
    `built` is build_index(docs), if the caller has it already."""
    universe, index = built if built is not None else build_index(docs)

    def ev(q: tuple) -> set[int]:
        op = q[0]
        if op == "term":
            return index.get(term_bytes(q), set())
        if op == "and":
            result = ev(q[1])
            for child in q[2:]:
                result = result & ev(child)
            return result
        if op == "or":
            result: set[int] = set()
            for child in q[1:]:
                result = result | ev(child)
            return result
        if op == "andnot":
            return ev(q[1]) - ev(q[2])
        if op == "all":
            return set(universe)
        raise ValueError(f"unknown query operator {op!r}")

    return ev(query)


def positive_terms(query: tuple) -> list[bytes]:
    """The terms BM25 scores: every term under and/or and on the include
    side of andnot (never the exclude side), once per occurrence."""
    op = query[0]
    if op == "term":
        return [term_bytes(query)]
    if op in ("and", "or"):
        return [t for child in query[1:] for t in positive_terms(child)]
    if op == "andnot":
        return positive_terms(query[1])
    return []


# ---- the human syntax ------------------------------------------------------

class _Tok(NamedTuple):
    kind: str   # "word", "quoted", "(", ")", "-", "AND", "OR", "NOT", "*", "end"
    text: str
    pos: int


_SPACE = " \t\n\r\f\v"  # ASCII whitespace only: a UTF-8 space is a word byte
_SPECIAL = _SPACE + '()"'


def _lex(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(text)
    at_start = True  # at the start of a word: a '-' here is negation
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
            at_start = True
            continue
        if c in "()":
            toks.append(_Tok(c, c, i))
            i += 1
            at_start = True
            continue
        if c == '"':
            start = i
            i += 1
            out = []
            while True:
                if i >= n:
                    raise ValueError(f"unterminated quote starting at position {start}")
                c = text[i]
                if c == "\\":
                    if i + 1 >= n:
                        raise ValueError(f"backslash at the end of the query, position {i}")
                    out.append(text[i + 1])
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                out.append(c)
                i += 1
            toks.append(_Tok("quoted", "".join(out), start))
            at_start = False
            continue
        if c == "-" and at_start:
            toks.append(_Tok("-", "-", i))
            i += 1
            continue
        start = i
        while i < n and text[i] not in _SPECIAL:
            i += 1
        word = text[start:i]
        if word in ("AND", "OR", "NOT"):
            toks.append(_Tok(word, word, start))
        elif word == "*":
            toks.append(_Tok("*", word, start))
        else:
            toks.append(_Tok("word", word, start))
        at_start = False
    toks.append(_Tok("end", "", n))
    return toks


class _Parser:
    """or := and (OR and)*;  and := not ((AND)? not)*;
    not := (NOT | '-') not | primary;  primary := '(' or ')' | '*' | word | quoted.
    Internally NOT is ("not", x); _lower() turns it into andnot."""

    def __init__(self, text: str) -> None:
        self.toks = _lex(text)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, tok: _Tok, what: str) -> ValueError:
        found = "the end of the query" if tok.kind == "end" else repr(tok.text)
        return ValueError(f"{what} at position {tok.pos}, found {found}")

    def parse(self) -> tuple:
        if self.peek().kind == "end":
            raise self.fail(self.peek(), "empty query")
        node = self.or_expr()
        if self.peek().kind != "end":
            raise self.fail(self.peek(), "unexpected token")
        return node

    def or_expr(self) -> tuple:
        children = [self.and_expr()]
        while self.peek().kind == "OR":
            self.take()
            children.append(self.and_expr())
        return children[0] if len(children) == 1 else ("or", *children)

    _STARTS = ("word", "quoted", "(", "-", "NOT", "*")

    def and_expr(self) -> tuple:
        children = [self.not_expr()]
        while True:
            kind = self.peek().kind
            if kind == "AND":
                self.take()
                children.append(self.not_expr())
            elif kind in self._STARTS:
                children.append(self.not_expr())
            else:
                break
        return children[0] if len(children) == 1 else ("and", *children)

    def not_expr(self) -> tuple:
        if self.peek().kind in ("NOT", "-"):
            self.take()
            return ("not", self.not_expr())
        return self.primary()

    def primary(self) -> tuple:
        tok = self.take()
        if tok.kind == "(":
            node = self.or_expr()
            close = self.take()
            if close.kind != ")":
                raise self.fail(close, "expected ')'")
            return node
        if tok.kind == "*":
            return ("all",)
        if tok.kind in ("word", "quoted"):
            return ("term", tok.text)
        raise self.fail(tok, "expected a term, '*', '(' or NOT")


def _lower(node: tuple) -> tuple:
    """Replace the parser's ("not", x) by andnot, grouping an AND's negations."""
    op = node[0]
    if op == "not":
        return ("andnot", ("all",), _lower(node[1]))
    if op == "or":
        return ("or", *(_lower(c) for c in node[1:]))
    if op == "and":
        pos = [_lower(c) for c in node[1:] if c[0] != "not"]
        neg = [_lower(c[1]) for c in node[1:] if c[0] == "not"]
        if not neg:
            return ("and", *pos)
        include = ("all",) if not pos else pos[0] if len(pos) == 1 else ("and", *pos)
        exclude = neg[0] if len(neg) == 1 else ("or", *neg)
        return ("andnot", include, exclude)
    return node


def parse(text: str) -> tuple:
    """The structured form of a human-syntax query; ValueError naming the
    position on bad syntax."""
    if not isinstance(text, str):
        raise TypeError("a human-syntax query is a str")
    return _lower(_Parser(text).parse())


_PLAIN_WORD = re.compile(r"[A-Za-z0-9:_.@#$%&+=!?/<>~^\[\]{}|,;']+")


def quote_term(term: str, rng: random.Random | None = None) -> str:
    """`term` as the human syntax reads it back: bare if it can be, else quoted."""
    bare_ok = (_PLAIN_WORD.fullmatch(term) is not None
               and term not in ("AND", "OR", "NOT", "*"))
    if bare_ok and (rng is None or rng.random() < 0.8):
        return term
    return '"' + term.replace("\\", "\\\\").replace('"', '\\"') + '"'


_LEVEL = {"or": 1, "and": 2, "andnot": 2, "not": 3, "term": 4, "all": 4}


def render(query: tuple, rng: random.Random | None = None) -> str:
    """A human-syntax string meaning `query` (randomized spellings: AND or a
    space, NOT or '-', extra parentheses and spaces, quoting)."""
    rng = rng or random.Random(0)

    def sp() -> str:
        return rng.choice([" ", " ", "  ", "\t "])

    def r(q: tuple, need: int) -> str:
        op = q[0]
        if op == "term":
            s = quote_term(as_bytes(q[1], "term").decode("utf-8"), rng)
        elif op == "all":
            s = "*"
        elif op == "or":
            s = (sp() + "OR" + sp()).join(r(c, 2 if rng.random() < 0.5 else 1) for c in q[1:])
        elif op == "and":
            parts = [r(c, 2) for c in q[1:]]
            s = parts[0]
            for p in parts[1:]:
                s += (sp() + "AND" + sp()) if rng.random() < 0.5 else sp()
                s += p
        elif op == "andnot":
            neg = ("-" if rng.random() < 0.5 else "NOT ") + r(q[2], 3)
            if q[1] == ("all",) and rng.random() < 0.5:
                s = neg  # a pure negative query
            else:
                s = r(q[1], 2) + ((sp() + "AND" + sp()) if rng.random() < 0.3 else sp()) + neg
        else:
            raise ValueError(f"unknown query operator {op!r}")
        if _LEVEL[op] < need or rng.random() < 0.1:
            s = "(" + (" " if rng.random() < 0.3 else "") + s + ")"
        return s

    return r(query, 1)


# ---- the segment -----------------------------------------------------------

ORDERS = ("score", "bm25", "recent")


class ModelSegment:
    """RealtimeSegment as the contract describes it, single-threaded."""

    def __init__(self, writer_threads: int = 1, max_docs: int = 1 << 24, k1: float = 1.2,
                 b: float = 0.75, bm25_terms: str = "matched") -> None:
        """bm25_terms picks a reading where the contract can be read two
        ways (see C_CHOICES); the default is the reading of this file's
        docstring."""
        if bm25_terms not in ("present", "matched"):
            raise ValueError("bm25_terms is 'present' or 'matched'")
        self.bm25_terms = bm25_terms
        if not 1 <= writer_threads <= 64:
            raise ValueError("writer_threads must be 1..64")
        if max_docs < 1:
            raise ValueError("max_docs must be positive")
        self.writer_threads = writer_threads
        self.max_docs = max_docs
        self.k1 = k1
        self.b = b
        self.docs: list[Doc] = []
        self.live: dict[bytes, Doc] = {}
        self.tombstones: dict[bytes, int] = {}
        self.stale_dropped = 0
        self.input_bytes = 0
        self._sealed = False

    # -- writes --

    def _check_writable(self) -> None:
        if self._sealed:
            raise ModelSegmentSealed("the segment is sealed")

    def _validate(self, key: Any, version: Any, text: Any, terms: Any, score: Any,
                  blob: Any) -> tuple:
        key = check_key(key)
        if not isinstance(version, int) or isinstance(version, bool):
            raise TypeError("version must be an int")
        if not INT64_MIN <= version <= INT64_MAX:
            raise OverflowError("version must fit in int64")
        if text is not None and not isinstance(text, str):
            raise TypeError("text must be str or None")
        terms = [check_term(t) for t in terms]
        if not isinstance(blob, bytes):
            raise TypeError("blob must be bytes")
        if not isinstance(score, (int, float)):
            raise TypeError("score must be a number")
        return key, version, text, terms, float(score), blob

    def _add(self, key: bytes, version: int, text: str | None, terms: list[bytes],
             score: float, blob: bytes) -> int:
        size = (len(key) + len((text or "").encode("utf-8"))
                + sum(len(t) for t in terms) + len(blob))
        old = self.live.get(key)
        if (old is not None and old.version > version) or \
                self.tombstones.get(key, INT64_MIN) > version:
            self.stale_dropped += 1
            self.input_bytes += size
            return -1
        if len(self.docs) >= self.max_docs:
            raise ModelSegmentFull("the segment is full")
        self.input_bytes += size
        doc = make_doc(len(self.docs), key, version, text, terms, score, blob)
        self.docs.append(doc)
        self.live[key] = doc
        if old is not None:
            old.deleted = True
        return doc.doc_id

    def add(self, key: Any, version: int, *, text: str | None = None, terms: Any = (),
            score: float = 0.0, blob: bytes = b"") -> int:
        self._check_writable()
        return self._add(*self._validate(key, version, text, terms, score, blob))

    def add_batch(self, docs: Any) -> int:
        self._check_writable()
        checked = []
        for item in docs:
            if not isinstance(item, tuple) or len(item) != 6:
                raise ValueError("a batch item is (key, version, text, terms, score, blob)")
            checked.append(self._validate(*item))
        saved = copy.deepcopy((self.docs, self.live, self.tombstones, self.stale_dropped,
                               self.input_bytes))
        try:
            return sum(1 for item in checked if self._add(*item) >= 0)
        except ModelSegmentFull:  # all or nothing
            (self.docs, self.live, self.tombstones, self.stale_dropped,
             self.input_bytes) = saved
            raise

    def delete(self, key: Any, version: int | None = None) -> bool:
        self._check_writable()
        key = check_key(key)
        doc = self.live.get(key)
        if version is not None:
            if not isinstance(version, int):
                raise TypeError("version must be an int")
            if not INT64_MIN <= version <= INT64_MAX:
                raise OverflowError("version must fit in int64")
            self.tombstones[key] = max(self.tombstones.get(key, INT64_MIN), version)
            if doc is not None and doc.version > version:
                return False
        if doc is None:
            return False
        doc.deleted = True
        del self.live[key]
        return True

    def seal(self) -> None:
        self._sealed = True

    @property
    def sealed(self) -> bool:
        return self._sealed

    # -- reads --

    def live_docs(self) -> list[Doc]:
        return [d for d in self.docs if not d.deleted]

    def _built(self) -> Any:
        """build_index of the live docs, cached until the next write."""
        state = (len(self.docs), len(self.live), sum(d.deleted for d in self.docs))
        if getattr(self, "_cache_state", None) != state:
            self._cache_state = state
            self._cache = build_index(self.live_docs())
        return self._cache

    def matches(self, query: Any) -> set[int]:
        if isinstance(query, str):
            query = parse(query)
        check_query(query)
        return evaluate(query, self.live_docs(), self._built())

    def count(self, query: Any) -> int:
        return len(self.matches(query))

    def df(self, term: bytes) -> int:
        return sum(1 for d in self.docs if term in d.tf)

    def bm25_scorer(self, query: tuple):
        """doc -> BM25 of `query` (its positive terms) for that doc."""
        n = len(self.docs)
        total = sum(d.dl for d in self.docs)
        avgdl = (total / n) if n and total else 1.0
        k1, b = self.k1, self.b
        terms = positive_terms(query)
        idf = {t: math.log(1.0 + (n - df + 0.5) / (df + 0.5))
               for t in set(terms) for df in [self.df(t)]}

        def part(t: bytes, doc: Doc) -> float:
            tf = doc.tf.get(t, 0)
            if not tf:
                return 0.0
            return idf[t] * tf * (k1 + 1) / (tf + k1 * (1 - b + b * doc.dl / avgdl))

        if self.bm25_terms == "present":
            def score(doc: Doc) -> float:
                return sum(part(t, doc) for t in terms)
            return score

        # "matched": a term scores only through the branches that match the doc
        docs, built = self.live_docs(), self._built()
        memo: dict[int, set[int]] = {}

        def matching(q: tuple) -> set[int]:
            if id(q) not in memo:
                memo[id(q)] = evaluate(q, docs, built)
            return memo[id(q)]

        def branch(q: tuple, doc: Doc) -> float:
            op = q[0]
            if op == "term":
                return part(term_bytes(q), doc)
            if op in ("and", "or"):
                return sum(branch(c, doc) for c in q[1:] if doc.doc_id in matching(c))
            if op == "andnot":
                return branch(q[1], doc)
            return 0.0

        return lambda doc: branch(query, doc)

    def scored(self, query: Any, order: str = "score") -> list[Hit]:
        """Every matching live document as a Hit, best first (no k cut)."""
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}")
        if isinstance(query, str):
            query = parse(query)
        check_query(query)
        ids = evaluate(query, self.live_docs(), self._built())
        docs = [self.docs[i] for i in ids]
        if order == "bm25":
            scorer = self.bm25_scorer(query)
            hits = [d.hit(scorer(d)) for d in docs]
            hits.sort(key=lambda h: (-h.score, -h.doc_id))
        elif order == "score":
            hits = [d.hit() for d in docs]
            hits.sort(key=lambda h: (-h.score, -h.doc_id))
        else:
            hits = [d.hit() for d in docs]
            hits.sort(key=lambda h: -h.doc_id)
        seen: set[bytes] = set()
        out = []
        for h in hits:  # dedupe by key (a no-op when no update is in flight)
            if h.key not in seen:
                seen.add(h.key)
                out.append(h)
        return out

    def search(self, query: Any, k: int = 10, order: str = "score") -> list[Hit]:
        if not isinstance(k, int) or isinstance(k, bool):
            raise TypeError("k must be an int")
        if k <= 0 or k >= 1 << 63:
            raise ValueError("k must be a positive int64")
        return self.scored(query, order)[:k]

    def get(self, key: Any) -> Hit | None:
        doc = self.live.get(check_key(key))
        return None if doc is None else doc.hit()

    def __len__(self) -> int:
        return len(self.live)

    def stats(self) -> dict[str, int]:
        """The counters of RealtimeSegment.stats() that have an exact value."""
        committed = len(self.docs)
        live = len(self.live)
        return {
            "docs_added": committed,
            "docs_committed": committed,
            "docs_live": live,
            "docs_deleted": committed - live,
            "stale_dropped": self.stale_dropped,
            "terms": len({t for d in self.docs for t in d.tf}),
            "postings": sum(len(d.tf) for d in self.docs),
            "writer_threads": self.writer_threads,
            "max_docs": self.max_docs,
            "sealed": int(self._sealed),
            "input_bytes": self.input_bytes,
        }


# ---- comparing the C segment with the model --------------------------------

# The contract's reading where the model can be built two ways; the
# comparisons use ModelSegment(**C_CHOICES). Pinned by
#   test_leaf_segment.py::test_bm25_scores_only_the_branches_that_match
C_CHOICES = {
    # BM25 sums a positive term only over the branches that match the doc:
    # ("or", a, ("andnot", b, c)) scores b only where andnot(b, c) matches.
    "bm25_terms": "matched",
}

SCORE_REL = 1e-6   # static scores: the C may keep them as float32
BM25_REL = 1e-4    # BM25: computed in float/double in C


def _close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-9


def assert_hit(got: Any, want: Hit, ctx: str, rel: float = SCORE_REL) -> None:
    """One hit of the C segment equals the model's (score within `rel`)."""
    assert got is not None, f"{ctx}: got None, want {want}"
    got_t = (got.key, got.version, got.blob, got.doc_id)
    want_t = (want.key, want.version, want.blob, want.doc_id)
    assert got_t == want_t, f"{ctx}: got {tuple(got)}, want {tuple(want)}"
    assert _close(got.score, want.score, rel), \
        f"{ctx}: doc {want.doc_id} score {got.score!r}, want {want.score!r}"


def assert_hits(got: list, want: list[Hit], ctx: str) -> None:
    """Hit lists equal, in order (static scores within SCORE_REL)."""
    assert [h.doc_id for h in got] == [h.doc_id for h in want], \
        f"{ctx}: doc ids {[h.doc_id for h in got]}, want {[h.doc_id for h in want]}"
    for g, w in zip(got, want):
        assert_hit(g, w, ctx)


def assert_bm25_hits(got: list, ranked: list[Hit], k: int, ctx: str) -> None:
    """The C's BM25 top-k agrees with the model's full ranking `ranked`:
    each hit's score within BM25_REL of the model's, the C's own list sorted
    by (its score, doc id) descending, and nothing left out that the model
    scores clearly higher than the lowest hit kept (near-ties may swap)."""
    assert len(got) == min(k, len(ranked)), \
        f"{ctx}: {len(got)} hits, want {min(k, len(ranked))}"
    by_id = {h.doc_id: h for h in ranked}
    ids = [h.doc_id for h in got]
    assert len(set(ids)) == len(ids), f"{ctx}: a doc twice: {ids}"
    for g in got:
        assert g.doc_id in by_id, f"{ctx}: doc {g.doc_id} does not match the query"
        assert_hit(g, by_id[g.doc_id], ctx, rel=BM25_REL)
    for a, b in zip(got, got[1:]):
        assert (a.score, a.doc_id) > (b.score, b.doc_id), \
            f"{ctx}: not sorted by (bm25, doc id) descending: {a} before {b}"
    if got:
        floor = min(by_id[i].score for i in ids)
        kept = set(ids)
        for h in ranked:
            if h.doc_id not in kept:
                assert h.score <= floor * (1 + BM25_REL) + 1e-9, \
                    f"{ctx}: doc {h.doc_id} (bm25 {h.score}) left out, lowest kept {floor}"
        # Exact ties (the same terms, frequencies and length score the same
        # in any float arithmetic): the newer doc id first.
        for a, b in zip(got, got[1:]):
            if by_id[a.doc_id].score == by_id[b.doc_id].score and a.score == b.score:
                assert a.doc_id > b.doc_id, f"{ctx}: tie not broken newest first"


def check_search(seg: Any, model: ModelSegment, query: Any, k: int = 10,
                 order: str = "score", ranked: list[Hit] | None = None) -> list:
    """seg.search(query, k, order) agrees with the model (`ranked`, if given,
    is model.scored(query, order)); returns the hits."""
    ctx = f"search({query!r}, k={k}, order={order!r})"
    got = seg.search(query, k=k, order=order)
    if ranked is None:
        ranked = model.scored(query, order)
    if order == "bm25":
        assert_bm25_hits(got, ranked, k, ctx)
    else:
        assert_hits(got, ranked[:k], ctx)
    return got


def check_reads(seg: Any, model: ModelSegment, queries: list, ks: tuple = (1, 3, 1000),
                keys: Any = ()) -> None:
    """Every read of the C segment agrees with the model: search (each order,
    each k) and count for every query, get for every key, len."""
    for q in queries:
        want_count = model.count(q)
        assert seg.count(q) == want_count, f"count({q!r}) = {seg.count(q)}, want {want_count}"
        for order in ORDERS:
            ranked = model.scored(q, order)
            for k in ks:
                check_search(seg, model, q, k, order, ranked)
    for key in keys:
        want = model.get(key)
        got = seg.get(key)
        if want is None:
            assert got is None, f"get({key!r}) = {got}, want None"
        else:
            assert_hit(got, want, f"get({key!r})")
    assert len(seg) == len(model), f"len = {len(seg)}, want {len(model)}"
