#!/usr/bin/env python3
"""pinstack-leaf's server with tantivy as its index: the same HTTP server,
embedded log, ingest thread and message parsing, only the Engine replaced.

    python bench/leaf_tantivy_server.py serve --data DIR --port 0 [serve options]

takes exactly the command line of `pinstack-leaf` (pinstack.leaf.cli) and
runs it with its index built by TantivyEngine below instead of Engine.
bench/leaf_server_compare.py starts it beside a real `python -m
pinstack.leaf serve`, so that HTTP, JSON, the log and its fsyncs cost both
the same and the index is the one difference.

TantivyEngine implements what service.Leaf calls on its engine: checkpoint,
apply, search, count, get, stats, flush, compact, close, over a tantivy
index (PyPI `tantivy`) in the engine's directory (DATA/index):

    apply     the leaf's semantics: a message older than the key's indexed
              version (or its delete) is dropped as stale; an update deletes
              the key's document (delete_documents_by_term on the key field)
              and adds the new one; a delete removes it if its version is at
              least the indexed one. Versions live in a Python dict, as our
              engine keeps a key map. Then commit() and reload(): a document
              is visible to searches when apply returns, which is what the
              leaf promises (and what makes the ingest thread's batches, up
              to LeafConfig.poll_max_records, tantivy's commit unit).
    search    structured queries (the leaf parses the syntax) translated to
              tantivy queries: a term with ":" is a keyword term ("tags"
              field, raw), any other a text token ("body" field, default
              tokenizer); and/or/andnot/all as boolean and all-queries.
              order=score sorts by the fast field "score", order=bm25 by
              tantivy's BM25; order=recent is refused (400). The k hits'
              stored fields (key, version, score, blob) are fetched, as ours
              return them.
    restart   the index directory is wiped on open and checkpoint() is
              empty: the leaf replays its log from the start (enough for a
              benchmark; tantivy's commit has no room for stream positions
              in its Python API).

Schema, as bench/leaf_compare.py's but with the key indexed (raw) so that
updates and deletes can find it, and the score stored too: key (raw,
stored, indexed), version (i64, stored), body (default tokenizer, doc ids
and term frequencies, no positions), tags (raw, doc ids only), score (f64,
fast and stored), blob (bytes, stored).

It goes in through the service's one hook for this,
pinstack.leaf.cli.main(engine_factory=...) -> LeafConfig.engine_factory.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

HEAP_BYTES = 256 << 20  # the writer's memory budget (tantivy's minimum is 15 MB a thread)


class TantivyHit(NamedTuple):
    """What the leaf reads from a hit (pinstack._core._index.Hit's fields)."""

    key: bytes
    version: int
    score: float
    blob: bytes
    doc_id: int


class TantivyEngine:
    """A tantivy index behind service.Leaf's Engine interface."""

    def __init__(self, data_dir: str | None = None, *, writer_threads: int = 1,
                 heap_bytes: int = HEAP_BYTES, **_ignored: Any) -> None:
        import tantivy
        self.t = tantivy
        sb = tantivy.SchemaBuilder()
        sb.add_text_field("key", stored=True, tokenizer_name="raw", index_option="basic")
        sb.add_integer_field("version", stored=True)
        sb.add_text_field("body", tokenizer_name="default", index_option="freq")
        sb.add_text_field("tags", tokenizer_name="raw", index_option="basic")
        sb.add_float_field("score", stored=True, fast=True)
        sb.add_bytes_field("blob", stored=True)
        self.schema = sb.build()
        self.data_dir = data_dir
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)   # see "restart" above
            os.makedirs(data_dir)
            self.index = tantivy.Index(self.schema, path=data_dir)
        else:
            self.index = tantivy.Index(self.schema)
        self.index.config_reader(reload_policy="Manual")
        self.writer = self.index.writer(heap_size=heap_bytes * writer_threads,
                                        num_threads=writer_threads)
        self.searcher = self.index.searcher()
        self._versions: dict[str, int] = {}   # live documents
        self._tombstones: dict[str, int] = {}  # deleted keys, by the delete's version
        self._positions: dict[int, int] = {}
        self._lock = threading.Lock()          # apply, flush, close
        self._closed = False
        self.counters: dict[str, float] = {"commits": 0, "commit_seconds": 0.0,
                                           "reload_seconds": 0.0, "applied_ops": 0,
                                           "stale_dropped": 0}
        self.version = importlib.metadata.version("tantivy")

    # ---- writes (the ingest thread) ----------------------------------------------------

    def checkpoint(self) -> dict[int, int]:
        return {}

    def positions(self) -> dict[int, int]:
        return dict(self._positions)

    def document(self, key: str, version: int, text: str | None, terms: Sequence[str],
                 score: float, blob: bytes) -> Any:
        doc = self.t.Document()
        doc.add_text("key", key)
        doc.add_integer("version", version)
        if text is not None:
            doc.add_text("body", text)
        for term in terms:
            doc.add_text("tags", term)
        doc.add_float("score", score)
        doc.add_bytes("blob", blob)
        return doc

    def apply(self, ops: Sequence[Any], positions: Mapping[int, int]) -> Any:
        from pinstack.leaf.message import ApplyResult
        added = stale = deleted = 0
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            versions, tombs, w = self._versions, self._tombstones, self.writer
            for op in ops:
                key, version = op[1], op[2]
                live = versions.get(key)
                if op[0] == "index":
                    newest = live if live is not None else tombs.get(key)
                    if newest is not None and newest > version:
                        stale += 1
                        continue
                    if live is not None:
                        w.delete_documents_by_term("key", key)
                    w.add_document(self.document(*op[1:]))
                    versions[key] = version
                    tombs.pop(key, None)
                    added += 1
                elif live is None:
                    tombs[key] = max(version, tombs.get(key, version))
                elif live <= version:
                    w.delete_documents_by_term("key", key)
                    del versions[key]
                    tombs[key] = version
                    deleted += 1
            t0 = time.perf_counter()
            w.commit()
            t1 = time.perf_counter()
            self.index.reload()
            self.searcher = self.index.searcher()
            t2 = time.perf_counter()
            c = self.counters
            c["commits"] += 1
            c["commit_seconds"] += t1 - t0
            c["reload_seconds"] += t2 - t1
            c["applied_ops"] += len(ops)
            c["stale_dropped"] += stale
            self._positions.update(positions)
        return ApplyResult(added, stale, deleted)

    # ---- reads (any thread) -------------------------------------------------------------

    def query(self, q: Any) -> Any:
        """The leaf's structured query as a tantivy Query (ValueError if not one)."""
        t = self.t
        if not isinstance(q, tuple) or not q:
            raise ValueError(f"not a structured query: {q!r}")
        op = q[0]
        if op == "term":
            term = q[1].decode("utf-8") if isinstance(q[1], bytes) else q[1]
            field = "tags" if ":" in term else "body"
            return t.Query.term_query(self.schema, field, term,
                                      index_option="freq" if field == "body" else "basic")
        if op == "all":
            return t.Query.all_query()
        if op in ("and", "or"):
            occur = t.Occur.Must if op == "and" else t.Occur.Should
            return t.Query.boolean_query([(occur, self.query(c)) for c in q[1:]])
        if op == "andnot":
            return t.Query.boolean_query([(t.Occur.Must, self.query(q[1])),
                                          (t.Occur.MustNot, self.query(q[2]))])
        raise ValueError(f"query: unknown operator {op!r}")

    def search(self, query: Any, k: int = 10, order: str = "score") -> list[TantivyHit]:
        if order not in ("score", "bm25"):
            raise ValueError(f"order={order} is not supported by the tantivy engine "
                             f"(score, bm25)")
        searcher = self.searcher
        kw = {"order_by_field": "score"} if order == "score" else {}
        result = searcher.search(self.query(query), k, count=False, **kw)
        return [self._hit(searcher, s, a) for s, a in result.hits]

    def _hit(self, searcher: Any, score: float, addr: Any) -> TantivyHit:
        doc = searcher.doc(addr)
        return TantivyHit(doc.get_first("key").encode("utf-8"), doc.get_first("version"),
                          float(score), doc.get_first("blob") or b"", addr.doc)

    def count(self, query: Any) -> int:
        return self.searcher.search(self.query(query), 1, count=True).count

    def get(self, key: bytes | str) -> TantivyHit | None:
        if isinstance(key, bytes):
            key = key.decode("utf-8")
        searcher = self.searcher
        q = self.t.Query.term_query(self.schema, "key", key, index_option="basic")
        hits = searcher.search(q, 1, count=False).hits
        if not hits:
            return None
        doc = searcher.doc(hits[0][1])
        return self._hit(searcher, doc.get_first("score"), hits[0][1])

    # ---- admin and lifecycle --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        s = self.searcher
        return {"engine": f"tantivy {self.version}", "docs_live": s.num_docs,
                "segments": s.num_segments, "positions": dict(self._positions),
                **self.counters}

    def flush(self, timeout: float = 60.0) -> dict[str, Any]:
        return {"note": "every apply commits: nothing to flush"}

    def compact(self, timeout: float = 300.0) -> dict[str, Any]:
        return {"note": "tantivy merges segments in its own background threads"}

    def close(self, flush: bool = True) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.writer.commit()
                self.writer.wait_merging_threads()
            except Exception:  # noqa: BLE001 - closing; the log has everything
                pass


def main(argv: list[str] | None = None) -> int:
    from pinstack.leaf.cli import main as leaf_main

    return leaf_main(argv, engine_factory=TantivyEngine)


if __name__ == "__main__":
    sys.exit(main())
