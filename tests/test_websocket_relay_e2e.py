"""WebSocket relaying through the real ``gateway serve`` (a subprocess), against a real aiohttp WebSocket upstream
on 127.0.0.1, at the level of frames: a 10 MB message the client sends in fragments, a ping and its pong, a client
that vanishes without a close frame, and what the access line and ``/metrics`` say a connection carried.

aiohttp's client cannot fragment a message, so ``RawSocket`` speaks RFC 6455 itself on an asyncio stream: a plain
HTTP/1.1 upgrade, then masked frames out and unmasked frames in.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from e2e_support import ENV, OPENAI_KEY, running_gateway

WAIT = 10.0  # seconds: reached only when the behaviour under test is broken
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
BIG = 10 * 1024 * 1024  # the fragmented message: 10 MB
ROUTE = "/api/realtime"
CONFIG = """\
upstreams:
  rt:
    url: http://127.0.0.1:{port}/v1
    inject: {{ headers: {{ Authorization: "Bearer ${{OPENAI_API_KEY}}" }} }}
forwards:
  realtime: {{ upstream: rt, path: /realtime, websocket: true, max_message: 16mb }}
"""

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Upstream:
    """A realtime upstream: checks the injected key, records every message whole, echoes it (text as ``echo:``
    + text, binary as is), and sets ``closed`` once its side of the socket is closed."""

    def __init__(self) -> None:
        self.received: list[tuple[WSMsgType, str | bytes]] = []
        self.close_code: int | None = None
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/v1/realtime", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {OPENAI_KEY}":
            return web.json_response({"error": "bad key"}, status=401)
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        self.opened.set()
        try:
            async for msg in ws:
                self.received.append((msg.type, msg.data))
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str("echo:" + msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
        finally:
            self.close_code = ws.close_code
            self.closed.set()
        return ws


async def start_upstream(aiohttp_server: Any) -> tuple[Upstream, int]:
    up = Upstream()
    server = await aiohttp_server(up.app, access_log=None)  # no access log: the upgrade line would carry the key
    return up, server.port


def mask(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 §5.3: each byte XOR the key's byte at its index mod 4 (as one big integer: fast at 10 MB)."""
    if not payload:
        return payload
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One client frame: masked, with the 7-, 16- or 64-bit length its size calls for."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = os.urandom(4)
    return head + key + mask(payload, key)


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes


