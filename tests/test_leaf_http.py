"""pinstack-leaf's HTTP API over real sockets: a Leaf and its LeafServer run
in this process (BackgroundServer, port 0), clients are http.client or raw
sockets for what a well-behaved client would never send.

    api             write -> search (GET and POST, string and structured
                    queries, fields, count), get, delete, stats, admin
    bad input       every 4xx path, and after each the server still serves
                    other clients
    protocol        keep-alive, pipelining, HEAD, Expect: 100-continue,
                    timeouts, connections dropped mid-request
    operations      /healthz, /readyz, /metrics (parsed), /openapi.json
                    (describes exactly the routes served)
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pinstack.leaf.server import ROUTES, BackgroundServer, Limits
from pinstack.leaf.service import Leaf, LeafConfig
from pinstack.leaf.stream import Log

pytestmark = pytest.mark.timeout(60, method="thread")

HOST = "127.0.0.1"


class Srv:
    def __init__(self, leaf: Leaf, bg: BackgroundServer) -> None:
        self.leaf = leaf
        self.bg = bg
        self.port = bg.port

    def request(self, method: str, path: str, body: bytes | dict | list | None = None,
                headers: dict | None = None) -> tuple[int, dict, object]:
        """(status, headers, decoded JSON or text) on a fresh connection."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        if hdrs.get("content-type", "").startswith("application/json"):
            return resp.status, hdrs, json.loads(data)
        return resp.status, hdrs, data.decode()

    def write(self, messages: list[dict], wait: str = "visible") -> dict:
        status, _, body = self.request("POST", f"/documents?wait={wait}", messages)
        assert status == 200, body
        if wait == "visible":
            assert body["visible"] is True
        return body

    def search(self, q: str, **params) -> dict:
        qs = urllib.parse.urlencode({"q": q, **params})
        status, _, body = self.request("GET", f"/search?{qs}")
        assert status == 200, body
        return body

    def still_serving(self) -> None:
        """Another client, on a new connection, is served normally."""
        status, _, body = self.request("GET", "/healthz")
        assert (status, body) == (200, {"status": "ok"})
        status, _, body = self.request("POST", "/search", {"q": "*", "k": 1})
        assert status == 200 and "hits" in body


@pytest.fixture
def make_server(tmp_path):
    started: list[tuple[Leaf, BackgroundServer]] = []

    def make(limits: Limits | None = None, **config) -> Srv:
        config.setdefault("data_dir", str(tmp_path / f"leaf{len(started)}"))
        leaf = Leaf(LeafConfig(**config))
        bg = BackgroundServer(leaf, port=0, limits=limits).start()
        started.append((leaf, bg))
        return Srv(leaf, bg)

    yield make
    for leaf, bg in started:
        bg.stop()
        leaf.close()


@pytest.fixture
def srv(make_server) -> Srv:
    return make_server()


def doc(key: str, version: int = 1, title: str = "a cat", **extra) -> dict:
    return {"op": "index", "key": key, "version": version, "fields": {"title": title}, **extra}


# ---- raw sockets ----------------------------------------------------------------------------


class Reader:
    """Reads HTTP responses off a socket, keeping what follows one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self, what: str) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed {what}: {self.buf[:200]!r}")
        self.buf += chunk

    def response(self) -> tuple[int, dict, bytes]:
        """One response: (status, headers, body); skips 1xx interim ones."""
        while True:
            while b"\r\n\r\n" not in self.buf:
                self._more("before a whole response head")
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                continue
            n = int(headers.get("content-length", 0))
            while len(self.buf) < n:
                self._more("in the middle of a body")
            body, self.buf = self.buf[:n], self.buf[n:]
            return status, headers, body

    def closed(self) -> bool:
        """True if the peer closes the connection (nothing more comes)."""
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    return Reader(sock).response()


def raw(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict, dict, bool]:
    """Send bytes, read one response: (status, headers, JSON body, closed
    after it). A send the server cut short (it answered early) is fine."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = Reader(s)
        status, headers, body = r.response()
        return status, headers, json.loads(body), r.closed()


# ---- the API ----------------------------------------------------------------------------------


