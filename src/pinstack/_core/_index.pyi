"""Type stub for pinstack._core._index (built from src/_core/index/_index.pyx).

The realtime segment of pinstack-leaf: an in-memory inverted index plus
forward index where a document is searchable the moment add() returns.
Public names are re-exported by pinstack.leaf; import from there.

Documents
---------
A document has a key (bytes or str; str is UTF-8 encoded; 1..1024 bytes), a
version (int64; newer wins), a text field (str or None) tokenized in C, a
list of exact terms, a static score (float) and a blob (bytes).

* text: lowercased (ASCII A-Z only), split into tokens: maximal runs of
  ASCII letters and digits and of bytes >= 0x80 (so UTF-8 letters stay
  inside tokens); tokens longer than 255 bytes are dropped. Each token is a
  term; its repetitions are its term frequency (kept up to 65535); the
  token count is the document length used by BM25.
* terms: indexed verbatim (no lowercasing), as given; a repeated term adds
  to its term frequency. 1..255 bytes each. Terms and text tokens share one
  term space.

Versions and keys: one key has at most one live document. add() of a key
that has a live document with a version greater than the new one is
dropped (returns -1, counted as `stale_dropped`); otherwise the new
document is added, committed, and then the old one is deleted (an update is
add-new + delete-old). A delete leaves a tombstone with its version, so an
add older than a versioned delete is dropped too.

Queries
-------
A query is either a string in the human syntax or a structured form:

    ("term", "cat")                 exact term (str or bytes)
    ("and", q1, q2, ...)            all of them (at least one child)
    ("or", q1, q2, ...)             any of them (at least one child)
    ("andnot", include, exclude)    include but not exclude
    ("all",)                        every live document

Human syntax: `cat AND (dog OR bird) -fish`. Words separated by spaces are
ANDed; AND, OR, NOT are operators (uppercase only); `-x` and `NOT x` mean
"and not x"; parentheses group; NOT binds tighter than AND, AND tighter than
OR; `*` is every document; "double quotes" make an exact term of anything
(backslash escapes `"` and `\\`). A query that is only negative (`-fish`)
means every document except those. Terms are matched exactly: text tokens
are lowercase, so search lowercase. Bad syntax raises ValueError naming the
position.

Results are live (committed, not deleted) documents, one per key (a key
being updated shows either its old or its new version, never both), best
first:

    order="score"  static score, descending; ties: higher doc id first
    order="bm25"   BM25 (k1, b from the constructor): the sum over the
                   query's terms through which the document matches (an
                   OR branch that does not match, or an AND-NOT's exclude
                   side, adds nothing), with idf = ln(1 + (N - df + 0.5) /
                   (df + 0.5)), N the committed documents and df the
                   term's postings (deleted documents included, as
                   Lucene does), avgdl over the committed documents;
                   ties: higher doc id first
    order="recent" doc id descending (newest first)

Threads: every method except add/add_batch/delete/seal may be called from
any number of threads at once; search/count/get run with the GIL released
and never block writers. add/add_batch/delete/seal serialize among
themselves (a writer mutex); while they run, readers keep reading.

Many segments (a leaf's LSM; pinstack.leaf.engine drives it)
------------------------------------------------------------
SegmentFile maps an immutable segment file, written by write_segment from
sealed RealtimeSegments and other SegmentFiles (flush and compaction are
the same call). search_view / count_view / get_view query a sequence of
segments, oldest first, as one index: one snapshot (taken from the newest
RealtimeSegment in it), BM25 statistics over all of them, newer segments
first on ties and for order="recent". An active RealtimeSegment given
older=[...] (newest first) treats those segments' keys as its own: stale
adds are dropped, and an update or delete removes the version that lives
in an older segment, in the same step as its own commit. Deletion stamps
are global sequence numbers: a segment following another is created with
base=previous.seq_end.

The file format, its checks and the deletion rules are in
src/_core/index/segfile.h.
"""

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Union

Key = Union[bytes, str]
Term = Union[bytes, str]
Query = Union[str, tuple[Any, ...]]

class Hit(NamedTuple):
    key: bytes
    version: int
    score: float     # BM25 for order="bm25", else the static score
    blob: bytes
    doc_id: int      # local id within this segment (add order)

class SegmentFull(RuntimeError):
    """The segment holds max_docs documents: seal it and start another."""

class SegmentSealed(RuntimeError):
    """A write to a sealed segment."""

class SegmentFileError(Exception):
    """A segment file that cannot be used (missing, truncated, damaged, a
    newer format) or could not be written. The message says which."""

Segment = Union["RealtimeSegment", "SegmentFile"]

