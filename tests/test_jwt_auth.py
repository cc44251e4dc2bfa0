"""Client keys and signed-in users together: either admits; a route or forward may demand one kind; chosen claims go
upstream as headers (never the token, never a client's own value); nothing logged or sent upstream holds a token."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from aiohttp import web
from jwt_support import Idp, claims, rsa_key, sign
from upstream_support import Recorder, gateway

KEY = "ck-live-CLIENTKEY-0123456789"
ENV = {"CLIENT_KEY": KEY, "SVC_KEY": "sk-live-TOPSECRET-0123456789abcdef", "SVC_QKEY": "q"}
CLIENTS = """
clients:
  api_keys: ["${{CLIENT_KEY}}"]
  jwt:
    jwks_url: {url}
    issuer: "https://idp.example.test/"
    audience: my-api
    cookie: __session
    forward_claims: {{ X-User-Id: sub, X-User-Email: email, X-Admin: admin, X-Level: level }}
"""
FORWARDS = """
forwards:
  svc/[...path]: { upstream: svc, path: "/{path}" }
  only-users/[...path]: { upstream: svc, path: "/{path}", auth: jwt }
  only-keys/[...path]: { upstream: svc, path: "/{path}", auth: api_key }
  open/[...path]: { upstream: svc, path: "/{path}", auth: public }
