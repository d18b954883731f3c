"""The leaf's message format: one JSON object per stream record, checked
against a schema and turned into what RealtimeSegment.add_batch takes.

What it is
----------
Every record of a stream (embedded log or Kafka) is one UTF-8 JSON object:

    {"op": "index", "key": "pin:1", "version": 7,
     "fields": {"title": "A cat", "lang": "en", "tag": ["cat", "pet"]},
     "score": 0.5, "payload": {"url": "https://..."}}
    {"op": "delete", "key": "pin:1", "version": 8}

A Schema (a JSON file, `Schema.load`) names the fields: *text* fields are
analyzed (their values are joined with newlines into the segment's one text
field, tokenized in C), *keyword* fields become exact terms `name:value`.
`parse_message(raw, schema)` checks one record strictly and returns an Op;
`segment_docs(ops)` gives add_batch's tuples, `apply_ops(segment, ops)`
applies a mixed run of index and delete ops in stream order, and
`parse_records` parses a polled batch under the skip-or-halt policy.
docs/leaf-stream.md is the reference for the format; keep the two in step.

The contract with the segment
-----------------------------
An Op that parse_message returns is always accepted by add_batch: key 1..1024
UTF-8 bytes, version an int64, every term 1..255 UTF-8 bytes, score finite,
no string that cannot be encoded as UTF-8 (a lone surrogate from a `\\ud800`
escape). add_batch rejects a whole batch for one bad document, so this is
what keeps one bad message from stopping ingestion: the checks live here,
once, before anything reaches the index.

Speed
-----
One json decode (C) plus a handful of type checks per field; no regexes, no
per-character Python loops. Byte lengths are computed only for non-ASCII
strings (str.isascii() is O(1) in CPython), and UTF-8 encodability is
checked only when the raw record contains a `\\u` escape: strict UTF-8
decoding of the raw bytes already rules out surrogates otherwise.

Threads: everything here is a pure function of its arguments; a Schema is
immutable once built and may be shared by any number of threads.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = [
    "ApplyResult",
    "BadMessage",
    "MessageError",
    "Op",
    "Schema",
    "SchemaError",
    "apply_ops",
    "parse_message",
    "parse_records",
    "segment_docs",
]

log = logging.getLogger("pinstack.leaf.message")

KEY_MAX_BYTES = 1024  # the segment's PS_KEY_MAX
TERM_MAX_BYTES = 255  # the segment's term limit
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
DEFAULT_MAX_TERMS = 1024

_MESSAGE_KEYS = frozenset(("op", "key", "version", "fields", "score", "payload"))
_DELETE_KEYS = frozenset(("op", "key", "version"))
_SCHEMA_KEYS = frozenset(("text", "keywords", "store", "max_message_bytes", "max_terms"))
_TEXT: Any = object()  # Schema._kinds: a text field maps to this, a keyword field to "name:"
_STORE_SOURCE = "source"
_STORE_PAYLOAD = "payload"
_STORE_NONE = "none"
_STORES = {s: s for s in (_STORE_SOURCE, _STORE_PAYLOAD, _STORE_NONE)}
_FLOAT_MAX = sys.float_info.max
_new_op = tuple.__new__  # Op(...) runs a Python-level __new__; this is the C one


class MessageError(ValueError):
    """A record that is not a valid message. `code` names the rule broken
    (for counting), str(error) explains it for a person. parse_records fills
    in `partition` and `offset` when it knows them."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.partition: int | None = None
        self.offset: int | None = None

    def __str__(self) -> str:
        text = super().__str__()
        if self.partition is not None:
            return f"partition {self.partition} offset {self.offset}: {text}"
        return text


class SchemaError(ValueError):
    """A schema file or dict that is not valid."""


class Op(NamedTuple):
    """One parsed message. op[1:] is exactly the tuple add_batch takes:
    (key, version, text, terms, score, blob)."""

    kind: str  # "index" or "delete"
    key: str
    version: int
    text: str | None  # the text fields joined with "\n"; None if there are none
    terms: list[str]  # keyword terms "name:value", in message order
    score: float
    blob: bytes  # what Schema.store says: the message, the payload as JSON, or b""


class BadMessage(NamedTuple):
    """A record parse_records skipped."""

    partition: int
    offset: int
    error: MessageError


class ApplyResult(NamedTuple):
    added: int  # index ops that went in
    stale: int  # index ops dropped because the key holds a newer version
    deleted: int  # delete ops that removed a live document


