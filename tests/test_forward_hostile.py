"""Hostile or odd input found in review: each must end in a clear answer, never a 500 or a leak."""

from __future__ import annotations

from aiohttp import web
from upstream_support import Recorder, assert_clean, gateway, raw_get

from gateway.config import UpstreamConfig
from gateway.pipeline.urlmap import UrlMapper


async def test_a_header_that_http_cannot_carry_upstream_is_a_400(aiohttp_server, aiohttp_client, tmp_path):
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    up = Recorder()
    up.route("GET", "/base/x", ok)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server))
    reply = await raw_get(client.port, "/api/svc/x", "Accept: \u20ac\r\n")  # UTF-8 bytes in an allowed header
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b'"error": "bad_request"' in reply
    assert up.seen == []


async def test_forward_to_a_base_url_without_a_path_sends_a_valid_request_line(aiohttp_server, aiohttp_client,
                                                                                tmp_path):
    got: list[str] = []

    async def root(request: web.Request) -> web.Response:
        got.append(request.path_qs)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/", root)
    server = await aiohttp_server(app)
    route = "from gateway import forward\nasync def GET(req):\n    return await forward(req, 'bare')\n"
    (tmp_path / "config.yaml").write_text(
        f"upstreams:\n  bare: {{ url: 'http://127.0.0.1:{server.port}', inject: {{ query: {{ k: '${{K}}' }} }} }}\n"
    )
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "bare.py").write_text(route)
    from gateway.app import build_table, create_app
    from gateway.config import load_config

    config = load_config(tmp_path / "config.yaml", environ={"K": "bare-secret-0123456789"})
    client = await aiohttp_client(create_app(config, build_table(config)))
    resp = await client.get("/api/bare")
    assert resp.status == 200, await resp.text()
    assert got == ["/?k=bare-secret-0123456789"]
    assert_clean(resp, await resp.read())


def test_a_location_on_the_upstream_host_spelled_with_a_trailing_dot_is_dropped() -> None:
    rewriter = UrlMapper(UpstreamConfig(name="gh", url="https://api.example.com/v3"), (), "/api")
    assert rewriter.to_gateway("https://api.example.com./v3/x") is None
    assert rewriter.to_gateway("https://API.EXAMPLE.COM./elsewhere") is None
    assert rewriter.to_gateway("https://docs.example.org/x") == "https://docs.example.org/x"


async def test_forward_after_the_handler_read_the_body_sends_that_body(aiohttp_server, aiohttp_client, tmp_path):
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"got": (await request.read()).decode()})

    up = Recorder()
    up.route("POST", "/base/echo", echo)
    route = (
        "from gateway import forward\n"
        "async def POST(req):\n"
        "    data = await req.json()\n"
        "    up = await forward(req, 'svc', '/echo')\n"
        "    return {'seen': data, 'upstream': await up.json()}\n"
    )
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), "", routes={"relay.py": route})
    resp = await client.post("/api/relay", json={"a": 1})
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"seen": {"a": 1}, "upstream": {"got": '{"a": 1}'}}
