"""The upstream HTTP/1.1 client (gateway/upstream/client.py) on its own, against real servers on 127.0.0.1.

aiohttp servers stand in for well-behaved upstreams; raw ``asyncio.start_server`` servers misbehave byte by byte
(garbage, silence, half answers, resets). Server and client are coordinated with events and counters, never with
fixed sleeps; sleeps appear only inside a deliberately slow server or consumer.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import random
import socket
import struct
import time
import zlib

import pytest
from aiohttp import web
from client_support import OK, TIMEOUT, WAIT, RawServer, Upstream, fetch, get, keep_alive, stream_of
from upstream_support import free_port
from yarl import URL

from gateway.upstream.client import HIGH_WATER

pytest_plugins = ["client_support"]  # the raw_server and pools fixtures

# --- keep-alive -------------------------------------------------------------------------------------------------


async def test_sequential_requests_share_one_connection(aiohttp_raw_server, pools):
    up = Upstream()
    pool = pools(await up.serve(aiohttp_raw_server))
    for _ in range(5):
        assert await fetch(pool) == b"ok"
    assert len(up.seen) == 5
    assert len(up.connections) == 1
    assert len(pool._idle) == 1


async def test_concurrent_requests_open_several_connections_that_all_return_to_the_pool(aiohttp_raw_server, pools):
    n = 4
    arrived = 0
    all_in = asyncio.Event()

    async def together(request: web.BaseRequest) -> web.Response:
        nonlocal arrived
        arrived += 1
        if arrived % n == 0:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), WAIT)  # each answer only once all n calls are in flight
        return web.Response(body=b"ok")

    up = Upstream(together)
    pool = pools(await up.serve(aiohttp_raw_server))
    responses = await asyncio.gather(*(get(pool) for _ in range(n)))
    assert [await r.read() for r in responses] == [b"ok"] * n
    assert len(up.connections) == n
    assert len(pool._idle) == n
    all_in.clear()
    responses = await asyncio.gather(*(get(pool) for _ in range(n)))  # a second round: the pooled ones again
    assert [await r.read() for r in responses] == [b"ok"] * n
    assert len(up.connections) == n
    assert len(pool._idle) == n


@pytest.mark.parametrize("early", ["mid-body", "complete but unread"])
async def test_a_response_closed_by_its_consumer_is_never_reused(raw_server, pools, early):
    async def handle(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await server.read_head(reader)) is not None:
            if head.startswith(b"GET /hold "):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
                await server.wait_eof(reader)
                return
            writer.write(OK)

    server = await raw_server(handle)
    pool = pools(server.port)
    response = await get(pool, "/hold" if early == "mid-body" else "/")
    if early == "mid-body":
        assert await asyncio.wait_for(response.read(5), WAIT) == b"x" * 5
    response.close()
    assert pool._idle == []
    assert await fetch(pool) == b"ok"
    assert server.accepted == 2
    await server.until(lambda: server.eofs == 1)  # the closed one, seen as closed by the server


async def test_connection_close_from_the_server_is_not_reused(raw_server, pools):
    server = await raw_server(keep_alive(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"))
    pool = pools(server.port)
    assert await fetch(pool) == b"ok"
    assert pool._idle == []
    await server.until(lambda: server.eofs == 1)
    assert await fetch(pool) == b"ok"
    assert server.accepted == 2


# --- a pooled connection the server closed --------------------------------------------------------------------


async def close_on_second_request(server: RawServer, reader: asyncio.StreamReader,
                                  writer: asyncio.StreamWriter) -> None:
    """Answer one request, then read the next one's head and close: an idle timeout that raced the request."""
    if await server.read_head(reader) is None:
        return
    writer.write(OK)
    await server.read_head(reader)


