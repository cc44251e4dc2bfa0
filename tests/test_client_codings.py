"""Issue 7: every content and transfer coding is seen. All layers the client can undo are undone, last applied
first; decoding stops at the first it cannot undo, and ``Response.remaining_encoding`` says what still applies.
A transfer coding it cannot undo is an invalid answer. Through the gateway no still-encoded body is ever scrubbed
and passed on as if it were plain.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import pytest
from client_support import WAIT, get, keep_alive
from upstream_support import SECRET, assert_clean, gateway, no_secret_logged  # noqa: F401  (autouse fixture)

from gateway.upstream.client import DECODABLE, HIGH_WATER, InvalidResponse
from gateway.upstream.codings import CodingError, codings, plan

pytest_plugins = ["client_support"]

TEXT = b"line of text with a key in it\n" * 100


def deflate(data: bytes) -> bytes:
    return zlib.compress(data)


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)  # no timestamp: the same bytes whenever the expected body is rebuilt


ENCODERS = {"gzip": _gzip, "x-gzip": _gzip, "deflate": deflate, "identity": lambda data: data}


def encode(data: bytes, applied: list[str]) -> bytes:
    for coding in applied:
        data = ENCODERS[coding](data) if coding in ENCODERS else b"<" + coding.encode() + b">" + data
    return data


def chunked(data: bytes, size: int = 97) -> bytes:
    out = b"".join(b"%x\r\n%b\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size))
    return out + b"0\r\n\r\n"


@pytest.mark.parametrize(("content", "transfer", "layers", "remaining"), [
    ([], [], [], ""),
    (["gzip"], [], ["gzip"], ""),
    (["identity", "gzip"], [], ["gzip"], ""),
    (["gzip", "identity"], [], ["gzip"], ""),
    (["gzip", "gzip"], [], ["gzip", "gzip"], ""),
    (["deflate", "x-gzip"], [], ["x-gzip", "deflate"], ""),
    (["br", "gzip"], [], ["gzip"], "br"),
    (["gzip", "br"], [], [], "gzip, br"),
    (["gzip", "br", "gzip"], [], ["gzip"], "gzip, br"),
    (["gzip"], ["chunked"], ["gzip"], ""),
    (["gzip"], ["gzip", "chunked"], ["gzip", "gzip"], ""),
    ([], ["deflate", "gzip", "chunked"], ["gzip", "deflate"], ""),
    ([], ["gzip"], ["gzip"], ""),  # not chunked: the body ends with the connection
    (["br"], ["gzip", "chunked"], ["gzip"], "br"),
])
def test_plan(content, transfer, layers, remaining):
    assert plan(content, transfer) == (layers, remaining)


@pytest.mark.parametrize("transfer", [["br", "chunked"], ["compress", "chunked"], ["zstd"], ["chunked", "chunked"]])
def test_a_transfer_coding_that_cannot_be_undone_is_refused(transfer):
    with pytest.raises(CodingError):
        plan([], transfer)


def test_codings_reads_every_line_and_list():
    assert codings(["identity, GZip", " x-gzip ", ",", "deflate,,br"]) == ["identity", "gzip", "x-gzip", "deflate",
                                                                           "br"]
    assert DECODABLE == {"gzip", "x-gzip", "deflate"}  # the old name still says what can be undone


# --- the client, against raw upstreams ------------------------------------------------------------------------


@pytest.mark.parametrize(("lines", "applied", "remaining"), [
    (["identity", "gzip"], ["gzip"], ""),
    (["gzip", "gzip"], ["gzip", "gzip"], ""),
    (["gzip, gzip"], ["gzip", "gzip"], ""),
    (["identity, gzip"], ["gzip"], ""),
    (["deflate", "gzip"], ["deflate", "gzip"], ""),
    (["gzip", "deflate, x-gzip"], ["gzip", "deflate", "x-gzip"], ""),
    (["br", "gzip"], ["br", "gzip"], "br"),
    (["gzip", "br"], ["gzip", "br"], "gzip, br"),
    (["zstd", "gzip", "gzip"], ["zstd", "gzip", "gzip"], "zstd"),
])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_every_content_coding_line_is_undone_in_order(raw_server, pools, lines, applied, remaining, framing):
    body = encode(TEXT, applied)
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"Content-Encoding: %s\r\n" % line.encode() for line in lines)
    if framing == "chunked":
        answer = head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body)
    else:
        answer = head + b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    server = await raw_server(keep_alive(answer))
    pool = pools(server.port)
    response = await get(pool)
    assert response.remaining_encoding == remaining
    still = [c for c in applied if c != "identity"][: len(remaining.split(", ")) if remaining else 0]
    assert await asyncio.wait_for(response.read(), WAIT) == encode(TEXT, still)  # exactly the layers reported
    assert len(pool._idle) == 1


@pytest.mark.parametrize(("transfer", "content", "applied"), [
    ("gzip, chunked", None, ["gzip"]),
    ("deflate, chunked", "gzip", ["gzip", "deflate"]),
    ("gzip, gzip, chunked", None, ["gzip", "gzip"]),
])
async def test_transfer_codings_are_undone_before_content_codings(raw_server, pools, transfer, content, applied):
    body = encode(TEXT, applied)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n" % transfer.encode()
    if content:
        head += b"Content-Encoding: %s\r\n" % content.encode()
    server = await raw_server(keep_alive(head + b"\r\n" + chunked(body)))
    pool = pools(server.port)
    response = await get(pool)
    assert response.remaining_encoding == ""
    assert await asyncio.wait_for(response.read(), WAIT) == TEXT


async def test_a_transfer_coding_without_chunked_is_read_to_the_end_of_the_connection(raw_server, pools):
    async def once(server, reader, writer) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + gzip.compress(TEXT))

    server = await raw_server(once)
    pool = pools(server.port)
    response = await get(pool)
    assert await asyncio.wait_for(response.read(), WAIT) == TEXT


@pytest.mark.parametrize("transfer", ["br, chunked", "compress, chunked", "chunked, gzip", "chunked, chunked"])
async def test_a_transfer_coding_the_client_cannot_undo_is_an_invalid_response(raw_server, pools, transfer):
    server = await raw_server(keep_alive(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n%b" % (transfer.encode(), chunked(TEXT))))
    pool = pools(server.port)
    with pytest.raises(InvalidResponse):
        response = await asyncio.wait_for(get(pool), WAIT)
        await asyncio.wait_for(response.read(), WAIT)
    await server.until(lambda: server.eofs == 1)


async def test_a_bomb_inside_a_bomb_is_decoded_a_step_at_a_time(raw_server, pools):
    size = 64 << 20  # 64 MiB of zeros, gzipped twice: a few hundred bytes on the wire
    body = gzip.compress(gzip.compress(bytes(size), 9), 9)
    assert len(body) < 2000
    server = await raw_server(keep_alive(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip, gzip\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)))
    pool = pools(server.port)
    response = await get(pool)
    received, peak = 0, 0
    async with asyncio.timeout(WAIT * 4):
        async for chunk in response.iter_any():
            received += len(chunk)
            peak = max(peak, response._buffered + len(chunk))
    assert received == size
    assert peak <= 2 * HIGH_WATER


# --- through the gateway ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("lines", [["gzip", "gzip"], ["identity", "gzip"], ["gzip, deflate"], ["x-gzip", "identity"]])
async def test_a_layered_body_is_decoded_whole_then_scrubbed(raw_server, aiohttp_client, tmp_path, lines):
    plain = f"the key is {SECRET}, twice: {SECRET}\n".encode() * 20
    body = encode(plain, [c.strip() for line in lines for c in line.split(",")])
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
    head += b"".join(b"Content-Encoding: %s\r\n" % line.encode() for line in lines)
    server = await raw_server(keep_alive(head + b"Content-Length: %d\r\n\r\n%b" % (len(body), body)))
    client = await gateway(aiohttp_client, tmp_path, server.port)
    resp = await client.get("/api/svc/x")
    data = await resp.read()
    assert resp.status == 200
    assert "Content-Encoding" not in resp.headers  # the bytes sent are plain, and said to be
    assert data == plain.replace(SECRET.encode(), b"[REDACTED]")
    assert_clean(resp, data)


@pytest.mark.parametrize(("lines", "transfer"), [
    (["gzip", "br"], None),  # before the fix: one gzip layer "decoded", the header stripped, encoded bytes scrubbed
    (["br", "gzip"], None),
    (["gzip, zstd"], None),
    ([], "br, chunked"),
])
async def test_a_body_still_encoded_after_decoding_is_never_passed_on_as_plain(raw_server, aiohttp_client, tmp_path,
                                                                             lines, transfer):
    inner = gzip.compress(f"the key is {SECRET}".encode())  # what a client could decode itself
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
    head += b"".join(b"Content-Encoding: %s\r\n" % line.encode() for line in lines)
    if transfer:
        answer = head + b"Transfer-Encoding: %s\r\n\r\n%b" % (transfer.encode(), chunked(inner))
    else:
        body = gzip.compress(inner) if lines[-1] == "gzip" else inner
        answer = head + b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    server = await raw_server(keep_alive(answer))
    client = await gateway(aiohttp_client, tmp_path, server.port)
    resp = await client.get("/api/svc/x")
    data = await resp.read()
    assert resp.status == 502
    assert json.loads(data)["error"] == "upstream_error"
    assert_clean(resp, data)
