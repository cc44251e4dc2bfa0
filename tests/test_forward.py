"""Forwards end to end against real upstreams on 127.0.0.1 that misbehave on purpose (SPEC §4)."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from urllib.parse import parse_qsl, quote, unquote

import pytest
from aiohttp import web
from upstream_support import (  # noqa: F401  (no_secret_logged is an autouse fixture)
    QSECRET,
    SECRET,
    Recorder,
    assert_clean,
    free_port,
    gateway,
    leaks,
    leaky_log_lines,
    no_secret_logged,
    raw_get,
)

ITEMS = """
forwards:
  items/[id]: { upstream: svc, path: "/items/{id}/detail" }
  svc/[...path]: { upstream: svc, path: "/{path}", methods: [GET, POST, PUT, DELETE] }
"""


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"path": request.raw_path})


async def echo_upstream(aiohttp_server) -> tuple[Recorder, int]:
    up = Recorder()
    up.route("*", "/{tail:[\\s\\S]*}", echo)  # also paths with CR/LF in them
    return up, await up.serve(aiohttp_server)


# --- the upstream URL -------------------------------------------------------------------------------------------


async def test_params_are_encoded_and_catch_all_keeps_its_slashes(aiohttp_server, aiohttp_client, tmp_path):
    up, port = await echo_upstream(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port, ITEMS)
    resp = await client.get("/api/items/a%20b%2Fc%3Fd%23e%26f")
    assert resp.status == 200
    assert up.last.raw_path == "/base/items/a%20b%2Fc%3Fd%23e%26f/detail"
    resp = await client.get("/api/svc/x/y%20z/%C3%BC/a%2Fb")
    assert resp.status == 200
    assert up.last.raw_path == "/base/x/y%20z/%C3%BC/a%2Fb"
    assert up.last.headers["Host"] == f"127.0.0.1:{port}"


@pytest.mark.parametrize("target", [
    "/api/items/..%2F..%2Fadmin",
    "/api/items/%252e%252e",
    "/api/items/%2F%2Fevil.example",
    "/api/items/@evil.example",
    "/api/items/user:pw@evil.example",
    "/api/items/http:%2F%2Fevil.example%2F",
    "/api/items/x%0D%0AX-Evil:%201",
    "/api/items/x%0AX-Evil:%201",
    "/api/items/x%3Fkey=evil%23",
    "/api/svc/a/..%2F..%2F..%2Fadmin",
    "/api/svc/a/%2F%2Fevil.example/x",
    "/api/svc/a/x%0D%0AX-Evil:%201/y",
])
async def test_hostile_params_stay_on_the_upstream_under_its_base(aiohttp_server, aiohttp_client, tmp_path, target):
    up, port = await echo_upstream(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port, ITEMS)
    answer = await raw_get(client.port, target)
    if answer.startswith(b"HTTP/1.1 400 "):  # the router may refuse it outright: then nothing goes upstream
        assert up.seen == []
        return
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    seen = up.last
    assert seen.headers["Host"] == f"127.0.0.1:{port}"
    assert "X-Evil" not in seen.headers
    assert seen.raw_path.startswith("/base/")
    segments = seen.raw_path.split("/")
    assert not {".", ".."} & set(segments)
    assert not any(c in seen.raw_path for c in "\r\n\\@") and "//" not in seen.raw_path
    if target.startswith("/api/items/"):  # one parameter fills exactly one segment
        assert len(segments) == 5 and segments[-1] == "detail", seen.raw_path
    assert [v for k, v in parse_qsl(seen.query) if k == "key"] == [QSECRET]


@pytest.mark.parametrize("target", [
    "/api/items/..", "/api/items/%2e%2e", "/api/items/%2E%2e", "/api/items/.", "/api/svc/a/../../admin",
    "/api/svc/a/%2e%2e/%2e%2e/admin", "/api/svc/a%5C..%5C..%5Cadmin", "/api/items/%5C%5Cevil.example",
    "/api/svc//evil.example/x", "/api/svc/a//b",
])
async def test_traversal_is_refused_before_the_upstream(aiohttp_server, aiohttp_client, tmp_path, target):
    up, port = await echo_upstream(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port, ITEMS)
    answer = await raw_get(client.port, target)
    status = int(answer.split(b" ", 2)[1])
    assert status == 400, answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "bad_request"
    assert up.seen == []
    assert not leaks(answer)


async def test_client_query_passed_and_injected_params_win(aiohttp_server, aiohttp_client, tmp_path):
    up, port = await echo_upstream(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port)
    query = "a=1&key=evil&KEY=evil&%6Bey=evil&k%65y=evil&Key&key%00=x&b=%26key%3Devil&c=%20"
    resp = await client.get(f"/api/svc/search?{query}")
    assert resp.status == 200
    pairs = parse_qsl(up.last.query, keep_blank_values=True)
    assert [v for k, v in pairs if k.lower() == "key"] == [QSECRET]
    assert ("a", "1") in pairs and ("b", "&key=evil") in pairs and ("c", " ") in pairs
    assert_clean(resp, await resp.read())


# --- request headers --------------------------------------------------------------------------------------------


async def test_request_headers_allowlist_and_injection(aiohttp_server, aiohttp_client, tmp_path):
    up, port = await echo_upstream(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port, forward_headers="[X-Trace, X-Hop, Authorization, Cookie, "
                                                                           "X-Forwarded-For, X-API-Key, Host]")
    sent = {
        "Accept": "application/json", "Accept-Language": "fr-CH", "Content-Type": "text/plain",
        "If-None-Match": '"v1"', "If-Modified-Since": "Wed, 21 Oct 2015 07:28:00 GMT", "Range": "bytes=0-9",
        "X-Trace": "trace-1", "X-Hop": "dropped", "Connection": "keep-alive, X-Hop",
        "Cookie": "session=client", "Authorization": "Bearer client-token", "X-API-Key": "client-key",
        "X-Forwarded-For": "10.9.9.9", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http",
        "Forwarded": "for=10.9.9.9", "X-Real-IP": "10.9.9.9", "X-Other": "no", "Proxy-Authorization": "Basic x",
        "Keep-Alive": "timeout=5", "TE": "trailers", "Host": "evil.example",
    }
    resp = await client.post("/api/svc/h", headers=sent, data=b"body")
    assert resp.status == 200
    got = up.last.headers
    for name in ("Accept", "Accept-Language", "Content-Type", "If-None-Match", "If-Modified-Since", "Range", "X-Trace"):
        assert got[name] == sent[name], name
    for name in ("X-Hop", "Cookie", "X-API-Key", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
                 "Forwarded", "X-Real-IP", "X-Other", "Proxy-Authorization", "Keep-Alive", "TE"):
        assert name not in got, name
    assert got.getall("Authorization") == [f"Bearer {SECRET}"]
    assert got["Host"] == f"127.0.0.1:{port}"
    assert_clean(resp, await resp.read())


# --- response headers -------------------------------------------------------------------------------------------

LEAKY = {
    "Server": "nginx/1.25.3", "X-Powered-By": "Express", "Set-Cookie": "sid=abc; Domain=127.0.0.1; HttpOnly",
    "Via": "1.1 varnish", "X-Request-Id": "upstream-req-42", "X-Amzn-RequestId": "amzn-42",
    "X-Upstream-Host": "127.0.0.1:1", "ETag": '"abc"', "Cache-Control": "max-age=60", "Content-Language": "en",
    "Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT", "X-RateLimit-Remaining": "41", "X-Secret-Echo": "no",
}


@pytest.mark.parametrize("mode", ["small", "chunked", "head", "error"])
async def test_response_headers_allowlist(aiohttp_server, aiohttp_client, tmp_path, mode):
    async def leaky(request: web.Request) -> web.StreamResponse:
        status = 404 if mode == "error" else 200
        if mode == "chunked":
            resp = web.StreamResponse(status=status, headers=LEAKY)
            resp.content_type = "text/plain"
            await resp.prepare(request)
            await resp.write(b"hello ")
            await resp.write(b"world")
            return resp
        return web.Response(status=status, text="hello world", headers=LEAKY)

    up = Recorder()
    up.route("*", "/base/leaky", leaky)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server),
                           expose_headers="[X-RateLimit-Remaining, Set-Cookie, Server, Via]")
    resp = await client.request("HEAD" if mode == "head" else "GET", "/api/svc/leaky")
    assert resp.status == (404 if mode == "error" else 200)
    body = await resp.read()
    assert body == (b"" if mode == "head" else b"hello world")
    for name in ("ETag", "Cache-Control", "Content-Language", "Last-Modified", "X-RateLimit-Remaining"):
        assert resp.headers[name] == LEAKY[name], name
    assert resp.headers["Server"] == "gateway"
    assert resp.headers.get("X-Request-Id") != "upstream-req-42"
    assert "X-Secret-Echo" not in resp.headers
    assert_clean(resp, body)


# --- Location and Link ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("location", "expected"), [
    ("{up}/base/next/page?x=1", "/api/svc/next/page?x=1"),
    ("/base/next", "/api/svc/next"),
    ("other", "/api/svc/dir/other"),  # relative to the request's URL, as a browser would resolve it
    ("../up", "/api/svc/up"),
    ("?page=2", "/api/svc/dir/redirect?page=2"),
    ("{up}/private/x", None),
    ("{up}/base/../private", None),
    ("http://127.0.0.1/base/x", None),
    ("https://elsewhere.example.org/x", "https://elsewhere.example.org/x"),
])
@pytest.mark.parametrize("exposed", ["[]", "[Location, Content-Location, Link]"])
async def test_location_rewritten_or_removed(aiohttp_server, aiohttp_client, tmp_path, location, expected, exposed):
    async def redirect(request: web.Request) -> web.Response:
        target = location.format(up=f"http://127.0.0.1:{request.url.port}")
        return web.Response(status=302, headers={"Location": target, "Content-Location": target})

    up = Recorder()
    up.route("GET", "/base/dir/redirect", redirect)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), expose_headers=exposed)
    resp = await client.get("/api/svc/dir/redirect", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers.get("Location") == expected
    assert resp.headers.get("Content-Location") == expected
    assert_clean(resp, await resp.read())


@pytest.mark.parametrize("exposed", ["[]", "[Link]"])
async def test_link_header_rewritten_and_unmappable_links_dropped(aiohttp_server, aiohttp_client, tmp_path, exposed):
    async def paged(request: web.Request) -> web.Response:
        up = f"http://127.0.0.1:{request.url.port}"
        links = [f'<{up}/base/items?page=2&key={quote(QSECRET, safe="")}>; rel="next"', f'<{up}/admin>; rel="admin"',
                 '<https://docs.example.org/x>; rel="help"']
        return web.json_response([1, 2], headers=[("Link", ", ".join(links[:2])), ("Link", links[2])])

    up = Recorder()
    up.route("GET", "/base/items", paged)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), expose_headers=exposed)
    resp = await client.get("/api/svc/items")
    assert resp.status == 200
    assert resp.headers.getall("Link") == [
        '</api/svc/items?page=2>; rel="next"', '<https://docs.example.org/x>; rel="help"',
    ]  # the injected param is dropped from a mapped URL: the gateway injects it again when the link is followed
    assert_clean(resp, await resp.read())


async def test_rewrite_urls_in_json_and_text_bodies(aiohttp_server, aiohttp_client, tmp_path):
    async def repo(request: web.Request) -> web.Response:
        up = f"http://127.0.0.1:{request.url.port}"
        data = {"self": f"{up}/base/repos/x", "list": [f"{up}/base/repos/x/issues?page=2"],
                "elsewhere": "https://elsewhere.example.org/base/x", "secret": f"{up}/base/k?key={quote(QSECRET)}",
                "status": f"{up}/base/meta/status", "private": f"{up}/private/x", "root": f"{up}/base",
                "longer_port": f"{up}0/base/x", "text": f"see {up}/base/repos/x. or {up}/admin, bye"}
        text = json.dumps(data)
        if request.query.get("escaped"):
            text = text.replace("/", "\\/")
        return web.Response(text=text, content_type="application/json")

    up = Recorder()
    up.route("GET", "/base/repos/x", repo)
    port = await up.serve(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port, """
