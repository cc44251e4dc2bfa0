"""Helpers for the upstream client's tests: raw misbehaving servers on 127.0.0.1, pools closed after each test.

aiohttp servers stand in for well-behaved upstreams; raw ``asyncio.start_server`` servers misbehave byte by byte
(garbage, silence, half answers, resets). Server and client are coordinated with events and counters, never with
fixed sleeps. Test modules load the fixtures with ``pytest_plugins = ["client_support"]`` (PYTEST_DONT_REWRITE:
they import this module first, and it holds no assertions to rewrite).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from upstream_support import ENV

from gateway.app import build_table, create_app
from gateway.config import load_config
from gateway.upstream.client import Pool, Response

WAIT = 5  # seconds: only reached when the behaviour under test is broken
TIMEOUT = 2.0  # the client's timeout where timing is not under test
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# --- servers ----------------------------------------------------------------------------------------------------


class RawServer:
    """A TCP server on 127.0.0.1 running ``handle(server, reader, writer)`` for each connection it accepts."""

    def __init__(self, handle: Callable[[RawServer, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]):
        self.handle = handle
        self.accepted = 0  # connections
        self.heads: list[bytes] = []  # request heads, in the order they arrived
        self.eofs = 0  # connections the client closed (seen by read_head or wait_eof)
        self.port = 0
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        self.changed()
        try:
            await self.handle(self, reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    def changed(self) -> None:
        self._changed.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Until ``predicate()`` holds (checked after each change the server notes), at most WAIT seconds."""
        async with asyncio.timeout(WAIT):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request's head, or None once the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eofs += 1
            self.changed()
            return None
        self.heads.append(head)
        self.changed()
        return head

    async def read_body(self, reader: asyncio.StreamReader, head: bytes) -> bytes | None:
        """The body of the request whose head is ``head`` (Content-Length or chunked); None if the client left."""
        lines = head.decode("latin-1").lower().split("\r\n")
        length = next((int(line.split(":", 1)[1]) for line in lines if line.startswith("content-length:")), 0)
        try:
            if not any(line.startswith("transfer-encoding:") for line in lines):
                return await reader.readexactly(length)
            body = b""
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += (await reader.readexactly(size + 2))[:-2]
            await reader.readuntil(b"\r\n")
            return body
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eofs += 1
            self.changed()
            return None

    async def wait_eof(self, reader: asyncio.StreamReader) -> None:
        """Read (and drop) everything until the client closes the connection."""
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.eofs += 1
        self.changed()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(handle: Callable[..., Awaitable[None]]) -> RawServer:
        server = await RawServer(handle).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def keep_alive(answer: bytes = OK) -> Callable[..., Awaitable[None]]:
    """A raw handler answering every request on the connection with ``answer``, until the client closes it."""

    async def handle(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_head(reader) is not None:
            writer.write(answer)

    return handle


class Upstream:
    """A well-behaved aiohttp upstream that records each request, its body and the connection it came on."""

    def __init__(self, answer: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]] | None = None) -> None:
        self.answer = answer
        self.seen: list[web.BaseRequest] = []
        self.bodies: list[bytes] = []
        self.connections: list[Any] = []  # the server-side protocol of each TCP connection, in order of use

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if not any(conn is request.protocol for conn in self.connections):
            self.connections.append(request.protocol)
        self.seen.append(request)
        self.bodies.append(await request.read())
        if self.answer is None:
            return web.Response(body=b"ok")
        return await self.answer(request)

    async def serve(self, aiohttp_raw_server: Any) -> int:
        server = await aiohttp_raw_server(self.handle)
        return server.port


@pytest.fixture
async def pools() -> AsyncIterator[Callable[..., Pool]]:
    """Make a Pool for a port (or base URL), with Pool's keyword options; each is closed, its sockets too, at the
    end of the test."""
    made: list[Pool] = []

    def make(base: str | int, **options: Any) -> Pool:
        pool = Pool(f"http://127.0.0.1:{base}" if isinstance(base, int) else base, **options)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        await pool.close()
    async with asyncio.timeout(WAIT):
        while any(pool._open for pool in made):  # each closed socket's connection_lost has run
            await asyncio.sleep(0)


async def get(pool: Pool, path: str = "/", method: str = "GET", headers: dict[str, str] | None = None,
              body: Any = None, timeout: float = TIMEOUT) -> Response:
    return await pool.request(method, pool.origin + path, headers or {}, body, timeout)


async def fetch(pool: Pool, path: str = "/", **kwargs: Any) -> bytes:
    response = await get(pool, path, **kwargs)
    return await asyncio.wait_for(response.read(), WAIT)


async def stream_of(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


# --- a gateway in front of one upstream, with upstream settings of the test's choosing ----------------------------

UPSTREAM_CONFIG = """
upstreams:
  svc:
    url: {url}
    timeout: {timeout}
    inject: {{ headers: {{ Authorization: "Bearer ${{SVC_KEY}}" }}, query: {{ key: "${{SVC_QKEY}}" }} }}
{extra}
forwards:
  svc/[...path]: {{ upstream: svc, path: "/{{path}}", methods: [GET, POST, PUT, DELETE] }}
"""


async def gateway_with(aiohttp_client: Any, tmp_path: Path, url: str | int, extra: str = "", *, timeout: str = "1s",
                       env: dict[str, str] | None = None, top: str = "") -> Any:
    """A TestClient for a gateway whose upstream ``svc`` is at ``url`` (a port: http://127.0.0.1:PORT/base), with
    ``extra`` lines (already indented) added under it, e.g. ``"    max_connections: 1"``, and ``top`` (other
    sections, e.g. ``"server: { max_body: 100mb }"``) before it."""
    if isinstance(url, int):
        url = f"http://127.0.0.1:{url}/base"
    (tmp_path / "config.yaml").write_text(top + UPSTREAM_CONFIG.format(url=url, timeout=timeout, extra=extra))
    (tmp_path / "routes").mkdir(exist_ok=True)
    config = load_config(tmp_path / "config.yaml", environ={**ENV, **(env or {})})
    return await aiohttp_client(create_app(config, build_table(config)), auto_decompress=False)
