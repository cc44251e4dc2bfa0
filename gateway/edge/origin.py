"""The ``check_origin`` step of WebSocket forwards: WebSockets are not protected by CORS, so the gateway refuses
a cross-site upgrade itself (SPEC §10) — with ``clients.cors``, an Origin outside its origins; without it, any
Origin but the gateway's own. A client that sends no Origin (not a browser) is let through.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import Forbidden
from ..routing import Handler


def check_origin(allowed: Callable[[str], bool] | None, *, enabled: bool):
    """``allowed``: the CORS origin matcher, or None to accept only the same origin. None unless ``enabled``."""
    if not enabled:
        return None

    async def check_origin(request: web.Request, call_next: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and not (allowed(origin) if allowed is not None else _same_origin(origin, request)):
            raise Forbidden("this WebSocket does not accept connections from the page's origin")
        return await call_next(request)

    return check_origin


def _same_origin(origin: str, request: web.Request) -> bool:
    """``Origin: https://gw.example`` on a request to ``Host: gw.example``: the page is the gateway's own."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        return False  # "null", file:, or anything that is not an origin
    default = {"http": 80, "https": 443}[parts.scheme]
    host = request.headers.get("Host", "").lower()
    mine = host if ":" in host.rsplit("]", 1)[-1] else f"{host}:{default}"
    try:
        theirs = f"{parts.hostname}:{parts.port or default}"
    except ValueError:
        return False
    return theirs == mine
