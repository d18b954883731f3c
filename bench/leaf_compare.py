#!/usr/bin/env python3
"""pinstack-leaf's realtime segment against tantivy, side by side, in one run.

Both engines get the same synthetic documents (bench/leaf_corpus.py: 500k
by default, seeded) and the same queries, each through its Python API
(PyPI `tantivy`, one writer thread), in this one process. Measured:

  ingest       documents indexed per second, and process CPU per document.
               ours: RealtimeSegment(writer_threads=1 and 2).add_batch in
               batches of --batch, from the first call to the last return
               (every document is searchable when add_batch returns); and
               one add() call per document. The document tuples are built
               before the clock starts.
               tantivy: one IndexWriter(num_threads=1), add_document of
               every document, one commit() at the end, reload(); timed
               twice: building each tantivy.Document from the same Python
               tuples inside the clock (the cost of its Python API, as our
               add_batch converts its tuples inside the clock), and with
               Documents built beforehand. Also num_threads=2, for context.
               Every configuration runs --ingest-rounds times (engines
               alternating); the median round is reported.
  visibility   with the corpus already indexed. ours: a writer thread
               add()s a document holding a unique term while a reader
               thread polls count(("term", uniq)) in a tight loop; latency
               = reader first sees it - add() returned (can be negative
               when the reader wins the race to the clock: clamped at 0).
               Also shown: the same ping-pong with a Python variable in
               place of the index (what two Python threads cost to notice
               each other on this machine).
               tantivy: add_document + commit + reload + search until
               found, per document, on its on-disk index (commit fsyncs)
               and on a RAM-directory index of the same corpus.
  queries      queries per second, one client thread, ~--queries-seconds
               per (kind, operation), over fixed lists of queries per kind
               (leaf_corpus.QUERY_KINDS): count, top-10 by static score,
               top-10 by BM25. tantivy's top-10 fetches the stored fields
               of the 10 hits (searcher.doc), as our hits carry key,
               version, score and blob; its hits-only rate is shown too.
               Counts of every query are compared between the engines.
               Last, ours' counts again after deleting 1% of the documents
               (with no delete, ours counts one term without walking it).
  memory       ours: stats() (bytes_total, bytes_per_doc, bytes_per_posting
               against input_bytes); tantivy: the size of its index
               directory after commit and merges.

Prints a table of ratios ours / tantivy (which direction is better is
said per row) and writes JSON (default bench/results/leaf_compare.json).

    python bench/leaf_compare.py                     # 500k documents
    python bench/leaf_compare.py --docs 1000000 --queries-seconds 3
    python bench/leaf_compare.py --quick             # seconds; for tests
    python bench/leaf_compare.py --engines tantivy   # one engine alone
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from leaf_corpus import QUERY_KINDS, make_corpus, make_queries  # noqa: E402

OPS = ("count", "top10 score", "top10 bm25")


# --- helpers ----------------------------------------------------------------

def cpu_seconds() -> float:
    """User + system CPU of this process, all threads (tantivy's too)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def dir_bytes(path: str) -> dict[str, int]:
    """Bytes of the files under path by extension ("idx", "store", ...), and "total"."""
    sizes: dict[str, int] = {"total": 0}
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                size = os.path.getsize(os.path.join(root, name))
            except OSError:
                continue
            ext = name.rsplit(".", 1)[-1] if "." in name else ""
            sizes[ext] = sizes.get(ext, 0) + size
            sizes["total"] += size
    return sizes


def percentiles(values_ns: list[int]) -> dict:
    v = sorted(values_ns)
    if not v:
        return {"n": 0, "p50_us": None, "p99_us": None, "max_us": None, "mean_us": None}

    def pct(p: float) -> float:
        return v[min(len(v) - 1, int(p * len(v)))] / 1000

    return {"n": len(v), "p50_us": pct(0.50), "p99_us": pct(0.99), "max_us": v[-1] / 1000,
            "mean_us": statistics.fmean(v) / 1000}


def qps(fn, queries: list, seconds: float) -> float:
    """Calls per second of fn over `queries`, looping whole passes for ~seconds."""
    calls = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for q in queries:
            fn(q)
        calls += len(queries)
        t = time.perf_counter()
        if t >= deadline:
            return calls / (t - t0)


def machine_info(tantivy_version: str | None) -> dict:
    model = "?"
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                      if ln.startswith("model name")), "?")
    except OSError:
        pass
    try:
        ours = importlib.metadata.version("pinstack")
    except importlib.metadata.PackageNotFoundError:
        ours = None
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tantivy": tantivy_version,
        "pinstack": ours,
        "loadavg_start": os.getloadavg()[0],
    }


