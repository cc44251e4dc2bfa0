"""The cache step and the memory cache, called directly: what is kept, the key, hits, coalescing, bounds."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.edge.cache import cache, keepable, vary_headers
from gateway.edge.identity import key_identity
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.keys import ANSWER_HEADERS, FACTS, IDENTITY, Facts
from gateway.state import Cached
from gateway.state.memory import MemoryState

CLIENT_KEY = "ck-live-CLIENTKEY-0123456789"
TTL = 300.0


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> MemoryState:
    return MemoryState(clock=clock)


def req(method: str = "GET", path: str = "/api/w/paris?units=metric", headers: dict[str, str] | None = None, *,
        params: dict[str, str] | None = None, identity: str = "ip:203.0.113.9") -> web.Request:
    match_info = web.UrlMappingMatchInfo(params or {"city": "paris"}, None)  # type: ignore[arg-type]
    request = make_mocked_request(method, path, headers=CIMultiDict(headers or {}), match_info=match_info)
    request[IDENTITY] = identity
    request[FACTS] = Facts(route="/api/w/[city]")
    return request


class Upstream:
    """A stub call_next: counts calls, optionally holds each until released, answers what it is told."""

    def __init__(self, answer=None) -> None:
        self.calls = 0
        self.release: asyncio.Event | None = None
        self.answer = answer or (lambda: web.json_response({"temp": 21}, headers={"ETag": '"v1"'}))

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        if self.release is not None:
            await self.release.wait()
        answer = self.answer()
        if isinstance(answer, Exception):
            raise answer
        return answer


async def settle(upstream: Upstream) -> None:
    """Until the first call reached the upstream, then a few loop turns so every other task reaches its wait
    (each gets there without any real I/O: a handful of turns, never a timed sleep)."""
    async with asyncio.timeout(5):
        while upstream.calls == 0:
            await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)


def step_for(state: MemoryState, **options):
    options.setdefault("pattern", "/api/w/[city]")
    options.setdefault("vary", vary_headers(["X-Units"]))
    options.setdefault("timeout", 5.0)
    return cache(options.pop("ttl", TTL), state, **options)


# -- what may be kept --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [200, 203, 204, 301, 404, 410])
def test_these_statuses_are_kept(status: int) -> None:
    assert keepable(web.Response(status=status, body=b"x"), 0.0, TTL) is not None


@pytest.mark.parametrize("status", [201, 202, 206, 302, 304, 400, 401, 403, 429, 500, 502, 503, 504])
def test_other_statuses_are_not(status: int) -> None:
    assert keepable(web.Response(status=status, body=b"x"), 0.0, TTL) is None


@pytest.mark.parametrize("headers", [
    {"Cache-Control": "no-store"},
    {"Cache-Control": "max-age=60, No-Store"},
    {"Cache-Control": "private"},
    {"Cache-Control": 'private="Set-Cookie", max-age=60'},
    {"Set-Cookie": "session=abc"},
    {"Content-Type": "text/event-stream"},
    {"Content-Type": "Text/Event-Stream; charset=utf-8"},
    {"Vary": "Accept, *"},
])
def test_what_the_answer_forbids_is_not_kept(headers: dict[str, str]) -> None:
    assert keepable(web.Response(body=b"x", headers=headers), 0.0, TTL) is None


def test_streams_and_sent_answers_are_not_kept() -> None:
    assert keepable(web.StreamResponse(), 0.0, TTL) is None
    assert keepable(web.FileResponse(__file__), 0.0, TTL) is None


def test_what_is_kept_is_the_answer_without_per_request_headers() -> None:
    response = web.Response(body=b'{"a": 1}', content_type="application/json",
                            headers={"Cache-Control": "max-age=60", "X-Request-Id": "r1", "Date": "x",
                                     "X-Cache": "MISS", "Age": "3", "ETag": '"e"'})
    entry = keepable(response, 10.0, TTL)
    assert entry == Cached(200, (("Cache-Control", "max-age=60"), ("ETag", '"e"'),
                                 ("Content-Type", "application/json")), b'{"a": 1}', 10.0, 10.0 + TTL)


# -- the key -----------------------------------------------------------------------------------------------------

def test_vary_headers_never_include_what_never_goes_upstream() -> None:
    assert vary_headers([]) == ("accept", "accept-language")
    assert vary_headers(["X-Units", "Authorization", "Cookie", "X-API-Key", "X-Forwarded-For"]) == \
        ("accept", "accept-language", "x-units")


async def test_the_key_holds_route_params_query_and_vary_headers_but_no_value(state: MemoryState) -> None:
    step, upstream = step_for(state), Upstream()
    variants = [
        req(),
        req(path="/api/w/paris?units=imperial"),
        req(params={"city": "oslo"}),
        req(headers={"Accept": "text/html"}),
        req(headers={"Accept-Language": "fr"}),
        req(headers={"X-Units": "K"}),
    ]
    for request in variants:
        await step(request, upstream)
    assert upstream.calls == len(variants)
    assert len(state.answers) == len(variants)
    # what never reaches the upstream does not split the cache, and is not in any key
    same = [req(headers={"X-API-Key": CLIENT_KEY}), req(headers={"Authorization": f"Bearer {CLIENT_KEY}"}),
            req(headers={"Cookie": "s=1"}), req(identity=key_identity(CLIENT_KEY))]
    for request in same:
        response = await step(request, upstream)
        assert response.headers["X-Cache"] == "HIT"
    assert upstream.calls == len(variants)
    for key in state.answers:
        assert key.startswith("cache:/api/w/[city]:") and len(key) == len("cache:/api/w/[city]:") + 64
        for value in ("paris", "metric", "text/html", "fr", CLIENT_KEY, CLIENT_KEY[:12], key_identity(CLIENT_KEY)):
            assert value not in key


async def test_with_identity_upstream_each_client_has_its_own_entries(state: MemoryState) -> None:
    step, upstream = step_for(state, per_client=True), Upstream()
    for identity in ("sub:alice", "sub:bob", "sub:alice"):
        await step(req(identity=identity), upstream)
    assert upstream.calls == 2
    assert not any("alice" in key for key in state.answers)


# -- hits, misses, expiry ----------------------------------------------------------------------------------------

async def test_a_miss_then_hits_with_age_until_it_expires(state: MemoryState, clock: Clock) -> None:
    step, upstream = step_for(state), Upstream()
    first = req()
    miss = await step(first, upstream)
    assert first[ANSWER_HEADERS]["X-Cache"] == "MISS" and first[FACTS].cache == "MISS"
    assert "Age" not in miss.headers
    clock.now += 42.7
    second = req()
    hit = await step(second, upstream)
    assert (hit.status, hit.body, hit.headers["X-Cache"], hit.headers["Age"]) == (200, miss.body, "HIT", "42")
    assert hit.headers["ETag"] == '"v1"' and hit.headers["Content-Type"].startswith("application/json")
    assert second[FACTS].cache == "HIT" and ANSWER_HEADERS not in second
    clock.now += TTL - 42.7  # kept for exactly the route's duration
    assert (await step(req(), upstream)).status == 200
    assert upstream.calls == 2


async def test_an_expired_answer_is_not_served_and_is_dropped_when_read(state: MemoryState, clock: Clock) -> None:
    await state.cache_set("k", Cached(200, (("ETag", '"v1"'),), b"x", clock.now, clock.now + 10))
    clock.now += 9.999
    assert (await state.cache_get("k")).body == b"x"
    clock.now += 0.001  # at its expiry: gone
    assert await state.cache_get("k") is None and "k" not in state.answers and state.answers.currsize == 0


async def test_only_get_and_head_are_cached(state: MemoryState) -> None:
    step, upstream = step_for(state), Upstream()
    for method in ("POST", "PUT", "DELETE", "POST"):
        request = req(method)
        await step(request, upstream)
        assert ANSWER_HEADERS not in request
    assert upstream.calls == 4 and len(state.answers) == 0


async def test_head_is_answered_from_a_kept_get_and_never_kept_itself(state: MemoryState) -> None:
    step, upstream = step_for(state), Upstream(lambda: web.Response(status=200))  # HEAD answers have no body
    await step(req("HEAD"), upstream)
    assert upstream.calls == 1 and len(state.answers) == 0
    upstream.answer = lambda: web.Response(body=b"full body")
    await step(req("GET"), upstream)
    head = await step(req("HEAD"), upstream)
    assert head.headers["X-Cache"] == "HIT" and head.body == b"full body"  # aiohttp sends no body for HEAD
    assert upstream.calls == 2


async def test_no_cache_no_step(state: MemoryState) -> None:
    assert cache(None, state, pattern="/x", vary=(), timeout=1.0) is None
    assert cache(0.0, state, pattern="/x", vary=(), timeout=1.0) is None


# -- concurrent misses -------------------------------------------------------------------------------------------

async def test_ten_concurrent_misses_make_one_call(state: MemoryState) -> None:
    step, upstream = step_for(state), Upstream()
    upstream.release = asyncio.Event()
    requests = [req() for _ in range(10)]
    tasks = [asyncio.create_task(step(r, upstream)) for r in requests]
    await settle(upstream)
    upstream.release.set()
    responses = await asyncio.gather(*tasks)
    assert upstream.calls == 1
    assert {r.body for r in responses} == {responses[0].body}
    assert sorted(r[FACTS].cache for r in requests) == ["HIT"] * 9 + ["MISS"]
    assert state._locks == {}


async def test_a_failed_call_is_shared_by_its_waiters_and_not_kept(state: MemoryState) -> None:
    step, upstream = step_for(state), Upstream(lambda: UpstreamError("upstream 'svc' failed (status 500)"))
    upstream.release = asyncio.Event()
    tasks = [asyncio.create_task(step(req(), upstream)) for _ in range(5)]
    await settle(upstream)
    upstream.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert upstream.calls == 1
    assert all(isinstance(r, UpstreamError) for r in results)
    # not poisoned: the next request calls again, and its good answer is kept
    upstream.release, upstream.answer = None, lambda: web.Response(body=b"ok")
    assert (await step(req(), upstream)).body == b"ok"
    assert (await step(req(), upstream)).headers["X-Cache"] == "HIT"
    assert upstream.calls == 2


async def test_waiters_give_up_after_the_timeout_with_504(state: MemoryState) -> None:
    step, upstream = step_for(state, timeout=0.05), Upstream()
    upstream.release = asyncio.Event()
    leader = asyncio.create_task(step(req(), upstream))
    await settle(upstream)
    with pytest.raises(UpstreamTimeout):
        await step(req(), upstream)
    assert not leader.done()  # the waiter's timeout did not cancel the shared call
    upstream.release.set()
    assert (await leader).status == 200
    assert (await step(req(), upstream)).headers["X-Cache"] == "HIT"
    assert upstream.calls == 1


async def test_an_answer_that_cannot_be_kept_sends_each_waiter_to_call_itself(state: MemoryState) -> None:
    step = step_for(state)
    upstream = Upstream(lambda: web.Response(body=b"yours", headers={"Cache-Control": "private"}))
    upstream.release = asyncio.Event()
    tasks = [asyncio.create_task(step(req(), upstream)) for _ in range(3)]
    await settle(upstream)
    assert upstream.calls == 1  # the others wait for the first
    upstream.release.set()
    responses = await asyncio.gather(*tasks)
    assert upstream.calls == 3 and all(r.body == b"yours" for r in responses)
    assert len(state.answers) == 0


async def test_a_cancelled_leader_sends_its_waiters_to_call_themselves(state: MemoryState) -> None:
    step, upstream = step_for(state), Upstream()
    upstream.release = asyncio.Event()
    leader = asyncio.create_task(step(req(), upstream))
    await settle(upstream)
    waiter = asyncio.create_task(step(req(), upstream))
    for _ in range(5):
        await asyncio.sleep(0)
    leader.cancel()
    upstream.release.set()
    assert (await waiter).status == 200
    assert upstream.calls == 2
    with pytest.raises(asyncio.CancelledError):
        await leader


# -- bounded in bytes --------------------------------------------------------------------------------------------

async def test_the_cache_is_bounded_in_bytes_least_recently_used_out(clock: Clock) -> None:
    state = MemoryState(cache_size=11_000, clock=clock)  # four answers of 2,512 bytes each
    step = step_for(state)
    upstream = Upstream(lambda: web.Response(body=b"x" * 2_000))
    for city in ("a", "b", "c", "d"):
        await step(req(params={"city": city}), upstream)
    assert state.answers.currsize <= 11_000 and len(state.answers) == 4
    await step(req(params={"city": "a"}), upstream)  # a is now the most recently used
    await step(req(params={"city": "e"}), upstream)  # b goes
    assert upstream.calls == 5
    assert (await step(req(params={"city": "a"}), upstream)).headers["X-Cache"] == "HIT"
    await step(req(params={"city": "b"}), upstream)
    assert upstream.calls == 6
    assert state.answers.currsize <= 11_000
    upstream.answer = lambda: web.Response(body=b"x" * 20_000)  # larger than the whole cache: passed on, not kept
    response = await step(req(params={"city": "huge"}), upstream)
    assert len(response.body) == 20_000 and state.answers.currsize <= 11_000
