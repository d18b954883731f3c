"""pinstack-leaf's HTTP/1.1 server: the JSON API in front of a Leaf
(service.py). docs/leaf-server.md is the operator's reference; the API is
described for machines by openapi.py (served at /openapi.json).

HTTP
----
asyncio (stdlib) with one asyncio.Protocol per connection: keep-alive,
pipelining (requests of a connection are answered in order, one at a time),
bodies framed by Content-Length. Chunked transfer encoding is refused with
411 (the body cannot be framed, so the connection is closed). Limits, each
answered with a JSON error and, when the request cannot be framed any more,
Connection: close:

    request line over max_request_line            414
    head over max_header_bytes or max_headers     431
    body over max_body_bytes                      413 (before reading it)
    malformed request line, header, length        400
    HTTP version other than 1.0/1.1               505
    no whole request within request_timeout       408
    unknown path 404; known path, wrong method    405 with Allow

After an error that ends the connection, the server half-closes and
discards what the client still sends for a moment (drain_timeout) before
closing, so the client reads the error instead of a reset. A connection
idle for keepalive_timeout is closed.

Threads: who runs what
----------------------
The event loop thread owns every socket and does HTTP framing, routing and
parameter checks. Work that blocks runs in pools, which hand back finished
responses (JSON encoded in the pool thread too):

    searches and gets (search_threads, default 0: on the loop thread).
        The index is searched in C with the GIL released, so a pool would
        let searches run in parallel with the loop; but each hop to a pool
        thread and back costs GIL hand-offs that, on a busy loop, wait for
        the interpreter's switch interval. Measured on this 2-core machine
        (200k documents, keep-alive clients in another process, cheap
        queries of ~30 us in C): inline 2160 q/s with p99 3.3 ms, a pool
        1160 q/s with p99 18.8 ms. The pool wins only when queries of
        several ms (a 60-term OR) are mixed in: cheap queries then got 580
        q/s (p50 6.5 ms) against 400 (p50 9.6 ms) inline, since an inline
        slow query holds every connection behind it. So: inline by default,
        and --search-threads N for a workload of heavy queries. The query
        size limits (service.py: bytes, nodes) cap how big one query is.
    ops pool (2 threads)        /stats, /metrics (engine and log stats).
    write pool (write_threads)  POST/DELETE /documents: validation and
        Log.append, which blocks until durable; concurrent writes share
        fsyncs (group commit), so this pool is wider than the CPU count.
    admin pool (1 thread)       flush and compact, one at a time.

Shutdown (stop()): /readyz turns 503, stop listening, close idle
connections, let requests in flight finish (up to a timeout), then cancel
the waits of ?wait=visible writes and close what is left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Callable, NamedTuple

from prometheus_client import exposition

from pinstack._version import __version__
from pinstack.leaf import openapi
from pinstack.leaf.service import (
    BadMessages,
    BadRequest,
    Leaf,
    LeafError,
    NotFound,
    PartialWrite,
    WritesNotAccepted,
)

__all__ = ["BackgroundServer", "Limits", "LeafServer", "ROUTES"]

log = logging.getLogger("pinstack.leaf.server")

SERVER_NAME = f"pinstack-leaf/{__version__}"
JSON = "application/json"
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl",
                "application/json-seq", "text/plain")
# curl -d sends this by default; no form is ever posted here, so it is read as
# if no Content-Type had been given.
_CURL_DEFAULT = "application/x-www-form-urlencoded"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_DIGITS = re.compile(r"[0-9]{1,18}")
_WS = re.compile(r"[ \t\n\r]*")
_USE_POST = " (send a long query with POST /search)"
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


@dataclass
class Limits:
    max_request_line: int = 8192
    max_header_bytes: int = 16384  # the whole head, request line included
    max_headers: int = 100
    max_body_bytes: int = 32 << 20
    keepalive_timeout: float = 60.0  # idle connection between requests
    request_timeout: float = 30.0  # first byte of a request -> whole request
    drain_timeout: float = 2.0  # after an error that ends the connection
    max_wait_visible: float = 60.0  # ?wait=visible&timeout_ms= upper bound


class HttpError(Exception):
    """An error response: status, message, and extra JSON members."""

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None,
                 close: bool = False, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.close = close
        self.extra = extra


class Request:
    __slots__ = ("method", "target", "path", "query_string", "version", "headers", "body",
                 "keep_alive")

    def __init__(self, method: str, target: str, version: str, headers: dict[str, str],
                 keep_alive: bool) -> None:
        self.method = method
        self.target = target
        path, _, qs = target.partition("?")
        self.path = path
        self.query_string = qs
        self.version = version
        self.headers = headers
        self.body = b""
        self.keep_alive = keep_alive

    def params(self, allowed: tuple[str, ...]) -> dict[str, str]:
        """Query-string parameters, strictly: UTF-8, each once, known names."""
        if not self.query_string:
            return {}
        try:
            pairs = urllib.parse.parse_qsl(self.query_string, keep_blank_values=True,
                                           errors="strict", max_num_fields=64)
        except UnicodeDecodeError:
            raise HttpError(400, "the query string is not valid UTF-8 once percent-decoded"
                            ) from None
        except ValueError as e:
            raise HttpError(400, f"bad query string: {e}") from None
        out: dict[str, str] = {}
        for name, value in pairs:
            if name not in allowed:
                raise HttpError(400, f"unknown parameter {name!r} (this endpoint takes: "
                                f"{', '.join(allowed) or 'none'})")
            if name in out:
                raise HttpError(400, f"parameter {name!r} is given more than once")
            out[name] = value
        return out

    def json_body(self) -> Any:
        ctype = self.headers.get("content-type", JSON).split(";")[0].strip().lower()
        if ctype not in (JSON, _CURL_DEFAULT):
            raise HttpError(415, f"send a JSON body (Content-Type: {JSON}), not {ctype}")
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError) as e:  # incl. UnicodeDecodeError
            raise HttpError(400, f"the body is not valid JSON: {e}") from None


class Response(NamedTuple):
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


def _json_default(o: Any) -> Any:
    if isinstance(o, (bytes, bytearray)):
        return o.decode("utf-8", "replace")
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def json_bytes(obj: Any) -> bytes:
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_json_default)
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # a lone surrogate somewhere: escape it
        return json.dumps(obj, separators=(",", ":"), default=_json_default).encode() + b"\n"


def json_response(status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json_bytes(obj), JSON, headers)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None,
                   **extra: Any) -> Response:
    return json_response(status, {"error": message, **extra},
                         tuple((headers or {}).items()))


# ---- request bodies of POST /documents --------------------------------------------------


def split_messages(body: bytes, content_type: str | None) -> list[bytes] | None:
    """The messages of a write body, or None for NDJSON (Leaf.write_ndjson
    splits it in C: its non-blank lines, numbered from 1). A JSON array
    gives its elements' exact text (each is then checked by the message
    parser, which owns every rule of the format); a single JSON object is
    one message. Without a Content-Type the first non-blank byte decides."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == _CURL_DEFAULT:
        ctype = ""
    if ctype and ctype != JSON and ctype not in NDJSON_TYPES:
        raise HttpError(415, f"send messages as a JSON array (Content-Type: {JSON}) or as "
                        f"NDJSON (Content-Type: application/x-ndjson), not {ctype}")
    start = len(body) - len(body.lstrip())
    if start == len(body):
        raise HttpError(400, "no messages: the body is empty")
    if ctype in NDJSON_TYPES:
        return None
    if body[start] == 0x5B:  # "["
        return _split_array(body)
    if body[start] == 0x7B:  # "{": one object (maybe pretty-printed), or NDJSON
        try:
            text = body.decode("utf-8")
            _, end = json.JSONDecoder().raw_decode(text, _WS.match(text).end())
            if not text[end:].strip():
                return [body]
        except (ValueError, RecursionError):
            pass  # not one object: per-line errors below say what is wrong
    return None


