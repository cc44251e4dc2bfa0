"""Commands to Redis that a cancelled request cannot cut in half (the redis-py CVE-2023-28858 class of bug).

Each command runs in a task of its own: it takes a connection from redis-py's pool, sends, reads the reply and puts
the connection back. The request awaits that task through ``asyncio.shield``, so a client that disconnects cancels
only its wait: the reply is still read off the connection, and the next command on it gets its own reply. A command
that fails or times out leaves its connection disconnected (redis-py's read_response does that), never half-read.

Every wait is bounded by ``timeout``: for a free connection of the pool, to connect, and for each reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import NoScriptError

from .scripts import Script
from .url import StateConfig

POOL_SIZE = 64  # connections per process; a command holds one for about a round trip (well under a millisecond)


class Link:
    def __init__(self, config: StateConfig, *, pool_size: int = POOL_SIZE) -> None:
        tls: dict[str, Any] = {"connection_class": SSLConnection, "ssl_ca_certs": config.ca_file} if config.tls else {}
        self.timeout = config.timeout
        self.pool = BlockingConnectionPool(
            max_connections=pool_size, timeout=config.timeout, host=config.host, port=config.port, db=config.db,
            username=config.username, password=config.password.reveal() if config.password else None,
            socket_timeout=config.timeout, socket_connect_timeout=config.timeout,
            client_name="gateway", driver_info=None,  # named in CLIENT LIST; no CLIENT SETINFO round trips
            **({"connection_class": Connection} | tls),
        )
        self.running: set[asyncio.Task[Any]] = set()

    async def call(self, *args: str | bytes | int) -> Any:
        """One command and its reply; the caller's cancellation does not reach the exchange."""
        task = asyncio.get_running_loop().create_task(self._exchange(args))
        self._track(task)
        return await asyncio.shield(task)

    async def script(self, script: Script, keys: Sequence[str], args: Sequence[str | bytes | int] = ()) -> Any:
        """EVALSHA, and EVAL when Redis does not know the script (a restart, SCRIPT FLUSH): EVAL caches it again."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", script.source, len(keys), *keys, *args)

    def later(self, work: Awaitable[Any]) -> None:
        """Run ``work`` (a call nobody waits for, e.g. releasing a lock after a cancellation) to its end."""
        self._track(asyncio.ensure_future(work))

    async def close(self) -> None:
        """Let the commands in flight finish (each within its timeouts), then close every connection."""
        if self.running:
            await asyncio.wait(self.running, timeout=3 * self.timeout)
        await self.pool.disconnect()

    async def _exchange(self, args: tuple[str | bytes | int, ...]) -> Any:
        connection = await self.pool.get_connection()
        try:
            await connection.send_command(*args)
            return await connection.read_response()
        finally:
            await self.pool.release(connection)

    def _track(self, task: asyncio.Future[Any]) -> None:
        self.running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self.running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a reply nobody waited for is not an "exception never retrieved"
