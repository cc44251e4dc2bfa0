"""RedisState against a real redis-server: exact all-or-nothing counting across processes, truthful windows, the
cache and its byte bound, locks, and commands that a cancellation cannot cut in half.

Two RedisState objects, each with its own connection, stand for two gateway processes (test_redis_e2e.py runs two
real ones).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis_support import RedisServer, redis_module_fixture, redis_server_fixture  # noqa: F401 (fixtures)

from gateway.state import Cached, Limit, LockTimeout, limit_item
from gateway.state.scripts import ACQUIRE
from gateway.state.shared import PREFIX, RedisState
from gateway.state.url import parse_state
from gateway.units import Rate

WAIT = 10.0  # seconds: reached only when the behaviour under test is broken


def state_for(server: RedisServer, *, timeout: str = "2s", cache_size: int = 64 * 1024**2, **kwargs) -> RedisState:
    return RedisState(parse_state(f"{server.url}?timeout={timeout}"), cache_size=cache_size, **kwargs)


def limit(count: int, period: float = 60.0, client: str = "ip:203.0.113.9", name: str = "route") -> Limit:
    return Limit(limit_item(Rate(count, period)), (name, "/api/x", client))


def counter(lim: Limit) -> str:
    return f"{PREFIX}rl:{lim.item.key_for(*lim.scope)}"


async def until(check, what: str) -> None:
    """Poll ``check`` (sync or async) every 10 ms until true; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# -- rate limits ------------------------------------------------------------------------------------------------


async def test_two_processes_admit_exactly_k(redis_server: RedisServer) -> None:
    a, b = state_for(redis_server), state_for(redis_server)
    lim = limit(37)
    try:
        verdicts = await asyncio.gather(*(s.acquire([lim], lock="c") for _ in range(150) for s in (a, b)))
    finally:
        await a.close()
        await b.close()
    assert sum(v.admitted for v in verdicts) == 37
    assert redis_server.command("GET", counter(lim)) == "37"  # the 263 refused counted nowhere
    remaining = sorted(v.windows[0].remaining for v in verdicts if v.admitted)
    assert remaining == list(range(37))  # each admitted request saw its own count: no two read the same


async def test_all_or_nothing_over_every_limit(redis_server: RedisServer) -> None:
    state = state_for(redis_server)
    small, large = limit(2, name="clients"), limit(5)
    try:
        verdicts = [await state.acquire([small, large], lock="c") for _ in range(4)]
    finally:
        await state.close()
    assert [v.admitted for v in verdicts] == [True, True, False, False]
    assert [v.refused for v in verdicts] == [(), (), (0,), (0,)]
    assert [[w.remaining for w in v.windows] for v in verdicts] == [[1, 4], [0, 3], [0, 3], [0, 3]]
    assert redis_server.command("GET", counter(small)) == "2"
    assert redis_server.command("GET", counter(large)) == "2"  # the refused requests spent none of its quota


async def test_a_refused_request_opens_no_window(redis_server: RedisServer) -> None:
    """The route's window does not start while the client limit refuses: t=0 and its whole quota, as in memory."""
    state = state_for(redis_server)
    full, fresh = limit(1, name="clients"), limit(5)
    try:
        await state.acquire([full], lock="c")
        verdict = await state.acquire([full, fresh], lock="c")
    finally:
        await state.close()
    assert not verdict.admitted
    assert verdict.windows[1].remaining == 5 and verdict.windows[1].reset_in == 0
    assert redis_server.command("EXISTS", counter(fresh)) == 0


async def test_reset_in_is_the_servers_pttl(redis_server: RedisServer) -> None:
    state = state_for(redis_server)
    lim = limit(3, period=60)
    try:
        first = await state.acquire([lim], lock="c")
        assert first.windows[0].reset_in == 60.0  # a new window: its whole period
        assert 59_000 < redis_server.command("PTTL", counter(lim)) <= 60_000
        redis_server.command("PEXPIRE", counter(lim), "1234")  # as if the window were about to end
        second = await state.acquire([lim], lock="c")
        window = await state.window(lim)
    finally:
        await state.close()
    assert 1.0 < second.windows[0].reset_in <= 1.234
    assert window.remaining == 1 and window.reset_in <= second.windows[0].reset_in


