"""clients.api_keys: a key by X-API-Key or Authorization: Bearer, else 401; public routes, OPTIONS, health exempt."""

from __future__ import annotations

import pytest
from aiohttp import web
from routes_support import make_config, write_tree

from gateway.app import build_table, create_app
from gateway.config import load_config

KEYS = {"CLIENT_KEY": "ck-live-CLIENTKEY-0123456789", "OTHER_KEY": "ck-live-OTHERKEY-9876543210"}
ROUTES = {
    "user.py": "async def GET(req):\n    return {'name': 'John Doe'}\n",
    "open.py": "config = {'public': True}\nasync def GET(req):\n    return {'open': True}\n",
    "spends.py": "async def handler(req):\n    return {'spent': req.method}\n",
    "own_options.py": "async def GET(req):\n    return 1\nasync def OPTIONS(req):\n    return {'spent': 'OPTIONS'}\n",
}
YAML = """
clients:
  api_keys: ["${CLIENT_KEY}", "${OTHER_KEY}"]
upstreams:
  svc: { url: "http://127.0.0.1:%d/base" }
forwards:
  svc/[...path]: { upstream: svc, path: "/{path}" }
  free/[...path]: { upstream: svc, path: "/{path}", public: true }
"""


async def _client(aiohttp_client, aiohttp_server, tmp_path):
    seen: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"headers": dict(request.headers)})

    app = web.Application()
    app.router.add_get("/base/{tail:.*}", echo)
    upstream = await aiohttp_server(app)
    write_tree(tmp_path, {f"routes/{name}": text for name, text in ROUTES.items()})
    (tmp_path / "config.yaml").write_text(YAML % upstream.port)
    config = load_config(tmp_path / "config.yaml", environ=KEYS)
    return await aiohttp_client(create_app(config, build_table(config))), seen


@pytest.mark.parametrize("headers", [
    {},
    {"X-API-Key": "wrong"},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "Basic " + KEYS["CLIENT_KEY"]},
    {"X-API-Key": KEYS["CLIENT_KEY"][:-1]},
    {"X-API-Key": ""},
])
async def test_no_or_wrong_key_is_401(aiohttp_client, aiohttp_server, tmp_path, headers):
    client, seen = await _client(aiohttp_client, aiohttp_server, tmp_path)
    for path in ("/api/user", "/api/svc/x"):
        resp = await client.get(path, headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        body = await resp.json()
        assert body["error"] == "unauthorized"
        assert KEYS["CLIENT_KEY"] not in await resp.text()
    assert seen == []  # nothing reached the upstream


@pytest.mark.parametrize("headers", [
    {"X-API-Key": KEYS["CLIENT_KEY"]},
    {"X-API-Key": KEYS["OTHER_KEY"]},
    {"Authorization": "Bearer " + KEYS["CLIENT_KEY"]},
    {"Authorization": "bearer  " + KEYS["OTHER_KEY"]},
])
async def test_a_valid_key_passes_and_is_never_forwarded(aiohttp_client, aiohttp_server, tmp_path, headers):
    client, seen = await _client(aiohttp_client, aiohttp_server, tmp_path)
    assert (await client.get("/api/user", headers=headers)).status == 200
    resp = await client.get("/api/svc/x", headers=headers)
    assert resp.status == 200
    text = await resp.text()
    assert all(key not in text for key in KEYS.values())
    assert len(seen) == 1
    assert all(key not in str(seen[0]) for key in KEYS.values())  # the client's key stays at the gateway


async def test_public_routes_options_and_health_need_no_key(aiohttp_client, aiohttp_server, tmp_path):
    client, seen = await _client(aiohttp_client, aiohttp_server, tmp_path)
    assert (await client.get("/api/open")).status == 200
    assert (await client.get("/api/free/x")).status == 200
    assert len(seen) == 1
    assert (await client.options("/api/user")).status == 204
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200


@pytest.mark.parametrize("path", ["/api/spends", "/api/own_options"])
async def test_a_module_that_answers_options_itself_needs_the_key_for_it(aiohttp_client, aiohttp_server, tmp_path,
                                                                         path):
    client, _ = await _client(aiohttp_client, aiohttp_server, tmp_path)
    resp = await client.options(path)
    assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
    resp = await client.options(path, headers={"X-API-Key": KEYS["CLIENT_KEY"]})
    assert resp.status == 200 and await resp.json() == {"spent": "OPTIONS"}


async def test_the_gateways_own_options_answer_needs_no_key(aiohttp_client, aiohttp_server, tmp_path):
    client, seen = await _client(aiohttp_client, aiohttp_server, tmp_path)
    for path in ("/api/user", "/api/svc/x"):
        resp = await client.options(path)
        assert resp.status == 204 and "OPTIONS" in resp.headers["Allow"]
    assert seen == []  # nothing reached the upstream


async def test_without_api_keys_everything_is_open(aiohttp_client, tmp_path):
    config = make_config(tmp_path, ROUTES)
    client = await aiohttp_client(create_app(config, build_table(config)))
    assert (await client.get("/api/user")).status == 200
