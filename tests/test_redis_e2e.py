"""Real `gateway serve` processes sharing one real redis-server (SPEC §9): one budget for all of them, one cache,
and a Redis that dies and comes back mid-load without a lost request or a 500 — and never its password shown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cli_support import PYTHON_M, Server, clean_env, free_port, make_project, run_cli
from redis_support import RedisServer, redis_module_fixture, redis_server_fixture  # noqa: F401 (fixtures)

WAIT = 20.0  # seconds: reached only when the behaviour under test is broken
PASSWORD = "redis-TOPSECRET-pw-4e5f6a7b8c9d"
PING = "import os\nasync def GET(req):\n    return {'pid': os.getpid()}\n"
CLOCK = ("import itertools, os\nn = itertools.count()\nconfig = {'cache': '30s'}\n"
         "async def GET(req):\n    return {'pid': os.getpid(), 'n': next(n)}\n")


def config(url: str, *, limit: str = "50/hour", on_error: str = "local", workers: int = 1) -> str:
    return (f"server:\n  prefix: /api\n  workers: {workers}\n  shutdown_grace: 2s\nstate: {url}\n"
            f"state_on_error: {on_error}\nclients:\n  rate_limit: {limit}\n")


@contextlib.contextmanager
def gateways(tmp_path: Path, text: str, n: int = 1, env: dict[str, str] | None = None,
             args: tuple[str, ...] = ()) -> Iterator[list[Server]]:
    """``n`` gateway processes on one project (one config), each on its own port, all ready."""
    make_project(tmp_path, text, routes={"ping.py": PING, "clock.py": CLOCK})
    servers: list[Server] = []
    try:
        for _ in range(n):
            port = free_port()
            servers.append(Server(PYTHON_M, "serve", "--host", "127.0.0.1", "--port", str(port), *args,
                                  cwd=tmp_path, env=clean_env(**(env or {})), port=port))
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.kill()


async def get(session: aiohttp.ClientSession, server: Server, path: str) -> tuple[int, dict[str, str], bytes]:
    async with session.get(f"http://127.0.0.1:{server.port}{path}") as resp:
        return resp.status, dict(resp.headers), await resp.read()


def remaining(headers: dict[str, str]) -> int:
    return int(headers["RateLimit"].split(";r=")[1].split(";")[0])


# -- one budget, one cache ----------------------------------------------------------------------------------------


async def test_two_gateways_admit_exactly_k_of_500_concurrent(tmp_path: Path, redis_server: RedisServer) -> None:
    with gateways(tmp_path, config(redis_server.url, limit="50/hour"), n=2) as (a, b):
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
            replies = await asyncio.gather(*(get(session, (a, b)[i % 2], "/api/ping") for i in range(500)))
            ready = [json.loads((await get(session, s, "/readyz"))[2]) for s in (a, b)]
    statuses = Counter(status for status, _, _ in replies)
    assert statuses == {200: 50, 429: 450}  # each process alone would admit 50 of its 250: 100 in all
    admitted = [headers for status, headers, _ in replies if status == 200]
    assert sorted(remaining(h) for h in admitted) == list(range(50))  # one counter: every count seen once
    assert ready == [{"status": "ready", "state": "redis"}] * 2
    assert "cannot be reached" not in a.stderr + b.stderr


async def test_workers_share_the_request_rate_limit_too(tmp_path: Path, redis_server: RedisServer) -> None:
    with gateways(tmp_path, config(redis_server.url, limit="20/hour"), args=("--workers", "2")) as (gw,):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                         timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
            replies = await asyncio.gather(*(get(session, gw, "/api/ping") for _ in range(100)))
    assert Counter(status for status, _, _ in replies) == {200: 20, 429: 80}


async def test_one_cache_for_every_gateway(tmp_path: Path, redis_server: RedisServer) -> None:
    with gateways(tmp_path, config(redis_server.url, limit="1000/hour"), n=2) as (a, b):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
            first = await get(session, a, "/api/clock?q=1")
            second = await get(session, b, "/api/clock?q=1")
            other = await get(session, b, "/api/clock?q=2")
    assert (first[0], first[1]["X-Cache"]) == (200, "MISS")
    assert (second[0], second[1]["X-Cache"]) == (200, "HIT")
    assert second[2] == first[2] and json.loads(first[2])["pid"] == a.proc.pid  # b answered with a's answer
    assert (other[1]["X-Cache"], json.loads(other[2])["pid"]) == ("MISS", b.proc.pid)
    assert 29_000 < redis_server.command("PTTL", next(k for k in redis_server.command("KEYS", "gateway:cache:/*")
                                                      if "clock" in k)) <= 30_000


# -- Redis down, slow, back -----------------------------------------------------------------------------------------


async def load_through_a_restart(redis: RedisServer, gw: Server, expected: str) -> Counter[int]:
    """Requests from 6 clients while Redis is killed, stays down a while, and is started again; bounded at 20,000
    requests (503s come fast: the probe may take a second to see Redis back) or WAIT seconds. Returns the statuses;
    /readyz must say ``expected`` while Redis is down."""
    statuses: Counter[int] = Counter()
    bodies: list[bytes] = []
    stop = asyncio.Event()
    deadline = time.monotonic() + WAIT

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set() and sum(statuses.values()) < 20_000 and time.monotonic() < deadline:
            status, headers, body = await get(session, gw, "/api/ping")
            statuses[status] += 1
            if status != 200:
                bodies.append(body)
                assert status != 503 or headers["Retry-After"] == "1"

    async def ready(session: aiohttp.ClientSession) -> str:
        body = (await get(session, gw, "/readyz"))[2]
        metrics = (await get(session, gw, "/metrics"))[2]  # whatever /metrics is in this build, no password in it
        assert PASSWORD.encode() not in body + metrics
        return json.loads(body)["state"]

    async def until(check, what: str) -> None:
        while not await check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        clients = [asyncio.create_task(client(session)) for _ in range(6)]
        try:
            await until(lambda: _true(sum(statuses.values()) >= 100), "load before the restart")
            await asyncio.to_thread(redis.stop)
            before = sum(statuses.values())
            await until(lambda: _true(sum(statuses.values()) >= before + 200), "load while Redis is down")
            assert await ready(session) == expected
            await asyncio.to_thread(redis.start)
            await until(lambda: _equals(ready(session), "redis"), "the gateway to use Redis again")
            after = sum(statuses.values())
            await until(lambda: _true(sum(statuses.values()) >= after + 100), "load after the restart")
        finally:
            stop.set()
            await asyncio.gather(*clients)
    for body in bodies:
        assert json.loads(body)["error"] in ("rate_limited", "unavailable")
        assert PASSWORD not in body.decode()
    return statuses


async def _true(value: bool) -> bool:
    return value


async def _equals(value, expected) -> bool:
    return await value == expected


@pytest.mark.parametrize("on_error", ["local", "closed"])
async def test_a_redis_restart_mid_load_loses_no_request(tmp_path: Path, on_error: str) -> None:
    redis = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    url = "redis://:${REDIS_PASSWORD}@127.0.0.1:" + f"{redis.port}/0?timeout=250ms"
    try:
        with gateways(tmp_path, config(url, limit="100000/hour", on_error=on_error),
                      env={"REDIS_PASSWORD": PASSWORD}) as (gw,):
            expected = "redis (unreachable: local fallback)" if on_error == "local" else "redis (unreachable: closed)"
            statuses = await load_through_a_restart(redis, gw, expected)
            assert redis.command("KEYS", "gateway:rl:*")  # counting in Redis again after the restart
            assert gw.terminate() == 0
    finally:
        redis.stop()
    if on_error == "local":
        assert set(statuses) == {200}, statuses  # every request answered, counted in the process meanwhile
    else:
        assert set(statuses) == {200, 503}, statuses  # 503 while down, never 500, never a hang
    output = gw.stdout + gw.stderr
    assert PASSWORD not in output and PASSWORD[:12] not in output
    assert output.count("cannot be reached") == 1, output  # once (a minute), not per request
    assert output.count("answers again") == 1, output
    assert f"state_on_error: {on_error}" in output


async def test_a_paused_redis_answers_503_at_once_when_closed(tmp_path: Path, redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?timeout=200ms"
    with gateways(tmp_path, config(url, on_error="closed")) as (gw,):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
            assert (await get(session, gw, "/api/ping"))[0] == 200
            redis_server.command("CLIENT", "PAUSE", "30000", "WRITE")
            try:
                status, headers, body = await get(session, gw, "/api/ping")
                paused = _writes_hang(redis_server)
            finally:
                redis_server.command("CLIENT", "UNPAUSE")
    assert paused  # the 503 came while Redis was still paused: within the timeout, not after the pause
    assert (status, headers["Retry-After"], json.loads(body)["error"]) == (503, "1", "unavailable")
    assert headers["Content-Type"].startswith("application/json")


def _writes_hang(server: RedisServer) -> bool:
    try:
        server.command("SET", "test:paused", "1", timeout=0.3)
    except TimeoutError:
        return True
    return False


# -- gateway check ------------------------------------------------------------------------------------------------


def test_check_says_which_backend_and_whether_it_answers(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    env = clean_env(REDIS_PASSWORD=PASSWORD)
    url = "redis://:${REDIS_PASSWORD}@127.0.0.1:" + f"{redis.port}/0"
    try:
        make_project(tmp_path, config(url, workers=2))
        up = run_cli(PYTHON_M, "check", cwd=tmp_path, env=env)
        make_project(tmp_path, config(url.replace("${REDIS_PASSWORD}", "wrong-" + PASSWORD), on_error="closed"))
        refused = run_cli(PYTHON_M, "check", cwd=tmp_path, env=env)
    finally:
        redis.stop()
    make_project(tmp_path, config(url))
    down = run_cli(PYTHON_M, "check", cwd=tmp_path, env=env)
    shown = f"redis://127.0.0.1:{redis.port}/0"
    assert up.returncode == 0 and up.stderr == ""  # no "limits are per worker" warning with Redis
    assert f"state: {shown} (answers; state_on_error: local)" in up.stdout.splitlines()
    assert down.returncode == 0  # a warning, not a failure: check may run where Redis is not reachable
    assert f"state: {shown} (does not answer; state_on_error: local)" in down.stdout.splitlines()
    assert down.stderr.startswith(f"warning: state: Redis at {shown} does not answer (ConnectionError: ")
    assert down.stderr.rstrip().endswith("until it does, each process counts its own rate limits")
    assert refused.returncode == 0 and "AuthenticationError" in refused.stderr
    assert refused.stderr.rstrip().endswith("until it does, limited and cached routes answer 503")
    for result in (up, down, refused):
        assert PASSWORD not in result.stdout + result.stderr


def test_check_without_state_says_memory(tmp_path: Path) -> None:
    make_project(tmp_path, "server:\n  prefix: /api\n")
    result = run_cli(PYTHON_M, "check", cwd=tmp_path, env=clean_env())
    assert result.returncode == 0 and result.stderr == ""
    assert "state: memory (each process counts its own rate limits and keeps its own cache)" in result.stdout
