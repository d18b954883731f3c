"""pinstack-leaf: the search leaf's command line.

    pinstack-leaf serve --data DIR [--port 8095] ...   run a leaf (foreground)
    pinstack-leaf produce [FILE ...]                   write NDJSON messages to it
    pinstack-leaf search QUERY [-k 10] ...             search it
    pinstack-leaf status                               how it is doing

`serve` needs nothing but --data: an embedded log (4 partitions, fsync
always), the default schema, port 8095 on 127.0.0.1 (the API has write and
admin endpoints and no authentication: expose it on purpose, with --host).
The other commands talk to a running leaf over HTTP (--url, default
$PINSTACK_LEAF_URL or http://127.0.0.1:8095). docs/leaf-server.md is the
reference.

Exit status: 0 done; 1 failed (the message says why: a server that is not
there, a rejected batch, a data directory in use...); 2 bad command line
(argparse); `status` exits 3 when the leaf answers but is not ready.

serve stops cleanly on SIGTERM or SIGINT: it stops accepting connections,
finishes the requests in flight, stops ingestion, closes the index and the
log (which marks it clean). A second signal exits at once (the log then
recovers on the next start, as after a crash).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import logging
import os
import signal
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from pinstack._version import __version__

PROG = "pinstack-leaf"
DEFAULT_PORT = 8095
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
EXIT_FAILED = 1
EXIT_NOT_READY = 3
MAX_SECONDS = 366 * 86400  # --max-segment-age: a year is "never" for a realtime segment

log = logging.getLogger("pinstack.leaf")


class CliError(Exception):
    """A failure to report in one line (exit status 1)."""


# ---- argument types (argparse turns their ValueError/ArgumentTypeError into exit 2) -----------


def _int_in(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be {lo}..{hi} (got {value})")
        return value

    parse.__name__ = "integer"
    return parse


def _fsync(text: str) -> str:
    from pinstack.leaf.stream.log import parse_fsync

    try:
        parse_fsync(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'must be "always" or "interval_ms=N" with N 0..60000 (got {text!r})') from None
    return text


def _partition_list(text: str) -> list[int]:
    try:
        parts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a comma-separated list of partition numbers, e.g. 0,1,2 (got {text!r})") from None
    if not parts or min(parts) < 0 or len(set(parts)) != len(parts):
        raise argparse.ArgumentTypeError(f"distinct partition numbers >= 0 (got {text!r})")
    return parts


def _size(text: str) -> int:
    t = text.strip().lower()
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(t[-1:], 1)
    if scale != 1:
        t = t[:-1]
    if not t.isdigit():
        raise argparse.ArgumentTypeError(f"a size in bytes, or with k/m/g (got {text!r})")
    return int(t) * scale


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= MAX_SECONDS:  # also refuses nan; inf is over the bound
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and at most {MAX_SECONDS} seconds (got {text!r})")
    return value


def _kafka_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"KEY=VALUE (a librdkafka setting), got {text!r}")
    return key, value


def _url(text: str) -> str:
    parts = urllib.parse.urlsplit(text if "://" in text else "http://" + text)
    if parts.scheme != "http" or not parts.hostname:
        raise argparse.ArgumentTypeError(f"an http:// URL such as {DEFAULT_URL} (got {text!r})")
    return f"http://{parts.netloc}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="pinstack-leaf: a realtime search leaf (HTTP/JSON API).",
        epilog="docs/leaf-server.md is the reference.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("serve", help="run a leaf in the foreground",
                       description="Run a leaf: ingest its stream, serve the HTTP API.")
    s.add_argument("--data", required=True, metavar="DIR",
                   help="data directory (log, index, schema); created if missing")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    s.add_argument("--port", type=_int_in(0, 65535), metavar="N", default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    s.add_argument("--schema", metavar="FILE",
                   help="schema file (default: the one the data directory was served with, "
                        "else text title, body; keywords lang, tag, board)")
    s.add_argument("--source", choices=("embedded", "kafka"), default="embedded",
                   help="where documents come from (default embedded: the leaf's own log, "
                        "written through the API)")
    s.add_argument("--partitions", type=_int_in(1, 4096), metavar="N",
                   help="embedded log partitions when creating it (default 4; an existing "
                        "log keeps its own, and a different number is an error)")
    s.add_argument("--fsync", type=_fsync, metavar="POLICY", default="always",
                   help='embedded log: "always" (default: fsync before acknowledging, '
                        'shared by concurrent writes) or "interval_ms=N" (group commit)')
    s.add_argument("--on-corrupt", choices=("stop", "skip"), default="stop",
                   help="embedded log: a corrupt record stops ingestion (default) or is "
                        "skipped")
    s.add_argument("--kafka-brokers", metavar="HOST:PORT,...", help="bootstrap servers")
    s.add_argument("--kafka-topic", metavar="TOPIC")
    s.add_argument("--kafka-partitions", type=_partition_list, metavar="0,1,...",
                   help="the topic's partitions this leaf reads (default: all)")
    s.add_argument("--kafka-option", type=_kafka_option, action="append", default=[],
                   metavar="KEY=VALUE", help="a librdkafka setting (repeatable)")
    s.add_argument("--writer-threads", type=_int_in(1, 64), metavar="N", default=1,
                   help="index writer threads (term shards), default 1")
    s.add_argument("--search-threads", type=_int_in(0, 256), metavar="N", default=0,
                   help="run searches in a pool of N threads instead of the event loop "
                        "(default 0; see docs/leaf-server.md)")
    # The index (Engine) settings: None leaves the engine's default (named in
    # the help; tests/test_leaf_cli.py checks the names against Engine).
    s.add_argument("--max-segment-docs", type=_int_in(1, 1 << 30), metavar="N",
                   help="seal the realtime segment and flush it to a segment file once it "
                        "holds N documents (default 1048576)")
    s.add_argument("--max-segment-age", type=_seconds, metavar="SECONDS",
                   help="also seal it once it is this old and holds documents "
                        "(default 600)")
    s.add_argument("--merge-factor", type=_int_in(2, 1024), metavar="N",
                   help="compaction merges N adjacent segment files of one size tier "
                        "into one (default 4)")
    s.add_argument("--compaction-rate", type=_size, metavar="SIZE",
                   help="compaction writes at most SIZE bytes per second, with k/m/g "
                        "(default 64m; 0: unthrottled)")
    s.add_argument("--log-retention", choices=("all", "checkpoint"), default="all",
                   help="embedded log: keep every record (default: a damaged segment file "
                        "can always be rebuilt from the log), or delete log files the "
                        "durable index covers (bounded disk)")
    s.add_argument("--on-bad-message", choices=("skip", "halt"), default="skip",
                   help="an invalid message in the stream is logged and skipped (default), "
                        "or halts ingestion in front of it")
    s.add_argument("--ready-lag", type=_int_in(0, 1 << 62), metavar="N", default=1000,
                   help="ready once at most this many records behind after start "
                        "(default 1000)")
    s.add_argument("--max-body-bytes", type=_size, metavar="SIZE", default=32 << 20,
                   help="largest request body (default 32m)")
    s.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"))

    def client_args(c: argparse.ArgumentParser) -> None:
        c.add_argument("--url", type=_url, default=os.environ.get("PINSTACK_LEAF_URL",
                                                                   DEFAULT_URL),
                       help=f"the leaf (default $PINSTACK_LEAF_URL or {DEFAULT_URL})")
        c.add_argument("--timeout", type=float, metavar="SECONDS", default=30.0,
                       help="seconds to wait for an answer (default 30)")

    q = sub.add_parser("search", help="search a running leaf")
    q.add_argument("query", help='query syntax, e.g. "cat AND (dog OR bird) -fish"')
    q.add_argument("-k", type=_int_in(1, 10_000), metavar="K", default=10, help="hits (default 10)")
    q.add_argument("--order", choices=("score", "bm25", "recent"), default="score")
    q.add_argument("--count", action="store_true", help="also count every match")
    q.add_argument("--fields", help="hit fields, comma-separated (key,version,score,payload,"
                                    "fields,source)")
    q.add_argument("--json", action="store_true", help="print the server's JSON answer")
    client_args(q)

    st = sub.add_parser("status", help="show a running leaf's state (exit 3: not ready)")
    st.add_argument("--json", action="store_true", help="print /stats as JSON")
    client_args(st)

    pr = sub.add_parser("produce", help="write NDJSON messages (files or stdin) to a leaf")
    pr.add_argument("files", nargs="*", metavar="FILE",
                    help="NDJSON files, one message per line (default, or -: stdin)")
    pr.add_argument("--batch", type=_int_in(1, 1_000_000), metavar="N", default=1000,
                    help="messages per request (default 1000)")
    pr.add_argument("--batch-bytes", type=_size, metavar="SIZE", default=4 << 20,
                    help="bytes per request at most (default 4m; keep it under the "
                         "server's --max-body-bytes)")
    pr.add_argument("--wait-visible", action="store_true",
                    help="return only once everything written is searchable")
    client_args(pr)
    return p


# ---- serve -------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, engine_factory: Any = None) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pinstack.leaf.message import SchemaError
    from pinstack.leaf.service import Leaf, LeafConfig, LeafError, schema_from_file
    from pinstack.leaf.stream import LogError

    if args.source == "kafka" and not (args.kafka_brokers and args.kafka_topic):
        raise CliError("--source kafka needs --kafka-brokers and --kafka-topic")
    if args.source == "embedded" and (args.kafka_brokers or args.kafka_topic
                                      or args.kafka_partitions or args.kafka_option):
        raise CliError("--kafka-* options need --source kafka")
    try:
        schema = schema_from_file(args.schema) if args.schema else None
        config = LeafConfig(
            data_dir=args.data, source=args.source, partitions=args.partitions,
            fsync=args.fsync, on_corrupt=args.on_corrupt, kafka_brokers=args.kafka_brokers,
            kafka_topic=args.kafka_topic, kafka_partitions=args.kafka_partitions,
            kafka_config=dict(args.kafka_option), schema=schema,
            writer_threads=args.writer_threads, on_bad_message=args.on_bad_message,
            ready_lag=args.ready_lag, log_retention=args.log_retention,
            engine_options=_engine_options(args), engine_factory=engine_factory)
        leaf = Leaf(config)
    except (SchemaError, LogError, LeafError, ValueError, OSError, ImportError,
            RuntimeError) as e:
        raise CliError(f"cannot start: {e}") from None
    try:
        return asyncio.run(_serve(leaf, args))
    finally:
        leaf.close()
        log.info("stopped")


# serve flag -> Engine(...) keyword; a flag left out keeps the engine's default.
ENGINE_FLAGS = {
    "max_segment_docs": "max_segment_docs",
    "max_segment_age": "max_segment_age_s",
    "merge_factor": "merge_factor",
    "compaction_rate": "compaction_bytes_per_sec",
}


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    return {kw: getattr(args, flag) for flag, kw in ENGINE_FLAGS.items()
            if getattr(args, flag) is not None}


async def _serve(leaf: Any, args: argparse.Namespace) -> int:
    from pinstack.leaf.server import LeafServer, Limits

    server = LeafServer(leaf, args.host, args.port, search_threads=args.search_threads,
                        limits=Limits(max_body_bytes=args.max_body_bytes))
    try:
        await server.start()
    except OSError as e:
        await server.stop()
        reason = os.strerror(e.errno) if e.errno else str(e)  # asyncio's text repeats the address
        raise CliError(f"cannot listen on {args.host}:{args.port}: {reason}") from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now, without a clean close", sig.name)
            os._exit(EXIT_FAILED)
        log.info("%s: stopping (finishing requests in flight)", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    where = (f"embedded log {leaf.log.path}, {leaf.log.partitions} partitions, fsync "
             f"{leaf.log.fsync}" if leaf.log is not None
             else f"kafka {args.kafka_brokers} topic {args.kafka_topic}")
    log.info("serving %s (data %s; %s)", server.url, args.data, where)
    gc_hook = _quiet_gc(leaf.metrics.gc_pause)
    try:
        await stop.wait()
    finally:
        # Collectable again: at exit the interpreter frees what it can, and
        # the index's C memory with it (leak checkers would say otherwise).
        gc.callbacks.remove(gc_hook)
        gc.unfreeze()
    await server.stop()
    return 0


def _quiet_gc(pause: Any) -> Callable[[str, dict], None]:
    """Keep Python's cyclic collector out of the requests' tail latency.
    A full (generation 2) collection walks every tracked object while every
    Python thread waits: in a leaf that has started (modules, the engine,
    the server, its metrics) that was ~3 ms on the development machine,
    straight into a write's or a search's latency. What exists once the
    server listens lives as long as the process, so it is frozen
    (gc.freeze: the collector no longer walks it); what requests create
    later is short-lived and still collected. Each pause is observed in
    pinstack_leaf_gc_pause_seconds. Returns the hook to remove."""
    gc.collect()
    gc.freeze()
    started: list[float] = [0.0]

    def hook(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pause.labels(str(info.get("generation", "?"))).observe(
                time.perf_counter() - started[0])

    gc.callbacks.append(hook)
    log.info("froze %d objects of the started process out of the cyclic collector's walks",
             gc.get_freeze_count())
    return hook


# ---- the client commands -------------------------------------------------------------------------


class Client:
    """A keep-alive HTTP client of one leaf, with one-line errors."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        """(status, decoded JSON body or text); CliError if there is no answer."""
        headers = {"Content-Type": content_type} if body is not None else {}
        for attempt in (0, 1):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port,
                                                       timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection: once more
                raise CliError(f"{self.url}: the connection was closed before an answer"
                               ) from None
            except ConnectionRefusedError:
                self.close()
                raise CliError(f"cannot connect to {self.url}: connection refused (is "
                               f"`{PROG} serve` running there?)") from None
            except socket.timeout:
                self.close()
                raise CliError(f"{self.url}: no answer within {self.timeout:g} s") from None
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise CliError(f"cannot talk to {self.url}: {getattr(e, 'strerror', None) or e}"
                               ) from None
        ctype = resp.getheader("Content-Type", "")
        if ctype.startswith("application/json"):
            try:
                return resp.status, json.loads(data)
            except ValueError:
                pass
        return resp.status, data.decode("utf-8", "replace")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _error_of(status: int, body: Any) -> str:
    if isinstance(body, dict) and "error" in body:
        return f"{body['error']} (HTTP {status})"
    return f"HTTP {status}: {str(body)[:200]}"


def cmd_search(args: argparse.Namespace) -> int:
    client = Client(args.url, args.timeout)
    req: dict[str, Any] = {"q": args.query, "k": args.k, "order": args.order,
                           "count": args.count}
    if args.fields:
        req["fields"] = args.fields
    status, body = client.request("POST", "/search", json.dumps(req).encode())
    client.close()
    if status != 200:
        raise CliError(_error_of(status, body))
    if args.json:
        print(json.dumps(body, ensure_ascii=False))
        return 0
    hits = body["hits"]
    summary = f"{len(hits)} hit(s)"
    if "count" in body:
        summary += f" of {body['count']} matching"
    print(f"{summary} ({body['took_us']} us)")
    for h in hits:
        cols = []
        if "score" in h:
            cols.append(f"{h['score']:>10.4g}")
        if "key" in h:
            cols.append(h["key"])
        if "version" in h:
            cols.append(f"v{h['version']}")
        for f in ("payload", "fields", "source"):
            if f in h:
                cols.append(json.dumps(h[f], ensure_ascii=False, separators=(",", ":")))
        print("  ".join(cols))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = Client(args.url, args.timeout)
    status, stats = client.request("GET", "/stats")
    client.close()
    if status != 200 or not isinstance(stats, dict):
        raise CliError(_error_of(status, stats))
    if args.json:
        print(json.dumps(stats, ensure_ascii=False, indent=2))
    else:
        ing = stats["ingest"]
        eng = stats.get("engine", {})
        if "log" in stats:
            lg = stats["log"]
            source = (f"embedded log, {len(lg['partitions'])} partitions, fsync {lg['fsync']}, "
                      f"{sum(p['bytes'] for p in lg['partitions'])} bytes")
        else:
            k = stats.get("kafka", {})
            source = f"kafka {k.get('brokers')} topic {k.get('topic')} partitions " \
                     f"{k.get('partitions')}"
        segs = eng.get("segments")
        nsegs = len(segs) if isinstance(segs, list) else segs
        rows = [
            ("url", args.url),
            ("ready", f"{'yes' if stats['ready'] else 'no'} ({stats['ready_reason']})"),
            ("source", source),
            ("documents", f"{eng.get('docs_live', '?')} live in {nsegs} segment(s)"),
            ("ingested", f"{ing['records']} records: {ing['added']} added, {ing['stale']} "
                         f"stale, {ing['deleted']} deleted, {ing['bad']} bad"),
            ("lag", f"{ing['lag_total']} records"),
            ("uptime", f"{stats['uptime_s']:.0f} s"),
        ]
        if ing.get("halted"):
            rows.append(("HALTED", ing["halted"]))
        elif ing.get("error"):
            rows.append(("error", ing["error"]))
        for name, value in rows:
            print(f"{name:<10} {value}")
    return 0 if stats["ready"] else EXIT_NOT_READY


def _read_messages(files: list[str]) -> Iterator[tuple[str, int, bytes]]:
    """(file name, line number, line) of every non-blank line."""
    for name in files or ["-"]:
        if name == "-":
            yield from _lines("<stdin>", sys.stdin.buffer)
            continue
        try:
            f = open(name, "rb")
        except OSError as e:
            raise CliError(f"cannot read {name}: {e.strerror}") from None
        with f:
            yield from _lines(name, f)


def _lines(name: str, f: BinaryIO) -> Iterator[tuple[str, int, bytes]]:
    for n, line in enumerate(f, 1):
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield name, n, line


def cmd_produce(args: argparse.Namespace) -> int:
    client = Client(args.url, args.timeout)
    path = "/documents" + ("?wait=visible&timeout_ms=60000" if args.wait_visible else "")
    totals = {"written": 0, "index": 0, "delete": 0, "batches": 0}
    batch: list[tuple[str, int, bytes]] = []
    size = 0
    not_visible = 0

    def send() -> None:
        nonlocal not_visible
        body = b"\n".join(line for _, _, line in batch) + b"\n"
        status, resp = client.request("POST", path, body, "application/x-ndjson")
        if status != 200:
            done = (f"; {totals['written']} message(s) in {totals['batches']} batch(es) before "
                    f"it were written" if totals["batches"] else "; nothing was written")
            if isinstance(resp, dict) and resp.get("errors"):
                for e in resp["errors"]:
                    name, lineno, _ = batch[e["index"]]
                    print(f"{PROG}: {name}:{lineno}: {e['error']}", file=sys.stderr)
                raise CliError(f"a batch was rejected: {resp['rejected']} invalid message(s), "
                               f"the batch was not written{done}")
            raise CliError(f"a batch failed: {_error_of(status, resp)}{done}")
        for k in ("written", "index", "delete"):
            totals[k] += resp[k]
        totals["batches"] += 1
        if args.wait_visible and not resp.get("visible"):
            not_visible += 1

    for item in _read_messages(args.files):
        if batch and (len(batch) >= args.batch or size + len(item[2]) + 1 > args.batch_bytes):
            send()
            batch, size = [], 0
        batch.append(item)
        size += len(item[2]) + 1
    if batch:
        send()
    client.close()
    print(f"produced {totals['written']} message(s) ({totals['index']} index, "
          f"{totals['delete']} delete) in {totals['batches']} batch(es) to {args.url}")
    if not_visible:
        raise CliError(f"{not_visible} batch(es) were durable but not searchable within 60 s "
                       f"(see `{PROG} status`)")
    return 0


def main(argv: list[str] | None = None, *, engine_factory: Any = None) -> int:
    """The pinstack-leaf command; returns the exit status. engine_factory:
    what `serve` builds its index with (default: pinstack.leaf.engine.Engine)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return cmd_serve(args, engine_factory)
        command = {"search": cmd_search, "status": cmd_status,
                   "produce": cmd_produce}[args.command]
        return command(args)
    except CliError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
