"""README, "Shared state (Redis)": each request's limits are checked in one Lua script, one round trip that counts
the request in every limit or in none. Proved on the wire: a real `gateway serve` on a real redis-server, a route
under two limits (clients.rate_limit and the route's own), and Redis's own `INFO commandstats` read before and after
N requests: exactly N script calls (EVALSHA, plus EVAL after a SCRIPT FLUSH), not 2N. A /readyz PING is asked for on
purpose and counted on its own line. commandstats also counts the PTTL/GET/INCR/SET a script runs inside Redis (no
round trip): MONITOR, which tags those ``[0 lua]``, tells them apart from what the gateway's connection sent."""

from __future__ import annotations

import codecs
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import PYTHON_M, Server, clean_env, free_port, make_project
from redis_support import RedisServer, redis_module_fixture, redis_server_fixture  # noqa: F401 (fixtures)

from gateway.state.scripts import ACQUIRE

N = 15
ROUTE_LIMIT = 10  # the route's own: of the N requests after the warm-up, ROUTE_LIMIT - 1 pass and the rest get 429
CLIENTS_LIMIT = 1000
HOUR_MS = "3600000"
PING_ROUTE = f"config = {{'rate_limit': '{ROUTE_LIMIT}/hour'}}\n\nasync def GET(req):\n    return {{'ok': True}}\n"
OURS = {"info", "echo"}  # what the test itself sends to Redis between its two readings (MONITOR is not counted)
WAIT = 10.0  # seconds: reached only when something is broken


def config(url: str) -> str:
    return (f"server:\n  prefix: /api\n  shutdown_grace: 1s\nstate: {url}\nstate_on_error: closed\n"
            f"clients:\n  rate_limit: {CLIENTS_LIMIT}/hour\n")


def commandstats(redis: RedisServer) -> dict[str, dict[str, int]]:
    """``INFO commandstats`` as {command: {calls, failed_calls, rejected_calls}}."""
    text = redis.command("INFO", "commandstats")
    assert isinstance(text, str)
    stats = {}
    for name, fields in re.findall(r"^cmdstat_(\S+?):(\S+)\r?$", text, re.MULTILINE):
        values = dict(field.split("=") for field in fields.split(","))
        stats[name] = {k: int(values.get(k, 0)) for k in ("calls", "failed_calls", "rejected_calls")}
    assert stats and text.startswith("# Commandstats"), text
    return stats


def delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """What changed between two readings, leaving out the test's own commands."""
    zero = {"calls": 0, "failed_calls": 0, "rejected_calls": 0}
    out = {}
    for name in set(after) - OURS:
        change = {k: after[name][k] - before.get(name, zero)[k] for k in zero}
        if any(change.values()):
            out[name] = change
    return out


class Monitor:
    """MONITOR on its own connection: every command Redis runs, as ``(source, args)``; ``source`` is the client's
    ``ip:port``, or ``lua`` for a command a script ran inside the server."""

    LINE = re.compile(r"^\+\d+\.\d+ \[\d+ ([^\]]+)\] (.*)$")
    ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self.sock = socket.create_connection(("127.0.0.1", redis.port), timeout=WAIT)
        self.stream = self.sock.makefile("rb")
        self.sock.sendall(b"*1\r\n$7\r\nMONITOR\r\n")
        assert self.stream.readline() == b"+OK\r\n"  # from here on every command is reported

    def until_marker(self) -> list[tuple[str, list[str]]]:
        """What ran up to now: an ECHO of a fresh marker is sent, and the stream read up to it."""
        marker = f"end-of-test-{time.monotonic_ns()}"
        assert self.redis.command("ECHO", marker) == marker
        seen = []
        for _ in range(100_000):  # bounded; each readline is bounded by the socket's timeout
            line = self.stream.readline().decode(errors="replace").rstrip("\r\n")
            match = self.LINE.match(line)
            assert match, f"not a MONITOR line: {line!r}"
            args = [codecs.decode(a, "unicode_escape") for a in self.ARG.findall(match[2])]  # sdscatrepr's escapes
            if [a.upper() if i == 0 else a for i, a in enumerate(args)] == ["ECHO", marker]:
                return seen
            seen.append((match[1], args))
        raise AssertionError("the marker never came")

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


@pytest.fixture(name="gateway")
def gateway_fixture(tmp_path: Path, redis_server: RedisServer) -> Iterator[Server]:
    make_project(tmp_path, config(redis_server.url), routes={"ping.py": PING_ROUTE})
    port = free_port()
    with Server(PYTHON_M, "serve", "--host", "127.0.0.1", "--port", str(port), cwd=tmp_path, env=clean_env(),
                port=port) as server:
        server.wait_ready()  # /healthz: not a route, no Redis command
        yield server


@pytest.fixture(name="monitor")
def monitor_fixture(redis_server: RedisServer) -> Iterator[Monitor]:
    monitor = Monitor(redis_server)
    try:
        yield monitor
    finally:
        monitor.close()


def call(server: Server, path: str = "/api/ping") -> tuple[int, dict[str, str]]:
    reply = server.get(path)
    assert reply is not None, f"no answer from the gateway:\n{server.stderr}"
    return reply.status, reply.headers


