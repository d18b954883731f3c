"""Fixtures every test file shares: real servers, started and checked.

    free_port          call it for a TCP port nobody listens on
    cache_server       factory: cache_server(*args) -> a running pinstack-cache
    memcached_server   factory: the same for the reference memcached
    server_pair        (ours, theirs) started with identical default args
    make_server_pair   factory: make_server_pair(*args) -> ServerPair

A server started through a fixture is stopped with SIGTERM at teardown and
must exit with status 0 within 10 s: a crash, a hang or a sanitizer report
(ASan aborts; LSan exits 23) fails the test, with the server's stderr shown.
A test that means a server to die sets `server.expected_status = None`.
A failing test also shows the stderr of every server it started.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import (
    DEFAULT_ARGS,
    ServerPair,
    ServerProcess,
    clean_env,
    memcached_command,
    pinstack_cache_command,
    start_server,
)
from helpers import free_port as _free_port

IN_CI = os.environ.get("CI", "").lower() == "true"

_servers_key = pytest.StashKey[list]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for server in item.stash.get(_servers_key, []):
            report.sections.append(
                (f"{server.name} stderr (port {server.port})", server.stderr_text() or "(empty)")
            )


def _server_factory(request, tmp_path: Path, name: str, command: list[str],
                    env: dict[str, str] | None):
    started: list[ServerProcess] = []
    request.node.stash.setdefault(_servers_key, [])

    def start(*args: str, port: int | None = None, listen: str | None = "127.0.0.1",
              defaults: bool = True, extra_env: dict[str, str] | None = None) -> ServerProcess:
        """Start a server with DEFAULT_ARGS (unless defaults=False), then `args`.

        listen=None binds every interface, as the servers do by default;
        extra_env adds to (or overrides) the server's environment.
        """
        full = [*(DEFAULT_ARGS if defaults else ()), *(("-l", listen) if listen else ()), *args]
        server_env = env
        if extra_env:
            server_env = {**(env if env is not None else os.environ), **extra_env}
        server = start_server(name, command, full, tmp_path, env=server_env, port=port)
        server.expected_status = 0
        started.append(server)
        request.node.stash[_servers_key].append(server)
        return server

    def finish() -> None:
        problems = []
        for server in started:
            status = server.stop()
            if server.expected_status is not None and status != server.expected_status:
                problems.append(
                    f"{server.name} exited with status {status} "
                    f"(expected {server.expected_status}) after SIGTERM\n"
                    + server.failure_report()
                )
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)

    return start, finish


@pytest.fixture
def free_port():
    """A function returning a free TCP port (unique within the session)."""
    return _free_port


@pytest.fixture
def cache_server(request, tmp_path):
    """Factory: cache_server(*args, port=None, listen="127.0.0.1") -> ServerProcess."""
    start, finish = _server_factory(
        request, tmp_path, "pinstack-cache", pinstack_cache_command(), env=None
    )
    yield start
    finish()


def _require_memcached() -> list[str]:
    command = memcached_command()
    if command is None:
        message = "memcached is not installed (bash ci/install-deps.sh installs it)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return command


@pytest.fixture
def memcached_server(request, tmp_path):
    """Factory: the reference memcached, same signature as cache_server."""
    command = _require_memcached()
    # clean_env(): memcached must not inherit our sanitizer's LD_PRELOAD.
    start, finish = _server_factory(request, tmp_path, "memcached", command, env=clean_env())
    yield start
    finish()


@pytest.fixture
def make_server_pair(cache_server, memcached_server):
    """Factory: make_server_pair(*args) -> ServerPair started with the same args."""

    def make(*args: str) -> ServerPair:
        return ServerPair(ours=cache_server(*args), theirs=memcached_server(*args))

    return make


@pytest.fixture
def server_pair(make_server_pair) -> ServerPair:
    """pinstack-cache and memcached, both with DEFAULT_ARGS: for differential tests."""
    return make_server_pair()
