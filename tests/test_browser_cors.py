"""CORS proven in a real browser: a page on one loopback origin, in headless Chromium, calls the gateway on another.

The gateway is the real ``gateway serve`` (a subprocess) forwarding to a real upstream on 127.0.0.1. From the
allowed origin a JSON GET, a preflighted JSON POST and an SSE stream read with fetch + ReadableStream all succeed
and JavaScript can read the gateway's headers; from a third origin the browser blocks the same calls. The SSE
upstream sends its next event only once the page has acknowledged the last one (through the gateway), so the
arrival order recorded in the page proves the events came one by one, not buffered to the end.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from browser_support import launch_chromium, open_page
from e2e_support import running_gateway
from upstream_support import Recorder

SECRET = "sk-live-BROWSER-TOPSECRET-77aa55cc33"
WAIT = 10  # seconds an upstream waits for the page's acknowledgement: reached only when streaming is broken
# headers JavaScript must be able to read on every answer (SPEC §7): the forward is rate limited
READABLE = ("x-request-id", "x-trace", "ratelimit", "ratelimit-policy")
CONFIG = """\
clients:
  cors: {{ origins: ["{origin}"], credentials: {credentials} }}
{keys}
upstreams:
  svc:
    url: http://127.0.0.1:{port}/base
    inject: {{ headers: {{ Authorization: "Bearer ${{SVC_KEY}}" }} }}
    forward_headers: [X-Trace]
    expose_headers: [X-Trace]
forwards:
  svc/[...path]: {{ upstream: svc, path: "/{{path}}", methods: [GET, POST], rate_limit: 1000/minute }}
