"""The pinstack-cache command line: flags, errors, exit statuses, signals.

Subprocess tests run the installed console script exactly as a user or a
supervisor would; parse_args tests call the parser directly.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess

import pytest
from helpers import HOST, pinstack_cache_command, send_recv

from pinstack import __version__
from pinstack._core import _cache
from pinstack.cache.cli import EX_USAGE, SUBOPTIONS, UsageError, parse_args, parse_command_line

MIB = 1024 * 1024


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*pinstack_cache_command(), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------------
# --version, --help


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version_prints_package_version_and_protocol_level(flag):
    result = run_cli(flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"pinstack-cache {__version__} (memcached protocol 1.6.18)\n"


def test_version_matches_the_engine_build():
    # setup.py passes _version.py's value to C; a stale build would differ.
    assert _cache.version() == f"1.6.18-pinstack-{__version__}"


ALL_FLAGS = [
    ("-p", "--port"), ("-U", "--udp-port"), ("-l", "--listen"), ("-t", "--threads"),
    ("-m", "--memory-limit"), ("-c", "--conn-limit"), ("-b", "--listen-backlog"),
    ("-I", "--max-item-size"), ("-f", "--slab-growth-factor"), ("-n", "--slab-min-size"),
    ("-R", "--max-reqs-per-event"), ("-C", "--disable-cas"), ("-F", "--disable-flush-all"),
    ("-M", "--disable-evictions"), ("-k", "--lock-memory"), ("-v", "--verbose"),
    ("-d", "--daemon"), ("-P", "--pidfile"), ("-u", "--user"), ("-V", "--version"),
    ("-h", "--help"), ("-o", "--extended"),
]


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_every_flag_and_suboption_with_defaults(flag):
    result = run_cli(flag)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for short, long in ALL_FLAGS:
        assert f"{short}, {long}" in text, f"{short}/{long} missing from --help"
    assert "-vv " in text and "-vvv " in text
    for name in SUBOPTIONS:
        assert name in text, f"-o {name} missing from --help"
    defaults = _cache.default_settings()
    assert f"(default: {defaults['port']})" in text
    assert f"(default: {defaults['maxbytes'] // MIB})" in text
    assert "(default: 1m, min: 1k, max: 1024m)" in text


# ---------------------------------------------------------------------------
# Usage errors: exit 64, one line on stderr, never a traceback. The expected
# text is a case-insensitive fragment: range messages are the engine's
# (settings_validate), parse messages the CLI's.

BAD_COMMAND_LINES = [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["-Z"], "unrecognized arguments: -Z"),
    (["extra-argument"], "unrecognized arguments"),
    (["-p"], "expected one argument"),
    (["-p", "http"], "not an integer"),
    (["-p", "70000"], "port 70000"),
    (["-m", "abc"], "not an integer"),
    (["-m", "0"], "memory limit"),
    (["-m", "-1"], "at least 0"),
    (["-t", "0"], "threads"),
    (["-t", "99999999999"], "num_threads"),
    (["-c", "0"], "connections"),
    (["-R", "0"], "requests per event"),
    (["-n", "0"], "chunk size"),
    (["-b", "-1"], "backlog"),
    (["-f", "0.9"], "Factor must be greater than 1"),
    (["-f", "1.0"], "Factor must be greater than 1"),
    (["-f", "fast"], "not a number"),
    (["-I", "100g"], "item size limit higher"),
    (["-m", "4096", "-I", "2g"], "gigabyte"),
    (["-I", "1000"], "cannot be less than 1024 bytes"),
    (["-I", "1k"], "slab_chunk_max (bytes: 524288) cannot be larger than -I"),
    (["-I", "600k"], "must be evenly divisible by slab_chunk_max"),
    (["-I", "1x"], "not a size"),
    (["-m", "1", "-I", "1m"], "1/2 of memory max"),
    (["-o", "slab_chunk_max=1000"], "slab_chunk_max"),
    (["-o", "bogus=1"], 'Illegal suboption "bogus=1"'),
    (["-o", "xyz"], 'Illegal suboption "xyz"'),
    (["-o", "hashpower=5"], "hashpower"),
    (["-o", "hashpower=40"], "hashpower"),
    (["-o", "idle_timeout"], "Missing numeric argument for idle_timeout"),
    (["-o", "idle_timeout=soon"], "not an integer"),
    (["-o", "slab_automove=3"], "slab_automove"),
    (["-o", "lru_crawler_sleep=2000000"], "between 0 and 1 second"),
    (["-o", "hot_lru_pct=0"], "hot_lru_pct must be > 1 and < 80"),
    (["-o", "hot_lru_pct=70,warm_lru_pct=20"], "cannot be more than 80% combined"),
    (["-o", "temporary_ttl=10,no_lru_maintainer"], "requires lru_maintainer"),
    (["-o", "tail_repair_time=5"], "less than 10 seconds"),
    (["-o", "hash_algorithm=jenkins"], "not supported"),
    (["-o", "hash_algorithm=md5"], "Unknown hash_algorithm"),
    (["-o", "modern=1"], "takes no value"),
    (["-U", "5"], "UDP is not supported"),
    (["-d"], "not supported"),
    (["-l", "127.0.0.1:11211"], "the port is set with -p"),
    (["-l", "[::1]:11211"], "the port is set with -p"),
    (["-l", "127.0.0.1,"], "empty address"),
]


@pytest.mark.parametrize(
    "argv,message", BAD_COMMAND_LINES, ids=[" ".join(argv) for argv, _ in BAD_COMMAND_LINES]
)
def test_bad_command_line_exits_64_with_one_line(argv, message):
    result = run_cli(*argv)
    assert result.returncode == EX_USAGE, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pinstack-cache: ")
    assert message.lower() in lines[0].lower()


@pytest.mark.parametrize("argv,message", BAD_COMMAND_LINES[:12])
def test_parse_args_raises_usage_error(argv, message):
    with pytest.raises(UsageError) as info:
        parse_args(argv)
    assert message.lower() in str(info.value).lower()


# ---------------------------------------------------------------------------
# Running: start failure, signals, pidfile, -u


def test_port_in_use_exits_1_with_the_engines_message(free_port):
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((HOST, port))
        squatter.listen()
        result = run_cli("-p", str(port), "-l", HOST, "-U", "0", "-t", "1")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port}" in lines[0]
    assert "Address already in use" in lines[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_server_with_status_0(cache_server, sig):
    server = cache_server()
    assert server.stop(sig) == 0, server.failure_report()
    with pytest.raises(OSError):
        socket.create_connection((HOST, server.port), timeout=1).close()


def test_server_answers_version_with_the_package_version(cache_server):
    server = cache_server()
    reply = send_recv(server.port, b"version\r\n", expect_end=b"\r\n")
    assert reply == f"VERSION 1.6.18-pinstack-{__version__}\r\n".encode()


def test_pidfile_holds_the_pid_and_is_removed_on_clean_exit(cache_server, tmp_path):
    pidfile = tmp_path / "cache.pid"
    server = cache_server("-P", str(pidfile))
    assert pidfile.read_text() == f"{server.proc.pid}\n"
    assert server.stop() == 0
    assert not pidfile.exists()


def test_unwritable_pidfile_exits_1(tmp_path):
    result = run_cli("-P", str(tmp_path / "missing-dir" / "x.pid"), "-p", "0")
    assert result.returncode == 1
    assert "could not write pid file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_user_flag_drops_root_privileges(cache_server):
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' here")
    # Once it is nobody, a sanitizer build cannot read /root's libpython to
    # symbolize stacks, so ci/lsan.supp cannot match Python's own exit-time
    # allocations: leak checking is off for this one process.
    asan = os.environ.get("ASAN_OPTIONS")
    extra_env = {"ASAN_OPTIONS": f"{asan}:detect_leaks=0"} if asan else None
    server = cache_server("-u", "nobody", extra_env=extra_env)
    with open(f"/proc/{server.proc.pid}/status") as f:
        uid_line = next(line for line in f if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4


@pytest.mark.skipif(os.geteuid() != 0, reason="-u is ignored unless run as root")
def test_unknown_user_exits_64():
    result = run_cli("-u", "no-such-user-pinstack", "-p", "0")
    assert result.returncode == EX_USAGE
    assert "can't find the user no-such-user-pinstack" in result.stderr


# ---------------------------------------------------------------------------
# parse_args: argv -> the settings dict handed to the engine


def test_no_arguments_gives_the_engines_defaults():
    assert parse_args([]) == _cache.default_settings()


@pytest.mark.parametrize(
    "argv,verbose",
    [([], 0), (["-v"], 1), (["-vv"], 2), (["-vvv"], 3), (["-v", "-v"], 2),
     (["-vv", "--verbose"], 3)],
)
def test_verbosity_counts_every_v(argv, verbose):
    assert parse_args(argv)["verbose"] == verbose


def test_combined_single_dash_flags():
    s = parse_args(["-vvkCFM"])
    assert s["verbose"] == 2
    assert s["lock_memory"] is True
    assert s["use_cas"] is False
    assert s["flush_enabled"] is False
    assert s["evict_to_free"] is False


@pytest.mark.parametrize("argv", [["-m", "128"], ["-m128"], ["--memory-limit=128"],
                                  ["--memory-limit", "128"]])
def test_memory_limit_spellings(argv):
    assert parse_args(argv)["maxbytes"] == 128 * MIB


def test_numeric_flags_land_in_their_fields():
    s = parse_args(["-p", "11311", "-U", "0", "-t", "8", "-c", "4096", "-b", "64",
                    "-f", "1.08", "-n", "64", "-R", "50", "-I", "2m", "-m", "1024"])
    assert (s["port"], s["udpport"], s["num_threads"], s["maxconns"], s["backlog"]) == (
        11311, 0, 8, 4096, 64)
    assert (s["factor"], s["chunk_size"], s["reqs_per_event"]) == (1.08, 64, 50)
    assert (s["item_size_max"], s["maxbytes"]) == (2 * MIB, 1024 * MIB)


@pytest.mark.parametrize("text,size", [("1048576", MIB), ("512k", 512 * 1024), ("1m", MIB),
                                       ("4M", 4 * MIB), ("1g", 1024 * MIB)])
def test_max_item_size_suffixes(text, size):
    assert parse_args(["-m", "4096", "-I", text])["item_size_max"] == size


def test_listen_addresses_split_on_commas_repeat_and_unbracket():
    s = parse_args(["-l", "127.0.0.1,::1", "-l", "[::1]", "--listen=localhost"])
    assert s["listen_addr"] == ["127.0.0.1", "::1", "::1", "localhost"]


def test_too_many_listen_addresses():
    with pytest.raises(UsageError, match="at most 16"):
        parse_args(["-l", ",".join(f"127.0.0.{i}" for i in range(1, 18))])


def test_suboptions_map_onto_settings():
    s = parse_args(["-o", "hashpower=20,idle_timeout=30,slab_automove=2,"
                          "slab_automove_ratio=0.5,slab_automove_window=10,"
                          "lru_crawler_sleep=50,lru_crawler_tocrawl=1000",
                    "-o", "hot_lru_pct=30,warm_lru_pct=30,hot_max_factor=0.5,"
                          "warm_max_factor=3,tail_repair_time=60,temporary_ttl=120"])
    expected = {
        "hashpower_init": 20, "idle_timeout": 30, "slab_automove": 2,
        "slab_automove_ratio": 0.5, "slab_automove_window": 10, "lru_crawler_sleep": 50,
        "lru_crawler_tocrawl": 1000, "hot_lru_pct": 30, "warm_lru_pct": 30,
        "hot_max_factor": 0.5, "warm_max_factor": 3.0, "tail_repair_time": 60,
        "temporary_ttl": 120, "temp_lru": True,
    }
    assert {k: s[k] for k in expected} == expected


def test_suboption_flags_toggle_features():
    s = parse_args(["-o", "no_lru_crawler,no_lru_maintainer,no_slab_reassign"])
    assert (s["lru_crawler"], s["lru_maintainer"], s["lru_segmented"], s["slab_reassign"]) == (
        False, False, False, False)
    s = parse_args(["-o", "no_lru_crawler", "-o", "lru_crawler,slab_automove"])
    assert s["lru_crawler"] is True
    assert s["slab_automove"] == 1


def test_compatibility_suboptions_are_accepted_and_change_nothing():
    argv = ["-o", "modern,no_modern,maxconns_fast,no_maxconns_fast,hash_algorithm=murmur3"]
    assert parse_args(argv) == parse_args([])


def test_slab_chunk_max_makes_small_items_possible():
    # memcached refuses -I 1k with the default 512 KiB chunks; smaller chunks fix it.
    s = parse_args(["-I", "1k", "-o", "slab_chunk_max=1024"])
    assert (s["item_size_max"], s["slab_chunk_max"]) == (1024, 1024)


def test_help_and_version_need_nothing_else():
    assert parse_command_line(["-h"]).action == "help"
    assert parse_command_line(["-V", "-m", "64"]).action == "version"
    inv = parse_command_line(["-P", "/run/x.pid", "-u", "memcache"])
    assert (inv.action, inv.pidfile, inv.user) == ("run", "/run/x.pid", "memcache")
