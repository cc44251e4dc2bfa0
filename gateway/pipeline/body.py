"""The client's request body, streamed upstream and cut off at ``max_body``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..errors import PayloadTooLarge


class LimitedBody:
    """An async iterable of the client's body chunks that stops the upload when it grows past ``limit`` bytes."""

    def __init__(self, request: web.Request, limit: int) -> None:
        self._content = request.content
        self.limit = limit
        self.exceeded = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        async for chunk in self._content.iter_any():
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
