"""WebSocket forwards against a real WebSocket upstream on 127.0.0.1: relay both ways, secrets, subprotocols, close
codes, failures on either side, limits, and the Origin check."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from upstream_support import ENV, SECRET, free_port

from gateway.app import build_table, create_app
from gateway.config import load_config
from gateway.pipeline.websocket import offered_protocols

WAIT = 5
CONFIG = """{clients}
upstreams:
  rt:
    url: {url}
    timeout: {timeout}
    inject: {{ headers: {{ Authorization: "Bearer ${{SVC_KEY}}" }}, query: {{ key: "${{SVC_QKEY}}" }} }}
forwards:
  realtime/[model]: {{ upstream: rt, path: "/v1/realtime?model={{model}}", websocket: true{extra} }}
{more}"""


class Upstream:
    """A WebSocket server that records its handshakes and lets each test script the conversation."""

    def __init__(self) -> None:
        self.handshakes: list[web.Request] = []
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.received: list[str | bytes] = []
        self.script = self.echo
        self.protocols: tuple[str, ...] = ("openai-beta.realtime-v1",)
        self.app = web.Application()
        self.app.router.add_get("/v1/realtime", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.handshakes.append(request)
        ws = web.WebSocketResponse(protocols=self.protocols, max_msg_size=64 * 1024 * 1024)
        await ws.prepare(request)
        self.ws = ws
        self.connected.set()
        try:
            await self.script(ws)
        finally:
            self.close_code = ws.close_code
            self.closed.set()
        return ws

    async def echo(self, ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            self.received.append(msg.data)
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(f"echo {msg.data} with {SECRET}" if msg.data == "leak" else f"echo {msg.data}")
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)


@pytest.fixture
async def rt(aiohttp_server, aiohttp_client, tmp_path):
    up = Upstream()

    async def make(extra: str = "", more: str = "", timeout: str = "2s", url: str | None = None, clients: str = "",
                   **client_kw):
        if url is None:
            server = await aiohttp_server(up.app, access_log=None)
            url = f"http://127.0.0.1:{server.port}"
        (tmp_path / "config.yaml").write_text(CONFIG.format(url=url, timeout=timeout, extra=extra, more=more,
                                                            clients=clients))
        config = load_config(tmp_path / "config.yaml", environ=ENV)
        return await aiohttp_client(create_app(config, build_table(config)), **client_kw)

    return up, make


async def test_messages_both_ways_with_the_secret_injected_and_nothing_of_the_client(rt):
    up, make = rt
    client = await make()
    ws = await client.ws_connect("/api/realtime/gpt-4o", headers={"Authorization": "Bearer client-token",
                                                                   "Cookie": "sid=1", "X-API-Key": "ck"})
    await ws.send_str("hi")
    assert (await ws.receive(WAIT)).data == "echo hi"
    await ws.send_bytes(b"\x00\x01\xff" * 1000)
    assert (await ws.receive(WAIT)).data == b"\x00\x01\xff" * 1000
    await ws.close()
    seen = up.handshakes[0]
    assert seen.headers["Authorization"] == f"Bearer {SECRET}"
    assert "Cookie" not in seen.headers and "X-API-Key" not in seen.headers
    assert seen.query["model"] == "gpt-4o" and seen.query["key"] == ENV["SVC_QKEY"]
    await asyncio.wait_for(up.closed.wait(), WAIT)


async def test_a_secret_the_upstream_sends_is_scrubbed(rt):
    up, make = rt
    client = await make()
    ws = await client.ws_connect("/api/realtime/m")
    await ws.send_str("leak")
    msg = await ws.receive(WAIT)
    assert msg.data == "echo leak with [REDACTED]"
    await ws.close()


async def test_subprotocols_pass_without_credentials(rt):
    up, make = rt
    client = await make()
    ws = await client.ws_connect("/api/realtime/m", protocols=(
        "realtime", "openai-insecure-api-key.sk-proj-abcdef0123456789", "openai-beta.realtime-v1",
        "bearer.eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"))
    assert ws.protocol == "openai-beta.realtime-v1"
    offered = up.handshakes[0].headers["Sec-WebSocket-Protocol"]
    assert [p.strip() for p in offered.split(",")] == ["realtime", "openai-beta.realtime-v1"]
    await ws.close()


@pytest.mark.parametrize(("header", "kept"), [
    ("openai-beta.realtime-v1", ["openai-beta.realtime-v1"]),
    ("a, openai-insecure-api-key.sk-x, b", ["a", "b"]),
    ("x-api-key.123, my_token, Bearer.abc, auth.x, secret", []),
    ("aaaaaaaa.bbbbbbbbb.cccccccccc", []),
    (" , ,", []),
])
def test_offered_protocols_drop_credentials(header, kept):
    assert offered_protocols(header) == kept


async def test_close_codes_and_reasons_pass_both_ways(rt):
    up, make = rt

    async def closer(ws: web.WebSocketResponse) -> None:
        msg = await ws.receive()
        if msg.data == "close please":
            await ws.close(code=4001, message=f"bye {SECRET}".encode())
            return
        while (msg := await ws.receive()).type != WSMsgType.CLOSE:
            pass
        up.close_frame = (msg.data, msg.extra)

    up.script = closer
    client = await make()
    ws = await client.ws_connect("/api/realtime/m")
    await ws.send_str("close please")
    msg = await ws.receive(WAIT)
    assert msg.type == WSMsgType.CLOSE and msg.data == 4001 and msg.extra == "bye [REDACTED]"
    await asyncio.wait_for(up.closed.wait(), WAIT)
    up.closed.clear()
    ws = await client.ws_connect("/api/realtime/m")
    await ws.send_str("stay")
    await ws.close(code=4002, message=b"client done")
    await asyncio.wait_for(up.closed.wait(), WAIT)
    assert up.close_frame == (4002, "client done")


async def test_an_upstream_that_dies_closes_the_client(rt):
    up, make = rt

    async def dies(ws: web.WebSocketResponse) -> None:
        await ws.receive()
        ws._req.transport.abort()  # gone without a close frame

    up.script = dies
    client = await make()
    ws = await client.ws_connect("/api/realtime/m")
    await ws.send_str("x")
    msg = await ws.receive(WAIT)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED) and ws.close_code == 1011


async def test_a_client_that_vanishes_closes_the_upstream(rt):
    up, make = rt
    client = await make()
    ws = await client.ws_connect("/api/realtime/m")
    await ws.send_str("x")
    await ws.receive(WAIT)
    ws._response.connection.transport.abort()  # the browser tab is gone
    await asyncio.wait_for(up.closed.wait(), WAIT)


async def test_a_message_over_max_message_closes_with_1009(rt):
    up, make = rt
    client = await make(extra=", max_message: 1kb")
    ws = await client.ws_connect("/api/realtime/m", max_msg_size=0)
    await ws.send_bytes(b"x" * 2000)
    msg = await ws.receive(WAIT)
    assert msg.type == WSMsgType.CLOSE and msg.data == 1009
    assert up.received == []
    await asyncio.wait_for(up.closed.wait(), WAIT)


async def test_ten_megabytes_in_one_message_and_in_fragments(rt):
    up, make = rt
    client = await make(extra=", max_message: 16mb")
    ws = await client.ws_connect("/api/realtime/m", max_msg_size=0)
    big = bytes(range(256)) * (10 * 4096)
    await ws.send_bytes(big)
    assert (await ws.receive(WAIT * 4)).data == big
    await ws.close()
    # a fragmented text message from a raw client: the upstream receives it whole
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /api/realtime/m HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    parts = [b"frag", b"mented ", b"message"]
    for i, part in enumerate(parts):
        opcode = 0x1 if i == 0 else 0x0
        fin = 0x80 if i == len(parts) - 1 else 0
        writer.write(bytes([fin | opcode, 0x80 | len(part)]) + b"\0\0\0\0" + part)  # masked with a zero key
    await writer.drain()
    frame = await reader.readexactly(2)
    text = await reader.readexactly(frame[1] & 0x7F)
    assert text == b"echo fragmented message"
    writer.close()
    await writer.wait_closed()


async def test_a_slow_client_holds_the_upstream_back(rt):
    up, make = rt
    sent = []

    async def flood(ws: web.WebSocketResponse) -> None:
        chunk = b"x" * (1024 * 1024)
        for _ in range(256):  # up to 256 MiB, if nothing pushed back
            try:
                await asyncio.wait_for(ws.send_bytes(chunk), 2)
            except TimeoutError:
                return  # back-pressure reached the upstream
            sent.append(1)

    up.script = flood
    client = await make(extra=", max_message: 2mb")
    ws = await client.ws_connect("/api/realtime/m", max_msg_size=0)  # and never reads
    await asyncio.wait_for(up.closed.wait(), 60)
    assert len(sent) < 64, f"{len(sent)} MiB went out to a client that read nothing"
    await ws.close()


async def test_idle_connections_are_closed(rt):
    up, make = rt
    client = await make(extra=", idle_timeout: 300ms")
    ws = await client.ws_connect("/api/realtime/m")
    msg = await ws.receive(WAIT)
    assert msg.type == WSMsgType.CLOSE and msg.data == 1001 and msg.extra == "idle timeout"
    await asyncio.wait_for(up.closed.wait(), WAIT)


@pytest.mark.parametrize(("origin", "status"), [
    ("https://evil.example", 403), ("null", 403), ("file://", 403), ("http://127.0.0.1:1", 403), (None, 101),
])
async def test_a_cross_site_upgrade_is_refused_by_default(rt, origin, status):
    up, make = rt
    client = await make()
    headers = {"Origin": origin} if origin else {}
    if status == 101:
        ws = await client.ws_connect("/api/realtime/m", headers=headers)
        await ws.close()
    else:
        with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
            await client.ws_connect("/api/realtime/m", headers=headers)
        assert raised.value.status == status
        assert up.handshakes == []


async def test_the_same_origin_is_accepted(rt):
    up, make = rt
    client = await make()
    ws = await client.ws_connect("/api/realtime/m", headers={"Origin": f"http://127.0.0.1:{client.port}"})
    await ws.send_str("hi")
    assert (await ws.receive(WAIT)).data == "echo hi"
    await ws.close()


async def test_an_upstream_that_refuses_the_upgrade_is_a_502(rt, aiohttp_server):
    up, make = rt
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": SECRET}, status=401)

    refuser = web.Application()
    refuser.router.add_get("/v1/realtime", refuse)
    server = await aiohttp_server(refuser)
    client = await make(url=f"http://127.0.0.1:{server.port}")
    resp = await client.get("/api/realtime/m", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                        "Sec-WebSocket-Version": "13"})
    body = await resp.read()
    assert resp.status == 502 and json.loads(body)["error"] == "upstream_error"
    assert SECRET.encode() not in body


async def test_an_unreachable_or_silent_upstream_is_a_502_or_504(rt):
    up, make = rt
    client = await make(url=f"http://127.0.0.1:{await free_port()}")
    with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
        await client.ws_connect("/api/realtime/m")
    assert raised.value.status == 502
    held: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)  # accepts, never answers
    port = silent.sockets[0].getsockname()[1]
    client = await make(url=f"http://127.0.0.1:{port}", timeout="300ms")
    with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
        await client.ws_connect("/api/realtime/m")
    assert raised.value.status == 504
    for writer in held:
        writer.close()
    silent.close()
    await silent.wait_closed()


async def test_a_plain_get_is_told_to_upgrade(rt):
    up, make = rt
    client = await make()
    resp = await client.get("/api/realtime/m")
    assert resp.status == 400 and (await resp.json())["error"] == "bad_request"
    assert resp.headers["Upgrade"] == "websocket"
    assert (await client.post("/api/realtime/m")).status == 405


@pytest.mark.parametrize(("yaml", "problem"), [
    ('  x: { upstream: rt, path: /x, websocket: true, response: { select: "a" } }',
     "response does not apply to a WebSocket forward"),
    ("  x: { upstream: rt, path: /x, websocket: true, methods: [POST] }", "opened with GET"),
    ("  x: { upstream: rt, path: /x, max_message: 1mb }", "applies to WebSocket forwards only"),
    ("  x: { upstream: wsonly, path: /x }", "only a forward with websocket: true"),
])
def test_websocket_config_mistakes_are_one_clear_line(tmp_path, yaml, problem):
    from gateway.yamlsource import ConfigError

    (tmp_path / "config.yaml").write_text(CONFIG.format(url="http://127.0.0.1:1", timeout="1s", extra="", more="",
                                                        clients="")
                                          + "  wsonly_user: { upstream: rt, path: /y, websocket: true }\n"
                                          + yaml + "\n" + "upstreams_extra: 1\n" * 0)
    text = (tmp_path / "config.yaml").read_text().replace(
        "forwards:", "  wsonly: { url: \"wss://rt.example/v1\" }\nforwards:")
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "config.yaml", environ=ENV)
    assert [p for p in map(str, raised.value.problems) if problem in p], raised.value.problems


KEY = "ck-live-BROWSER-0123456789abcdef"


@pytest.mark.parametrize("how", ["header", "protocol", "query"])
async def test_a_browser_brings_its_client_key_in_a_subprotocol_or_the_query(rt, how):
    up, make = rt
    client = await make(clients=f'clients:\n  api_keys: ["{KEY}"]\n')
    with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
        await client.ws_connect("/api/realtime/m")
    assert raised.value.status == 401
    path, options = "/api/realtime/m", {}
    if how == "header":
        options["headers"] = {"X-API-Key": KEY}
    elif how == "protocol":
        options["protocols"] = ("openai-beta.realtime-v1", f"bearer.{KEY}")
    else:
        path += f"?x=1&access_token={KEY}"
    ws = await client.ws_connect(path, **options)
    await ws.send_str("hi")
    assert (await ws.receive(WAIT)).data == "echo hi"
    await ws.close()
    seen = up.handshakes[-1]
    assert KEY not in str(seen.headers) and KEY not in seen.raw_path
    assert "access_token" not in seen.query and seen.headers["Authorization"] == f"Bearer {SECRET}"
    if how == "query":
        assert seen.query["x"] == "1"


async def test_a_signed_in_users_token_in_a_subprotocol(rt, aiohttp_server):
    from jwt_support import AUDIENCE, ISSUER, Idp

    idp = Idp()
    url = await idp.serve(aiohttp_server)
    up, make = rt
    client = await make(clients=f"clients:\n  jwt: {{ jwks_url: '{url}', issuer: '{ISSUER}', audience: {AUDIENCE} }}\n")
    token = idp.token(sub="user_7")
    with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
        await client.ws_connect("/api/realtime/m", protocols=("bearer.not-a-token",))
    assert raised.value.status == 401
    ws = await client.ws_connect("/api/realtime/m", protocols=("openai-beta.realtime-v1", f"bearer.{token}"))
    assert ws.protocol == "openai-beta.realtime-v1"
    await ws.close()
    assert token not in str(up.handshakes[-1].headers)


async def test_each_connection_gets_an_access_line_and_metrics(aiohttp_server, tmp_path, caplog):
    import logging

    from gateway.keys import METRICS
    from gateway.observe.access import AccessLog
    from gateway.observe.logs import ACCESS, JsonLines

    up = Upstream()
    server = await aiohttp_server(up.app, access_log=None)
    (tmp_path / "config.yaml").write_text(CONFIG.format(url=f"http://127.0.0.1:{server.port}", timeout="2s",
                                                        extra="", more="", clients=""))
    config = load_config(tmp_path / "config.yaml", environ=ENV)
    app = create_app(config, build_table(config))
    gw = await aiohttp_server(app, access_log_class=AccessLog, access_log=logging.getLogger(ACCESS))
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://127.0.0.1:{gw.port}/api/realtime/m")
        for text in ("one", "two"):
            await ws.send_str(text)
            await ws.receive(WAIT)
        await ws.send_bytes(b"\x00" * 10)
        await ws.receive(WAIT)
        await ws.close(code=4003)
    await asyncio.wait_for(up.closed.wait(), WAIT)

    async def logged() -> dict:
        while not (lines := [r for r in caplog.records if r.name == ACCESS]):
            await asyncio.sleep(0.01)
        return json.loads(JsonLines().format(lines[0]))

    line = await asyncio.wait_for(logged(), WAIT)
    assert line["route"] == "/api/realtime/[model]" and line["status"] == 101 and line["upstream"] == "rt"
    assert (line["ws_messages_in"], line["ws_messages_out"], line["ws_close_code"]) == (3, 3, 4003)
    assert line["ws_bytes_in"] == 16 and line["ws_bytes_out"] == len("echo one") + len("echo two") + 10
    text = app[METRICS].render().decode()
    assert 'gateway_websocket_messages_total{direction="in",route="/api/realtime/[model]"} 3.0' in text
