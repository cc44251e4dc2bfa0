"""A request body that trickles or stops is cut with 408 (pipeline/body.py: paced), through a forward's upload, a
guarded forward's read and a route module's ``await req.read()``; a body that keeps its pace, or waits on a slow
upstream, is not. The pace is judged after BODY_GRACE seconds of waiting: the tests shorten it to 0.3 s."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from app_support import served

from gateway.pipeline import body as body_module

WAIT = 10.0  # seconds: reached only when the behaviour under test is broken
GRACE = 0.3


@pytest.fixture(autouse=True)
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(body_module, "BODY_GRACE", GRACE)


@asynccontextmanager
async def upstream(*, read_after: asyncio.Event | None = None) -> AsyncIterator[tuple[int, list[int]]]:
    """An upstream that reads the whole body (after ``read_after`` is set, when given) and answers its length."""
    seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        if read_after is not None:
            await asyncio.wait_for(read_after.wait(), WAIT)
        body = await request.read()
        seen.append(len(body))
        return web.json_response({"length": len(body)})

    app = web.Application(client_max_size=1 << 24)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1], seen
    finally:
        await runner.cleanup()


@asynccontextmanager
async def gateway(tmp_path: Path, up_port: int) -> AsyncIterator[int]:
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "echo.py").write_text("async def POST(req):\n    return {'length': len(await req.read())}\n")
    (tmp_path / "config.yaml").write_text(
        "server:\n  prefix: /api\n  max_body: 1mb\n"
        f"upstreams:\n  up: {{ url: 'http://127.0.0.1:{up_port}' }}\n"
        "forwards:\n"
        "  plain: { upstream: up, path: /x, methods: [POST] }\n"
        "  guarded: { upstream: up, path: /x, methods: [POST], guard: { allow: { model: [m] } } }\n"
    )
    async with served(tmp_path / "config.yaml") as port:
        yield port


async def post(port: int, path: str, chunks: list[bytes], every: float, length: int | None = None
               ) -> tuple[int, dict, float]:
    """POST ``chunks`` (Content-Length: their total) one every ``every`` seconds on a raw connection, stopping
    early when the gateway answers (``length``: the Content-Length, when not all of it is sent); (status, JSON
    body, seconds until the answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    size = sum(map(len, chunks)) if length is None else length
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n"
                 "Connection: close\r\n\r\n".encode())
    answer = asyncio.ensure_future(read_answer(reader))
    try:
        for chunk in chunks:
            if answer.done():
                break
            writer.write(chunk)
            await asyncio.wait([answer], timeout=every)
        status, payload = await asyncio.wait_for(answer, WAIT)
    finally:
        writer.close()
    return status, json.loads(payload or b"{}"), time.monotonic() - began


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and body of one answer (by its Content-Length: the connection may stay open after it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    return int(lines[0].split()[1]), await reader.readexactly(length)


BODY = json.dumps({"model": "m", "pad": "x" * 60}).encode()


@pytest.mark.parametrize("path", ["/api/plain", "/api/guarded", "/api/echo"])
async def test_a_trickling_body_is_cut_with_408(tmp_path: Path, path: str) -> None:
    async with upstream() as (up_port, seen), gateway(tmp_path, up_port) as port:
        # one byte every 50 ms: 20 bytes a second, far under the pace, for up to 4 s
        status, body, took = await post(port, path, [bytes([b]) for b in BODY], 0.05)
    assert status == 408
    assert body["error"] == "bad_request" and "too slowly" in body["message"]
    assert took < 3.0  # judged soon after the grace (0.3 s), not after the whole body
    assert seen == []  # nothing incomplete reached the upstream's handler as a whole body


@pytest.mark.parametrize("path", ["/api/plain", "/api/guarded", "/api/echo"])
async def test_a_body_that_stops_is_cut_with_408_after_the_grace(tmp_path: Path, path: str) -> None:
    # half the body, then nothing: a route module reading it had no bound at all before
    async with upstream() as (up_port, seen), gateway(tmp_path, up_port) as port:
        status, body, took = await post(port, path, [BODY[:30]], WAIT, length=len(BODY))
    assert status == 408 and "too slowly" in body["message"]
    assert GRACE <= took < 3.0
    assert seen == []


@pytest.mark.parametrize("path", ["/api/plain", "/api/guarded", "/api/echo"])
async def test_a_body_that_keeps_its_pace_passes_however_long_it_takes(tmp_path: Path, path: str) -> None:
    chunk = json.dumps({"model": "m", "pad": "y" * 20_000}).encode()
    pieces = [chunk[i:i + 200] for i in range(0, len(chunk), 200)]  # 200 bytes every 50 ms: 4 kB/s, ~5x the grace
    async with upstream() as (up_port, _seen), gateway(tmp_path, up_port) as port:
        status, body, took = await post(port, path, pieces, 0.05)
    assert status == 200 and body["length"] >= len(chunk) - 10  # a guard sends the JSON it checked, re-encoded
    assert took > 3 * GRACE


async def test_an_upstream_slow_to_read_does_not_count_against_the_client(tmp_path: Path) -> None:
    # the whole body is there at once; the upstream takes 1 s (> the grace) before it reads: not the client's pace
    release = asyncio.Event()
    async with upstream(read_after=release) as (up_port, seen), gateway(tmp_path, up_port) as port:
        big = json.dumps({"model": "m", "pad": "z" * 500_000}).encode()
        asyncio.get_running_loop().call_later(1.0, release.set)
        status, body, _took = await post(port, "/api/plain", [big], 0.01)
    assert status == 200 and body == {"length": len(big)} and seen == [len(big)]
