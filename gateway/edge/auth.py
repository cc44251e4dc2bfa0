"""Who may call a route: client API keys (``clients.api_keys``) and/or end users' tokens (``clients.jwt``), else 401.

    api keys only   X-API-Key or ``Authorization: Bearer <key>``, compared in constant time
    jwt only        ``Authorization: Bearer <token>`` or the configured cookie, verified (edge/jwt.py)
    both            either one admits; a token that verifies is preferred, so limits count on the user (SPEC §7)

A route or forward may demand one kind (``auth: jwt`` / ``api_key``) or none (``public``). The gateway's own OPTIONS
answers (placed before this step) and /healthz, /readyz and /metrics (not routes) need nothing.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from aiohttp import web

from ..errors import Unauthorized
from ..keys import CLAIMS, IDENTITY
from ..routing import Handler
from ..secrets import Secret
from .identity import key_identity
from .jwt import InvalidToken, JwtVerifier, KeysUnavailable, MissingToken


def authenticate(keys: Sequence[Secret], verifier: JwtVerifier | None = None, *, demand: str | None = None):
    """The one client-auth step of a route. ``demand`` is the route's ``auth`` (None: whatever is configured).
    None when the route is public or no client auth is configured."""
    if demand == "public":
        return None
    if demand == "jwt" and verifier is None or demand == "api_key" and not keys:
        raise ValueError(f"auth {demand!r} demanded but not configured")  # refused at load (config_jwt.auth_problem)
    values = [key.reveal().encode() for key in keys] if demand in (None, "api_key") else []
    jwt = verifier if demand in (None, "jwt") else None

    async def api_key(request: web.Request, call_next: Handler) -> web.StreamResponse:
        if not _verified_key(request, values):
            raise Unauthorized(
                "a valid API key is required: send it as X-API-Key or Authorization: Bearer",
                headers={"WWW-Authenticate": 'Bearer realm="gateway"'},
            )
        return await call_next(request)

    async def signed_in(request: web.Request, call_next: Handler) -> web.StreamResponse:
        assert jwt is not None
        token = jwt.token_of(request)
        if token is None:
            raise MissingToken(_missing(jwt, keys=False))
        request[CLAIMS] = await jwt.verify(token)
        return await call_next(request)

    async def either(request: web.Request, call_next: Handler) -> web.StreamResponse:
        assert jwt is not None
        key_ok = _verified_key(request, values)
        token = jwt.token_of(request)
        if token is not None and not (key_ok and token == presented_key(request)):
            try:
                request[CLAIMS] = await jwt.verify(token)
            except (InvalidToken, KeysUnavailable):
                if key_ok:  # either one admits: the key does, though the token did not
                    return await call_next(request)
                if token.count(".") != 2:  # not a token at all: a wrong API key
                    raise MissingToken("the API key is not valid, nor is it a signed-in user's token") from None
                raise
        elif not key_ok:
            raise MissingToken(_missing(jwt, keys=True))
        return await call_next(request)

    if jwt is None:
        return api_key if values else None
    return either if values else signed_in


def _missing(jwt: JwtVerifier, *, keys: bool) -> str:
    where = "Authorization: Bearer" + (f" or the {jwt.config.cookie} cookie" if jwt.config.cookie else "")
    if keys:
        return f"an API key (X-API-Key) or a signed-in user's token ({where}) is required"
    return f"a signed-in user's token is required: send it as {where}"


def presented_key(request: web.Request) -> str | None:
    """The client key the request carries (X-API-Key, else ``Authorization: Bearer``), or None."""
    given = request.headers.get("X-API-Key")
    if given is None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = token.strip()
    return given


def _verified_key(request: web.Request, values: list[bytes]) -> bool:
    """Whether the request carries one of the keys; a key that verifies names the client (as a hash, SPEC §7)."""
    if not values:
        return False
    given = presented_key(request)
    if given is None:
        return False
    candidate = given.encode("utf-8", "surrogateescape")
    matched = False
    for value in values:  # no early exit: every key is compared, whatever matches
        matched |= hmac.compare_digest(candidate, value)
    if matched:
        request[IDENTITY] = key_identity(given)
    return matched
