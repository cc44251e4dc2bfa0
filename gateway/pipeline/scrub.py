"""The ``scrub`` step: any secret in the answer's headers or body becomes ``[REDACTED]``, also across chunks.

It is the outermost step of the upstream call, so no step after it can rebuild a secret. A body in an encoding
the gateway cannot decode cannot be checked, so it is refused (502) rather than passed on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

from ..errors import UpstreamError
from ..mask.scrub import Scrubber, StreamScrubber
from .values import Answer, Call, OutRequest

log = logging.getLogger("gateway.upstream")


def scrub(scrubber: Scrubber):
    """None when no secret is configured: there is nothing to look for."""
    if not scrubber:
        return None
    scrub_text = scrubber.scrub_text

    async def scrub(out: OutRequest, call_next: Call) -> Answer:
        answer = await call_next(out)
        headers = answer.headers
        if scrub_text(joined := "\n".join(headers.values())) != joined:  # one scan for all headers
            for name, value in list(headers.items()):
                if (clean := scrub_text(value)) != value:
                    headers[name] = clean  # type: ignore[index] - filtered headers are a CIMultiDict
        body = answer.body
        if isinstance(body, bytes):
            if body and answer.encoding:
                raise _unreadable(answer)
            answer.body = scrubber.scrub(body)
        else:
            if answer.encoding:
                await answer.discard()
                raise _unreadable(answer)
            answer.body = _scrubbed(body, scrubber.stream())
        return answer

    def _unreadable(answer: Answer) -> UpstreamError:
        log.warning("upstream %s answered in encoding %r, which cannot be checked for secrets", answer.upstream,
                    scrub_text(answer.encoding)[:40])
        return UpstreamError(f"upstream {answer.upstream!r} answered in an encoding the gateway cannot check")

    return scrub


async def _scrubbed(body: AsyncIterator[bytes], stream: StreamScrubber) -> AsyncIterator[bytes]:
    async with aclosing(body):
        async for chunk in body:
            if out := stream.feed(chunk):
                yield out
    if tail := stream.flush():
        yield tail
