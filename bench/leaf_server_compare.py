#!/usr/bin/env python3
"""pinstack-leaf's server against tantivy doing the same work, in one run,
over a real corpus (bench/leaf_real_corpus.py: Debian's dict-gcide and
wordnet-base, 243,895 entries by default).

Two servers, each a subprocess with a fresh temporary --data, the default
fsync policy (always) and the corpus's schema (leaf_real_corpus.SCHEMA:
store "payload", so a hit carries the message's small payload; --store
source makes it the whole message, the leaf's default):

    ours     python -m pinstack.leaf serve
    tantivy  python bench/leaf_tantivy_server.py serve: the same server
             code (HTTP, embedded log, ingest thread, message parsing) with
             its Engine replaced by a tantivy index that commits and reloads
             after every batch the ingest thread applies, so that a document
             is searchable when the leaf says so. The index is the only
             difference between the two.

and tantivy in this process, through its Python API, where a server is not
the point (labeled "in-process" in the table). Clients are other processes
(multiprocessing, fork), on keep-alive HTTP/1.1 connections with a minimal
client (prebuilt requests; responses framed by Content-Length). Measured:

  ingest       the whole corpus POSTed to /documents as NDJSON, --batch
               messages a request, by --ingest-clients processes at once,
               each sending its share of batches one after the other; from
               the start until a count of every document ("*", count=true,
               polled every 20 ms) returns them all: documents/s "until
               visible"; also "acked" (until the last POST was answered), the
               server's CPU per document (utime + stime of all its threads,
               /proc/PID/stat) and its RSS afterwards. In-process tantivy:
               add_document of every document, one commit(), reload() (as in
               bench/leaf_compare.py: one indexing thread, heap
               --tantivy-heap), the Documents built inside the clock.
  visibility   with the corpus loaded and a background load of writes
               (--bg-rate documents/s in POSTs of --bg-batch, another
               process), a probe process POSTs one document holding a unique
               word on one connection and, from the moment it has sent it,
               searches for that word on a second connection, again as soon
               as each answer arrives (select() on both). Per sample: write
               acked (POST sent -> its answer), write visible (POST sent ->
               the first search answer that holds it), ack to visible (clamped
               at 0: the search can win the race against the POST's answer).
               --vis-samples samples, 1-5 ms apart. In-process tantivy:
               add_document + commit + reload + search until found, per
               document, on its on-disk index of the corpus (commit fsyncs),
               no background load (bench/leaf_compare.py's measurement).
               Also, just before: fdatasync after a 500-byte append in the
               servers' file system, --vis-samples times (what one fsync
               costs on the machine at that moment: the floor under a
               write's acknowledgement with fsync "always").
  queries      queries/s over HTTP: GET /search?q=...&k=10&order=score|bm25
               (the default hit fields: key, version, score, payload), by
               --query-clients processes, one connection each, closed loop,
               ~--queries-seconds per row, over leaf_real_corpus.make_queries
               (term common/medium/rare, tag, AND, OR; --queries-per-kind
               each); the two servers alternate which goes first. Also each
               request's latency (p50/p99 in the JSON) and server CPU per
               query.
  checks       before the query rows, every query is asked of both servers
               with count=true: counts must agree, and the top-10 static
               scores; the BM25 top-10s' key overlap is information only.

Prints a table of ratios ours / tantivy (which direction is better is said
per row) and writes JSON (default bench/results/leaf_server_compare.json).

    python bench/leaf_server_compare.py              # the whole corpus, a few minutes
    python bench/leaf_server_compare.py --quick      # seconds; for the smoke test
    python bench/leaf_server_compare.py --docs 50000 --queries-seconds 1

Only 127.0.0.1 is used; every loop is bounded in count and time. The
machine's cores are shared by server, clients and the other server (idle
while it is not measured; each phase first waits until both servers are
idle, e.g. after tantivy's background merges).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import multiprocessing as mp
import os
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from leaf_compare import (  # noqa: E402
    Tantivy,
    fmt,
    log,
    machine_info,
    percentiles,
    print_header,
    print_row,
    ratio,
)
from leaf_real_corpus import (  # noqa: E402
    QUERY_KINDS,
    SCHEMA,
    CorpusMissing,
    load,
    make_queries,
    query_string,
)

SERVERS = ("ours", "tantivy")
PHASES = ("ingest", "checks", "queries", "visibility", "inprocess")
ORDERS = ("score", "bm25")
TARGETS = {"visibility_p99_us_http": 5000, "ingest_docs_per_sec": 100_000,
           "qps_ratio_vs_tantivy": 1.0}
CLK_TCK = os.sysconf("SC_CLK_TCK")
_CTX = mp.get_context("fork")

# Filled in the parent before the client processes fork (they inherit them).
_INGEST_REQUESTS: list[bytes] = []
_MESSAGES: list[bytes] = []


# --- a minimal keep-alive HTTP/1.1 client ---------------------------------------

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)


def get_request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: leaf\r\n\r\n".encode()


def post_request(path: str, body: bytes, ctype: str = "application/x-ndjson") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: leaf\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def search_path(q: str, **params) -> str:
    return "/search?" + urllib.parse.urlencode({"q": q, **params})


class Conn:
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self, host: str, port: int, timeout: float = 120.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, request: bytes) -> None:
        self.sock.sendall(request)

    def read(self) -> tuple[int, bytes]:
        """(status, body) of the next response."""
        buf = self.buf
        while True:
            end_head = buf.find(b"\r\n\r\n")
            if end_head >= 0:
                break
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buf += chunk
        head = buf[:end_head]
        m = _CONTENT_LENGTH.search(head)
        end = end_head + 4 + (int(m.group(1)) if m else 0)
        while len(buf) < end:
            chunk = self.sock.recv(max(65536, end - len(buf)))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buf += chunk
        self.buf = buf[end:]
        return int(head[9:12]), buf[end_head + 4:end]

    def request(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        return self.read()

    def json(self, request: bytes) -> dict:
        status, body = self.request(request)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
        return json.loads(body)

    def close(self) -> None:
        self.sock.close()


# --- the servers ---------------------------------------------------------------

class Server:
    """A leaf server subprocess on a free port, with its own temporary --data."""

    def __init__(self, name: str, tmp: str, schema_path: str):
        self.name = name
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir)
        self.log_path = os.path.join(self.dir, "server.log")
        prefix = ([sys.executable, "-m", "pinstack.leaf"] if name == "ours"
                  else [sys.executable, str(HERE / "leaf_tantivy_server.py")])
        self.argv = prefix + ["serve", "--data", os.path.join(self.dir, "data"), "--port", "0",
                              "--schema", schema_path, "--log-level", "info"]
        self.proc: subprocess.Popen | None = None
        self.host, self.port = "127.0.0.1", 0
        self.exit_status: int | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=self.logf)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"serving http://([0-9.]+):(\d+)", self.log_text())
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with status "
                                   f"{self.proc.returncode}:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{self.name} server did not start within {timeout:g} s:\n"
                               f"{self.log_text()[-3000:]}")
        conn = self.conn()
        while conn.request(get_request("/readyz"))[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} server not ready within {timeout:g} s")
            time.sleep(0.05)
        conn.close()

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def conn(self) -> Conn:
        return Conn(self.host, self.port)

    def cpu_seconds(self) -> float:
        """utime + stime of every thread of the server, exited ones included."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            self.exit_status = self.proc.returncode if self.proc else None
            return self.exit_status
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.exit_status = self.proc.wait()
            log(f"{self.name} server did not stop within {timeout:g} s: killed")
        self.logf.close()
        return self.exit_status