class RealtimeSegment:
    def __init__(
        self,
        writer_threads: int = 1,      # term-shard writer threads (1..64)
        max_docs: int = 1 << 24,      # capacity; add beyond raises SegmentFull
        k1: float = 1.2,
        b: float = 0.75,
        base: int = 0,                # global sequence number of doc 0, minus 1
    ) -> None: ...
    base: int
    @property
    def seq_end(self) -> int:
        """base + committed documents: the base of the segment after this one."""

    def add(
        self,
        key: Key,
        version: int,
        *,
        text: str | None = None,
        terms: Iterable[Term] = (),
        score: float = 0.0,
        blob: bytes = b"",
    ) -> int:
        """Index one document; it is searchable when this returns.

        Returns its doc id, or -1 if dropped as stale (older version)."""

    def add_batch(self, docs: Sequence[tuple[Any, ...]],
                  older: Sequence[Segment] | None = None) -> int:
        """The fast path: index many documents with all writer threads.

        Each item is (key, version, text, terms, score, blob), where text may
        be None, terms any sequence of str/bytes, blob bytes. Documents are
        committed in order, each as soon as all its terms are in (readers
        see a prefix of the batch growing). Returns how many were added
        (not dropped as stale). Raises ValueError for a malformed item
        before anything of the batch is indexed. older: the segments before
        this one, newest first (see "Many segments")."""

    def apply(self, ops: Sequence[tuple[Any, ...]],
              older: Sequence[Segment] | None = None) -> tuple[int, int, int]:
        """ops (kind, key, version, text, terms, score, blob) with kind
        "index" or "delete", in order: each run of index ops one add_batch,
        each delete a versioned delete (msgbatch.c, the ingest path's own
        walk). Returns (added, stale, deleted)."""
    def delete(self, key: Key, version: int | None = None,
               older: Sequence[Segment] | None = None) -> bool:
        """Delete the key's live document. With a version, only if the live
        document is not newer, and leave a tombstone of that version.
        True if a document was deleted."""

    def search(self, query: Query, k: int = 10, order: str = "score") -> list[Hit]: ...
    def count(self, query: Query) -> int:
        """Number of live documents matching. A key being updated counts
        once: a query sees either the old or the new version, never both,
        never neither."""
    def get(self, key: Key) -> Hit | None:
        """The key's live document, or None."""
    def seal(self) -> None:
        """Freeze: later writes raise SegmentSealed; reads go on. Idempotent."""
    @property
    def sealed(self) -> bool: ...
    def __len__(self) -> int:
        """Live documents."""
    def stats(self) -> dict[str, Any]:
        """Counters and memory, all ints except the ratios (floats):
        docs_added, docs_committed, docs_live, docs_deleted, stale_dropped,
        terms, postings, writer_threads, max_docs, sealed (0/1),
        bytes_postings, bytes_dictionary, bytes_forward, bytes_arena,
        bytes_total, input_bytes (raw size of everything given to add:
        key + text + terms + blob), bytes_per_posting, bytes_per_doc,
        generation, retired_pending, reclaimed."""

def parse_query(query: str) -> tuple[Any, ...]:
    """The structured form of a human-syntax query (raises ValueError)."""

class SegmentFile:
    """An immutable segment file, mapped read-only and verified (checksum,
    every offset) on open: SegmentFileError if it cannot be used. Its
    deletions live in memory beside it (segfile.h)."""
    path: str
    def __init__(self, path: str) -> None: ...
    @property
    def docs(self) -> int:
        """Documents in the file, deleted ones included."""
    def __len__(self) -> int:
        """Live documents."""
    def stats(self) -> dict[str, Any]:
        """path, docs, docs_deleted, docs_live, tombstones, terms, postings,
        bytes (the file's size)."""
    def search(self, query: Query, k: int = 10, order: str = "score") -> list[Hit]: ...
    def count(self, query: Query) -> int: ...
    def get(self, key: Key) -> Hit | None: ...

class Remap:
    """Where each input document of write_segment went."""
    def carry(self, out: SegmentFile) -> int:
        """Copy the deletions that landed on the inputs since the write onto
        `out` (the file written from them); returns how many. From the
        thread that writes the active segment, between its writes."""

def write_segment(path: str, inputs: Sequence[Segment], snapshot: int, *,
                  max_bytes_per_sec: int = 0) -> tuple[dict[str, int], Remap]:
    """Write inputs (oldest first; RealtimeSegments must be sealed) as one
    file at path (via path.tmp, fsync, rename): every document live at
    `snapshot` (view_snapshot), in order, terms merged, tombstones kept.
    Stats: docs, dropped, tombstones, terms, postings, bytes. The GIL is
    released; readers of the inputs go on."""

def search_view(sources: Sequence[Segment], query: Query, k: int = 10,
                order: str = "score") -> list[Hit]: ...
def count_view(sources: Sequence[Segment], query: Query) -> int: ...
def get_view(sources: Sequence[Segment], key: Key) -> Hit | None: ...
def view_snapshot(sources: Sequence[Segment]) -> int:
    """The snapshot a query over sources would take now."""
