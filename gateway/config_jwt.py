"""The ``clients.jwt`` section (end users' tokens, SPEC §8) and the ``auth`` mode a route or forward may demand.

Read by the config's ``_Reader`` like any section: every problem is recorded with its YAML path, none is raised.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .units import parse_duration
from .yamlsource import YamlPath

if TYPE_CHECKING:
    from .config_reader import ValueReader

# asymmetric only: a JWKS publishes public keys, and an HMAC "verified" with a public key is a forgery anyone can make
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
AUTH_MODES = ("jwt", "api_key", "public")
MAX_LEEWAY = 300.0  # seconds: more would keep expired tokens alive
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# headers a claim may never become: framing and connection headers, the host, credentials the gateway strips from
# clients, and the request id the gateway sets itself (an upstream's injected headers are checked separately)
RESERVED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade", "expect",
    "proxy-authorization", "proxy-authenticate", "proxy-connection", "authorization", "cookie", "x-api-key",
    "x-request-id", "accept-encoding", "content-encoding", "content-type",
})


@dataclass(frozen=True)
class JwtConfig:
    jwks_url: str
    issuer: str
    audience: tuple[str, ...]
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway: float = 30.0
    cookie: str | None = None
    forward_claims: tuple[tuple[str, str], ...] = ()  # (header name, claim name)
    lazy: bool = False  # start even when the JWKS cannot be fetched yet


def read_jwt(reader: ValueReader, value: Any, path: YamlPath) -> JwtConfig | None:
    """``clients.jwt`` as a JwtConfig, or None (with the problems recorded) when it is absent or unusable."""
    known = ("jwks_url", "issuer", "audience", "algorithms", "leeway", "cookie", "forward_claims", "lazy")
    if value is None:
        return None
    raw = reader.mapping(value, path, known)
    if not isinstance(value, dict):
        return None
    ok = True
    url = _required(reader, raw, path, "jwks_url", "the identity provider's JWKS URL, e.g. "
                    "https://<tenant>.auth0.com/.well-known/jwks.json")
    if url is not None and not _jwks_url_ok(url):
        reader.fail((*path, "jwks_url"), f"{url!r}: the JWKS URL must be https:// (http:// only on a loopback host "
                                         "such as 127.0.0.1 or localhost)")
        url = None
    issuer = _required(reader, raw, path, "issuer", "the iss your identity provider writes in its tokens, e.g. "
                       "https://<tenant>.auth0.com/")
    audience = _audience(reader, raw, path)
    algorithms = _algorithms(reader, raw.get("algorithms"), (*path, "algorithms"))
    leeway: float | None = 30.0
    if "leeway" in raw:
        leeway = reader.converted(raw["leeway"], (*path, "leeway"), parse_duration)
        if leeway is not None and leeway > MAX_LEEWAY:
            reader.fail((*path, "leeway"), f"{raw['leeway']!r}: at most 5m (a longer leeway keeps expired tokens "
                                           "valid)")
            leeway = None
    cookie = None
    if "cookie" in raw and (cookie := reader.string(raw["cookie"], (*path, "cookie"))) is not None:
        if not cookie or not set(cookie) <= _TOKEN_CHARS:
            reader.fail((*path, "cookie"), f"{cookie!r} is not a valid cookie name")
            ok = False
    claims = _forward_claims(reader, raw.get("forward_claims"), (*path, "forward_claims"))
    lazy = reader.boolean(raw["lazy"], (*path, "lazy")) if "lazy" in raw else False
    if None in (url, issuer, audience, algorithms, leeway, claims, lazy) or not ok:
        return None
    return JwtConfig(url, issuer, audience, algorithms, leeway, cookie, claims, lazy)  # type: ignore[arg-type]


def check_forward_claims(reader: ValueReader, jwt: JwtConfig, upstreams: Mapping[str, Any]) -> None:
    """A claim header may not be one an upstream injects (the secret would be overwritten, or win over the claim) nor
    one an upstream passes on from the client (a client could then claim to be anyone)."""
    for header, _ in jwt.forward_claims:
        lower = header.lower()
        for name, upstream in upstreams.items():
            if lower in {h.lower() for h, _ in upstream.inject.headers}:
                reader.fail(("clients", "jwt", "forward_claims", header),
                            f"{header} is a header upstream {name!r} injects: choose another header name")
            if lower in {h.lower() for h in upstream.forward_headers}:
                reader.fail(("upstreams", name, "forward_headers"),
                            f"{header} is also set from a verified token (clients.jwt.forward_claims): a client could "
                            "send it and claim to be anyone; remove it from forward_headers")


def auth_problem(mode: str | None, api_keys: bool, jwt: bool) -> str | None:
    """Why a route cannot demand ``mode`` with the clients that are configured, or None when it can."""
    if mode == "jwt" and not jwt:
        return "auth is 'jwt' but clients.jwt is not configured: add it, or remove auth"
    if mode == "api_key" and not api_keys:
        return "auth is 'api_key' but clients.api_keys is not configured: add it, or remove auth"
    return None


def auth_mode(value: Any) -> str:
    """``"jwt"`` / ``"api_key"`` / ``"public"`` as given; anything else is a ValueError naming the choices."""
    if value not in AUTH_MODES:
        raise ValueError(f"expected one of {', '.join(AUTH_MODES)}")
    return value


def _required(reader: ValueReader, raw: dict[str, Any], path: YamlPath, key: str, what: str) -> str | None:
    if key not in raw:
        reader.fail(path, f"missing {key!r}: {what}")
        return None
    text = reader.string(raw[key], (*path, key))
    if text is not None and not text.strip():
        reader.fail((*path, key), f"{key} cannot be empty: {what}")
        return None
    return text


def _audience(reader: ValueReader, raw: dict[str, Any], path: YamlPath) -> tuple[str, ...] | None:
    what = "the aud your tokens carry for this API (Auth0: the API identifier; Firebase: the project id)"
    if "audience" not in raw:
        reader.fail(path, f"missing 'audience': {what}")
        return None
    value = raw["audience"]
    items = reader.string_list(value, (*path, "audience")) if isinstance(value, list) else [
        reader.string(value, (*path, "audience"))]
    if not items or any(not item for item in items):
        reader.fail((*path, "audience"), f"audience cannot be empty: {what}")
        return None
    return tuple(item for item in items if item)


def _algorithms(reader: ValueReader, value: Any, path: YamlPath) -> tuple[str, ...] | None:
    if value is None:
        return DEFAULT_ALGORITHMS
    names = reader.string_list(value, path)
    if not names:
        reader.fail(path, f"list at least one algorithm, e.g. [{', '.join(DEFAULT_ALGORITHMS)}]")
        return None
    ok = True
    for i, name in enumerate(names):
        if name.lower() == "none":
            reader.fail((*path, i), "'none' is never accepted: an unsigned token proves nothing")
        elif name.upper().startswith("HS"):
            reader.fail((*path, i), f"{name!r} is refused: HMAC needs a shared secret, and checked against a public "
                                    "JWKS key it lets anyone forge tokens; use RS256, ES256 or EdDSA")
        elif name not in ALGORITHMS:
            reader.fail((*path, i), f"{name!r} is not a supported algorithm: use {', '.join(ALGORITHMS)}")
        else:
            continue
        ok = False
    return tuple(dict.fromkeys(names)) if ok else None


def _forward_claims(reader: ValueReader, value: Any, path: YamlPath) -> tuple[tuple[str, str], ...] | None:
    if value is None:
        return ()
    if not isinstance(value, dict):
        reader.fail(path, "expected a mapping of header names to claim names, e.g. { X-User-Id: sub }")
        return None
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    ok = True
    for header, claim in value.items():
        header = str(header)
        item = (*path, header)
        problem = None
        if not header or not set(header) <= _TOKEN_CHARS:
            problem = f"{header!r} is not a valid header name"
        elif header.lower() in RESERVED_HEADERS or header.lower().startswith(("proxy-", "x-forwarded-")):
            problem = f"{header} cannot carry a claim: the gateway sets or removes it; use a name like X-User-Id"
        elif header.lower() in seen:
            problem = f"{header} is listed twice (header names are case-insensitive)"
        if problem is not None:
            reader.fail(item, problem)
            ok = False
            continue
        seen.add(header.lower())
        name = reader.string(claim, item)
        if name == "":
            reader.fail(item, "give the claim to send, e.g. sub")
        if not name:
            ok = False
            continue
        out.append((header, name))
    return tuple(out) if ok else None


def _jwks_url_ok(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return False
    host = parts.hostname or ""
    if not host or parts.fragment:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and _loopback(host)


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
