"""The rate_limit step and the memory state, called directly: headers, windows, every limit, exactness, bounds."""

from __future__ import annotations

import asyncio
import math
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.edge.identity import key_identity
from gateway.edge.ratelimit import Policy, rate_limit, route_policies
from gateway.errors import RateLimited
from gateway.keys import ANSWER_HEADERS, IDENTITY
from gateway.state import Limit, State, Window, limit_item, seconds_left
from gateway.state.memory import MemoryState
from gateway.units import Rate

PER_MINUTE = 60.0


class Clock:
    """A clock the test moves by hand: windows end when the test says, not after a sleep."""

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


class Downstream:
    """A stub call_next that records every request it was given."""

    def __init__(self) -> None:
        self.seen: list[web.Request] = []

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        return web.Response(text="ok")


_BASE = make_mocked_request("GET", "/api/x")  # one mocked request (slow to make), cloned per test request


def req(identity: str = "ip:203.0.113.9") -> web.Request:
    request = _BASE.clone()
    request[IDENTITY] = identity
    return request


async def call(step, request: web.Request, downstream: Downstream) -> tuple[int, CIMultiDict[str]]:
    """(status, the answer headers the request carries), a 429 included."""
    try:
        response = await step(request, downstream)
        status = response.status
    except RateLimited as exc:
        status = 429
        request[ANSWER_HEADERS].extend(exc.headers)
    return status, request[ANSWER_HEADERS]


def test_no_limit_no_step(state: MemoryState) -> None:
    assert rate_limit([], state) is None
    assert rate_limit(route_policies(None, None, "/api/x"), state) is None


def test_route_policies() -> None:
    assert route_policies(Rate(100, 60.0), Rate(5, 1.0), "/api/x") == [
        Policy("clients", Rate(100, 60.0), ""), Policy("route", Rate(5, 1.0), "/api/x"),
    ]
    assert route_policies(None, Rate(5, 1.0), "/api/x") == [Policy("route", Rate(5, 1.0), "/api/x")]


async def test_answers_under_the_limit_carry_the_ietf_fields(state: MemoryState, clock: Clock) -> None:
    step = rate_limit([Policy("route", Rate(3, PER_MINUTE), "/api/x")], state)
    downstream = Downstream()
    status, headers = await call(step, req(), downstream)
    assert status == 200
    assert headers["RateLimit-Policy"] == '"route";q=3;w=60'
    assert headers["RateLimit"] == '"route";r=2;t=60'
    clock.now += 19.5
    status, headers = await call(step, req(), downstream)
    assert headers["RateLimit"] == '"route";r=1;t=41'  # 40.5 s left, rounded up: at t there is room again
    assert len(downstream.seen) == 2


async def test_over_the_limit_is_429_with_a_truthful_retry_after(state: MemoryState, clock: Clock) -> None:
    step = rate_limit([Policy("route", Rate(2, PER_MINUTE), "/api/x")], state)
    downstream = Downstream()
    for _ in range(2):
        assert (await call(step, req(), downstream))[0] == 200
    clock.now += 19.5
    with pytest.raises(RateLimited) as info:
        await step(req(), downstream)
    assert info.value.status == 429 and info.value.code == "rate_limited"
    assert info.value.headers == {"Retry-After": "41"}
    assert info.value.message == "too many requests: the route limit of 2/minute is used up; retry in 41s"
    assert len(downstream.seen) == 2
    status, headers = await call(step, req(), downstream)
    assert status == 429 and headers["RateLimit"] == '"route";r=0;t=41'
    assert headers["RateLimit-Policy"] == '"route";q=2;w=60'
    clock.now += 40  # half a second short of the window's end: still refused
    assert (await call(step, req(), downstream))[0] == 429
    clock.now += 1  # Retry-After seconds after the refusal: admitted, in a new window
    status, headers = await call(step, req(), downstream)
    assert status == 200 and headers["RateLimit"] == '"route";r=1;t=60'