forwards:
  gh/[...path]: { upstream: svc, path: "/{path}", rewrite_urls: true }
  status: { upstream: svc, path: /meta/status }
""")
    gw = f"http://127.0.0.1:{client.port}"
    for query in ("", "?escaped=1"):
        resp = await client.get(f"/api/gh/repos/x{query}")
        body = await resp.read()
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == len(body)
        assert json.loads(body) == {
            "self": f"{gw}/api/gh/repos/x", "list": [f"{gw}/api/gh/repos/x/issues?page=2"],
            "elsewhere": "https://elsewhere.example.org/base/x", "secret": f"{gw}/api/gh/k",
            "status": f"{gw}/api/status", "private": "", "root": "",  # gh/[...path] needs a segment: /api/gh is not it
            "longer_port": f"http://127.0.0.1:{port}0/base/x", "text": f"see {gw}/api/gh/repos/x. or , bye",
        }
        assert f":{port}/".encode() not in body and f":{port}\\/".encode() not in body
        assert_clean(resp, body)


async def test_rewrite_urls_forward_still_streams_events(aiohttp_server, aiohttp_client, tmp_path):
    acks = [asyncio.Event(), asyncio.Event()]

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, ack in enumerate(acks):
            await resp.write(f'data: {{"next": "http://127.0.0.1:{request.url.port}/base/e/{i}"}}\n\n'.encode())
            await asyncio.wait_for(ack.wait(), 5)
        return resp

    up = Recorder()
    up.route("GET", "/base/events", sse)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), """