def warm_up(server: Server, redis: RedisServer) -> str:
    """The first request opens the gateway's connection (AUTH/SELECT/CLIENT SETNAME) and loads the script; returns
    that connection's address as Redis sees it (the gateway names it ``gateway``)."""
    status, headers = call(server)
    assert status == 200, headers
    assert headers["RateLimit-Policy"] == f'"clients";q={CLIENTS_LIMIT};w=3600, "route";q={ROUTE_LIMIT};w=3600'
    clients = redis.command("CLIENT", "LIST")
    assert isinstance(clients, str)
    [addr] = re.findall(r"\baddr=(\S+) .*\bname=gateway\b", clients)
    return addr


def counters(redis: RedisServer) -> list[int]:
    keys = redis.command("KEYS", "gateway:rl:*")
    assert isinstance(keys, list)
    return sorted(int(redis.command("GET", key)) for key in keys)


def run_requests(server: Server) -> list[int]:
    statuses = []
    for _ in range(N):
        status, headers = call(server)
        statuses.append(status)
        assert headers["RateLimit"].count(";r=") == 2  # both limits answered, from the one script's reply
    return statuses


def check_wire(change: dict[str, dict[str, int]], seen: list[tuple[str, list[str]]], gateway_addr: str) -> Counter:
    """Every script call the gateway sent carries both limits; every command commandstats counted beyond the
    gateway's own ran inside a script. Returns what the gateway's connection sent, by command."""
    sent = Counter(args[0].lower() for source, args in seen if source == gateway_addr)
    in_scripts = Counter(args[0].lower() for source, args in seen if source == "lua")
    others = {source for source, _ in seen} - {gateway_addr, "lua"}
    assert all(args[0].upper() in ("INFO", "ECHO") for source, args in seen if source in others)  # the test's
    for source, args in seen:
        if source == gateway_addr and args[0].upper() == "EVALSHA":
            assert args[1] == ACQUIRE.sha and args[2] == "2"  # one script, two keys: both limits at once
            assert args[5:] == [str(CLIENTS_LIMIT), HOUR_MS, str(ROUTE_LIMIT), HOUR_MS]
        if source == gateway_addr and args[0].upper() == "EVAL":
            assert args[1] == ACQUIRE.source and args[2] == "2"
    counted = {name: c["calls"] for name, c in change.items()}
    assert counted == dict(sent + in_scripts), (counted, sent, in_scripts)
    assert set(in_scripts) <= {"pttl", "get", "incr", "set"}
    return sent


def test_two_limits_cost_one_script_call_per_request(gateway: Server, redis_server: RedisServer,
                                                     monitor: Monitor) -> None:
    addr = warm_up(gateway, redis_server)
    monitor.until_marker()  # the warm-up's commands are behind us
    before = commandstats(redis_server)
    statuses = run_requests(gateway)
    status, _ = call(gateway, "/readyz")  # asks Redis with a PING: counted apart from the scripts
    assert status == 200
    after = commandstats(redis_server)
    seen = monitor.until_marker()

    assert statuses == [200] * (ROUTE_LIMIT - 1) + [429] * (N - ROUTE_LIMIT + 1)  # refusals are checked too
    change = delta(before, after)
    assert change["evalsha"] == {"calls": N, "failed_calls": 0, "rejected_calls": 0}  # one per request, not 2N
    assert "eval" not in change
    assert change["ping"] == {"calls": 1, "failed_calls": 0, "rejected_calls": 0}  # /readyz, not a request's check
    assert check_wire(change, seen, addr) == {"evalsha": N, "ping": 1}  # and nothing else from the gateway
    # the one script counted both limits (a refused request in neither): two counters, both at ROUTE_LIMIT
    assert counters(redis_server) == [ROUTE_LIMIT, ROUTE_LIMIT]
    assert "cannot be reached" not in gateway.stderr


def test_after_script_flush_one_eval_reloads_the_script(gateway: Server, redis_server: RedisServer,
                                                        monitor: Monitor) -> None:
    """EVALSHA answered NOSCRIPT once, then EVAL: N + 1 script commands, of which N ran (one per request)."""
    addr = warm_up(gateway, redis_server)
    redis_server.command("SCRIPT", "FLUSH")
    monitor.until_marker()
    before = commandstats(redis_server)
    statuses = run_requests(gateway)
    after = commandstats(redis_server)
    seen = monitor.until_marker()

    assert statuses.count(200) == ROUTE_LIMIT - 1 and statuses.count(429) == N - ROUTE_LIMIT + 1
    change = delta(before, after)
    assert change["evalsha"] == {"calls": N, "failed_calls": 1, "rejected_calls": 0}  # the first one: NOSCRIPT
    assert change["eval"] == {"calls": 1, "failed_calls": 0, "rejected_calls": 0}  # loads it again; then EVALSHA
    ran = change["evalsha"]["calls"] - change["evalsha"]["failed_calls"] + change["eval"]["calls"]
    assert ran == N
    assert "ping" not in change
    assert check_wire(change, seen, addr) == {"evalsha": N, "eval": 1}
    assert counters(redis_server) == [ROUTE_LIMIT, ROUTE_LIMIT]