def _split_array(body: bytes) -> list[bytes]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HttpError(400, f"the body is not UTF-8: {e}") from None
    dec = json.JSONDecoder()  # lenient on purpose: parse_message applies the rules
    ws = _WS.match
    i = ws(text).end() + 1  # past "["
    out: list[bytes] = []
    i = ws(text, i).end()
    if text.startswith("]", i):
        i += 1
    else:
        while True:
            try:
                _, end = dec.raw_decode(text, i)
            except (ValueError, RecursionError) as e:
                raise HttpError(400, f"the body is not a JSON array of messages: element "
                                f"{len(out)}: {e}") from None
            out.append(text[i:end].encode("utf-8"))
            i = ws(text, end).end()
            if text.startswith(",", i):
                i = ws(text, i + 1).end()
                continue
            if text.startswith("]", i):
                i += 1
                break
            raise HttpError(400, f"the body is not a JSON array of messages: expected ',' or "
                            f"']' after element {len(out) - 1} (char {i})")
    if text[i:].strip():
        raise HttpError(400, f"the body has data after the JSON array (char {i})")
    if not out:
        raise HttpError(400, "no messages: the array is empty")
    return out


# ---- parameters ----------------------------------------------------------------------------


def _int_param(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, str):
        if not _DIGITS.fullmatch(value.strip()):
            raise HttpError(400, f"{name} must be an integer {lo}..{hi} (got {value!r})")
        value = int(value)
    if type(value) is not int or not lo <= value <= hi:
        raise HttpError(400, f"{name} must be an integer {lo}..{hi} (got {value!r})")
    return value


