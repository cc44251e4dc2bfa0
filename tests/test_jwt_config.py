"""clients.jwt and auth: in config.yaml and route modules: the SPEC example loads with its defaults; each mistake is
one line naming the YAML path (none and HMAC refused, http only on loopback, claim headers that could collide)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from routes_support import make_config

from gateway.app import StartupError, build_table
from gateway.config import load_config
from gateway.config_jwt import JwtConfig
from gateway.yamlsource import ConfigError

JWT = """\
clients:
  jwt:
    jwks_url: https://tenant.auth0.com/.well-known/jwks.json
    issuer: https://tenant.auth0.com/
    audience: my-api
"""


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    (tmp_path / "config.yaml").write_text(textwrap.dedent(text))
    return load_config(tmp_path / "config.yaml", environ=env or {})


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return [str(p) for p in info.value.problems]


def test_the_spec_example_loads_with_its_defaults(tmp_path: Path) -> None:
    jwt = load(tmp_path, JWT).clients.jwt
    assert jwt == JwtConfig("https://tenant.auth0.com/.well-known/jwks.json", "https://tenant.auth0.com/",
                            ("my-api",), ("RS256", "ES256", "EdDSA"), 30.0, None, (), False)


def test_every_key(tmp_path: Path) -> None:
    jwt = load(tmp_path, JWT + """\
    algorithms: [ES256, RS256, ES256]
    leeway: 5s
    cookie: __session
    forward_claims: { X-User-Id: sub, X-User-Email: email }
    lazy: true
upstreams:
  svc: { url: "https://api.example.com", inject: { headers: { Authorization: "Bearer ${KEY}" } } }
""", env={"KEY": "k"}).clients.jwt
    assert jwt is not None
    assert jwt.algorithms == ("ES256", "RS256") and jwt.leeway == 5.0 and jwt.cookie == "__session" and jwt.lazy
    assert jwt.forward_claims == (("X-User-Id", "sub"), ("X-User-Email", "email"))


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/jwks.json", "http://localhost/jwks", "http://[::1]:9/k",
                                 "http://127.8.9.10/jwks.json", "https://idp.example.com/jwks"])
def test_jwks_url_may_be_http_only_on_loopback(tmp_path: Path, url: str) -> None:
    assert load(tmp_path, JWT.replace("https://tenant.auth0.com/.well-known/jwks.json", url)).clients.jwt is not None


def test_an_audience_list(tmp_path: Path) -> None:
    jwt = load(tmp_path, JWT.replace("audience: my-api", "audience: [my-api, other]")).clients.jwt
    assert jwt is not None and jwt.audience == ("my-api", "other")


@pytest.mark.parametrize(("change", "message"), [
    (("jwks_url: https://tenant.auth0.com/.well-known/jwks.json", "jwks_url: http://tenant.auth0.com/jwks.json"),
     "config.yaml:3: clients.jwt.jwks_url: 'http://tenant.auth0.com/jwks.json': the JWKS URL must be https:// "
     "(http:// only on a loopback host such as 127.0.0.1 or localhost)"),
    (("jwks_url: https://tenant.auth0.com/.well-known/jwks.json", "jwks_url: http://10.0.0.1/jwks.json"),
     "clients.jwt.jwks_url: 'http://10.0.0.1/jwks.json': the JWKS URL must be https://"),
    (("jwks_url: https://tenant.auth0.com/.well-known/jwks.json", "jwks_url: ftp://x/jwks"),
     "the JWKS URL must be https://"),
    (("    jwks_url: https://tenant.auth0.com/.well-known/jwks.json\n", ""),
     "config.yaml:2: clients.jwt: missing 'jwks_url': the identity provider's JWKS URL"),
    (("    issuer: https://tenant.auth0.com/\n", ""), "clients.jwt: missing 'issuer'"),
    (("    audience: my-api\n", ""), "clients.jwt: missing 'audience'"),
    (("audience: my-api", "audience: ''"), "clients.jwt.audience: audience cannot be empty"),
    (("audience: my-api", "audience: []"), "clients.jwt.audience: audience cannot be empty"),
    (("audience: my-api", "audience: my-api\n    algorithms: [RS256, none]"),
     "config.yaml:6: clients.jwt.algorithms[1]: 'none' is never accepted: an unsigned token proves nothing"),
    (("audience: my-api", "audience: my-api\n    algorithms: [HS256]"),
     "clients.jwt.algorithms[0]: 'HS256' is refused: HMAC needs a shared secret, and checked against a public JWKS "
     "key it lets anyone forge tokens; use RS256, ES256 or EdDSA"),
    (("audience: my-api", "audience: my-api\n    algorithms: [hs512]"), "'hs512' is refused"),
    (("audience: my-api", "audience: my-api\n    algorithms: [RS257]"),
     "clients.jwt.algorithms[0]: 'RS257' is not a supported algorithm"),
    (("audience: my-api", "audience: my-api\n    algorithms: []"), "clients.jwt.algorithms: list at least one"),
    (("audience: my-api", "audience: my-api\n    leeway: 1h"), "clients.jwt.leeway: '1h': at most 5m"),
    (("audience: my-api", "audience: my-api\n    leeway: soon"), "clients.jwt.leeway: 'soon': "),
    (("audience: my-api", "audience: my-api\n    cookie: 'a b'"), "clients.jwt.cookie: 'a b' is not a valid cookie"),
    (("audience: my-api", "audience: my-api\n    lazy: yes please"), "clients.jwt.lazy: expected true or false"),
    (("audience: my-api", "audience: my-api\n    audiance: x"), "clients.jwt.audiance: unknown key 'audiance': did "
                                                                "you mean 'audience'?"),
    (("audience: my-api", "audience: my-api\n    forward_claims: [sub]"),
     "clients.jwt.forward_claims: expected a mapping of header names to claim names"),
    (("audience: my-api", "audience: my-api\n    forward_claims: { 'X User': sub }"),
     "clients.jwt.forward_claims.X User: 'X User' is not a valid header name"),
    (("audience: my-api", "audience: my-api\n    forward_claims: { Authorization: sub }"),
     "clients.jwt.forward_claims.Authorization: Authorization cannot carry a claim"),
    (("audience: my-api", "audience: my-api\n    forward_claims: { Host: sub }"), "Host cannot carry a claim"),
    (("audience: my-api", "audience: my-api\n    forward_claims: { Transfer-Encoding: sub }"),
     "Transfer-Encoding cannot carry a claim"),
    (("audience: my-api", "audience: my-api\n    forward_claims: { X-Forwarded-For: sub }"),
     "X-Forwarded-For cannot carry a claim"),
    (("audience: my-api", "audience: my-api\n    forward_claims: { X-Request-Id: sub }"),
     "X-Request-Id cannot carry a claim"),
    (("audience: my-api", "audience: my-api\n    forward_claims: { X-User: sub, x-user: email }"),
     "clients.jwt.forward_claims.x-user: x-user is listed twice"),
    (("audience: my-api", "audience: my-api\n    forward_claims: { X-User: '' }"),
     "clients.jwt.forward_claims.X-User: give the claim to send, e.g. sub"),
    (("  jwt:\n", "  jwt: yes\n  x:\n"), "clients.jwt: expected a mapping of jwks_url"),
])
def test_each_jwt_mistake_is_one_line(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    found = problems(tmp_path, JWT.replace(*change))
    assert any(message in p for p in found), found
    assert all("\n" not in p for p in found)


def test_a_claim_header_cannot_be_injected_or_forwarded_by_an_upstream(tmp_path: Path) -> None:
    found = problems(tmp_path, JWT + """\
    forward_claims: { X-User-Id: sub, x-key: email }