class Schema:
    """Which message fields are analyzed text and which are exact keywords,
    and the size limits. Immutable; share it between threads.

    A JSON schema file looks like

        {"text": ["title", "description"],
         "keywords": ["lang", "board", "tag"],
         "store": "source",
         "max_message_bytes": 1048576,
         "max_terms": 1024}

    Only "text" and "keywords" are needed. A field name is 1..128 characters
    and has no ":" (terms are "name:value"); no name may be in both lists.
    `store` says what becomes the document's blob (the segment's forward
    store): "source" the message's bytes as received (the default: free,
    and GET /documents/{key} can return fields and payload), "payload" the
    payload alone as compact JSON (b"" without one), "none" nothing.
    """

    __slots__ = ("text", "keywords", "store", "max_message_bytes", "max_terms", "_kinds",
                 "_names", "_store")

    def __init__(
        self,
        text: Iterable[str] = (),
        keywords: Iterable[str] = (),
        *,
        store: str = "source",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_terms: int = DEFAULT_MAX_TERMS,
    ) -> None:
        text = tuple(text)
        keywords = tuple(keywords)
        kinds: dict[str, Any] = {}
        for kind, names, label in ((_TEXT, text, "text"), (None, keywords, "keywords")):
            for name in names:
                if not isinstance(name, str) or not 1 <= len(name) <= 128 or ":" in name:
                    raise SchemaError(
                        f"schema: {label}: a field name is a string of 1..128 characters "
                        f"without ':' (got {name!r})"
                    )
                if name in kinds:
                    raise SchemaError(f"schema: field {name!r} is named twice")
                kinds[name] = _TEXT if kind is _TEXT else name + ":"
        for label, value, low in (
            ("max_message_bytes", max_message_bytes, 64),
            ("max_terms", max_terms, 0),
        ):
            if type(value) is not int or not low <= value <= (1 << 30):
                raise SchemaError(f"schema: {label} must be an integer {low}..{1 << 30} "
                                  f"(got {value!r})")
        if store not in _STORES:
            raise SchemaError(f'schema: store must be "source", "payload" or "none" '
                              f"(got {store!r})")
        self.text = text
        self.keywords = keywords
        self.store = store
        self._store = _STORES[store]  # the interned constant: parse_message compares by identity
        self.max_message_bytes = max_message_bytes
        self.max_terms = max_terms
        self._kinds = kinds
        self._names = ", ".join(sorted(kinds)) or "none"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Schema:
        """A schema from the decoded JSON of a schema file (strict)."""
        if not isinstance(d, Mapping):
            raise SchemaError("schema: expected a JSON object")
        unknown = sorted(set(d) - _SCHEMA_KEYS)
        if unknown:
            raise SchemaError(f"schema: unknown key(s) {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(sorted(_SCHEMA_KEYS))})")
        for label in ("text", "keywords"):
            if not isinstance(d.get(label, []), list):
                raise SchemaError(f"schema: {label} must be a list of field names")
        return cls(
            d.get("text", []),
            d.get("keywords", []),
            store=d.get("store", "source"),
            max_message_bytes=d.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES),
            max_terms=d.get("max_terms", DEFAULT_MAX_TERMS),
        )

    @classmethod
    def load(cls, path: Any) -> Schema:
        """A schema from a JSON file."""
        try:
            with open(path, "rb") as f:
                d = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SchemaError(f"schema file {path}: not valid JSON: {e}") from None
        try:
            return cls.from_dict(d)
        except SchemaError as e:
            raise SchemaError(f"schema file {path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": list(self.text),
            "keywords": list(self.keywords),
            "store": self.store,
            "max_message_bytes": self.max_message_bytes,
            "max_terms": self.max_terms,
        }

    def __repr__(self) -> str:
        return f"Schema({self.to_dict()!r})"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode
_encode_payload = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
).encode