def _bool_param(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", ""):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no"):
        return False
    raise HttpError(400, f"{name} must be true or false (got {value!r})")


def _fields_param(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [f.strip() for f in value.split(",") if f.strip()]
    if isinstance(value, list) and all(isinstance(f, str) for f in value):
        return value
    raise HttpError(400, 'fields must be a list of names or a comma-separated string such as '
                    '"key,version,payload"')


# ---- the application: routes and handlers -----------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


class Route(NamedTuple):
    template: str  # as in the OpenAPI document: "/documents/{key}"
    methods: tuple[str, ...]

    def match(self, path: str) -> bool:
        if "{" not in self.template:
            return path == self.template
        prefix = self.template[: self.template.index("{")]
        return path.startswith(prefix) and len(path) > len(prefix)


# Every endpoint, with its methods (HEAD is answered wherever GET is).
# openapi.py describes exactly these (a test checks both ways).
ROUTES = (
    Route("/documents", ("POST",)),
    Route("/documents/{key}", ("GET", "DELETE")),
    Route("/search", ("GET", "POST")),
    Route("/stats", ("GET",)),
    Route("/metrics", ("GET",)),
    Route("/healthz", ("GET",)),
    Route("/readyz", ("GET",)),
    Route("/admin/flush", ("POST",)),
    Route("/admin/compact", ("POST",)),
    Route("/openapi.json", ("GET",)),
)

SEARCH_KEYS = ("q", "query", "k", "order", "count", "fields")


class LeafApp:
    """Routing and handlers. Coroutines run on the event loop; the _do_*
    methods run in the pools and return finished Responses."""

    def __init__(self, leaf: Leaf, limits: Limits, search_threads: int,
                 write_threads: int) -> None:
        self.leaf = leaf
        self.limits = limits
        # None: searches run on the loop thread (see the module docstring).
        self.query_pool = (ThreadPoolExecutor(search_threads, thread_name_prefix="leaf-search")
                           if search_threads > 0 else None)
        self.ops_pool = ThreadPoolExecutor(2, thread_name_prefix="leaf-ops")
        self.write_pool = ThreadPoolExecutor(write_threads, thread_name_prefix="leaf-write")
        self.admin_pool = ThreadPoolExecutor(1, thread_name_prefix="leaf-admin")
        self._openapi = json_bytes(openapi.document())
        self._handlers: dict[tuple[str, str], Handler] = {
            ("/documents", "POST"): self.post_documents,
            ("/documents/{key}", "GET"): self.get_document,
            ("/documents/{key}", "DELETE"): self.delete_document,
            ("/search", "GET"): self.search_get,
            ("/search", "POST"): self.search_post,
            ("/stats", "GET"): self.stats,
            ("/metrics", "GET"): self.metrics,
            ("/healthz", "GET"): self.healthz,
            ("/readyz", "GET"): self.readyz,
            ("/admin/flush", "POST"): self.flush,
            ("/admin/compact", "POST"): self.compact,
            ("/openapi.json", "GET"): self.openapi,
        }
        assert set(self._handlers) == {(r.template, m) for r in ROUTES for m in r.methods}

    def close(self) -> None:
        for pool in (self.query_pool, self.ops_pool, self.write_pool, self.admin_pool):
            if pool is not None:
                pool.shutdown(wait=True)

    def route(self, req: Request) -> tuple[str, Handler]:
        """(endpoint template, handler) or HttpError 404/405."""
        for r in ROUTES:
            if r.match(req.path):
                method = "GET" if req.method == "HEAD" else req.method
                if method not in r.methods:
                    allow = ", ".join(r.methods + (("HEAD",) if "GET" in r.methods else ()))
                    raise HttpError(405, f"{req.method} is not allowed on {r.template} "
                                    f"(allowed: {allow})", headers={"Allow": allow})
                return r.template, self._handlers[(r.template, method)]
        raise HttpError(404, f"no endpoint {req.path} (the API is described at /openapi.json)")

    async def handle(self, req: Request, handler: Handler) -> Response:
        try:
            return await handler(req)
        except HttpError as e:
            return error_response(e.status, e.message, e.headers, **e.extra)
        except BadMessages as e:
            errors = [{"index": i, "code": err.code, "error": str(err)}
                      for i, err in e.errors[:100]]
            return error_response(400, str(e), rejected=len(e.errors), total=e.total,
                                  errors=errors)
        except BadRequest as e:
            return error_response(400, str(e))
        except NotFound as e:
            return error_response(404, str(e))
        except WritesNotAccepted as e:
            return error_response(409, str(e))
        except PartialWrite as e:
            log.error("%s", e)
            return error_response(500, str(e), written=e.written, failed=e.failed)
        except LeafError as e:
            log.error("%s %s: %s", req.method, req.path, e)
            return error_response(503, str(e))
        except Exception as e:  # noqa: BLE001 - one request's bug must not end the server
            log.exception("%s %s failed", req.method, req.path)
            return error_response(500, f"internal error: {type(e).__name__}: {e}")

    async def _run(self, pool: ThreadPoolExecutor | None, fn: Callable[..., Response],
                   *args: Any) -> Response:
        if pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # ---- documents ---------------------------------------------------------------------

    async def post_documents(self, req: Request) -> Response:
        p = req.params(("wait", "timeout_ms"))
        wait = self._wait_param(p)
        if self.leaf.log is None:
            raise WritesNotAccepted(
                f"this leaf reads Kafka topic {self.leaf.config.kafka_topic!r}: write to the "
                f"topic, not to the leaf")
        return await self._run(self.write_pool, self._do_write, req.body,
                               req.headers.get("content-type"), wait)

    def _wait_param(self, p: dict[str, str]) -> float | None:
        wait = p.get("wait", "durable")
        if wait not in ("durable", "visible"):
            raise HttpError(400, f'wait must be "durable" or "visible" (got {wait!r})')
        hi = int(self.limits.max_wait_visible * 1000)
        timeout = _int_param(p.get("timeout_ms", "5000"), "timeout_ms", 0, hi) / 1000
        return timeout if wait == "visible" else None

    def _do_write(self, body: bytes, ctype: str | None, wait: float | None) -> Response:
        t0 = time.perf_counter()
        msgs = split_messages(body, ctype)
        try:
            result = self.leaf.write_ndjson(body) if msgs is None else self.leaf.write(msgs)
        except BadMessages as e:
            errors = []
            for (i, err), line in zip(e.errors[:100], e.lines):
                d: dict[str, Any] = {"index": i}
                if line is not None:
                    d["line"] = line
                d.update(code=err.code, error=str(err))
                errors.append(d)
            line = e.lines[0]
            where = f"line {line}" if line is not None else f"message {e.errors[0][0]}"
            return error_response(
                400, f"{len(e.errors)} of {e.total} message(s) are invalid, nothing was "
                f"written; {where}: {e.errors[0][1]}",
                rejected=len(e.errors), total=e.total, errors=errors)
        return self._written(result, wait, t0)

    def _written(self, result: dict[str, Any], wait: float | None, t0: float) -> Response:
        if wait is not None:
            result["visible"] = self.leaf.wait_visible(result["partitions"], wait)
        result["took_us"] = round((time.perf_counter() - t0) * 1e6)
        return json_response(200, result)

    def _key(self, req: Request) -> str:
        raw = req.path[len("/documents/"):]
        try:
            return urllib.parse.unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise HttpError(400, "the key in the path is not valid UTF-8 once "
                            "percent-decoded") from None

    async def get_document(self, req: Request) -> Response:
        p = req.params(("fields",))
        return await self._run(self.query_pool, self._do_get, self._key(req),
                               _fields_param(p.get("fields")))

    def _do_get(self, key: str, fields: list[str] | None) -> Response:
        return json_response(200, self.leaf.get(key, fields))

    async def delete_document(self, req: Request) -> Response:
        p = req.params(("version", "wait", "timeout_ms"))
        version = None
        if "version" in p:
            try:
                version = int(p["version"])
            except ValueError:
                raise HttpError(400, f"version must be an integer (got {p['version']!r})"
                                ) from None
        wait = self._wait_param(p)
        if self.leaf.log is None:
            raise WritesNotAccepted(
                f"this leaf reads Kafka topic {self.leaf.config.kafka_topic!r}: send the "
                f"delete to the topic, not to the leaf")
        return await self._run(self.write_pool, self._do_delete, self._key(req), version, wait)

    def _do_delete(self, key: str, version: int | None, wait: float | None) -> Response:
        t0 = time.perf_counter()
        try:
            result = self.leaf.delete(key, version)
        except BadMessages as e:  # a bad key or version: one message, say why
            raise BadRequest(str(e.errors[0][1])) from None
        return self._written(result, wait, t0)

    # ---- search ------------------------------------------------------------------------

    async def search_get(self, req: Request) -> Response:
        p = req.params(("q", "k", "order", "count", "fields"))
        if "q" not in p:
            raise HttpError(400, "missing parameter q (the query), e.g. /search?q=cat+-dog")
        args = self._search_args(p, "q")
        return await self._run(self.query_pool, self._do_search, args)

    async def search_post(self, req: Request) -> Response:
        body = req.json_body()
        if not isinstance(body, dict):
            raise HttpError(400, 'the body must be a JSON object such as {"q": "cat", "k": 10}')
        unknown = sorted(set(body) - set(SEARCH_KEYS))
        if unknown:
            raise HttpError(400, f"unknown key(s) {', '.join(map(repr, unknown))} (a search "
                            f"takes {', '.join(SEARCH_KEYS)})")
        args = self._search_args(body, None)
        return await self._run(self.query_pool, self._do_search, args)

    def _search_args(self, p: Mapping[str, Any], only: str | None) -> dict[str, Any]:
        order = p.get("order", "score")
        if not isinstance(order, str):
            raise HttpError(400, "order must be a string: score, bm25 or recent")
        return {
            "q": p.get("q"),
            "query": p.get("query") if only is None else None,
            "k": _int_param(p.get("k", 10), "k", 1, 10_000),
            "order": order,
            "count": _bool_param(p.get("count", False), "count"),
            "fields": _fields_param(p.get("fields")),
        }

    def _do_search(self, args: dict[str, Any]) -> Response:
        return json_response(200, self.leaf.search(**args))

    # ---- operations ----------------------------------------------------------------------

    async def stats(self, req: Request) -> Response:
        req.params(())
        return await self._run(self.ops_pool, lambda: json_response(200, self.leaf.stats()))

    async def metrics(self, req: Request) -> Response:
        req.params(())
        return await self._run(self.ops_pool, self._do_metrics)

    def _do_metrics(self) -> Response:
        body = exposition.generate_latest(self.leaf.metrics.registry)
        return Response(200, body, exposition.CONTENT_TYPE_LATEST)

    async def healthz(self, req: Request) -> Response:
        req.params(())
        return json_response(200, {"status": "ok"})

    async def readyz(self, req: Request) -> Response:
        req.params(())
        ready, why = self.leaf.ready()
        return json_response(200 if ready else 503, {"ready": ready, "reason": why})

    async def flush(self, req: Request) -> Response:
        req.params(())
        return await self._run(self.admin_pool, lambda: json_response(200, self.leaf.flush()))

    async def compact(self, req: Request) -> Response:
        req.params(())
        return await self._run(self.admin_pool,
                               lambda: json_response(200, self.leaf.compact()))

    async def openapi(self, req: Request) -> Response:
        req.params(())
        return Response(200, self._openapi)


# ---- the protocol --------------------------------------------------------------------------


class _Head(NamedTuple):
    request: Request
    length: int


class HttpConnection(asyncio.Protocol):
    """One client connection. States: reading a head, reading a body, busy
    (a request is being handled: further bytes wait in the buffer, reading
    pauses past a bound), draining (after a fatal error), closed."""

    def __init__(self, server: LeafServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.scanned = 0  # bytes of buf already searched for the end of the head
        self.head: _Head | None = None
        self.busy = False
        self.closing = False  # no more requests: close after the current response
        self.draining = False
        self.closed = False
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiter: asyncio.Future | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_kind = ""

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self._set_timer("idle", self.limits.keepalive_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self.server.connections.discard(self)
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.draining:
            return
        self.buf += data
        if self.busy:
            if len(self.buf) > self.limits.max_header_bytes + 65536:
                self._pause_reading()
            return
        self._advance()

    def eof_received(self) -> bool:
        if self.busy:
            self.closing = True  # answer, then close
            return True
        if self.draining:
            self._close()
        return False  # the transport closes itself; a half-sent request is dropped

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    # -- timers

    def _set_timer(self, kind: str, seconds: float) -> None:
        self._cancel_timer()
        self.timer_kind = kind
        self.timer = self.loop.call_later(seconds, self._on_timer)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.timer_kind = ""

    def _on_timer(self) -> None:
        kind, self.timer, self.timer_kind = self.timer_kind, None, ""
        if kind == "request":
            self._fail(HttpError(408, f"the request was not received whole within "
                                 f"{self.limits.request_timeout:g} s"))
        else:  # idle keep-alive, or a drain that lasted long enough
            self._close()

    # -- parsing

    def _advance(self) -> None:
        """Parse and start the next request in the buffer, if it is whole."""
        if self.busy or self.closing or self.draining or self.closed:
            return
        if self.head is None:
            if not self._parse_head():
                if self.buf and self.timer_kind != "request":
                    self._set_timer("request", self.limits.request_timeout)
                return
        assert self.head is not None
        if len(self.buf) < self.head.length:
            if self.timer_kind != "request":
                self._set_timer("request", self.limits.request_timeout)
            return
        req = self.head.request
        with memoryview(self.buf) as view:  # one copy (a bytearray slice would be two)
            req.body = bytes(view[: self.head.length])
        del self.buf[: self.head.length]
        self.head = None
        self.scanned = 0
        self.busy = True
        self._cancel_timer()
        self.loop.create_task(self._respond(req))

    def _parse_head(self) -> bool:
        buf = self.buf
        # Blank lines before a request line are ignored (RFC 9112 2.2).
        skip = 0
        while buf.startswith(b"\r\n", skip) or buf.startswith(b"\n", skip):
            skip += 2 if buf.startswith(b"\r\n", skip) else 1
        if skip:
            del buf[:skip]
            self.scanned = 0
        start = max(0, self.scanned - 3)
        # Only where a head can end: the buffer may already hold a big body
        # after it (a write's NDJSON has single newlines all through it).
        stop = self.limits.max_header_bytes + 4
        ends = [i for i in (buf.find(b"\r\n\r\n", start, stop), buf.find(b"\n\n", start, stop))
                if i >= 0]
        if not ends:
            self.scanned = len(buf)
            line_end = buf.find(b"\n")
            if (line_end < 0 and len(buf) > self.limits.max_request_line) or \
                    line_end > self.limits.max_request_line:
                self._fail(HttpError(414, f"the request line is over "
                                     f"{self.limits.max_request_line} bytes{_USE_POST}"))
            elif len(buf) > self.limits.max_header_bytes:
                self._fail(HttpError(431, f"the request head is over "
                                     f"{self.limits.max_header_bytes} bytes"))
            return False
        end = min(ends)
        head_len = end + (4 if buf.startswith(b"\r\n\r\n", end) else 2)
        head = bytes(buf[:end])
        try:
            parsed = self._parse(head)
        except HttpError as e:
            self._fail(e)
            return False
        del buf[:head_len]
        self.scanned = 0
        self.head = parsed
        return True

    def _parse(self, head: bytes) -> _Head:
        lim = self.limits
        lines = head.split(b"\n")
        line = lines[0].rstrip(b"\r")
        if len(line) > lim.max_request_line:
            raise HttpError(414, f"the request line is over {lim.max_request_line} bytes"
                            f"{_USE_POST}", close=True)
        if len(head) > lim.max_header_bytes:
            raise HttpError(431, f"the request head is over {lim.max_header_bytes} bytes",
                            close=True)
        if len(lines) - 1 > lim.max_headers:
            raise HttpError(431, f"more than {lim.max_headers} header fields", close=True)
        parts = line.split(b" ")
        if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
            raise HttpError(400, "malformed request line (expected: METHOD /path HTTP/1.1)",
                            close=True)
        method, target, version = parts
        if not version.startswith(b"HTTP/"):
            raise HttpError(400, "malformed request line (expected: METHOD /path HTTP/1.1)",
                            close=True)
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise HttpError(505, f"HTTP version {version.decode('latin-1')} is not supported "
                            f"(use HTTP/1.1)", close=True)
        if not _TARGET.fullmatch(target):
            raise HttpError(400, "the request target must be a path starting with '/' "
                            "(printable ASCII, percent-encoded)", close=True)
        headers: dict[str, str] = {}
        lengths: set[bytes] = set()
        for raw in lines[1:]:
            raw = raw.rstrip(b"\r")
            if raw[:1] in (b" ", b"\t"):
                raise HttpError(400, "obsolete line folding in a header is not accepted",
                                close=True)
            name, sep, value = raw.partition(b":")
            if not sep or not _TOKEN.fullmatch(name):
                raise HttpError(400, f"malformed header line {raw[:64]!r}", close=True)
            lname = name.decode("ascii").lower()
            v = value.strip(b" \t").decode("latin-1")
            if lname == "content-length":
                lengths.add(value.strip(b" \t"))
            headers[lname] = f"{headers[lname]}, {v}" if lname in headers else v
        http10 = version == b"HTTP/1.0"
        conn_tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = "keep-alive" in conn_tokens if http10 else "close" not in conn_tokens
        req = Request(method.decode("ascii"), target.decode("ascii"),
                      version.decode("ascii"), headers, keep_alive)
        if "transfer-encoding" in headers:
            te = headers["transfer-encoding"]
            if lengths:
                raise HttpError(400, "both Transfer-Encoding and Content-Length", close=True)
            if "chunked" in te.lower():
                raise HttpError(411, "chunked transfer encoding is not supported: send the "
                                "body with a Content-Length header", close=True)
            raise HttpError(501, f"transfer encoding {te!r} is not implemented", close=True)
        length = 0
        if lengths:
            if len(lengths) > 1 or not re.fullmatch(rb"[0-9]{1,18}", next(iter(lengths))):
                raise HttpError(400, "bad Content-Length", close=True)
            length = int(next(iter(lengths)))
        if length > lim.max_body_bytes:
            raise HttpError(413, f"the body is {length} bytes, over the limit of "
                            f"{lim.max_body_bytes}", close=True)
        expect = headers.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise HttpError(417, f"unsupported expectation {expect!r}", close=True)
            if length > 0 and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return _Head(req, length)

    # -- responding

    async def _respond(self, req: Request) -> None:
        server = self.server
        t0 = time.perf_counter()
        endpoint = "(none)"
        try:
            endpoint, handler = server.app.route(req)
        except HttpError as e:
            resp = error_response(e.status, e.message, e.headers)
        else:
            resp = await server.app.handle(req, handler)
        if server.stopping:
            req.keep_alive = False
        self._write_response(resp, req)
        server.observe(endpoint, req.method, resp.status, time.perf_counter() - t0)
        if not req.keep_alive or self.closing:
            self._close()
            return
        if self.writing_paused and not self.closed:
            self.drain_waiter = self.loop.create_future()
            await self.drain_waiter
            self.drain_waiter = None
        if self.closed:
            return
        self.busy = False
        self._set_timer("idle", self.limits.keepalive_timeout)
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        self._advance()

    def _write_response(self, resp: Response, req: Request | None) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        keep = req is not None and req.keep_alive and not self.closing
        reason = _reason(resp.status)
        head = [f"HTTP/1.1 {resp.status} {reason}", f"Server: {SERVER_NAME}",
                f"Content-Type: {resp.content_type}", f"Content-Length: {len(resp.body)}"]
        head.extend(f"{k}: {v}" for k, v in resp.headers)
        if not keep:
            head.append("Connection: close")
        elif req is not None and req.version == "HTTP/1.0":
            head.append("Connection: keep-alive")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if req is not None and req.method == "HEAD":
            self.transport.write(data)
        else:
            self.transport.write(data + resp.body)

    def _fail(self, e: HttpError) -> None:
        """Answer an error that ends the connection, then drain and close."""
        resp = error_response(e.status, e.message, e.headers, **e.extra)
        self.closing = True
        self._write_response(resp, None)
        self.server.observe("(none)", "", e.status, 0.0)
        self.draining = True
        self.buf.clear()
        if self.transport is not None and not self.transport.is_closing():
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._set_timer("drain", self.limits.drain_timeout)

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def close_if_idle(self) -> bool:
        """For shutdown: close now if no request is in progress."""
        self.closing = True
        if not self.busy:
            self._close()
            return True
        return False


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


# ---- the server -----------------------------------------------------------------------------


class LeafServer:
    """The HTTP server of a Leaf on the running event loop.

        server = LeafServer(leaf, "127.0.0.1", 8095)
        await server.start()         # listening when it returns
        ...
        await server.stop()          # then leaf.close(): the server does not own the leaf
    """

    def __init__(self, leaf: Leaf, host: str = "127.0.0.1", port: int = 8095, *,
                 limits: Limits | None = None, search_threads: int = 0,
                 write_threads: int = 32) -> None:
        self.leaf = leaf
        self.host = host
        self.requested_port = port
        self.limits = limits or Limits()
        self.app = LeafApp(leaf, self.limits, search_threads, write_threads)
        self.connections: set[HttpConnection] = set()
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._server: asyncio.base_events.Server | None = None
        self._metrics = leaf.metrics

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: HttpConnection(self), self.host, self.requested_port,
            reuse_address=True, backlog=1024)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        m = self._metrics
        method = method if method in _METHODS else "other"
        m.http_requests.labels(endpoint, method, str(status)).inc()
        if endpoint != "(none)":
            m.http_seconds.labels(endpoint).observe(seconds)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, close idle connections, let requests in flight
        finish (up to timeout s), close the rest, shut the pools down."""
        self.stopping = True
        self.leaf.drain()  # /readyz says 503 from now on
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + timeout
        while True:
            for c in list(self.connections):
                c.close_if_idle()
            if not self.connections or self.loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        if self.connections:
            log.warning("closing %d connection(s) with a request still in progress after "
                        "%g s", len(self.connections), timeout)
            self.leaf.cancel_waits()  # a wait=visible write must not hold the pools
            for c in list(self.connections):
                if c.transport is not None:
                    c.transport.abort()
        await self.loop.run_in_executor(None, self.app.close)


class BackgroundServer:
    """A LeafServer on an event loop in a thread of its own: for tests and
    for embedding a leaf in another program.

        with BackgroundServer(leaf, port=0) as srv:
            urllib.request.urlopen(srv.url + "/healthz")
    """

    def __init__(self, leaf: Leaf, host: str = "127.0.0.1", port: int = 0,
                 **kwargs: Any) -> None:
        self.server = LeafServer(leaf, host, port, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="leaf-http", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as e:  # noqa: BLE001 - handed to start()
            self._error = e
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    def start(self) -> BackgroundServer:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(timeout), self._loop)
        fut.result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
