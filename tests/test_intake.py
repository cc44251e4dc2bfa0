"""The request intake (gateway/intake.py, gateway/inflate.py), served for real on 127.0.0.1 by GatewayRunner.

Malformed requests sent as raw bytes get the gateway's JSON 400 and a closed connection; compressed request
bodies are decoded on demand, a slice per turn of the event loop, and never past what a reader asks for.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import struct
import sys
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from app_support import served

from gateway.inflate import MAX_MEMBERS, SLICE, WINDOW, Inflater

WAIT = 10.0  # seconds: reached only when the behaviour under test is broken
CLIENT_KEY = "sk-client-MARKER-0123456789abcdef"  # a client's key inside malformed requests: never echoed or logged

ROUTES = {
    # reads the whole body (aiohttp's read(): max_body applies)
    "echo.py": "async def POST(req):\n    return (await req.read(), 200)\n",
    # never reads the body
    "ignore.py": "async def POST(req):\n    return {'ok': True}\n",
    # counts a large body as it streams; keeps the body object so a test can watch the decoding
    "count.py": (
        "SEEN = []\nconfig = {'max_body': '1gb'}\n\n"
        "async def POST(req):\n"
        "    SEEN.append(req.content)\n"
        "    n = 0\n"
        "    async for chunk in req.content.iter_any():\n"
        "        n += len(chunk)\n"
        "    return {'n': n}\n"
    ),
    # the request's own storage, as a handler uses it (GatewayRequest answers get/in from its dict)
    "state.py": (
        "import uuid, warnings\nfrom aiohttp import web\nfrom gateway.keys import FACTS\n"
        "MINE = web.RequestKey('t', int)\n\n"
        "async def GET(req):\n"
        "    req[MINE] = 3\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        req['str-key-' + uuid.uuid4().hex] = 1\n"
        "    return {'absent': req.get('absent', 'default'), 'none': req.get('absent'), 'in': 'absent' in req,\n"
        "            'facts': FACTS in req, 'mine': req.get(MINE), 'advised': len(caught), 'len': len(req) > 0,\n"
        "            'claims': req.get('claims', 'none'), 'has_claims': 'claims' in req}\n"
    ),
    "keep.py": "SEEN = []\n\nasync def POST(req):\n    SEEN.append(req.content)\n    return (await req.read(), 200)\n",
}
ZERO_MIB = bytes(1 << 20)


async def test_a_handler_reads_and_writes_the_request_storage_as_a_mapping(tmp_path: Path) -> None:
    import aiohttp

    async with serving(tmp_path) as port, aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/api/state") as r:
            assert r.status == 200
            assert await r.json() == {"absent": "default", "none": None, "in": False, "facts": True, "mine": 3,
                                      "advised": 1, "len": True, "claims": "none", "has_claims": False}


def gzip_zeros(mib: int, *, crc: bool = True) -> bytes:
    """A gzip body that inflates to ``mib`` MiB of zeros, ~1 KiB per MiB, built without compressing it all.

    After a full flush deflate starts afresh, so one compressed MiB repeats as is. Without ``crc`` the trailer
    is wrong: for bodies that are never decoded to their end."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = c.compress(ZERO_MIB) + c.flush(zlib.Z_FULL_FLUSH)
    check = 0
    for _ in range(mib if crc else 0):
        check = zlib.crc32(ZERO_MIB, check)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + block * mib + c.flush() + struct.pack("<II", check, (mib << 20) & 0xFFFFFFFF)


@asynccontextmanager
async def serving(tmp_path: Path, config: str = "server:\n  prefix: /api\n", forwards: str = "") -> AsyncIterator[int]:
    """The real gateway app for a project in ``tmp_path``, served by GatewayRunner as ``gateway serve`` serves it."""
    (tmp_path / "config.yaml").write_text(config + forwards)
    for name, source in ROUTES.items():
        (tmp_path / "routes").mkdir(exist_ok=True)
        (tmp_path / "routes" / name).write_text(source)
    async with served(tmp_path / "config.yaml") as port:
        yield port


