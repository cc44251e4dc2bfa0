"""Issue 7: an answer is held to its message. Bytes after it are no part of it (and its connection is not reused);
a compressed body that is truncated, has a second gzip member or trailing garbage is an error, never a whole body.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import aiohttp
import pytest
from client_support import OK, WAIT, RawServer, fetch, get, keep_alive
from upstream_support import assert_clean, gateway, no_secret_logged  # noqa: F401  (autouse fixture)

from gateway.upstream.client import InvalidResponse

pytest_plugins = ["client_support"]


@pytest.mark.parametrize("after", [
    b"EXTRA!",
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",  # a whole second answer, waiting for the next request
    b"\r\nX",
])
async def test_bytes_after_a_content_length_body_are_not_part_of_it_and_the_connection_is_dropped(
    raw_server, pools, after
):
    async def overlong(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await server.read_head(reader)) is not None:
            if head.startswith(b"GET /first "):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + after)
            else:
                writer.write(OK)

    server = await raw_server(overlong)
    pool = pools(server.port)
    assert await fetch(pool, "/first") == b"hello"
    await server.until(lambda: server.eofs == 1)  # the client dropped that connection
    assert pool._idle == []
    assert await fetch(pool, "/second") == b"ok"  # never "evil": a fresh connection
    assert server.accepted == 2


async def test_bytes_arriving_on_an_idle_connection_drop_it(raw_server, pools):
    read = asyncio.Event()

    async def late_extra(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await server.read_head(reader)) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            if head.startswith(b"GET /first "):
                await asyncio.wait_for(read.wait(), WAIT)  # the client read it and pooled the connection
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")

    server = await raw_server(late_extra)
    pool = pools(server.port)
    assert await fetch(pool, "/first") == b"hello"
    assert len(pool._idle) == 1
    read.set()
    await server.until(lambda: server.eofs == 1)  # the unasked-for answer closed the idle connection
    assert await fetch(pool, "/second") == b"hello"
    assert server.accepted == 2


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhelloEXTRA!",
    b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA!",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nEXTRA!",
])
async def test_the_body_ends_where_its_framing_says_whatever_follows(raw_server, pools, answer):
    server = await raw_server(keep_alive(answer))
    pool = pools(server.port)
    for _ in range(2):
        assert await fetch(pool) == b"hello"
    assert server.accepted == 2


# --- compressed bodies ----------------------------------------------------------------------------------------

PLAIN = b"the body, in full. " * 200
GZ = gzip.compress(PLAIN)
BROKEN = {
    "second-gzip-member": GZ + gzip.compress(b"<script>second member</script>"),
    "trailing-garbage": GZ + b"garbage",
    "trailing-zero": GZ + b"\0",
    "truncated": GZ[:-8],  # the deflate stream without the gzip trailer
    "truncated-mid-stream": GZ[: len(GZ) // 2],
}


def chunked(data: bytes, size: int = 100) -> bytes:
    out = b"".join(b"%x\r\n%b\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size))
    return out + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("case", list(BROKEN))
async def test_a_broken_compressed_body_is_an_error_never_a_complete_looking_body(raw_server, pools, case, framing):
    body = BROKEN[case]
    if framing == "chunked":
        answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body)
    else:
        answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    server = await raw_server(keep_alive(answer))
    pool = pools(server.port)
    response = await get(pool)
    received = b""
    with pytest.raises(InvalidResponse):
        async with asyncio.timeout(WAIT):
            async for chunk in response.iter_any():
                received += chunk
    assert PLAIN.startswith(received)  # what came before the error was the real start of the body, no more
    assert pool._idle == []
    await server.until(lambda: server.eofs == 1)


@pytest.mark.parametrize("encode", [zlib.compress, lambda data: zlib.compress(data)[2:-4]], ids=["zlib", "raw"])
async def test_trailing_bytes_after_a_deflate_body_are_an_error(raw_server, pools, encode):
    body = encode(PLAIN) + b"more"
    server = await raw_server(keep_alive(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)))
    pool = pools(server.port)
    response = await get(pool)
    with pytest.raises(InvalidResponse):
        await asyncio.wait_for(response.read(), WAIT)


async def test_an_empty_body_with_a_content_encoding_is_an_empty_body(raw_server, pools):
    server = await raw_server(keep_alive(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n"))
    pool = pools(server.port)
    assert await fetch(pool) == b""
    assert len(pool._idle) == 1


# --- through the gateway ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BROKEN))
async def test_the_gateway_never_relays_a_broken_compressed_body_as_whole(raw_server, aiohttp_client, tmp_path, case):
    body = BROKEN[case]
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b"
              % (len(body), body))
    server = await raw_server(keep_alive(answer))
    client = await gateway(aiohttp_client, tmp_path, server.port)
    resp = await client.get("/api/svc/x")
    if resp.status == 200:  # streamed (a decoded body's length is not known ahead): the stream is cut, not ended
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    else:
        data = await resp.read()
        assert resp.status == 502
        assert json.loads(data)["error"] == "upstream_error"
        assert_clean(resp, data)


async def test_the_gateway_relays_only_the_framed_body(raw_server, aiohttp_client, tmp_path):
    async def overlong(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_head(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhelloEXTRA!")

    server = await raw_server(overlong)
    client = await gateway(aiohttp_client, tmp_path, server.port)
    for _ in range(3):
        resp = await client.get("/api/svc/x")
        assert resp.status == 200
        assert await resp.read() == b"hello"
    assert server.accepted == 3  # each connection dropped after its answer


async def test_a_body_sent_to_a_head_request_is_no_part_of_the_answer(raw_server, pools):
    server = await raw_server(keep_alive(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))
    pool = pools(server.port)
    response = await get(pool, method="HEAD")
    assert response.complete and response.content_length == 5
    await server.until(lambda: server.eofs == 1)  # the bytes after the head dropped the connection
    assert await asyncio.wait_for(response.read(), WAIT) == b""

