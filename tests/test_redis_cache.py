"""The cache step over Redis: concurrent misses in two replicas make one upstream call; a replica that waits longer
than its timeout behind another's call answers 504, as a waiter in one process does."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from redis_support import RedisServer, redis_module_fixture, redis_server_fixture  # noqa: F401 (fixtures)

from gateway.edge.cache import cache
from gateway.errors import UpstreamTimeout
from gateway.keys import ANSWER_HEADERS, FACTS, IDENTITY, Facts
from gateway.state.shared import PREFIX, RedisState
from gateway.state.url import parse_state

WAIT = 10.0


def req() -> web.Request:
    match_info = web.UrlMappingMatchInfo({"city": "paris"}, None)  # type: ignore[arg-type]
    request = make_mocked_request("GET", "/api/w/paris?units=metric", match_info=match_info)
    request[IDENTITY] = "ip:203.0.113.9"
    request[FACTS] = Facts(route="/api/w/[city]")
    return request


class Upstream:
    """A stub call_next: counts calls; the first is held until ``release`` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.called.set()
        await self.release.wait()
        return web.json_response({"temp": 21, "call": self.calls})


class Contended:
    """Wraps a state's link: ``seen`` is set once one of its lock attempts (SET NX) found the lock taken."""

    def __init__(self, state: RedisState) -> None:
        self.seen = asyncio.Event()
        self.call = state.link.call
        state.link.call = self  # type: ignore[method-assign]

    async def __call__(self, *args):
        reply = await self.call(*args)
        if args[0] == "SET" and "NX" in args and reply is None:
            self.seen.set()
        return reply


async def outcome(step, upstream: Upstream) -> tuple[int, bytes, str | None] | str:
    request = req()
    try:
        response = await step(request, upstream)
    except UpstreamTimeout:
        return "504"
    cache_header = response.headers.get("X-Cache") or request[ANSWER_HEADERS].get("X-Cache")
    return response.status, response.body, cache_header


def replicas(server: RedisServer) -> tuple[RedisState, RedisState]:
    return tuple(RedisState(parse_state(f"{server.url}?timeout=2s")) for _ in range(2))  # type: ignore[return-value]


async def test_misses_in_two_replicas_make_one_call(redis_server: RedisServer) -> None:
    a, b = replicas(redis_server)
    upstream, b_waits = Upstream(), Contended(b)
    step_a = cache(300, a, pattern="/api/w/[city]", vary=(), timeout=5)
    step_b = cache(300, b, pattern="/api/w/[city]", vary=(), timeout=5)
    try:
        first = asyncio.create_task(outcome(step_a, upstream))
        await asyncio.wait_for(upstream.called.wait(), WAIT)  # a's call is in progress (and holds the lock)
        rest = [asyncio.create_task(outcome(step, upstream)) for step in (step_a, step_b) * 10]
        await asyncio.wait_for(b_waits.seen.wait(), WAIT)  # b's leader found the lock taken
        upstream.release.set()
        outcomes = await asyncio.wait_for(asyncio.gather(first, *rest), WAIT)
    finally:
        await a.close()
        await b.close()
    assert upstream.calls == 1
    assert outcomes[0] == (200, b'{"temp": 21, "call": 1}', "MISS")
    assert all(o == (200, b'{"temp": 21, "call": 1}', "HIT") for o in outcomes[1:]), outcomes
    assert redis_server.command("KEYS", f"{PREFIX}lock:*") == []  # released


async def test_a_replica_waits_at_most_its_timeout_then_504(redis_server: RedisServer) -> None:
    a, b = replicas(redis_server)
    upstream, b_waits = Upstream(), Contended(b)
    step_a = cache(300, a, pattern="/api/w/[city]", vary=(), timeout=30)
    step_b = cache(300, b, pattern="/api/w/[city]", vary=(), timeout=0.2)
    try:
        first = asyncio.create_task(outcome(step_a, upstream))
        await asyncio.wait_for(upstream.called.wait(), WAIT)
        waiting = [asyncio.create_task(outcome(step_b, upstream)) for _ in range(5)]
        timed_out = await asyncio.wait_for(asyncio.gather(*waiting), WAIT)
        assert b_waits.seen.is_set() and not first.done()  # b gave up while a's call was still running
        upstream.release.set()
        assert (await asyncio.wait_for(first, WAIT))[0] == 200
        after = await outcome(step_b, upstream)  # and b has the answer a kept
    finally:
        await a.close()
        await b.close()
    assert timed_out == ["504"] * 5
    assert upstream.calls == 1
    assert after == (200, b'{"temp": 21, "call": 1}', "HIT")
