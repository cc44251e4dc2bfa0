"""The ``rewrite_urls`` step: upstream URLs inside JSON and text bodies become gateway URLs (SPEC §4).

A body is rewritten whole; an event stream stays a stream, rewritten a line at a time.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from .urlmap import UrlMapper
from .values import Answer, Call, OutRequest, read_whole


def rewrite_urls(mapper: UrlMapper, *, enabled: bool, limit: int):
    """None unless the forward says ``rewrite_urls: true``."""
    if not enabled:
        return None

    async def rewrite_urls(out: OutRequest, call_next: Call) -> Answer:
        answer = await call_next(out)
        edit = functools.partial(mapper.body, origin=out.origin)
        if answer.event_stream and not isinstance(answer.body, bytes):
            answer.body = _by_line(answer.body, LineRewriter(edit))
        else:
            answer.body = edit(await read_whole(answer, limit, "to rewrite its URLs"))
        return answer

    return rewrite_urls


async def _by_line(body: AsyncIterator[bytes], edit: LineRewriter) -> AsyncIterator[bytes]:
    async with aclosing(body):
        async for chunk in body:
            if out := edit.feed(chunk):
                yield out
    if tail := edit.flush():
        yield tail


class LineRewriter:
    """Applies a body rewrite to a stream a line at a time, so a URL split across two chunks is still whole.

    A URL never spans a line break, and SSE events end in one: a chunk that ends an event is passed at once;
    only the unfinished last line is held back (at most ``limit`` bytes, then it goes as it is).
    """

    def __init__(self, rewrite: Callable[[bytes], bytes], limit: int = 64 * 1024) -> None:
        self._rewrite = rewrite
        self._limit = limit
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        cut = data.rfind(b"\n") + 1
        if not cut:
            if len(data) < self._limit:
                self._pending = data
                return b""
            cut = len(data)
        self._pending = data[cut:]
        return self._rewrite(data[:cut])

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._rewrite(rest) if rest else b""
