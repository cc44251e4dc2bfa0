"""The ``hold_whole`` step of a cached forward: a streamed answer that turns out small is read whole, so the cache
above can keep it (an upstream that answers JSON chunked, with no length, is common). An event stream, or a body
past ``limit``, goes on streaming as it came.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from .values import Answer, Call, OutRequest


def hold_whole(limit: int, *, enabled: bool):
    """None unless the forward is cached."""
    if not enabled:
        return None

    async def hold_whole(out: OutRequest, call_next: Call) -> Answer:
        answer = await call_next(out)
        body = answer.body
        if isinstance(body, bytes) or answer.event_stream:
            return answer
        parts: list[bytes] = []
        size = 0
        async for chunk in body:  # not closed on the way out: a large body is resumed below
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                answer.body = _resumed(parts, body)
                return answer
        answer.body = b"".join(parts)
        return answer

    return hold_whole


async def _resumed(head: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in head:
        yield chunk
    try:
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()  # type: ignore[attr-defined] - the chain's bodies are async generators