def _utf8_len(s: str, what: str) -> int:
    if s.isascii():
        return len(s)
    try:
        return len(s.encode("utf-8"))
    except UnicodeEncodeError:
        raise MessageError(
            "encoding", f"{what} is not encodable as UTF-8 (a lone surrogate escape?)"
        ) from None


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def parse_message(raw: bytes, schema: Schema) -> Op:
    """Check one record and return its Op; raise MessageError otherwise.

    raw is the record's bytes (bytes, bytearray or memoryview). The rules
    are in docs/leaf-stream.md; every violation has its own `code`:
    too_large, encoding, json, not_object, unknown_key, missing, type,
    range, unknown_field, empty, limit."""
    if len(raw) > schema.max_message_bytes:
        raise MessageError(
            "too_large",
            f"message is {len(raw)} bytes, over the limit of {schema.max_message_bytes}",
        )
    if type(raw) is not bytes:
        raw = bytes(raw)
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MessageError("encoding", f"message is not UTF-8: {e}") from None
    try:
        msg = _decode(s)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, NaN, giant ints, nesting
        raise MessageError("json", f"message is not valid JSON: {e}") from None
    if type(msg) is not dict:
        raise MessageError("not_object", f"message must be a JSON object, not {_type_name(msg)}")
    if not msg.keys() <= _MESSAGE_KEYS:
        unknown = sorted(k for k in msg if k not in _MESSAGE_KEYS)
        raise MessageError(
            "unknown_key",
            f"unknown key(s) {', '.join(map(repr, unknown))} "
            f"(a message has op, key, version, fields, score, payload)",
        )
    op = msg.get("op")
    key = msg.get("key")
    version = msg.get("version")
    if type(key) is not str:
        if "key" not in msg:
            raise MessageError("missing", 'missing "key"')
        raise MessageError("type", f'"key" must be a string, not {_type_name(key)}')
    if type(version) is not int:
        if "version" not in msg:
            raise MessageError("missing", 'missing "version"')
        raise MessageError("type", f'"version" must be an integer, not {_type_name(version)}'
                           + (" with a fraction" if type(version) is float else ""))
    if not key or (len(key) > 256 and _utf8_len(key, '"key"') > KEY_MAX_BYTES):
        raise MessageError(
            "range", f'"key" must be 1..{KEY_MAX_BYTES} bytes of UTF-8 (got {len(key.encode())})'
        )
    if not INT64_MIN <= version <= INT64_MAX:
        raise MessageError("range", f'"version" {version} does not fit in a signed 64-bit integer')
    check_utf8 = "\\u" in s  # an escape may have produced a lone surrogate
    if check_utf8 and not key.isascii():
        _utf8_len(key, '"key"')

    if op != "index":
        if op == "delete":
            if len(msg) != 3:
                extra = sorted(k for k in msg if k not in _DELETE_KEYS)
                raise MessageError(
                    "unknown_key",
                    f"a delete has only op, key and version (got {', '.join(map(repr, extra))})",
                )
            return _new_op(Op, ("delete", key, version, None, [], 0.0, b""))
        if "op" not in msg:
            raise MessageError("missing", 'missing "op" ("index" or "delete")')
        raise MessageError("type", f'"op" must be "index" or "delete" (got {op!r})')

    score = msg.get("score", 0.0)
    if type(score) is not float:
        if type(score) is int:
            try:
                score = float(score)
            except OverflowError:
                raise MessageError("range", f'"score" {score} is too large') from None
        else:
            raise MessageError("type", f'"score" must be a number, not {_type_name(score)}')
    elif not -_FLOAT_MAX <= score <= _FLOAT_MAX:  # 1e999 decodes to inf
        raise MessageError("range", f'"score" must be finite (got {score!r})')

    store = schema._store
    if store is _STORE_SOURCE:
        blob = raw
    elif store is _STORE_PAYLOAD and "payload" in msg:
        try:
            blob = _encode_payload(msg["payload"]).encode("utf-8")
        except UnicodeEncodeError:
            raise MessageError(
                "encoding", '"payload" is not encodable as UTF-8 (a lone surrogate escape?)'
            ) from None
    else:
        blob = b""
    if check_utf8 and store is _STORE_SOURCE and "payload" in msg:
        try:
            _encode_payload(msg["payload"]).encode("utf-8")
        except UnicodeEncodeError:
            raise MessageError(
                "encoding", '"payload" is not encodable as UTF-8 (a lone surrogate escape?)'
            ) from None

    fields = msg.get("fields")
    if fields is None:
        if "fields" in msg:
            raise MessageError("type", '"fields" must be an object, not null')
        return _new_op(Op, ("index", key, version, None, [], score, blob))
    if type(fields) is not dict:
        raise MessageError("type", f'"fields" must be an object, not {_type_name(fields)}')
    kinds = schema._kinds
    text = None
    texts = None
    terms: list[str] = []
    for name, value in fields.items():
        prefix = kinds.get(name)
        if prefix is None:
            raise MessageError(
                "unknown_field", f"unknown field {name!r} (the schema names: {schema._names})"
            )
        if prefix is _TEXT:
            if type(value) is str:
                if text is None:
                    text = value
                else:
                    if texts is None:
                        texts = [text]
                    texts.append(value)
            elif type(value) is list and all(type(v) is str for v in value):
                if value:
                    if texts is None:
                        texts = [] if text is None else [text]
                    texts.extend(value)
                    text = ""
            else:
                raise MessageError(
                    "type",
                    f"text field {name!r} must be a string or an array of strings, "
                    f"not {_type_name(value)}",
                )
            continue
        # a keyword field: prefix is "name:"
        if type(value) is str and value:
            term = prefix + value
            if len(term) > 63 or check_utf8:
                _check_term(term, name, check_utf8)
            terms.append(term)
        elif type(value) is list:
            for v in value:
                if type(v) is str and v:
                    term = prefix + v
                    if len(term) > 63 or check_utf8:
                        _check_term(term, name, check_utf8)
                elif type(v) is int:
                    term = prefix + str(v)
                    if len(term) > 255:
                        _check_term(term, name, False)
                else:
                    _bad_keyword(name, v, True)
                terms.append(term)
        elif type(value) is int:
            term = prefix + str(value)
            if len(term) > 255:
                _check_term(term, name, False)
            terms.append(term)
        else:
            _bad_keyword(name, value, False)
    if len(terms) > schema.max_terms:
        raise MessageError(
            "limit", f"{len(terms)} keyword terms, over the limit of {schema.max_terms}"
        )
    if texts is not None:
        text = "\n".join(texts)
    if check_utf8 and text is not None and not text.isascii():
        _utf8_len(text, "a text field")
    return _new_op(Op, ("index", key, version, text, terms, score, blob))


