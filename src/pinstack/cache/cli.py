"""pinstack-cache: memcached's command line in front of the C engine.

This module only translates: argv -> a settings dict (the ps_settings field
names of src/_core/cache/settings.h) -> pinstack._core._cache.run(). Every
default comes from the engine (settings_init_defaults) and range rules are
the engine's (settings_validate, called before anything starts); Python
checks only what it parses (numbers, sizes, addresses, names), so:

    bad flag or value    one line on stderr, exit 64 (EX_USAGE)
    cannot start         the engine's message (e.g. "failed to listen on TCP
                         port 11211: Address already in use"), exit 1
    SIGTERM / SIGINT     clean stop, exit 0

Differences from memcached, on purpose:
  -d      refused: run in the foreground under a supervisor (systemd, ...)
  -U N    refused for N != 0: UDP is not served
  -l      addresses only (an IPv6 one may be bracketed); the port is -p
  -u      privileges are dropped before the server starts, as memcached does;
          running as root without -u is allowed (memcached refuses)
  -P      written whether or not -d is given, removed on a clean exit
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Optional

from .._core import _cache

PROG = "pinstack-cache"
EX_USAGE = 64  # sysexits.h: the command was used incorrectly

KIB = 1024
MIB = 1024 * 1024
MAX_LISTEN = 16  # PS_MAX_LISTEN in settings.h
LISTEN_ADDR_MAX_BYTES = 63  # listen_addr[i] is char[64], NUL included


class UsageError(Exception):
    """A bad command line; the message is one line, ready for stderr."""


@dataclass
class Invocation:
    """What the command line asks for."""

    settings: dict[str, Any]
    action: str = "run"  # "run", "help" or "version"
    pidfile: str | None = None
    user: str | None = None


# ---------------------------------------------------------------------------
# Parsing helpers: each raises UsageError naming what it parsed.


def _int(text: str | None, what: str, lo: int | None = None, hi: int | None = None) -> int:
    if text is None:
        raise UsageError(f"Missing numeric argument for {what}")
    if not re.fullmatch(r"[+-]?[0-9]+", text.strip()):
        raise UsageError(f"{what}: not an integer: {text!r}")
    value = int(text)
    if lo is not None and value < lo:
        raise UsageError(f"{what} must be at least {lo} (got {value})")
    if hi is not None and value > hi:
        raise UsageError(f"{what} must be at most {hi} (got {value})")
    return value


def _float(text: str | None, what: str) -> float:
    if text is None:
        raise UsageError(f"Missing numeric argument for {what}")
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what}: not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise UsageError(f"{what}: not a finite number: {text!r}")
    return value


def parse_size(text: str, what: str) -> int:
    """Bytes from "1048576", "512k", "1m" or "1g" (case-insensitive)."""
    match = re.fullmatch(r"\s*([0-9]+)\s*([kKmMgG]?)\s*", text)
    if match is None:
        raise UsageError(f"{what}: not a size: {text!r} (use bytes, or a k/m suffix)")
    scale = {"": 1, "k": KIB, "m": MIB, "g": 1024 * MIB}[match.group(2).lower()]
    return int(match.group(1)) * scale


def _format_size(nbytes: int) -> str:
    for unit, scale in (("m", MIB), ("k", KIB)):
        if nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return str(nbytes)


def parse_listen(values: list[str]) -> list[str]:
    """-l values (each comma-separated) -> addresses, IPv6 brackets removed."""
    addrs = []
    for value in values:
        for item in value.split(","):
            addr = item.strip()
            bracketed = re.fullmatch(r"\[([^\[\]]+)\](.*)", addr)
            if bracketed is not None:
                if bracketed.group(2):
                    raise UsageError(
                        f"-l {addr}: give only the address; the port is set with -p"
                    )
                addr = bracketed.group(1)
            elif addr.count(":") == 1:
                raise UsageError(f"-l {addr}: give only the address; the port is set with -p")
            if not addr:
                raise UsageError(f"-l: empty address in {value!r}")
            if len(addr.encode("utf-8")) > LISTEN_ADDR_MAX_BYTES:
                raise UsageError(f"-l: address too long: {addr!r}")
            addrs.append(addr)
    if len(addrs) > MAX_LISTEN:
        raise UsageError(f"-l: at most {MAX_LISTEN} listen addresses (got {len(addrs)})")
    return addrs


# ---------------------------------------------------------------------------
# -o suboptions. Each handler gets (settings, value or None, state) and
# updates settings; `state` remembers what memcached's later checks need.

SubHandler = Callable[[dict, Optional[str], dict], None]


def _no_value(name: str, value: str | None) -> None:
    if value is not None:
        raise UsageError(f'suboption "{name}" takes no value (got "{name}={value}")')


def _flag(name: str, **assign: Any) -> SubHandler:
    def handler(s: dict, value: str | None, state: dict) -> None:
        _no_value(name, value)
        s.update(assign)

    return handler


def _sub_int(name: str, setting: str | None = None) -> SubHandler:
    def handler(s: dict, value: str | None, state: dict) -> None:
        s[setting or name] = _int(value, name)

    return handler


def _sub_float(name: str) -> SubHandler:
    def handler(s: dict, value: str | None, state: dict) -> None:
        s[name] = _float(value, name)

    return handler


def _sub_slab_automove(s: dict, value: str | None, state: dict) -> None:
    # memcached: a bare "slab_automove" means 1
    s["slab_automove"] = 1 if value is None else _int(value, "slab_automove")


def _sub_slab_chunk_max(s: dict, value: str | None, state: dict) -> None:
    if value is None:
        raise UsageError("Missing slab_chunk_max argument")
    s["slab_chunk_max"] = parse_size(value, "slab_chunk_max")
    state["slab_chunk_max_changed"] = True


def _sub_lru_crawler_tocrawl(s: dict, value: str | None, state: dict) -> None:
    s["lru_crawler_tocrawl"] = _int(value, "lru_crawler_tocrawl", 0, 2**32 - 1)


def _sub_temporary_ttl(s: dict, value: str | None, state: dict) -> None:
    s["temporary_ttl"] = _int(value, "temporary_ttl")
    s["temp_lru"] = True


def _sub_hash_algorithm(s: dict, value: str | None, state: dict) -> None:
    if value is None:
        raise UsageError("Missing hash_algorithm argument")
    if value in ("jenkins", "xxh3"):
        raise UsageError(f"hash_algorithm={value} is not supported: pinstack-cache uses murmur3")
    if value != "murmur3":
        raise UsageError("Unknown hash_algorithm option (murmur3)")


SUBOPTIONS: dict[str, SubHandler] = {
    "hashpower": _sub_int("hashpower", "hashpower_init"),
    "idle_timeout": _sub_int("idle_timeout"),
    "slab_reassign": _flag("slab_reassign", slab_reassign=True),
    "no_slab_reassign": _flag("no_slab_reassign", slab_reassign=False),
    "slab_automove": _sub_slab_automove,
    "slab_automove_ratio": _sub_float("slab_automove_ratio"),
    "slab_automove_window": _sub_int("slab_automove_window"),
    "slab_chunk_max": _sub_slab_chunk_max,
    "lru_maintainer": _flag("lru_maintainer", lru_maintainer=True, lru_segmented=True),
    "no_lru_maintainer": _flag("no_lru_maintainer", lru_maintainer=False, lru_segmented=False),
    "lru_crawler": _flag("lru_crawler", lru_crawler=True),
    "no_lru_crawler": _flag("no_lru_crawler", lru_crawler=False),
    "lru_crawler_sleep": _sub_int("lru_crawler_sleep"),
    "lru_crawler_tocrawl": _sub_lru_crawler_tocrawl,
    "hot_lru_pct": _sub_int("hot_lru_pct"),
    "warm_lru_pct": _sub_int("warm_lru_pct"),
    "hot_max_factor": _sub_float("hot_max_factor"),
    "warm_max_factor": _sub_float("warm_max_factor"),
    "temporary_ttl": _sub_temporary_ttl,
    "tail_repair_time": _sub_int("tail_repair_time"),
    "hash_algorithm": _sub_hash_algorithm,
    # Accepted for compatibility; they change nothing here.
    "modern": _flag("modern"),
    "no_modern": _flag("no_modern"),
    "maxconns_fast": _flag("maxconns_fast"),
    "no_maxconns_fast": _flag("no_maxconns_fast"),
}


def parse_suboptions(settings: dict, values: list[str], state: dict) -> None:
    """Apply every -o value ("key=val,key2,...") to `settings`, in order."""
    for value in values:
        for token in value.split(","):
            token = token.strip()
            if not token:
                continue
            name, eq, arg = token.partition("=")
            handler = SUBOPTIONS.get(name)
            if handler is None:
                raise UsageError(f'Illegal suboption "{token}"')
            handler(settings, arg if eq else None, state)


# ---------------------------------------------------------------------------
# The command line.


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _build_parser() -> _Parser:
    p = _Parser(prog=PROG, add_help=False)
    p.add_argument("-p", "--port")
    p.add_argument("-U", "--udp-port")
    p.add_argument("-l", "--listen", action="append", default=[])
    p.add_argument("-t", "--threads")
    p.add_argument("-m", "--memory-limit")
    p.add_argument("-c", "--conn-limit")
    p.add_argument("-b", "--listen-backlog")
    p.add_argument("-I", "--max-item-size")
    p.add_argument("-f", "--slab-growth-factor")
    p.add_argument("-n", "--slab-min-size")
    p.add_argument("-R", "--max-reqs-per-event")
    p.add_argument("-C", "--disable-cas", action="store_true")
    p.add_argument("-F", "--disable-flush-all", action="store_true")
    p.add_argument("-M", "--disable-evictions", action="store_true")
    p.add_argument("-k", "--lock-memory", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-d", "--daemon", action="store_true")
    p.add_argument("-P", "--pidfile")
    p.add_argument("-u", "--user")
    p.add_argument("-o", "--extended", action="append", default=[])
    p.add_argument("-V", "--version", action="store_true")
    p.add_argument("-h", "--help", action="store_true")
    return p


def parse_command_line(argv: list[str]) -> Invocation:
    """argv (without the program name) -> Invocation; UsageError if bad."""
    args = _build_parser().parse_args(argv)
    if args.help:
        return Invocation(settings=_cache.default_settings(), action="help")
    if args.version:
        return Invocation(settings=_cache.default_settings(), action="version")
    if args.daemon:
        raise UsageError(
            "-d (daemonize) is not supported: run pinstack-cache in the foreground "
            "under a supervisor (systemd, runit, a container runtime)"
        )

    s = _cache.default_settings()
    state: dict[str, Any] = {"slab_chunk_max_changed": False}
    # Parse only; ranges are checked below, all at once.
    if args.port is not None:
        s["port"] = _int(args.port, "-p/--port")
    if args.udp_port is not None:
        s["udpport"] = _int(args.udp_port, "-U/--udp-port")
    s["listen_addr"] = parse_listen(args.listen)
    if args.threads is not None:
        s["num_threads"] = _int(args.threads, "-t/--threads")
    if args.memory_limit is not None:
        # lo=0: a size cannot be negative; the engine sets the real minimum.
        s["maxbytes"] = _int(args.memory_limit, "-m/--memory-limit (megabytes)", lo=0) * MIB
    if args.conn_limit is not None:
        s["maxconns"] = _int(args.conn_limit, "-c/--conn-limit")
    if args.listen_backlog is not None:
        s["backlog"] = _int(args.listen_backlog, "-b/--listen-backlog")
    if args.max_item_size is not None:
        s["item_size_max"] = parse_size(args.max_item_size, "-I/--max-item-size")
    if args.slab_growth_factor is not None:
        s["factor"] = _float(args.slab_growth_factor, "-f/--slab-growth-factor")
    if args.slab_min_size is not None:
        s["chunk_size"] = _int(args.slab_min_size, "-n/--slab-min-size")
    if args.max_reqs_per_event is not None:
        s["reqs_per_event"] = _int(args.max_reqs_per_event, "-R/--max-reqs-per-event")
    if args.disable_cas:
        s["use_cas"] = False
    if args.disable_flush_all:
        s["flush_enabled"] = False
    if args.disable_evictions:
        s["evict_to_free"] = False
    if args.lock_memory:
        s["lock_memory"] = True
    s["verbose"] = args.verbose
    parse_suboptions(s, args.extended, state)

    try:
        _cache.validate(s)  # the engine's rules: the one place they live
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _memcached_defaults(s, state)
    return Invocation(settings=s, pidfile=args.pidfile, user=args.user)


def _memcached_defaults(s: dict, state: dict) -> None:
    """memcached's defaulting that depends on other flags (validation is C's)."""
    if s["item_size_max"] > MIB and not state["slab_chunk_max_changed"]:
        s["slab_chunk_max"] = s["slab_page_size"] // 2


def parse_args(argv: list[str]) -> dict[str, Any]:
    """argv (without the program name) -> the settings dict for _cache.run()."""
    return parse_command_line(argv).settings


# ---------------------------------------------------------------------------
# Output.


def version_line() -> str:
    protocol, _, ours = _cache.version().partition("-pinstack-")
    return f"{PROG} {ours} (memcached protocol {protocol})"


def help_text() -> str:
    d = _cache.default_settings()
    on_off = {True: "on", False: "off"}
    return f"""\
{version_line()}
-p, --port=<num>          TCP port to listen on (default: {d["port"]})
-U, --udp-port=<num>      UDP port (default: 0, off); UDP is not supported, so
                          only 0 is accepted
