"""The ``send`` step, at the end of every upstream call: one call (retried as configured), made into an Answer.

Client and transport exceptions become gateway errors in exactly one place (``upstream.errors``), also those that
come later, while the body is read: the body iterator made here raises them too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..errors import PayloadTooLarge
from ..upstream.client import Response
from ..upstream.errors import upstream_errors
from .upstream import Upstream
from .values import Answer, Call, OutRequest

BUFFER_LIMIT = 1024 * 1024  # a plain body up to this size with a known length is read whole: faster, bounded


def send(upstream: Upstream) -> Call:
    name = upstream.name
    errors = upstream.errors

    async def send(out: OutRequest) -> Answer:
        try:
            response = await upstream.send(out.method, out.url, out.headers, out.body,  # type: ignore[arg-type]
                                           out.facts)  # learns the upstream, its status and latency
        except Exception:
            if getattr(out.body, "exceeded", False):  # the upstream gave up while we cut the body: still a 413
                raise PayloadTooLarge(f"the request body is larger than the limit of {out.body.limit} bytes") from None
            raise
        coding = response.headers.get("Content-Encoding", "")
        encoding = response.remaining_encoding  # what the client could not undo ("" when the body is plain)
        if out.method == "HEAD" or response.status in (204, 304):
            response.release()
            body: bytes | AsyncIterator[bytes] = b""
        elif not coding and response.content_length is not None and response.content_length <= BUFFER_LIMIT:
            try:
                body = await response.read()
            except BaseException as exc:
                response.close()
                if isinstance(exc, Exception):
                    errors.translate(exc)
                raise
        else:
            body = _chunks(response, errors)
            return Answer(response.status, response.headers, body, encoding, out.url, name, response.close)
        return Answer(response.status, response.headers, body, encoding, out.url, name)

    return send


async def _chunks(response: Response, errors: upstream_errors) -> AsyncIterator[bytes]:
    """The body as it comes; the connection goes back to the pool when it was read to the end, else it is closed
    (a client that left stops the upstream call, and its spending of the key's quota)."""
    done = False
    try:
        with errors:
            async for chunk in response.iter_any():
                yield chunk
        done = True
    finally:
        if done:
            response.release()
        else:
            response.close()