async def test_the_window_starts_over_when_it_ends(redis_server: RedisServer) -> None:
    state = state_for(redis_server)
    lim = limit(2)
    try:
        assert [(await state.acquire([lim], lock="c")).admitted for _ in range(3)] == [True, True, False]
        redis_server.command("PEXPIRE", counter(lim), "20")  # the window ends in 20 ms
        await until(lambda: redis_server.command("EXISTS", counter(lim)) == 0, "the window to end")
        verdict = await state.acquire([lim], lock="c")
    finally:
        await state.close()
    assert verdict.admitted and verdict.windows[0].remaining == 1 and verdict.windows[0].reset_in == 60.0


async def test_a_flushed_script_cache_falls_back_to_eval(redis_server: RedisServer) -> None:
    state = state_for(redis_server)
    lim = limit(5)
    try:
        await state.acquire([lim], lock="c")
        redis_server.command("SCRIPT", "FLUSH")  # as after a restart
        assert redis_server.command("SCRIPT", "EXISTS", ACQUIRE.sha) == [0]
        verdict = await state.acquire([lim], lock="c")
    finally:
        await state.close()
    assert verdict.admitted and verdict.windows[0].remaining == 3
    assert redis_server.command("SCRIPT", "EXISTS", ACQUIRE.sha) == [1]  # EVAL cached it again
    assert state.health.up


async def test_hit_test_and_window_share_the_counters(redis_server: RedisServer) -> None:
    state = state_for(redis_server)
    lim = limit(2)
    try:
        assert await state.test(lim)
        assert [await state.hit(lim) for _ in range(3)] == [True, True, False]  # counted anyway, as limits does
        assert not await state.test(lim)
        window = await state.window(lim)
        verdict = await state.acquire([lim], lock="c")
    finally:
        await state.close()
    assert window.remaining == 0 and 59 < window.reset_in <= 60
    assert not verdict.admitted
    assert redis_server.command("GET", counter(lim)) == "3"


@pytest.mark.parametrize("client", [
    "ip:1.2.3.4\r\n*1\r\n$8\r\nFLUSHALL\r\n",  # RESP smuggled into a key
    "sub:" + "x" * 10_000,
    "sub:ünïcode/../../*?[]{}",
    "sub:",
])
async def test_hostile_identities_are_only_key_bytes(redis_server: RedisServer, client: str) -> None:
    state = state_for(redis_server)
    other = limit(3, client="ip:198.51.100.1")
    try:
        await state.acquire([other], lock="o")
        verdicts = [await state.acquire([limit(2, client=client)], lock=client) for _ in range(3)]
    finally:
        await state.close()
    assert [v.admitted for v in verdicts] == [True, True, False]
    assert redis_server.command("GET", counter(other)) == "1"  # still there: nothing was flushed
    assert redis_server.command("DBSIZE") == 2


# -- the cache ----------------------------------------------------------------------------------------------------


def entry(body: bytes, ttl: float = 300.0, status: int = 200) -> Cached:
    now = time.time()
    headers = (("Content-Type", "application/json"), ("ETag", '"v1"'), ("Content-Language", "fr-CA"))
    return Cached(status, headers, body, now, now + ttl)


async def test_the_cache_keeps_answers_byte_for_byte_with_their_ttl(redis_server: RedisServer) -> None:
    a, b = state_for(redis_server), state_for(redis_server)
    kept = entry(b"\x00\xff\n{\"temp\": 21}\r\n", ttl=90)
    try:
        assert await a.cache_set("cache:/api/w/[city]:k1", kept)
        got = await b.cache_get("cache:/api/w/[city]:k1")  # another process reads what this one kept
        missing = await b.cache_get("cache:/api/w/[city]:k2")
    finally:
        await a.close()
        await b.close()
    assert got == kept and missing is None
    assert 89_000 < redis_server.command("PTTL", f"{PREFIX}cache:/api/w/[city]:k1") <= 90_000