"""
ROUTES = {
    "me.py": "async def GET(req):\n    return {'claims': req.get('claims')}\n",
    "users_only.py": "config = {'auth': 'jwt'}\nasync def GET(req):\n    return {'sub': req['claims']['sub']}\n",
    "keys_only.py": "config = {'auth': 'api_key'}\nasync def GET(req):\n    return {'claims': req.get('claims')}\n",
    "open.py": "config = {'auth': 'public'}\nasync def GET(req):\n    return {'claims': req.get('claims')}\n",
    "relay.py": "from gateway import forward\nasync def GET(req):\n"
                "    return await forward(req, 'svc', '/x', headers={'X-User-Id': 'handler-says-admin'})\n",
}


@pytest.fixture
async def idp(aiohttp_server: Any) -> Idp:
    server = Idp()
    await server.serve(aiohttp_server)
    return server


@pytest.fixture
async def setup(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Any, idp: Idp,
                caplog: pytest.LogCaptureFixture) -> tuple[Any, Recorder]:
    caplog.set_level(logging.DEBUG)
    up = Recorder()

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    up.route("GET", "/base/{tail:.*}", echo)
    port = await up.serve(aiohttp_server)
    client = await gateway(aiohttp_client, tmp_path, port, FORWARDS, server=CLIENTS.format(url=idp.url),
                           routes=ROUTES, env=ENV)
    return client, up


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_either_a_client_key_or_a_signed_in_user_admits(setup: Any, idp: Idp) -> None:
    client, _ = setup
    token = idp.token(sub="user_7")
    expired = idp.token(exp=int(time.time()) - 3600)
    admitted = [
        ({"X-API-Key": KEY}, None),
        (bearer(KEY), None),
        (bearer(token), "user_7"),
        ({"Cookie": f"__session={token}"}, "user_7"),
        ({"X-API-Key": KEY, **bearer(token)}, "user_7"),  # both: the user is known, so limits count on them
        ({"X-API-Key": KEY, **bearer(expired)}, None),  # either admits: the key does
        ({"X-API-Key": "wrong", **bearer(token)}, "user_7"),
    ]
    for headers, sub in admitted:
        resp = await client.get("/api/me", headers=headers)
        assert resp.status == 200, (headers, await resp.text())
        got = (await resp.json())["claims"]
        assert (got and got["sub"]) == sub, headers
    for headers, challenge, words in [
        ({}, "Bearer", "an API key (X-API-Key) or a signed-in user's token"),
        ({"X-API-Key": "wrong"}, "Bearer", "an API key (X-API-Key) or a signed-in user's token"),
        (bearer("wrong-key"), "Bearer", "the API key is not valid"),
        (bearer(expired), 'Bearer error="invalid_token"', "expired"),
        ({"Cookie": f"__session={expired}"}, 'Bearer error="invalid_token"', "expired"),
    ]:
        resp = await client.get("/api/me", headers=headers)
        body = await resp.json()
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == challenge, (headers, body)
        assert body["error"] == "unauthorized" and words in body["message"], body


async def test_a_route_or_forward_may_demand_one_kind_of_client(setup: Any, idp: Idp) -> None:
    client, up = setup
    token = idp.token(sub="user_8")
    cases = [  # path, headers, status
        ("/api/users_only", bearer(token), 200), ("/api/users_only", {"X-API-Key": KEY}, 401),
        ("/api/users_only", bearer(KEY), 401),
        ("/api/only-users/x", bearer(token), 200), ("/api/only-users/x", {"X-API-Key": KEY}, 401),
        ("/api/keys_only", {"X-API-Key": KEY}, 200), ("/api/keys_only", bearer(token), 401),
        ("/api/only-keys/x", {"X-API-Key": KEY}, 200), ("/api/only-keys/x", bearer(token), 401),
        ("/api/open", {}, 200), ("/api/open/x", {}, 200), ("/api/open", bearer("garbage.token.here"), 200),
    ]
    for path, headers, status in cases:
        resp = await client.get(path, headers=headers)
        assert resp.status == status, (path, headers, await resp.text())
    assert (await (await client.get("/api/users_only", headers=bearer(token))).json()) == {"sub": "user_8"}
    assert (await (await client.get("/api/keys_only", headers={"X-API-Key": KEY, **bearer(token)})).json()) == {
        "claims": None}  # a route that wants keys does not look at tokens
    assert (await (await client.get("/api/open", headers=bearer(token))).json()) == {"claims": None}


async def test_chosen_claims_go_upstream_as_headers_and_the_token_never_does(setup: Any, idp: Idp,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    client, up = setup
    token = idp.token(sub="user_9", email="nine@example.test", admin=True, level=3)
    resp = await client.get("/api/svc/x?q=1", headers={**bearer(token), "X-User-Id": "admin",
                                                       "Cookie": f"__session={token}"})
    assert resp.status == 200
    seen = up.last.headers
    assert seen["X-User-Id"] == "user_9" and seen.getall("X-User-Id") == ["user_9"]
    assert seen["X-User-Email"] == "nine@example.test" and seen["X-Admin"] == "true" and seen["X-Level"] == "3"
    sent = json.dumps(dict(seen)) + up.last.raw_path + up.last.query
    for piece in token.split("."):
        assert piece not in sent  # no Authorization, no Cookie, nothing of the token
    assert "Authorization: Bearer sk-live" not in sent  # (the upstream's own secret is injected as usual)
    assert seen["Authorization"] == "Bearer " + ENV["SVC_KEY"]
    assert token not in caplog.text and all(p not in caplog.text for p in token.split(".")[1:])


async def test_a_claim_the_token_lacks_is_not_sent_and_a_client_cannot_send_it(setup: Any, idp: Idp) -> None:
    client, up = setup
    resp = await client.get("/api/svc/x", headers={**bearer(idp.token(sub="user_10")), "X-User-Email": "forged",
                                                   "X-Admin": "true"})
    assert resp.status == 200
    assert up.last.headers["X-User-Id"] == "user_10"
    assert "X-User-Email" not in up.last.headers and "X-Admin" not in up.last.headers
    resp = await client.get("/api/svc/x", headers={"X-API-Key": KEY, "X-User-Id": "user_10"})  # a key, no token
    assert resp.status == 200 and "X-User-Id" not in up.last.headers


async def test_forward_from_a_handler_sends_the_claims_and_they_win_over_its_headers(setup: Any, idp: Idp) -> None:
    client, up = setup
    resp = await client.get("/api/relay", headers=bearer(idp.token(sub="user_11")))
    assert resp.status == 200, await resp.text()
    assert up.last.headers.getall("X-User-Id") == ["user_11"]
    resp = await client.get("/api/relay", headers={"X-API-Key": KEY})  # no token: no identity header at all
    assert resp.status == 200 and "X-User-Id" not in up.last.headers


@pytest.mark.parametrize(("overrides", "claim"), [
    ({"email": "a@example.test\r\nX-Injected: 1"}, "email"),
    ({"email": "a@example.test\nX-Injected: 1"}, "email"),
    ({"email": "a\x00b"}, "email"),
    ({"email": "caf\u00e9@example.test"}, "email"),
    ({"email": "a" * 5000}, "email"),
    ({"email": ["a@example.test"]}, "email"),
    ({"admin": {"role": "x"}}, "admin"),
    ({"level": 1.5}, "level"),
    ({"sub": "user\r\nX-Injected: 1"}, "sub"),
])
async def test_a_claim_a_header_cannot_carry_is_a_400_and_nothing_goes_upstream(setup: Any, idp: Idp,
                                                                                overrides: dict[str, Any],
                                                                                claim: str) -> None:
    client, up = setup
    token = sign(rsa_key(), "RS256", "rsa-1", claims(**overrides))
    resp = await client.get("/api/svc/x", headers=bearer(token))
    body = await resp.json()
    assert resp.status == 400 and body["error"] == "bad_request", body
    assert f"the token's {claim} claim" in body["message"]
    assert "X-Injected" not in body["message"] and token not in json.dumps(body)
    assert up.seen == []


async def test_limits_belong_to_the_signed_in_user(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Any,
                                                   idp: Idp) -> None:
    """Two users have separate budgets; one user with two tokens (two tabs, a refreshed token) shares one."""
    up = Recorder()

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    up.route("GET", "/base/{tail:.*}", echo)
    port = await up.serve(aiohttp_server)
    limited = "forwards:\n  limited/[...path]: { upstream: svc, path: '/{path}', rate_limit: 2/minute }\n"
    client = await gateway(aiohttp_client, tmp_path, port, limited, server=CLIENTS.format(url=idp.url), env=ENV)
    alice, alice_again, bob = idp.token(sub="alice"), idp.token(sub="alice", iat=int(time.time()) - 5), \
        idp.token(sub="bob")
    assert alice != alice_again
    statuses = []
    for token in (alice, alice_again, alice, bob, bob, bob):
        resp = await client.get("/api/limited/x", headers=bearer(token))
        statuses.append(resp.status)
        if resp.status == 200:
            assert '"route";q=2;w=60' in resp.headers["RateLimit-Policy"]
    assert statuses == [200, 200, 429, 200, 200, 429]
    assert len(up.seen) == 4


async def test_with_forward_claims_the_cache_keeps_one_answer_per_user(aiohttp_client: Any, aiohttp_server: Any,
                                                                       tmp_path: Any, idp: Idp) -> None:
    up = Recorder()

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"user": request.headers.get("X-User-Id")})

    up.route("GET", "/base/{tail:.*}", whoami)
    port = await up.serve(aiohttp_server)
    cached = "forwards:\n  me/[...path]: { upstream: svc, path: '/{path}', cache: 5m }\n"
    client = await gateway(aiohttp_client, tmp_path, port, cached, server=CLIENTS.format(url=idp.url), env=ENV)
    seen = []
    for sub in ("alice", "bob", "alice", "bob"):
        resp = await client.get("/api/me/profile", headers=bearer(idp.token(sub=sub)))
        seen.append(((await resp.json())["user"], resp.headers["X-Cache"]))
    # the upstream answered per user (it was told who calls): bob never gets alice's kept answer
    assert seen == [("alice", "MISS"), ("bob", "MISS"), ("alice", "HIT"), ("bob", "HIT")]
    assert len(up.seen) == 2
