"""Test harness: real servers in subprocesses, raw sockets to talk to them.

Every protocol test drives a real process over TCP, as memcached's own
t/*.t do. The same helpers drive pinstack-cache and the reference
memcached, so a test can run against both (see server_pair in conftest.py).

    free_port()            a TCP port nobody listens on (per-session unique)
    ServerProcess          a started server: .port .proc .stats() .stop()
    start_server(...)      spawn, wait until the port accepts
    send_recv(...)         one-shot: send bytes, read the answer
    MemcacheConn           a raw connection with read_until/read_exact/expect
    diff_script(pair, b)   the same bytes to both servers -> (ours, theirs)
    rss_kb(pid)            a process's resident memory, from /proc
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

HOST = "127.0.0.1"
STOP_TIMEOUT = 10.0  # seconds a server gets to exit after SIGTERM
START_TIMEOUT = 15.0  # generous: sanitizer builds start slowly

# Arguments every test server starts with unless the test overrides them
# (later flags win, as with getopt): small, local, no UDP.
DEFAULT_ARGS = ("-U", "0", "-t", "2", "-m", "64")

# Variables that instrument our sanitizer build; a foreign binary must not
# inherit them (an uninstrumented memcached under LD_PRELOAD'ed ASan with
# leak checking would report memcached's own exit-time allocations).
SANITIZER_ENV = ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")

# stats that differ between any two servers, or between two runs.
VOLATILE_STATS = frozenset(
    {
        "pid", "uptime", "time", "version", "libevent", "pointer_size",
        "rusage_user", "rusage_system", "max_connections", "threads",
        "curr_connections", "total_connections", "connection_structures",
        "reserved_fds", "bytes_read", "bytes_written", "response_obj_bytes",
        "response_obj_count", "read_buf_bytes", "read_buf_bytes_free",
        "read_buf_count", "read_buf_oom", "hash_power_level", "hash_bytes",
        "hash_is_expanding", "malloc_fails", "log_worker_dropped",
        "log_worker_written", "log_watcher_skipped", "log_watcher_sent",
        "log_watchers", "lru_crawler_running", "lru_maintainer_juggles",
        "slab_global_page_pool", "lru_crawler_starts", "slab_reassign_rescues",
        "slab_reassign_chunk_rescues", "slab_reassign_evictions_nomem",
        "slab_reassign_inline_reclaim", "slab_reassign_busy_items",
        "slab_reassign_busy_deletes", "slab_reassign_running", "slabs_moved",
        "unexpected_napi_ids", "round_robin_fallback", "total_items",
        "listen_disabled_num", "time_in_listen_disabled_us", "accepting_conns",
        "conn_yields", "rejected_connections", "limit_maxbytes",
    }
)

_ports_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port that is free now and not handed out before in this session."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port
    raise RuntimeError("no free TCP port found")


def pinstack_cache_command() -> list[str]:
    """How to run pinstack-cache from this Python environment."""
    script = Path(sys.executable).with_name("pinstack-cache")
    if script.exists():
        return [str(script)]
    found = shutil.which("pinstack-cache")
    if found:
        return [found]
    return [sys.executable, "-m", "pinstack.cache"]


def memcached_command() -> list[str] | None:
    """The reference memcached, or None if it is not installed."""
    found = shutil.which("memcached") or (
        "/usr/bin/memcached" if os.access("/usr/bin/memcached", os.X_OK) else None
    )
    if found is None:
        return None
    # memcached refuses to run as root without -u.
    return [found, "-u", "root"] if os.geteuid() == 0 else [found]


def rss_kb(pid: int) -> int:
    """Resident set size of process `pid` in KiB (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid} (a zombie?)")


def clean_env() -> dict[str, str]:
    """The environment without sanitizer instrumentation (for foreign binaries)."""
    return {k: v for k, v in os.environ.items() if k not in SANITIZER_ENV}


def parse_stats(raw: bytes) -> dict[str, str]:
    """b"STAT k v\\r\\n...END\\r\\n" -> {k: v}."""
    stats = {}
    for line in raw.split(b"\r\n"):
        if line.startswith(b"STAT "):
            _, key, value = line.decode().split(" ", 2)
            stats[key] = value
    return stats


def stable_stats(stats: dict[str, str]) -> dict[str, str]:
    """stats without the VOLATILE_STATS keys: comparable across servers."""
    return {k: v for k, v in stats.items() if k not in VOLATILE_STATS}


