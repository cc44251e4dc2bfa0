"""Fake upstreams on 127.0.0.1 and a gateway built around them, for the forwarding tests.

    up = Recorder()                                   # records what the upstream really received
    up.route("GET", "/base/x", handler)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), FORWARDS)
    resp = await client.get("/api/svc/x")            # then assert on resp and on up.seen / up.last
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.app import build_table, create_app
from gateway.config import load_config

SECRET = "sk-live-TOPSECRET-0123456789abcdef"  # injected as a header
QSECRET = "qk/TOPSECRET+ab=cd~Z98765"  # injected as a query param: changes when URL-encoded
ENV = {"SVC_KEY": SECRET, "SVC_QKEY": QSECRET}
SECRETS = (SECRET, QSECRET)

UPSTREAM = """
upstreams:
  svc:
    url: http://127.0.0.1:{port}/base
    timeout: {timeout}
    retries: {retries}
    inject: {{ headers: {{ Authorization: "Bearer ${{SVC_KEY}}" }}, query: {{ key: "${{SVC_QKEY}}" }} }}
    forward_headers: {forward_headers}
    expose_headers: {expose_headers}
"""
DEFAULT_FORWARDS = """
forwards:
  svc/[...path]: { upstream: svc, path: "/{path}", methods: [GET, POST, PUT, DELETE] }
"""


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    raw_path: str
    query: str
    headers: CIMultiDict[str]


class Recorder:
    """An upstream app whose middleware records every request before its handler runs."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.app = web.Application(middlewares=[self._record])

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        path, _, query = request.raw_path.partition("?")
        self.seen.append(Seen(request.method, path, query, CIMultiDict(request.headers)))
        return await handler(request)

    @property
    def last(self) -> Seen:
        return self.seen[-1]

    def route(self, method: str, path: str, handler: Callable[..., Any]) -> None:
        self.app.router.add_route(method, path, handler)

    async def serve(self, aiohttp_server: Any) -> int:
        """Start the fake upstream; returns its port. No access log: its request lines carry the injected key."""
        server = await aiohttp_server(self.app, access_log=None)
        self.port: int = server.port
        return server.port


async def gateway(aiohttp_client: Any, tmp_path: Path, upstream_port: int, forwards: str = DEFAULT_FORWARDS, *,
                  timeout: str = "1s", retries: int = 0, forward_headers: str = "[]", expose_headers: str = "[]",
                  server: str = "", routes: dict[str, str] | None = None, env: dict[str, str] | None = None) -> Any:
    """A TestClient for a gateway whose upstream ``svc`` is the fake server on ``upstream_port``."""
    text = server + UPSTREAM.format(port=upstream_port, timeout=timeout, retries=retries,
                                    forward_headers=forward_headers, expose_headers=expose_headers) + forwards
    (tmp_path / "config.yaml").write_text(text)
    (tmp_path / "routes").mkdir(exist_ok=True)
    for name, source in (routes or {}).items():
        file = tmp_path / "routes" / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(source)
    config = load_config(tmp_path / "config.yaml", environ=env or ENV)
    return await aiohttp_client(create_app(config, build_table(config)), auto_decompress=False)


def leaks(text: str | bytes, secrets: tuple[str, ...] = SECRETS) -> list[str]:
    """Every secret form found in ``text``: whole, URL-encoded, or a 12-character head or tail of it."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    found = []
    for secret in secrets:
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            for piece in (form, form[:12], form[-12:]):
                if piece in text:
                    found.append(piece)
    return found


def assert_clean(response: Any, body: bytes | str = b"") -> None:
    """No secret in the response's headers or body, and nothing that names the upstream's software or host."""
    shown = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    assert not leaks(shown), shown
    assert not leaks(body), body
    assert "127.0.0.1:" not in shown
    assert response.headers.get("Server", "gateway") == "gateway"
    for name in ("X-Powered-By", "Set-Cookie", "Via", "X-Upstream-Host", "X-Amzn-RequestId"):
        assert name not in response.headers, name


def leaky_log_lines(records: list[logging.LogRecord]) -> list[str]:
    """The formatted log lines (traceback included) that carry a secret."""
    lines = (logging.Formatter("%(message)s").format(record) for record in records)
    return [line for line in lines if leaks(line)]


@pytest.fixture(autouse=True)
def no_secret_logged(caplog: pytest.LogCaptureFixture) -> Any:
    """Every test in a module that imports this fixture also checks that no log line carries a secret.

    Autouse fixtures are set up first, so this one is torn down last: after the gateway and upstreams have closed.
    """
    caplog.set_level(logging.DEBUG)
    yield
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]  # .records: teardown
    leaked = leaky_log_lines(records)
    assert not leaked, f"a secret reached the log: {leaked}"


async def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then closed)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def raw_get(port: int, target: str, headers: str = "") -> bytes:
    """Send a GET with the request target exactly as written (no client-side normalising) and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Connection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data
