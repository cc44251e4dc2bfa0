"""The client's request body, streamed upstream and cut off at ``max_body``, and at a pace it must keep."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from time import monotonic
from typing import Any

from aiohttp import web

from ..errors import PayloadTooLarge, RequestTimeout

BODY_GRACE = 10.0  # seconds the gateway waits for a request body whatever its pace
MIN_BODY_RATE = 1024  # bytes per second waited, on average, that a body must keep past the grace (else 408)


async def paced(content: Any) -> AsyncIterator[bytes]:
    """The chunks of a request body (an aiohttp StreamReader) as they come, cut with RequestTimeout once the time
    spent waiting for them passes what the body has earned: BODY_GRACE seconds, or one second per MIN_BODY_RATE
    bytes received, whichever is more. A body that stalls is cut as soon as that runs out, one that trickles (a
    byte every few seconds, which would hold its connection and a worker's memory for as long as it likes) once
    it falls behind. Only the time spent waiting for the client counts, not the time the reader spends elsewhere
    (e.g. while an upstream is slow to take the upload): a slow consumer never cuts a fast client."""
    waited = 0.0
    total = 0
    while True:
        allowed = max(BODY_GRACE, total / MIN_BODY_RATE) - waited
        began = monotonic()
        try:
            async with asyncio.timeout(max(allowed, 0.0)):
                chunk = await content.readany()
        except TimeoutError:
            raise RequestTimeout(f"the request body came too slowly: {total} bytes in {waited + allowed:.0f}s "
                                 f"(it may take {BODY_GRACE:g}s, then needs {MIN_BODY_RATE} bytes a second)") from None
        waited += monotonic() - began
        if not chunk:
            return
        total += len(chunk)
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