def route_module(name: str):  # the route module as build_table imported it
    return sys.modules[f"gateway_routes.{name}"]


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, then read until the server closes the connection (the test fails if it never does)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """The first response in ``raw``: status, headers (lower-case names), body, and what follows it."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return int(lines[0].split()[1]), headers, rest[:length], rest[length:]


def post(path: str, body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return (f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


# -- malformed requests --------------------------------------------------------------------------------------------

K = CLIENT_KEY.encode()
MALFORMED = {
    "invalid method": b"G@T /api/echo HTTP/1.1\r\nHost: gw\r\nX-API-Key: " + K + b"\r\n\r\n",
    "space in header name": b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX API-Key: " + K + b"\r\n\r\n",
    "control byte in header value": b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-API-Key: " + K + b"\x01\r\n\r\n",
    "obs-fold": b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-API-Key: a\r\n " + K + b"\r\n\r\n",
    "Content-Length and Transfer-Encoding": (b"POST /api/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
                                             b"Transfer-Encoding: chunked\r\nX-API-Key: " + K + b"\r\n\r\n0\r\n\r\n"),
    "two Content-Lengths": b"POST /api/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "bad chunk size": (b"POST /api/echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz" + K + b"\r\nabc\r\n0\r\n\r\n"),
    "bad chunk size after a good chunk": (b"POST /api/echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
                                          b"3\r\nabc\r\n-1\r\nabc\r\n0\r\n\r\n"),
    "header line too long": b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"a" * 9000 + K + b"\r\n\r\n",
    "request line too long": b"GET /api/" + b"a" * 9000 + K + b" HTTP/1.1\r\nHost: gw\r\n\r\n",
    "NUL in the target": b"GET /api/\x00" + K + b" HTTP/1.1\r\nHost: gw\r\n\r\n",
}


def assert_json_400(raw: bytes) -> dict[str, str]:
    status, headers, body, rest = parse(raw)
    assert status == 400, raw
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert error["error"] == "bad_request" and error["message"], error
    assert headers.get("server", "gateway") == "gateway"  # no software name, no version
    assert b"aiohttp" not in raw and b"Python" not in raw
    assert headers.get("x-request-id")
    assert rest == b""  # nothing after it: the connection was closed (exchange read to the end)
    return error


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_request_gets_the_json_error_shape_and_a_closed_connection(tmp_path, caplog, raw):
    caplog.set_level(logging.DEBUG)
    async with serving(tmp_path) as port:
        reply = await exchange(port, raw)
    assert_json_400(reply)
    assert K not in reply  # aiohttp's own message quotes the bytes it could not parse
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert CLIENT_KEY not in logged and "Traceback" not in logged, logged


async def test_a_malformed_request_after_a_good_one_on_the_same_connection(tmp_path):
    async with serving(tmp_path) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200")
        await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
        writer.write(b"G@T / HTTP/1.1\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), WAIT)
        writer.close()
    assert assert_json_400(rest)["message"] == "the request method is not valid HTTP"


async def test_a_well_formed_request_keeps_its_connection(tmp_path):
    async with serving(tmp_path) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            assert head.startswith(b"HTTP/1.1 200") and b"close" not in head.lower()
            await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
        writer.close()


# -- compressed request bodies ---------------------------------------------------------------------------------

TEXT = b'{"msg": "' + b"hello compressed world " * 500 + b'"}'


def deflate(data: bytes, wbits: int) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(("coding", "body"), [
    ("gzip", gzip.compress(TEXT)),
    ("GZIP", gzip.compress(TEXT)),
    ("gzip", gzip.compress(TEXT[:1000]) + gzip.compress(TEXT[1000:])),  # two members: one body
    ("deflate", deflate(TEXT, zlib.MAX_WBITS)),  # zlib-wrapped, as RFC 9110 says
    ("deflate", deflate(TEXT, -zlib.MAX_WBITS)),  # raw, as some clients send and aiohttp accepts
], ids=["gzip", "GZIP", "gzip-2-members", "deflate-zlib", "deflate-raw"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
async def test_a_compressed_body_reaches_the_handler_decoded(tmp_path, coding, body, chunked):
    if chunked:
        pieces = [body[i : i + 100] for i in range(0, len(body), 100)]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        raw = (f"POST /api/echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Encoding: {coding}\r\n"
               "Connection: close\r\n\r\n").encode() + framed
    else:
        raw = post("/api/echo", body, f"Content-Encoding: {coding}", "Connection: close")
    async with serving(tmp_path) as port:
        status, _, got, _ = parse(await exchange(port, raw))
    assert (status, got) == (200, TEXT)


async def test_a_compressed_body_reaches_the_upstream_decoded(tmp_path, aiohttp_server):
    received = []

    async def upload(request: web.Request) -> web.Response:
        received.append((request.headers.get("Content-Encoding"), await request.read()))
        return web.json_response({"ok": True})

    up = web.Application()
    up.router.add_post("/v1/upload", upload)
    upstream = await aiohttp_server(up)
    forwards = (f"upstreams:\n  svc: {{ url: 'http://127.0.0.1:{upstream.port}/v1' }}\n"
                "forwards:\n  upload: { upstream: svc, path: /upload, methods: [POST] }\n")
    async with serving(tmp_path, forwards=forwards) as port:
        reply = await exchange(port, post("/api/upload", gzip.compress(TEXT), "Content-Encoding: gzip",
                                          "Connection: close"))
    assert parse(reply)[0] == 200
    assert received == [(None, TEXT)]


BROKEN = {
    "not gzip at all": ("gzip", b"this was never compressed"),
    "truncated in its trailer": ("gzip", gzip.compress(TEXT)[:-4]),
    "truncated mid-stream": ("gzip", gzip.compress(bytes(range(256)) * 100)[:300]),
    "garbage after the end": ("gzip", gzip.compress(TEXT) + b"trailing junk"),
    "data after the deflate end": ("deflate", deflate(TEXT, zlib.MAX_WBITS) + b"more"),
    "a coding the gateway does not decode": ("br", b"\x0b\x02\x80hello\x03"),
    "too many gzip members": ("gzip", gzip.compress(b"") * (MAX_MEMBERS + 1)),
}


@pytest.mark.parametrize(("coding", "body"), BROKEN.values(), ids=BROKEN.keys())
async def test_a_body_that_cannot_be_decoded_is_a_400(tmp_path, coding, body):
    async with serving(tmp_path) as port:
        reply = await exchange(port, post("/api/echo", body, f"Content-Encoding: {coding}", "Connection: close"))
    status, headers, got, _ = parse(reply)
    assert (status, headers["content-type"]) == (400, "application/json"), reply
    assert json.loads(got)["error"] == "bad_request"


@pytest.mark.parametrize(("coding", "body"), BROKEN.values(), ids=BROKEN.keys())
async def test_a_body_that_cannot_be_decoded_is_a_400_from_a_forward_too(tmp_path, aiohttp_server, coding, body):
    async def upload(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    up = web.Application()
    up.router.add_post("/v1/upload", upload)
    upstream = await aiohttp_server(up)
    forwards = (f"upstreams:\n  svc: {{ url: 'http://127.0.0.1:{upstream.port}/v1' }}\n"
                "forwards:\n  upload: { upstream: svc, path: /upload, methods: [POST] }\n")
    async with serving(tmp_path, forwards=forwards) as port:
        reply = await exchange(port, post("/api/upload", body, f"Content-Encoding: {coding}", "Connection: close"))
    status, _, got, _ = parse(reply)
    assert (status, json.loads(got)["error"]) == (400, "bad_request"), reply


async def test_a_gzip_bomb_is_refused_after_decoding_no_more_than_the_limit(tmp_path):
    bomb = gzip_zeros(512, crc=False)  # ~0.5 MB on the wire (under the limit, so it is read), 512 MiB inflated
    async with serving(tmp_path) as port:
        reply = await exchange(port, post("/api/keep", bomb, "Content-Encoding: gzip", "Connection: close"))
        status, _, body, _ = parse(reply)
        assert status == 413 and json.loads(body)["error"] == "payload_too_large"
        [content] = route_module("keep").SEEN
        assert 1 << 20 < content.total_bytes <= (1 << 20) + SLICE  # the default max_body: 1 MiB
        # the rest of the upload was drained as it came, compressed: not one more byte was inflated
        reply = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        assert parse(reply)[0] == 200
        assert content.total_bytes <= (1 << 20) + SLICE


async def test_a_gzip_bomb_to_a_route_that_never_reads_is_never_inflated(tmp_path):
    async with serving(tmp_path) as port:
        reply = await exchange(port, post("/api/ignore", gzip_zeros(512, crc=False), "Content-Encoding: gzip",
                                          "Connection: close"))
    assert parse(reply)[0] == 200


async def test_a_gzip_bomb_to_a_forward_is_413_and_the_upstream_gets_at_most_the_limit(tmp_path, aiohttp_server):
    received = []

    async def upload(request: web.Request) -> web.Response:
        n = 0
        try:
            async for chunk in request.content.iter_any():
                n += len(chunk)
        finally:
            received.append(n)
        return web.json_response({"n": n})

    up = web.Application()
    up.router.add_post("/v1/upload", upload)
    upstream = await aiohttp_server(up)
    forwards = (f"upstreams:\n  svc: {{ url: 'http://127.0.0.1:{upstream.port}/v1' }}\n"
                "forwards:\n  upload: { upstream: svc, path: /upload, methods: [POST] }\n")
    async with serving(tmp_path, forwards=forwards) as port:
        reply = await exchange(port, post("/api/upload", gzip_zeros(512, crc=False), "Content-Encoding: gzip",
                                          "Connection: close"))
    status, _, body, _ = parse(reply)
    assert (status, json.loads(body)["error"]) == (413, "payload_too_large")
    assert sum(received) <= 1 << 20


async def test_decoding_gives_the_event_loop_back_between_slices(tmp_path):
    """While one request inflates 16 MiB, every turn of the event loop sees it advance by a slice at most.

    A sibling task records how far the decoding got each time it runs: with aiohttp's own decoding the
    whole body (one network read of ~16 KiB) is inflated between two of its turns."""
    bomb = gzip_zeros(16)
    async with serving(tmp_path) as port:
        reply_task = asyncio.ensure_future(exchange(port, post("/api/count", bomb, "Content-Encoding: gzip",
                                                               "Connection: close")))
        seen = route_module("count").SEEN
        progress = []
        while not reply_task.done():
            await asyncio.sleep(0)
            progress.append(seen[0].total_bytes if seen else 0)
        reply = await reply_task
    status, _, body, _ = parse(reply)
    assert (status, json.loads(body)) == (200, {"n": 16 << 20})
    steps = [b - a for a, b in zip(progress, progress[1:], strict=False)]
    assert sum(steps) == 16 << 20
    assert max(steps) <= 2 * SLICE, max(steps)


# -- the decoder on its own ------------------------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_every_step_is_bounded_in_output_and_input(coding):
    data = bytes(range(256)) * 2000 + bytes(3 << 20)  # some variety, then a long run of zeros
    packed = gzip.compress(data) if coding == "gzip" else deflate(data, zlib.MAX_WBITS)
    inflater = Inflater(coding)
    out = []
    for at in range(0, len(packed), 50_000):  # fed in pieces larger than a window
        inflater.feed(packed[at : at + 50_000])
        while True:
            before = inflater._pos
            step = inflater.step()
            if step is None:
                break
            assert len(step) <= SLICE
            assert inflater._pos - before <= WINDOW
            out.append(step)
    inflater.finish()
    assert b"".join(out) == data


def test_an_empty_compressed_body_and_an_empty_body_both_decode_to_nothing():
    for body in (gzip.compress(b""), b""):
        inflater = Inflater("gzip")
        if body:
            inflater.feed(body)
        while inflater.step() is not None:
            pass
        inflater.finish()