"""

# installed in the page once: each call returns what the page could see, or the error fetch rejected with
CALLS = """
window.GW = %s;
const attempt = async (call) => {
  try { return await call(); } catch (e) { return {error: `${e.name}: ${e.message}`}; }
};
const seen = async (r, body) => ({status: r.status, headers: Object.fromEntries(r.headers), body});
window.calls = {
  fetch: (path, init) => attempt(async () => {
    const r = await fetch(GW + path, init);
    return seen(r, await r.json());
  }),
  get: (init) => calls.fetch('/api/svc/items', init),
  post: () => calls.fetch('/api/svc/echo', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                           body: JSON.stringify({message: 'hi'})}),
  sse: () => attempt(async () => {
    const r = await fetch(GW + '/api/svc/events', {headers: {Accept: 'text/event-stream'}});
    const reader = r.body.getReader(), decoder = new TextDecoder(), order = [];
    let buffer = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      for (let end; (end = buffer.indexOf('\\n\\n')) >= 0; buffer = buffer.slice(end + 2)) {
        const data = buffer.slice(0, end).replace(/^data: /, '');
        order.push('received ' + data);
        const ack = await fetch(GW + '/api/svc/ack/' + data, {method: 'POST'});
        order.push('acknowledged ' + data + ' ' + ack.status);
      }
    }
    return seen(r, order);
  }),
};
"""


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Any:
    browser = launch_chromium(tmp_path_factory.mktemp("chromium") / "profile")
    yield browser
    browser.stop()


class Upstream(Recorder):
    """Items, an echo, and an SSE stream whose next event waits for the page's acknowledgement of the last."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []
        self.acks = {n: asyncio.Event() for n in (1, 2, 3)}
        self.route("GET", "/base/items", self.items)
        self.route("POST", "/base/echo", self.echo)
        self.route("GET", "/base/events", self.events)
        self.route("POST", "/base/ack/{n}", self.ack)

    async def items(self, request: web.Request) -> web.Response:
        return web.json_response({"items": [1, 2, 3]}, headers={"X-Trace": "t-1", "Server": "upstream/1.0"})

    async def echo(self, request: web.Request) -> web.Response:
        return web.json_response({"got": await request.json()}, headers={"X-Trace": "t-2"})

    async def events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Trace": "t-3"})
        await resp.prepare(request)
        for n, ack in self.acks.items():
            await resp.write(f"data: {n}\n\n".encode())
            self.order.append(f"sent {n}")
            await asyncio.wait_for(ack.wait(), WAIT)
        return resp

    async def ack(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        self.order.append(f"acknowledged {n}")
        self.acks[n].set()
        return web.json_response({"ok": n})


async def page_server(aiohttp_server: Any) -> str:
    """An origin serving one empty page, like a dev server (Vite on :5173) would serve the app."""
    async def index(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>app</title>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


async def scenario(aiohttp_server: Any, tmp_path: Any, *, credentials: str = "false", keys: str = "") -> Any:
    up = Upstream()
    allowed, other = await page_server(aiohttp_server), await page_server(aiohttp_server)
    config = CONFIG.format(origin=allowed, credentials=credentials, keys=keys, port=await up.serve(aiohttp_server))
    env = {"SVC_KEY": SECRET, "CLIENT_KEY": "ck-browser-0123456789"}
    return up, allowed, other, running_gateway(tmp_path, config, env)


def install(gw_port: int) -> str:
    return CALLS % json.dumps(f"http://localhost:{gw_port}")


async def test_the_allowed_origin_reads_json_posts_and_a_stream(chromium, aiohttp_server, tmp_path):
    up, allowed, _, gateway = await scenario(aiohttp_server, tmp_path)
    async with gateway as gw, open_page(chromium, allowed + "/") as page:
        await page.evaluate(install(gw.port))
        got = await page.evaluate("calls.get()")
        assert got.get("status") == 200, got
        assert got["body"] == {"items": [1, 2, 3]}
        posted = await page.evaluate("calls.post()")
        assert posted.get("status") == 200, posted
        assert posted["body"] == {"got": {"message": "hi"}}
        streamed = await page.evaluate("calls.sse()")
        assert streamed.get("status") == 200, streamed
        assert streamed["body"] == ["received 1", "acknowledged 1 200", "received 2", "acknowledged 2 200",
                                    "received 3", "acknowledged 3 200"]
        assert up.order == ["sent 1", "acknowledged 1", "sent 2", "acknowledged 2", "sent 3", "acknowledged 3"]
        for answer in (got, posted, streamed):
            for name in READABLE:
                assert answer["headers"].get(name), (name, answer["headers"])
            assert "server" not in answer["headers"]
    # the POST was preflighted (application/json) and the gateway answered that itself: the upstream saw no OPTIONS
    assert [(s.method, s.raw_path) for s in up.seen][:2] == [("GET", "/base/items"), ("POST", "/base/echo")]
    assert "OPTIONS" not in {s.method for s in up.seen}
    assert SECRET not in gw.output


async def test_another_origin_is_blocked_by_the_browser(chromium, aiohttp_server, tmp_path):
    up, _, other, gateway = await scenario(aiohttp_server, tmp_path)
    async with gateway as gw, open_page(chromium, other + "/") as page:
        await page.evaluate(install(gw.port))
        for call in ("calls.get()", "calls.post()", "calls.sse()"):
            answer = await page.evaluate(call)
            assert answer == {"error": "TypeError: Failed to fetch"}, (call, answer)
        refusals = await page.logged("blocked by CORS policy", 3)  # the browser's reason, not a network error
        for path in ("/api/svc/items", "/api/svc/echo", "/api/svc/events"):
            [refusal] = [entry for entry in refusals if f"{path}' from origin '{other}'" in entry]
            assert ("preflight" in refusal) == (path == "/api/svc/echo"), refusal
        assert "acknowledged 1" not in up.order  # the page never got the first event
        for ack in up.acks.values():  # end the stream: Chromium would drain the refused answer for 5 s otherwise
            ack.set()
    # a GET is a "simple" request: sent, but the page may not read it. The JSON POST needed a preflight, which the
    # gateway refused, so it never went out: nothing was spent upstream.
    assert ("POST", "/base/echo") not in [(s.method, s.raw_path) for s in up.seen]
    assert ("GET", "/base/items") in [(s.method, s.raw_path) for s in up.seen]


@pytest.mark.parametrize("credentials", ["true", "false"])
async def test_credentialed_calls_need_credentials_true(chromium, aiohttp_server, tmp_path, credentials):
    up, allowed, _, gateway = await scenario(aiohttp_server, tmp_path, credentials=credentials)
    async with gateway as gw, open_page(chromium, allowed + "/") as page:
        await page.evaluate(install(gw.port))
        answer = await page.evaluate("calls.get({credentials: 'include'})")
        if credentials == "true":
            assert answer.get("status") == 200, answer
        else:
            assert answer == {"error": "TypeError: Failed to fetch"}
            [refusal] = await page.logged("blocked by CORS policy")
            assert "Access-Control-Allow-Credentials" in refusal


async def test_the_gateways_errors_are_readable_and_the_client_key_passes_the_preflight(chromium, aiohttp_server,
                                                                                        tmp_path):
    keys = "  api_keys: ['${CLIENT_KEY}']"
    up, allowed, _, gateway = await scenario(aiohttp_server, tmp_path, keys=keys)
    async with gateway as gw, open_page(chromium, allowed + "/") as page:
        await page.evaluate(install(gw.port))
        refused = await page.evaluate("calls.get()")  # no key: the gateway's 401, readable by the page
        assert refused.get("status") == 401, refused
        assert refused["body"]["error"] == "unauthorized"
        assert refused["headers"]["x-request-id"]
        keyed = await page.evaluate("calls.get({headers: {'X-API-Key': 'ck-browser-0123456789'}})")  # preflighted
        assert keyed.get("status") == 200, keyed
        missing = await page.evaluate("calls.fetch('/api/nowhere', {headers: {'X-API-Key': 'x'}})")
        assert missing.get("status") == 404, missing
        assert missing["body"]["error"] == "not_found"
    assert [(s.method, s.raw_path) for s in up.seen] == [("GET", "/base/items")]
