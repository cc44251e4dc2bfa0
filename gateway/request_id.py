"""X-Request-Id: the client's when it is a plain token, otherwise a new one; returned on every response.

An upstream's own request id never reaches the client (it is not in the response allowlist): the id a client
sees is always the gateway's.
"""

from __future__ import annotations

import re
from random import getrandbits

from aiohttp import web

from .keys import REQUEST_ID

HEADER = "X-Request-Id"
_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z").match


def request_id(request: web.Request) -> str:
    """``X-Request-Id: abc-123`` -> ``"abc-123"``; missing or odd (CR/LF, spaces, 129+ chars) -> 32 hex digits."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        given = request.headers.get(HEADER)
        # a correlation id, not a secret: Python's own generator is enough, and unlike os.urandom costs no syscall
        rid = given if given and _PLAIN_TOKEN(given) else f"{getrandbits(128):032x}"
        request[REQUEST_ID] = rid
    return rid


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: also reaches streamed responses and a route's own StreamResponse."""
    response.headers[HEADER] = request_id(request)