forwards:
  gh/[...path]: { upstream: svc, path: "/{path}", rewrite_urls: true }
""")
    resp = await client.get("/api/gh/events")
    assert resp.status == 200 and resp.headers["X-Accel-Buffering"] == "no"
    for i, ack in enumerate(acks):
        event = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert event == f'data: {{"next": "http://127.0.0.1:{client.port}/api/gh/e/{i}"}}\n\n'.encode()
        ack.set()


async def test_rewrite_urls_catches_a_url_split_across_two_chunks(aiohttp_server, aiohttp_client, tmp_path):
    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        event = f'data: {{"next": "http://127.0.0.1:{request.url.port}/base/e/1"}}\n\n'.encode()
        half = event.index(b"127.0") + 4  # the upstream's host:port cut in two
        await resp.write(event[:half])
        await asyncio.sleep(0.05)  # the slow upstream under test: the halves arrive as separate reads
        await resp.write(event[half:])
        return resp

    up = Recorder()
    up.route("GET", "/base/events", sse)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), """
forwards:
  gh/[...path]: { upstream: svc, path: "/{path}", rewrite_urls: true }
""")
    resp = await client.get("/api/gh/events")
    body = await asyncio.wait_for(resp.read(), 5)
    assert body == f'data: {{"next": "http://127.0.0.1:{client.port}/api/gh/e/1"}}\n\n'.encode()


# --- upstream failures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422, 429])
async def test_upstream_4xx_passed_with_body(aiohttp_server, aiohttp_client, tmp_path, status):
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "nope", "echo": SECRET}, status=status, headers={"Retry-After": "7"})

    up = Recorder()
    up.route("GET", "/base/x", refuse)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server))
    resp = await client.get("/api/svc/x")
    assert resp.status == status
    assert await resp.json() == {"error": "nope", "echo": "[REDACTED]"}
    assert resp.headers["Retry-After"] == "7"
    assert_clean(resp, await resp.read())


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_upstream_5xx_becomes_502_with_body_withheld_and_logged(aiohttp_server, aiohttp_client, tmp_path,
                                                                      caplog, status, method):
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=status, text=f"Traceback: db at 10.1.2.3:5432 refused key={SECRET}",
                            headers={"Server": "gunicorn", "X-Debug": "on"})

    up = Recorder()
    up.route("*", "/base/x", broken)
    port = await up.serve(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port)
    resp = await client.request(method, "/api/svc/x")
    body = await resp.read()
    assert resp.status == 502
    data = json.loads(body)
    assert data["error"] == "upstream_error"
    for word in ("127.0.0.1", str(port), "10.1.2.3", "Traceback", "gunicorn"):
        assert word not in body.decode(), word
    assert "X-Debug" not in resp.headers
    assert_clean(resp, body)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("gateway"))
    assert "db at 10.1.2.3:5432 refused key=[REDACTED]" in logged


async def test_connect_refused_is_502_upstream_unavailable(aiohttp_client, tmp_path):
    port = await free_port()
    client = await gateway(aiohttp_client, tmp_path, port, retries=1)
    resp = await client.get("/api/svc/x")
    body = await resp.read()
    assert resp.status == 502
    assert json.loads(body)["error"] == "upstream_unavailable"
    assert "127.0.0.1" not in body.decode() and str(port) not in body.decode()
    assert_clean(resp, body)


async def test_slow_headers_are_504_and_never_retried(aiohttp_server, aiohttp_client, tmp_path):
    hits = 0
    never = asyncio.Event()

    async def stuck(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        await never.wait()  # cancelled when the gateway gives up and closes the connection
        return web.Response(text="too late")

    up = Recorder()
    up.route("GET", "/base/x", stuck)
    port = await up.serve(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port, timeout="0.3s", retries=3)
    resp = await client.get("/api/svc/x")
    body = await resp.read()
    assert resp.status == 504
    assert json.loads(body)["error"] == "upstream_timeout"
    assert hits == 1
    assert "127.0.0.1" not in body.decode() and str(port) not in body.decode()
    assert_clean(resp, body)


async def test_slow_body_of_a_small_answer_is_504(aiohttp_raw_server, aiohttp_client, tmp_path):
    never = asyncio.Event()

    async def trickle(request: web.BaseRequest) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.content_length = 100
        await resp.prepare(request)
        await resp.write(b"ten bytes.")
        await never.wait()
        return resp

    upstream = await aiohttp_raw_server(trickle, access_log=None)
    client = await gateway(aiohttp_client, tmp_path, upstream.port, timeout="0.3s")
    resp = await client.get("/api/svc/x")
    assert resp.status == 504 and (await resp.json())["error"] == "upstream_timeout"


@pytest.mark.parametrize(("method", "status", "hits"), [("GET", 200, 2), ("POST", 502, 1)])
async def test_dropped_connection_retried_for_idempotent_methods_only(aiohttp_raw_server, aiohttp_client, tmp_path,
                                                                      method, status, hits):
    count = 0

    async def drops_first(request: web.BaseRequest) -> web.Response:
        nonlocal count
        count += 1
        if count == 1:
            request.transport.close()  # no answer at all
        return web.Response(text="second time lucky")

    upstream = await aiohttp_raw_server(drops_first, access_log=None)
    client = await gateway(aiohttp_client, tmp_path, upstream.port, retries=1)
    resp = await client.request(method, "/api/svc/x")
    assert resp.status == status
    assert count == hits
    if status == 502:
        assert (await resp.json())["error"] == "upstream_unavailable"


@pytest.mark.parametrize(("method", "failures", "status", "hits"), [
    ("GET", 2, 200, 3),
    ("GET", 5, 502, 3),
    ("DELETE", 1, 200, 2),
    ("POST", 1, 502, 1),
])
async def test_retries_on_503_for_idempotent_methods_only(aiohttp_server, aiohttp_client, tmp_path,
                                                          method, failures, status, hits):
    count = 0

    async def flaky(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        if count <= failures:
            return web.Response(status=503, text="busy")
        return web.json_response({"ok": count})

    up = Recorder()
    up.route("*", "/base/x", flaky)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), retries=2)
    resp = await client.request(method, "/api/svc/x")
    assert resp.status == status
    assert count == hits
    if status == 200:
        assert await resp.json() == {"ok": hits}


# --- methods ----------------------------------------------------------------------------------------------------


async def test_forward_without_methods_allows_get_and_head_only(aiohttp_server, aiohttp_client, tmp_path):
    async def thing(request: web.Request) -> web.Response:
        return web.json_response({"method": request.method})

    up = Recorder()
    up.route("*", "/base/thing", thing)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), """