async def test_an_expired_answer_is_gone(redis_server: RedisServer) -> None:
    state = state_for(redis_server)
    try:
        assert await state.cache_set("cache:k", entry(b"x", ttl=0.02))
        await until(lambda: redis_server.command("EXISTS", f"{PREFIX}cache:k") == 0, "the entry to expire")
        assert await state.cache_get("cache:k") is None
        assert not await state.cache_set("cache:late", entry(b"x", ttl=-1))  # already expired: not kept
    finally:
        await state.close()


async def test_the_cache_is_bounded_in_bytes_least_recently_used_out(redis_server: RedisServer) -> None:
    state = state_for(redis_server, cache_size=10_000)
    body = b"b" * 2_000  # with the head line, key and overhead: about 2.4 kB each, so 4 fit
    try:
        for i in range(4):
            assert await state.cache_set(f"cache:k{i}", entry(body))
        assert await state.cache_get("cache:k0") is not None  # k0 used: k1 is now the least recently used
        assert await state.cache_set("cache:k4", entry(body))
        kept = [i for i in range(5) if await state.cache_get(f"cache:k{i}") is not None]
        assert not await state.cache_set("cache:huge", entry(b"h" * 20_000))  # larger than the whole cache
        kept_after = [i for i in range(5) if await state.cache_get(f"cache:k{i}") is not None]
    finally:
        await state.close()
    assert kept == [0, 2, 3, 4]
    assert kept_after == kept  # nothing was evicted for an answer that could never fit
    assert int(redis_server.command("GET", f"{PREFIX}cache:bytes")) <= 10_000
    assert redis_server.command("EXISTS", f"{PREFIX}cache:huge") == 0


async def test_uses_in_the_same_millisecond_keep_their_order(redis_server: RedisServer) -> None:
    # Four reads pipelined on one connection run back to back in Redis, well within one millisecond: a clock-based
    # "last use" would tie them and evict by name (k0 first), not by use (k3 was read first, so it goes).
    state = state_for(redis_server, cache_size=10_000)
    body = b"b" * 2_000
    try:
        for i in range(4):
            assert await state.cache_set(f"cache:k{i}", entry(body))
        assert all(await asyncio.gather(*(state.cache_get(f"cache:k{i}") for i in (3, 2, 1, 0))))
        assert await state.cache_set("cache:k4", entry(body))
        kept = [i for i in range(5) if await state.cache_get(f"cache:k{i}") is not None]
    finally:
        await state.close()
    assert kept == [0, 1, 2, 4]


async def test_many_replicas_never_exceed_the_bound(redis_server: RedisServer) -> None:
    states = [state_for(redis_server, cache_size=50_000) for _ in range(3)]
    try:
        await asyncio.gather(*(states[i % 3].cache_set(f"cache:{i}", entry(b"z" * (500 + 37 * i)))
                               for i in range(200)))
    finally:
        for s in states:
            await s.close()
    stored = redis_server.command("EVAL", "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do "
                                  "n = n + redis.call('STRLEN', k) end return n", "0", f"{PREFIX}cache:[0-9]*")
    assert 0 < stored <= 50_000
    assert int(redis_server.command("GET", f"{PREFIX}cache:bytes")) <= 50_000


async def test_what_is_not_an_entry_is_a_miss(redis_server: RedisServer) -> None:
    state = state_for(redis_server)
    redis_server.command("SET", f"{PREFIX}cache:odd", "not json\nbody")
    redis_server.command("SET", f"{PREFIX}cache:odd2", '{"a": 1}\nbody')
    try:
        assert await state.cache_get("cache:odd") is None
        assert await state.cache_get("cache:odd2") is None
    finally:
        await state.close()


# -- locks ----------------------------------------------------------------------------------------------------------


