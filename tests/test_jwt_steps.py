"""The auth and forward_claims steps alone, with a stub call_next recording what it got: which factory drops out,
and what the claim step does to the outgoing headers, in its place between the header filter and injection."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.config_jwt import JwtConfig
from gateway.edge.auth import authenticate
from gateway.edge.jwt import JwtVerifier
from gateway.errors import BadRequest
from gateway.pipeline.claims import forward_claims, header_value
from gateway.pipeline.headers import filter_request_headers, inject_secrets, request_allowlist
from gateway.pipeline.values import Answer, OutRequest, chain
from gateway.secrets import Secret

VERIFIER = JwtVerifier(JwtConfig("https://idp.example/jwks", "https://idp.example/", ("api",)))
KEYS = (Secret("ck-live-0123456789"),)


def test_the_auth_factory_drops_out_when_nothing_applies() -> None:
    assert authenticate((), None) is None
    assert authenticate(KEYS, VERIFIER, demand="public") is None
    assert authenticate(KEYS, None, demand="api_key").__name__ == "api_key"
    assert authenticate(KEYS, VERIFIER).__name__ == "either"
    assert authenticate((), VERIFIER).__name__ == "signed_in"
    assert authenticate(KEYS, VERIFIER, demand="jwt").__name__ == "signed_in"
    assert authenticate(KEYS, VERIFIER, demand="api_key").__name__ == "api_key"
    with pytest.raises(ValueError):
        authenticate(KEYS, None, demand="jwt")  # refused at load; never built
    with pytest.raises(ValueError):
        authenticate((), VERIFIER, demand="api_key")


@pytest.mark.parametrize(("headers", "token"), [
    ({"Authorization": "Bearer a.b.c"}, "a.b.c"),
    ({"Authorization": "BEARER   a.b.c  "}, "a.b.c"),
    ({"Authorization": "Basic a.b.c"}, None),
    ({"Authorization": "Bearer"}, None),
    ({"Cookie": "__session=c.d.e"}, None),  # no cookie configured
])
def test_where_a_token_is_read(headers: dict[str, str], token: str | None) -> None:
    assert VERIFIER.token_of(make_mocked_request("GET", "/", headers=CIMultiDict(headers))) == token


def test_the_cookie_is_read_only_without_a_bearer_header() -> None:
    verifier = JwtVerifier(JwtConfig("https://i/j", "https://i/", ("api",), cookie="__session"))
    cookie = {"Cookie": "a=1; __session=c.d.e"}
    assert verifier.token_of(make_mocked_request("GET", "/", headers=CIMultiDict(cookie))) == "c.d.e"
    both = CIMultiDict({**cookie, "Authorization": "Bearer a.b.c"})
    assert verifier.token_of(make_mocked_request("GET", "/", headers=both)) == "a.b.c"


async def _sent(steps: list[Any], headers: dict[str, str], claims: dict[str, Any] | None,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    got: dict[str, str] = {}

    async def terminal(out: OutRequest) -> Answer:
        got.update(out.headers)
        return Answer(200, CIMultiDict(), b"")

    call = chain(terminal, steps)
    await call(OutRequest("GET", "http://up/x", CIMultiDict(headers), extra=extra or {}, claims=claims))
    return got


async def test_claims_replace_whatever_came_before_and_a_secret_still_wins() -> None:
    allow = request_allowlist(("X-User-Id",))  # even if an upstream let the client's header through
    steps = [filter_request_headers(allow), forward_claims((("X-User-Id", "sub"), ("X-Paid", "paid"))),
             inject_secrets({"X-Paid": "sk-secret"})]
    sent = await _sent(steps, {"x-user-id": "admin", "Accept": "a/b"}, {"sub": "u1", "paid": False},
                       extra={"X-Paid": "handler"})
    assert sent == {"Accept": "a/b", "X-User-Id": "u1", "X-Paid": "sk-secret"}
    sent = await _sent(steps, {"x-user-id": "admin"}, None)
    assert "x-user-id" not in {k.lower() for k in sent}


def test_forward_claims_drops_out_when_nothing_is_forwarded() -> None:
    assert forward_claims(()) is None


@pytest.mark.parametrize(("value", "text"), [("u1", "u1"), (42, "42"), (True, "true"), (False, "false"),
                                             ("a b@c.d", "a b@c.d"), ("", "")])
def test_header_values_from_claims(value: Any, text: str) -> None:
    assert header_value(value, "c", "X-C") == text


@pytest.mark.parametrize("value", ["a\r\nb", "a\nb", "a\rb", "a\0b", "a\tb", "é", "a" * 4097, 1.5, None, [1], {}])
def test_claims_a_header_cannot_carry(value: Any) -> None:
    with pytest.raises(BadRequest, match="the token's c claim"):
        header_value(value, "c", "X-C")