@dataclass
class RawSocket:
    """A WebSocket client on a bare asyncio stream: every frame it writes and reads is visible."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    frames: list[Frame] = field(default_factory=list)  # every frame read, control frames included

    @classmethod
    async def open(cls, port: int, path: str) -> RawSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**16)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        assert status_line.split()[1] == "101", head
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        assert headers["sec-websocket-accept"] == accept, headers
        assert "sec-websocket-extensions" not in headers  # none was offered: frames are plain
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_frame(self) -> Frame:
        b0, b1 = await self.reader.readexactly(2)
        assert not b1 & 0x80, "a server's frames are never masked (RFC 6455 §5.1)"
        assert not b0 & 0x70, "no extension was negotiated: RSV bits must be 0"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        got = Frame(bool(b0 & 0x80), b0 & 0x0F, await self.reader.readexactly(n))
        self.frames.append(got)
        return got

    async def read_message(self, max_frames: int = 10_000) -> tuple[int, bytes]:
        """The next data message, reassembled from its frames; control frames on the way are kept in ``frames``."""
        opcode, parts = None, []
        for _ in range(max_frames):
            got = await asyncio.wait_for(self.read_frame(), WAIT)
            if got.opcode >= 0x8:  # control frames may come between fragments (§5.4)
                assert got.opcode != OP_CLOSE, f"closed: {got.payload!r}"
                continue
            if opcode is None:
                assert got.opcode in (OP_TEXT, OP_BINARY), got.opcode
                opcode = got.opcode
            else:
                assert got.opcode == OP_CONT, got.opcode
            parts.append(got.payload)
            if got.fin:
                return opcode, b"".join(parts)
        raise AssertionError(f"no whole message within {max_frames} frames")

    async def read_control(self, opcode: int, max_frames: int = 100) -> Frame:
        for _ in range(max_frames):
            got = await asyncio.wait_for(self.read_frame(), WAIT)
            if got.opcode == opcode:
                return got
        raise AssertionError(f"no frame with opcode {opcode:#x} within {max_frames} frames")

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), WAIT)
        except OSError:
            pass


async def test_a_10mb_message_sent_in_fragments_arrives_whole_and_its_echo_comes_back(aiohttp_server, tmp_path):
    up, port = await start_upstream(aiohttp_server)
    message = os.urandom(BIG)
    # fragments of every length encoding: 7-bit (100), 16-bit (60000), 64-bit (1 MB each), and the rest
    cuts = [0, 100, 100 + 60_000, *range(100 + 60_000 + 2**20, BIG, 2**20), BIG]
    pieces = [message[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    assert len(pieces) >= 10 and b"".join(pieces) == message
    async with running_gateway(tmp_path, CONFIG.format(port=port), ENV) as gw:
        ws = await RawSocket.open(gw.port, ROUTE)
        try:
            await asyncio.wait_for(up.opened.wait(), WAIT)
            for i, piece in enumerate(pieces):
                await ws.send(frame(OP_BINARY if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1))
            opcode, echo = await ws.read_message()
            assert len(up.received) == 1, [(t, len(d)) for t, d in up.received]  # one message, not one per frame
            kind, data = up.received[0]
            assert kind == WSMsgType.BINARY and len(data) == BIG and data == message
            assert opcode == OP_BINARY and len(echo) == BIG and echo == message
            await ws.send(frame(OP_CLOSE, struct.pack("!H", 1000)))
            closing = await ws.read_control(OP_CLOSE)
            assert struct.unpack("!H", closing.payload[:2]) == (1000,)
        finally:
            await ws.close()
        await asyncio.wait_for(up.closed.wait(), WAIT)
        assert up.close_code == 1000


async def test_a_client_ping_is_answered_with_a_pong_carrying_its_payload(aiohttp_server, tmp_path):
    # The gateway's own pings (HEARTBEAT in gateway/pipeline/websocket.py) come every 30 s and cannot be configured:
    # too slow for a test. What is proven here is the other half: the gateway answers a client's ping at once, with
    # the same payload, also one sent between the fragments of a message, which still arrives whole.
    up, port = await start_upstream(aiohttp_server)
    async with running_gateway(tmp_path, CONFIG.format(port=port), ENV) as gw:
        ws = await RawSocket.open(gw.port, ROUTE)
        try:
            await asyncio.wait_for(up.opened.wait(), WAIT)
            payload = b"keepalive-\x00\xff-" + os.urandom(16)
            await ws.send(frame(OP_PING, payload))
            pong = await ws.read_control(OP_PONG)
            assert pong.fin and pong.payload == payload
            # a ping in the middle of a fragmented text message (RFC 6455 §5.5: control frames may be interleaved),
            # the fragments cut inside the two bytes of "ö" (only the whole message must be valid UTF-8)
            text = "hello wörld".encode()
            cut = text.index("ö".encode()) + 1
            await ws.send(frame(OP_TEXT, text[:cut], fin=False))
            await ws.send(frame(OP_PING, b"between"))
            await ws.send(frame(OP_CONT, text[cut:]))
            opcode, echo = await ws.read_message()
            assert (opcode, echo.decode()) == (OP_TEXT, "echo:hello wörld")
            assert any(f.opcode == OP_PONG and f.payload == b"between" for f in ws.frames)
            assert up.received == [(WSMsgType.TEXT, "hello wörld")]  # the pings stayed at the gateway
        finally:
            await ws.close()
        await asyncio.wait_for(up.closed.wait(), WAIT)


@pytest.mark.parametrize("how", ["fin", "reset"])
async def test_a_client_that_vanishes_gets_the_upstream_closed_within_a_second(aiohttp_server, tmp_path, how):
    up, port = await start_upstream(aiohttp_server)
    async with running_gateway(tmp_path, CONFIG.format(port=port), ENV) as gw:
        ws = await RawSocket.open(gw.port, ROUTE)
        await asyncio.wait_for(up.opened.wait(), WAIT)
        await ws.send(frame(OP_TEXT, b"still here"))
        assert await ws.read_message() == (OP_TEXT, b"echo:still here")  # the relay runs both ways
        assert not up.closed.is_set()
        sock = ws.writer.get_extra_info("socket")
        if how == "reset":  # SO_LINGER 0: the kernel sends RST, not FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.writer.transport.abort()  # no close frame: the TCP connection just goes away
        gone = time.monotonic()
        await asyncio.wait_for(up.closed.wait(), 1.0)
        assert time.monotonic() - gone < 1.0
        assert up.close_code == 1001  # "going away": the client left (README, Realtime APIs)
        assert up.received == [(WSMsgType.TEXT, "still here")]


async def access_line(gw: Any, route: str) -> dict[str, Any]:
    """The gateway's JSON access line for ``route`` (stdout), polled with a deadline."""
    deadline = time.monotonic() + WAIT
    for _ in range(10_000):
        for raw in gw.server.stdout.splitlines():
            if raw.startswith("{") and (line := json.loads(raw)).get("route") == route:
                return line
        assert time.monotonic() < deadline, f"no access line for {route}:\n{gw.server.stdout}"
        await asyncio.sleep(0.02)
    raise AssertionError("no access line")


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(f"{name}{{{want}}} ")]
    assert len(values) == 1, f"{name}{{{want}}} in:\n{text}"
    return values[0]


