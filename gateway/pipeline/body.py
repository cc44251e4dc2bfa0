"""The client's request body, streamed upstream and cut off at ``max_body``, and at a pace it must keep."""

from __future__ import annotations

from collections.abc import AsyncIterator
from time import monotonic
from typing import Any

from aiohttp import web

from ..errors import PayloadTooLarge, RequestTimeout

BODY_GRACE = 10.0  # seconds spent waiting for the client's body before its pace is judged
MIN_BODY_RATE = 1024  # bytes per second waited, on average, after that: a body that trickles slower is cut (408)


async def paced(content: Any) -> AsyncIterator[bytes]:
    """The chunks of a request body (an aiohttp StreamReader) as they come, cut with RequestTimeout when the client
    sends them too slowly: after BODY_GRACE seconds of waiting, fewer than MIN_BODY_RATE bytes per second waited.
    Only the time spent waiting for the client counts (not the time the reader spends elsewhere, e.g. while an
    upstream is slow to take the upload), so a slow consumer never cuts a fast client. A body that trickles one
    byte every few seconds would otherwise hold its connection, and a worker's memory, for as long as it likes."""
    waited = 0.0
    total = 0
    while True:
        began = monotonic()
        chunk = await content.readany()
        waited += monotonic() - began
        if not chunk:
            return
        total += len(chunk)
        if waited > BODY_GRACE and total < MIN_BODY_RATE * waited:
            raise RequestTimeout(f"the request body came too slowly: {total} bytes in {waited:.0f}s of waiting "
                                 f"(at least {MIN_BODY_RATE} bytes a second are needed)")
        yield chunk


class LimitedBody:
    """An async iterable of the client's body chunks that stops the upload when it grows past ``limit`` bytes."""

    def __init__(self, request: web.Request, limit: int) -> None:
        self._content = request.content
        self.limit = limit
        self.exceeded = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        async for chunk in paced(self._content):
            total += len(chunk)
            if total > self.limit:
                self.exceeded = True
                raise PayloadTooLarge(f"the request body is larger than the limit of {self.limit} bytes")
            yield chunk


def request_body(request: web.Request, limit: int) -> LimitedBody | None:
    """None when there is no body; raises PayloadTooLarge at once when the declared length is over the limit."""
    if not request.body_exists:
        return None
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
    return LimitedBody(request, limit)


def body_headers(request: web.Request) -> dict[str, str]:
    """The length of the client's body as it goes upstream, when it is known.

    aiohttp's server decodes a request body sent with ``Content-Encoding`` (gzip, deflate) before the gateway reads
    it: such a body goes upstream decoded, without that header and without its original (compressed) length.
    """
    if request.content_length is None or "Content-Encoding" in request.headers:
        return {}
    return {"Content-Length": str(request.content_length)}
