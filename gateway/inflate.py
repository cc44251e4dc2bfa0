"""A compressed request body, decoded on demand in bounded slices that leave the event loop free between them.

aiohttp's server inflates a ``Content-Encoding: gzip`` body as the bytes arrive, a whole network read at once,
and keeps inflating what no handler asked for (it drains an unread body before reusing the connection): ~1 MB
of gzip on the wire is 1 GiB of work before any limit is checked, with the event loop held meanwhile. Here the
server passes the body through compressed (``auto_decompress=False``) and :class:`InflatedBody` decodes it only
when a reader asks: at most ``SLICE`` bytes per step, one step per turn of the event loop. ``max_body``, which
every reader applies to what it reads, so counts decoded bytes, and decoding stops where reading stops.

    gzip (several members too), deflate (zlib-wrapped or raw, as aiohttp accepts) -> decoded
    a truncated body, bytes after the end, undecodable data, another coding -> 400 bad_request
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import StreamReader

from .errors import BadRequest

SLICE = 64 * 1024  # decoded bytes per step: between two steps the event loop runs
WINDOW = 16 * 1024  # compressed bytes handed to zlib per step: what it copies back when a step stops early
MAX_MEMBERS = 1024  # gzip members in one body (aiohttp's cap too): each costs a step; empty ones decode to nothing


class BodyEncodingError(Exception):
    """The body cannot be decoded; the message says why, in words a client can act on."""


class Inflater:
    """Decodes gzip or deflate one bounded step at a time; no I/O, no waiting.

    >>> inflater = Inflater("gzip"); inflater.feed(gzip.compress(b"hi"))
    >>> inflater.step(), inflater.step(), inflater.finish()
    (b'hi', None, None)
    """

    def __init__(self, coding: str) -> None:
        if coding not in ("gzip", "deflate"):
            raise BodyEncodingError(f"Content-Encoding {coding} is not accepted for request bodies; "
                                    "send gzip, deflate or an uncompressed body")
        self._coding = coding
        self._input = memoryview(b"")
        self._pos = 0
        self._members = 0
        self._d: zlib._Decompress | None = None

    def feed(self, data: bytes) -> None:
        rest = self._input[self._pos :]
        self._input = memoryview(bytes(rest) + data if rest else data)
        self._pos = 0

    def step(self) -> bytes | None:
        """Up to SLICE decoded bytes (``b''`` if a step only consumed input); None when all that was fed is decoded."""
        d = self._d
        if d is None or d.eof:
            if self._pos == len(self._input):
                return None
            d = self._d = self._next_member(d)
        window = self._input[self._pos : self._pos + WINDOW]
        try:
            out = d.decompress(window, SLICE)
        except zlib.error:
            raise BodyEncodingError(f"the request body is not valid {self._coding} data") from None
        self._pos += len(window) - len(d.unconsumed_tail) - (len(d.unused_data) if d.eof else 0)
        if out or window:
            return out
        return None

    def finish(self) -> None:
        """At the end of the body: raises if the compressed data stopped before its end."""
        if self._d is not None and not self._d.eof:
            raise BodyEncodingError(f"the request body's {self._coding} data is truncated")

    def _next_member(self, done: zlib._Decompress | None) -> zlib._Decompress:
        if done is not None and self._coding == "deflate":
            raise BodyEncodingError("the request body has data after the end of its deflate stream")
        self._members += 1
        if self._members > MAX_MEMBERS:
            raise BodyEncodingError(f"the request body has more than {MAX_MEMBERS} gzip members")
        if self._coding == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # RFC 9110 deflate is zlib-wrapped; some clients send raw deflate, which aiohttp has always accepted
        zlib_header = self._input[self._pos] & 0x0F == 8
        return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)


class _NoFlowControl:
    """The decoded body's protocol: nothing to pause, nothing is decoded before a reader asks for it."""

    connected = True
    _reading_paused = False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


_NO_FLOW_CONTROL = _NoFlowControl()


class InflatedBody(StreamReader):
    """The request's ``content`` when the client compressed it: every aiohttp read method works as usual.

    StreamReader calls ``_wait`` whenever a read finds nothing buffered; here that is where the next slice is
    decoded (or the next compressed bytes are awaited), after one turn of the event loop.
    """

    def __init__(self, raw: StreamReader, coding: str, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(_NO_FLOW_CONTROL, SLICE, loop=loop)  # type: ignore[arg-type]
        self._raw = raw
        self._coding = coding
        self._inflater: Inflater | None = None
        self._reading_raw = False

    async def _wait(self, func_name: str) -> None:
        await asyncio.sleep(0)  # however fast the reader asks, other requests get their turn between slices
        if self._exception is not None:
            raise self._exception
        try:
            if self._inflater is None:
                self._inflater = Inflater(self._coding)
            data = self._inflater.step()
            if data is None:
                self._reading_raw = True
                try:
                    chunk = await self._raw.readany()
                finally:
                    self._reading_raw = False
                if chunk:
                    self._inflater.feed(chunk)
                else:
                    self._inflater.finish()
                    self.feed_eof()
                return
        except BodyEncodingError as exc:
            error = BadRequest(str(exc))
            self.set_exception(error)
            raise error from None
        if data:
            self.feed_data(data)

    def set_exception(self, exc: BaseException, *args: object) -> None:
        super().set_exception(exc, *args)  # type: ignore[arg-type]
        if self._reading_raw:  # the client left while a read waited for its bytes: wake that read too
            self._raw.set_exception(exc)


__all__ = ["BodyEncodingError", "InflatedBody", "Inflater", "MAX_MEMBERS", "SLICE"]