async def test_a_burst_exactly_at_the_boundary(state: MemoryState, clock: Clock) -> None:
    step = rate_limit([Policy("route", Rate(5, 1.0), "/api/x")], state)
    downstream = Downstream()
    statuses = [(await call(step, req(), downstream))[0] for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    clock.now += 1.0  # the window opened by the first request ends exactly now
    statuses = [(await call(step, req(), downstream))[0] for _ in range(6)]
    assert statuses == [200] * 5 + [429]


async def test_two_clients_have_separate_budgets(state: MemoryState) -> None:
    step = rate_limit([Policy("route", Rate(2, PER_MINUTE), "/api/x")], state)
    downstream = Downstream()
    a, b = "ip:203.0.113.9", key_identity("ck-live-CLIENTKEY-0123456789")
    assert [(await call(step, req(a), downstream))[0] for _ in range(3)] == [200, 200, 429]
    assert [(await call(step, req(b), downstream))[0] for _ in range(3)] == [200, 200, 429]


async def test_a_client_is_counted_the_same_after_a_flood_of_others(state: MemoryState) -> None:
    # the step keeps each client's limits for its next request, a bounded number of them: a flood of new clients
    # pushes the first one's out, and its next request still counts in its own window, not in a new one
    step = rate_limit([Policy("route", Rate(3, PER_MINUTE), "/api/x")], state)
    downstream = Downstream()
    first = "ip:203.0.113.9"
    assert [(await call(step, req(first), downstream))[0] for _ in range(2)] == [200, 200]
    for i in range(5_000):
        await call(step, req(f"ip:198.51.100.{i}"), downstream)
    status, headers = await call(step, req(first), downstream)
    assert status == 200 and headers["RateLimit"].startswith('"route";r=0;')
    assert (await call(step, req(first), downstream))[0] == 429


async def test_every_limit_must_admit_and_a_refusal_spends_no_quota(state: MemoryState) -> None:
    clients = Rate(5, PER_MINUTE)
    route_a = rate_limit(route_policies(clients, Rate(2, PER_MINUTE), "/api/a"), state)
    route_b = rate_limit(route_policies(clients, Rate(10, PER_MINUTE), "/api/b"), state)
    downstream = Downstream()
    results = [await call(route_a, req(), downstream) for _ in range(4)]
    assert [status for status, _ in results] == [200, 200, 429, 429]
    # the refused requests spent nothing of the clients budget: 5 - 2 = 3 left for every other route
    assert results[-1][1]["RateLimit"] == '"clients";r=3;t=60, "route";r=0;t=60'
    assert results[-1][1]["RateLimit-Policy"] == '"clients";q=5;w=60, "route";q=2;w=60'
    results = [await call(route_b, req(), downstream) for _ in range(4)]
    assert [status for status, _ in results] == [200, 200, 200, 429]
    assert results[-1][1]["RateLimit"] == '"clients";r=0;t=60, "route";r=7;t=60'
    assert len(downstream.seen) == 5  # exactly clients.rate_limit, across both routes


async def test_retry_after_is_the_latest_of_the_refusing_windows(state: MemoryState, clock: Clock) -> None:
    step = rate_limit(route_policies(Rate(1, 3600.0), Rate(1, PER_MINUTE), "/api/x"), state)
    downstream = Downstream()
    assert (await call(step, req(), downstream))[0] == 200
    with pytest.raises(RateLimited) as info:
        await step(req(), downstream)
    assert info.value.headers == {"Retry-After": "3600"}
    assert "clients limit of 1/hour and route limit of 1/minute" in info.value.message


async def test_n_concurrent_requests_against_k_admit_exactly_k(state: MemoryState) -> None:
    step = rate_limit(route_policies(Rate(120, PER_MINUTE), Rate(50, PER_MINUTE), "/api/x"), state)
    release, decided = asyncio.Event(), asyncio.Event()
    outcomes: list[int] = []

    def count(status: int) -> None:
        outcomes.append(status)
        if len(outcomes) == 500:
            decided.set()

    async def held(request: web.Request) -> web.StreamResponse:
        count(200)
        await release.wait()  # every admitted request is still in flight while the others are decided
        return web.Response()

    async def one() -> int:
        try:
            return (await step(req(), held)).status
        except RateLimited:
            count(429)
            return 429

    tasks = [asyncio.create_task(one()) for _ in range(500)]
    async with asyncio.timeout(10):
        await decided.wait()
    release.set()
    statuses = await asyncio.gather(*tasks)
    assert statuses.count(200) == outcomes.count(200) == 50
    assert statuses.count(429) == 450


async def test_memory_stays_bounded_however_many_clients_call(clock: Clock) -> None:
    state = MemoryState(max_counters=10_000, clock=clock)
    limit = limit_item(Rate(3, PER_MINUTE))
    before, _, after = limit.key_for("route", "/api/x", "\0").partition("\0")  # the key, as the step builds it
    for i in range(1_000_000):  # a million distinct client IPs
        ip = f"ip:{i >> 24}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        await state.acquire([Limit(limit, ("route", "/api/x", ip), before + ip + after)], lock=ip)
    assert len(state.counters.counts) == 10_000
    # the most recent clients are still counted exactly
    latest = [Limit(limit, ("route", "/api/x", "ip:0.15.66.63"))]  # the millionth
    assert [(await state.acquire(latest, lock="x")).admitted for _ in range(3)] == [True, True, False]
    # and windows that ended are dropped, two for each new one, as traffic goes on
    clock.now += PER_MINUTE
    for i in range(5_000):
        await state.acquire([Limit(limit, ("route", "/api/x", f"ip:later-{i}"))], lock="x")
    assert len(state.counters.counts) == 5_000


async def test_counters_expire_with_their_window(state: MemoryState, clock: Clock) -> None:
    limit = [Limit(limit_item(Rate(1, 1.0)), ("route", "/api/x", "ip:1"))]
    assert (await state.acquire(limit, lock="ip:1")).admitted
    assert not (await state.acquire(limit, lock="ip:1")).admitted
    clock.now += 0.999
    assert not (await state.acquire(limit, lock="ip:1")).admitted
    clock.now += 0.001
    verdict = await state.acquire(limit, lock="ip:1")
    assert verdict.admitted and verdict.windows[0].remaining == 0 and verdict.windows[0].reset_in == 1.0


async def test_no_client_key_in_headers_or_errors(state: MemoryState) -> None:
    key = "ck-live-CLIENTKEY-0123456789"
    step = rate_limit(route_policies(Rate(1, PER_MINUTE), None, "/api/x"), state)
    request = req(key_identity(key))
    await call(step, request, Downstream())
    refused = req(key_identity(key))
    with pytest.raises(RateLimited) as info:
        await step(refused, Downstream())
    shown = " ".join([*request[ANSWER_HEADERS].values(), *refused[ANSWER_HEADERS].values(), info.value.message,
                      *info.value.headers.values()])
    assert key not in shown and key[:12] not in shown and key[-12:] not in shown
    assert "key:" not in shown  # not even the identity's hash
    assert re.fullmatch(r'"clients";r=0;t=\d+', refused[ANSWER_HEADERS]["RateLimit"])
    assert all(key not in k for k in state.counters.counts)


def test_policy_names_are_unique(state: MemoryState) -> None:
    with pytest.raises(ValueError, match="share a name"):
        rate_limit([Policy("route", Rate(1, 1.0)), Policy("route", Rate(2, 1.0))], state)


class YieldingState(MemoryState):
    """The generic, limits-strategy path of State, with every storage call yielding as a network backend's would."""

    async def hit(self, limit: Limit) -> bool:
        await asyncio.sleep(0)
        return await super().hit(limit)

    async def test(self, limit: Limit) -> bool:
        await asyncio.sleep(0)
        return await super().test(limit)

    acquire = State.acquire  # not the memory shortcut: test, hit and window through limits, under the lock


async def test_the_generic_acquire_is_exact_under_its_lock_when_calls_yield(clock: Clock) -> None:
    state = YieldingState(clock=clock)
    limits = [Limit(limit_item(Rate(30, PER_MINUTE)), ("clients", "", "ip:1")),
              Limit(limit_item(Rate(20, PER_MINUTE)), ("route", "/api/x", "ip:1"))]
    verdicts = await asyncio.gather(*(state.acquire(limits, lock="ip:1") for _ in range(200)))
    assert sum(v.admitted for v in verdicts) == 20
    # the 180 refused by the route limit spent nothing of the clients limit
    assert await state.window(limits[0]) == Window(10, 60.0)
    assert state._locks == {}


async def test_the_memory_shortcut_and_the_limits_strategy_agree(clock: Clock) -> None:
    fast, generic = MemoryState(clock=clock), YieldingState(clock=clock)
    limits = [Limit(limit_item(Rate(3, PER_MINUTE)), ("clients", "", "ip:1")),
              Limit(limit_item(Rate(2, 1.0)), ("route", "/api/x", "ip:1"))]
    for step in range(12):
        a = await fast.acquire(limits, lock="ip:1")
        b = await generic.acquire(limits, lock="ip:1")
        assert (a.admitted, a.refused) == (b.admitted, b.refused), step
        assert [w.remaining for w in a.windows] == [w.remaining for w in b.windows], step
        assert [round(w.reset_in, 6) for w in a.windows if w.remaining < 3] == \
               [round(w.reset_in, 6) for w in b.windows if w.remaining < 3], step
        clock.now += 0.4
    # both read the same counters through limits' own strategy
    assert await fast.window(limits[0]) == await generic.window(limits[0])


@pytest.mark.parametrize("identity", ["ip:203.0.113.9", "ip:2001:db8:1:2::/64", "sub:auth0|64f/../x", "sub:Ünïcode ✓",
                                      "key:3f2a9c0d1b2e4f5a", "sub:a/b/c/100/1/MINUTE", ""])
@pytest.mark.parametrize("policy", [Policy("clients", Rate(100, 60.0)), Policy("route", Rate(5, 1.0), "/api/p/[id]")])
def test_the_counter_key_built_per_request_is_limits_own(policy, identity):
    """The step builds each key as before + identity + after (limits' key_for is slow): the same text exactly, so
    counters written by an older gateway (or another replica) on Redis are the same counters."""
    from gateway.edge.ratelimit import _key_around

    item = limit_item(policy.rate)
    before, after = _key_around(item, policy)
    assert before + identity + after == item.key_for(policy.name, policy.scope, identity)
    assert Limit(item, (policy.name, policy.scope, identity)).key == before + identity + after


@pytest.mark.parametrize(("reset_in", "seconds"), [(-0.5, 1), (0.0, 1), (0.2, 1), (1.0, 1), (1.000001, 2), (40.5, 41),
                                                    (60.0, 60)])
def test_seconds_left_rounds_up_and_never_says_zero(reset_in: float, seconds: int) -> None:
    assert seconds_left(reset_in) == seconds == max(1, math.ceil(reset_in))
