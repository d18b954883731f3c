"""The pinstack-leaf command line, end to end: `serve` runs as a real
process (python -m pinstack.leaf serve --port 0, its address read from its
log), and `produce`, `search` and `status` run as processes against it.

    end to end      produce (files, stdin) -> search -> status -> SIGTERM
    restart         the same --data: the log is kept and applied again
    failures        rejected batches name file and line; no server; a data
                    directory or port in use; bad schema; not ready (exit 3)
    command line    bad flags exit 2 with argparse's usage
"""

from __future__ import annotations

import json
import urllib.request
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pinstack.leaf import cli
from pinstack.leaf.stream import Log

pytestmark = pytest.mark.timeout(60, method="thread")

LEAF = [sys.executable, "-m", "pinstack.leaf"]
START_TIMEOUT = 20.0


def run(*args: str, stdin: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*LEAF, *args], input=stdin, capture_output=True, timeout=timeout)


class LeafProcess:
    """`pinstack-leaf serve` in a subprocess; stderr goes to a file."""

    def __init__(self, tmp_path: Path, data: Path, *args: str, port: str = "0") -> None:
        self.err_path = tmp_path / f"serve-{time.monotonic_ns()}.err"
        argv = [*LEAF, "serve", "--data", str(data), *(("--port", port) if port else ()), *args]
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        self.url = ""

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_serving(self) -> LeafProcess:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            m = re.search(r"serving (http://\S+)", self.stderr())
            if m:
                self.url = m.group(1)
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n"
                                     f"{self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not start:\n{self.stderr()}")
            time.sleep(0.02)

    def wait_exit(self, timeout: float = 15) -> int:
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"serve did not stop on signal {sig}:\n{self.stderr()}"
                                 ) from None


@pytest.fixture
def serve(tmp_path):
    started: list[LeafProcess] = []

    def start(data: Path | None = None, *args: str, port: str = "0",
              wait: bool = True) -> LeafProcess:
        p = LeafProcess(tmp_path, data or tmp_path / "data", *args, port=port)
        started.append(p)
        return p.wait_serving() if wait else p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def ndjson(*messages: dict) -> bytes:
    return b"".join(json.dumps(m).encode() + b"\n" for m in messages)


def doc(key: str, title: str = "a cat", version: int = 1, **extra) -> dict:
    return {"op": "index", "key": key, "version": version, "fields": {"title": title}, **extra}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- end to end ----------------------------------------------------------------------------


def test_serve_produce_search_status_then_sigterm(serve, tmp_path):
    leaf = serve()
    f = tmp_path / "docs.ndjson"
    f.write_bytes(ndjson(doc("pin:1", "black cat", score=1.0, payload={"u": "a"}),
                         doc("pin:2", "white cat", score=2.0)) + b"\n\n")
    out = run("produce", str(f), "-", "--url", leaf.url, "--wait-visible", "--batch", "2",
              stdin=ndjson(doc("pin:3", "dog")))
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == (f"produced 3 message(s) (3 index, 0 delete) in 2 "
                                           f"batch(es) to {leaf.url}")

    out = run("search", "cat", "--url", leaf.url, "--count")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert lines[0].startswith("2 hit(s) of 2 matching (")
    assert lines[1].split() == ["2", "pin:2", "v1", "null"]
    assert lines[2].split() == ["1", "pin:1", "v1", '{"u":"a"}']

    out = run("search", "dog OR cat", "--url", leaf.url, "--json", "-k", "1",
              "--order", "recent", "--fields", "key")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["hits"]) == 1

    out = run("status", "--url", leaf.url)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert re.search(r"^ready +yes \(caught up", text, re.M)
    assert re.search(r"^documents +3 live", text, re.M)
    assert re.search(r"^source +embedded log, 4 partitions, fsync always", text, re.M)
    assert re.search(r"^ingested +3 records: 3 added", text, re.M)
    out = run("status", "--url", leaf.url, "--json")
    assert json.loads(out.stdout)["ingest"]["records"] == 3

    assert leaf.stop(signal.SIGTERM) == 0
    assert "SIGTERM: stopping" in leaf.stderr() and "stopped" in leaf.stderr()
    assert (tmp_path / "data" / "log" / "CLEAN").exists()  # the log was closed cleanly