async def test_a_lock_has_one_holder_across_processes(redis_server: RedisServer) -> None:
    a, b = state_for(redis_server), state_for(redis_server)
    order: list[str] = []
    try:
        async with a.lock("cache:k", wait=5):
            waiter = asyncio.create_task(_hold(b, "cache:k", order, "b"))
            await until(lambda: redis_server.command("EXISTS", f"{PREFIX}lock:cache:k") == 1, "the lock")
            with pytest.raises(LockTimeout):
                async with b.lock("cache:k", wait=0.05):
                    order.append("never")
            order.append("a")
        await asyncio.wait_for(waiter, WAIT)
    finally:
        await a.close()
        await b.close()
    assert order == ["a", "b"]
    assert redis_server.command("EXISTS", f"{PREFIX}lock:cache:k") == 0


async def _hold(state: RedisState, key: str, order: list[str], name: str) -> None:
    async with state.lock(key, wait=5):
        order.append(name)


async def test_a_dead_holders_lock_ends_with_its_lease(redis_server: RedisServer) -> None:
    a, b = state_for(redis_server), state_for(redis_server)
    try:
        holder = a.lock("k", wait=30)
        await holder.__aenter__()  # and never leaves: its process died
        redis_server.command("PEXPIRE", f"{PREFIX}lock:k", "50")  # its lease runs out
        async with b.lock("k", wait=5):
            mine = redis_server.command("GET", f"{PREFIX}lock:k")
            assert mine is not None and mine != holder.token
            await holder.__aexit__(None, None, None)  # the late holder lets go: not of b's lock
            assert redis_server.command("GET", f"{PREFIX}lock:k") == mine
    finally:
        await a.close()
        await b.close()


# -- cancellation and a slow Redis --------------------------------------------------------------------------------


def blocked(server: RedisServer) -> int:
    info = server.command("INFO", "clients")
    return int(next(line for line in info.splitlines() if line.startswith("blocked_clients:")).split(":")[1])


def writes_hang(server: RedisServer) -> bool:
    try:
        server.command("SET", "test:paused", "1", timeout=0.3)
    except TimeoutError:
        return True
    return False


def gateway_clients(server: RedisServer) -> list[str]:
    return [line.split()[0] for line in server.command("CLIENT", "LIST").splitlines() if " name=gateway " in line]


async def test_a_cancelled_request_leaves_no_reply_behind(redis_server: RedisServer) -> None:
    """Cancel requests while their scripts wait on a paused Redis: their replies are still read off the connection,
    which stays open; every later command on it gets its own reply."""
    state = state_for(redis_server, timeout="10s")
    lim = limit(100)
    try:
        await state.acquire([lim], lock="c")  # connect
        assert len(gateway_clients(redis_server)) == 1
        before = gateway_clients(redis_server)
        redis_server.command("CLIENT", "PAUSE", "10000", "WRITE")
        try:
            requests = [asyncio.create_task(state.acquire([lim], lock="c")) for _ in range(3)]
            # one connection: the first script waits in Redis, the two behind it in the same batch
            await until(lambda: blocked(redis_server) == 1 and state.link.in_flight == 3, "the scripts to wait")
            for task in requests:
                task.cancel()
            for task in requests:
                with pytest.raises(asyncio.CancelledError):
                    await task
        finally:
            redis_server.command("CLIENT", "UNPAUSE")
        await until(lambda: not state.link.in_flight, "the cancelled commands to finish")
        assert redis_server.command("GET", counter(lim)) == "4"  # they ran, and were read
        for i in range(20):  # each later command gets its own reply
            others = [limit(50 + i, client=f"ip:10.0.0.{j}") for j in range(3)]
            verdicts = await asyncio.gather(*(state.acquire([o], lock="x") for o in others),
                                            state.window(lim))
            assert [v.windows[0].remaining for v in verdicts[:3]] == [49 + i] * 3
            assert verdicts[3].remaining == 96
        assert state.health.up
        assert set(before) <= set(gateway_clients(redis_server))  # the first connection was never dropped
    finally:
        await state.close()


