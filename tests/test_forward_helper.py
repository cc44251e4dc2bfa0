"""``forward()`` from a route module, against real upstreams: reshape in code, or pass the answer through."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qsl

import pytest
from aiohttp import web
from upstream_support import (  # noqa: F401  (no_secret_logged is an autouse fixture)
    QSECRET,
    SECRET,
    Recorder,
    assert_clean,
    free_port,
    gateway,
    no_secret_logged,
)

WAIT = 5

ROUTES = {
    "weather/[city].py": '''
from gateway import forward

async def GET(req):
    up = await forward(req, "svc", "/weather", query={"q": req.match_info["city"], "key": "client-set", "KEY": "x"})
    data = await up.json()
    return {"city": req.match_info["city"], "temp": data["main"]["temp"], "note": data["note"], "status": up.status,
            "etag": up.headers.get("ETag"), "server": up.headers.get("Server")}
''',
    "pass/[...path].py": '''
from gateway import forward

async def handler(req):
    return await forward(req, "svc", "/" + req.match_info["path"])
''',
    "read_then_pass.py": '''
from gateway import forward

async def GET(req):
    up = await forward(req, "svc", "/echo")
    assert b"echo" in await up.read()
    return up
''',
    "create.py": '''
from gateway import forward

async def POST(req):
    up = await forward(req, "svc", "/items", json={"name": "n", "via": "helper"}, headers={"X-Extra": "1"})
    return {"status": up.status, "upstream": await up.json()}
''',
    "override.py": '''
from gateway import forward

async def GET(req):
    await forward(req, "svc", "/items", headers={req.query["name"]: req.query.get("value", "x")})
    return {"reached": True}
''',
    "unsafe.py": '''
from gateway import forward

async def GET(req):
    await forward(req, "svc", req.query["p"])
    return {"reached": True}
''',
    "ignored.py": '''
from gateway import forward

async def GET(req):
    await forward(req, "svc", "/endless")
    return {"ignored": True}
''',
    "headers_of.py": '''
from gateway import forward

async def GET(req):
    up = await forward(req, "svc", "/moved")
    return dict(up.headers)
''',
    "nowhere.py": '''
from gateway import forward

async def GET(req):
    return await forward(req, "nope", "/x")
''',
}


async def weather(request: web.Request) -> web.Response:
    return web.json_response({"main": {"temp": 21.5}, "note": f"your key {SECRET} / {QSECRET}"},
                             headers={"ETag": '"w1"', "Server": "nginx", "Set-Cookie": "a=b"})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"echo": request.raw_path, "method": request.method, "body": body.decode(),
                              "type": request.content_type}, headers={"X-Powered-By": "PHP/8"})


async def helper_gateway(aiohttp_server, aiohttp_client, tmp_path, *, handlers=(), **options):
    up = Recorder()
    up.route("GET", "/base/weather", weather)
    for method, path, handler in handlers:
        up.route(method, path, handler)
    up.route("*", "/base/{tail:.*}", echo)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), "", routes=ROUTES, **options)
    return up, client


async def test_reshape_in_code_sees_only_scrubbed_data(aiohttp_server, aiohttp_client, tmp_path):
    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.get("/api/weather/S%C3%A3o%20Paulo", headers={"Authorization": "Bearer client",
                                                                      "Cookie": "c=1"})
    assert resp.status == 200
    assert await resp.json() == {"city": "São Paulo", "temp": 21.5, "note": "your key [REDACTED] / [REDACTED]",
                                 "status": 200, "etag": '"w1"', "server": None}
    seen = up.last
    assert seen.raw_path == "/base/weather"
    pairs = parse_qsl(seen.query)
    assert ("q", "São Paulo") in pairs
    assert [v for k, v in pairs if k.lower() == "key"] == [QSECRET]
    assert seen.headers.getall("Authorization") == [f"Bearer {SECRET}"]
    assert "Cookie" not in seen.headers
    assert_clean(resp, await resp.read())


async def test_head_on_a_get_handler_that_reads_the_upstream(aiohttp_server, aiohttp_client, tmp_path):
    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.head("/api/weather/paris")
    assert resp.status == 200
    assert up.last.method == "GET"


async def test_pass_through_filters_headers_scrubs_and_passes_the_client_query(aiohttp_server, aiohttp_client,
                                                                               tmp_path):
    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.get("/api/pass/a%20b/c?x=1&key=evil&KEY=evil&%6Bey=evil")
    body = await resp.read()
    assert resp.status == 200
    data = json.loads(body)
    assert data["echo"].startswith("/base/a%20b/c?")
    pairs = parse_qsl(up.last.query)
    assert ("x", "1") in pairs
    assert [v for k, v in pairs if k.lower() == "key"] == [QSECRET]
    assert "X-Powered-By" not in resp.headers
    assert int(resp.headers["Content-Length"]) == len(body)
    assert_clean(resp, body)


async def test_pass_through_streams_events_one_at_a_time(aiohttp_server, aiohttp_client, tmp_path):
    acks = [asyncio.Event(), asyncio.Event()]

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, ack in enumerate(acks):
            await resp.write(f"data: {i} {SECRET}\n\n".encode())
            await asyncio.wait_for(ack.wait(), WAIT)
        return resp

    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path,
                                      handlers=[("GET", "/base/events", sse)])
    resp = await client.get("/api/pass/events")
    assert resp.status == 200
    assert resp.headers["X-Accel-Buffering"] == "no"
    for i, ack in enumerate(acks):
        assert await asyncio.wait_for(resp.content.readuntil(b"\n\n"), WAIT) == f"data: {i} [REDACTED]\n\n".encode()
        ack.set()
    assert await asyncio.wait_for(resp.read(), WAIT) == b""


async def test_pass_through_streams_the_client_body(aiohttp_server, aiohttp_client, tmp_path):
    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.post("/api/pass/upload", data=b"hello body", headers={"Content-Type": "text/plain"})
    assert resp.status == 200
    data = await resp.json()
    assert (data["method"], data["body"], data["type"]) == ("POST", "hello body", "text/plain")


async def test_pass_through_refuses_a_body_over_max_body(aiohttp_server, aiohttp_client, tmp_path):
    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path, server="server: { max_body: 10 }\n")
    resp = await client.post("/api/pass/upload", data=b"x" * 11)
    assert resp.status == 413
    assert (await resp.json())["error"] == "payload_too_large"
    assert up.seen == []


async def test_read_then_return_sends_the_scrubbed_body_with_its_length(aiohttp_server, aiohttp_client, tmp_path):
    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.get("/api/read_then_pass")
    body = await resp.read()
    assert resp.status == 200
    assert json.loads(body)["echo"].startswith("/base/echo?key=[REDACTED]")
    assert int(resp.headers["Content-Length"]) == len(body)
    assert_clean(resp, body)


async def test_json_body_and_handler_headers_cannot_override_injection(aiohttp_server, aiohttp_client, tmp_path):
    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.post("/api/create", data=b"ignored")
    assert resp.status == 200
    data = await resp.json()
    assert data["status"] == 200
    assert json.loads(data["upstream"]["body"]) == {"name": "n", "via": "helper"}
    assert data["upstream"]["type"] == "application/json"
    assert up.last.headers["X-Extra"] == "1"
    assert up.last.headers.getall("Authorization") == [f"Bearer {SECRET}"]


@pytest.mark.parametrize("name", ["Authorization", "authorization", "Host", "Content-Length", "Transfer-Encoding",
                                  "Connection", "Upgrade", "Expect", "TE", "Keep-Alive", "Proxy-Authorization",
                                  "X-Request-Id", "Bad Name", "X:y"])
async def test_handler_headers_cannot_set_framing_hop_by_hop_or_injected_names(aiohttp_server, aiohttp_client,
                                                                               tmp_path, name, caplog):
    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.get("/api/override", params={"name": name, "value": "chunked"})
    assert resp.status == 500 and (await resp.json())["error"] == "internal_error"
    assert up.seen == []  # nothing was sent
    assert any(name in r.getMessage() and "forward()" in r.getMessage() for r in caplog.records)  # the log says why


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nb", "a\x00b"])
async def test_handler_header_values_with_line_breaks_are_the_clients_bad_request(aiohttp_server, aiohttp_client,
                                                                                  tmp_path, value):
    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.get("/api/override", params={"name": "X-Note", "value": value})
    assert resp.status == 400 and (await resp.json())["error"] == "bad_request"
    assert up.seen == []


@pytest.mark.parametrize("path", ["/../admin", "/a/../../admin", "//evil.example/x", "/a\\b", "/a//b", "/a/./b",
                                  "/a/\x00/b"])
async def test_unsafe_paths_never_reach_the_upstream(aiohttp_server, aiohttp_client, tmp_path, path):
    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.get("/api/unsafe", params={"p": path})
    assert resp.status == 400  # the handler built the path from client input: the client's bad request
    assert (await resp.json())["error"] == "bad_request"
    assert up.seen == []


@pytest.mark.parametrize(("path", "sent"), [
    ("items/a b/ü", "/base/items/a%20b/%C3%BC"),
    ("/x?y=1&key=mine", "/base/x%3Fy%3D1%26key%3Dmine"),  # a "?" cannot start a query: query= is the only way
    ("/x?y=1\r\nX-Evil: 1", "/base/x%3Fy%3D1%0D%0AX-Evil%3A%201"),  # nor a line break a header
    ("/x#frag", "/base/x%23frag"),
    ("/a/%2e%2e/b", "/base/a/%252e%252e/b"),  # encoded once more: the upstream decodes it to text, not to ".."
    ("/a/%252f/b", "/base/a/%25252f/b"),
    ("/a/..;/b", "/base/a/..%3B/b"),
    ("/a/\tb\x01", "/base/a/%09b%01"),
])
async def test_a_handler_path_is_encoded_once_segment_by_segment(aiohttp_server, aiohttp_client, tmp_path, path,
                                                                   sent):
    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.get("/api/unsafe", params={"p": path})
    assert resp.status == 200
    assert up.last.raw_path == sent
    assert [k for k, _ in parse_qsl(up.last.query)] == ["p", "key"]  # the client's query, then the secret
    assert "X-Evil" not in up.last.headers


@pytest.mark.parametrize(("status", "code"), [(500, "upstream_error"), (503, "upstream_error")])
async def test_upstream_5xx_through_the_helper(aiohttp_server, aiohttp_client, tmp_path, status, code):
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=status, text=f"stack trace with {SECRET} at 10.0.0.9")

    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path,
                                      handlers=[("GET", "/base/broken", broken)])
    resp = await client.get("/api/pass/broken")
    body = await resp.read()
    assert resp.status == 502
    assert json.loads(body)["error"] == code
    assert "10.0.0.9" not in body.decode()
    assert_clean(resp, body)


async def test_upstream_unreachable_through_the_helper(aiohttp_client, tmp_path):
    client = await gateway(aiohttp_client, tmp_path, await free_port(), "", routes=ROUTES)
    resp = await client.get("/api/pass/x")
    body = await resp.read()
    assert resp.status == 502 and json.loads(body)["error"] == "upstream_unavailable"
    assert "127.0.0.1" not in body.decode()


async def test_upstream_timeout_through_the_helper(aiohttp_server, aiohttp_client, tmp_path):
    never = asyncio.Event()

    async def stuck(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path, timeout="0.3s",
                                      handlers=[("GET", "/base/stuck", stuck)])
    resp = await client.get("/api/pass/stuck")
    assert resp.status == 504 and (await resp.json())["error"] == "upstream_timeout"


async def test_unused_upstream_response_is_closed(aiohttp_server, aiohttp_client, tmp_path):
    never = asyncio.Event()
    gone = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"tick")
        try:
            await never.wait()
        except asyncio.CancelledError:
            gone.set()
            raise
        return resp

    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path,
                                      handlers=[("GET", "/base/endless", endless)])
    resp = await client.get("/api/ignored")
    assert resp.status == 200 and await resp.json() == {"ignored": True}
    await asyncio.wait_for(gone.wait(), WAIT)


@pytest.mark.parametrize("exposed", ["[]", "[Location, Link]"])
async def test_pass_through_location_and_link_never_show_the_upstream(aiohttp_server, aiohttp_client, tmp_path,
                                                                      exposed):
    async def moved(request: web.Request) -> web.Response:
        up = f"http://127.0.0.1:{request.url.port}"
        return web.Response(status=302, headers={"Location": f"{up}/private/x", "Link": f'<{up}/admin>; rel="x"'})

    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path, expose_headers=exposed,
                                      handlers=[("GET", "/base/moved", moved)])
    resp = await client.get("/api/pass/moved", allow_redirects=False)
    assert resp.status == 302
    assert "Location" not in resp.headers and "Link" not in resp.headers
    assert_clean(resp, await resp.read())
    resp = await client.get("/api/headers_of")  # what handler code sees in up.headers
    assert resp.status == 200
    shown = await resp.json()
    assert "Location" not in shown and "Link" not in shown
    assert "127.0.0.1" not in json.dumps(shown)


async def test_unknown_upstream_is_an_internal_error(aiohttp_server, aiohttp_client, tmp_path):
    up, client = await helper_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.get("/api/nowhere")
    assert resp.status == 500 and (await resp.json())["error"] == "internal_error"
