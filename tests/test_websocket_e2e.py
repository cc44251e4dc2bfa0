"""WebSocket forwards through the real ``gateway serve``: a browser's ``WebSocket`` in headless Chromium talks to a
realtime upstream without ever holding its key; the upgrade is rate limited like any request."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from browser_support import launch_chromium, open_page
from e2e_support import running_gateway

SECRET = "sk-live-REALTIME-TOPSECRET-4455aa"
WAIT = 10
CONFIG = """\
clients:
  cors: {{ origins: ["{origin}"] }}
upstreams:
  openai:
    url: http://127.0.0.1:{port}/v1
    inject: {{ headers: {{ Authorization: "Bearer ${{OPENAI_API_KEY}}" }} }}
forwards:
  realtime: {{ upstream: openai, path: /realtime, websocket: true, rate_limit: {rate} }}
"""


class Realtime:
    """Stands in for OpenAI Realtime: checks the key, picks the beta subprotocol, answers each event."""

    def __init__(self) -> None:
        self.handshakes: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_get("/v1/realtime", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.handshakes.append(dict(request.headers))
        if request.headers.get("Authorization") != f"Bearer {SECRET}":
            return web.json_response({"error": "bad key"}, status=401)
        ws = web.WebSocketResponse(protocols=("openai-beta.realtime-v1",))
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "session.created"}))
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                event = json.loads(msg.data)
                await ws.send_str(json.dumps({"type": "response.done", "echo": event.get("text")}))
        return ws


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Any:
    browser = launch_chromium(tmp_path_factory.mktemp("chromium") / "profile")
    yield browser
    browser.stop()


async def page_origin(aiohttp_server: Any) -> str:
    async def index(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>app</title>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    return f"http://127.0.0.1:{(await aiohttp_server(app)).port}"


SOCKET = """
new Promise((resolve) => {
  const events = [];
  const ws = new WebSocket(%s, ["openai-beta.realtime-v1", "openai-insecure-api-key.%s"]);
  ws.onmessage = (e) => {
    events.push(JSON.parse(e.data).type);
    if (events.length === 1) ws.send(JSON.stringify({type: "response.create", text: "hello"}));
    else { ws.close(1000); resolve({protocol: ws.protocol, events, last: JSON.parse(e.data)}); }
  };
  ws.onclose = (e) => resolve({closed: e.code, events});
});
"""


async def test_a_browser_websocket_reaches_the_realtime_api_without_its_key(chromium, aiohttp_server, tmp_path):
    up = Realtime()
    port = (await aiohttp_server(up.app, access_log=None)).port
    allowed, other = await page_origin(aiohttp_server), await page_origin(aiohttp_server)
    config = CONFIG.format(origin=allowed, port=port, rate="100/minute")
    async with running_gateway(tmp_path, config, {"OPENAI_API_KEY": SECRET}) as gw:
        url = json.dumps(f"ws://localhost:{gw.port}/api/realtime")
        async with open_page(chromium, allowed + "/") as page:
            got = await page.evaluate(SOCKET % (url, "sk-in-the-browser-000"))
        assert got == {"protocol": "openai-beta.realtime-v1", "events": ["session.created", "response.done"],
                       "last": {"type": "response.done", "echo": "hello"}}, got
        seen = up.handshakes[0]
        assert seen["Authorization"] == f"Bearer {SECRET}"
        assert "sk-in-the-browser" not in json.dumps(seen)  # the page's own key never went upstream
        async with open_page(chromium, other + "/") as page:
            refused = await page.evaluate(SOCKET % (url, "x"))
        assert refused == {"closed": 1006, "events": []}  # the upgrade was refused (403): the browser saw no socket
        assert len(up.handshakes) == 1


async def test_the_upgrade_is_rate_limited_and_refusals_are_json(aiohttp_server, tmp_path):
    up = Realtime()
    port = (await aiohttp_server(up.app, access_log=None)).port
    config = CONFIG.format(origin="https://app.example.com", port=port, rate="2/minute")
    async with running_gateway(tmp_path, config, {"OPENAI_API_KEY": SECRET}) as gw:
        url = f"ws://127.0.0.1:{gw.port}/api/realtime"
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.ws_connect(url) as ws:
                    assert json.loads((await ws.receive(WAIT)).data)["type"] == "session.created"
            with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
                await session.ws_connect(url)
            assert raised.value.status == 429
            async with session.get(url.replace("ws:", "http:"), headers={
                    "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
                assert resp.status == 429 and (await resp.json())["error"] == "rate_limited"
                assert int(resp.headers["Retry-After"]) >= 1
    assert len(up.handshakes) == 2