def test_documents_written_are_searchable(srv):
    result = srv.write([doc("pin:1", title="black cat", score=2.0, payload={"u": 1}),
                        doc("pin:2", title="white cat", score=5.0),
                        doc("pin:3", title="dog")])
    assert result["written"] == 3 and result["index"] == 3
    assert sum(p["records"] for p in result["partitions"]) == 3
    assert all(p["last_offset"] >= p["first_offset"] for p in result["partitions"])
    body = srv.search("cat", count="true")
    assert [h["key"] for h in body["hits"]] == ["pin:2", "pin:1"]  # static score order
    assert body["count"] == 2 and body["took_us"] >= 0
    assert body["hits"][1] == {"key": "pin:1", "version": 1, "score": 2.0, "payload": {"u": 1}}
    assert {h["key"] for h in srv.search("cat OR dog", k=10)["hits"]} == {"pin:1", "pin:2",
                                                                       "pin:3"}
    assert srv.search("cat", k=1)["hits"][0]["key"] == "pin:2"


def test_write_bodies_ndjson_array_and_single_object(srv):
    nd = b"\n".join(json.dumps(doc(f"n{i}")).encode() for i in range(3)) + b"\n\n"
    status, _, body = srv.request("POST", "/documents?wait=visible", nd,
                                  {"Content-Type": "application/x-ndjson"})
    assert status == 200 and body["written"] == 3
    status, _, body = srv.request("POST", "/documents?wait=visible", nd)  # sniffed
    assert status == 200 and body["written"] == 3
    status, _, body = srv.request("POST", "/documents?wait=visible", nd,  # curl -d's default
                                  {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and body["written"] == 3
    pretty = json.dumps(doc("one"), indent=2).encode()
    status, _, body = srv.request("POST", "/documents?wait=visible", pretty,
                                  {"Content-Type": "application/json"})
    assert status == 200 and body["written"] == 1
    assert srv.search("cat", count="true")["count"] == 4


def test_post_search_with_a_structured_query_and_fields(srv):
    srv.write([{"op": "index", "key": "a", "version": 1, "score": 1.0,
                "fields": {"title": "red car", "tag": ["auto", "red"]}, "payload": [1]},
               {"op": "index", "key": "b", "version": 1, "score": 2.0,
                "fields": {"title": "red bike", "tag": "bike"}}])
    status, _, body = srv.request("POST", "/search", {
        "query": ["andnot", ["term", "red"], ["term", "tag:bike"]],
        "fields": ["key", "fields", "source"], "count": True})
    assert status == 200, body
    assert body["count"] == 1
    assert body["hits"] == [{"key": "a", "fields": {"title": "red car", "tag": ["auto", "red"]},
                             "source": {"op": "index", "key": "a", "version": 1, "score": 1.0,
                                        "fields": {"title": "red car",
                                                   "tag": ["auto", "red"]},
                                        "payload": [1]}}]
    status, _, body = srv.request("POST", "/search", {"q": "red", "order": "bm25", "k": 5,
                                                      "fields": "key,score"})
    assert status == 200 and {h["key"] for h in body["hits"]} == {"a", "b"}
    assert all(set(h) == {"key", "score"} and h["score"] > 0 for h in body["hits"])


def test_get_and_delete_a_document_by_key(srv):
    key = "board/7:pin é"
    path = "/documents/" + urllib.parse.quote(key, safe="")
    srv.write([doc(key, 3, payload={"x": True})])
    status, _, body = srv.request("GET", path)
    assert status == 200
    assert body["key"] == key and body["version"] == 3 and body["payload"] == {"x": True}
    assert body["fields"] == {"title": "a cat"}
    status, _, body = srv.request("GET", path + "?fields=version")
    assert (status, body) == (200, {"version": 3})
    status, _, body = srv.request("DELETE", path + "?wait=visible")
    assert status == 200 and body["version"] == 3 and body["visible"] is True
    status, _, body = srv.request("GET", path)
    assert status == 404 and key in body["error"]
    status, _, body = srv.request("DELETE", path)
    assert status == 404 and "no document" in body["error"]
    status, _, body = srv.request("DELETE", "/documents/never?version=5&wait=visible")
    assert status == 200 and body["version"] == 5  # a tombstone
    srv.write([doc("never", 4)])
    assert srv.search("cat")["hits"] == []  # older than the tombstone: dropped


def test_stats_and_admin_actions(srv):
    srv.write([doc("s1")])
    status, _, st = srv.request("GET", "/stats")
    assert status == 200
    assert st["ready"] is True and st["source"] == "embedded"
    assert st["ingest"]["records"] == 1 and st["ingest"]["lag_total"] == 0
    assert st["engine"]["docs_live"] == 1
    assert st["log"]["appended_records"] == 1 and st["log"]["fsync"] == "always"
    assert st["schema"]["text"] == ["title", "body"]
    for action in ("flush", "compact"):
        status, _, body = srv.request("POST", f"/admin/{action}")
        assert status == 200 and "result" in body and body["took_ms"] >= 0


# ---- bad input: 4xx, and the server keeps serving ------------------------------------------


def test_bad_writes_are_rejected_whole_with_every_error(srv):
    before = srv.leaf.log.stats()["appended_records"]
    nd = (json.dumps(doc("ok")) + "\n" + '{"op":"index","key":"x","version":1,"nope":1}\n'
          + '{"op":"index","key":"y","version":1.5}\n').encode()
    status, _, body = srv.request("POST", "/documents", nd,
                                  {"Content-Type": "application/x-ndjson"})
    assert status == 400
    assert body["rejected"] == 2 and body["total"] == 3
    assert [(e["line"], e["code"]) for e in body["errors"]] == [(2, "unknown_key"), (3, "type")]
    assert "line 2: unknown key(s) 'nope'" in body["error"]
    for payload, ctype, text in [
        (b"[1, 2", "application/json", "not a JSON array"),
        (b'[{"op":"index"} {"a":1}]', "application/json", "expected ',' or ']'"),
        (b"[]", "application/json", "the array is empty"),
        (b"", "application/json", "the body is empty"),
        (b"{}", "text/html", "send messages as a JSON array"),
        (b'[{"op":"index","key":"k","version":1,"fields":{"title":"x"},"score":NaN}]',
         "application/json", "message 0: message is not valid JSON"),
        (json.dumps([doc("big", title="w " * 600_000)]).encode(), "application/json",
         "over the limit of 1048576"),
    ]:
        status, _, body = srv.request("POST", "/documents", payload, {"Content-Type": ctype})
        assert status in (400, 415) and text in body["error"], (payload[:40], body)
    assert srv.leaf.log.stats()["appended_records"] == before
    srv.still_serving()


def test_bad_searches_get_400_with_the_reason(srv):
    million = " ".join(f"w{i}" for i in range(1_000_000))
    cases = [
        ("GET", "/search?q=cat+AND", None, "expected a term at position 7"),
        ("GET", "/search?q=(cat", None, "missing ')'"),
        ("GET", "/search", None, "missing parameter q"),
        ("GET", "/search?q=cat&k=0", None, "k must be an integer 1..10000"),
        ("GET", "/search?q=cat&k=10001", None, "k must be an integer 1..10000"),
        ("GET", "/search?q=cat&k=ten", None, "k must be an integer"),
        ("GET", "/search?q=cat&order=best", None, "order must be one of"),
        ("GET", "/search?q=cat&count=maybe", None, "count must be true or false"),
        ("GET", "/search?q=cat&fields=key,secret", None, "unknown field 'secret'"),
        ("GET", "/search?q=cat&q=dog", None, "given more than once"),
        ("GET", "/search?q=cat&limit=3", None, "unknown parameter 'limit'"),
        ("GET", "/search?q=%ff", None, "not valid UTF-8"),
        ("POST", "/search", b"{not json", "the body is not valid JSON"),
        ("POST", "/search", b"[1]", "must be a JSON object"),
        ("POST", "/search", {"q": "cat", "limit": 3}, "unknown key(s) 'limit'"),
        ("POST", "/search", {"q": "cat", "query": ["term", "cat"]}, "not both"),
        ("POST", "/search", {"query": ["or"]}, "needs at least one operand"),
        ("POST", "/search", {"query": ["term", "a", "b"]}, "takes exactly one term"),
        ("POST", "/search", {"q": million}, "over the limit of 65536"),
        ("POST", "/search", {"q": " ".join(f"w{i}" for i in range(5000))},
         "more than 4096 terms"),
        ("POST", "/search", {"query": ["or"] + [["term", f"w{i}"] for i in range(100_000)]},
         "more than"),
        ("POST", "/search", {"q": "cat", "k": True}, "k must be an integer"),
    ]
    for method, path, body, text in cases:
        status, _, got = srv.request(method, path, body)
        assert status == 400 and text in got["error"], (method, path, got)
    status, _, got = srv.request("POST", "/search", b'{"q":"cat"}',
                                 {"Content-Type": "text/plain"})
    assert status == 415
    srv.still_serving()


def test_unknown_paths_and_wrong_methods(srv):
    status, _, body = srv.request("GET", "/nope")
    assert status == 404 and "/openapi.json" in body["error"]
    status, _, body = srv.request("GET", "/documents/")
    assert status == 404
    status, headers, body = srv.request("PUT", "/search")
    assert status == 405 and headers["allow"] == "GET, POST, HEAD"
    assert "PUT is not allowed on /search" in body["error"]
    status, headers, _ = srv.request("GET", "/documents")
    assert status == 405 and headers["allow"] == "POST"
    status, headers, _ = srv.request("POST", "/documents/k")
    assert status == 405 and headers["allow"] == "GET, DELETE, HEAD"
    status, _, _ = srv.request("GET", "/admin/flush")
    assert status == 405
    srv.still_serving()


@pytest.mark.parametrize("request_bytes, status, text", [
    (b"GET /healthz HTTP/1.1\r\n" + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431,
     "head is over 16384 bytes"),
    (b"GET /healthz HTTP/1.1\r\n" + b"X-Big: " + b"a" * 20_000, 431, "head is over"),
    (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101))
     + b"\r\n", 431, "more than 100 header fields"),
    (b"GET /search?q=" + b"a+" * 50_000 + b" HTTP/1.1\r\n\r\n", 414, "request line is over"),
    (b"POST /documents HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n" + b"x" * 65536, 413,
     "over the limit of 33554432"),
    (b"POST /documents HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     411, "chunked transfer encoding is not supported"),
    (b"POST /documents HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not implemented"),
    (b"POST /search HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400,
     "bad Content-Length"),
    (b"POST /search HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "bad Content-Length"),
    (b"GET /healthz HTTP/2.0\r\n\r\n", 505, "not supported"),
    (b"GET /healthz\r\n\r\n", 400, "malformed request line"),
    (b"GET  /healthz HTTP/1.1\r\n\r\n", 400, "malformed request line"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "malformed request line"),
    (b"GET healthz HTTP/1.1\r\n\r\n", 400, "request target must be a path"),
    (b"GET /healthz HTTP/1.1\r\nBad Header: 1\r\n\r\n", 400, "malformed header line"),
    (b"GET /healthz HTTP/1.1\r\nX: 1\r\n  folded\r\n\r\n", 400, "obsolete line folding"),
    (b"POST /search HTTP/1.1\r\nExpect: magic\r\nContent-Length: 2\r\n\r\n{}", 417,
     "unsupported expectation"),
], ids=["big-head", "endless-head", "many-headers", "long-request-line", "huge-body",
        "chunked", "gzip-te", "two-lengths", "negative-length", "http2", "no-version",
        "double-space", "tls-hello", "no-slash", "space-in-header-name", "folded-header",
        "expect-magic"])
def test_malformed_requests_get_an_error_and_the_connection_closes(srv, request_bytes, status,
                                                                   text):
    got, headers, body, closed = raw(srv.port, request_bytes)
    assert got == status and text in body["error"], body
    assert headers["connection"] == "close" and closed
    srv.still_serving()


def test_a_million_term_query_in_the_url_is_refused(srv):
    q = urllib.parse.quote_plus(" ".join(f"w{i}" for i in range(1_000_000)))
    status, _, body, _ = raw(srv.port, f"GET /search?q={q} HTTP/1.1\r\n\r\n".encode())
    assert status == 414 and "send a long query with POST /search" in body["error"]
    srv.still_serving()


def test_connections_dropped_mid_request_do_not_disturb_others(srv):
    srv.write([doc("d1")])
    partial = [
        b"GET /sea",  # inside the request line
        b"POST /documents HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b'[{"op":',  # in the body
        b"POST /search HTTP/1.1\r\nContent-Le",  # inside a header
    ]
    held = socket.create_connection((HOST, srv.port))  # stays half-sent during the others
    held.sendall(b"POST /search HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
    for data in partial:
        with socket.create_connection((HOST, srv.port)) as s:
            s.sendall(data)
        srv.still_serving()
    with socket.create_connection((HOST, srv.port)) as s:  # reset instead of FIN
        s.sendall(partial[1])
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    srv.still_serving()
    held.sendall(b'"q": "cat"}'.ljust(49) + b"\n")  # the held request completes normally
    status, _, body = read_response(held)
    held.close()
    assert status == 200 and [h["key"] for h in json.loads(body)["hits"]] == ["d1"]
    assert srv.leaf.log.stats()["appended_records"] == 1  # the cut write never reached it


def test_a_request_not_received_in_time_gets_408(make_server):
    srv = make_server(limits=Limits(request_timeout=0.3))
    with socket.create_connection((HOST, srv.port), timeout=10) as s:
        s.sendall(b"POST /search HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
        status, headers, body = read_response(s)
    assert status == 408 and "not received whole within 0.3 s" in json.loads(body)["error"]
    srv.still_serving()


def test_a_write_to_a_leaf_that_reads_kafka_is_refused(srv):
    srv.leaf.log, log = None, srv.leaf.log  # as a Kafka-fed leaf has no log
    srv.leaf.config.kafka_topic = "pins"
    try:
        status, _, body = srv.request("POST", "/documents", [doc("x")])
        assert status == 409 and "write to the topic" in body["error"]
        status, _, body = srv.request("DELETE", "/documents/x?version=3")
        assert status == 409
    finally:
        srv.leaf.log = log


# ---- protocol ------------------------------------------------------------------------------


def test_keep_alive_and_pipelining(srv):
    srv.write([doc("k1"), doc("k2", title="dog")])
    with socket.create_connection((HOST, srv.port), timeout=10) as s:
        s.sendall(b"GET /search?q=cat HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /search?q=dog HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /nope HTTP/1.1\r\n\r\n"
                  b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        r = Reader(s)
        answers = [r.response() for _ in range(4)]
        assert [a[0] for a in answers] == [200, 200, 404, 200]
        assert json.loads(answers[0][2])["hits"][0]["key"] == "k1"
        assert json.loads(answers[1][2])["hits"][0]["key"] == "k2"
        assert answers[3][1]["connection"] == "close"
        assert r.closed()


def test_http10_head_and_expect_continue(srv):
    with socket.create_connection((HOST, srv.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        status, headers, body = read_response(s)
        assert status == 200 and headers["connection"] == "close" and s.recv(1) == b""
    with socket.create_connection((HOST, srv.port), timeout=10) as s:
        s.sendall(b"HEAD /healthz HTTP/1.1\r\n\r\n")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 16" in head
        s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")  # no body came after the HEAD answer
        assert read_response(s)[2] == b'{"status":"ok"}\n'
    body = json.dumps([doc("e1")]).encode()
    with socket.create_connection((HOST, srv.port), timeout=10) as s:
        s.sendall(b"POST /documents HTTP/1.1\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        interim = s.recv(25)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        status, _, answer = read_response(s)
        assert status == 200 and json.loads(answer)["written"] == 1


def test_concurrent_writers_and_searchers(srv):
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(10):
                srv.write([doc(f"w{w}:{i}:{j}") for j in range(5)], wait="durable")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def searcher() -> None:
        try:
            for _ in range(30):
                srv.search("cat", k=5)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    deadline = time.monotonic() + 10
    while srv.search("cat", count="true")["count"] < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.search("cat", count="true")["count"] == 200


# ---- operations ----------------------------------------------------------------------------


def test_readyz_is_503_until_caught_up_and_when_halted(make_server, tmp_path):
    data = tmp_path / "halting"
    wal = Log(data / "log", 1)
    wal.append(0, [json.dumps(doc("h1")).encode(), b'{"op":"index","key":"h2"}'])
    wal.close()
    srv = make_server(data_dir=str(data), on_bad_message="halt")
    deadline = time.monotonic() + 10
    while srv.leaf.stats()["ingest"]["halted"] is None and time.monotonic() < deadline:
        time.sleep(0.01)
    status, _, body = srv.request("GET", "/readyz")
    assert status == 503 and body["ready"] is False
    assert "ingestion halted" in body["reason"] and "partition 0 offset 1" in body["reason"]
    assert srv.request("GET", "/healthz")[0] == 200  # alive all the same
    ok = make_server()
    deadline = time.monotonic() + 10
    while ok.request("GET", "/readyz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ok.request("GET", "/readyz")[2] == {"ready": True,
                                               "reason": "caught up with the stream"}


def test_metrics_parse_and_name_what_an_operator_watches(srv):
    srv.write([doc("m1"), doc("m2")])
    srv.search("cat")
    srv.request("GET", "/search?q=(")
    srv.request("POST", "/documents", [{"op": "index"}])
    srv.request("POST", "/admin/flush")
    status, headers, text = srv.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("pinstack_leaf_ingested_records", "pinstack_leaf_applied_ops",
                 "pinstack_leaf_lag_records", "pinstack_leaf_visibility_seconds",
                 "pinstack_leaf_apply_seconds", "pinstack_leaf_segments",
                 "pinstack_leaf_segment_bytes", "pinstack_leaf_docs_live",
                 "pinstack_leaf_flush_seconds", "pinstack_leaf_compaction_seconds",
                 "pinstack_leaf_query_seconds", "pinstack_leaf_bad_messages",
                 "pinstack_leaf_rejected_messages", "pinstack_leaf_http_requests",
                 "pinstack_leaf_http_request_seconds", "pinstack_leaf_ready",
                 "pinstack_leaf_log_fsyncs", "pinstack_leaf_log_bytes"):
        assert name in families, name

    def sample(family: str, name: str, **labels) -> float:
        for s in families[family].samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        raise AssertionError(f"no sample {name} {labels}")

    assert sample("pinstack_leaf_ingested_records", "pinstack_leaf_ingested_records_total") == 2
    assert sample("pinstack_leaf_docs_live", "pinstack_leaf_docs_live") == 2
    assert sample("pinstack_leaf_ready", "pinstack_leaf_ready") == 1
    assert sample("pinstack_leaf_http_requests", "pinstack_leaf_http_requests_total",
                  endpoint="/search", method="GET", status="400") == 1
    assert sample("pinstack_leaf_http_requests", "pinstack_leaf_http_requests_total",
                  endpoint="/documents", method="POST", status="200") == 1
    assert sample("pinstack_leaf_rejected_messages", "pinstack_leaf_rejected_messages_total",
                  code="missing") == 1
    assert sample("pinstack_leaf_visibility_seconds",
                  "pinstack_leaf_visibility_seconds_count") >= 1
    assert sample("pinstack_leaf_query_seconds", "pinstack_leaf_query_seconds_count",
                  op="search") >= 1
    assert sample("pinstack_leaf_flush_seconds", "pinstack_leaf_flush_seconds_count") == 1
    lags = [s for s in families["pinstack_leaf_lag_records"].samples]
    assert sorted(s.labels["partition"] for s in lags) == ["0", "1", "2", "3"]


def test_openapi_describes_exactly_the_routes_served(srv):
    status, _, spec = srv.request("GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.1")
    described = {(path, method.upper()) for path, ops in spec["paths"].items()
                 for method in ops}
    served = {(r.template, m) for r in ROUTES for m in r.methods}
    assert described == served
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and op["responses"], (path, method)
    # every $ref resolves
    text = json.dumps(spec)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        name = ref.rsplit("/", 1)[1]
        assert name in spec["components"]["schemas"], ref
    # and every described route is really there (neither 404 nor 405)
    for path, method in sorted(described):
        url = path.replace("{key}", "somekey")
        body = {"q": "*"} if (path, method) == ("/search", "POST") else None
        if (path, method) == ("/documents", "POST"):
            body = [doc("spec")]
        status, _, got = srv.request(method, url, body)
        assert status != 405, (path, method, got)
        if status == 404:  # only "no such document", never "no such endpoint"
            assert path == "/documents/{key}" and "no document" in got["error"], (path, got)


# ---- shutdown ---------------------------------------------------------------------------------


@pytest.fixture
def stalled(make_server):
    """A server whose ingestion is stuck (the test holds the engine's write
    lock, as a long apply would): writes are durable but not visible."""
    srv = make_server()
    srv.leaf._engine_lock.acquire()
    yield srv
    srv.leaf._engine_lock.release()


def in_flight_write(srv: Srv, timeout_ms: int) -> tuple[threading.Thread, list]:
    got: list = []

    def client() -> None:
        try:
            got.append(srv.request("POST", f"/documents?wait=visible&timeout_ms={timeout_ms}",
                                   [doc("late")]))
        except (ConnectionError, http.client.HTTPException) as e:
            got.append(e)

    t = threading.Thread(target=client)
    t.start()
    deadline = time.monotonic() + 10
    while srv.leaf.log.stats()["appended_records"] == 0:  # durable, now waiting
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return t, got


def test_stop_lets_a_request_in_flight_finish(stalled):
    srv = stalled
    t, got = in_flight_write(srv, timeout_ms=1000)
    srv.bg.stop(timeout=20)
    t.join()
    status, headers, body = got[0]
    assert status == 200 and body["written"] == 1 and body["visible"] is False
    assert headers["connection"] == "close"
    assert srv.leaf.ready() == (False, "shutting down")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, srv.port), timeout=5)


def test_stop_does_not_wait_past_its_grace_time(stalled):
    t, got = in_flight_write(stalled, timeout_ms=50_000)
    stalled.bg.stop(timeout=0.2)  # returns: the wait is cancelled, the connection cut
    t.join()
    assert isinstance(got[0], (ConnectionError, http.client.HTTPException))