# --- tantivy ----------------------------------------------------------------

class Tantivy:
    """tantivy through its Python bindings, with the schema of the corpus.

    key      text, raw tokenizer, stored only (not indexed: the most
             favourable choice for tantivy's ingest; ours keeps a key map)
    version  i64, stored
    body     text, default tokenizer, index_option="freq" (doc ids and term
             frequencies, no positions: what ours keeps)
    tags     text, raw tokenizer, index_option="basic"
    score    f64 fast field (top-K by static score: order_by_field)
    blob     bytes, stored
    """

    def __init__(self):
        import tantivy
        self.t = tantivy
        sb = tantivy.SchemaBuilder()
        sb.add_text_field("key", stored=True, tokenizer_name="raw", index_option="basic")
        sb.add_integer_field("version", stored=True)
        sb.add_text_field("body", tokenizer_name="default", index_option="freq")
        sb.add_text_field("tags", tokenizer_name="raw", index_option="basic")
        sb.add_float_field("score", fast=True)
        sb.add_bytes_field("blob", stored=True)
        self.schema = sb.build()
        self.version = importlib.metadata.version("tantivy")

    def document(self, d: tuple):
        # add_* was the fastest of the three ways of building a Document
        # (add_*, Document.from_dict, Document(**fields)) on this machine.
        doc = self.t.Document()
        doc.add_text("key", d[0])
        doc.add_integer("version", d[1])
        if d[2] is not None:
            doc.add_text("body", d[2])
        for term in d[3]:
            doc.add_text("tags", term)
        doc.add_float("score", d[4])
        doc.add_bytes("blob", d[5])
        return doc

    def query(self, q: tuple):
        """Our structured query -> a tantivy Query (built once, outside timings)."""
        t = self.t
        if q[0] == "term":
            field = "tags" if ":" in q[1] else "body"
            return t.Query.term_query(self.schema, field, q[1], index_option="freq"
                                      if field == "body" else "basic")
        occur = {"and": t.Occur.Must, "or": t.Occur.Should}[q[0]]
        return t.Query.boolean_query([(occur, self.query(sub)) for sub in q[1:]])

    def ingest(self, docs: list, path: str | None, threads: int, heap_per_thread: int,
               prebuilt: bool) -> tuple:
        """Index every document, commit once, reload. Returns (index, measures).

        path None: tantivy's RAM directory (no files, no fsync)."""
        if path is None:
            index = self.t.Index(self.schema)
        else:
            os.makedirs(path, exist_ok=True)
            index = self.t.Index(self.schema, path=path)
        writer = index.writer(heap_size=heap_per_thread * threads, num_threads=threads)
        built = [self.document(d) for d in docs] if prebuilt else None
        gc.collect()
        c0, t0 = cpu_seconds(), time.perf_counter()
        if prebuilt:
            add = writer.add_document
            for doc in built:
                add(doc)
        else:
            add, make = writer.add_document, self.document
            for d in docs:
                add(make(d))
        writer.commit()
        index.reload()
        t1, c1 = time.perf_counter(), cpu_seconds()
        del built
        writer.wait_merging_threads()      # outside the clock
        index.reload()
        searcher = index.searcher()
        out = {
            "seconds": t1 - t0,
            "docs_per_sec": len(docs) / (t1 - t0),
            "cpu_us_per_doc": (c1 - c0) / len(docs) * 1e6,
            "writer_threads": threads,
            "heap_bytes": heap_per_thread * threads,
            "documents_built_in_clock": not prebuilt,
            "num_docs": searcher.num_docs,
            "segments": searcher.num_segments,
            "directory": "ram" if path is None else "disk",
            "dir_bytes": dir_bytes(path) if path else None,
        }
        return index, out

    def count(self, searcher, tq) -> int:
        return searcher.search(tq, 1, count=True).count

    def visibility(self, index, docs: list) -> dict:
        """add_document + commit + reload + search until found, per document.

        The reader's reload policy is set to Manual first: with the default
        (OnCommit) a background reload races the explicit one, and on a RAM
        directory that made reload() take ~100 ms now and then."""
        index.config_reader(reload_policy="Manual")
        writer = index.writer(heap_size=50_000_000, num_threads=1)
        built = [(self.document(d), self.query(("term", d[3][-1]))) for d in docs]
        total, commit, reload = [], [], []
        for doc, tq in built:
            t0 = time.perf_counter_ns()
            writer.add_document(doc)
            writer.commit()
            t1 = time.perf_counter_ns()
            index.reload()
            t2 = time.perf_counter_ns()
            while index.searcher().search(tq, 1, count=True).count == 0:
                index.reload()
            t3 = time.perf_counter_ns()
            total.append(t3 - t0)
            commit.append(t1 - t0)
            reload.append(t2 - t1)
        writer.wait_merging_threads()
        index.reload()
        return {"add_to_visible": percentiles(total), "add_commit": percentiles(commit),
                "reload": percentiles(reload)}


