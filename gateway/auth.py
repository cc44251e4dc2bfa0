"""Client API keys (``clients.api_keys``): X-API-Key or ``Authorization: Bearer`` required, else 401.

A route or forward marked public (``public: true`` / ``config = {"public": True}``) needs no key, and neither do
OPTIONS requests (a browser's preflight never carries credentials) or /healthz and /readyz.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence

from aiohttp import web

from .edge.identity import key_identity
from .errors import Unauthorized
from .keys import IDENTITY
from .routing import Handler
from .secrets import Secret


def require_api_key(keys: Sequence[Secret]) -> Callable[[Handler], Handler]:
    """A wrapper that lets a request through only with one of ``keys``; compared in constant time."""
    values = [key.reveal().encode() for key in keys]

    def wrap(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            if request.method != "OPTIONS":
                given = presented_key(request)
                if given is None or not _matches(given, values):
                    raise Unauthorized(
                        "a valid API key is required: send it as X-API-Key or Authorization: Bearer",
                        headers={"WWW-Authenticate": 'Bearer realm="gateway"'},
                    )
                request[IDENTITY] = key_identity(given)  # the verified key names the client, as a hash
            return await handler(request)

        return checked

    return wrap


def presented_key(request: web.Request) -> str | None:
    """The client key as sent (X-API-Key, else ``Authorization: Bearer``), verified or not; None when absent."""
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
