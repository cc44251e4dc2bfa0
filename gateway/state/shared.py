"""State shared by every worker and replica, in Redis (SPEC §9): one atomic round trip per rate-limit check.

    acquire     one Lua script over all of a request's limits: all or nothing (scripts.ACQUIRE)
    budgets     reserve and settle, one script each (scripts.RESERVE, scripts.SETTLE)
    cache       an entry per answer (SET ... PX ttl), in bytes under ``server.cache_size`` for all replicas
    lock        SET NX PX with a random token; waiters poll; released only by its holder (scripts.UNLOCK)

Keys live under ``gateway:`` (``gateway:rl:…`` counters, ``gateway:budget:…`` token budgets, ``gateway:cache:…``
answers and the cache's bookkeeping, ``gateway:lock:…``). Each
command goes through ``Link`` (one pipelined connection that a cancelled request cannot desynchronise); each
operation through ``Health``, which falls back to ``self.local`` (this process's MemoryState) or answers 503 while
Redis cannot be reached.
Cached answers are stored as a JSON head line and the body bytes, never pickled: what Redis holds is only data.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import replace
from types import TracebackType

from multidict import istr

from ..secrets import redact
from . import Cached, Clock, Hold, Limit, LockTimeout, State, Verdict, Window
from .fallback import FAILURES, Health
from .link import Link
from .memory import MemoryState
from .scripts import ACQUIRE, CACHE_GET, CACHE_SET, HIT, RESERVE, SETTLE, UNLOCK, WINDOW
from .url import StateConfig

PREFIX = "gateway:"
ENTRY_OVERHEAD = 256  # bytes counted per cached answer beyond its stored value (key, bookkeeping)
LEASE = 30.0  # seconds a lock is held at most when its taker gave no wait (then the holder is presumed gone)
BUDGET_WINDOWS = f"{PREFIX}budget-windows"  # the counter that numbers budget windows (scripts.RESERVE)
CACHE_KEYS = tuple(f"{PREFIX}cache:{name}" for name in ("lru", "sizes", "bytes", "expiry", "ticks"))


class RedisState(State):
    name = "redis"

    def __init__(self, config: StateConfig, *, cache_size: int = 64 * 1024**2, clock: Clock = time.time,
                 link: Link | None = None, probe_every: float = 1.0) -> None:
        self.local = MemoryState(cache_size=cache_size, clock=clock)
        super().__init__(self.local.limiter, clock)
        self.config = config
        self.cache_size = cache_size
        self.link = link or Link(config)
        hidden = (config.password.reveal(),) if config.password else ()
        self.health = Health(config.shown, config.on_error, self._probe, clock=clock, secrets=hidden,
                             every=probe_every)

    # -- rate limits -------------------------------------------------------------------------------------------

    async def acquire(self, limits: Sequence[Limit], *, lock: str) -> Verdict:
        """Every limit counts the request, or none does, in one script: exact across processes with no lock."""
        keys = [_counter(limit) for limit in limits]
        args = [n for limit in limits for n in (limit.amount, limit.item.get_expiry() * 1000)]

        async def shared() -> Verdict:
            reply = await self.link.script(ACQUIRE, keys, args)
            windows = tuple(Window(max(0, limit.amount - int(reply[1 + 2 * i])), int(reply[2 + 2 * i]) / 1000)
                            for i, limit in enumerate(limits))
            refused = () if reply[0] else tuple(i for i, w in enumerate(windows) if w.remaining == 0)
            return Verdict(bool(reply[0]), windows, refused)

        return await self.health.run(shared, lambda: self.local.acquire(limits, lock=lock))

    async def hit(self, limit: Limit) -> bool:
        async def shared() -> bool:
            count, _ = await self.link.script(HIT, [_counter(limit)], [limit.item.get_expiry() * 1000])
            return int(count) <= limit.amount

        return await self.health.run(shared, lambda: self.local.hit(limit))

    async def test(self, limit: Limit) -> bool:
        return (await self.window(limit)).remaining > 0

    async def window(self, limit: Limit) -> Window:
        async def shared() -> Window:
            count, ttl = await self.link.script(WINDOW, [_counter(limit)])
            return Window(max(0, limit.amount - int(count)), int(ttl) / 1000)

        return await self.health.run(shared, lambda: self.local.window(limit))

    # -- token budgets -------------------------------------------------------------------------------------------

    async def reserve(self, key: str, amount: int, limit: int, period: float) -> Hold:
        """One script (scripts.RESERVE): the test and the count are one atomic step on the server, for every replica."""
        async def shared() -> Hold:
            admitted, spent, left, window = await self.link.script(RESERVE, [f"{PREFIX}budget:{key}", BUDGET_WINDOWS],
                                                                   [amount, limit, int(period * 1000)])
            return Hold(bool(admitted), key, amount if admitted else 0, int(spent), int(left) / 1000, float(window))

        return await self.health.run(shared, lambda: self.local.reserve(key, amount, limit, period))

    async def settle(self, hold: Hold, actual: int) -> Hold:
        if not hold.admitted:
            return replace(hold, amount=actual)

        async def shared() -> Hold:
            spent, left = await self.link.script(SETTLE, [f"{PREFIX}budget:{hold.key}"],
                                                 [hold.amount, actual, int(hold.window)])
            return Hold(True, hold.key, actual, int(spent), int(left) / 1000, hold.window)

        return await self.health.run(shared, lambda: self.local.settle(hold, actual))

    # -- cache ---------------------------------------------------------------------------------------------------

    async def cache_get(self, key: str) -> Cached | None:
        async def shared() -> Cached | None:
            value = await self.link.script(CACHE_GET, [f"{PREFIX}{key}", CACHE_KEYS[0], CACHE_KEYS[4]])
            return None if value is None else _decode(value)

        return await self.health.run(shared, lambda: self.local.cache_get(key))

    async def cache_set(self, key: str, entry: Cached) -> bool:
        ttl = int((entry.expires - self.now()) * 1000)
        if ttl <= 0:
            return False
        value = _encode(entry)
        size = len(value) + len(key) + ENTRY_OVERHEAD

        async def shared() -> bool:
            keys = [f"{PREFIX}{key}", *CACHE_KEYS]
            return bool(await self.link.script(CACHE_SET, keys, [value, ttl, size, self.cache_size]))

        return await self.health.run(shared, lambda: self.local.cache_set(key, entry))

    # -- locks, health -------------------------------------------------------------------------------------------

    def lock(self, key: str, *, wait: float | None = None) -> _SharedLock:
        return _SharedLock(self, key, wait)

    async def status(self) -> str:
        """Asks Redis when it is believed up (a PING), so /readyz is true from the first call on."""
        if self.health.up:
            try:
                await self.link.call("PING")
            except FAILURES as exc:
                self.health.failed(exc)
        return self.health.describe()

    async def close(self) -> None:
        await self.health.close()
        await self.link.close()
        await self.local.close()

    async def _probe(self) -> None:
        """Can Redis take a write? On a new connection: after a restart the old one is dead without knowing it yet,
        and the first request on it would fail and mark Redis down again."""
        await self.link.reset()
        await self.link.call("SET", f"{PREFIX}probe", "1", "PX", 10_000)


class _SharedLock:
    """``async with state.lock(key, wait=…)`` across processes: ``SET gateway:lock:<key> <token> NX PX <lease>``.

    Waiters poll (5 ms, doubling to 50 ms) until it is free or ``wait`` has passed (LockTimeout). The lease ends a
    lock whose holder died; its length is the wait plus a second, so a live holder keeps it as long as anyone waits.
    While Redis is down the lock is this process's own (``state_on_error: local``).
    """

    def __init__(self, state: RedisState, key: str, wait: float | None) -> None:
        self.state = state
        self.name = f"{PREFIX}lock:{key}"
        self.wait = LEASE if wait is None else wait
        self.token = secrets.token_hex(16)
        self.fallback = state.local.lock(key, wait=wait)
        self.shared = False

    async def __aenter__(self) -> None:
        self.shared = await self.state.health.run(self._take, self._take_local)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if not self.shared:
            await self.fallback.__aexit__(kind, exc, tb)
            return
        try:
            await self.state.link.script(UNLOCK, [self.name], [self.token])
        except FAILURES as failure:  # the lease ends it; the answer already made is not spoiled by this
            self.state.health.failed(failure)
        except asyncio.CancelledError:
            self.state.link.later(self.state.link.script(UNLOCK, [self.name], [self.token]))
            raise

    async def _take(self) -> bool:
        link, loop = self.state.link, asyncio.get_running_loop()
        lease = int((self.wait + 1) * 1000)
        deadline = loop.time() + self.wait
        pause = 0.005
        while True:
            try:
                if await link.call("SET", self.name, self.token, "NX", "PX", lease):
                    return True
            except asyncio.CancelledError:  # the SET may have succeeded after all: let go of it, if so
                link.later(link.script(UNLOCK, [self.name], [self.token]))
                raise
            left = deadline - loop.time()
            if left <= 0:
                raise LockTimeout(f"another process held {self.name} for {self.wait}s")
            await asyncio.sleep(min(pause, left))
            pause = min(2 * pause, 0.05)

    async def _take_local(self) -> bool:
        await self.fallback.__aenter__()
        return False


def _counter(limit: Limit) -> str:
    return f"{PREFIX}rl:{limit.key}"


def _encode(entry: Cached) -> bytes:
    head = json.dumps([entry.status, entry.headers, entry.stored, entry.expires], separators=(",", ":"))
    return head.encode() + b"\n" + entry.body


def _decode(value: bytes) -> Cached | None:
    """The entry, or None (a miss) for anything that is not one: the key may have been written by someone else."""
    head, _, body = value.partition(b"\n")
    try:
        status, headers, stored, expires = json.loads(head)
        return Cached(int(status), tuple((istr(n), str(v)) for n, v in headers), body, float(stored), float(expires))
    except (ValueError, TypeError):
        return None


async def answers(config: StateConfig) -> str | None:
    """None when Redis at ``config`` takes a write within its timeout, else why not (never the password)."""
    link = Link(config)
    try:
        await link.call("SET", f"{PREFIX}probe", "1", "PX", 10_000)
    except FAILURES as exc:
        hidden = (config.password.reveal(),) if config.password else ()
        return redact(f"{type(exc).__name__}: {exc}", hidden)
    finally:
        await link.close()
    return None