# --- ours -------------------------------------------------------------------

def ours_ingest(docs: list, writer_threads: int, batch: int, single: bool) -> tuple:
    from pinstack.leaf import RealtimeSegment
    seg = RealtimeSegment(writer_threads=writer_threads, max_docs=max(1 << 20, 2 * len(docs)))
    batches = [docs[i:i + batch] for i in range(0, len(docs), batch)]
    gc.collect()
    c0, t0 = cpu_seconds(), time.perf_counter()
    if single:
        add = seg.add
        for key, version, text, terms, score, blob in docs:
            add(key, version, text=text, terms=terms, score=score, blob=blob)
    else:
        add_batch = seg.add_batch
        for b in batches:
            add_batch(b)
    t1, c1 = time.perf_counter(), cpu_seconds()
    stats = seg.stats()
    out = {
        "seconds": t1 - t0,
        "docs_per_sec": len(docs) / (t1 - t0),
        "cpu_us_per_doc": (c1 - c0) / len(docs) * 1e6,
        "writer_threads": writer_threads,
        "api": "add" if single else f"add_batch({batch})",
        "docs_live": len(seg),
        "stats": stats,
    }
    return seg, out


def ours_visibility(seg, docs: list, floor: bool = False) -> dict:
    """A writer thread add()s; a reader thread polls count() for the new term.

    floor=True runs the same two-thread ping-pong with the index out of the
    loop: the writer publishes document i by setting a Python variable
    instead of add(), and the reader polls count() of a term that does not
    exist, then that variable. It shows what two Python threads cost to
    notice each other here (the GIL, a futex wake-up). It is not a strict
    floor: add() releases the GIL while it indexes, so with the index the
    reader often already holds the GIL when the document commits."""
    n = len(docs)
    probes = [("term", d[3][-1]) for d in docs]
    call_ns, ret_ns, seen_ns = [0] * n, [0] * n, [0] * n
    seen = threading.Event()
    errors: list[BaseException] = []
    published = [0]
    missing = ("term", "no such term")

    def reader():
        try:
            count, clock = seg.count, time.perf_counter_ns
            for i in range(n):
                if floor:
                    while True:
                        count(missing)
                        if published[0] > i:
                            break
                else:
                    q = probes[i]
                    while not count(q):
                        pass
                seen_ns[i] = clock()
                seen.set()
        except BaseException as e:          # noqa: BLE001 - reported below
            errors.append(e)
            seen.set()

    def writer():
        try:
            add, clock = seg.add, time.perf_counter_ns
            for i, (key, version, text, terms, score, blob) in enumerate(docs):
                call_ns[i] = clock()
                if floor:
                    published[0] = i + 1
                else:
                    add(key, version, text=text, terms=terms, score=score, blob=blob)
                ret_ns[i] = clock()
                if not seen.wait(10):
                    raise TimeoutError(f"document {i} not visible after 10 s")
                seen.clear()
                if errors:
                    return
        except BaseException as e:          # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    raw = [s - r for s, r in zip(seen_ns, ret_ns)]
    return {
        "after_add_returned": percentiles([max(0, x) for x in raw]),
        "after_add_called": percentiles([s - c for s, c in zip(seen_ns, call_ns)]),
        "add_call": percentiles([r - c for r, c in zip(ret_ns, call_ns)]),
        "negative_clamped": sum(1 for x in raw if x < 0),
    }


# --- the run ----------------------------------------------------------------

def ratio(ours, theirs):
    if ours is None or theirs is None or not theirs:
        return None
    return ours / theirs


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def matches(q: tuple, words: set) -> bool:
    """Our structured query evaluated on a document's set of terms."""
    if q[0] == "term":
        return q[1] in words
    sub = (matches(c, words) for c in q[1:])
    return all(sub) if q[0] == "and" else any(sub)


