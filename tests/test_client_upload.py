"""Issue 7: a request body cannot pin the gateway. A client body that stalls is cut by a body-idle timeout (the
client's error, 408); an upstream that answers before the upload is done (a 413 mid-upload) has its answer
returned at once and the upload abandoned, also when it closes the connection right after; an upstream that
neither reads nor answers is a timeout (504).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from client_support import OK, WAIT, RawServer, fetch, gateway_with, get, stream_of
from upstream_support import no_secret_logged  # noqa: F401  (no_secret_logged is an autouse fixture)

from gateway.upstream.client import BodyTimeout

pytest_plugins = ["client_support"]
PIECE = b"x" * 65536
EARLY = b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n" \
        b'{"error": "too big"}'


class Body:
    """A request body the test controls: ``pieces`` are sent at once, then it stalls until ``more`` is set (then
    ends), or goes on forever (bounded) with ``endless``; records whether it was closed."""

    def __init__(self, *pieces: bytes, endless: bool = False) -> None:
        self.pieces = pieces
        self.endless = endless
        self.more = asyncio.Event()
        self.sent = 0
        self.closed = False

    async def __aiter__(self):
        try:
            for piece in self.pieces:
                self.sent += len(piece)
                yield piece
            if self.endless:
                for _ in range(4096):  # 256 MiB at most
                    self.sent += len(PIECE)
                    yield PIECE
            else:
                await asyncio.wait_for(self.more.wait(), WAIT * 2)
        finally:
            self.closed = True


async def test_a_stalled_body_times_out_as_the_clients_fault(raw_server, pools):
    async def reads(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        await server.wait_eof(reader)

    server = await raw_server(reads)
    pool = pools(server.port)
    body = Body(b"a")  # one byte, then nothing
    start = time.monotonic()
    with pytest.raises(BodyTimeout):
        await asyncio.wait_for(get(pool, "/up", method="POST", body=body, timeout=0.3), WAIT)
    assert time.monotonic() - start >= 0.3
    await server.until(lambda: server.eofs == 1)  # the upstream sees the call end
    async with asyncio.timeout(WAIT):
        while not body.closed:  # the upload, cancelled, has closed the client's body
            await asyncio.sleep(0)
    assert pool._idle == []


async def test_a_slow_but_steady_body_is_not_cut(raw_server, pools):
    async def echo(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await server.read_head(reader)) is not None:
            data = await server.read_body(reader, head)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(data or b""), data or b""))

    async def trickle():
        for i in range(10):  # 0.6 s in all, never silent for the 0.3 s timeout
            await asyncio.sleep(0.06)
            yield b"%d" % i

    server = await raw_server(echo)
    pool = pools(server.port)
    assert await fetch(pool, "/up", method="POST", body=trickle(), timeout=0.3) == b"0123456789"
    assert await fetch(pool) == b""  # the connection was kept, in step
    assert server.accepted == 1


@pytest.mark.parametrize("then", ["waits", "closes"])
async def test_an_early_answer_is_returned_at_once_and_the_upload_abandoned(raw_server, pools, then):
    async def early(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await server.read_head(reader)) is not None:
            if not head.startswith(b"POST "):
                writer.write(OK)
                continue
            await reader.readexactly(1000)  # a little of the body, then the verdict, and no more reading
            writer.write(EARLY)
            await writer.drain()
            if then == "closes":
                return  # unread data pending: the kernel resets the connection
            await server.wait_eof(reader)
            return

    server = await raw_server(early)
    pool = pools(server.port)
    body = Body(endless=True)
    response = await asyncio.wait_for(get(pool, "/up", method="POST", body=body, timeout=WAIT), WAIT)
    assert response.status == 413
    assert await asyncio.wait_for(response.read(), WAIT) == b'{"error": "too big"}'
    assert body.sent < 64 * 1024 * 1024  # abandoned, not sent to the end
    async with asyncio.timeout(WAIT):
        while not body.closed:
            await asyncio.sleep(0)
    assert pool._idle == []  # the request was not sent whole: never reused
    assert await fetch(pool) == b"ok"
    assert server.accepted == 2


async def test_an_early_answer_while_the_client_body_stalls_is_returned_at_once(raw_server, pools):
    async def early(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(EARLY)
        await server.wait_eof(reader)

    server = await raw_server(early)
    pool = pools(server.port)
    body = Body(b"first")  # then stalls for longer than the test waits
    response = await asyncio.wait_for(get(pool, "/up", method="POST", body=body, timeout=WAIT * 3), WAIT)
    assert response.status == 413
    assert await response.read() == b'{"error": "too big"}'
    await server.until(lambda: server.eofs == 1)


async def test_an_upstream_that_neither_reads_nor_answers_times_out(raw_server, pools):
    async def deaf(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        await asyncio.sleep(WAIT * 2)  # a deliberately deaf upstream: cancelled when the test ends

    server = await raw_server(deaf)
    pool = pools(server.port)
    body = Body(endless=True)
    start = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        await asyncio.wait_for(get(pool, "/up", method="POST", body=body, timeout=0.3), WAIT)
    assert not isinstance(caught.value, BodyTimeout)
    assert "did not read the request body" in str(caught.value)
    assert time.monotonic() - start >= 0.3


async def test_the_clients_own_body_error_is_raised_as_is(raw_server, pools):
    class TooBig(Exception):
        pass

    async def failing():
        yield b"part"
        raise TooBig("over the limit")

    async def reads(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        await server.wait_eof(reader)

    server = await raw_server(reads)
    pool = pools(server.port)
    with pytest.raises(TooBig):
        await asyncio.wait_for(get(pool, "/up", method="POST", body=failing()), WAIT)
    await server.until(lambda: server.eofs == 1)


async def test_an_upload_sent_whole_keeps_the_connection(raw_server, pools):
    async def echo(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await server.read_head(reader)) is not None:
            data = await server.read_body(reader, head)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(data or b""), data or b""))

    server = await raw_server(echo)
    pool = pools(server.port)
    body = [PIECE] * 64  # 4 MiB: the transport pauses writing more than once
    assert await fetch(pool, "/up", method="POST", body=stream_of(*body), timeout=WAIT) == b"".join(body)
    assert len(pool._idle) == 1


# --- through the gateway ----------------------------------------------------------------------------------------


async def test_a_client_trickling_its_body_gets_408_and_the_upstream_call_ends(raw_server, aiohttp_client, tmp_path):
    async def reads(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        await server.wait_eof(reader)

    server = await raw_server(reads)
    client = await gateway_with(aiohttp_client, tmp_path, server.port, timeout="0.3s")
    stall = asyncio.Event()

    async def trickle():
        yield b"{"
        await asyncio.wait_for(stall.wait(), WAIT)

    resp = await client.post("/api/svc/upload", data=trickle(), headers={"Content-Type": "application/json"})
    body = await resp.read()
    stall.set()
    assert resp.status == 408
    assert json.loads(body)["error"] == "bad_request"
    assert "stalled" in json.loads(body)["message"]
    await server.until(lambda: server.eofs == 1)


@pytest.mark.parametrize("then", ["waits", "closes"])
async def test_the_gateway_relays_an_early_413_at_once(raw_server, aiohttp_client, tmp_path, then):
    async def early(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        await reader.readexactly(1000)
        writer.write(EARLY)
        await writer.drain()
        if then == "waits":
            await server.wait_eof(reader)

    server = await raw_server(early)
    # a limit far over the upload: the 413 can only be the upstream's
    client = await gateway_with(aiohttp_client, tmp_path, server.port, timeout="30s", top="server: { max_body: 1gb }\n")

    async def big():
        for _ in range(1024):  # 64 MiB at most: far more than anyone reads
            yield PIECE

    resp = await asyncio.wait_for(client.post("/api/svc/upload", data=big()), WAIT)
    body = await resp.read()
    assert resp.status == 413
    assert json.loads(body) == {"error": "too big"}


async def test_an_early_success_answer_is_read_while_the_body_goes_on_going_up(raw_server, pools):
    """Full duplex (RFC 9112 §9.5): only an error answer, or one that closes the connection, stops the upload."""
    async def duplex(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await server.read_head(reader)) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")  # before the body
            data = await server.read_body(reader, head)
            end = b"got %d bytes" % len(data or b"")
            writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(end), end))

    async def slowly():
        for piece in (b"a" * 1000, b"b" * 1000, b"c" * 1000):
            await asyncio.sleep(0.02)  # a client still sending when the answer starts
            yield piece

    server = await raw_server(duplex)
    pool = pools(server.port)
    response = await asyncio.wait_for(get(pool, "/up", method="POST", body=slowly(), timeout=WAIT), WAIT)
    assert response.status == 200
    assert await asyncio.wait_for(response.read(), WAIT) == b"firstgot 3000 bytes"
    assert await fetch(pool, "/up", method="POST", body=stream_of(b"xy")) == b"firstgot 2 bytes"
    assert server.accepted == 1  # the upload ended before the answer did: the connection was kept


async def test_an_early_success_answer_that_closes_the_connection_ends_the_upload(raw_server, pools):
    async def done_early(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nenuf")
        await server.wait_eof(reader)

    server = await raw_server(done_early)
    pool = pools(server.port)
    body = Body(b"first")  # then stalls
    response = await asyncio.wait_for(get(pool, "/up", method="POST", body=body, timeout=WAIT * 3), WAIT)
    assert await asyncio.wait_for(response.read(), WAIT) == b"enuf"
    async with asyncio.timeout(WAIT):
        while not body.closed:
            await asyncio.sleep(0)
    await server.until(lambda: server.eofs == 1)


async def test_a_body_that_stalls_while_an_early_answer_streams_ends_the_call(raw_server, pools):
    async def streams(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(int(WAIT / 0.05)):  # a deliberately slow stream, never silent for the timeout
            writer.write(b"1\r\n.\r\n")
            await asyncio.sleep(0.05)
        await server.wait_eof(reader)

    server = await raw_server(streams)
    pool = pools(server.port)
    body = Body(b"a")  # then stalls for good
    response = await asyncio.wait_for(get(pool, "/up", method="POST", body=body, timeout=0.3), WAIT)
    with pytest.raises(TimeoutError, match="request body stalled"):
        await asyncio.wait_for(response.read(), WAIT)
    await server.until(lambda: server.eofs == 1)