forwards:
  thing: { upstream: svc, path: /thing }
""")
    resp = await client.get("/api/thing")
    assert resp.status == 200 and await resp.json() == {"method": "GET"}
    resp = await client.head("/api/thing")
    assert resp.status == 200 and await resp.read() == b""
    assert up.last.method == "HEAD"
    resp = await client.options("/api/thing")
    assert resp.status == 204 and resp.headers["Allow"] == "GET, HEAD, OPTIONS"
    hits = len(up.seen)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        resp = await client.request(method, "/api/thing", data=b"x")
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, HEAD, OPTIONS"
        assert (await resp.json())["error"] == "method_not_allowed"
    assert len(up.seen) == hits


# --- shaping ----------------------------------------------------------------------------------------------------

WEATHER = {
    "base": "stations", "id": 2988507, "main": {"temp": 12.5, "humidity": 80},
    "weather": [{"description": f"rain near sk-live-TOPSEC**** {SECRET}", "icon": "10d"}],
}
SHAPED = """
forwards:
  weather/[city]:
    upstream: svc
    path: /weather?q={city}&units=metric
    response:
      drop: [base, id, main.humidity]
      select: "{temp: main.temp, summary: weather[0].description, rest: main}"
"""


@pytest.mark.parametrize("compressed", [False, True])
async def test_response_drop_and_select_with_fresh_content_length(aiohttp_server, aiohttp_client, tmp_path,
                                                                  compressed):
    async def weather(request: web.Request) -> web.Response:
        assert request.query["q"] == "São Paulo" and request.query["units"] == "metric"
        body = json.dumps(WEATHER).encode()
        if compressed:
            return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip",
                                                                   "Content-Type": "application/json"})
        return web.Response(body=body, content_type="application/json")

    up = Recorder()
    up.route("GET", "/base/weather", weather)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), SHAPED)
    resp = await client.get("/api/weather/S%C3%A3o%20Paulo?units=imperial")
    body = await resp.read()
    assert resp.status == 200
    assert "Content-Encoding" not in resp.headers
    assert int(resp.headers["Content-Length"]) == len(body)
    assert json.loads(body) == {"temp": 12.5, "summary": "rain near [REDACTED]**** [REDACTED]", "rest": {"temp": 12.5}}
    assert resp.headers["Content-Type"].startswith("application/json")
    assert_clean(resp, body)


async def test_shaping_leaves_errors_and_non_json_alone(aiohttp_server, aiohttp_client, tmp_path):
    async def weather(request: web.Request) -> web.Response:
        if request.query["q"] == "nowhere":
            return web.json_response({"base": "kept", "cod": 404}, status=404)
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    up = Recorder()
    up.route("GET", "/base/weather", weather)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), SHAPED)
    resp = await client.get("/api/weather/nowhere")
    assert resp.status == 404 and await resp.json() == {"base": "kept", "cod": 404}
    resp = await client.get("/api/weather/paris")
    body = await resp.read()
    assert resp.status == 200 and body == b"<html>maintenance</html>"
    assert int(resp.headers["Content-Length"]) == len(body)


# --- secrets in responses ---------------------------------------------------------------------------------------

ECHOES = [
    SECRET, quote(SECRET, safe=""), quote(QSECRET, safe=""), QSECRET, "sk-live-TOPSEC****cdef",
    "****0123456789abcdef", "sk-live-TOPSECRET-01", "qk%2FTOPSECRET%2B****",
]


async def test_secrets_scrubbed_from_small_bodies_and_headers(aiohttp_server, aiohttp_client, tmp_path):
    async def echoing(request: web.Request) -> web.Response:
        body = "\n".join(f"echo {e} end" for e in ECHOES)
        return web.Response(text=body, headers={
            "ETag": f'"{SECRET}"', "Content-Disposition": f'attachment; filename="{QSECRET}.txt"',
            "X-Echo": f"key={quote(QSECRET, safe='')}", "Cache-Control": f"private, {SECRET[:14]}****",
            "Location": f"/base/next?echo={quote(QSECRET, safe='')}&key={quote(QSECRET, safe='')}",
        })

    up = Recorder()
    up.route("GET", "/base/echo", echoing)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), expose_headers="[X-Echo]")
    resp = await client.get("/api/svc/echo")
    body = await resp.read()
    assert resp.status == 200
    assert int(resp.headers["Content-Length"]) == len(body)
    for line in body.decode().splitlines():
        assert line.startswith("echo ") and line.endswith(" end") and "[REDACTED]" in line, line
    assert resp.headers["ETag"] == '"[REDACTED]"'
    assert resp.headers["X-Echo"] == "key=[REDACTED]"
    assert resp.headers["Location"] == "/api/svc/next?echo=[REDACTED]"  # the injected name is dropped when mapped
    assert "[REDACTED]" in resp.headers["Content-Disposition"]
    assert_clean(resp, body)


async def test_injected_key_does_not_leak_through_the_logs(aiohttp_server, aiohttp_client, tmp_path, caplog):
    up, port = await echo_upstream(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port)
    resp = await client.get("/api/svc/log?x=1")
    assert resp.status == 200
    assert_clean(resp, await resp.read())
    assert caplog.records is not None  # no_secret_logged checks every record after the test


# --- gzip -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [2_000, 3 * 1024 * 1024])
@pytest.mark.parametrize("chunked", [False, True])
async def test_gzip_body_encoding_length_and_bytes_agree(aiohttp_server, aiohttp_client, tmp_path, size, chunked):
    plain = (f"line with {SECRET} inside\n".encode() + bytes(range(32, 127)) * 3 + b"\n") * (size // 380 + 1)
    packed = gzip.compress(plain)

    async def zipped(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        if not chunked:
            return web.Response(body=packed, headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for at in range(0, len(packed), 64 * 1024):
            await resp.write(packed[at:at + 64 * 1024])
        return resp

    up = Recorder()
    up.route("GET", "/base/z", zipped)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server))
    resp = await client.get("/api/svc/z", headers={"Accept-Encoding": "gzip"})
    raw = await resp.read()  # the test client does not decompress: these are the bytes on the wire
    assert resp.status == 200
    encoding = resp.headers.get("Content-Encoding")
    assert encoding in (None, "gzip")
    body = gzip.decompress(raw) if encoding == "gzip" else raw
    if "Content-Length" in resp.headers:
        assert int(resp.headers["Content-Length"]) == len(raw)
    assert body == plain.replace(SECRET.encode(), b"[REDACTED]")
    assert_clean(resp, body)


@pytest.mark.parametrize("encoding", ["br, gzip", "gzip, br", "br", "zstd", "x-snappy"])
async def test_a_body_in_an_encoding_that_cannot_be_checked_for_secrets_is_refused(
    aiohttp_server, aiohttp_client, tmp_path, encoding
):
    packed = gzip.compress(gzip.compress(f"the key is {SECRET}".encode()))  # opaque to the scrubber

    async def odd(request: web.Request) -> web.Response:
        return web.Response(body=packed, headers={"Content-Encoding": encoding, "Content-Type": "text/plain"})

    up = Recorder()
    up.route("GET", "/base/odd", odd)
    port = await up.serve(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port, forward_headers="[Accept-Encoding]")
    resp = await client.get("/api/svc/odd", headers={"Accept-Encoding": "br, zstd"})
    assert resp.status == 502
    assert (await resp.json())["error"] == "upstream_error"
    assert up.last.headers["Accept-Encoding"] == "gzip, deflate"  # never the client's, even when listed


# --- request body -----------------------------------------------------------------------------------------------

BODY_LIMIT = """
forwards:
  upload: { upstream: svc, path: /upload, methods: [POST], max_body: 1kb }
