"""Rate limits through the real gateway against a real upstream on 127.0.0.1: exactness, scopes, identities."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest
from aiohttp import web
from upstream_support import (  # noqa: F401  (no_secret_logged is an autouse fixture)
    Recorder,
    gateway,
    leaks,
    no_secret_logged,
)

WAIT = 10  # seconds: only reached when the behaviour under test is broken
CLIENT_KEYS = {"CLIENT_A": "ck-live-CLIENTA-0123456789abcdef", "CLIENT_B": "ck-live-CLIENTB-fedcba9876543210"}
ENV = {"SVC_KEY": "sk-live-TOPSECRET-0123456789abcdef", "SVC_QKEY": "qk/TOPSECRET+ab=cd~Z98765", **CLIENT_KEYS}
ALL_SECRETS = (ENV["SVC_KEY"], ENV["SVC_QKEY"], *CLIENT_KEYS.values())


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def upstream(handler=ok) -> Recorder:
    up = Recorder()
    up.route("*", "/base/{tail:.*}", handler)
    return up


async def statuses(client, path: str, n: int, **kwargs) -> list[int]:
    out = []
    for _ in range(n):
        resp = await client.get(path, **kwargs)
        await resp.read()
        out.append(resp.status)
    return out


async def concurrent_exactness(aiohttp_server, aiohttp_client, tmp_path, n: int, k: int) -> None:
    """n requests at once against a limit of k: the admitted ones are held at the upstream until all are decided."""
    release, decided = asyncio.Event(), asyncio.Event()
    outcomes: list[int] = []

    def count(status: int) -> None:
        outcomes.append(status)
        if len(outcomes) == n:
            decided.set()

    async def held(request: web.Request) -> web.Response:
        count(200)
        await release.wait()
        return web.json_response({"ok": True})

    up = upstream(held)
    forwards = f"forwards:\n  svc/[...path]: {{ upstream: svc, path: '/{{path}}', rate_limit: {k}/minute }}\n"
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), forwards, timeout="30s")
    url = str(client.make_url("/api/svc/x"))

    async def one(session: aiohttp.ClientSession) -> int:
        async with session.get(url) as resp:
            if resp.status == 429:
                count(429)
                assert (await resp.json())["error"] == "rate_limited"
                assert int(resp.headers["Retry-After"]) >= 1
            await resp.read()
            return resp.status

    # no connection limit: the k held requests must not keep the others from being sent
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(n)]
        async with asyncio.timeout(WAIT):
            await decided.wait()
        release.set()
        results = await asyncio.gather(*tasks)
    assert results.count(200) == k and outcomes.count(200) == k
    assert results.count(429) == n - k
    assert len(up.seen) == k


async def test_200_concurrent_against_50_admit_exactly_50(aiohttp_server, aiohttp_client, tmp_path):
    await concurrent_exactness(aiohttp_server, aiohttp_client, tmp_path, 200, 50)


async def test_1000_concurrent_against_100_admit_exactly_100(aiohttp_server, aiohttp_client, tmp_path):
    await concurrent_exactness(aiohttp_server, aiohttp_client, tmp_path, 1000, 100)


async def test_answers_carry_the_ietf_fields_and_429_says_when(aiohttp_server, aiohttp_client, tmp_path):
    up = upstream()
    forwards = "forwards:\n  svc/[...path]: { upstream: svc, path: '/{path}', rate_limit: 3/minute }\n"
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), forwards,
                           server="clients:\n  rate_limit: 100/hour\n")
    for remaining in (2, 1, 0):
        resp = await client.get("/api/svc/x")
        assert resp.status == 200
        assert resp.headers["RateLimit-Policy"] == '"clients";q=100;w=3600, "route";q=3;w=60'
        match = re.fullmatch(rf'"clients";r={97 + remaining};t=(\d+), "route";r={remaining};t=(\d+)',
                             resp.headers["RateLimit"])
        assert match and 3590 <= int(match[1]) <= 3600 and 50 <= int(match[2]) <= 60, resp.headers["RateLimit"]
    resp = await client.get("/api/svc/x")
    assert resp.status == 429
    body = await resp.json()
    assert body["error"] == "rate_limited" and "route limit of 3/minute" in body["message"]
    route_t = int(re.search(r'"route";r=0;t=(\d+)', resp.headers["RateLimit"])[1])
    assert resp.headers["Retry-After"] == str(route_t)  # the same truth in both fields
    assert '"clients";r=97;' in resp.headers["RateLimit"]  # the refused request spent nothing
    assert resp.headers["RateLimit-Policy"] == '"clients";q=100;w=3600, "route";q=3;w=60'
    assert "X-Request-Id" in resp.headers
    assert len(up.seen) == 3


async def test_clients_limit_counts_across_every_route_file_routes_too(aiohttp_server, aiohttp_client, tmp_path):
    up = upstream()
    routes = {
        "hello.py": "async def GET(req):\n    return {'hello': True}\n",
        "tight.py": "config = {'rate_limit': '1/minute'}\nasync def GET(req):\n    return {'tight': True}\n",
    }
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), routes=routes,
                           server="clients:\n  rate_limit: 4/minute\n")
    assert await statuses(client, "/api/tight", 2) == [200, 429]  # its module's own limit
    resp = await client.get("/api/tight")
    assert resp.headers["RateLimit-Policy"] == '"clients";q=4;w=60, "route";q=1;w=60'
    assert await statuses(client, "/api/hello", 2) == [200, 200]
    assert await statuses(client, "/api/svc/x", 2) == [200, 429]  # 1 + 2 + 1 = 4: the clients budget is spent
    assert await statuses(client, "/api/hello", 1) == [429]
    assert len(up.seen) == 1


@pytest.mark.parametrize("logs", ["", "server:\n  access_log: false\n  metrics: false\n"])
async def test_two_client_keys_have_separate_budgets(aiohttp_server, aiohttp_client, tmp_path, logs):
    """Also with no access log and no metrics (then only the limit needs to know who is calling)."""
    up = upstream()
    forwards = "forwards:\n  svc/[...path]: { upstream: svc, path: '/{path}', rate_limit: 2/minute }\n"
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), forwards, env=ENV,
                           server=logs + 'clients:\n  api_keys: ["${CLIENT_A}", "${CLIENT_B}"]\n')
    a = {"X-API-Key": CLIENT_KEYS["CLIENT_A"]}
    b = {"Authorization": f"Bearer {CLIENT_KEYS['CLIENT_B']}"}
    assert await statuses(client, "/api/svc/x", 3, headers=a) == [200, 200, 429]
    assert await statuses(client, "/api/svc/x", 3, headers=b) == [200, 200, 429]
    # the same key however it is sent is the same client
    assert await statuses(client, "/api/svc/x", 1, headers={"Authorization": f"Bearer {CLIENT_KEYS['CLIENT_A']}"}) \
        == [429]


async def test_401s_do_not_count(aiohttp_server, aiohttp_client, tmp_path):
    up = upstream()
    forwards = "forwards:\n  svc/[...path]: { upstream: svc, path: '/{path}', rate_limit: 2/minute }\n"
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), forwards, env=ENV,
                           server='clients:\n  api_keys: ["${CLIENT_A}"]\n')
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": CLIENT_KEYS["CLIENT_B"]}) * 3:
        resp = await client.get("/api/svc/x", headers=headers)
        assert resp.status == 401 and "RateLimit" not in resp.headers
    assert await statuses(client, "/api/svc/x", 3, headers={"X-API-Key": CLIENT_KEYS["CLIENT_A"]}) == [200, 200, 429]


async def test_a_spoofed_forwarded_for_buys_no_new_budget(aiohttp_server, aiohttp_client, tmp_path):
    up = upstream()
    forwards = "forwards:\n  svc/[...path]: { upstream: svc, path: '/{path}', rate_limit: 2/minute }\n"
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), forwards,
                           server="server:\n  trusted_proxies: [10.0.0.0/8]\n")  # the test client, 127.0.0.1, is not
    results = []
    for i in range(6):
        resp = await client.get("/api/svc/x", headers={"X-Forwarded-For": f"198.51.100.{i}"})
        results.append(resp.status)
    assert results == [200, 200, 429, 429, 429, 429]


async def test_made_up_keys_on_a_public_forward_buy_no_new_budget(aiohttp_server, aiohttp_client, tmp_path):
    up = upstream()
    forwards = "forwards:\n  svc/[...path]: { upstream: svc, path: '/{path}', rate_limit: 2/minute, public: true }\n"
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), forwards, env=ENV,
                           server='clients:\n  api_keys: ["${CLIENT_A}"]\n')
    results = []
    for i in range(5):
        resp = await client.get("/api/svc/x", headers={"X-API-Key": f"made-up-{i}"})
        results.append(resp.status)
    assert results == [200, 200, 429, 429, 429]


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_budget(aiohttp_server, aiohttp_client, tmp_path):
    up = upstream()
    forwards = "forwards:\n  svc/[...path]: { upstream: svc, path: '/{path}', rate_limit: 1/minute }\n"
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), forwards,
                           server="server:\n  trusted_proxies: [127.0.0.1, '::1']\n")
    for client_ip in ("198.51.100.7", "198.51.100.8", "2001:db8:1:2::1"):
        # the left entry is what the client wrote itself: never believed
        xff = {"X-Forwarded-For": f"6.6.6.6, {client_ip}"}
        assert await statuses(client, "/api/svc/x", 2, headers=xff) == [200, 429]
    same_64 = {"X-Forwarded-For": "2001:db8:1:2::ffff"}
    assert await statuses(client, "/api/svc/x", 1, headers=same_64) == [429]
    assert await statuses(client, "/api/svc/x", 2) == [200, 429]  # the proxy itself, no header


async def test_health_checks_are_not_rate_limited(aiohttp_server, aiohttp_client, tmp_path):
    up = upstream()
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server),
                           server="clients:\n  rate_limit: 1/minute\n")
    for path in ("/healthz", "/readyz") * 5:
        resp = await client.get(path)
        assert resp.status == 200 and "RateLimit" not in resp.headers
    assert await statuses(client, "/api/svc/x", 2) == [200, 429]


async def test_rate_limit_fields_on_streams_and_on_the_gateways_own_errors(aiohttp_server, aiohttp_client, tmp_path):
    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: one\n\n")
        return resp

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="stack trace")

    up = Recorder()
    up.route("GET", "/base/stream", sse)
    up.route("GET", "/base/broken", broken)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server),
                           server="clients:\n  rate_limit: 10/minute\n")
    resp = await client.get("/api/svc/stream")
    assert resp.status == 200 and await resp.read() == b"data: one\n\n"
    assert resp.headers["RateLimit"].startswith('"clients";r=9;t=')
    resp = await client.get("/api/svc/broken")
    assert resp.status == 502 and resp.headers["RateLimit"].startswith('"clients";r=8;t=')
    resp = await client.get("/api/svc/nothing-here")  # the upstream's 404 passes through
    assert resp.status == 404 and resp.headers["RateLimit"].startswith('"clients";r=7;t=')


async def test_no_client_key_or_secret_in_any_rate_limit_answer(aiohttp_server, aiohttp_client, tmp_path, caplog):
    up = upstream()
    forwards = "forwards:\n  svc/[...path]: { upstream: svc, path: '/{path}', rate_limit: 1/minute }\n"
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), forwards, env=ENV,
                           server='clients:\n  api_keys: ["${CLIENT_A}"]\n')
    shown, seen_statuses = [], []
    for _ in range(3):
        resp = await client.get("/api/svc/x", headers={"X-API-Key": CLIENT_KEYS["CLIENT_A"]})
        seen_statuses.append(resp.status)
        shown.append(json.dumps(dict(resp.headers)) + await resp.text())
    assert seen_statuses == [200, 429, 429]
    assert not leaks("\n".join(shown), ALL_SECRETS)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert not leaks(logged, ALL_SECRETS)


async def test_preflights_are_not_counted(aiohttp_server, aiohttp_client, tmp_path):
    up = upstream()
    forwards = "forwards:\n  svc/[...path]: { upstream: svc, path: '/{path}', methods: [POST], rate_limit: 2/minute }\n"
    clients = "clients:\n  cors: { origins: ['https://app.example.com'] }\n"
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), clients + forwards)
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    for _ in range(5):
        resp = await client.options("/api/svc/x", headers=preflight)
        assert resp.status == 204 and "RateLimit" not in resp.headers
    got = []
    for _ in range(3):
        resp = await client.post("/api/svc/x", json={}, headers={"Origin": "https://app.example.com"})
        got.append(resp.status)
        assert "RateLimit" in resp.headers["Access-Control-Expose-Headers"]
    assert got == [200, 200, 429]  # the five preflights spent nothing of the budget
    assert len(up.seen) == 2
