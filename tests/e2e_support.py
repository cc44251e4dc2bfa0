"""End-to-end plumbing: the real ``gateway serve`` as a subprocess, fake upstreams in the test's own event loop.

    up = Recorder()                                    # upstream_support's recorder: what the upstream received
    up.route("POST", "/v1/chat/completions", handler)
    port = await serve(aiohttp_server, up)
    async with running_gateway(tmp_path, CONFIG.format(port=port), ENV) as gw:
        ...                                            # talk to http://127.0.0.1:{gw.port}/api/...
    # on the way out: SIGTERM, exit code 0, and no secret anywhere in the gateway's stdout/stderr

The gateway runs in its own process, so blocking waits on it (readiness, SIGTERM) go through a thread: the fake
upstreams live in this loop and must keep answering meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from cli_support import PYTHON_M, Server, clean_env, free_port
from upstream_support import Recorder
from upstream_support import leaks as any_leaks

WAIT = 5.0  # seconds: reached only when the behaviour under test is broken

# The real keys. Both differ from every dummy a client sends; the weather key changes when URL-encoded.
OPENAI_KEY = "sk-proj-E2E-REALKEY-5f0e1d2c3b4a69788796a5b4"
WEATHER_KEY = "ow/E2E+SECRET=key~7f3a9c0d"
SECRETS = (OPENAI_KEY, WEATHER_KEY)
ENV = {"OPENAI_API_KEY": OPENAI_KEY, "OPENWEATHER_KEY": WEATHER_KEY}


def leaks(text: str | bytes) -> list[str]:
    """Every form of the e2e secrets found in ``text`` (see upstream_support.leaks)."""
    return any_leaks(text, SECRETS)


async def serve(aiohttp_server: Any, up: Recorder) -> int:
    """Start a fake upstream on 127.0.0.1; returns its port.

    aiohttp's TestServer always runs with ``handler_cancellation=True``: a handler is cancelled when the gateway
    drops the connection, which is how the disconnect tests see it. No access log: request lines carry the key."""
    server = await aiohttp_server(up.app, access_log=None)
    return server.port


@dataclass
class Gateway:
    server: Server
    port: int
    code: int | None = None  # the exit code after SIGTERM
    output: str = ""  # stdout + stderr, once it has exited

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> int:
        """SIGTERM; wait (in a thread: the fake upstreams keep running) for the exit code; collect the output."""
        if self.code is None:
            self.code = await asyncio.to_thread(self.server.terminate)
            self.output = self.server.stdout + self.server.stderr
        return self.code


@asynccontextmanager
async def running_gateway(tmp_path: Path, config: str, env: Mapping[str, str],
                          routes: Mapping[str, str] | None = None) -> AsyncIterator[Gateway]:
    """``python -m gateway serve`` on a free port of 127.0.0.1, ready (``/healthz``) before the body runs.

    When the body succeeds it is stopped with SIGTERM, which must exit 0 and leave no secret in stdout/stderr;
    whatever happens, the process group is killed on the way out."""
    (tmp_path / "routes").mkdir(exist_ok=True)
    for name, source in (routes or {}).items():
        file = tmp_path / "routes" / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(source)
    path = tmp_path / "config.yaml"
    path.write_text(config)
    port = free_port()
    server = Server(PYTHON_M, "serve", "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
                    cwd=tmp_path, env=clean_env(**env), port=port)
    try:
        await asyncio.to_thread(server.wait_ready, 20.0)
        gateway = Gateway(server, port)
        yield gateway
        code = await gateway.stop()
        assert code == 0, f"SIGTERM: exit code {code}\n{gateway.output}"
        assert not leaks(gateway.output), f"a secret reached the gateway's output:\n{gateway.output}"
    finally:
        server.kill()


# --- what the client received, byte for byte ----------------------------------------------------------------------


@dataclass
class Received:
    status: int
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)

    @property
    def header_text(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.headers)


class _TeeStream(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, record: Received) -> None:
        self._inner = inner
        self._record = record

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._record.body += chunk
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class TeeTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport that keeps a copy of every response's headers and raw body bytes, as they arrive."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self.received: list[Received] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        record = Received(response.status_code, list(response.headers.multi_items()))
        self.received.append(record)
        return httpx2.Response(status_code=response.status_code, headers=response.headers,
                               stream=_TeeStream(response.stream, record), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


# --- raw HTTP/1.1, nothing normalised ---------------------------------------------------------------------------


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


async def raw_get(port: int, target: str) -> RawReply:
    """GET ``target`` as written, with ``Connection: close``, and read to EOF: the body is every byte that came,
    whatever Content-Length said (so a wrong length shows)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"duplicate header {name}"
        headers[name.lower()] = value.strip()
    return RawReply(int(status_line.split()[1]), headers, body)
