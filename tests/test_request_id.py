"""X-Request-Id: the client's plain token is kept, anything else replaced; on every kind of response."""

from __future__ import annotations

import re

import pytest
from routes_support import make_client

ROUTES = {
    "user.py": "async def GET(req):\n    return {'name': 'John Doe'}\n",
    "boom.py": "async def GET(req):\n    raise RuntimeError('boom')\n",
    "stream.py": (
        "from aiohttp import web\n"
        "async def GET(req):\n"
        "    resp = web.StreamResponse()\n"
        "    await resp.prepare(req)\n"
        "    await resp.write(b'chunk')\n"
        "    return resp\n"
    ),
}
HEX32 = re.compile(r"[0-9a-f]{32}\Z")


@pytest.mark.parametrize("path", ["/api/user", "/api/boom", "/api/stream", "/api/nope", "/nope", "/healthz"])
async def test_every_response_carries_a_made_request_id(aiohttp_client, tmp_path, path):
    client = await make_client(aiohttp_client, tmp_path, ROUTES)
    first = await client.get(path)
    second = await client.get(path)
    assert HEX32.match(first.headers["X-Request-Id"]), first.headers
    assert first.headers["X-Request-Id"] != second.headers["X-Request-Id"]


@pytest.mark.parametrize("given", ["abc-123", "trace:01HQ.x_y", "a" * 128])
async def test_a_plain_client_request_id_is_returned(aiohttp_client, tmp_path, given):
    client = await make_client(aiohttp_client, tmp_path, ROUTES)
    resp = await client.get("/api/user", headers={"X-Request-Id": given})
    assert resp.headers.getall("X-Request-Id") == [given]


@pytest.mark.parametrize("given", ["a" * 129, "has space", "semi;colon", "<script>", "é"])
async def test_an_odd_client_request_id_is_replaced(aiohttp_client, tmp_path, given):
    client = await make_client(aiohttp_client, tmp_path, ROUTES)
    resp = await client.get("/api/user", headers={"X-Request-Id": given})
    assert HEX32.match(resp.headers["X-Request-Id"]), resp.headers


async def test_health_checks_answer_405_json_to_other_methods(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, ROUTES)
    for path in ("/healthz", "/readyz"):
        resp = await client.post(path)
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, HEAD"
        body = await resp.json()
        assert body == {"error": "method_not_allowed", "message": "POST is not allowed here; allowed: GET, HEAD"}

