"""Client API keys (``clients.api_keys``): X-API-Key or ``Authorization: Bearer`` required, else 401.

A route or forward marked public (``public: true`` / ``config = {"public": True}``) needs no key, and neither do
the gateway's own OPTIONS answers (placed before this step) or /healthz, /readyz and /metrics (not routes).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from aiohttp import web

from ..errors import Unauthorized
from ..keys import IDENTITY
from ..routing import Handler
from ..secrets import Secret
from .identity import key_identity


def authenticate(keys: Sequence[Secret]):
    """Lets a request through only with one of ``keys``, compared in constant time. None when no key is set."""
    if not keys:
        return None
    values = [key.reveal().encode() for key in keys]

    async def authenticate(request: web.Request, call_next: Handler) -> web.StreamResponse:
        given = presented_key(request)
        if given is None or not _matches(given, values):
            raise Unauthorized(
                "a valid API key is required: send it as X-API-Key or Authorization: Bearer",
                headers={"WWW-Authenticate": 'Bearer realm="gateway"'},
            )
        request[IDENTITY] = key_identity(given)  # the verified key names the client, as a hash
        return await call_next(request)

    return authenticate


def presented_key(request: web.Request) -> str | None:
    """The client key the request carries (X-API-Key, else ``Authorization: Bearer``), or None."""
    given = request.headers.get("X-API-Key")
    if given is None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = token.strip()
    return given


def _matches(given: str, values: list[bytes]) -> bool:
    candidate = given.encode("utf-8", "surrogateescape")
    matched = False
    for value in values:  # no early exit: every key is compared, whatever matches
        matched |= hmac.compare_digest(candidate, value)
    return matched