async def exchange(gw: Any, up: Upstream, texts: list[str], blob: bytes) -> tuple[float, float]:
    """Send ``texts`` then ``blob``, read each echo, close with 1000. Returns the span in which the gateway
    certainly held the connection, in ms as seen from here, and the perf_counter() before connecting."""
    before = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{gw.port}{ROUTE}", autoping=False) as ws:
            opened = time.perf_counter()
            for text in texts:
                await ws.send_str(text)
                msg = await ws.receive(WAIT)
                assert (msg.type, msg.data) == (WSMsgType.TEXT, "echo:" + text)
            await ws.send_bytes(blob)
            msg = await ws.receive(WAIT)
            assert (msg.type, msg.data) == (WSMsgType.BINARY, blob)
            closing = time.perf_counter()
            await ws.close(code=1000)
    await asyncio.wait_for(up.closed.wait(), WAIT)
    return (closing - opened) * 1000, before


async def test_the_access_line_and_metrics_count_each_direction_exactly(aiohttp_server, tmp_path):
    up, port = await start_upstream(aiohttp_server)
    texts, blob = ["hello", "second message"], bytes(range(256)) * 4  # 5 + 14 bytes of text, 1024 of binary
    async with running_gateway(tmp_path, CONFIG.format(port=port), ENV) as gw:
        at_least, before = await exchange(gw, up, texts, blob)
        line = await access_line(gw, ROUTE)
        # the line is written after the gateway stopped its clock (which may be after this client saw its socket
        # close: the gateway then still closes the upstream's), so from connecting to reading the line bounds it
        at_most = (time.perf_counter() - before) * 1000
        async with aiohttp.ClientSession() as session, session.get(f"{gw.base}/metrics") as resp:
            assert resp.status == 200
            scraped = await resp.text()
    bytes_in = 5 + 14 + 1024
    bytes_out = len("echo:hello") + len("echo:second message") + 1024
    assert (line["status"], line["method"], line["upstream"]) == (101, "GET", "rt"), line
    assert (line["ws_messages_in"], line["ws_messages_out"], line["ws_close_code"]) == (3, 3, 1000), line
    assert (line["ws_bytes_in"], line["ws_bytes_out"]) == (bytes_in, bytes_out), line
    # the gateway's clock ran from before its 101 to after it read the close frame: at least the span between
    # this client reading the 101 and sending its close, at most the span from connecting to reading the line
    assert isinstance(line["duration_ms"], float), line
    assert at_least - 0.01 <= line["duration_ms"] <= at_most + 0.01, (at_least, line["duration_ms"], at_most)
    for direction, size, count in (("in", bytes_in, 3), ("out", bytes_out, 3)):
        assert metric(scraped, "gateway_websocket_bytes_total", direction=direction, route=ROUTE) == size
        assert metric(scraped, "gateway_websocket_messages_total", direction=direction, route=ROUTE) == count


async def test_text_bytes_are_counted_as_utf8_bytes_not_characters(aiohttp_server, tmp_path):
    up, port = await start_upstream(aiohttp_server)
    texts = ["héllo wörld ✓"]  # 13 characters, 17 bytes in UTF-8
    async with running_gateway(tmp_path, CONFIG.format(port=port), ENV) as gw:
        await exchange(gw, up, texts, b"")
        line = await access_line(gw, ROUTE)
        async with aiohttp.ClientSession() as session, session.get(f"{gw.base}/metrics") as resp:
            scraped = await resp.text()
    bytes_in = len(texts[0].encode())
    bytes_out = len(("echo:" + texts[0]).encode())
    assert (line["ws_bytes_in"], line["ws_bytes_out"]) == (bytes_in, bytes_out), line
    assert metric(scraped, "gateway_websocket_bytes_total", direction="in", route=ROUTE) == bytes_in
    assert metric(scraped, "gateway_websocket_bytes_total", direction="out", route=ROUTE) == bytes_out