def test_serve_freezes_its_startup_objects_and_reports_gc_pauses(serve, tmp_path):
    """A serve process keeps what it started with out of the cyclic
    collector's walks (logged) and exposes every collection's pause by
    generation; enough requests make generation 0 collect at least once."""
    leaf = serve()
    deadline = time.monotonic() + 30  # logged just after it listens
    while not re.search(r"froze \d+ objects", leaf.stderr()):
        assert time.monotonic() < deadline, leaf.stderr()
        time.sleep(0.05)
    f = tmp_path / "docs.ndjson"
    f.write_bytes(ndjson(*(doc(f"pin:{i}", f"cat number {i}") for i in range(300))))
    assert run("produce", str(f), "--url", leaf.url, "--batch", "1").returncode == 0
    for _ in range(20):
        assert run("search", "cat", "--url", leaf.url).returncode == 0
    with urllib.request.urlopen(leaf.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r'^pinstack_leaf_gc_pause_seconds_count\{generation="0"\} (\S+)$', text, re.M)
    assert m and float(m.group(1)) >= 1, text[:2000]
    assert leaf.stop() == 0


def test_restart_with_the_same_data_keeps_and_reapplies_the_log(serve, tmp_path):
    leaf = serve()
    docs = ndjson(*(doc(f"k{i}", f"word{i % 3}") for i in range(30)))
    assert run("produce", "--url", leaf.url, stdin=docs).returncode == 0
    assert leaf.stop(signal.SIGINT) == 0
    leaf = serve()
    deadline = time.monotonic() + 15
    while run("status", "--url", leaf.url).returncode != 0:  # 3 while catching up
        assert time.monotonic() < deadline, leaf.stderr()
        time.sleep(0.05)
    out = run("search", "word1", "--url", leaf.url, "--count", "--json")
    assert json.loads(out.stdout)["count"] == 10
    assert leaf.stop() == 0