-l, --listen=<addr>       interface to listen on (default: all, 0.0.0.0 and ::);
                          comma-separated and repeatable, at most {MAX_LISTEN};
                          addresses only (IPv6 as ::1 or [::1]); the port is -p
-d, --daemon              not supported: run in the foreground under a supervisor
-u, --user=<user>         assume identity of <username> (only when run as root)
-m, --memory-limit=<num>  item memory in megabytes (default: {d["maxbytes"] // MIB})
-M, --disable-evictions   return error on memory exhausted instead of evicting
-c, --conn-limit=<num>    max simultaneous connections (default: {d["maxconns"]})
-k, --lock-memory         lock down all paged memory
-v, --verbose             verbose (print errors/warnings while in event loop)
-vv                       very verbose (also print client commands/responses)
-vvv                      extremely verbose (internal state transitions)
-h, --help                print this help and exit
-V, --version             print version and exit
-P, --pidfile=<file>      save PID in <file> (removed on a clean exit)
-f, --slab-growth-factor=<num> chunk size growth factor (default: {d["factor"]:g})
-n, --slab-min-size=<bytes> min space used for key+value+flags (default: {d["chunk_size"]})
-t, --threads=<num>       number of threads to use (default: {d["num_threads"]})
-R, --max-reqs-per-event=<num> maximum number of requests per event, limits the
                          requests processed per connection to prevent
                          starvation (default: {d["reqs_per_event"]})
-C, --disable-cas         disable use of CAS
-b, --listen-backlog=<num> set the backlog queue limit (default: {d["backlog"]})
-I, --max-item-size=<num> adjusts max item size, k/m suffix allowed
                          (default: {_format_size(d["item_size_max"])}, min: 1k, max: 1024m)
-F, --disable-flush-all   disable flush_all command
-o, --extended            comma separated list of extended options
                          most options have a 'no_' prefix to disable
   - hashpower:           an integer multiplier for how large the hash
                          table should be, 12..32 (default: {d["hashpower_init"]})
   - idle_timeout:        timeout for idle connections in seconds
                          (default: {d["idle_timeout"]}, no timeout)
   - slab_reassign:       allow slab pages to move between classes
                          (default: {on_off[d["slab_reassign"]]}; no_slab_reassign turns it off)
   - slab_automove:       0 = off, 1 = background page mover, 2 = aggressive
                          (default: {d["slab_automove"]})
   - slab_automove_ratio: ratio of free chunks that marks a class as a donor
                          (default: {d["slab_automove_ratio"]:g})
   - slab_automove_window: window in seconds the mover averages over
                          (default: {d["slab_automove_window"]})
   - slab_chunk_max:      (EXPERIMENTAL) largest slab chunk in bytes; larger items
                          are chained. use extreme care. (default: {d["slab_chunk_max"]})
   - lru_maintainer:      segmented HOT/WARM/COLD LRU + background thread
                          (default: {on_off[d["lru_maintainer"]]})
   - no_lru_maintainer:   disable the LRU maintainer (and segmented LRU)
   - lru_crawler:         background thread reclaiming expired items
                          (default: {on_off[d["lru_crawler"]]})
   - no_lru_crawler:      disable the LRU crawler
   - lru_crawler_sleep:   microseconds to sleep between items, 0..1000000
                          (default: {d["lru_crawler_sleep"]})
   - lru_crawler_tocrawl: max items to crawl per slab per run
                          (default: {d["lru_crawler_tocrawl"]}, unlimited)
   - hot_lru_pct:         pct of slab memory to reserve for hot lru
                          (requires lru_maintainer, default: {d["hot_lru_pct"]})
   - warm_lru_pct:        pct of slab memory to reserve for warm lru
                          (requires lru_maintainer, default: {d["warm_lru_pct"]})
   - hot_max_factor:      items idle > cold lru age * this drop from hot lru
                          (default: {d["hot_max_factor"]:.2f})
   - warm_max_factor:     items idle > cold lru age * this drop from warm lru
                          (default: {d["warm_max_factor"]:.2f})
   - temporary_ttl:       TTLs at or below this get a separate LRU, can't be
                          evicted (requires lru_maintainer, default: off, {d["temporary_ttl"]})
   - tail_repair_time:    seconds before forcefully reclaiming a stuck LRU tail
                          item, at least 10 (default: {d["tail_repair_time"]}, off); dangerous
   - hash_algorithm:      the hash table algorithm: murmur3 only (default: murmur3)
   - modern, no_modern:   accepted for compatibility; no effect
   - maxconns_fast, no_maxconns_fast: accepted for compatibility; no effect
"""


# ---------------------------------------------------------------------------
# Running.


def _write_pidfile(path: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")


def _drop_privileges(user: str) -> None:
    """Become `user` (when root), before the server starts: as memcached."""
    if os.geteuid() != 0:
        return  # memcached: -u only matters when run as root
    import pwd

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"can't find the user {user} to switch to") from None
    os.initgroups(pw.pw_name, pw.pw_gid)
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)


def _request_stop(signum: int, frame: object) -> None:
    _cache.stop()


def serve(inv: Invocation) -> int:
    """Run the server described by `inv` until SIGTERM/SIGINT; the exit status."""
    try:
        if inv.pidfile:
            _write_pidfile(inv.pidfile)
    except OSError as exc:
        print(f"{PROG}: could not write pid file {inv.pidfile}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        if inv.user:
            _drop_privileges(inv.user)
        signal.signal(signal.SIGTERM, _request_stop)
        signal.signal(signal.SIGINT, _request_stop)
        try:
            _cache.run(inv.settings)
        except RuntimeError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
        return 0
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_USAGE
    finally:
        if inv.pidfile:
            try:
                os.unlink(inv.pidfile)
            except OSError:
                pass  # e.g. privileges dropped since it was written


def main(argv: list[str] | None = None) -> int:
    """The `pinstack-cache` command; returns the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    try:
        inv = parse_command_line(argv)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_USAGE
    if inv.action == "help":
        sys.stdout.write(help_text())
        return 0
    if inv.action == "version":
        print(version_line())
        return 0
    return serve(inv)


if __name__ == "__main__":
    sys.exit(main())
