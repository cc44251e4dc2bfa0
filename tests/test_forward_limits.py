"""A shaped or URL-rewritten answer is read whole, so it has a ceiling (server.max_response): past it, 502."""

from __future__ import annotations

import pytest
from aiohttp import web
from upstream_support import Recorder, gateway

FORWARDS = """
forwards:
  shaped: { upstream: svc, path: /doc, response: { select: "{n: n}" } }
  rewritten: { upstream: svc, path: /doc, rewrite_urls: true }
  plain: { upstream: svc, path: /doc }
"""


@pytest.fixture
async def client(aiohttp_client, aiohttp_server, tmp_path):
    up = Recorder()

    async def doc(request: web.Request) -> web.Response:
        size = int(request.query.get("size", "10"))
        return web.Response(text='{"n": 1, "pad": "' + "x" * size + '"}', content_type="application/json")

    up.route("GET", "/base/doc", doc)
    return await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), FORWARDS,
                         server="server: { max_response: 1000 }\n")


@pytest.mark.parametrize("path", ["/api/shaped", "/api/rewritten"])
async def test_an_answer_over_the_shaping_limit_is_a_502(client, path):
    resp = await client.get(path, params={"size": "5000"})
    assert resp.status == 502
    assert (await resp.json())["error"] == "upstream_error"


async def test_an_answer_under_the_limit_is_shaped_and_a_large_plain_one_passes(client):
    resp = await client.get("/api/shaped", params={"size": "10"})
    assert resp.status == 200 and await resp.json() == {"n": 1}
    resp = await client.get("/api/plain", params={"size": "5000"})  # not shaped: streamed or read as usual
    assert resp.status == 200 and len(await resp.read()) > 5000


async def test_a_compressed_request_body_reaches_the_upstream_decoded(aiohttp_client, aiohttp_server, tmp_path):
    import gzip

    got: list[tuple[tuple[str | None, str | None], bytes]] = []

    async def upload(request: web.Request) -> web.Response:
        encoding = request.headers.get("Content-Encoding"), request.headers.get("Content-Length")
        got.append((encoding, await request.read()))
        return web.json_response({"ok": True})

    up = Recorder()
    up.route("POST", "/base/upload", upload)
    forwards = "forwards:\n  upload: { upstream: svc, path: /upload, methods: [POST] }\n"
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), forwards)
    packed = gzip.compress(b'{"a": 1}')
    resp = await client.post("/api/upload", data=packed, headers={"Content-Encoding": "gzip"})
    assert resp.status == 200
    # the gateway's server decoded it: it goes on decoded, with neither the encoding nor the compressed length
    assert got == [((None, None), b'{"a": 1}')]
    resp = await client.post("/api/upload", data=b"plain")
    assert got[-1] == ((None, "5"), b"plain")