IDLE_WINDOW = 0.3  # s; --quick: 0.1


def wait_idle(servers: list[Server], window: float | None = None, busy: float = 0.05,
              timeout: float = 30.0) -> float:
    """Wait until every server used under `busy` of a core over `window`
    seconds (tantivy merging, our flush thread...); returns the wait."""
    window = window or IDLE_WINDOW
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = [s.cpu_seconds() for s in servers]
        time.sleep(window)
        if all(s.cpu_seconds() - b < busy * window for s, b in zip(servers, before)):
            break
    return time.monotonic() - t0


def fsync_probe(directory: str, n: int) -> dict:
    """fdatasync after a 500-byte append, n times 2 ms apart, in the servers'
    file system: the floor under a write's acknowledgement with fsync
    "always" at this moment of the machine."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    lat = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 500)
            t = time.perf_counter_ns()
            os.fdatasync(fd)
            lat.append(time.perf_counter_ns() - t)
            time.sleep(0.002)
    finally:
        os.close(fd)
        os.unlink(path)
    return percentiles(lat)


# --- ingest --------------------------------------------------------------------

def _ingest_client(host: str, port: int, batches: list[int], start, out) -> None:
    conn = Conn(host, port)
    start.wait()
    lat, errors, docs = [], [], 0
    t_first = time.perf_counter()
    for b in batches:
        t = time.perf_counter_ns()
        status, body = conn.request(_INGEST_REQUESTS[b])
        lat.append(time.perf_counter_ns() - t)
        if status != 200:
            errors.append(f"HTTP {status}: {body[:200]!r}")
        else:
            docs += json.loads(body)["written"]
    out.put({"docs": docs, "t_first": t_first, "t_last": time.perf_counter(),
             "latency_ns": lat, "errors": errors[:5]})
    conn.close()


def measure_ingest(server: Server, n_docs: int, clients: int, timeout: float) -> dict:
    share = [list(range(j, len(_INGEST_REQUESTS), clients)) for j in range(clients)]
    start, out = _CTX.Event(), _CTX.Queue()
    procs = [_CTX.Process(target=_ingest_client, args=(server.host, server.port, s, start, out))
             for s in share]
    for p in procs:
        p.start()
    poll = server.conn()
    count_req = get_request(search_path("*", k=1, count="true", fields="key"))
    time.sleep(0.2)                       # the clients connect
    gc.collect()
    c0 = server.cpu_seconds()
    t0 = time.perf_counter()
    start.set()
    seen, t_visible = 0, None
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        seen = poll.json(count_req)["count"]
        if seen >= n_docs:
            t_visible = time.perf_counter()
            break
        time.sleep(0.02)
    c1 = server.cpu_seconds()
    results = [out.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join()
    stats = poll.json(get_request("/stats"))
    poll.close()
    errors = [e for r in results for e in r["errors"]]
    if errors or t_visible is None:
        raise RuntimeError(f"{server.name}: ingest failed: {seen} of {n_docs} documents "
                           f"visible; errors: {errors[:3]}")
    t_acked = max(r["t_last"] for r in results)
    lat = [x for r in results for x in r["latency_ns"]]
    return {
        "docs": n_docs,
        "requests": len(_INGEST_REQUESTS),
        "clients": clients,
        "seconds_to_visible": t_visible - t0,
        "seconds_to_acked": t_acked - t0,
        "docs_per_sec": n_docs / (t_visible - t0),
        "docs_per_sec_acked": n_docs / (t_acked - t0),
        "server_cpu_us_per_doc": (c1 - c0) / n_docs * 1e6,
        "server_cores_used": (c1 - c0) / (t_visible - t0),
        "post_latency": percentiles(lat),
        "rss_bytes": server.rss_bytes(),
        "ingest_counters": stats["ingest"],
        "engine_stats": {k: v for k, v in stats["engine"].items()
                         if isinstance(v, (int, float, str)) and not isinstance(v, bool)},
    }


# --- visibility ----------------------------------------------------------------

def _bg_writer(host: str, port: int, rate: float, batch: int, seed: int, stop, out) -> None:
    """POST batches of re-keyed corpus messages at `rate` documents/s until stop."""
    conn = Conn(host, port)
    rng = random.Random(seed)
    interval = batch / rate
    sent, lat, errors = 0, [], 0
    t_next = time.perf_counter()
    i = 0
    while not stop.is_set():
        lines = []
        for _ in range(batch):
            m = json.loads(_MESSAGES[rng.randrange(len(_MESSAGES))])
            m["key"] = f"bg{seed}:{i}"
            i += 1
            lines.append(json.dumps(m, separators=(",", ":")).encode())
        t = time.perf_counter_ns()
        status, _ = conn.request(post_request("/documents", b"\n".join(lines) + b"\n"))
        lat.append(time.perf_counter_ns() - t)
        if status == 200:
            sent += batch
        else:
            errors += 1
        t_next += interval
        delay = t_next - time.perf_counter()
        if delay > 0:
            stop.wait(delay)
        else:
            t_next = time.perf_counter()       # behind: do not burst to catch up
    out.put({"docs": sent, "post_latency": percentiles(lat), "errors": errors})
    conn.close()


def _probe(host: str, port: int, samples: int, seed: int, out) -> None:
    """Write one document, search for it from the moment it is sent."""
    w, r = Conn(host, port), Conn(host, port)
    rng = random.Random(seed)
    ack, vis, after, polls = [], [], [], []
    negative = 0
    for i in range(samples):
        token = f"zqprobe{seed}x{i:06d}"
        key = f"probe{seed}:{i}"
        msg = {"op": "index", "key": key, "version": 1,
               "fields": {"title": "visibility probe", "body": f"a probe document {token}"},
               "score": 0.5, "payload": {"probe": i}}
        write = post_request("/documents", json.dumps(msg).encode() + b"\n")
        search = get_request(search_path(token, k=1, fields="key"))
        t_send = time.perf_counter_ns()
        w.send(write)
        r.send(search)
        t_ack = t_seen = None
        n = 1
        while t_ack is None or t_seen is None:
            waiting = ([w.sock] if t_ack is None else []) + ([r.sock] if t_seen is None else [])
            ready, _, _ = select.select(waiting, [], [], 30)
            if not ready:
                raise TimeoutError(f"sample {i}: no answer within 30 s")
            now = None
            if w.sock in ready and t_ack is None:
                status, body = w.read()
                now = time.perf_counter_ns()
                if status != 200:
                    raise RuntimeError(f"probe write: HTTP {status}: {body[:200]!r}")
                t_ack = now
            if r.sock in ready and t_seen is None:
                status, body = r.read()
                now = time.perf_counter_ns()
                if status != 200:
                    raise RuntimeError(f"probe search: HTTP {status}: {body[:200]!r}")
                if b'"hits":[]' in body:
                    if now - t_send > 30e9:
                        raise TimeoutError(f"sample {i}: not visible after 30 s")
                    r.send(search)
                    n += 1
                else:
                    t_seen = now
        ack.append(t_ack - t_send)
        vis.append(t_seen - t_send)
        if t_seen < t_ack:
            negative += 1
        after.append(max(0, t_seen - t_ack))
        polls.append(n)
        time.sleep(rng.uniform(0.001, 0.005))
    out.put({"write_acked": percentiles(ack), "write_visible": percentiles(vis),
             "ack_to_visible": percentiles(after), "seen_before_ack": negative,
             "searches_per_sample_mean": statistics.fmean(polls)})
    w.close()
    r.close()


def measure_visibility(server: Server, samples: int, bg_rate: float, bg_batch: int,
                       seed: int) -> dict:
    out, bg_out, stop = _CTX.Queue(), _CTX.Queue(), _CTX.Event()
    bg = None
    if bg_rate > 0:
        bg = _CTX.Process(target=_bg_writer,
                          args=(server.host, server.port, bg_rate, bg_batch, seed, stop, bg_out))
        bg.start()
        time.sleep(0.5)                   # the load is running before the first sample
    t0 = time.perf_counter()
    probe = _CTX.Process(target=_probe, args=(server.host, server.port, samples, seed, out))
    probe.start()
    try:
        result = out.get(timeout=600)
    finally:
        probe.join(60)
        elapsed = time.perf_counter() - t0
        stop.set()
    if bg is not None:
        b = bg_out.get(timeout=120)
        bg.join()
        result["background"] = {"target_docs_per_sec": bg_rate, "batch": bg_batch,
                                "docs": b["docs"], "errors": b["errors"],
                                "docs_per_sec": b["docs"] / (elapsed + 0.5),
                                "post_latency": b["post_latency"]}
    result["samples"] = samples
    conn = server.conn()
    engine = conn.json(get_request("/stats"))["engine"]
    conn.close()
    result["engine_stats_after"] = {k: v for k, v in engine.items()
                                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return result


# --- queries ---------------------------------------------------------------------

def _query_client(host: str, port: int, requests: list[bytes], first: int, seconds: float,
                  ready, start, out) -> None:
    conn = Conn(host, port)
    conn.request(requests[first % len(requests)])      # warm the connection
    ready.put(1)
    start.wait()
    lat, errors = [], 0
    n, i = 0, first
    t0 = time.perf_counter()
    deadline = t0 + seconds
    clock = time.perf_counter_ns
    while True:
        t = clock()
        status, _ = conn.request(requests[i % len(requests)])
        lat.append(clock() - t)
        if status != 200:
            errors += 1
        i += 1
        n += 1
        if n % 16 == 0 and time.perf_counter() >= deadline:
            break
    out.put({"n": n, "t0": t0, "t1": time.perf_counter(), "latency_ns": lat,
             "errors": errors})
    conn.close()


def query_load(server: Server, requests: list[bytes], clients: int, seconds: float) -> dict:
    ready, start, out = _CTX.Queue(), _CTX.Event(), _CTX.Queue()
    step = max(1, len(requests) // clients)
    procs = [_CTX.Process(target=_query_client,
                          args=(server.host, server.port, requests, j * step, seconds,
                                ready, start, out)) for j in range(clients)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    c0 = server.cpu_seconds()
    start.set()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    c1 = server.cpu_seconds()
    for p in procs:
        p.join()
    n = sum(r["n"] for r in results)
    t0 = min(r["t0"] for r in results)
    t1 = max(r["t1"] for r in results)
    errors = sum(r["errors"] for r in results)
    if errors:
        raise RuntimeError(f"{server.name}: {errors} of {n} queries failed")
    lat = percentiles([x for r in results for x in r["latency_ns"]])
    return {"qps": n / (t1 - t0), "queries": n, "seconds": t1 - t0, "clients": clients,
            "p50_us": lat["p50_us"], "p99_us": lat["p99_us"], "max_us": lat["max_us"],
            "server_cpu_us_per_query": (c1 - c0) / n * 1e6}


def check_agreement(servers: dict[str, Server], queries: dict[str, list]) -> dict:
    """Counts and top-10 static scores must agree; BM25 top-10 overlap is
    information (the engines' BM25 differ in detail: document length
    quantization, which fields count)."""
    conns = {name: s.conn() for name, s in servers.items()}
    checks = {"counts_compared": 0, "count_disagreements": [], "top10_score_compared": 0,
              "top10_score_disagreements": [], "top10_bm25_key_overlap": None}
    overlaps = []
    for kind, qs in queries.items():
        for q in qs:
            text = query_string(q)
            a = {n: c.json(get_request(search_path(text, k=10, order="score", count="true",
                                                   fields="key,score")))
                 for n, c in conns.items()}
            b = {n: c.json(get_request(search_path(text, k=10, order="bm25", fields="key")))
                 for n, c in conns.items()}
            checks["counts_compared"] += 1
            checks["top10_score_compared"] += 1
            if a["ours"]["count"] != a["tantivy"]["count"]:
                checks["count_disagreements"].append(
                    {"kind": kind, "query": text, "ours": a["ours"]["count"],
                     "tantivy": a["tantivy"]["count"]})
            scores = {n: [round(h["score"], 5) for h in r["hits"]] for n, r in a.items()}
            if scores["ours"] != scores["tantivy"]:
                checks["top10_score_disagreements"].append({"kind": kind, "query": text,
                                                            **scores})
            keys = {n: {h["key"] for h in r["hits"]} for n, r in b.items()}
            if keys["tantivy"]:
                overlaps.append(len(keys["ours"] & keys["tantivy"]) / len(keys["tantivy"]))
    for c in conns.values():
        c.close()
    checks["top10_bm25_key_overlap"] = statistics.fmean(overlaps) if overlaps else None
    for what in ("count_disagreements", "top10_score_disagreements"):
        if checks[what]:
            log(f"WARNING: {len(checks[what])} {what.replace('_', ' ')}; "
                f"first: {checks[what][0]}")
        checks[what] = checks[what][:50]
    return checks


# --- tantivy in this process ------------------------------------------------------

def tantivy_in_process(corpus, tmp: str, heap: int, vis_samples: int) -> dict:
    tv = Tantivy()
    docs = corpus.docs()
    path = os.path.join(tmp, "tantivy-in-process")
    index, ingest = tv.ingest(docs, path, 1, heap, prebuilt=False)
    log(f"tantivy in-process ingest: {ingest['docs_per_sec']:,.0f} docs/s "
        f"(add_document x {len(docs):,}, one commit)")
    vis_docs = [(f"vis:{i}", d[1], d[2], tuple(d[3]) + (f"uniq:{i:07d}",)) + tuple(d[4:])
                for i, d in enumerate(docs[:vis_samples])]
    vis = tv.visibility(index, vis_docs)
    log(f"tantivy in-process visibility: p50 {vis['add_to_visible']['p50_us']:,.0f} us, "
        f"p99 {vis['add_to_visible']['p99_us']:,.0f} us")
    del index
    shutil.rmtree(path, ignore_errors=True)
    return {"ingest": ingest, "visibility": vis, "version": tv.version}


# --- the table -------------------------------------------------------------------

def build_metrics(r: dict) -> dict:
    metrics: dict[str, dict] = {}

    def metric(name, ours, theirs, better, unit, note=""):
        metrics[name] = {"ours": ours, "tantivy": theirs, "ratio": ratio(ours, theirs),
                         "better": better, "unit": unit, "note": note}

    ing = r["ingest"]
    o, t = ing.get("ours", {}), ing.get("tantivy", {})
    tip = r.get("tantivy_in_process", {})
    metric("ingest HTTP, until visible", o.get("docs_per_sec"), t.get("docs_per_sec"),
           "higher", "docs/s", "both servers, POST /documents until a count sees all")
    metric("ingest HTTP, until acked", o.get("docs_per_sec_acked"),
           t.get("docs_per_sec_acked"), "higher", "docs/s")
    metric("ingest vs tantivy in-process bulk", o.get("docs_per_sec"),
           tip.get("ingest", {}).get("docs_per_sec"), "higher", "docs/s",
           "ours over HTTP until visible; tantivy in-process: add all, one commit")
    metric("ingest server cpu", o.get("server_cpu_us_per_doc"),
           t.get("server_cpu_us_per_doc"), "lower", "us/doc")
    metric("server RSS after ingest", o.get("rss_bytes") and o["rss_bytes"] / 2**20,
           t.get("rss_bytes") and t["rss_bytes"] / 2**20, "lower", "MiB")
    vis = r["visibility"]
    vo, vt = vis.get("ours", {}), vis.get("tantivy", {})
    for what, label in (("write_visible", "visible (write sent ->)"),
                        ("ack_to_visible", "ack -> visible"),
                        ("write_acked", "write acked")):
        for p in ("p50_us", "p99_us", "max_us"):
            if what == "write_acked" and p == "max_us":
                continue
            metric(f"{label} {p[:-3]}, HTTP", vo.get(what, {}).get(p),
                   vt.get(what, {}).get(p), "lower", "us",
                   "both servers, with the background write load")
    tv = tip.get("visibility", {}).get("add_to_visible", {})
    for p in ("p50_us", "p99_us", "max_us"):
        metric(f"visible vs tantivy in-process {p[:-3]}", vo.get("write_visible", {}).get(p),
               tv.get(p), "lower", "us",
               "ours over HTTP under load; tantivy in-process add+commit+reload, no load")
    for kind in QUERY_KINDS:
        for order in ORDERS:
            row = r["queries"].get(kind, {}).get(order, {})
            metric(f"qps {kind}, top10 {order}", row.get("ours", {}).get("qps"),
                   row.get("tantivy", {}).get("qps"), "higher", "queries/s",
                   "both over HTTP, the same server code")
    return metrics


def print_table(r: dict, metrics: dict) -> None:
    m = r["machine"]
    sources = ", ".join(f"{k} {v:,}" for k, v in r["corpus"]["sources"].items())
    print_header(f"pinstack-leaf server vs tantivy {m['tantivy']}: "
                 f"{r['corpus']['docs']:,} docs ({sources})", m)
    for name, row in metrics.items():
        print_row(name, row)
    c = r["checks"]
    if c.get("counts_compared"):
        print(f"\nchecks: {c['counts_compared']} queries; count disagreements "
              f"{len(c['count_disagreements'])}; top-10-by-score disagreements "
              f"{len(c['top10_score_disagreements'])}; top-10 BM25 key overlap "
              f"{fmt(c['top10_bm25_key_overlap'])}")
    for name in SERVERS:
        v = r["visibility"].get(name)
        if v:
            bg = v.get("background", {})
            print(f"visibility {name}: {v['samples']} samples, seen before the ack "
                  f"{v['seen_before_ack']}, {v['searches_per_sample_mean']:.1f} searches per "
                  f"sample; background {bg.get('docs_per_sec', 0):,.0f} docs/s")
    f = r.get("fsync")
    if f:
        print(f"fdatasync of 500 B in the servers' file system, just before the visibility "
              f"phase: p50 {f['p50_us']:,.0f} us, p99 {f['p99_us']:,.0f} us "
              f"(the floor under a write's ack with fsync always)")
    print("load average during the phases: " + ", ".join(
        f"{k} {v:.2f}" for k, v in r["loadavg"].items()))


# --- main ------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=0,
                    help="corpus documents (an even sample); 0: all, the default")
    ap.add_argument("--sources", default="gcide,wordnet",
                    help="leaf_real_corpus sources, comma-separated (default gcide,wordnet)")
    ap.add_argument("--store", choices=("payload", "source", "none"), default=SCHEMA["store"],
                    help="the schema's store: what a hit carries (default payload: the "
                         "message's small payload; source: the whole message)")
    ap.add_argument("--batch", type=int, default=1000, help="messages per POST, default 1000")
    ap.add_argument("--ingest-clients", type=int, default=4,
                    help="concurrent ingest client processes, default 4")
    ap.add_argument("--vis-samples", type=int, default=300,
                    help="visibility samples per server, default 300")
    ap.add_argument("--bg-rate", type=float, default=2000,
                    help="background write load during visibility, documents/s "
                         "(default 2000; 0: none)")
    ap.add_argument("--bg-batch", type=int, default=50,
                    help="documents per background POST, default 50")
    ap.add_argument("--tantivy-vis-samples", type=int, default=100,
                    help="in-process tantivy visibility samples, default 100")
    ap.add_argument("--tantivy-heap", type=int, default=1_000_000_000,
                    help="in-process tantivy writer heap, bytes (default 1e9: one segment)")
    ap.add_argument("--query-clients", type=int, default=4,
                    help="concurrent query client processes (one connection each), default 4")
    ap.add_argument("--queries-seconds", type=float, default=2.0,
                    help="seconds per (query kind, order, server), default 2")
    ap.add_argument("--queries-per-kind", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tmpdir", default=None, help="where the servers' data directories go")
    ap.add_argument("--quick", action="store_true",
                    help="a small run (3000 docs, short loops) to check the script works")
    ap.add_argument("--engines", default=",".join(SERVERS),
                    help="servers to run, comma-separated (default ours,tantivy); the "
                         "agreement checks need both")
    ap.add_argument("--phases", default=",".join(PHASES),
                    help=f"phases to run, comma-separated (default {','.join(PHASES)}); "
                         "e.g. --phases ingest --engines ours to profile ingestion")
    ap.add_argument("--json", default=str(HERE / "results" / "leaf_server_compare.json"))
    args = ap.parse_args()
    engines = tuple(n for n in SERVERS if n in args.engines.split(","))
    phases = set(args.phases.split(","))
    if not engines or set(args.engines.split(",")) - set(SERVERS) or phases - set(PHASES):
        ap.error(f"--engines takes {','.join(SERVERS)}, --phases {','.join(PHASES)}")
    if args.quick:
        args.docs = min(args.docs or 3000, 3000)
        args.batch = min(args.batch, 250)
        args.ingest_clients = min(args.ingest_clients, 2)
        args.vis_samples = min(args.vis_samples, 20)
        args.bg_rate = min(args.bg_rate, 500)
        args.tantivy_vis_samples = min(args.tantivy_vis_samples, 5)
        args.tantivy_heap = min(args.tantivy_heap, 50_000_000)
        args.query_clients = min(args.query_clients, 2)
        args.queries_seconds = min(args.queries_seconds, 0.2)
        args.queries_per_kind = min(args.queries_per_kind, 10)
        global IDLE_WINDOW
        IDLE_WINDOW = 0.1

    try:
        import tantivy  # noqa: F401
    except ImportError:
        print("leaf_server_compare: tantivy is not installed (pip install tantivy)",
              file=sys.stderr)
        return 1
    log("loading the corpus")
    try:
        corpus = load(tuple(args.sources.split(",")), limit=args.docs or None)
    except CorpusMissing as e:
        print(f"leaf_server_compare: {e}", file=sys.stderr)
        return 1
    n_docs = len(corpus)
    queries = make_queries(corpus, per_kind=args.queries_per_kind, seed=args.seed + 10)
    log(f"corpus: {n_docs:,} documents, {corpus.input_bytes / 1e6:.1f} MB of messages; "
        f"{sum(len(q) for q in queries.values())} queries")
    _MESSAGES[:] = corpus.messages
    _INGEST_REQUESTS[:] = [
        post_request("/documents", b"\n".join(corpus.messages[i:i + args.batch]) + b"\n")
        for i in range(0, n_docs, args.batch)]
    query_requests = {kind: {order: [get_request(search_path(query_string(q), k=10,
                                                              order=order)) for q in qs]
                             for order in ORDERS} for kind, qs in queries.items()}
    gc.collect()
    gc.freeze()

    tmp = tempfile.mkdtemp(prefix="leaf_server_compare.", dir=args.tmpdir)
    schema_path = os.path.join(tmp, "schema.json")
    schema = {**SCHEMA, "store": args.store}
    Path(schema_path).write_text(json.dumps(schema))
    result: dict = {"ingest": {}, "visibility": {}, "queries": {k: {} for k in QUERY_KINDS},
                    "checks": {}, "loadavg": {}, "servers": {}}
    machine = None
    servers = {name: Server(name, tmp, schema_path) for name in engines}
    try:
        for s in servers.values():
            s.start()
            log(f"{s.name} server: pid {s.proc.pid}, http://{s.host}:{s.port}")
        machine = machine_info(Tantivy().version)
        both = list(servers.values())

        for name in engines if "ingest" in phases else ():
            wait_idle(both)
            log(f"ingest {name}: {n_docs:,} documents, {len(_INGEST_REQUESTS)} POSTs of "
                f"{args.batch}, {args.ingest_clients} clients")
            m = result["ingest"][name] = measure_ingest(servers[name], n_docs,
                                                         args.ingest_clients, timeout=900)
            log(f"  {m['docs_per_sec']:,.0f} docs/s until visible "
                f"({m['docs_per_sec_acked']:,.0f} acked), "
                f"{m['server_cpu_us_per_doc']:.1f} us server CPU/doc")
        result["loadavg"]["after ingest"] = os.getloadavg()[0]

        if "checks" in phases and len(engines) == 2:
            wait_idle(both)
            log("checking that both servers agree")
            result["checks"] = check_agreement(servers, queries)
        for k_i, kind in enumerate(QUERY_KINDS if "queries" in phases else ()):
            for o_i, order in enumerate(ORDERS):
                row = result["queries"][kind][order] = {}
                first = engines if (k_i + o_i) % 2 == 0 else engines[::-1]
                for name in first:
                    wait_idle(both, timeout=10)
                    row[name] = query_load(servers[name], query_requests[kind][order],
                                           args.query_clients, args.queries_seconds)
                log(f"queries {kind:12s} top10 {order:5s} " + "  ".join(
                    f"{n} {row[n]['qps']:,.0f}/s (p99 {row[n]['p99_us']:,.0f} us)"
                    for n in engines))
        result["loadavg"]["after queries"] = os.getloadavg()[0]

        if "visibility" in phases:
            result["fsync"] = fsync_probe(tmp, args.vis_samples)
            log(f"fdatasync of 500 B here now: p50 {result['fsync']['p50_us']:,.0f} us, "
                f"p99 {result['fsync']['p99_us']:,.0f} us")
        for i, name in enumerate(SERVERS if "visibility" in phases else ()):
            if name not in engines:
                continue
            wait_idle(both)
            log(f"visibility {name}: {args.vis_samples} samples, background "
                f"{args.bg_rate:,.0f} docs/s")
            v = result["visibility"][name] = measure_visibility(
                servers[name], args.vis_samples, args.bg_rate, args.bg_batch,
                seed=args.seed + i)
            log(f"  visible p50 {v['write_visible']['p50_us']:,.0f} us, "
                f"p99 {v['write_visible']['p99_us']:,.0f} us; acked p50 "
                f"{v['write_acked']['p50_us']:,.0f} us")
        result["loadavg"]["after visibility"] = os.getloadavg()[0]
    finally:
        for s in servers.values():
            status = s.stop()
            result["servers"][s.name] = {"argv": s.argv[1:], "exit_status": status}
            if status != 0:
                log(f"{s.name} server exited with status {status}; its log:\n"
                    f"{s.log_text()[-3000:]}")
    try:
        if "inprocess" in phases:
            log("tantivy in this process")
            result["tantivy_in_process"] = tantivy_in_process(
                corpus, tmp, args.tantivy_heap, args.tantivy_vis_samples)
            result["loadavg"]["after tantivy in-process"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bad = {n: s for n, s in result["servers"].items() if s["exit_status"] != 0}
    machine["loadavg_end"] = os.getloadavg()[0]
    result["machine"] = machine
    result["corpus"] = corpus.summary()
    metrics = build_metrics(result)
    print_table(result, metrics)
    out = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "options": vars(args),
        "machine": machine,
        "corpus": result["corpus"],
        "schema": schema,
        "targets": TARGETS,
        "metrics": metrics,
        "ingest": result["ingest"],
        "visibility": result["visibility"],
        "tantivy_in_process": result.get("tantivy_in_process"),
        "queries": result["queries"],
        "checks": result["checks"],
        "fsync": result.get("fsync"),
        "loadavg": result["loadavg"],
        "servers": result["servers"],
        "queries_sample": {k: [query_string(q) for q in qs[:5]] for k, qs in queries.items()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    print(f"\nJSON: {args.json}")
    if bad:
        print(f"leaf_server_compare: server(s) exited badly: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
