"""The edge adapter on the way out: an Answer becomes the client's aiohttp response.

Two body modes: an answer read whole is sent with its real length; a stream goes chunk by chunk as it comes (an
event stream with ``Cache-Control: no-transform`` and ``X-Accel-Buffering: no``), with no length.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..errors import GatewayError
from .values import Answer

log = logging.getLogger("gateway.upstream")


async def respond(request: web.Request, answer: Answer) -> web.StreamResponse:
    headers = answer.headers
    body = answer.body
    if request.method == "HEAD" or answer.status in (204, 304):
        await answer.discard()
        return web.Response(status=answer.status, headers=headers)
    if isinstance(body, bytes):
        headers.popall("Content-Length", None)  # type: ignore[union-attr] - filtered headers are a CIMultiDict
        return web.Response(status=answer.status, headers=headers, body=body)
    headers.popall("Content-Length", None)  # type: ignore[union-attr] - the length after scrubbing is not known
    if answer.event_stream:
        headers["Cache-Control"] = "no-cache, no-transform"  # type: ignore[index]
        headers["X-Accel-Buffering"] = "no"  # type: ignore[index]
    response = web.StreamResponse(status=answer.status, headers=headers)
    finished = False
    try:
        await response.prepare(request)
        async for chunk in body:
            await response.write(chunk)
        await response.write_eof()
        finished = True
    except (GatewayError, OSError, TimeoutError) as exc:
        # the headers are already sent: all we can do is cut the connection so the client sees a truncated body
        log.warning("upstream %s failed mid-stream: %s", answer.upstream, getattr(exc, "code", type(exc).__name__))
        if request.transport is not None:
            request.transport.close()
    finally:
        if not finished:
            await answer.discard()  # the client left or the upstream broke: stop the upstream call
    return response
