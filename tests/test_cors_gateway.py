"""CORS through the whole gateway: real upstreams on 127.0.0.1, forwards and file routes, errors and streams.

What a browser would do is proven in test_browser_cors.py; here every header is checked exactly, hostile inputs
included, and that a preflight never reaches the upstream nor needs the client key.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from upstream_support import (  # noqa: F401  (no_secret_logged is an autouse fixture)
    Recorder,
    assert_clean,
    gateway,
    no_secret_logged,
)

APP = "https://app.example.com"
EVIL = "https://evil.example.com"
CLIENT_KEY = "ck-browser-visible-0123456789"
CORS = "clients:\n  cors: {{ origins: ['{origins}'], credentials: {credentials}, max_age: 5m }}\n"
KEYS = "  api_keys: ['${CLIENT_KEY}']\n"
FORWARDS = """
forwards:
  svc/[...path]: { upstream: svc, path: "/{path}", methods: [GET, POST, PUT, DELETE] }
"""
WAIT = 5  # seconds: only reached when the behaviour under test is broken


def origin_names(resp: object) -> list[str]:
    return [name for name in resp.headers if name.lower().startswith("access-control-")]  # type: ignore[attr-defined]


def exposed(resp: object) -> set[str]:
    value = resp.headers.get("Access-Control-Expose-Headers", "")  # type: ignore[attr-defined]
    return {name.strip().lower() for name in value.split(",") if name.strip()}


async def json_items(request: web.Request) -> web.Response:
    # an upstream that tries to set CORS itself: none of it may reach the client (not in the response allowlist)
    return web.json_response({"items": [1, 2]}, headers={"Access-Control-Allow-Origin": "*", "X-Trace": "t-1",
                                                        "Vary": "Accept-Encoding"})


async def failing(request: web.Request) -> web.Response:
    return web.Response(status=500, text="upstream stack trace")


@pytest.fixture
async def upstream(aiohttp_server):
    up = Recorder()
    up.route("GET", "/base/items", json_items)
    up.route("POST", "/base/items", json_items)
    up.route("GET", "/base/fail", failing)
    return up, await up.serve(aiohttp_server)


async def cors_gateway(aiohttp_client, tmp_path, port, *, origins=APP, credentials="false", keys=False, **kwargs):
    clients = CORS.format(origins=origins, credentials=credentials) + (KEYS if keys else "")
    env = {"SVC_KEY": "sk-live-TOPSECRET-0123456789abcdef", "SVC_QKEY": "qk/TOPSECRET+ab=cd~Z98765",
           "CLIENT_KEY": CLIENT_KEY}
    return await gateway(aiohttp_client, tmp_path, port, FORWARDS, server=clients, env=env,
                         forward_headers="[X-Trace]", expose_headers="[X-Trace, Vary]", **kwargs)


async def test_a_forward_answers_an_allowed_origin_readably(upstream, aiohttp_client, tmp_path):
    up, port = upstream
    client = await cors_gateway(aiohttp_client, tmp_path, port)
    resp = await client.get("/api/svc/items", headers={"Origin": APP})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert exposed(resp) == {"x-trace", "vary", "ratelimit", "ratelimit-policy", "retry-after", "x-request-id",
                             "x-cache"}
    assert resp.headers.getall("Vary") == ["Accept-Encoding, Origin"]  # the upstream's own Vary, plus Origin
    assert "Access-Control-Allow-Credentials" not in resp.headers
    assert "origin" not in {name.lower() for name in up.last.headers}  # the browser's Origin is not passed on
    assert_clean(resp, await resp.read())


async def test_an_upstreams_own_cors_headers_never_reach_another_origin(upstream, aiohttp_client, tmp_path):
    up, port = upstream
    client = await cors_gateway(aiohttp_client, tmp_path, port)
    resp = await client.get("/api/svc/items", headers={"Origin": EVIL})
    assert resp.status == 200  # served; the browser keeps the page from reading it
    assert origin_names(resp) == []
    assert resp.headers["Vary"] == "Accept-Encoding, Origin"


async def test_a_preflight_is_answered_by_the_gateway(upstream, aiohttp_client, tmp_path):
    up, port = upstream
    client = await cors_gateway(aiohttp_client, tmp_path, port, credentials="true", keys=True)
    resp = await client.options("/api/svc/items", headers={
        "Origin": APP, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key,x-trace,x-request-id"})
    assert resp.status == 204  # no client key needed
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert resp.headers["Access-Control-Allow-Methods"] == "DELETE, GET, HEAD, OPTIONS, POST, PUT"
    assert resp.headers["Access-Control-Allow-Headers"] == "content-type, x-api-key, x-trace, x-request-id"
    assert resp.headers["Access-Control-Max-Age"] == "300"
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert resp.headers["Vary"] == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    assert resp.headers["X-Request-Id"]
    assert up.seen == []


@pytest.mark.parametrize(("origin", "method", "requested"), [
    (EVIL, "POST", "content-type"),
    ("null", "GET", ""),
    (APP + ".evil.com", "GET", ""),
    (APP, "PATCH", ""),  # not one of the forward's methods
    (APP, "POST", "content-type, cookie"),  # never forwarded, so never accepted
    (APP, "POST", "x-api-key"),  # without clients.api_keys the forward takes no client key
    (APP, "GET", ", ".join(f"x-h{i}" for i in range(200))),
])
async def test_a_refused_preflight(upstream, aiohttp_client, tmp_path, origin, method, requested):
    up, port = upstream
    client = await cors_gateway(aiohttp_client, tmp_path, port)
    resp = await client.options("/api/svc/items", headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": requested})
    assert resp.status == 403
    assert (await resp.json())["error"] == "forbidden"
    assert origin_names(resp) == []
    assert resp.headers["Vary"] == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    assert up.seen == []


async def test_the_gateways_own_errors_carry_cors_headers(upstream, aiohttp_client, tmp_path):
    up, port = upstream
    client = await cors_gateway(aiohttp_client, tmp_path, port, keys=True)
    cases = [
        ("GET", "/api/svc/items", {}, 401),  # no client key
        ("PATCH", "/api/svc/items", {"X-API-Key": CLIENT_KEY}, 405),
        ("GET", "/api/svc/fail", {"X-API-Key": CLIENT_KEY}, 502),
        ("GET", "/api/nothing/here", {}, 404),
    ]
    for method, path, headers, status in cases:
        resp = await client.request(method, path, headers={"Origin": APP, **headers})
        assert resp.status == status, (method, path)
        assert resp.headers["Access-Control-Allow-Origin"] == APP, (method, path)
        assert "x-request-id" in exposed(resp)
        assert "Origin" in resp.headers["Vary"]
        body = await resp.read()
        assert_clean(resp, body)
        assert b"stack trace" not in body


async def test_a_stream_carries_cors_headers(aiohttp_server, aiohttp_client, tmp_path):
    sent_first, got_first = asyncio.Event(), asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: 1\n\n")
        sent_first.set()
        await asyncio.wait_for(got_first.wait(), WAIT)
        await resp.write(b"data: 2\n\n")
        return resp

    up = Recorder()
    up.route("GET", "/base/events", sse)
    client = await cors_gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server))
    resp = await client.get("/api/svc/events", headers={"Origin": APP})
    assert resp.headers["Access-Control-Allow-Origin"] == APP  # the headers came before the stream's end
    assert await asyncio.wait_for(resp.content.readuntil(b"\n\n"), WAIT) == b"data: 1\n\n"
    got_first.set()
    assert await asyncio.wait_for(resp.read(), WAIT) == b"data: 2\n\n"


async def test_paths_no_route_answers(upstream, aiohttp_client, tmp_path):
    up, port = upstream
    client = await cors_gateway(aiohttp_client, tmp_path, port)
    resp = await client.options("/api/typo", headers={"Origin": APP, "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "content-type"})
    assert resp.status == 204  # so the real request goes out and its 404 can be read
    resp = await client.get("/api/svc/items/", headers={"Origin": APP}, allow_redirects=False)
    assert resp.status == 308
    assert resp.headers["Access-Control-Allow-Origin"] == APP


FILE_ROUTE = """
from aiohttp import web

