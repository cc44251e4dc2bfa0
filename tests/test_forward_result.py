"""What ``forward()`` returns, as a handler author uses it: headers that stick, streaming, bounded reads, and the
same error mapping as a YAML forward when the upstream fails while the handler reads."""

from __future__ import annotations

import asyncio
import gzip
import json

from aiohttp import web
from upstream_support import (  # noqa: F401  (no_secret_logged is an autouse fixture)
    SECRET,
    Recorder,
    assert_clean,
    gateway,
    no_secret_logged,
)

ROUTES = {
    "decorated.py": '''
from gateway import forward

async def GET(req):
    up = await forward(req, "svc", "/echo")
    up.headers["X-Added"] = "yes"
    up.headers.update({"Cache-Control": "max-age=5"})
    up.status = 203
    return up
''',
    "streamed.py": '''
from aiohttp import web
from gateway import forward

async def GET(req):
    up = await forward(req, "svc", "/split")
    resp = web.StreamResponse()
    await resp.prepare(req)
    sizes = []
    async for chunk in up:
        sizes.append(len(chunk))
        await resp.write(chunk)
    await resp.write(("\\nchunks=%d" % len(sizes)).encode())
    return resp
''',
    "chunked.py": '''
from gateway import forward

async def GET(req):
    up = await forward(req, "svc", "/split")
    pieces = [chunk async for chunk in up.iter_chunked(4)]
    return {"max": max(map(len, pieces)), "body": b"".join(pieces).decode()}
''',
    "twice.py": '''
from gateway import forward

async def GET(req):
    up = await forward(req, "svc", "/split")
    async for _ in up:
        pass
    return await up.read()
''',
    "read_then_stream.py": '''
from gateway import forward

async def GET(req):
    up = await forward(req, "svc", "/split")
    first = await up.read()
    again = b"".join([c async for c in up])
    return {"same": first == again}
''',
    "reads/[what].py": '''
from gateway import forward

async def GET(req):
    up = await forward(req, "svc", "/" + req.match_info["what"])
    data = await up.read()
    return {"size": len(data)}
''',
}


async def split(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    half = len(SECRET) // 2
    for part in (b"key is ", SECRET[:half].encode(), SECRET[half:].encode(), b" end"):
        await resp.write(part)
        await asyncio.sleep(0)
    return resp


async def bomb(request: web.Request) -> web.Response:
    body = gzip.compress(b"\0" * (32 * 1024 * 1024))  # 32 MiB inflated from ~32 KiB on the wire
    return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"})


async def stall(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    await resp.write(b"partial")
    await asyncio.wait_for(asyncio.Event().wait(), 10)  # never more: the gateway's timeout ends it
    return resp


async def truncated(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Length": "100"})
    await resp.prepare(request)
    await resp.write(b"only ten!!")
    request.transport.close()
    return resp


async def result_gateway(aiohttp_server, aiohttp_client, tmp_path, **options):
    up = Recorder()
    for path, handler in (("/base/split", split), ("/base/bomb", bomb), ("/base/stall", stall),
                          ("/base/truncated", truncated)):
        up.route("GET", path, handler)

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"echo": request.raw_path, "note": SECRET}, headers={"ETag": '"e"'})

    up.route("*", "/base/{tail:.*}", echo)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), "", routes=ROUTES, **options)
    return up, client


async def test_headers_and_status_set_on_the_result_are_sent(aiohttp_server, aiohttp_client, tmp_path):
    _, client = await result_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.get("/api/decorated")
    body = await resp.read()
    assert resp.status == 203
    assert resp.headers["X-Added"] == "yes" and resp.headers["Cache-Control"] == "max-age=5"
    assert resp.headers["ETag"] == '"e"'
    assert b"[REDACTED]" in body
    assert_clean(resp, body)


async def test_async_for_streams_the_masked_body(aiohttp_server, aiohttp_client, tmp_path):
    _, client = await result_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.get("/api/streamed")
    body = await resp.read()
    assert resp.status == 200
    text = body.decode()
    assert text.startswith("key is [REDACTED] end\nchunks=")
    assert int(text.rsplit("=", 1)[1]) >= 2  # it came as it was sent, not in one piece
    assert_clean(resp, body)


async def test_iter_chunked_bounds_each_chunk(aiohttp_server, aiohttp_client, tmp_path):
    _, client = await result_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.get("/api/chunked")
    assert await resp.json() == {"max": 4, "body": "key is [REDACTED] end"}


async def test_reading_after_streaming_is_a_clear_error_and_read_then_stream_works(aiohttp_server, aiohttp_client,
                                                                                 tmp_path, caplog):
    _, client = await result_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.get("/api/twice")
    assert resp.status == 500 and (await resp.json())["error"] == "internal_error"
    assert "already streamed" in caplog.text
    resp = await client.get("/api/read_then_stream")
    assert await resp.json() == {"same": True}


async def test_read_is_bounded_after_decompression(aiohttp_server, aiohttp_client, tmp_path):
    _, client = await result_gateway(aiohttp_server, aiohttp_client, tmp_path, server="server: { max_response: 1mb }\n")
    resp = await client.get("/api/reads/bomb")
    assert resp.status == 502 and (await resp.json())["error"] == "upstream_error"
    resp = await client.get("/api/reads/echo")
    assert resp.status == 200 and json.loads(await resp.read())["size"] > 0


async def test_a_stall_while_the_handler_reads_is_a_504(aiohttp_server, aiohttp_client, tmp_path):
    _, client = await result_gateway(aiohttp_server, aiohttp_client, tmp_path, timeout="0.3s")
    resp = await client.get("/api/reads/stall")
    assert resp.status == 504 and (await resp.json())["error"] == "upstream_timeout"


async def test_a_truncated_body_read_by_the_handler_is_a_502(aiohttp_server, aiohttp_client, tmp_path):
    _, client = await result_gateway(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.get("/api/reads/truncated")
    assert resp.status == 502 and (await resp.json())["error"] == "upstream_unavailable"