async def close_after_answer(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer one request (no ``Connection: close``), then close the connection."""
    if await server.read_head(reader) is not None:
        writer.write(OK)
        await writer.drain()
    server.eofs += 1  # here: connections the server has finished with
    server.changed()


@pytest.mark.parametrize("handle", [close_on_second_request, close_after_answer])
async def test_get_on_a_pooled_connection_the_server_closed_succeeds_on_a_fresh_one(raw_server, pools, handle):
    server = await raw_server(handle)
    pool = pools(server.port)
    assert await fetch(pool) == b"ok"
    await server.until(lambda: len(server.heads) == 1 and (handle is close_on_second_request or server.eofs == 1))
    assert await fetch(pool, "/again") == b"ok"
    assert server.accepted == 2
    assert server.heads[-1].startswith(b"GET /again ")


@pytest.mark.parametrize(("method", "streamed", "replayed"), [
    ("PUT", False, True),  # idempotent, its bytes can be sent again
    ("DELETE", False, True),
    ("PUT", True, False),  # a streamed body is gone once sent
    ("POST", False, False),  # RFC 9112 §9.3.1: never replayed automatically, even with its bytes at hand
    ("PATCH", False, False),
    ("POST", True, False),
])
async def test_a_stale_connection_is_replayed_only_for_an_idempotent_method_with_a_bytes_body(
    raw_server, pools, method, streamed, replayed
):
    server = await raw_server(close_on_second_request)
    pool = pools(server.port)
    assert await fetch(pool) == b"ok"
    body = stream_of(b"one", b"two") if streamed else b"onetwo"
    if replayed:
        response = await get(pool, "/again", method=method, body=body)
        assert await response.read() == b"ok"
        assert server.accepted == 2
        assert [h.split(b" ")[0] for h in server.heads] == [b"GET", method.encode(), method.encode()]
    else:
        with pytest.raises(ConnectionError):
            await get(pool, "/again", method=method, body=body)
        assert server.accepted == 1  # not replayed on a fresh connection
        assert [h.split(b" ")[0] for h in server.heads] == [b"GET", method.encode()]


# --- response bodies ------------------------------------------------------------------------------------------


async def test_content_length_body(aiohttp_raw_server, pools):
    body = random.Random(1).randbytes(100_000)
    up = Upstream(lambda request: _answer(body))
    pool = pools(await up.serve(aiohttp_raw_server))
    response = await get(pool)
    assert response.status == 200
    assert response.content_length == len(body)
    assert await response.read() == body
    assert len(pool._idle) == 1


async def _answer(body: bytes, **headers: str) -> web.Response:
    return web.Response(body=body, headers=headers)


async def test_chunked_body(aiohttp_raw_server, pools):
    parts = [b"first,", b"second,", b"x" * 70_000, b"last"]

    async def chunked(request: web.BaseRequest) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in parts:
            await resp.write(part)
        await resp.write_eof()
        return resp

    up = Upstream(chunked)
    pool = pools(await up.serve(aiohttp_raw_server))
    response = await get(pool)
    assert response.content_length is None
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert await response.read() == b"".join(parts)
    assert await fetch(pool) == b"".join(parts)
    assert len(up.connections) == 1


@pytest.mark.parametrize("head", [b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 200 OK\r\nConnection: close\r\n"])
async def test_body_delimited_by_the_end_of_the_connection(raw_server, pools, head):
    async def until_eof(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(head + b"Content-Type: text/plain\r\n\r\nfirst part, ")
        await writer.drain()
        writer.write(b"second part")

    server = await raw_server(until_eof)
    pool = pools(server.port)
    response = await get(pool)
    assert response.content_length is None
    assert await asyncio.wait_for(response.read(), WAIT) == b"first part, second part"
    assert pool._idle == []


async def test_a_reset_ends_a_body_delimited_by_the_end_of_the_connection_with_an_error(raw_server, pools):
    got_part = asyncio.Event()

    async def reset(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial")
        await asyncio.wait_for(got_part.wait(), WAIT)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a RST, not a FIN: the upstream crashed, the body is not complete

    server = await raw_server(reset)
    pool = pools(server.port)
    response = await get(pool)
    received = b""
    with pytest.raises(ConnectionError):
        async with asyncio.timeout(WAIT):
            async for chunk in response.iter_any():
                received += chunk
                got_part.set()
    assert received == b"partial"


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n",  # the length of what is not sent
])
async def test_204_and_304_have_no_body_and_keep_the_connection(raw_server, pools, answer):
    server = await raw_server(keep_alive(answer))
    pool = pools(server.port)
    for _ in range(2):
        response = await get(pool)
        assert response.status == int(answer[9:12])
        assert response.complete
        assert await asyncio.wait_for(response.read(), WAIT) == b""
    assert server.accepted == 1


async def test_head_has_no_body_and_its_connection_is_not_reused(aiohttp_raw_server, pools):
    up = Upstream(lambda request: _answer(b"hello"))
    pool = pools(await up.serve(aiohttp_raw_server))
    response = await get(pool, method="HEAD")
    assert response.status == 200
    assert response.content_length == 5
    assert await asyncio.wait_for(response.read(), WAIT) == b""
    assert pool._idle == []
    assert await fetch(pool) == b"hello"
    assert [r.method for r in up.seen] == ["HEAD", "GET"]
    assert len(up.connections) == 2


async def test_an_interim_1xx_answer_is_skipped_and_the_final_body_read_whole(raw_server, pools):
    rest = asyncio.Event()

    async def early_hints(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_head(reader) is not None:
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                         b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
            await asyncio.wait_for(rest.wait(), WAIT)
            writer.write(b"world")

    server = await raw_server(early_hints)
    pool = pools(server.port)
    response = await get(pool)
    assert response.status == 200
    received = b""
    async with asyncio.timeout(WAIT):
        async for chunk in response.iter_any():
            received += chunk
            rest.set()  # the second half only once the client has the first
    assert received == b"helloworld"
    assert await fetch(pool) == b"helloworld"  # and the connection was not handed back mid-body
    assert server.accepted == 1


TEXT = b"The quick brown fox jumps over the lazy dog. " * 300 + random.Random(2).randbytes(2000)


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize("split", [None, 1, 7], ids=["whole", "first-chunk-1-byte", "first-chunk-7-bytes"])
@pytest.mark.parametrize(("encoding", "encode"), [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("GZip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", _raw_deflate),
], ids=["gzip", "x-gzip", "GZip", "deflate-zlib", "deflate-raw"])
async def test_gzip_and_deflate_bodies_are_decoded(aiohttp_raw_server, pools, encoding, encode, split):
    encoded = encode(TEXT)

    async def compressed(request: web.BaseRequest) -> web.StreamResponse:
        if split is None:
            return web.Response(body=encoded, headers={"Content-Encoding": encoding})
        resp = web.StreamResponse(headers={"Content-Encoding": encoding})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(encoded[:split])
        for i in range(split, len(encoded), 500):
            await resp.write(encoded[i:i + 500])
        await resp.write_eof()
        return resp

    up = Upstream(compressed)
    pool = pools(await up.serve(aiohttp_raw_server))
    response = await get(pool)
    assert response.headers["Content-Encoding"] == encoding
    assert await asyncio.wait_for(response.read(), WAIT) == TEXT
    assert len(pool._idle) == 1


@pytest.mark.parametrize(("encoding", "body"), [
    ("gzip", gzip.compress(TEXT)[:10] + b"\xff" * 40),  # a gzip header, then no valid deflate block
    ("gzip", b"this was never gzipped, whatever the header says"),
    ("deflate", b"\xff" * 40),  # neither zlib nor raw deflate
])
async def test_a_corrupt_compressed_body_is_a_connection_error(aiohttp_raw_server, pools, encoding, body):
    up = Upstream(lambda request: _answer(body, **{"Content-Encoding": encoding}))
    pool = pools(await up.serve(aiohttp_raw_server))
    response = await get(pool)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(response.read(), WAIT)
    assert pool._idle == []


@pytest.mark.parametrize(("encoding", "body", "remaining"), [
    ("br", b"\x8b\x02\x80not really brotli\x03", "br"),
    ("identity", b"plain", ""),
])
async def test_an_unknown_encoding_is_passed_through_raw(aiohttp_raw_server, pools, encoding, body, remaining):
    up = Upstream(lambda request: _answer(body, **{"Content-Encoding": encoding}))
    pool = pools(await up.serve(aiohttp_raw_server))
    response = await get(pool)
    assert response.headers["Content-Encoding"] == encoding
    assert response.remaining_encoding == remaining
    assert await response.read() == body


async def test_read_twice_gives_the_same_bytes(aiohttp_raw_server, pools):
    up = Upstream(lambda request: _answer(b"the body"))
    pool = pools(await up.serve(aiohttp_raw_server))
    response = await get(pool)
    assert await response.read() == b"the body"
    assert await response.read() == b"the body"
    assert len(pool._idle) == 1


async def test_read_with_a_limit_returns_that_much_without_waiting_for_the_end(raw_server, pools):
    body = bytes(range(64))

    async def endless(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, 64, 4):
            writer.write(b"4\r\n%b\r\n" % body[i:i + 4])
        await server.wait_eof(reader)  # the rest never comes

    server = await raw_server(endless)
    pool = pools(server.port)
    response = await get(pool)
    assert await asyncio.wait_for(response.read(10), WAIT) == body[:10]
    response.close()
    await server.until(lambda: server.eofs == 1)


# --- the request as sent ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "target"), [
    ("/base/x?a=1&b=%2F&c", "/base/x?a=1&b=%2F&c"),
    ("/base/caf%C3%A9;v=1?q=%20x&q=", "/base/caf%C3%A9;v=1?q=%20x&q="),
    ("/", "/"),
    ("", "/"),
])
async def test_request_target_is_the_url_without_its_origin(aiohttp_raw_server, pools, path, target):
    up = Upstream()
    port = await up.serve(aiohttp_raw_server)
    pool = pools(f"http://127.0.0.1:{port}/base")
    url = f"http://127.0.0.1:{port}{path}"
    response = await pool.request("GET", url, {}, None, TIMEOUT)
    await response.read()
    assert up.seen[0].raw_path == target
    assert up.seen[0].headers["Host"] == f"127.0.0.1:{port}"
    assert response.url == URL(url, encoded=True)


async def test_host_header_leaves_out_the_base_urls_credentials(aiohttp_raw_server, pools):
    up = Upstream()
    port = await up.serve(aiohttp_raw_server)
    pool = pools(f"http://user:pass@127.0.0.1:{port}/v1/")
    assert await fetch(pool, "/v1/x") == b"ok"
    assert up.seen[0].raw_path == "/v1/x"
    assert up.seen[0].headers.getall("Host") == [f"127.0.0.1:{port}"]


@pytest.mark.parametrize("body", [b"some bytes", bytearray(b"a bytearray"), b""])
async def test_a_bytes_body_is_sent_with_its_content_length(aiohttp_raw_server, pools, body):
    up = Upstream()
    pool = pools(await up.serve(aiohttp_raw_server))
    assert await fetch(pool, "/p", method="POST", body=body) == b"ok"
    seen = up.seen[0]
    assert seen.headers.getall("Content-Length") == [str(len(body))]
    assert "Transfer-Encoding" not in seen.headers
    assert up.bodies == [bytes(body)]


async def test_a_streamed_body_without_a_length_is_sent_chunked(aiohttp_raw_server, pools):
    up = Upstream()
    pool = pools(await up.serve(aiohttp_raw_server))
    assert await fetch(pool, "/p", method="POST", body=stream_of(b"one,", b"", b"two," * 10_000, b"three")) == b"ok"
    seen = up.seen[0]
    assert seen.headers.getall("Transfer-Encoding") == ["chunked"]
    assert "Content-Length" not in seen.headers
    assert up.bodies == [b"one," + b"two," * 10_000 + b"three"]


async def test_a_streamed_body_with_a_given_length_is_sent_as_is(aiohttp_raw_server, pools):
    up = Upstream()
    pool = pools(await up.serve(aiohttp_raw_server))
    body = stream_of(b"0123", b"456789")
    assert await fetch(pool, "/p", method="PUT", headers={"content-length": "10"}, body=body) == b"ok"
    assert up.seen[0].headers.getall("Content-Length") == ["10"]
    assert "Transfer-Encoding" not in up.seen[0].headers
    assert up.bodies == [b"0123456789"]
    assert await fetch(pool) == b"ok"  # the connection is still in step
    assert len(up.connections) == 1


@pytest.mark.parametrize(("method", "length"), [
    ("POST", ["0"]), ("PUT", ["0"]), ("PATCH", ["0"]), ("GET", []), ("DELETE", []),
])
async def test_content_length_zero_for_a_write_without_a_body(aiohttp_raw_server, pools, method, length):
    up = Upstream()
    pool = pools(await up.serve(aiohttp_raw_server))
    assert await fetch(pool, method=method) == b"ok"
    assert up.seen[0].headers.getall("Content-Length", []) == length
    assert "Transfer-Encoding" not in up.seen[0].headers


async def test_default_accept_encoding_and_user_agent(aiohttp_raw_server, pools):
    up = Upstream()
    pool = pools(await up.serve(aiohttp_raw_server))
    await fetch(pool, headers={"X-Custom": "1"})
    await fetch(pool, headers={"accept-encoding": "identity", "USER-AGENT": "the-client/2"})
    default, given = (request.headers for request in up.seen)
    assert default.getall("Accept-Encoding") == ["gzip, deflate"]
    assert default.getall("User-Agent") == ["gateway"]
    assert default["X-Custom"] == "1"
    assert given.getall("Accept-Encoding") == ["identity"]
    assert given.getall("User-Agent") == ["the-client/2"]


@pytest.mark.parametrize(("name", "value"), [
    ("X-Note", "a\r\nX-Evil: 1"),
    ("X-Note", "a\nX-Evil: 1"),
    ("X-Note", "a\rb"),
    ("X-Note", "a\0b"),
    ("X-Note\r\nX-Evil", "1"),
    ("X-Evil\n", "1"),
    ("X\0Note", "1"),
])
async def test_a_header_with_a_line_break_or_nul_is_refused_before_anything_is_sent(raw_server, pools, name, value):
    server = await raw_server(keep_alive())
    pool = pools(server.port)
    with pytest.raises(ValueError):
        await get(pool, headers={name: value})  # no connection at all yet
    assert await fetch(pool) == b"ok"
    with pytest.raises(ValueError):
        await get(pool, "/bad", headers={"X-Fine": "1", name: value})  # a pooled connection is there to be misused
    assert await fetch(pool, "/after") == b"ok"
    assert server.accepted == 1
    assert [head.split(b" ")[1] for head in server.heads] == [b"/", b"/after"]
    assert all(b"Evil" not in head and b"X-Note" not in head for head in server.heads)


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/x\r\nX-Evil: 1"),
    ("GET", "/x\nX-Evil: 1"),
    ("GET", "/x\0"),
    ("GET /admin HTTP/1.1\r\nX-Evil: 1\r\n", "/"),
])
async def test_a_request_line_with_a_line_break_or_nul_is_refused(raw_server, pools, method, path):
    server = await raw_server(keep_alive())
    pool = pools(server.port)
    with pytest.raises(ValueError, match="line break or NUL"):
        await get(pool, path, method=method, headers={"X-Fine": "1"})
    assert await fetch(pool, "/after") == b"ok"
    assert [head.split(b" ")[1] for head in server.heads] == [b"/after"]


async def test_the_refused_header_is_named(raw_server, pools):
    pool = pools((await raw_server(keep_alive())).port)
    with pytest.raises(ValueError, match="'X-Note'"):
        await get(pool, headers={"X-Fine": "1", "X-Note": "a\r\nX-Evil: 1"})


# --- timeouts ---------------------------------------------------------------------------------------------------


async def test_a_server_that_never_answers_times_out(raw_server, pools):
    async def silent(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        await server.wait_eof(reader)

    server = await raw_server(silent)
    pool = pools(server.port)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(get(pool, timeout=0.3), WAIT)
    assert 0.25 < time.monotonic() - start < 2
    await server.until(lambda: server.eofs == 1)  # and the call's connection was closed


async def test_silence_mid_body_longer_than_the_timeout_times_out(raw_server, pools):
    async def stalls(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
        await server.wait_eof(reader)

    server = await raw_server(stalls)
    pool = pools(server.port)
    response = await get(pool, timeout=0.3)
    chunks = response.iter_any()
    assert await asyncio.wait_for(anext(chunks), WAIT) == b"first"
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(chunks), WAIT)
    assert 0.25 < time.monotonic() - start < 2
    response.close()
    await server.until(lambda: server.eofs == 1)


async def test_a_slow_but_steady_body_longer_than_the_timeout_completes(raw_server, pools):
    timeout, gap, parts = 0.3, 0.06, 10  # each gap well under the timeout, the whole body twice over it

    async def trickle(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        await asyncio.sleep(gap)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(parts):
            await asyncio.sleep(gap)
            writer.write(b"2\r\n%02d\r\n" % i)
        writer.write(b"0\r\n\r\n")
        await server.wait_eof(reader)

    server = await raw_server(trickle)
    pool = pools(server.port)
    start = time.monotonic()
    response = await get(pool, timeout=timeout)
    assert await asyncio.wait_for(response.read(), WAIT) == b"".join(b"%02d" % i for i in range(parts))
    assert time.monotonic() - start > timeout


async def test_connecting_to_a_closed_port_is_a_connection_error_not_a_timeout(pools):
    pool = pools(await free_port())
    start = time.monotonic()
    with pytest.raises(ConnectionError) as caught:
        await get(pool, timeout=TIMEOUT)
    assert not isinstance(caught.value, TimeoutError)
    assert time.monotonic() - start < TIMEOUT / 2


# --- broken answers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
], ids=["not-http", "bad-status", "bad-header", "two-lengths", "length-and-chunked"])
async def test_invalid_http_is_a_connection_error(raw_server, pools, answer):
    async def garbage(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(answer)
        await server.wait_eof(reader)

    server = await raw_server(garbage)
    pool = pools(server.port)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(get(pool), WAIT)
    await server.until(lambda: server.eofs == 1)  # the client hung up
    assert server.accepted == 1


async def test_invalid_http_mid_body_is_a_connection_error(raw_server, pools):
    async def garbage(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
        await server.wait_eof(reader)

    server = await raw_server(garbage)
    pool = pools(server.port)
    response = await get(pool)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(response.read(), WAIT)
    await server.until(lambda: server.eofs == 1)


@pytest.mark.parametrize("answer", [b"", b"HTTP/1.1 200 OK\r\nContent-Le"], ids=["nothing", "half-a-head"])
async def test_the_server_closing_before_the_headers_is_a_connection_error(raw_server, pools, answer):
    async def hang_up(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(answer)

    server = await raw_server(hang_up)
    pool = pools(server.port)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(get(pool), WAIT)
    assert server.accepted == 1  # a fresh connection's failure is not retried


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
], ids=["content-length", "chunked"])
async def test_the_server_closing_mid_body_is_a_connection_error(raw_server, pools, answer):
    async def hang_up(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(answer)

    server = await raw_server(hang_up)
    pool = pools(server.port)
    response = await get(pool)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(response.read(), WAIT)
    assert pool._idle == []


# --- cancellation -------------------------------------------------------------------------------------------------


async def test_cancelling_a_call_waiting_for_headers_closes_its_connection(raw_server, pools):
    async def silent(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        await server.wait_eof(reader)

    server = await raw_server(silent)
    pool = pools(server.port)
    call = asyncio.create_task(get(pool, timeout=30))
    await server.until(lambda: len(server.heads) == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await server.until(lambda: server.eofs == 1)  # the upstream sees the call end
    assert pool._idle == []


async def test_closing_a_response_mid_body_closes_its_connection(raw_server, pools):
    async def streaming(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await server.wait_eof(reader)

    server = await raw_server(streaming)
    pool = pools(server.port)
    response = await get(pool)
    chunks = response.iter_any()
    assert await asyncio.wait_for(anext(chunks), WAIT) == b"first"
    response.close()
    await server.until(lambda: server.eofs == 1)
    await chunks.aclose()
    assert pool._idle == []


# --- flow control -------------------------------------------------------------------------------------------------


async def test_a_slow_consumer_keeps_the_buffer_bounded_and_gets_the_whole_body(aiohttp_raw_server, pools):
    size, piece = 8 << 20, 64 << 10
    body = random.Random(3).randbytes(size)

    async def big(request: web.BaseRequest) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, size, piece):
            await resp.write(body[i:i + piece])
        await resp.write_eof()
        return resp

    up = Upstream(big)
    pool = pools(await up.serve(aiohttp_raw_server))
    response = await get(pool)
    digest, received, peak = hashlib.sha256(), 0, 0
    async with asyncio.timeout(WAIT * 2):
        async for chunk in response.iter_any():
            digest.update(chunk)
            received += len(chunk)
            await asyncio.sleep(0.001)  # a consumer slower than the upstream
            peak = max(peak, response._buffered)
    assert received == size
    assert digest.digest() == hashlib.sha256(body).digest()
    assert peak > HIGH_WATER // 2  # the consumer really lagged: reading had to pause
    assert peak <= 3 * HIGH_WATER


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_highly_compressed_body_is_inflated_a_step_at_a_time(aiohttp_raw_server, pools, encoding):
    size = 64 << 20  # 64 MiB of zeros: about 64 KiB compressed, a ratio no flow control on the input can bound
    compressor = zlib.compressobj(wbits=31 if encoding == "gzip" else 15)
    encoded = compressor.compress(bytes(size)) + compressor.flush()
    assert len(encoded) < size // 500

    async def bomb(request: web.BaseRequest) -> web.Response:
        return web.Response(body=encoded, headers={"Content-Encoding": encoding})

    up = Upstream(bomb)
    pool = pools(await up.serve(aiohttp_raw_server))
    response = await get(pool)
    received, peak = 0, 0
    async with asyncio.timeout(WAIT * 4):
        async for chunk in response.iter_any():
            assert not chunk.strip(b"\0")
            received += len(chunk)
            peak = max(peak, response._buffered + len(chunk))
    assert received == size
    assert peak <= 2 * HIGH_WATER  # never the whole 64 MiB, nor one input chunk's worth of it
    assert len(pool._idle) == 1  # read to the end: the connection was resumed and pooled again


async def test_releasing_an_unread_paused_response_does_not_pool_a_paused_connection(raw_server, pools):
    body = b"y" * (HIGH_WATER + 64 * 1024)  # arrives in two reads: the second pauses reading and completes the body

    async def handle(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await server.read_head(reader)) is not None:
            if head.startswith(b"GET /big "):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
            else:
                writer.write(OK)

    server = await raw_server(handle)
    pool = pools(server.port)
    response = await get(pool, "/big")
    async with asyncio.timeout(WAIT):
        while not response.complete and response._buffered < HIGH_WATER:  # all that can arrive has arrived
            await asyncio.sleep(0)
    response.release()
    assert await fetch(pool, timeout=1) == b"ok"


# --- closing the pool ---------------------------------------------------------------------------------------------


async def test_pool_close_closes_idle_and_busy_connections(raw_server, pools):
    async def handle(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await server.read_head(reader)) is not None:
            if head.startswith(b"GET /hold "):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
                await server.wait_eof(reader)
                return
            writer.write(OK)

    server = await raw_server(handle)
    pool = pools(server.port)
    responses = await asyncio.gather(*(get(pool) for _ in range(3)))
    assert [await r.read() for r in responses] == [b"ok"] * 3
    busy = await get(pool, "/hold")
    assert server.accepted == 3
    assert len(pool._idle) == 2
    await pool.close()
    await server.until(lambda: server.eofs == 3)
    assert pool._idle == []
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(busy.read(), WAIT)
