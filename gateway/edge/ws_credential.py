"""The ``browser_credential`` step of WebSocket forwards: a browser cannot set ``Authorization`` on a WebSocket, so
its client key or token may come as a subprotocol entry ``bearer.<credential>`` or a query parameter
``access_token``; it is handed to the auth step as a Bearer header. Neither ever goes upstream: the subprotocol
filter drops credential entries, and the WebSocket endpoint drops ``access_token`` from the query.
"""

from __future__ import annotations

from aiohttp import web

from ..routing import Handler

QUERY_PARAM = "access_token"
PROTOCOL_PREFIX = "bearer."


def browser_credential(*, enabled: bool):
    """None unless the route is a WebSocket forward."""
    if not enabled:
        return None

    async def browser_credential(request: web.Request, call_next: Handler) -> web.StreamResponse:
        if "Authorization" not in request.headers and (found := credential_of(request)):
            headers = request.headers.copy()
            headers["Authorization"] = f"Bearer {found}"
            request = request.clone(headers=headers)
        return await call_next(request)

    return browser_credential


def credential_of(request: web.Request) -> str | None:
    """``Sec-WebSocket-Protocol: realtime, bearer.<token>`` or ``?access_token=<token>`` -> the token."""
    for entry in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        entry = entry.strip()
        if entry[: len(PROTOCOL_PREFIX)].lower() == PROTOCOL_PREFIX and len(entry) > len(PROTOCOL_PREFIX):
            return entry[len(PROTOCOL_PREFIX):]
    return request.query.get(QUERY_PARAM) or None
