"""``forward()``: call an upstream from a route handler, through the same builder and call chain as a YAML forward.

    up = await forward(req, "weather", "/weather", query={"q": city})
    data = await up.json()                      # reshape in code (bounded, scrubbed) ...
    async for chunk in up: ...                  # ... or stream it, masked, chunk by chunk ...
    return await forward(req, "svc", "/path")   # ... or pass the answer through, masked and streamed
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from ..errors import InternalError
from ..keys import PENDING, RUNTIME, UPSTREAMS
from ..mask.scrub import Scrubber
from .outgoing import handler_request
from .respond import respond
from .values import Answer, read_whole


class UpstreamResponse:
    """What ``forward()`` returns: status, safe headers and the body, always scrubbed of secrets.

    ``headers`` (and ``status``) may be changed: returned from the handler, the answer goes out with them. The body
    can be read whole (``read``/``text``/``json``, at most ``server.max_response`` bytes) or streamed once
    (``async for chunk in up``), not both.
    """

    def __init__(self, answer: Answer, limit: int, scrubber: Scrubber) -> None:
        self._answer = answer
        self._limit = limit
        self._scrubber = scrubber
        self._body: bytes | None = answer.body if isinstance(answer.body, bytes) else None
        self._streamed = False
        self.status = answer.status
        self.headers: CIMultiDict[str] = answer.headers  # type: ignore[assignment] - filtered: a CIMultiDict

    async def read(self) -> bytes:
        if self._body is None:
            self._not_streamed()
            self._body = await read_whole(self._answer, self._limit, "for a handler")
        return self._body

    async def text(self) -> str:
        return (await self.read()).decode(_charset(self.headers.get("Content-Type", "")), "replace")

    async def json(self) -> Any:
        """The body as JSON; also a secret that the upstream spelled in \\u-escapes no encoder writes is gone."""
        return self._scrubber.loads_json(await self.read())

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.iter_chunked()

    async def iter_chunked(self, size: int | None = None) -> AsyncIterator[bytes]:
        """The masked body as it comes, in chunks of at most ``size`` bytes (any size when None)."""
        self._not_streamed()
        self._streamed = True
        body = self._body if self._body is not None else self._answer.body
        if isinstance(body, bytes):
            step = size or len(body) or 1
            for start in range(0, len(body), step):
                yield body[start:start + step]
            return
        async with aclosing(body):
            async for chunk in body:
                if size is None:
                    yield chunk
                else:
                    for start in range(0, len(chunk), size):
                        yield chunk[start:start + size]

    async def respond(self, request: web.Request) -> web.StreamResponse:
        """Relay this answer to the client, with the headers and status the handler left on it."""
        self._not_streamed()
        self._streamed = True
        answer = self._answer
        answer.status, answer.headers = self.status, self.headers
        if self._body is not None:
            answer.body = self._body
        return await respond(request, answer)

    async def aclose(self) -> None:
        """Stop the upstream call if the body was left unread (the handler is done with it)."""
        if not self._streamed and self._body is None:
            self._streamed = True
            await self._answer.discard()

    def _not_streamed(self) -> None:
        if self._streamed:
            raise RuntimeError("forward(): this upstream answer was already streamed or returned; it can be "
                               "consumed once (read it first, then return the result, to do both)")


async def forward(
    req: web.Request,
    upstream: str,
    path: str = "",
    *,
    method: str | None = None,
    query: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    data: bytes | None = None,
) -> UpstreamResponse:
    """Call ``upstream`` at ``path`` (relative to its url; each segment is percent-encoded). Without ``query`` the
    client's query string is passed; without ``json``/``data`` the client's body goes when the method is its own.
    ``headers`` may not set framing, hop-by-hop or injected headers."""
    upstreams = req.app[UPSTREAMS]
    if upstream not in upstreams:
        raise InternalError(f"forward(): no upstream named {upstream!r} in the config")
    up = upstreams[upstream]
    out = handler_request(req, up, path, method=method, query=query, headers=headers, json=json, data=data)
    runtime = req.app[RUNTIME]
    result = UpstreamResponse(await up.call(out), runtime.max_response, runtime.scrubber)
    req.setdefault(PENDING, []).append(result)
    return result


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip('"')
    return "utf-8"