class ServerProcess:
    """A server running in a subprocess, its stderr going to a file."""

    def __init__(self, name: str, proc: subprocess.Popen, port: int, args: Sequence[str],
                 stderr_path: Path):
        self.name = name
        self.proc = proc
        self.port = port
        self.args = list(args)
        self.stderr_path = stderr_path
        self.stopped_status: int | None = None

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.proc.pid} port={self.port}>"

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def conn(self, timeout: float = 5.0) -> MemcacheConn:
        return MemcacheConn(self.port, timeout=timeout)

    def stats(self, group: str = "") -> dict[str, str]:
        command = f"stats {group}".strip().encode() + b"\r\n"
        return parse_stats(send_recv(self.port, command, expect_end=b"END\r\n"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the server and wait for it; its exit status (negative: killed).

        A server still running after `timeout` is killed, and -SIGKILL is
        returned. Idempotent: a second call returns the first status.
        """
        if self.stopped_status is not None:
            return self.stopped_status
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.stopped_status = -signal.SIGKILL
                return self.stopped_status
        self.stopped_status = self.proc.returncode
        return self.stopped_status

    def failure_report(self) -> str:
        return f"{self!r} args={self.args}\n--- stderr ---\n{self.stderr_text()}--- end ---"


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = START_TIMEOUT) -> None:
    """Return once `port` accepts a connection; raise if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on port {port} after {timeout} s") from None
            time.sleep(0.02)


def start_server(name: str, command: Sequence[str], args: Sequence[str], tmp_dir: Path,
                 env: dict[str, str] | None = None, port: int | None = None) -> ServerProcess:
    """Spawn `command -p PORT <args>` and wait until the port accepts."""
    if port is None:
        port = free_port()
    full_args = ["-p", str(port), *args]
    stderr_path = tmp_dir / f"{name}-{port}.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [*command, *full_args],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env=env,
        )
    server = ServerProcess(name, proc, port, full_args, stderr_path)
    try:
        wait_for_port(port, proc)
    except Exception as exc:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"{name} did not start: {exc}\n{server.failure_report()}") from exc
    return server


def send_recv(port: int, data: bytes, expect_end: bytes | None = None,
              timeout: float = 5.0, quiet: float = 0.2, host: str = HOST) -> bytes:
    """Send `data` on a fresh connection; return what comes back.

    With `expect_end`, read until the response ends with it (TimeoutError if
    it never does). Without, read until the peer closes or stays quiet for
    `quiet` seconds.
    """
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        received = b""
        deadline = time.monotonic() + timeout
        s.settimeout(timeout if expect_end is not None else quiet)
        while True:
            if expect_end is not None and received.endswith(expect_end):
                return received
            if time.monotonic() > deadline:
                if expect_end is None:
                    return received
                raise TimeoutError(f"no {expect_end!r} within {timeout} s; got {received!r}")
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                if expect_end is None:
                    return received
                raise TimeoutError(
                    f"no {expect_end!r} within {timeout} s; got {received!r}"
                ) from None
            if not chunk:
                if expect_end is not None:
                    raise ConnectionError(
                        f"peer closed before {expect_end!r}; got {received!r}"
                    )
                return received
            chunks.append(chunk)
            received = b"".join(chunks)


class MemcacheConn:
    """A raw TCP connection with a read buffer, for protocol-level tests."""

    def __init__(self, port: int, host: str = HOST, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> MemcacheConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed; unread: {self.buf!r}")
        self.buf += chunk

    def read_until(self, delim: bytes = b"\r\n") -> bytes:
        """Bytes up to and including the first `delim`."""
        while True:
            at = self.buf.find(delim)
            if at >= 0:
                end = at + len(delim)
                out, self.buf = self.buf[:end], self.buf[end:]
                return out
            self._fill()

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def expect(self, expected: bytes) -> None:
        """Assert the next bytes on the wire are exactly `expected`."""
        got = self.read_exact(len(expected))
        assert got == expected, f"expected {expected!r}, got {got!r} (then {self.buf!r})"

    def call(self, command: bytes, end: bytes = b"\r\n") -> bytes:
        """Send `command`, return the answer up to and including `end`."""
        self.send(command)
        return self.read_until(end)

    def closed_by_peer(self, timeout: float = 2.0) -> bool:
        """True once the server closes the connection (unread data is dropped)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True


class ServerPair(NamedTuple):
    ours: ServerProcess  # pinstack-cache
    theirs: ServerProcess  # memcached


def diff_script(pair: ServerPair, script: bytes, expect_end: bytes | None = None,
                timeout: float = 5.0) -> tuple[bytes, bytes]:
    """Send the same bytes to both servers; (ours, theirs) responses."""
    ours = send_recv(pair.ours.port, script, expect_end, timeout)
    theirs = send_recv(pair.theirs.port, script, expect_end, timeout)
    return ours, theirs


def run_quick_bench(script: str, tmp_path: Path, timeout: float) -> dict:
    """Run bench/<script> --quick in a child process and return its JSON.

    Under CI's sanitizer run the child (and the servers it starts) inherit
    the ASan preload; what is checked is that the script runs, not
    tantivy's or numpy's memory at exit, so leak checking is off in the
    children only."""
    import json

    out = tmp_path / (Path(script).stem + ".json")
    env = dict(os.environ)
    if "ASAN_OPTIONS" in env:
        env["ASAN_OPTIONS"] += ":detect_leaks=0"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(root / "bench" / script), "--quick",
         "--json", str(out), "--tmpdir", str(tmp_path)],
        capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())