def test_serve_with_only_data_listens_on_8095(serve, tmp_path):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", cli.DEFAULT_PORT))
        except OSError:
            pytest.skip(f"port {cli.DEFAULT_PORT} is in use here")
    leaf = serve(port="")
    assert leaf.url == f"http://127.0.0.1:{cli.DEFAULT_PORT}"
    env = {k: v for k, v in os.environ.items() if k != "PINSTACK_LEAF_URL"}
    out = subprocess.run([*LEAF, "produce"], input=ndjson(doc("d")), capture_output=True,
                         env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert leaf.stop() == 0


# ---- failures ---------------------------------------------------------------------------------


def test_a_rejected_batch_names_the_file_and_line(serve, tmp_path):
    leaf = serve()
    f = tmp_path / "in.ndjson"
    f.write_bytes(ndjson(doc("a"), doc("b")) + b"\n" + ndjson(doc("c"))
                  + b'{"op":"index","key":"d","version":1,"fields":{"colour":"red"}}\n')
    out = run("produce", str(f), "--url", leaf.url, "--batch", "2")
    assert out.returncode == 1
    err = out.stderr.decode()
    assert f"{f}:5: unknown field 'colour'" in err
    assert "the batch was not written; 2 message(s) in 1 batch(es) before it were written" in err
    out = run("search", "cat", "--url", leaf.url, "--count", "--json")
    deadline = time.monotonic() + 10
    while json.loads(out.stdout)["count"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        out = run("search", "cat", "--url", leaf.url, "--count", "--json")
    assert json.loads(out.stdout)["count"] == 2  # a and b; c went with the bad batch
    out = run("search", "cat AND", "--url", leaf.url)
    assert out.returncode == 1
    assert "expected a term at position 7" in out.stderr.decode() and "HTTP 400" in \
        out.stderr.decode()
    out = run("produce", str(tmp_path / "missing.ndjson"), "--url", leaf.url)
    assert out.returncode == 1 and "cannot read" in out.stderr.decode()


def test_client_commands_say_when_no_server_is_there():
    url = f"http://127.0.0.1:{closed_port()}"
    for args in (["search", "cat"], ["status"], ["produce"]):
        out = run(*args, "--url", url, stdin=ndjson(doc("x")))
        assert out.returncode == 1, args
        assert out.stderr.decode().strip() == (
            f"pinstack-leaf: cannot connect to {url}: connection refused (is "
            f"`pinstack-leaf serve` running there?)")


def test_a_data_directory_or_port_in_use_is_refused(serve, tmp_path):
    first = serve()
    second = serve(tmp_path / "data", wait=False)
    assert second.wait_exit() == 1
    assert "cannot start: log" in second.stderr() and "is open in another process" in \
        second.stderr()
    port = first.url.rsplit(":", 1)[1]
    third = serve(tmp_path / "other", port=port, wait=False)
    assert third.wait_exit() == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in third.stderr()
    assert (tmp_path / "other" / "log" / "CLEAN").exists()  # it closed what it opened
    bad = tmp_path / "schema.json"
    bad.write_text('{"text": ["title"], "colour": []}')
    fourth = serve(tmp_path / "third", "--schema", str(bad), wait=False)
    assert fourth.wait_exit() == 1
    assert "unknown key(s) 'colour'" in fourth.stderr()
    assert first.stop() == 0


def test_status_exits_3_while_not_ready(serve, tmp_path):
    data = tmp_path / "data"
    wal = Log(data / "log", 2)
    wal.append(0, [json.dumps(doc("a")).encode(), b"{oops"])
    wal.close()
    leaf = serve(data, "--on-bad-message", "halt")
    deadline = time.monotonic() + 10
    while True:
        out = run("status", "--url", leaf.url)
        if "HALTED" in out.stdout.decode() or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert out.returncode == 3
    assert re.search(r"^ready +no \(ingestion halted: bad message at partition 0 offset 1",
                     out.stdout.decode(), re.M)
    assert "ingestion halted in front of a bad message" in leaf.stderr()
    assert leaf.stop() == 0


# ---- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("argv, text", [
    ([], "the following arguments are required: COMMAND"),
    (["serve"], "the following arguments are required: --data"),
    (["serve", "--data", "d", "--fsync", "sometimes"], 'must be "always" or "interval_ms=N"'),
    (["serve", "--data", "d", "--port", "70000"], "must be 0..65535"),
    (["serve", "--data", "d", "--partitions", "0"], "must be 1..4096"),
    (["serve", "--data", "d", "--source", "file"], "invalid choice: 'file'"),
    (["serve", "--data", "d", "--kafka-partitions", "a,b"], "comma-separated list"),
    (["serve", "--data", "d", "--max-body-bytes", "lots"], "a size in bytes"),
    (["search"], "the following arguments are required: query"),
    (["search", "cat", "-k", "0"], "must be 1..10000"),
    (["search", "cat", "--url", "ftp://x"], "an http:// URL"),
    (["produce", "--batch", "x"], "not an integer"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
], ids=["no-command", "no-data", "fsync", "port", "partitions", "source", "kafka-partitions",
        "size", "no-query", "k", "url", "batch", "command"])
def test_bad_command_lines_exit_2(capsys, argv, text):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: pinstack-leaf" in err and text in err


def test_bad_combinations_are_explained(capsys, tmp_path):
    assert cli.main(["serve", "--data", str(tmp_path), "--source", "kafka"]) == 1
    assert "--source kafka needs --kafka-brokers and --kafka-topic" in capsys.readouterr().err
    assert cli.main(["serve", "--data", str(tmp_path), "--kafka-topic", "t"]) == 1
    assert "--kafka-* options need --source kafka" in capsys.readouterr().err


def test_the_module_and_version_run_as_a_process():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.decode().startswith("pinstack-leaf ")
    out = run("serve", "--data")
    assert out.returncode == 2 and b"expected one argument" in out.stderr


# ---- the index (engine) flags of serve -------------------------------------------------------


@pytest.mark.parametrize("argv, text", [
    (["--max-segment-docs", "0"], "must be 1..1073741824 (got 0)"),
    (["--max-segment-docs", "many"], "not an integer: 'many'"),
    (["--max-segment-age", "0"], "must be more than 0"),
    (["--max-segment-age", "-5"], "must be more than 0"),
    (["--max-segment-age", "nan"], "must be more than 0"),
    (["--max-segment-age", "inf"], "must be more than 0"),
    (["--max-segment-age", "soon"], "not a number of seconds: 'soon'"),
    (["--merge-factor", "1"], "must be 2..1024 (got 1)"),
    (["--merge-factor", "2.5"], "not an integer: '2.5'"),
    (["--compaction-rate", "-1"], "a size in bytes, or with k/m/g (got '-1')"),
    (["--compaction-rate", "fast"], "a size in bytes, or with k/m/g (got 'fast')"),
], ids=["docs-0", "docs-word", "age-0", "age-negative", "age-nan", "age-inf", "age-word",
        "merge-1", "merge-float", "rate-negative", "rate-word"])
def test_bad_engine_flags_exit_2(capsys, argv, text):
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--data", "d", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: pinstack-leaf" in err and f"argument {argv[0]}: " in err and text in err


def test_engine_flags_reach_the_engine_and_default_to_its_own(capsys):
    import inspect

    from pinstack.leaf.engine import Engine

    parse = cli.build_parser().parse_args
    args = parse(["serve", "--data", "d", "--max-segment-docs", "200", "--max-segment-age",
                  "2.5", "--merge-factor", "2", "--compaction-rate", "1m"])
    assert cli._engine_options(args) == {"max_segment_docs": 200, "max_segment_age_s": 2.5,
                                         "merge_factor": 2, "compaction_bytes_per_sec": 1 << 20}
    assert cli._engine_options(parse(["serve", "--data", "d", "--compaction-rate", "0"])) == \
        {"compaction_bytes_per_sec": 0}  # 0: unthrottled, passed as it is
    assert cli._engine_options(parse(["serve", "--data", "d"])) == {}  # the engine's defaults
    # Every keyword is one Engine takes, and the default the help names is Engine's.
    params = inspect.signature(Engine).parameters
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    shown = {"max_segment_docs": "1048576", "max_segment_age_s": "600", "merge_factor": "4",
             "compaction_bytes_per_sec": "64m"}
    for flag, kw in cli.ENGINE_FLAGS.items():
        default = params[kw].default
        assert (cli._size(shown[kw]) if kw == "compaction_bytes_per_sec"
                else float(shown[kw])) == default, kw
        option = "--" + flag.replace("_", "-")
        assert re.search(rf"{option} \S+ [^-]*?\(default {shown[kw]}\b", text), option


def test_serve_runs_with_the_engine_flags(serve, tmp_path):
    # 5 documents a segment: 12 documents make two segment files (and the
    # rest in the realtime segment), merged by compaction with factor 2.
    leaf = serve(None, "--max-segment-docs", "5", "--merge-factor", "2",
                 "--compaction-rate", "0", "--max-segment-age", "3600")
    docs = ndjson(*(doc(f"k{i}", "cat") for i in range(12)))
    assert run("produce", "--url", leaf.url, "--wait-visible", "--batch", "1",
               stdin=docs).returncode == 0
    out = run("status", "--url", leaf.url, "--json")
    engine = json.loads(out.stdout)["engine"]
    assert engine["rotations"] == 2 and engine["docs_live"] == 12
    out = run("search", "cat", "--url", leaf.url, "--count", "--json")
    assert json.loads(out.stdout)["count"] == 12
    assert leaf.stop() == 0
