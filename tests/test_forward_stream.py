"""Streaming forwards against real upstreams: SSE, split secrets, slow streams, big bodies, clients that leave.

Upstream and client are coordinated with events, so "the client saw event 1 before the upstream sent event 2" is
checked, not hoped for. Sleeps appear only where slowness itself is under test (gaps shorter than the timeout).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from upstream_support import (  # noqa: F401  (no_secret_logged is an autouse fixture)
    QSECRET,
    SECRET,
    Recorder,
    assert_clean,
    gateway,
    leaks,
    no_secret_logged,
)

WAIT = 5  # seconds: only reached when the behaviour under test is broken


async def start_stream(request: web.Request, content_type: str = "text/plain", **headers: str) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": content_type, "Server": "nginx", "X-Request-Id": "up-1",
                                       **headers})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    return resp


async def read_until(resp: aiohttp.ClientResponse, marker: bytes) -> bytes:
    return await asyncio.wait_for(resp.content.readuntil(marker), WAIT)


# --- server-sent events -----------------------------------------------------------------------------------------


async def test_sse_events_arrive_one_at_a_time(aiohttp_server, aiohttp_client, tmp_path):
    seen = [asyncio.Event() for _ in range(3)]
    events = [b"data: one\n\n", f"event: two\ndata: {{\"key\": \"{SECRET}\"}}\n\n".encode(), b"data: [DONE]\n\n"]

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = await start_stream(request, "text/event-stream", **{"Cache-Control": "no-cache"})
        for event, ack in zip(events, seen, strict=True):
            await resp.write(event)
            await asyncio.wait_for(ack.wait(), WAIT)  # the next event only once the client has this one
        return resp

    up = Recorder()
    up.route("GET", "/base/stream", sse)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server))
    resp = await client.get("/api/svc/stream")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert "no-transform" in resp.headers["Cache-Control"]
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in resp.headers
    got = []
    for ack in seen:
        got.append(await read_until(resp, b"\n\n"))
        ack.set()
    assert got == [b"data: one\n\n", b'event: two\ndata: {"key": "[REDACTED]"}\n\n', b"data: [DONE]\n\n"]
    assert await asyncio.wait_for(resp.read(), WAIT) == b""
    assert_clean(resp, b"".join(got))


# --- secrets split across chunks --------------------------------------------------------------------------------


@pytest.mark.parametrize(("secret", "cut"), [
    (SECRET, 13), (SECRET, 1), (SECRET, len(SECRET) - 1), (QSECRET, 9), ("qk%2FTOPSECRET%2Bab%3Dcd~Z98765", 4),
])
async def test_secret_split_across_two_chunks_is_scrubbed(aiohttp_server, aiohttp_client, tmp_path, secret, cut):
    first_out = asyncio.Event()
    head = b"x" * 100 + b" visible; leak=" + secret[:cut].encode()
    tail = secret[cut:].encode() + b" tail\n"

    async def split(request: web.Request) -> web.StreamResponse:
        resp = await start_stream(request)
        await resp.write(head)
        await asyncio.wait_for(first_out.wait(), WAIT)  # the first part reached the client: the cut is real
        await resp.write(tail)
        return resp

    up = Recorder()
    up.route("GET", "/base/split", split)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server))
    resp = await client.get("/api/svc/split")
    assert resp.status == 200
    start = await read_until(resp, b";")
    first_out.set()
    body = start + await asyncio.wait_for(resp.read(), WAIT)
    assert body == b"x" * 100 + b" visible; leak=[REDACTED] tail\n"
    assert_clean(resp, body)


async def test_masked_key_fragments_scrubbed_while_streaming(aiohttp_server, aiohttp_client, tmp_path):
    pieces = [b"key: sk-live-TOP", b"SEC****cdef;", b" last4: ****0123456789", b"abcdef;", b" end sk-live-TOPSECR"]

    async def masked(request: web.Request) -> web.StreamResponse:
        resp = await start_stream(request)
        for piece in pieces:
            await resp.write(piece)
        return resp

    up = Recorder()
    up.route("GET", "/base/masked", masked)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server))
    resp = await client.get("/api/svc/masked")
    body = await asyncio.wait_for(resp.read(), WAIT)
    assert body == b"key: [REDACTED]****cdef; last4: ****[REDACTED]; end [REDACTED]"
    assert_clean(resp, body)


# --- slow streams -----------------------------------------------------------------------------------------------


async def test_slow_but_steady_stream_longer_than_timeout_is_not_cut(aiohttp_server, aiohttp_client, tmp_path):
    timeout = 0.3

    async def steady(request: web.Request) -> web.StreamResponse:
        resp = await start_stream(request)
        for i in range(8):  # 8 gaps of timeout/3: the whole answer takes ~2.7 timeouts, no gap reaches one
            await asyncio.sleep(timeout / 3)
            await resp.write(f"chunk {i}\n".encode())
        return resp

    up = Recorder()
    up.route("GET", "/base/steady", steady)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), timeout=f"{timeout}s")
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await client.get("/api/svc/steady")
    body = await asyncio.wait_for(resp.read(), WAIT)
    assert resp.status == 200
    assert body == b"".join(f"chunk {i}\n".encode() for i in range(8))
    assert loop.time() - started > timeout * 2


async def test_silence_longer_than_timeout_mid_stream_cuts_it(aiohttp_server, aiohttp_client, tmp_path, caplog):
    never = asyncio.Event()
    upstream_closed = asyncio.Event()

    async def stalls(request: web.Request) -> web.StreamResponse:
        resp = await start_stream(request)
        await resp.write(b"first;")
        try:
            await never.wait()
        finally:
            upstream_closed.set()
        return resp

    up = Recorder()
    up.route("GET", "/base/stall", stalls)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), timeout="0.3s")
    resp = await client.get("/api/svc/stall")
    assert resp.status == 200
    assert await read_until(resp, b";") == b"first;"
    with pytest.raises(aiohttp.ClientPayloadError):  # truncated, never a clean end: the client can tell
        await asyncio.wait_for(resp.read(), WAIT)
    await asyncio.wait_for(upstream_closed.wait(), WAIT)
    assert "failed mid-stream" in caplog.text


async def test_upstream_dying_mid_body_is_not_a_clean_answer(aiohttp_raw_server, aiohttp_client, tmp_path):
    async def dies(request: web.BaseRequest) -> web.StreamResponse:
        length = "1000" if "known" in request.path else None
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        if length:
            resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"partial;")
        request.transport.close()
        return resp

    upstream = await aiohttp_raw_server(dies, access_log=None)
    client = await gateway(aiohttp_client, tmp_path, upstream.port)
    resp = await client.get("/api/svc/known")  # small with a length: read whole first, so an honest 502
    assert resp.status == 502 and (await resp.json())["error"] == "upstream_unavailable"
    resp = await client.get("/api/svc/chunked")  # streamed: the headers are out, so the stream is cut
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.read(), WAIT)


# --- big bodies -------------------------------------------------------------------------------------------------

MIB = 1024 * 1024


def big_blocks(total: int, block: int = 256 * 1024) -> list[bytes]:
    """``total`` bytes of pseudo-random data, in blocks (seeded: the same every run)."""
    rng = random.Random(20)
    base = rng.randbytes(block)
    return [i.to_bytes(4, "big") + base[4:] for i in range(total // block)]


@pytest.mark.parametrize("with_length", [True, False])
async def test_large_streamed_body_arrives_intact(aiohttp_server, aiohttp_client, tmp_path, with_length):
    blocks = big_blocks(20 * MIB)
    expected = hashlib.sha256(b"".join(blocks)).hexdigest()

    async def download(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if with_length:
            resp.content_length = sum(map(len, blocks))
        await resp.prepare(request)
        for block in blocks:
            await resp.write(block)
        return resp

    up = Recorder()
    up.route("GET", "/base/big", download)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server))
    resp = await client.get("/api/svc/big")
    assert resp.status == 200
    digest = hashlib.sha256()
    size = 0
    async for chunk in resp.content.iter_chunked(MIB):
        digest.update(chunk)
        size += len(chunk)
    assert size == 20 * MIB
    assert digest.hexdigest() == expected
    if "Content-Length" in resp.headers:
        assert int(resp.headers["Content-Length"]) == size


async def test_large_stream_scrubbed_at_every_block_boundary(aiohttp_server, aiohttp_client, tmp_path):
    block = b"." * (64 * 1024 - 20) + b"\n"
    cuts = [1, 8, 17, len(SECRET) - 2]

    async def download(request: web.Request) -> web.StreamResponse:
        resp = await start_stream(request)
        for cut in cuts:
            await resp.write(block + SECRET[:cut].encode())
            await resp.write(SECRET[cut:].encode() + b"\n")
        return resp

    up = Recorder()
    up.route("GET", "/base/big", download)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server))
    resp = await client.get("/api/svc/big")
    body = await asyncio.wait_for(resp.read(), WAIT)
    assert body == (block + b"[REDACTED]\n") * len(cuts)
    assert_clean(resp, body)


# --- the client leaves ------------------------------------------------------------------------------------------
# The real server runs with handler_cancellation=True (gateway/server.py). aiohttp's TestServer already starts its
# runner with handler_cancellation=True (passing it again is a TypeError), so the gateway under test behaves alike.


async def open_raw(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def test_client_leaving_mid_stream_cancels_the_upstream_call(aiohttp_server, aiohttp_client, tmp_path):
    never = asyncio.Event()
    upstream_gone = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = await start_stream(request, "text/event-stream")
        await resp.write(b"data: first\n\n")
        try:
            await never.wait()  # it would stream forever, spending the key's quota
        except asyncio.CancelledError:
            upstream_gone.set()
            raise
        return resp

    up = Recorder()
    up.route("GET", "/base/endless", endless)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server))
    reader, writer = await open_raw(client.port, "/api/svc/endless")
    assert b"data: first" in await asyncio.wait_for(reader.readuntil(b"data: first\n\n"), WAIT)
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(upstream_gone.wait(), WAIT)


async def test_client_leaving_before_the_first_byte_cancels_the_upstream_call(aiohttp_server, aiohttp_client,
                                                                              tmp_path):
    arrived = asyncio.Event()
    never = asyncio.Event()
    upstream_gone = asyncio.Event()

    async def thinking(request: web.Request) -> web.Response:
        arrived.set()
        try:
            await never.wait()  # a slow model still thinking: no header sent yet
        except asyncio.CancelledError:
            upstream_gone.set()
            raise
        return web.Response(text="late")

    up = Recorder()
    up.route("GET", "/base/slow", thinking)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), timeout="30s")
    reader, writer = await open_raw(client.port, "/api/svc/slow")
    await asyncio.wait_for(arrived.wait(), WAIT)
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(upstream_gone.wait(), WAIT)


# --- the request body is streamed too ---------------------------------------------------------------------------


async def test_request_body_is_streamed_not_buffered(aiohttp_server, aiohttp_client, tmp_path):
    first = b"a" * 1000
    second = b"b" * 1000
    got_first = asyncio.Event()

    async def upload(request: web.Request) -> web.Response:
        head = await request.content.readexactly(len(first))
        got_first.set()  # the client sends the rest only now: a buffering gateway would never get here
        rest = await request.content.read()
        return web.json_response({"head": head == first, "rest": len(rest), "type": request.content_type})

    async def body() -> AsyncIterator[bytes]:
        yield first
        await asyncio.wait_for(got_first.wait(), WAIT)
        yield second

    up = Recorder()
    up.route("POST", "/base/upload", upload)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server))
    resp = await client.post("/api/svc/upload", data=body(), headers={"Content-Type": "application/x-ndjson"})
    assert resp.status == 200
    assert await resp.json() == {"head": True, "rest": 1000, "type": "application/x-ndjson"}


def test_secret_values_used_here_are_the_injected_ones() -> None:
    assert leaks(SECRET) and leaks(QSECRET)
