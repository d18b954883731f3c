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
what keeps one bad message from stopping ingestion: the checks live in one
place, before anything reaches the index.

Where the rules live
--------------------
In C: src/_core/index/msgparse.c parses the record as strict JSON and
applies every rule in one pass over its bytes (its opening comment lists
what is accepted and refused); a Schema builds the C form of itself once
(pinstack._core._index.MessageParser) and parse_message / parse_records
only call it. This module keeps what is not on the hot path: the Schema
and its file format, MessageError and the Op, applying ops to a segment,
and logging skipped records.

Threads: everything here is a pure function of its arguments; a Schema is
immutable once built and may be shared by any number of threads (its C
parser is read-only; each call has its own work area).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from pinstack._core._index import MessageBatch, MessageParser

__all__ = [
    "ApplyResult",
    "BadMessage",
    "MessageError",
    "Op",
    "Schema",
    "SchemaError",
    "apply_ops",
    "batch_errors",
    "new_batch",
    "parse_message",
    "parse_records",
    "segment_docs",
]

log = logging.getLogger("pinstack.leaf.message")

DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
DEFAULT_MAX_TERMS = 1024

_SCHEMA_KEYS = frozenset(("text", "keywords", "store", "max_message_bytes", "max_terms"))
_STORES = frozenset(("source", "payload", "none"))


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

    __slots__ = ("text", "keywords", "store", "max_message_bytes", "max_terms", "_parser")

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
        seen: set[str] = set()
        for names, label in ((text, "text"), (keywords, "keywords")):
            for name in names:
                if not isinstance(name, str) or not 1 <= len(name) <= 128 or ":" in name:
                    raise SchemaError(
                        f"schema: {label}: a field name is a string of 1..128 characters "
                        f"without ':' (got {name!r})"
                    )
                if name in seen:
                    raise SchemaError(f"schema: field {name!r} is named twice")
                seen.add(name)
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
        self.max_message_bytes = max_message_bytes
        self.max_terms = max_terms
        self._parser = MessageParser(self.to_dict(), Op, MessageError)  # the rules, in C

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


def parse_message(raw: bytes, schema: Schema) -> Op:
    """Check one record and return its Op; raise MessageError otherwise.

    raw is the record's bytes (bytes, bytearray or memoryview). The rules
    are in docs/leaf-stream.md; every violation has its own `code`:
    too_large, encoding, json, not_object, unknown_key, missing, type,
    range, unknown_field, empty, limit. With store "source" the Op's blob
    is raw itself (as bytes)."""
    return schema._parser.parse(raw)


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
    newest first (see RealtimeSegment.add_batch). The walk is C
    (msgbatch.c's mb_apply_docs), shared with the ingest path."""
    if not ops:
        return ApplyResult(0, 0, 0)
    return ApplyResult(*segment.apply(ops, older))


def new_batch(schema: Schema) -> MessageBatch:
    """An empty MessageBatch for the schema: messages in bulk, parsed,
    routed, framed and applied in C with no Python object per message
    (the leaf's write and ingest paths)."""
    return MessageBatch(schema._parser)


def batch_errors(batch: MessageBatch, *, halt: bool = False,
                 log_skipped: bool = True) -> list[BadMessage]:
    """The bad records of a parsed read-side batch, as parse_records reports
    them: each with its partition and offset set (and, unless halting or
    told not to, logged at WARNING as skipped)."""
    bad: list[BadMessage] = []
    for _, partition, offset, e in batch.errors():
        e.partition = partition
        e.offset = offset
        if log_skipped and not halt:
            log.warning("skipped a bad message: %s", e)
        bad.append(BadMessage(partition, offset, e))
    return bad


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
    batch = new_batch(schema)
    batch.add_records(records)
    batch.parse(halt)  # C, GIL released
    bad = batch_errors(batch, halt=halt)
    if halt and bad:
        raise bad[0].error
    return batch.to_ops(), bad
