"""Where rate-limit counters, token budgets and cached answers live: one interface, its backend chosen at start-up.

``MemoryState`` (memory.py) keeps them in this process; ``RedisState`` (shared.py, SPEC §9) in Redis, shared by every
worker and replica, checking every limit of a request in one atomic round trip and falling back to a MemoryState
(or to 503) while Redis cannot be reached. Token budgets' ``reserve`` and ``settle`` are one round trip each, too:
see their docstrings for the exact semantics a backend implements.

Rate limits use the ``limits`` library's fixed window (``FixedWindowRateLimiter``): a client's window opens with its
first request and lasts the rate's period; its count starts over when the window ends. ``Window.reset_in`` is the
truth about that moment, so ``t=`` and ``Retry-After`` can be too.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from limits import RateLimitItem, parse
from limits.aio.strategies import FixedWindowRateLimiter

from ..units import Rate

if TYPE_CHECKING:
    from .url import StateConfig

Clock = Callable[[], float]


class LockTimeout(Exception):
    """``lock(key, wait=...)`` waited that long and the holder still had it."""


@dataclass(frozen=True, slots=True)
class Limit:
    """A rate limit a request must pass: ``item`` (count per period) counted under ``scope`` (policy, route, client)."""

    item: RateLimitItem
    scope: tuple[str, ...]
    key: str = ""  # limits' key for (item, scope), ``item.key_for(*scope)``: given by a caller that built it cheaper
    amount: int = field(init=False, default=0)  # item.amount, read on every check

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.item.key_for(*self.scope))
        object.__setattr__(self, "amount", self.item.amount)


@dataclass(slots=True)  # not frozen: made for every limit of every request, and a frozen init costs twice as much
class Window:
    remaining: int  # requests left in this window
    reset_in: float  # seconds until the window ends and its count starts over


def seconds_left(reset_in: float) -> int:
    """Whole seconds until a window ends, rounded up, never below 1: by then there is room again (the ``t`` of a
    RateLimit field, a 429's Retry-After). ``max(1, math.ceil(reset_in))``, with one call fewer."""
    return math.ceil(reset_in) if reset_in > 1 else 1


@dataclass(slots=True)
class Verdict:
    """What ``acquire`` decided: admitted (every limit counted the request) or not (none did)."""

    admitted: bool
    windows: tuple[Window, ...]  # one per limit, in the order given
    refused: tuple[int, ...] = ()  # indexes of the limits that had no room


@dataclass(frozen=True, slots=True)
class Hold:
    """What ``reserve`` decided about an amount of a budget, or what ``settle`` made of it.

    ``window`` names the budget window the amount was counted in (its end in the process's clock in memory, a
    number given to each new window in Redis): a settle applies to that window only. ``spent`` is that window's
    total after the call, every reservation in flight included.
    """

    admitted: bool
    key: str
    amount: int  # what is counted for this request now: the reservation, then the settled amount (0 when refused)
    spent: int
    reset_in: float  # seconds until the window ends and its total starts over at 0
    window: float


@dataclass(frozen=True, slots=True)
class Cached:
    """An answer as the client got it, kept for ``expires - stored`` seconds."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored: float  # when it was kept (clock seconds), for Age
    expires: float


def limit_item(rate: Rate) -> RateLimitItem:
    """``Rate(30, 60.0)`` -> limits' ``30 per 1 minute``."""
    return parse(str(rate))


class State(ABC):
    """Rate-limit counting (hit / test / window), cached answers (get / set) and named locks, behind one interface."""

    name = "state"  # what /readyz and `gateway check` call the backend

    def __init__(self, limiter: FixedWindowRateLimiter, clock: Clock = time.time) -> None:
        self.limiter = limiter
        self.now = clock

    # -- rate limits -------------------------------------------------------------------------------------------

    async def hit(self, limit: Limit) -> bool:
        """Count one request; False (and counted anyway, as limits' fixed window does) when it had no room."""
        return await self.limiter.hit(limit.item, *limit.scope)

    async def test(self, limit: Limit) -> bool:
        """Would one more request fit? Counts nothing."""
        return await self.limiter.test(limit.item, *limit.scope)

    async def window(self, limit: Limit) -> Window:
        stats = await self.limiter.get_window_stats(limit.item, *limit.scope)
        return Window(stats.remaining, max(0.0, stats.reset_time - self.now()))

    async def acquire(self, limits: Sequence[Limit], *, lock: str) -> Verdict:
        """Count the request against every limit, or against none when one of them has no room.

        ``lock`` names what the limits share (the client): under it, nothing else counts in between the test and
        the hits, so N concurrent requests against a limit of K admit exactly K, and a refused request spends
        no limit's quota. A backend that cannot hold the lock across processes overrides this (Redis: one script).
        """
        async with self.lock(lock):
            fits = [await self.test(limit) for limit in limits]
            if all(fits):
                counted = [await self.hit(limit) for limit in limits]
                fits = counted  # all True under the lock; kept honest if a backend counts elsewhere too
            windows = tuple([await self.window(limit) for limit in limits])
        refused = tuple(i for i, ok in enumerate(fits) if not ok)
        return Verdict(not refused, windows, refused)

    # -- budgets: amounts reserved before the work, settled after it --------------------------------------------

    @abstractmethod
    async def reserve(self, key: str, amount: int, limit: int, period: float) -> Hold:
        """Reserve ``amount`` (>= 1) of the budget ``limit`` per ``period`` seconds counted under ``key``, atomically.

        The window is fixed, opened by the first reservation under ``key`` (total 0, ends ``period`` seconds later)
        and gone once it ends. Admitted when ``total + amount <= limit``: the total grows by ``amount``. Otherwise
        refused and nothing changes (an amount over ``limit`` is always refused). Either way the Hold carries the
        total, the seconds until the window ends (``period`` when no window is open) and the window's name.

        Redis (one script, KEYS[1] = key, a hash {spent, end, id} with PEXPIREAT end; now = TIME in ms)::

            spent, end, id = HGET spent, end, id
            if not end or end <= now: spent, end, id = 0, now + period, INCR gateway:budget-windows
            if spent + amount > limit: return {0, spent, end - now, id}
            HSET spent spent + amount, end end, id id; PEXPIREAT end; return {1, spent + amount, end - now, id}
        """

    @abstractmethod
    async def settle(self, hold: Hold, actual: int) -> Hold:
        """Replace a reservation by what was really used, atomically: ``actual`` (>= 0) may be more or less.

        Only in the window the reservation was made in (same key, same window): its total becomes
        ``max(0, total - hold.amount + actual)``, which may pass the limit (a request that cost more than reserved
        is still counted; the next reservation is then refused until the window ends). When that window has ended
        (or its counter was evicted) nothing changes: the old total is gone. A refused hold changes nothing.
        Returns the hold with ``amount = actual`` and the window's current total and ``reset_in``.

        Redis (one script, KEYS[1] = key; ARGV = hold.amount, actual, hold.window)::

            spent, end, id = HGET spent, end, id
            if id == hold.window and end > now: spent = max(0, spent - reserved + actual); HSET spent spent
            return {spent or 0, (end or now) - now}
        """

    # -- cache and locks ---------------------------------------------------------------------------------------

    @abstractmethod
    async def cache_get(self, key: str) -> Cached | None:
        """The answer kept under ``key`` unless it has expired."""

    @abstractmethod
    async def cache_set(self, key: str, entry: Cached) -> bool:
        """Keep ``entry`` until ``entry.expires``; False when it cannot be kept (larger than the whole cache)."""

    @abstractmethod
    def lock(self, key: str, *, wait: float | None = None) -> AbstractAsyncContextManager[None]:
        """A mutex named ``key``: one holder at a time (rate-limit checks, the one upstream call for a cache miss).

        ``wait``: give up after that many seconds behind another holder, raising LockTimeout (None: no bound here).
        """

    async def status(self) -> str:
        """What /readyz reports about the backend: ``memory``, ``redis``, ``redis (unreachable: local fallback)``."""
        return self.name

    async def close(self) -> None:  # noqa: B027 - nothing to release in memory; a network backend closes its pool
        pass


def open_state(config: StateConfig | None = None, *, cache_size: int, clock: Clock = time.time) -> State:
    """The backend for this process, chosen once at start-up: Redis when ``state:`` names one, else memory."""
    if config is not None:
        from .shared import RedisState

        return RedisState(config, cache_size=cache_size, clock=clock)
    from .memory import MemoryState

    return MemoryState(cache_size=cache_size, clock=clock)


def state_report(config: StateConfig | None) -> tuple[str, str | None]:
    """What ``gateway check`` says about the backend: a line, and a warning when Redis does not answer.

    Not answering is a warning in both ``state_on_error`` modes, never a failure: check validates the config, and
    may run where Redis is not reachable (a build step); the running gateway copes as configured.
    """
    if config is None:
        return "state: memory (each process counts its own rate limits and keeps its own cache)", None
    import asyncio

    from .shared import answers

    problem = asyncio.run(answers(config))
    mode = f"state_on_error: {config.on_error}"
    if problem is None:
        return f"state: {config.shown} (answers; {mode})", None
    then = "each process counts its own rate limits" if config.on_error == "local" else \
        "limited and cached routes answer 503"
    return (f"state: {config.shown} (does not answer; {mode})",
            f"state: Redis at {config.shown} does not answer ({problem}): until it does, {then}")
