"""A real corpus for the pinstack-leaf benchmarks: two English dictionaries
that no one here wrote, as leaf messages, and query sets drawn from them.

Sources (Debian packages; `bash ci/install-deps.sh` installs both):

    dict-gcide    GNU Collaborative International Dictionary of English
                  0.48 (Webster's 1913 plus WordNet 1.5 and later additions).
                  /usr/share/dictd/gcide.dict.dz is dictzip, which gzip reads
                  whole; gcide.index has one line per headword: headword, TAB,
                  offset, TAB, length, the two numbers in dictd's base64.
                  Many headwords point into one entry (run-on phrases,
                  formulas, variant spellings), so a document here is one
                  entry: one distinct (offset, length) block of the dict file,
                  about 126,000 of them (the 00-database-* blocks skipped).
    wordnet-base  WordNet 3.0: /usr/share/wordnet/data.{noun,verb,adj,adv},
                  one synset a line: 117,659 synsets.

One message per document (docs/leaf-stream.md), keys unique:

    gcide     {"op": "index", "key": "gcide:Apple:1728265",   headword:offset
               "version": n, "score": s,
               "fields": {"title": "Apple",                    the headword
                          "body": "Apple \\Ap\"ple\\ ... n. [OE. appel ...",
                                                               the entry, whitespace
                                                               runs collapsed, the
                                                               [1913 Webster]-style
                                                               source lines removed
                          "pos": "n",                          part of speech, when the
                                                               entry's first line has one
                          "src": ["1913webster", ...]},        the sources it cites
               "payload": {"dict": "gcide", "offset": 1728265, "length": 3491}}
    wordnet   {"key": "wn:n:00217014", "fields": {"title": "destruction, devastation",
               "body": the gloss, "pos": "n" | "v" | "adj" | "adv",
               "lex": "noun.act" (its lexicographer file), "src": "wordnet30"},
               "payload": {"dict": "wordnet", "pos": "n", "offset": 217014}, ...}

version is the document's position in the corpus plus one; score, a static
score in [0, 1) for order=score, is crc32(key) / 2**32 rounded to a float32
(the dictionaries have no popularity; float32 so that an engine storing
float64 orders alike). Documents are gcide's in dict-file order, then
wordnet's (noun, verb, adj, adv, each in file order). With `limit`, an even
stride over that list. Everything is a pure function of the installed files
and the arguments.

SCHEMA is the leaf schema these messages fit: text title and body,
keywords pos, src, lex, and store "payload" (a hit carries the small
payload, not the whole entry).

Queries (make_queries): the structured form of pinstack's query API, as in
bench/leaf_corpus.py, drawn from the corpus's own document frequencies:

    term common   a word of document-frequency rank 1..10 ("the", "of", ...)
    term medium   rank 100..1000
    term rare     rank 10,000 .. the vocabulary's end (at least 2 documents)
    tag           a keyword term of at least 100 documents: "pos:n",
                  "lex:noun.animal", "src:pjc", ...
    and           a rank 1..50 word AND a rank 50..2000 word
    or            the same pairs, ORed

Query words are lowercase ASCII letters only, 2..40 of them, so that
pinstack's tokenizer and tantivy's "default" one (lowercase, split on
non-alphanumerics, drop tokens over 40 bytes) agree on every document that
holds them. query_string() writes a structured query in the human syntax
(GET /search?q=...).

    python bench/leaf_real_corpus.py            # a summary and sample queries
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import struct
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

GCIDE_DICT = "/usr/share/dictd/gcide.dict.dz"
GCIDE_INDEX = "/usr/share/dictd/gcide.index"
WORDNET_DIR = "/usr/share/wordnet"
SOURCES = ("gcide", "wordnet")

SCHEMA = {"text": ["title", "body"], "keywords": ["pos", "src", "lex"], "store": "payload"}

QUERY_KINDS = ("term common", "term medium", "term rare", "tag", "and", "or")

# WordNet 3.0's lexicographer files, by number (lexnames(5WN)); data.* lines
# give the number only, and wordnet-base does not ship the lexnames file.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon",
    "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body",
    "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)
_WN_FILES = (("noun", "n"), ("verb", "v"), ("adj", "adj"), ("adv", "adv"))
_WN_POS = {"n": "n", "v": "v", "a": "adj", "s": "adj", "r": "adv"}

_B64 = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
# A source line of a gcide entry: "[1913 Webster]", "[WordNet 1.5]", "[PJC]".
_SOURCE_LINE = re.compile(r"^[ \t]*\[([^\]\n]{1,40})\][ \t]*$", re.M)
# What a source line names: "1913 Webster + PJC" -> 1913webster, pjc (usage
# labels alone on a line, "[Obs.]", are not sources).
_SOURCE_NAME = re.compile(r"webster|wordnet|pjc|century|rdh")
# The first line: `Headword \Pro*nun"ci*a`tion\ (...), n. [etymology`.
_HEAD = re.compile(r"^([^\\\n]*?)\s*\\[^\\\n]*\\(.*)$")
_POS = re.compile(r"^[,\s]*(?:\([^)]*\)[,\s]*)?((?:[a-z]{1,6}\.\s*){1,3})")
_POS_NAMES = {"a": "adj", "adj": "adj", "n": "n", "adv": "adv", "vt": "v", "vi": "v", "v": "v"}
# Tokens as pinstack's tokenizer makes them (src/pinstack/_core/_index.pyi):
# runs of ASCII letters and digits and of non-ASCII characters, over text
# already lowercased (str.lower() lowercases non-ASCII letters too, which
# only changes tokens that are not query words anyway).
_TOKEN = re.compile(r"[a-z0-9\u0080-\U0010ffff]+")
_QUERY_WORD = re.compile(r"^[a-z]{2,40}$")
TAG_MIN_DOCS = 100  # tag queries: keyword terms of at least this many documents


class CorpusMissing(RuntimeError):
    """A Debian package this corpus reads is not installed."""


def _require(package: str, path: str) -> None:
    if not os.path.exists(path):
        raise CorpusMissing(
            f"{path} not found: the Debian package {package} is not installed. Install it "
            f"with `bash ci/install-deps.sh` (or `apt-get install {package}`)")


def _b64(text: str) -> int:
    n = 0
    for c in text:
        n = n * 64 + _B64[c]
    return n


def _float32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def static_score(key: str) -> float:
    return _float32(zlib.crc32(key.encode("utf-8")) / 2 ** 32)


# --- the two dictionaries ----------------------------------------------------------

def _gcide_blocks() -> tuple[list[tuple[int, int, str]], bytes]:
    """(offset, length, first headword) of every entry block, in file order,
    and the uncompressed dict file."""
    _require("dict-gcide", GCIDE_INDEX)
    _require("dict-gcide", GCIDE_DICT)
    blocks: dict[tuple[int, int], str] = {}
    with open(GCIDE_INDEX, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or parts[0].startswith("00-"):
                continue
            blocks.setdefault((_b64(parts[1]), _b64(parts[2])), parts[0])
    with gzip.open(GCIDE_DICT) as f:
        data = f.read()
    return [(o, n, h) for (o, n), h in sorted(blocks.items())], data


def _gcide_entry(block: tuple[int, int, str], data: bytes) -> dict:
    offset, length, first_headword = block
    text = data[offset:offset + length].decode("utf-8", "replace")
    first_line = text.split("\n", 1)[0]
    m = _HEAD.match(first_line)
    headword = (m.group(1).strip() if m else "") or first_headword
    fields: dict = {"title": headword, "body": " ".join(_SOURCE_LINE.sub("", text).split())}
    if m:
        p = _POS.match(m.group(2))
        if p:
            pos = p.group(1).replace(".", "").replace(" ", "")
            fields["pos"] = _POS_NAMES.get(pos, pos)
    sources = []
    for line in _SOURCE_LINE.findall(text):
        for part in line.split("+"):
            name = "".join(c for c in part.lower() if c.isascii() and c.isalnum())
            if _SOURCE_NAME.search(name) and name not in sources:
                sources.append(name)
    if sources:
        fields["src"] = sources
    return {"key": f"gcide:{headword}:{offset}", "fields": fields,
            "payload": {"dict": "gcide", "offset": offset, "length": length}}


def _wordnet_lines() -> list[str]:
    """Every synset line of data.{noun,verb,adj,adv}, in that order."""
    for name, _ in _WN_FILES:
        _require("wordnet-base", os.path.join(WORDNET_DIR, f"data.{name}"))
    lines: list[str] = []
    for name, _ in _WN_FILES:
        with open(os.path.join(WORDNET_DIR, f"data.{name}"), encoding="utf-8") as f:
            lines.extend(line for line in f if not line.startswith("  "))  # license header
    return lines


def _wordnet_entry(line: str) -> dict:
    head, _, gloss = line.partition(" | ")
    cols = head.split(" ")
    offset, lex, ss_type, w_cnt = cols[0], int(cols[1]), cols[2], int(cols[3], 16)
    words = [re.sub(r"\([a-z]+\)$", "", w).replace("_", " ") for w in cols[4:4 + 2 * w_cnt:2]]
    return {"key": f"wn:{ss_type}:{offset}",
            "fields": {"title": ", ".join(words), "body": gloss.strip(),
                       "pos": _WN_POS[ss_type], "lex": LEXNAMES[lex], "src": "wordnet30"},
            "payload": {"dict": "wordnet", "pos": ss_type, "offset": int(offset)}}


def gcide_entries() -> Iterator[dict]:
    """Every gcide entry as {key, fields, payload}, in dict-file order."""
    blocks, data = _gcide_blocks()
    return (_gcide_entry(b, data) for b in blocks)


def wordnet_entries() -> Iterator[dict]:
    """Every WordNet 3.0 synset as {key, fields, payload}: noun, verb, adj, adv."""
    return (_wordnet_entry(line) for line in _wordnet_lines())


# --- the corpus ------------------------------------------------------------------

@dataclass
class RealCorpus:
    """messages: the NDJSON lines POST /documents takes (bytes, one per
    document); entries: the same as dicts; sources: documents per source."""

    entries: list[dict]
    messages: list[bytes]
    sources: dict[str, int]
    input_bytes: int = 0
    _df: Counter | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.messages)

    def docs(self) -> list[tuple]:
        """What RealtimeSegment.add_batch (and bench/leaf_compare.py's tantivy
        documents) take, (key, version, text, terms, score, blob): each
        message through the leaf's own parse_message with SCHEMA, so exactly
        what a leaf indexes. Needs pinstack."""
        from pinstack.leaf.message import Schema, parse_message
        schema = Schema.from_dict(SCHEMA)
        return [tuple(parse_message(m, schema))[1:] for m in self.messages]

    def doc_freq(self) -> Counter:
        """Documents holding each query-able word (see the module docstring)."""
        if self._df is None:
            df: Counter = Counter()
            for e in self.entries:
                f = e["fields"]
                tokens = set(_TOKEN.findall((f["title"] + "\n" + f["body"]).lower()))
                df.update([w for w in tokens
                           if 2 <= len(w) <= 40 and w.isascii() and w.isalpha()])
            self._df = df
        return self._df

    def keyword_terms(self, min_docs: int = 1) -> list[str]:
        """Distinct keyword terms ("pos:n", ...) of at least min_docs
        documents (all of them for a corpus smaller than that), sorted."""
        terms: Counter = Counter()
        for e in self.entries:
            for name in SCHEMA["keywords"]:
                v = e["fields"].get(name)
                terms.update(f"{name}:{x}" for x in ([v] if isinstance(v, str) else v or ()))
        floor = min(min_docs, max(terms.values(), default=1))
        return sorted(t for t, c in terms.items() if c >= floor)

    def summary(self) -> dict:
        n = len(self.messages)
        df = self.doc_freq()
        return {
            "docs": n,
            "sources": self.sources,
            "packages": {"gcide": "dict-gcide", "wordnet": "wordnet-base"},
            "input_bytes": self.input_bytes,
            "message_bytes_mean": round(self.input_bytes / max(1, n), 1),
            "query_vocabulary": len(df),
            "doc_fraction_of_rank": {w: round(c / max(1, n), 4) for w, c in df.most_common(10)},
        }


def load(sources: tuple[str, ...] = SOURCES, limit: int | None = None) -> RealCorpus:
    """The corpus as messages, deterministic in (installed files, sources,
    limit). CorpusMissing (naming the package) if a source is not installed."""
    # (parser, raw item) of every document, then only the sampled ones parsed
    items: list[tuple] = []
    for s in sources:
        if s == "gcide":
            blocks, data = _gcide_blocks()
            items.extend((lambda b, d=data: _gcide_entry(b, d), b) for b in blocks)
        elif s == "wordnet":
            items.extend((_wordnet_entry, line) for line in _wordnet_lines())
        else:
            raise ValueError(f"unknown source {s!r} (known: {', '.join(SOURCES)})")
    if limit is not None and limit < len(items):
        step = len(items) / limit
        items = [items[int(i * step)] for i in range(limit)]
    entries = [parse(raw) for parse, raw in items]
    messages = []
    counts: dict[str, int] = {}
    total = 0
    for i, e in enumerate(entries):
        msg = {"op": "index", "key": e["key"], "version": i + 1, "fields": e["fields"],
               "score": static_score(e["key"]), "payload": e["payload"]}
        raw = json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        messages.append(raw)
        total += len(raw)
        src = e["payload"]["dict"]
        counts[src] = counts.get(src, 0) + 1
    return RealCorpus(entries=entries, messages=messages, sources=counts, input_bytes=total)


# --- queries -----------------------------------------------------------------------

def make_queries(corpus: RealCorpus, per_kind: int = 200, seed: int = 11) -> dict[str, list]:
    """per_kind structured queries of every kind in QUERY_KINDS, deterministic
    in (corpus, per_kind, seed). Ranks are clamped to the vocabulary, so a
    small corpus still gets every kind."""
    rng = random.Random(seed)
    vocab = [w for w, _ in sorted(corpus.doc_freq().items(), key=lambda wc: (-wc[1], wc[0]))]
    rare_end = len(vocab)
    while rare_end > 1 and corpus.doc_freq()[vocab[rare_end - 1]] < 2:
        rare_end -= 1
    n = len(vocab)

    def word(lo: int, hi: int) -> tuple:
        hi = max(1, min(hi, n))
        lo = max(1, min(lo, hi))
        return ("term", vocab[rng.randint(lo, hi) - 1])

    tags = corpus.keyword_terms(TAG_MIN_DOCS)
    out: dict[str, list] = {
        "term common": [word(1, 10) for _ in range(per_kind)],
        "term medium": [word(100, 1000) for _ in range(per_kind)],
        "term rare": [word(10_000, rare_end) for _ in range(per_kind)],
        "tag": [("term", rng.choice(tags)) for _ in range(per_kind)],
    }
    pairs = [(word(1, 50), word(50, 2000)) for _ in range(per_kind)]
    out["and"] = [("and", a, b) for a, b in pairs]
    out["or"] = [("or", a, b) for a, b in pairs]
    return out


def query_string(q: tuple) -> str:
    """A structured query (term/and/or) in the human syntax; terms that are not
    plain lowercase words (keyword terms) are double-quoted."""
    if q[0] == "term":
        t = q[1]
        if _QUERY_WORD.match(t):
            return t
        return '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'
    op = {"and": " AND ", "or": " OR "}[q[0]]
    return "(" + op.join(query_string(c) for c in q[1:]) + ")"


def main() -> int:
    try:
        corpus = load()
    except CorpusMissing as e:
        print(f"leaf_real_corpus: {e}", file=sys.stderr)
        return 1
    print(json.dumps(corpus.summary(), indent=1))
    for kind, qs in make_queries(corpus, per_kind=3).items():
        print(f"{kind:12s} " + " | ".join(query_string(q) for q in qs))
    print(corpus.messages[len(corpus.messages) // 3].decode()[:400])
    return 0


if __name__ == "__main__":
    sys.exit(main())
