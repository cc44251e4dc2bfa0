"""Whether Redis answers, and what a request does while it does not (SPEC §9: ``state_on_error``).

A command that fails or times out marks Redis down. While it is down no request waits for it: with ``local`` each
runs on this process's own state, with ``closed`` each gets 503 ``unavailable``. A background probe writes a key
every ``every`` seconds (a write: a Redis that answers PING but refuses writes, paused or out of memory or a read-only
replica, is not back) and marks Redis up at the first that succeeds. Being down is logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError

from ..errors import Unavailable
from ..secrets import redact
from . import Clock

T = TypeVar("T")
log = logging.getLogger("gateway.state")

# refused, reset, timed out (redis-py raises its own TimeoutError), wrong password, out of memory, read-only, ...
FAILURES = (RedisError, OSError)
LOG_EVERY = 60.0  # seconds between two lines saying Redis is still down
RETRY_AFTER = "1"  # seconds, on a 503 while Redis is down (the probe tries again every second)


class Health:
    def __init__(self, shown: str, on_error: str, probe: Callable[[], Awaitable[Any]], *, clock: Clock,
                 secrets: tuple[str, ...] = (), every: float = 1.0) -> None:
        self.shown = shown
        self.on_error = on_error
        self.probe = probe
        self.clock = clock
        self.secrets = secrets  # redacted from any error text that is logged
        self.every = every
        self.up = True
        self._logged: float | None = None  # when "down" was last logged (None: not during this outage)
        self._probing: asyncio.Task[None] | None = None

    def describe(self) -> str:
        """What /readyz says: ``redis``, or ``redis (unreachable: local fallback)`` / ``(unreachable: closed)``."""
        if self.up:
            return "redis"
        return "redis (unreachable: local fallback)" if self.on_error == "local" else "redis (unreachable: closed)"

    async def run(self, shared: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]) -> T:
        """``shared()`` while Redis is up; if it fails, or Redis is down, ``local()`` or 503 (``on_error``)."""
        if self.up:
            try:
                return await shared()
            except FAILURES as exc:
                self.failed(exc)
        if self.on_error == "closed":
            raise Unavailable("the shared rate-limit and cache state (Redis) cannot be reached; retry shortly",
                              retry_after=int(RETRY_AFTER))
        return await local()

    def failed(self, exc: BaseException) -> None:
        """A command failed: Redis is down until the probe can write to it again."""
        self.up = False
        self._say_down(exc)
        if self._probing is None or self._probing.done():
            self._probing = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def close(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            await asyncio.gather(self._probing, return_exceptions=True)

    async def _probe_until_up(self) -> None:
        while not self.up:
            await asyncio.sleep(self.every)
            try:
                await self.probe()
            except FAILURES as exc:
                self._say_down(exc)
                continue
            self.up = True
            if self._logged is not None:
                log.warning("state: Redis at %s answers again: rate limits and the cache are shared again",
                            self.shown)
            self._logged = None

    def _say_down(self, exc: BaseException) -> None:
        now = self.clock()
        if self._logged is not None and now - self._logged < LOG_EVERY:
            return
        self._logged = now
        reason = redact(f"{type(exc).__name__}: {exc}".strip().rstrip(":"), self.secrets)
        then = ("each process counts its own rate limits and keeps its own cache" if self.on_error == "local"
                else "limited and cached routes answer 503")
        log.warning("state: Redis at %s cannot be reached (%s): until it answers, %s (state_on_error: %s)",
                    self.shown, reason, then, self.on_error)