"""


async def upload_upstream(aiohttp_server) -> tuple[Recorder, int]:
    async def upload(request: web.Request) -> web.Response:
        data = await request.read()
        return web.json_response({"length": len(data), "type": request.content_type})

    up = Recorder()
    up.route("POST", "/base/upload", upload)
    return up, await up.serve(aiohttp_server)


async def test_request_body_passed_within_max_body(aiohttp_server, aiohttp_client, tmp_path):
    up, port = await upload_upstream(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port, BODY_LIMIT)
    resp = await client.post("/api/upload", data=b"x" * 1024, headers={"Content-Type": "application/x-thing"})
    assert resp.status == 200
    assert await resp.json() == {"length": 1024, "type": "application/x-thing"}


async def test_declared_body_over_max_body_is_413_before_the_upstream(aiohttp_server, aiohttp_client, tmp_path):
    up, port = await upload_upstream(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port, BODY_LIMIT)
    resp = await client.post("/api/upload", data=b"x" * 1025)
    assert resp.status == 413
    assert (await resp.json())["error"] == "payload_too_large"
    # refused on the declared length alone: 100 of 5000 bytes sent, and the answer comes without the rest
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100)
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 413 ")
    assert up.seen == []


async def test_chunked_body_over_max_body_is_413(aiohttp_server, aiohttp_client, tmp_path):
    up, port = await upload_upstream(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port, BODY_LIMIT)

    async def chunks():
        for _ in range(8):
            yield b"y" * 512

    resp = await client.post("/api/upload", data=chunks())
    assert resp.status == 413
    assert (await resp.json())["error"] == "payload_too_large"


async def test_server_max_body_applies_to_forwards(aiohttp_server, aiohttp_client, tmp_path):
    up, port = await upload_upstream(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port, server="server: { max_body: 100 }\n")
    resp = await client.post("/api/svc/upload", data=b"z" * 101)
    assert resp.status == 413
    resp = await client.post("/api/svc/upload", data=b"z" * 100)
    assert resp.status == 200 and (await resp.json())["length"] == 100


async def test_not_modified_passes_validators(aiohttp_server, aiohttp_client, tmp_path):
    async def cached(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v7"':
            return web.Response(status=304, headers={"ETag": '"v7"', "Server": "nginx"})
        return web.Response(text="fresh", headers={"ETag": '"v7"'})

    up = Recorder()
    up.route("GET", "/base/c", cached)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server))
    resp = await client.get("/api/svc/c", headers={"If-None-Match": '"v7"'})
    assert resp.status == 304 and resp.headers["ETag"] == '"v7"'
    assert await resp.read() == b""
    assert_clean(resp)


def test_leaks_helper_sees_every_form() -> None:
    """The checker itself must be able to fail: each form of each secret is found."""
    for secret in (SECRET, QSECRET):
        for form in (secret, quote(secret, safe=""), secret[:12], secret[-12:], unquote(quote(secret))):
            assert leaks(f"x{form}y"), form
    assert leaks(b"...sk-live-TOPSECR...")
    assert not leaks("sk-live-[REDACTED]")


async def test_log_check_catches_a_leak_in_a_message_or_a_traceback(caplog):
    log = logging.getLogger("gateway.test")
    log.warning("harmless %s", "[REDACTED]")
    assert leaky_log_lines(caplog.records) == []
    log.warning("oops %s", quote(QSECRET, safe=""))
    try:
        raise ValueError(f"bad key {SECRET}")
    except ValueError:
        log.exception("failed")
    assert len(leaky_log_lines(caplog.records)) == 2
    caplog.clear()  # or no_secret_logged would rightly fail this test


async def test_the_request_id_goes_upstream_too(aiohttp_server, aiohttp_client, tmp_path):
    # the client's plain id is the one the upstream sees and the client gets back; without one, a new id, the same
    # both ways, so a line in the upstream's log and one in the gateway's can be matched
    up, port = await echo_upstream(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port, ITEMS)
    resp = await client.get("/api/svc/x", headers={"X-Request-Id": "trace-42"})
    assert resp.status == 200 and resp.headers["X-Request-Id"] == "trace-42"
    assert up.last.headers.getall("X-Request-Id") == ["trace-42"]
    resp = await client.get("/api/svc/x")
    made = resp.headers["X-Request-Id"]
    assert len(made) == 32 and up.last.headers.getall("X-Request-Id") == [made]
    resp = await client.get("/api/svc/x", headers={"X-Request-Id": "bad id\twith tab"})  # not a plain token
    assert up.last.headers.getall("X-Request-Id") == [resp.headers["X-Request-Id"]] != ["bad id\twith tab"]