# (name, engine, options) of every ingest configuration, in running order
INGEST_CONFIGS = [
    ("tantivy 1 thread", "tantivy", dict(threads=1, prebuilt=False, disk=True)),
    ("ours add_batch 1 thread", "ours", dict(threads=1, single=False)),
    ("tantivy 1 thread, prebuilt", "tantivy", dict(threads=1, prebuilt=True, disk=True)),
    ("ours add() per doc", "ours", dict(threads=1, single=True)),
    ("tantivy 2 threads", "tantivy", dict(threads=2, prebuilt=False, disk=True)),
    ("ours add_batch 2 threads", "ours", dict(threads=2, single=False)),
    ("tantivy 1 thread, RAM directory", "tantivy", dict(threads=1, prebuilt=False, disk=False)),
]
# the last round's index of these stays for the queries and visibility tests
KEPT = ("ours add_batch 2 threads", "tantivy 1 thread", "tantivy 1 thread, RAM directory")


class Run:
    """One comparison run: the phases in order, each filling its results."""

    def __init__(self, args, tmp: str):
        self.args = args
        self.tmp = tmp
        self.run_ours = args.engines in ("both", "ours")
        self.run_tantivy = args.engines in ("both", "tantivy")
        self.tv = Tantivy() if self.run_tantivy else None
        self.machine = machine_info(self.tv.version if self.tv else None)
        log(f"corpus: {args.docs:,} documents")
        self.corpus = make_corpus(args.docs, seed=args.seed)
        self.docs = self.corpus.docs
        self.queries = make_queries(self.corpus.vocab, per_kind=args.queries_per_kind,
                                    seed=args.seed + 10)
        vis = make_corpus(max(args.vis_docs, args.tantivy_vis_docs), seed=args.seed + 1000,
                          key_prefix="vis:", first_version=args.docs + 1).docs
        # a unique exact term per visibility document, last in its terms
        self.vis = [d[:3] + (d[3] + (f"uniq:{i:07d}",),) + d[4:] for i, d in enumerate(vis)]
        gc.collect()
        gc.freeze()      # the corpus: out of the collector's way, for both engines
        self.seg = self.t_index = self.t_ram = None
        self.ingest: dict[str, dict] = {}
        self.memory: dict[str, dict] = {}
        self.results: dict[str, dict] = {kind: {} for kind in QUERY_KINDS}
        self.visibility: dict[str, dict] = {}
        self.deleted_counts: dict[str, float] = {}
        self.checks = {"count_disagreements": [], "counts_compared": 0,
                       "top10_score_disagreements": [], "top10_score_compared": 0,
                       "top10_bm25_key_overlap": None,
                       "count_after_delete_disagreements": [],
                       "counts_after_delete_compared": 0}

    def engines(self, name_engine: str) -> bool:
        return self.run_ours if name_engine == "ours" else self.run_tantivy

    # -- ingest: --ingest-rounds rounds, engines alternating, the median round
    # per configuration reported, every round kept in the JSON.
    def measure_ingest(self) -> None:
        a = self.args
        configs = [c for c in INGEST_CONFIGS if self.engines(c[1])]
        rounds: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
        for rnd in range(a.ingest_rounds):
            last = rnd == a.ingest_rounds - 1
            for name, engine, cfg in (configs if rnd % 2 == 0 else configs[::-1]):
                log(f"ingest round {rnd + 1}/{a.ingest_rounds}: {name}")
                path = None
                if engine == "tantivy":
                    if cfg["disk"]:
                        path = os.path.join(self.tmp, f"t{len(os.listdir(self.tmp))}")
                    obj, m = self.tv.ingest(self.docs, path, cfg["threads"], a.tantivy_heap,
                                            prebuilt=cfg["prebuilt"])
                else:
                    obj, m = ours_ingest(self.docs, cfg["threads"], a.batch, cfg["single"])
                rounds[name].append(m)
                log(f"  {m['docs_per_sec']:,.0f} docs/s, {m['cpu_us_per_doc']:.2f} us CPU/doc")
                if last and name == KEPT[0]:
                    self.seg = obj
                elif last and name == KEPT[1]:
                    self.t_index = obj
                elif last and name == KEPT[2]:
                    self.t_ram = obj
                else:
                    del obj
                    if path:
                        shutil.rmtree(path, ignore_errors=True)
                gc.collect()
        for name, runs in rounds.items():
            med = dict(sorted(runs, key=lambda m: m["docs_per_sec"])[len(runs) // 2])
            med["rounds_docs_per_sec"] = [m["docs_per_sec"] for m in runs]
            med["rounds_cpu_us_per_doc"] = [m["cpu_us_per_doc"] for m in runs]
            med["last_round"] = runs[-1]      # the round whose index was kept
            self.ingest[name] = med

    # -- memory, of the kept indexes, before the visibility documents
    def measure_memory(self) -> None:
        if self.run_ours:
            s = self.seg.stats()
            mo = {k: s.get(k) for k in (
                "bytes_total", "bytes_postings", "bytes_dictionary", "bytes_forward",
                "bytes_arena", "input_bytes", "bytes_per_posting", "bytes_per_doc",
                "postings", "terms", "docs_live")}
            mo["total_over_input"] = ratio(s.get("bytes_total"), s.get("input_bytes"))
            self.memory["ours"] = mo
        if self.run_tantivy:
            last = self.ingest[KEPT[1]]["last_round"]
            files = last["dir_bytes"]
            db = files["total"]
            mt = {"dir_bytes": db, "files_by_extension": files, "segments": last["segments"],
                  "input_bytes": self.corpus.input_bytes,
                  "bytes_per_doc": db / len(self.docs),
                  "dir_over_input": db / self.corpus.input_bytes}
            if self.run_ours and self.memory["ours"].get("postings"):
                # the posting lists proper (.idx: doc ids and term frequencies),
                # over the same number of postings as ours holds
                mt["bytes_per_posting"] = files.get("idx", 0) / self.memory["ours"]["postings"]
            self.memory["tantivy"] = mt

    # -- do both engines give the same answers?
    def check_agreement(self, searcher, tq: dict) -> None:
        if not (self.run_ours and self.run_tantivy):
            return
        log("checking that both engines agree")
        seg, checks, overlaps = self.seg, self.checks, []
        for kind, qs in self.queries.items():
            for q, t in zip(qs, tq[kind]):
                ours_n, theirs_n = seg.count(q), self.tv.count(searcher, t)
                checks["counts_compared"] += 1
                if ours_n != theirs_n:
                    checks["count_disagreements"].append(
                        {"query": repr(q), "ours": ours_n, "tantivy": theirs_n})
                ours_s = [round(h.score, 5) for h in seg.search(q, 10, "score")]
                theirs_s = [round(s, 5) for s, _ in
                            searcher.search(t, 10, count=False, order_by_field="score").hits]
                checks["top10_score_compared"] += 1
                if ours_s != theirs_s:
                    checks["top10_score_disagreements"].append(
                        {"query": repr(q), "ours": ours_s, "tantivy": theirs_s})
                # BM25 details differ (tantivy quantizes document lengths to
                # one byte): the overlap of the top 10 is information only
                ours_k = {h.key.decode() for h in seg.search(q, 10, "bm25")}
                theirs_k = {searcher.doc(a).get_first("key")
                            for _, a in searcher.search(t, 10, count=False).hits}
                if theirs_k:
                    overlaps.append(len(ours_k & theirs_k) / len(theirs_k))
        checks["top10_bm25_key_overlap"] = statistics.fmean(overlaps) if overlaps else None
        for what in ("count_disagreements", "top10_score_disagreements"):
            if checks[what]:
                log(f"WARNING: {len(checks[what])} {what.replace('_', ' ')}; "
                    f"first: {checks[what][0]}")
            checks[what] = checks[what][:50]

    def ours_qps(self, op: str, qs: list) -> float:
        seg = self.seg
        if op == "count":
            return qps(seg.count, qs, self.args.queries_seconds)
        order = "score" if op == "top10 score" else "bm25"
        return qps(lambda q: seg.search(q, 10, order), qs, self.args.queries_seconds)

    def tantivy_qps(self, op: str, se, ts: list) -> dict:
        secs = self.args.queries_seconds
        if op == "count":
            # tantivy 0.2x's Python API counts through search(count=True) with
            # a limit >= 1; take the faster of two collectors.
            a = qps(lambda t: se.search(t, 1, count=True).count, ts, secs / 2)
            b = qps(lambda t: se.search(t, 1, count=True, order_by_field="score").count,
                    ts, secs / 2)
            return {"tantivy": max(a, b),
                    "tantivy_count_via": "bm25 top-1" if a >= b else "score top-1"}
        kw = {"order_by_field": "score"} if op == "top10 score" else {}
        return {
            "tantivy_hits_only": qps(lambda t: se.search(t, 10, count=False, **kw).hits,
                                     ts, secs / 2),
            "tantivy": qps(lambda t: [se.doc(a) for _, a in
                                      se.search(t, 10, count=False, **kw).hits], ts, secs),
        }

    def measure_queries(self) -> None:
        searcher = self.t_index.searcher() if self.run_tantivy else None
        tq = ({kind: [self.tv.query(q) for q in qs] for kind, qs in self.queries.items()}
              if self.run_tantivy else {})
        self.check_agreement(searcher, tq)
        for k_i, kind in enumerate(QUERY_KINDS):
            for op in OPS:
                row: dict = {}
                for eng in (("ours", "tantivy") if k_i % 2 == 0 else ("tantivy", "ours")):
                    if eng == "ours" and self.run_ours:
                        row["ours"] = self.ours_qps(op, self.queries[kind])
                    elif eng == "tantivy" and self.run_tantivy:
                        row.update(self.tantivy_qps(op, searcher, tq[kind]))
                self.results[kind][op] = row
                log(f"queries {kind:12s} {op:12s} "
                    + "  ".join(f"{k} {v:,.0f}/s" for k, v in row.items()
                                if isinstance(v, float)))

    def measure_visibility(self) -> None:
        a = self.args
        if self.run_ours:
            log(f"ours visibility: {a.vis_docs} documents")
            self.visibility["ours"] = ours_visibility(self.seg, self.vis[:a.vis_docs])
            self.visibility["python thread hand-off"] = ours_visibility(
                self.seg, self.vis[:a.vis_docs], floor=True)
        if self.run_tantivy:
            log(f"tantivy visibility: {a.tantivy_vis_docs} documents")
            self.visibility["tantivy"] = self.tv.visibility(
                self.t_index, self.vis[:a.tantivy_vis_docs])
            log(f"tantivy visibility, RAM directory: {a.tantivy_vis_docs} documents")
            self.visibility["tantivy RAM directory"] = self.tv.visibility(
                self.t_ram, self.vis[:a.tantivy_vis_docs])
            self.t_ram = None

    # -- counts once the segment has deletes. With no delete in the segment
    # ours counts a single term from its posting list's size, without walking
    # it; any delete makes every count walk the list and test the deleted
    # bitmap. tantivy keeps its no-delete figure as the reference (its key
    # field is not indexed, so it cannot delete by key here).
    def measure_deleted_counts(self, step: int = 100) -> None:
        if not self.run_ours:
            return
        seg, checks = self.seg, self.checks
        sample = [q for kind in QUERY_KINDS for q in self.queries[kind][:5]]
        before = [seg.count(q) for q in sample]
        gone = self.docs[::step]
        for d in gone:
            seg.delete(d[0])
        log(f"ours: deleted {len(gone):,} documents (1 in {step})")
        # each count must drop by exactly the deleted documents it matched
        gone_terms = [set(d[2].split()) | set(d[3]) for d in gone]
        for q, n0 in zip(sample, before):
            want = n0 - sum(1 for words in gone_terms if matches(q, words))
            got = seg.count(q)
            if got != want:
                checks["count_after_delete_disagreements"].append(
                    {"query": repr(q), "ours": got, "expected": want})
        checks["counts_after_delete_compared"] = len(sample)
        if checks["count_after_delete_disagreements"]:
            log(f"WARNING: counts after deletes disagree: "
                f"{checks['count_after_delete_disagreements'][:3]}")
        for kind in QUERY_KINDS:
            self.deleted_counts[kind] = qps(seg.count, self.queries[kind],
                                            self.args.queries_seconds)
            log(f"queries {kind:12s} count, 1% deleted: ours "
                f"{self.deleted_counts[kind]:,.0f}/s")

    # -- the flat table: name -> ours, tantivy, ratio, which is better
    def metrics(self) -> dict[str, dict]:
        metrics: dict[str, dict] = {}

        def metric(name, ours, theirs, better, unit, **extra):
            metrics[name] = {"ours": ours, "tantivy": theirs, "ratio": ratio(ours, theirs),
                             "better": better, "unit": unit, **extra}

        def ing(name, key="docs_per_sec"):
            return self.ingest.get(name, {}).get(key)

        metric("ingest 1 thread", ing("ours add_batch 1 thread"), ing("tantivy 1 thread"),
               "higher", "docs/s", note="tantivy builds its Documents in the clock")
        metric("ingest 1 thread, tantivy prebuilt", ing("ours add_batch 1 thread"),
               ing("tantivy 1 thread, prebuilt"), "higher", "docs/s",
               note="tantivy's Documents built before the clock")
        metric("ingest 2 threads vs tantivy 1", ing("ours add_batch 2 threads"),
               ing("tantivy 1 thread"), "higher", "docs/s")
        metric("ingest 2 threads vs tantivy 2", ing("ours add_batch 2 threads"),
               ing("tantivy 2 threads"), "higher", "docs/s")
        metric("ingest add() per doc", ing("ours add() per doc"), ing("tantivy 1 thread"),
               "higher", "docs/s")
        metric("ingest cpu 1 thread", ing("ours add_batch 1 thread", "cpu_us_per_doc"),
               ing("tantivy 1 thread", "cpu_us_per_doc"), "lower", "us/doc")
        metric("ingest cpu 2 threads", ing("ours add_batch 2 threads", "cpu_us_per_doc"),
               ing("tantivy 2 threads", "cpu_us_per_doc"), "lower", "us/doc")
        ours_vis = self.visibility.get("ours", {}).get("after_add_returned", {})
        for suffix, key, note in (("", "tantivy", "tantivy: index on disk (commit fsyncs)"),
                                  (", tantivy in RAM", "tantivy RAM directory",
                                   "tantivy: RAM directory (no files)")):
            theirs = self.visibility.get(key, {}).get("add_to_visible", {})
            for p in ("p50_us", "p99_us", "max_us"):
                metric(f"visibility {p[:-3]}{suffix}", ours_vis.get(p), theirs.get(p),
                       "lower", "us", note=note)
        for kind in QUERY_KINDS:
            for op in OPS:
                row = self.results[kind][op]
                extra = {}
                if "tantivy_hits_only" in row:
                    extra["tantivy_hits_only"] = row["tantivy_hits_only"]
                    extra["ratio_hits_only"] = ratio(row.get("ours"), row["tantivy_hits_only"])
                metric(f"qps {kind}, {op}", row.get("ours"), row.get("tantivy"), "higher",
                       "queries/s", **extra)
        for kind in QUERY_KINDS:
            metric(f"qps {kind}, count, ours 1% deleted", self.deleted_counts.get(kind),
                   self.results[kind]["count"].get("tantivy"), "higher", "queries/s",
                   note="ours after deleting 1% of documents; tantivy without deletes")
        mo, mt = self.memory.get("ours", {}), self.memory.get("tantivy", {})
        metric("memory bytes total", mo.get("bytes_total"), mt.get("dir_bytes"), "lower",
               "bytes", note="ours: RAM (stats); tantivy: index directory on disk")
        metric("memory bytes per doc", mo.get("bytes_per_doc"), mt.get("bytes_per_doc"),
               "lower", "bytes")
        metric("memory bytes per posting", mo.get("bytes_per_posting"),
               mt.get("bytes_per_posting"), "lower", "bytes",
               note="ours: bytes_postings / postings; tantivy: .idx files / postings")
        metric("memory size / input", mo.get("total_over_input"), mt.get("dir_over_input"),
               "lower", "x")
        return metrics


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"


def fmt_ratio(r) -> str:
    if r is None:
        return "-"
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.4f}x"


def print_header(title: str, m: dict) -> None:
    """The title line (with the machine) and the column heads of a
    ours-vs-tantivy table (this script's and leaf_server_compare.py's)."""
    print(f"{title}; {m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}, "
          f"Python {m['python']}; load {m['loadavg_start']:.1f} -> {m['loadavg_end']:.1f}")
    cols = (f"{'metric':44s} {'unit':>9s} {'tantivy':>12s} {'ours':>12s} "
            f"{'ours/tantivy':>13s}  better")
    print(cols)
    print("-" * len(cols))


def print_row(name: str, row: dict) -> None:
    print(f"{name:44s} {row['unit']:>9s} {fmt(row['tantivy']):>12s} "
          f"{fmt(row['ours']):>12s} {fmt_ratio(row['ratio']):>13s}  {row['better']}")


def print_table(run: Run, metrics: dict) -> None:
    m = run.machine
    print_header(f"pinstack-leaf vs tantivy {m['tantivy']}: {run.args.docs:,} docs", m)
    for name, row in metrics.items():
        print_row(name, row)
        if "tantivy_hits_only" in row:
            print(f"{'  tantivy without fetching the 10 docs':44s} {'':>9s} "
                  f"{fmt(row['tantivy_hits_only']):>12s} {'':>12s} "
                  f"{fmt_ratio(row['ratio_hits_only']):>13s}")
    vis = run.visibility
    if "ours" in vis:
        v, f = vis["ours"], vis["python thread hand-off"]["after_add_returned"]
        print(f"\nvisibility, ours: {v['after_add_returned']['n']} docs, "
              f"{v['negative_clamped']} negative latencies clamped to 0; add() itself "
              f"p50 {v['add_call']['p50_us']:.1f} us, p99 {v['add_call']['p99_us']:.1f} us")
        print(f"from add() called to seen: p50 {v['after_add_called']['p50_us']:.1f} us, "
              f"p99 {v['after_add_called']['p99_us']:.1f} us, "
              f"max {v['after_add_called']['max_us']:.1f} us")
        print(f"the same ping-pong with a Python variable in place of the index "
              f"(two Python threads noticing\neach other): "
              f"p50 {f['p50_us']:.1f} us, p99 {f['p99_us']:.1f} us, max {f['max_us']:.1f} us")
    c = run.checks
    if c["counts_compared"]:
        print(f"checks: {c['counts_compared']} queries; count disagreements "
              f"{len(c['count_disagreements'])}; top-10-by-score disagreements "
              f"{len(c['top10_score_disagreements'])}; top-10 BM25 key overlap "
              f"{fmt(c['top10_bm25_key_overlap'])}")
    if c["counts_after_delete_compared"]:
        print(f"counts after deletes: {c['counts_after_delete_compared']} queries, "
              f"{len(c['count_after_delete_disagreements'])} wrong")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=500_000, help="corpus documents, default 500k")
    ap.add_argument("--batch", type=int, default=1000, help="add_batch size, default 1000")
    ap.add_argument("--queries-seconds", type=float, default=2.0,
                    help="seconds per (query kind, operation, engine), default 2")
    ap.add_argument("--queries-per-kind", type=int, default=200)
    ap.add_argument("--vis-docs", type=int, default=2000,
                    help="documents of ours' visibility test, default 2000")
    ap.add_argument("--tantivy-vis-docs", type=int, default=100,
                    help="documents of tantivy's visibility test, default 100")
    ap.add_argument("--tantivy-heap", type=int, default=1_000_000_000,
                    help="tantivy writer heap per thread, bytes, default 1e9 "
                         "(500k documents fit in one segment)")
    ap.add_argument("--ingest-rounds", type=int, default=5,
                    help="ingest runs per configuration (median reported), default 5")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--engines", choices=("both", "ours", "tantivy"), default="both")
    ap.add_argument("--tmpdir", default=None, help="where tantivy's index directories go")
    ap.add_argument("--quick", action="store_true",
                    help="a small run (3000 docs, short loops) to check the script works")
    ap.add_argument("--json", default=str(HERE / "results" / "leaf_compare.json"))
    args = ap.parse_args()
    if args.quick:
        args.docs = min(args.docs, 3000)
        args.queries_seconds = min(args.queries_seconds, 0.03)
        args.queries_per_kind = min(args.queries_per_kind, 20)
        args.vis_docs = min(args.vis_docs, 50)
        args.tantivy_vis_docs = min(args.tantivy_vis_docs, 5)
        args.tantivy_heap = min(args.tantivy_heap, 50_000_000)
        args.ingest_rounds = 1

    tmp = tempfile.mkdtemp(prefix="leaf_compare.", dir=args.tmpdir)
    try:
        run = Run(args, tmp)
        run.measure_ingest()
        run.measure_memory()
        run.measure_queries()
        run.measure_visibility()
        run.measure_deleted_counts()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    run.machine["loadavg_end"] = os.getloadavg()[0]
    metrics = run.metrics()
    print_table(run, metrics)
    for m in run.ingest.values():
        m.pop("last_round", None)
    out = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "options": vars(args),
        "machine": run.machine,
        "corpus": run.corpus.summary(),
        "metrics": metrics,
        "ingest": run.ingest,
        "visibility": run.visibility,
        "queries": run.results,
        "checks": run.checks,
        "memory": run.memory,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