def _check_term(term: str, name: str, check_utf8: bool) -> None:
    if len(term) > 63 or not term.isascii():
        n = _utf8_len(term, f"keyword field {name!r}")
        if n > TERM_MAX_BYTES:
            raise MessageError(
                "range",
                f"keyword field {name!r}: the term {term[:40]!r}... is {n} bytes; "
                f"a term is at most {TERM_MAX_BYTES}",
            )


def _bad_keyword(name: str, v: Any, in_array: bool) -> None:
    if type(v) is str:
        raise MessageError("empty", f"keyword field {name!r} has an empty value")
    raise MessageError(
        "type",
        f"keyword field {name!r} takes strings, integers or an array of them, "
        f"not {_type_name(v)}" + (" in an array" if in_array else ""),
    )


def segment_docs(ops: Iterable[Op]) -> list[tuple[Any, ...]]:
    """add_batch's tuples (key, version, text, terms, score, blob) for a run
    of index ops. A delete op in the run is a caller's bug (ValueError):
    apply_ops handles mixed runs."""
    docs = []
    for op in ops:
        if op[0] != "index":
            raise ValueError(f"segment_docs takes index ops only (got a {op[0]} of {op[1]!r})")
        docs.append(op[1:])
    return docs


def apply_ops(segment: Any, ops: Sequence[Op], older: Sequence[Any] = ()) -> ApplyResult:
    """Apply ops to a RealtimeSegment in stream order: each run of
    consecutive index ops is one add_batch, each delete is a versioned
    segment.delete (which leaves a tombstone, so an older index op that
    comes later is dropped as stale). older: the leaf's older segments,
    newest first (see RealtimeSegment.add_batch)."""
    added = stale = deleted = 0
    i = 0
    n = len(ops)
    while i < n:
        if ops[i][0] == "delete":
            if segment.delete(ops[i][1], ops[i][2], older=older):
                deleted += 1
            i += 1
            continue
        j = i
        while j < n and ops[j][0] == "index":
            j += 1
        k = segment.add_batch([op[1:] for op in ops[i:j]], older=older)
        added += k
        stale += (j - i) - k
        i = j
    return ApplyResult(added, stale, deleted)


def parse_records(
    records: Iterable[Sequence[Any]],
    schema: Schema,
    *,
    halt: bool = False,
) -> tuple[list[Op], list[BadMessage]]:
    """Parse a polled batch of (partition, offset, payload) records.

    Returns (ops, bad): the ops of the good records in order, and the
    records skipped, each logged at WARNING with its partition and offset.
    With halt=True the first bad record raises its MessageError instead
    (partition and offset filled in), and nothing of the batch is returned:
    the caller stops before that offset."""
    ops: list[Op] = []
    bad: list[BadMessage] = []
    for partition, offset, payload in records:
        try:
            ops.append(parse_message(payload, schema))
        except MessageError as e:
            e.partition = partition
            e.offset = offset
            if halt:
                raise
            log.warning("skipped a bad message: %s", e)
            bad.append(BadMessage(partition, offset, e))
    return ops, bad
