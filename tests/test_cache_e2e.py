"""The response cache through the real gateway against a real upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from aiohttp import web
from upstream_support import (  # noqa: F401  (no_secret_logged is an autouse fixture)
    ENV,
    SECRET,
    SECRETS,
    UPSTREAM,
    Recorder,
    assert_clean,
    gateway,
    leaks,
    no_secret_logged,
)

from gateway.app import STATE, build_table, create_app
from gateway.config import load_config

WAIT = 10  # seconds: only reached when the behaviour under test is broken
CLIENT_KEY = "ck-live-CLIENTKEY-0123456789abcdef"
OTHER_KEY = "ck-live-OTHERKEY-fedcba9876543210"
CACHED = "forwards:\n  svc/[...path]: { upstream: svc, path: '/{path}', cache: 5m }\n"
WEATHER = {"base": "stations", "id": 7, "main": {"temp": 12.5, "humidity": 80},
           "weather": [{"description": f"rain near {SECRET}"}]}
SHAPED = """
forwards:
  weather/[city]:
    upstream: svc
    path: /weather?q={city}
    cache: 5m
    response:
      drop: [base, id]
      select: "{temp: main.temp, summary: weather[0].description}"
"""


def upstream(handler) -> Recorder:
    up = Recorder()
    up.route("*", "/base/{tail:.*}", handler)
    return up


async def counted_gateway(aiohttp_client, tmp_path: Path, port: int, forwards: str, expected: int, *,
                          timeout: str = "5s"):
    """The gateway, plus an event set once ``expected`` requests have reached it (a middleware in front of every
    route): then all of them are about to enter the cache step, which they pass without any I/O of their own."""
    (tmp_path / "config.yaml").write_text(UPSTREAM.format(port=port, timeout=timeout, retries=0, forward_headers="[]",
                                                         expose_headers="[]") + forwards)
    (tmp_path / "routes").mkdir(exist_ok=True)
    config = load_config(tmp_path / "config.yaml", environ=ENV)
    app = create_app(config, build_table(config))
    arrived = asyncio.Event()
    count = 0

    @web.middleware
    async def arrival(request: web.Request, handler):
        nonlocal count
        count += 1
        if count == expected:
            arrived.set()
        return await handler(request)

    app.middlewares.append(arrival)
    return await aiohttp_client(app), arrived


async def all_waiting(arrived: asyncio.Event, up: Recorder) -> None:
    async with asyncio.timeout(WAIT):
        await arrived.wait()
        while not up.seen:
            await asyncio.sleep(0)
    for _ in range(20):  # a few loop turns for the last arrivals to reach the shared call: no I/O in between
        await asyncio.sleep(0)


async def test_a_cached_answer_is_byte_identical_to_the_live_masked_one(aiohttp_server, aiohttp_client, tmp_path):
    async def weather(request: web.Request) -> web.Response:
        return web.json_response(WEATHER, headers={"ETag": '"w1"', "X-Upstream-Secret": SECRET, "Server": "nginx"})

    up = upstream(weather)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), SHAPED)
    live = await client.get("/api/weather/paris")
    live_body = await live.read()
    assert live.status == 200 and live.headers["X-Cache"] == "MISS" and "Age" not in live.headers
    assert json.loads(live_body) == {"temp": 12.5, "summary": "rain near [REDACTED]"}
    hit = await client.get("/api/weather/paris")
    hit_body = await hit.read()
    assert hit.status == 200 and hit.headers["X-Cache"] == "HIT" and hit.headers["Age"] in ("0", "1")
    assert hit_body == live_body
    same = ("Content-Type", "Content-Length", "ETag")
    assert [hit.headers.get(h) for h in same] == [live.headers.get(h) for h in same]
    assert hit.headers["X-Request-Id"] != live.headers["X-Request-Id"]  # its own, never the stored one
    assert_clean(hit, hit_body)
    assert len(up.seen) == 1
    state = client.app[STATE]
    kept = "\n".join(f"{key} {entry!r}" for key, entry in state.answers.items())
    assert not leaks(kept) and "paris" not in kept.split(" ")[0]


async def test_ten_concurrent_misses_make_one_upstream_call(aiohttp_server, aiohttp_client, tmp_path):
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"n": 1})

    up = upstream(slow)
    client, arrived = await counted_gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), CACHED, 10)
    tasks = [asyncio.create_task(client.get("/api/svc/x")) for _ in range(10)]
    await all_waiting(arrived, up)
    assert len(up.seen) == 1
    release.set()
    responses = await asyncio.gather(*tasks)
    bodies = [await r.read() for r in responses]
    assert [r.status for r in responses] == [200] * 10 and set(bodies) == {b'{"n": 1}'}
    assert sorted(r.headers["X-Cache"] for r in responses) == ["HIT"] * 9 + ["MISS"]
    assert len(up.seen) == 1


async def test_a_failed_miss_is_shared_not_kept_and_does_not_poison(aiohttp_server, aiohttp_client, tmp_path):
    release = asyncio.Event()
    answers = [500, 200]

    async def flaky(request: web.Request) -> web.Response:
        await release.wait()
        status = answers.pop(0)
        return web.json_response({"status": status, "leak": SECRET}, status=status)

    up = upstream(flaky)
    client, arrived = await counted_gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), CACHED, 5)
    tasks = [asyncio.create_task(client.get("/api/svc/x")) for _ in range(5)]
    await all_waiting(arrived, up)
    release.set()
    responses = await asyncio.gather(*tasks)
    for resp in responses:
        assert resp.status == 502 and (await resp.json())["error"] == "upstream_error"
        assert resp.headers["X-Cache"] == "MISS"
    assert len(up.seen) == 1
    retry = await client.get("/api/svc/x")  # the next request calls again
    assert retry.status == 200 and retry.headers["X-Cache"] == "MISS"
    assert (await client.get("/api/svc/x")).headers["X-Cache"] == "HIT"
    assert len(up.seen) == 2


async def test_waiters_get_504_when_the_shared_call_times_out(aiohttp_server, aiohttp_client, tmp_path):
    release = asyncio.Event()

    async def hung(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    up = upstream(hung)
    client, arrived = await counted_gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), CACHED, 4,
                                            timeout="300ms")
    try:
        tasks = [asyncio.create_task(client.get("/api/svc/x")) for _ in range(4)]
        await all_waiting(arrived, up)
        responses = await asyncio.gather(*tasks)
        for resp in responses:
            assert resp.status == 504 and (await resp.json())["error"] == "upstream_timeout"
            assert resp.headers["X-Cache"] == "MISS"
        assert len(up.seen) == 1
    finally:
        release.set()


async def test_what_may_not_be_kept_is_not(aiohttp_server, aiohttp_client, tmp_path):
    async def answer(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["tail"]
        if kind == "no-store":
            return web.json_response({}, headers={"Cache-Control": "no-store"})
        if kind == "private":
            return web.json_response({}, headers={"Cache-Control": "private, max-age=60"})
        if kind == "created":
            return web.json_response({}, status=201)
        if kind in ("sse", "chunked"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream" if kind == "sse" else "text/plain"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b"data: 1\n\n")
            return resp
        return web.json_response({})

    up = upstream(answer)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), CACHED)
    for kind in ("no-store", "private", "created", "sse"):
        for _ in range(2):
            resp = await client.get(f"/api/svc/{kind}")
            await resp.read()
            assert resp.headers["X-Cache"] == "MISS", kind
    assert len(up.seen) == 8
    for _ in range(2):
        resp = await client.post("/api/svc/plain")
        assert resp.status == 405  # the forward allows GET only: and nothing is cached for another method


async def test_a_small_chunked_answer_is_kept_and_a_large_one_streams_uncached(aiohttp_server, aiohttp_client,
                                                                             tmp_path):
    async def answer(request: web.Request) -> web.StreamResponse:
        size = 3 * 1024 * 1024 if request.match_info["tail"] == "large" else 10
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'{"pad": "')
        for _ in range(max(1, size // 65536)):
            await resp.write(b"x" * min(size, 65536))
        await resp.write(b'"}')
        return resp

    up = upstream(answer)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), CACHED)
    seen = []
    for kind in ("small", "small", "large", "large"):
        resp = await client.get(f"/api/svc/{kind}")
        body = await resp.read()
        assert resp.status == 200 and body.endswith(b'"}')
        seen.append(resp.headers["X-Cache"])
    assert seen == ["MISS", "HIT", "MISS", "MISS"]
    assert len(up.seen) == 3


async def test_head_is_served_from_a_cached_get(aiohttp_server, aiohttp_client, tmp_path):
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    up = upstream(answer)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), CACHED)
    get = await client.get("/api/svc/x")
    body = await get.read()
    head = await client.head("/api/svc/x")
    assert head.status == 200 and head.headers["X-Cache"] == "HIT"
    assert head.headers["Content-Length"] == str(len(body)) and await head.read() == b""
    assert len(up.seen) == 1


async def test_upstream_404_is_kept_and_vary_headers_split_the_cache(aiohttp_server, aiohttp_client, tmp_path):
    async def answer(request: web.Request) -> web.Response:
        if request.match_info["tail"] == "missing":
            return web.json_response({"error": "no such thing"}, status=404)
        return web.json_response({"lang": request.headers.get("Accept-Language"), "accept": request.headers["Accept"]})

    up = upstream(answer)
    keys = 'clients:\n  api_keys: ["${CLIENT_KEY}", "${OTHER_KEY}"]\n'
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), CACHED,
                           env=dict(ENV, CLIENT_KEY=CLIENT_KEY, OTHER_KEY=OTHER_KEY), server=keys)
    me, other = {"X-API-Key": CLIENT_KEY}, {"Authorization": f"Bearer {OTHER_KEY}"}
    assert [(await client.get("/api/svc/missing", headers=me)).headers["X-Cache"] for _ in range(2)] == ["MISS", "HIT"]
    for headers in ({"Accept": "application/json"}, {"Accept": "text/csv"},
                    {"Accept": "text/csv", "Accept-Language": "fr"}):
        first = await client.get("/api/svc/x", headers={**headers, **me})
        second = await client.get("/api/svc/x", headers={**headers, **other})  # another client key: same entry
        assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
        assert await first.read() == await second.read()
    assert len(up.seen) == 4
    stored = "\n".join(client.app[STATE].answers.keys())
    assert not leaks(stored, (CLIENT_KEY, OTHER_KEY, *SECRETS)) and "csv" not in stored and "fr" not in stored


async def test_rate_limits_sit_above_the_cache_and_are_never_stored(aiohttp_server, aiohttp_client, tmp_path):
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({})

    up = upstream(answer)
    forwards = "forwards:\n  svc/[...path]: { upstream: svc, path: '/{path}', cache: 5m, rate_limit: 3/minute }\n"
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), forwards)
    seen = []
    for _ in range(4):
        resp = await client.get("/api/svc/x")
        seen.append((resp.status, resp.headers.get("X-Cache"), resp.headers["RateLimit"].split(";t=")[0]))
    assert seen == [(200, "MISS", '"route";r=2'), (200, "HIT", '"route";r=1'), (200, "HIT", '"route";r=0'),
                    (429, None, '"route";r=0')]
    assert len(up.seen) == 1


async def test_a_file_route_is_cached_unless_it_sets_a_cookie(aiohttp_server, aiohttp_client, tmp_path):
    routes = {
        "clock.py": "import itertools\nn = itertools.count()\nconfig = {'cache': '30s'}\n"
                    "async def GET(req):\n    return {'n': next(n)}\n",
        "session.py": "import itertools\nn = itertools.count()\nconfig = {'cache': '30s'}\n"
                      "async def GET(req):\n    return {'n': next(n)}, 200, {'Set-Cookie': 'sid=abc'}\n",
    }
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({})

    up = upstream(answer)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), routes=routes)
    assert [await (await client.get("/api/clock")).json() for _ in range(3)] == [{"n": 0}] * 3
    assert [await (await client.get("/api/session")).json() for _ in range(3)] == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_the_cache_is_bounded_by_server_cache_size(aiohttp_server, aiohttp_client, tmp_path):
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 4000, content_type="application/octet-stream")

    up = upstream(answer)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), CACHED,
                           server="server:\n  cache_size: 20kb\n")
    async with aiohttp.ClientSession() as session:
        for i in range(40):
            async with session.get(client.make_url(f"/api/svc/item{i}")) as resp:
                assert len(await resp.read()) == 4000
    answers = client.app[STATE].answers
    assert answers.maxsize == 20 * 1024 and answers.currsize <= 20 * 1024 and 1 <= len(answers) <= 5
    assert (await client.get("/api/svc/item39")).headers["X-Cache"] == "HIT"  # the most recent stays
    assert (await client.get("/api/svc/item0")).headers["X-Cache"] == "MISS"  # the least recent went