async def GET(req):
    return {"ok": True}, 200, {"Vary": "Accept-Language", "Access-Control-Allow-Origin": "*"}

async def PUT(req):
    return web.StreamResponse(status=418)
"""


async def test_a_file_route(upstream, aiohttp_client, tmp_path):
    up, port = upstream
    client = await cors_gateway(aiohttp_client, tmp_path, port, routes={"thing.py": FILE_ROUTE})
    resp = await client.get("/api/thing", headers={"Origin": APP})
    assert resp.headers.getall("Access-Control-Allow-Origin") == [APP]  # the gateway's value replaces the route's
    assert resp.headers.getall("Vary") == ["Accept-Language, Origin"]
    resp = await client.options("/api/thing", headers={
        "Origin": APP, "Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "x-anything"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS, PUT"
    assert resp.headers["Access-Control-Allow-Headers"] == "x-anything"  # a file route may read any header
    resp = await client.options("/api/thing", headers={"Origin": APP})  # no preflight: the route's own OPTIONS
    assert resp.status == 204
    assert resp.headers["Allow"] == "GET, HEAD, OPTIONS, PUT"
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    resp = await client.put("/api/thing", headers={"Origin": APP})
    assert resp.status == 418 and resp.headers["Access-Control-Allow-Origin"] == APP


async def test_wildcard_and_any_origin(upstream, aiohttp_client, tmp_path):
    up, port = upstream
    client = await cors_gateway(aiohttp_client, tmp_path, port, origins="https://*.example.com")
    for origin, allowed in [("https://a.example.com", True), ("https://a.b.example.com", False),
                            ("https://evilexample.com", False), ("https://example.com", False)]:
        resp = await client.get("/api/svc/items", headers={"Origin": origin})
        assert resp.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None), origin
    any_client = await cors_gateway(aiohttp_client, tmp_path, port, origins="*")
    resp = await any_client.get("/api/svc/items", headers={"Origin": "http://localhost:5173"})
    assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    resp = await any_client.get("/api/svc/items", headers={"Origin": "null"})
    assert origin_names(resp) == []


async def test_without_clients_cors_nothing_changes(upstream, aiohttp_client, tmp_path):
    up, port = upstream
    client = await gateway(aiohttp_client, tmp_path, port, FORWARDS, expose_headers="[Vary]")
    resp = await client.get("/api/svc/items", headers={"Origin": APP})
    assert origin_names(resp) == []
    assert resp.headers["Vary"] == "Accept-Encoding"
    resp = await client.options("/api/svc/items", headers={"Origin": APP, "Access-Control-Request-Method": "GET"})
    assert resp.status == 204 and origin_names(resp) == []  # the route's own OPTIONS answer
