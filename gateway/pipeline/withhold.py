"""The ``withhold_5xx`` step: an upstream's 5xx is logged (scrubbed) and the client is told only that it failed."""

from __future__ import annotations

import logging

from ..errors import UpstreamError
from ..mask.scrub import Scrubber
from .values import Answer, Call, OutRequest

log = logging.getLogger("gateway.upstream")
LOGGED_ERROR_BODY = 2048


def withhold_5xx(scrubber: Scrubber):
    async def withhold_5xx(out: OutRequest, call_next: Call) -> Answer:
        answer = await call_next(out)
        if answer.status < 500:
            return answer
        snippet = await _head_of(answer)
        log.warning("upstream %s answered %s: %s", answer.upstream, answer.status,
                    scrubber.scrub(snippet).decode("utf-8", "replace"))
        raise UpstreamError(f"upstream {answer.upstream!r} failed (status {answer.status})")

    return withhold_5xx


async def _head_of(answer: Answer) -> bytes:
    """The first bytes of the body, for the log; the rest is never read (the connection is closed)."""
    body = answer.body
    if isinstance(body, bytes):
        return body[:LOGGED_ERROR_BODY]
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in body:
            parts.append(chunk)
            size += len(chunk)
            if size >= LOGGED_ERROR_BODY:
                break
    except Exception:  # a 5xx that also breaks off: what arrived is enough for the log
        pass
    finally:
        await answer.discard()
    return b"".join(parts)[:LOGGED_ERROR_BODY]