async def test_a_paused_redis_does_not_stall_requests_past_the_timeout(redis_server: RedisServer) -> None:
    state = state_for(redis_server, timeout="200ms", probe_every=0.05)
    lim = limit(1)
    try:
        await state.acquire([lim], lock="c")  # Redis's count: 1 of 1
        redis_server.command("CLIENT", "PAUSE", "20000", "WRITE")
        try:
            verdict = await asyncio.wait_for(state.acquire([lim], lock="c"), WAIT)
            still_paused = writes_hang(redis_server)  # the answer came while Redis was still paused
            described = await state.status()
        finally:
            redis_server.command("CLIENT", "UNPAUSE")
        assert still_paused
        assert verdict.admitted  # counted in this process (local fallback), where the client had not been seen
        assert described == "redis (unreachable: local fallback)"
        await until(lambda: state.health.up, "the probe to find Redis writable again")
        assert not (await state.acquire([lim], lock="c")).admitted  # shared again: Redis's count holds
    finally:
        await state.close()


async def test_close_waits_for_commands_in_flight(redis_server: RedisServer) -> None:
    state = state_for(redis_server)
    lim = limit(10)
    redis_server.command("CLIENT", "PAUSE", "10000", "WRITE")
    try:
        task = asyncio.create_task(state.acquire([lim], lock="c"))
        await until(lambda: blocked(redis_server) == 1, "the script to wait")
        task.cancel()
        closing = asyncio.create_task(state.close())
        done, _ = await asyncio.wait([closing], timeout=0.1)
        assert not done  # close is waiting for the command
    finally:
        redis_server.command("CLIENT", "UNPAUSE")
    await asyncio.wait_for(closing, WAIT)
    assert not state.link.in_flight
    assert redis_server.command("GET", counter(lim)) == "1"


# -- token budgets --------------------------------------------------------------------------------------------


async def test_two_processes_share_one_token_budget(redis_server: RedisServer) -> None:
    a, b = state_for(redis_server), state_for(redis_server)
    try:
        holds = await asyncio.gather(*(s.reserve("budget\nchat\nkey:1", 100, 1000, 60.0) for _ in range(30)
                                       for s in (a, b)))
        admitted = [h for h in holds if h.admitted]
        assert len(admitted) == 10  # 60 reservations of 100 against 1,000: exactly ten, across both processes
        assert sorted(h.spent for h in admitted) == list(range(100, 1001, 100))
        assert all(h.amount == 0 for h in holds if not h.admitted)
        settled = await a.settle(admitted[0], 30)  # it cost 30, not the 100 reserved
        assert settled.amount == 30 and settled.spent == 930
        again = await b.reserve("budget\nchat\nkey:1", 70, 1000, 60.0)
        assert again.admitted and again.spent == 1000 and 0 < again.reset_in <= 60
        over = await b.settle(again, 500)  # a request may cost more than it reserved: counted, not refused
        assert over.spent == 1430
        assert not (await a.reserve("budget\nchat\nkey:1", 1, 1000, 60.0)).admitted
        other = await a.reserve("budget\nchat\nkey:2", 100, 1000, 60.0)  # another client has its own budget
        assert other.admitted and other.spent == 100
    finally:
        await a.close()
        await b.close()


async def test_a_settle_in_another_window_changes_nothing(redis_server: RedisServer) -> None:
    state = state_for(redis_server)
    try:
        await state.reserve("budget\nx\nother", 1, 100, 60.0)  # the connection is open: the next three pipeline
        # Pipelined on one connection, Redis runs these within one millisecond: both windows end in the same ms.
        hold, _, fresh = await asyncio.gather(
            state.reserve("budget\nx\nkey:1", 10, 100, 60.0),
            state.link.call("DEL", "gateway:budget:budget\nx\nkey:1"),  # the window ended (or was evicted)
            state.reserve("budget\nx\nkey:1", 5, 100, 60.0))
        late = await state.settle(hold, 90)
        assert late.spent == 5  # the old reservation's window is gone: its settle touches the new one not at all
        assert fresh.spent == 5
    finally:
        await state.close()