upstreams:
  a: { url: "https://a.example", inject: { headers: { X-Key: "k" } } }
  b: { url: "https://b.example", forward_headers: [x-user-id] }
""")
    assert any(p.endswith("config.yaml:6: clients.jwt.forward_claims.x-key: x-key is a header upstream 'a' injects: "
                          "choose another header name") for p in found), found
    assert any("upstreams.b.forward_headers: X-User-Id is also set from a verified token" in p for p in found), found


@pytest.mark.parametrize(("forward", "message"), [
    ("auth: jwt", None),
    ("auth: public", None),
    ("auth: api_key", "forwards.f.auth: auth is 'api_key' but clients.api_keys is not configured"),
    ("auth: token", "forwards.f.auth: 'token': expected one of jwt, api_key, public"),
    ("auth: jwt, public: true", "forwards.f.auth: auth is 'jwt' but the forward is public: true; keep one of them"),
])
def test_a_forward_may_demand_one_kind_of_client(tmp_path: Path, forward: str, message: str | None) -> None:
    text = JWT + f"upstreams:\n  s: {{ url: 'https://s.example' }}\nforwards:\n  f: {{ upstream: s, {forward} }}\n"
    if message is None:
        (f,) = load(tmp_path, text).forwards
        assert f.auth == forward.split()[1] and f.public == (f.auth == "public")
    else:
        assert any(message in p for p in problems(tmp_path, text))


def test_a_forward_demanding_jwt_needs_clients_jwt(tmp_path: Path) -> None:
    text = "upstreams:\n  s: { url: 'https://s.example' }\nforwards:\n  f: { upstream: s, auth: jwt }\n"
    (found,) = problems(tmp_path, text)
    assert found.endswith("config.yaml:4: forwards.f.auth: auth is 'jwt' but clients.jwt is not configured: add it, "
                          "or remove auth")


@pytest.mark.parametrize(("module_config", "message"), [
    ("{'auth': 'jwt'}", "routes/r.py: config['auth']: auth is 'jwt' but clients.jwt is not configured"),
    ("{'auth': 'sso'}", "routes/r.py: config['auth']: 'sso': expected one of jwt, api_key, public"),
    ("{'auth': 'jwt', 'public': True}", "routes/r.py: config: 'public': True and 'auth': 'jwt' disagree: keep one"),
])
def test_a_route_module_demanding_what_is_not_configured_stops_the_start(tmp_path: Path, module_config: str,
                                                                         message: str) -> None:
    config = make_config(tmp_path, {"r.py": f"config = {module_config}\nasync def GET(req):\n    return 1\n"})
    with pytest.raises(StartupError) as info:
        build_table(config)
    assert any(message in p for p in info.value.problems), info.value.problems


def test_auth_public_in_a_module_is_public(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"r.py": "config = {'auth': 'public'}\nasync def GET(req):\n    return 1\n"})
    (endpoint,) = build_table(config).endpoints
    assert endpoint.public and endpoint.auth == "public"