def shadow(files: Sequence[SegmentFile]) -> int:
    """After a restart: each newer file's keys delete the older files'
    documents of the same keys. Returns how many were deleted."""

class MessageParser:
    """The C parser of leaf stream messages (src/_core/index/msgparse.c)
    for one schema; pinstack.leaf.message wraps it (parse_message,
    new_batch), which is where to call it from. Read-only after
    construction: any number of threads may parse at once."""
    def __init__(self, schema: dict[str, Any], op_type: Any, error_type: Any) -> None:
        """schema: Schema.to_dict() of a validated Schema; op_type: the Op
        NamedTuple; error_type(code, message) is raised for a bad message."""
    def parse(self, raw: bytes) -> Any:
        """One record -> an op_type, or raise error_type(code, message)."""

def encode_records(payloads: Sequence[bytes], first_offset: int, start_pos: int,
                   last_index_pos: int, max_record_bytes: int = ...
                   ) -> tuple[bytes, int, list[tuple[int, int]]]:
    """The embedded log's records for payloads (src/_core/index/logrec.c),
    numbered from first_offset, for file position start_pos: (data, new
    last_index_pos, [(offset, position)] sparse index entries to add).
    ValueError for a payload over max_record_bytes (at most 64 MiB).
    pinstack.leaf.stream.record.encode is the caller to use."""
def decode_records(buf: bytes, pos: int, offset: int, max_records: int,
                   skip_below: int = -1, max_bytes: int = ..., split: bool = True
                   ) -> tuple[Any, int, int, int, int, int, int, int, int]:
    """Check the records of buf[pos:] (logrec.c): (records or their count,
    first_pos, pos, next offset, problem 0..3, found_offset, found_length,
    need, payload bytes). pinstack.leaf.stream.record.decode is the caller
    to use."""

class MessageBatch:
    """Leaf messages in bulk (src/_core/index/msgbatch.c): spans into
    buffers it keeps referenced, parsed, routed, framed and applied in C
    with the GIL released, no Python object per message.
    pinstack.leaf.message.new_batch makes one for a schema.

    Write side: add_ndjson / add_payloads, parse, route, then frame per
    partition (Log.append takes the batch). Read side: add_log_run (from
    EmbeddedSource.poll_into) or add_records, parse, apply in slices. A
    batch is parsed once; nothing can be added after. One thread at a
    time, except frame(), which only reads (appenders of different
    partitions call it at once)."""
    parsed: bool
    def __init__(self, parser: MessageParser) -> None: ...
    def add_ndjson(self, body: bytes) -> None:
        """The non-blank lines of an NDJSON body (split at "\n", trailing
        "\r"s dropped, blank: only ASCII whitespace), numbered from 1."""
    def add_payloads(self, payloads: Sequence[bytes]) -> None: ...
    def add_records(self, records: Sequence[Sequence[Any]]) -> None:
        """(partition, offset, payload) records."""
    def add_log_run(self, partition: int, buf: bytes, pos: int, count: int,
                    first_offset: int) -> None:
        """count records back to back at buf[pos:] that decode_records
        checked, offsets first_offset, first_offset + 1, ..."""
    def parse(self, halt: bool = False) -> int:
        """Parse every message (halt: stop after the first bad one);
        returns how many were parsed."""
    def __len__(self) -> int: ...
    @property
    def ops(self) -> int: """Good messages."""
    @property
    def deletes(self) -> int: """Delete ops among them."""
    @property
    def bad(self) -> int: ...
    @property
    def first_bad(self) -> int | None: ...
    def errors(self) -> list[tuple[int, int | None, int | None, Any]]:
        """[(index, partition, offset or NDJSON line, error)] of the bad
        messages, in order; error is the parser's error_type."""
    def to_ops(self) -> list[Any]:
        """The good messages as the parser's op_type tuples."""
    def route(self, partitions: int) -> list[int]:
        """Give each good message its key's partition, crc32(UTF-8 key) %
        partitions; returns the messages per partition."""
    def frame(self, partition: int, first_offset: int, start_pos: int, last_index_pos: int,
              max_record_bytes: int = ...) -> tuple[bytes, int, int, list[tuple[int, int]]]:
        """That partition's good messages as log records: (data, records,
        new last_index_pos, sparse index entries), as encode_records."""
    def apply(self, segment: RealtimeSegment, older: Sequence[Segment] | None,
              op_from: int, op_to: int) -> tuple[int, int, int, int]:
        """Good messages [op_from, op_to) into the segment in stream order
        (as RealtimeSegment.apply): (added, stale, deleted, deletes)."""
    def positions(self, stop: int | None = None) -> dict[int, int]:
        """{partition: offset after its last message} over messages [0, stop)."""
    def rewind(self, start: int) -> dict[int, int]:
        """{partition: offset of its first message} over messages [start, ...)."""
