"""One upstream answer as the client hands it over: status and headers at once, the body as it arrives, decoded.

Fed by its ``Connection`` (``_start``, ``_feed``, ``_finish``, ``_fail``), read by the consumer (``iter_any``,
``read``). Reading pauses while more than ``HIGH_WATER`` decoded bytes wait for the consumer, and while compressed
input waits to be decoded: a compressed body is decoded one ``codings.STEP`` at a time, when the consumer asks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .codings import CodingError, Decoder, codings, plan

if TYPE_CHECKING:
    from .connection import Connection

HIGH_WATER = 256 * 1024  # buffered body bytes at which reading from the upstream pauses


class UpstreamClosed(ConnectionError):
    """The upstream closed the connection before the response was complete."""


class InvalidResponse(ConnectionError):
    """The upstream's answer is malformed, over a limit, or does not match its codings."""


class Response:
    """The answer to one call: status and headers at once, the body as it arrives."""

    def __init__(self, conn: Connection, timeout: float, url: str) -> None:
        self._conn = conn
        self._url = url
        self._timeout = timeout
        self._loop = conn.loop
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._decoder: Decoder | None = None
        self._body: bytes | None = None
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.content_length: int | None = None
        self.remaining_encoding = ""  # the Content-Encoding that still applies to the bytes delivered
        self.until_eof = False
        self.complete = False
        self.error: Exception | None = None
        self.released = False

    @property
    def url(self) -> URL:
        """The URL that was requested (what a relative Location is relative to)."""
        return URL(self._url, encoded=True)

    @property
    def content(self) -> Response:
        return self  # aiohttp's spelling: ``up.content.iter_any()``

    def get_encoding(self) -> str:
        content_type = self.headers.get("Content-Type", "")
        for part in content_type.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                return value.strip('"')
        return "utf-8"

    # -- fed by the connection -------------------------------------------------------------------------------

    def _start(self, status: int, headers: list[tuple[str, str]], no_body: bool) -> None:
        """The final head is in. Raises CodingError (before anything is set) for codings that cannot be undone."""
        multi = CIMultiDict(headers)
        chunked = False
        if "Content-Encoding" in multi or "Transfer-Encoding" in multi:
            content = multi.getall("Content-Encoding", ())
            transfer = multi.getall("Transfer-Encoding", ())
            if not content and transfer == ["chunked"]:  # the common case: nothing to decode
                chunked = True
            else:
                listed = codings(transfer)
                chunked = bool(listed) and listed[-1] == "chunked"
                if "chunked" in listed[:-1]:
                    raise CodingError("the upstream's Transfer-Encoding lists chunked other than last")
                layers, self.remaining_encoding = plan(codings(content), listed)
                if layers and not no_body:
                    self._decoder = Decoder(layers)
        self.status = status
        self.headers = CIMultiDictProxy(multi)
        length = multi.get("Content-Length")
        self.content_length = int(length) if length and length.isdigit() else None
        self.until_eof = not no_body and self.content_length is None and not chunked
        if no_body:
            self.complete = True
        self._wake()

    def _feed(self, data: bytes) -> None:
        decoder = self._decoder
        if decoder is not None:
            decoder.feed(data)
            if not self._decode_step():
                return
            if decoder.busy:
                self._pause()  # compressed input is held: no more until the consumer has caught up
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._pause()
        self._wake()

    def _decode_step(self) -> bool:
        """Decode at most one step of held input; False once the body turned out corrupt."""
        decoder = self._decoder
        assert decoder is not None
        try:
            out = decoder.step()
        except CodingError as exc:
            self._fail(InvalidResponse(str(exc)))
            self._conn.close()
            return False
        if out:
            self._chunks.append(out)
            self._buffered += len(out)
            if self._buffered > HIGH_WATER:
                self._pause()
        if decoder.done:
            self._decoder = None
            self.complete = True
        self._wake()
        return True

    def _pause(self) -> None:
        if not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self._buffered <= HIGH_WATER // 2 and not (self._decoder and self._decoder.busy):
            if self._conn.transport is not None:
                self._paused = False
                self._conn.transport.resume_reading()

    def _finish(self) -> None:
        """All of the body has arrived (the decoder may still have some of it to decode)."""
        if self._decoder is None:
            self.complete = True
            self._wake()
            return
        self._decoder.close()
        self._decode_step()

    def _fail(self, exc: Exception) -> None:
        if self.error is None and not self.complete:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout: float | None = -1) -> None:
        """Until something happens (data, end, error), at most ``timeout`` seconds (default: the call's)."""
        self._waiter = waiter = self._loop.create_future()
        if timeout is None:
            try:
                await waiter
            finally:
                self._waiter = None
            return
        timer = self._loop.call_later(self._timeout if timeout == -1 else timeout, _expire, waiter, self._timeout)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def _wait_headers(self) -> None:
        while not self.status:
            if self.error is not None:
                raise self.error
            await self._wait()

    # -- read by the consumer --------------------------------------------------------------------------------

    async def iter_any(self) -> AsyncIterator[bytes]:
        """Each chunk as it arrives."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                self._resume()
                yield chunk
            elif self.error is not None:
                raise self.error
            elif self.complete:
                self.release()
                return
            elif self._decoder is not None and self._decoder.busy:
                self._decode_step()
                self._resume()
            else:
                await self._wait()

    async def read(self, limit: int = -1) -> bytes:
        """The whole body (kept, so a second read gives it again), or up to ``limit`` bytes of it.

        Decoded bytes are counted: decoding stops as soon as ``limit`` is reached. A whole-body read holds at most
        the pool's ``max_read`` bytes; a longer body raises InvalidResponse (and the call is closed).
        """
        if self._body is not None:
            return self._body
        parts = []
        size = 0
        if limit >= 0:
            async for chunk in self.iter_any():
                parts.append(chunk)
                size += len(chunk)
                if size >= limit:
                    break
            return b"".join(parts)[:limit]
        cap = self._conn.pool.max_read
        if self.complete and self.error is None and self._decoder is None:  # all of it came with the head: taken
            body = b"".join(self._chunks)  # at once, without the iterator (most small answers)
            self._chunks.clear()
            self._buffered = 0
            self._resume()
            if len(body) > cap:
                raise self._too_large(cap)
            self.release()
            self._body = body
            return body
        async for chunk in self.iter_any():
            parts.append(chunk)
            size += len(chunk)
            if size > cap:
                raise self._too_large(cap)
        self._body = b"".join(parts)
        return self._body

    def _too_large(self, cap: int) -> InvalidResponse:
        self.close()
        return InvalidResponse(f"the upstream's body is larger than {cap} bytes, too large to read whole")

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._conn.finished_with(self)

    def close(self) -> None:
        """Stop the call: the connection is closed (the upstream sees the client leave), never reused."""
        if not self.released:
            self.released = True
            self._conn.close()
            self._conn.finished_with(self)


def _expire(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"the upstream sent nothing for {timeout:g}s"))
