"""Tokens through the real gateway, against a JWKS server on 127.0.0.1: valid ones admitted with their claims, and
every forgery or broken token refused with 401 ``invalid_token`` naming the failed check, never quoting the token."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from jwt_support import (
    AUDIENCE,
    ISSUER,
    Idp,
    b64,
    claims,
    ec_key,
    ed_key,
    hmac_token,
    pem,
    public_jwk,
    rsa_key,
    sign,
    unsigned,
)
from routes_support import write_tree

from gateway.app import build_table, create_app
from gateway.config import load_config
from gateway.config_jwt import JwtConfig
from gateway.edge.jwt import InvalidToken, JwtVerifier

ROUTES = {
    "me.py": "async def GET(req):\n    return {'claims': req['claims']}\n",
    "typed.py": "from gateway.keys import CLAIMS\nasync def GET(req):\n    return {'sub': req[CLAIMS]['sub'],"
                " 'has': 'claims' in req, 'get': req.get('claims', {}).get('sub')}\n",
}
YAML = """
clients:
  jwt:
    jwks_url: {url}
    issuer: "{issuer}"
    audience: {audience}
{extra}
"""


async def gateway(aiohttp_client: Any, tmp_path: Any, idp: Idp, *, issuer: str = ISSUER, audience: str = AUDIENCE,
                  extra: str = "") -> Any:
    write_tree(tmp_path, {f"routes/{name}": text for name, text in ROUTES.items()})
    (tmp_path / "config.yaml").write_text(YAML.format(url=idp.url, issuer=issuer, audience=audience, extra=extra))
    config = load_config(tmp_path / "config.yaml", environ={})
    return await aiohttp_client(create_app(config, build_table(config)))


@pytest.fixture
async def idp(aiohttp_server: Any) -> Idp:
    server = Idp()
    await server.serve(aiohttp_server)
    return server


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


async def refused(resp: Any, check: str, token: str) -> None:
    """401 unauthorized with WWW-Authenticate: Bearer error="invalid_token", a message naming ``check``, no token."""
    text = await resp.text()
    assert resp.status == 401, text
    assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    body = json.loads(text)
    assert body["error"] == "unauthorized" and check in body["message"], body
    for piece in (token, *[p for p in token.split(".") if len(p) > 8]):
        assert piece not in text and piece not in str(dict(resp.headers))


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1", "ed-1"])
async def test_a_valid_token_is_admitted_and_its_claims_reach_the_handler(aiohttp_client, tmp_path, idp, logged,
                                                                          kid) -> None:
    client = await gateway(aiohttp_client, tmp_path, idp)
    token = idp.token(kid, sub="user_42", email="a@example.test")
    resp = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    got = (await resp.json())["claims"]
    assert got["sub"] == "user_42" and got["email"] == "a@example.test" and got["aud"] == AUDIENCE
    resp = await client.get("/api/typed", headers={"Authorization": f"bearer   {token}"})
    assert await resp.json() == {"sub": "user_42", "has": True, "get": "user_42"}
    assert token not in logged.text


async def test_a_missing_token_is_401_with_a_bare_bearer_challenge(aiohttp_client, tmp_path, idp) -> None:
    client = await gateway(aiohttp_client, tmp_path, idp)
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Cookie": "x=1"}):
        resp = await client.get("/api/me", headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        body = await resp.json()
        assert body["error"] == "unauthorized" and "Authorization: Bearer" in body["message"]
    assert (await client.get("/healthz")).status == 200  # health checks need no token
    assert (await client.options("/api/me")).status == 204  # nor the gateway's own OPTIONS


def _forgeries() -> list[Any]:
    now = int(time.time())
    rsa_pem = pem(rsa_key())
    return [
        pytest.param(lambda: unsigned({"alg": "none", "kid": "rsa-1"}, claims()), "algorithm", id="alg-none"),
        pytest.param(lambda: unsigned({"alg": "None", "kid": "rsa-1"}, claims()), "algorithm", id="alg-None"),
        pytest.param(lambda: unsigned({"kid": "rsa-1"}, claims()), "algorithm", id="no-alg"),
        pytest.param(lambda: hmac_token(rsa_pem, {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims()),
                     "algorithm", id="hs256-with-the-rsa-public-pem"),
        pytest.param(lambda: hmac_token(rsa_pem, {"alg": "HS256", "typ": "JWT"}, claims()), "algorithm",
                     id="hs256-without-kid"),
        pytest.param(lambda: sign(ec_key("x"), "ES256", "rsa-1", claims()), "does not fit its key",
                     id="rsa-key-used-as-es256"),
        pytest.param(lambda: sign(ed_key("x"), "EdDSA", "ec-1", claims()), "does not fit its key",
                     id="ec-key-used-as-eddsa"),
        pytest.param(lambda: sign(rsa_key("x"), "RS256", "rsa-1", claims()), "signature", id="same-kid-other-key"),
        pytest.param(lambda: sign(rsa_key("x"), "PS256", "rsa-1", claims()), "algorithm", id="ps256-not-allowed"),
        pytest.param(lambda: _tampered(), "signature", id="tampered-payload"),
        pytest.param(lambda: sign(rsa_key("x"), "RS256", "attacker", claims(),
                                  jwk=public_jwk(rsa_key("x"), "attacker")), "unknown", id="embedded-jwk-header"),
        pytest.param(lambda: sign(rsa_key("x"), "RS256", "attacker", claims(), jku="http://127.0.0.1:1/jwks.json"),
                     "unknown", id="jku-header"),
        pytest.param(lambda: sign(rsa_key(), "RS256", None, claims()), "names no key", id="no-kid-several-keys"),
        pytest.param(lambda: _token(exp=now - 3600), "expired", id="expired"),
        pytest.param(lambda: _token(exp=now - 31), "expired", id="expired-past-leeway"),
        pytest.param(lambda: _token(nbf=now + 3600), "not valid yet", id="nbf-future"),
        pytest.param(lambda: _token(iat=now + 3600), "not valid yet", id="iat-future"),
        pytest.param(lambda: _token(iat="yesterday"), "iat", id="iat-not-a-number"),
        pytest.param(lambda: _token(exp="soon"), "malformed", id="exp-not-a-number"),
        pytest.param(lambda: _token(exp=None), "no exp claim", id="no-exp"),
        pytest.param(lambda: _token(iss=None), "no iss claim", id="no-iss"),
        pytest.param(lambda: _token(aud=None), "no aud claim", id="no-aud"),
        pytest.param(lambda: _token(sub=None), "no sub claim", id="no-sub"),
        pytest.param(lambda: _token(sub=42), "subject", id="sub-not-a-string"),
        pytest.param(lambda: _token(aud="other-api"), "audience", id="wrong-aud"),
        pytest.param(lambda: _token(aud=["other-api", "third"]), "audience", id="aud-list-without-ours"),
        pytest.param(lambda: _token(aud=[]), "no aud claim", id="aud-empty-list"),
        pytest.param(lambda: _token(aud=AUDIENCE.upper()), "audience", id="aud-other-case"),
        pytest.param(lambda: _token(iss=ISSUER.rstrip("/")), "issuer", id="iss-without-trailing-slash"),
        pytest.param(lambda: _token(iss=ISSUER + "/"), "issuer", id="iss-double-slash"),
        pytest.param(lambda: _token(iss="https://evil.example/"), "issuer", id="wrong-iss"),
        pytest.param(lambda: sign(rsa_key(), "RS256", "rsa-1", claims(), crit=["exp"]), "malformed", id="crit"),
        pytest.param(lambda: "a.b.c", "malformed", id="garbage-segments"),
        pytest.param(lambda: "....", "malformed", id="only-dots"),
        pytest.param(lambda: "x" * 40, "malformed", id="no-dots"),
        pytest.param(lambda: f"{b64(b'[1,2]')}.{b64(claims())}.{b64(b'sig')}", "malformed", id="header-not-an-object"),
        pytest.param(lambda: f"{b64(b'{nope')}.{b64(claims())}.{b64(b'sig')}", "malformed", id="header-not-json"),
        pytest.param(lambda: f"{b64({'alg': 'RS256', 'kid': 7})}.{b64(claims())}.{b64(b'sig')}", "malformed",
                     id="kid-not-a-string"),
        pytest.param(lambda: _token() + "." + "A" * 10, "malformed", id="four-segments"),
        # 342 base64url characters less 9 leave a length no base64 can have: malformed, whatever the signature
        pytest.param(lambda: _token()[:-9], "malformed", id="truncated-signature"),
        pytest.param(lambda: unsigned({"alg": "RS256", "kid": "rsa-1"}, claims(), b"x" * 5000), "signature",
                     id="huge-signature"),
        pytest.param(lambda: unsigned({"alg": "RS256", "kid": "rsa-1", "pad": "y" * 5000}, claims()), "signature",
                     id="huge-header"),
    ]


def _token(**overrides: Any) -> str:
    return sign(rsa_key(), "RS256", "rsa-1", claims(**overrides))


def _tampered() -> str:
    head, _, sig = _token(sub="user_1").split(".")
    return f"{head}.{b64(claims(sub='admin'))}.{sig}"


@pytest.mark.parametrize(("make", "check"), _forgeries())
async def test_forged_and_broken_tokens_are_refused_naming_the_check(aiohttp_client, tmp_path, idp, logged, make,
                                                                      check) -> None:
    client = await gateway(aiohttp_client, tmp_path, idp)
    token = make()
    resp = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    await refused(resp, check, token)
    assert token not in logged.text


async def test_a_huge_token_is_refused_before_any_parsing(idp) -> None:
    verifier = JwtVerifier(JwtConfig(idp.url, ISSUER, (AUDIENCE,)))
    with pytest.raises(InvalidToken, match="larger than 8192"):
        await verifier.verify("a" * 100_000 + ".b.c")
    assert idp.fetches == 0  # nothing was looked up for it


async def test_leeway_admits_a_just_expired_token_and_aud_lists_match_any(aiohttp_client, tmp_path, idp) -> None:
    client = await gateway(aiohttp_client, tmp_path, idp, audience="[other, my-api]",
                           extra="    leeway: 30s\n")
    now = int(time.time())
    for token in (_token(exp=now - 10), _token(aud=["third", "my-api"]), _token(aud="other"),
                  _token(nbf=now + 10), sign(rsa_key(), "RS256", "rsa-1", claims(), typ="at+jwt")):
        resp = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200, await resp.text()


async def test_without_kid_the_single_key_of_a_one_key_set_is_used(aiohttp_client, tmp_path, idp) -> None:
    idp.keys = [public_jwk(ec_key(), None, "ES256")]
    client = await gateway(aiohttp_client, tmp_path, idp)
    token = sign(ec_key(), "ES256", None, claims(sub="solo"))
    resp = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert (await resp.json())["claims"]["sub"] == "solo"
    other = sign(ec_key("x"), "ES256", None, claims())
    await refused(await client.get("/api/me", headers={"Authorization": f"Bearer {other}"}), "signature", other)


async def test_algorithms_can_be_narrowed(aiohttp_client, tmp_path, idp) -> None:
    client = await gateway(aiohttp_client, tmp_path, idp, extra="    algorithms: [ES256]\n")
    rsa_token = idp.token("rsa-1")
    await refused(await client.get("/api/me", headers={"Authorization": f"Bearer {rsa_token}"}), "algorithm",
                  rsa_token)
    resp = await client.get("/api/me", headers={"Authorization": f"Bearer {idp.token('ec-1')}"})
    assert resp.status == 200


async def test_the_cookie_is_read_and_the_header_wins_when_both_are_sent(aiohttp_client, tmp_path, idp) -> None:
    client = await gateway(aiohttp_client, tmp_path, idp, extra="    cookie: __session\n")
    good, bad = idp.token(sub="from-cookie"), _token(exp=int(time.time()) - 3600)
    resp = await client.get("/api/me", headers={"Cookie": f"theme=dark; __session={good}"})
    assert (await resp.json())["claims"]["sub"] == "from-cookie"
    resp = await client.get("/api/me", headers={"Cookie": f"__session={good}", "Authorization": f"Bearer {bad}"})
    await refused(resp, "expired", bad)  # a bad header token is not rescued by a good cookie
    header_token = idp.token(sub="from-header")
    resp = await client.get("/api/me", headers={"Cookie": f"__session={bad}",
                                                "Authorization": f"Bearer {header_token}"})
    assert (await resp.json())["claims"]["sub"] == "from-header"
    resp = await client.get("/api/me", headers={"Cookie": "__session="})
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert "__session cookie" in (await resp.json())["message"]
