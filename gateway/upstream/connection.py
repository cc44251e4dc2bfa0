"""One keep-alive connection to an upstream: writes a request (streaming its body), parses the answer with httptools.

The answer is held to the message: a head over the pool's ``max_head`` bytes or ``max_headers`` lines (interim 1xx
answers and trailers included), bytes after the message, an invalid message: InvalidResponse, and the connection
closed. A request body streams up in a task of its own while the answer is watched for, so an upstream that
answers early (a 413 mid-upload) is answered at once (an error answer ends the upload; a success goes on being
read while the body goes up); a watchdog ends an upload that makes no progress for ``timeout`` seconds, blaming
the side that stalled (BodyTimeout for the client, TimeoutError for the upstream).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

import httptools

from .codings import CodingError
from .response import InvalidResponse, Response, UpstreamClosed

if TYPE_CHECKING:
    from .client import Pool

_CHUNKED_HEAD_END = b"\r\nTransfer-Encoding: chunked\r\n\r\n"
_CLIENT, _UPSTREAM = "client", "upstream"  # who an upload is waiting for


class BodyTimeout(Exception):
    """The client's request body stalled: no chunk for ``timeout`` seconds. The client's fault, not the upstream's."""


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; carries one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self.used = False  # has carried a request
        self.received_any = False  # of the current answer
        self.expires = 0.0  # while idle: when it is no longer used
        self.keep_for = pool.idle_timeout
        self.response: Response | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[str, str]] = []
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._head_only = False
        self._head_size = 0  # bytes received before the final head was complete
        self._room = pool.max_headers  # header lines this answer's heads may still have (1xx ones count)
        self._final = False  # the final (non-1xx) head is complete: headers now are trailers
        self._message_done = False
        self._stop: InvalidResponse | None = None  # why a callback stopped the parser
        self._chunks = 0  # chunk heads seen; with _maybe_trailers, bounds what trailers can make us hold
        self._maybe_trailers = False
        self._trailer_size = 0
        self._abandoned = False  # the request body was not sent whole: never reuse
        self._stalled: Exception | None = None
        self._uploading: asyncio.Task[None] | None = None  # the request body, going up
        self._watchdog: asyncio.TimerHandle | None = None
        self._waiting_for = _CLIENT
        self._progress = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or self._message_done:  # unasked-for bytes, or bytes after the answer: never parsed
            self.close()
            return
        self.received_any = True
        if not self._final:
            self._head_data(data)
            return
        chunks = self._chunks if self._maybe_trailers else -1
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
            return
        if chunks == self._chunks and self._maybe_trailers:  # no body since the last chunk head: trailers
            self._trailer_size += len(data)
            if self._trailer_size > self.pool.max_head:
                self._invalid(f"the upstream's trailers are longer than {self.pool.max_head} bytes")

    def _head_data(self, data: bytes) -> None:
        """Bytes that start (or all belong to) the head: counted, so that no head can grow past ``max_head``."""
        self._head_size += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
            return
        if not self._final and self._head_size > self.pool.max_head:
            self._invalid(f"the upstream's response head is longer than {self.pool.max_head} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.response is not None and not self._message_done:
            self._read_what_is_left()
        self.closed = True
        self.reusable = False
        self.pool.forget(self)
        self._can_write.set()
        response = self.response
        if response is not None and not response.complete and not self._message_done:  # (a body still decoding
            # after the whole message arrived is not cut short by the connection closing)
            if response.status and response.until_eof and exc is None:
                response._finish()  # a body delimited by the end of the connection (a reset cuts it short)
            else:
                response._fail(UpstreamClosed("the upstream closed the connection"))

    def _read_what_is_left(self) -> None:
        """An upstream that answers early and closes with our upload unread resets the connection; a write can then
        fail before its answer, already in our socket's buffer, is read. Read it now (plain TCP only: TLS bytes
        would need the TLS layer)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None or self.transport.get_extra_info("sslcontext") is not None:  # type: ignore[union-attr]
            return
        try:
            fd = sock.fileno()
            for _ in range(64):  # bounded: at most 4 MiB
                data = os.read(fd, 65536) if fd >= 0 else b""
                if not data or self.response is None or self._message_done:
                    break
                self.data_received(data)
        except OSError:  # nothing left (EAGAIN), or the reset itself
            pass

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- httptools callbacks ---------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._message_done:  # a second message after the one answer: stop parsing (data_received closes)
            raise _AfterMessage

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers  # after the head: a _Trailers, which counts them and keeps none
        if len(headers) >= self._room:
            self._stop = InvalidResponse(f"the upstream sent more than {self.pool.max_headers} header lines")
            raise self._stop
        headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        response = self.response
        assert response is not None
        headers, self._headers = self._headers, []
        if self._head_size > self.pool.max_head:  # what arrived is longer than a head may be: measure this one
            if sum(len(name) + len(value) + 4 for name, value in headers) > self.pool.max_head:
                self._stop = InvalidResponse(f"the upstream's headers are longer than {self.pool.max_head} bytes")
                raise self._stop
        if status < 200:  # 1xx: an interim answer, the real one follows (its lines count against the limit)
            self._room -= len(headers)
            return
        self._final = True
        self._room = self.pool.max_headers
        self._headers = _Trailers(self)  # type: ignore[assignment]
        try:
            response._start(status, headers, self._head_only or status in (204, 304))
        except CodingError as exc:
            self._stop = InvalidResponse(str(exc))
            raise self._stop from None
        if "Keep-Alive" in response.headers:
            self.keep_for = _keep_alive(response.headers["Keep-Alive"], self.pool.idle_timeout)
        if response.complete:  # HEAD, 204, 304: whatever follows the head is no part of the answer
            self._message_done = True
            self.reusable = False
            if self._head_only:  # the parser would take a body for it: stop here, never reuse this connection
                raise _AfterMessage

    def on_body(self, body: bytes) -> None:
        self._maybe_trailers = False
        self.response._feed(body)  # type: ignore[union-attr]

    def on_chunk_header(self) -> None:
        self._chunks += 1
        self._maybe_trailers = True
        self._trailer_size = 0

    def on_chunk_complete(self) -> None:
        self._maybe_trailers = False

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            return  # the end of an interim answer: the response is still to come
        self._message_done = True
        self.reusable = (self._parser.should_keep_alive() and not self._head_only and not self._abandoned
                         and self.keep_for > 0 and (self._uploading is None or self._uploading.done()))
        if self.response is not None:
            self.response._finish()

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        stop, self._stop = self._stop, None
        if self._message_done:  # the answer was whole: what came after it is no part of it
            self.close()
            return
        self._invalid(str(stop) if stop is not None else f"invalid HTTP response ({str(exc)[:80]})")

    def _invalid(self, reason: str) -> None:
        if self.response is not None:
            self.response._fail(InvalidResponse(reason))
        self.close()

    # -- requests --------------------------------------------------------------------------------------------

    async def send(self, head: bytes, body: Any, method: str, url: str, timeout: float) -> Response:
        assert self.transport is not None
        self.used = True
        self.reusable = False
        self.received_any = False
        self.keep_for = self.pool.idle_timeout
        self._head_only = method == "HEAD"
        self._head_size = 0
        self._room = self.pool.max_headers
        self._final = self._message_done = self._abandoned = False
        self._uploading = None
        self._headers = []
        self._parser = httptools.HttpResponseParser(self)
        response = self.response = Response(self, timeout, url)
        done = False
        try:
            if body is None or isinstance(body, bytes | bytearray):
                self.transport.write(head + body if body else head)
                await response._wait_headers()
            else:
                self.transport.write(head)
                await self._send_stream(response, body, head.endswith(_CHUNKED_HEAD_END), timeout)
            done = True
            return response
        finally:
            if not done:
                self.close()

    async def _send_stream(self, response: Response, body: Any, chunked: bool, timeout: float) -> None:
        """Stream ``body`` up while watching for the answer, which may come before the upload is done (RFC 9112
        §9.5): an error answer, or one that closes the connection, ends the upload at once; any other goes on
        being read while the body goes on going up (never reused unless the upload ended first)."""
        self._stalled = None
        self._waiting_for, self._progress = _CLIENT, self.loop.time()
        self._uploading = upload = self.loop.create_task(self._upload(body, chunked))
        upload.add_done_callback(self._upload_done)
        self._watchdog = self.loop.call_at(self._progress + timeout, self._watch, timeout)
        carry_on = False
        try:
            while not response.status:
                if response.error is not None:
                    raise response.error
                if self._stalled is not None:
                    raise self._stalled
                if upload.done():
                    upload.result()  # the client's body failed: its own error
                    self._watchdog.cancel()
                    await response._wait_headers()  # sent whole: the answer is due within ``timeout``
                    return
                await response._wait(None)  # the watchdog bounds each stall of the upload
            carry_on = response.status < 400 and self._parser.should_keep_alive() and not response.complete
        finally:
            if not carry_on and not upload.done():
                self._abandon()

    def _abandon(self) -> None:
        """Stop the upload (the upstream does not want the rest, or the call ended): never reuse the connection."""
        self._abandoned = True
        self.reusable = False
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._uploading is not None and not self._uploading.done():
            self._uploading.cancel()

    async def _upload(self, body: Any, chunked: bool) -> None:
        assert self.transport is not None
        write = self.transport.write
        chunks = aiter(body)
        try:
            async for chunk in chunks:
                if self.closed or self._abandoned:
                    return  # the upstream left, or does not want the rest of the body
                if chunk:
                    write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                if not self._can_write.is_set():
                    self._waiting_for, self._progress = _UPSTREAM, self.loop.time()
                    await self._can_write.wait()
                self._waiting_for, self._progress = _CLIENT, self.loop.time()
            if chunked and not self.closed:
                write(b"0\r\n\r\n")
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            if hasattr(chunks, "aclose"):
                await chunks.aclose()

    def _upload_done(self, upload: asyncio.Task[None]) -> None:
        failed = not upload.cancelled() and upload.exception() is not None  # (retrieved: it may go unseen)
        response = self.response
        if response is None:
            return
        if failed and response.status:  # the answer is being read while the body failed: the call ends here
            response._fail(UpstreamClosed("the request body could not be sent whole"))
            self.close()
        response._wake()

    def _watch(self, timeout: float) -> None:
        """Called ``timeout`` after the upload's last progress: give up if there was none since."""
        since = self.loop.time() - self._progress
        if since < timeout * 0.999:
            self._watchdog = self.loop.call_at(self._progress + timeout, self._watch, timeout)
            return
        if self._waiting_for is _CLIENT:
            self._stalled = BodyTimeout(f"the request body stalled: no data for {timeout:g}s")
        else:
            self._stalled = TimeoutError(f"the upstream did not read the request body for {timeout:g}s")
        response = self.response
        if response is not None and response.status:  # an answer already being read: the call ends here
            response._fail(TimeoutError(str(self._stalled)))
            self.close()
        elif response is not None:
            response._wake()

    def finished_with(self, response: Response) -> None:
        """The consumer is done with ``response``: back to the pool if it was read to the end, else closed."""
        if self.response is response:
            self.response = None
            if (response.complete and response.error is None and self.reusable and not self.closed
                    and not response._paused):  # released unread while reading was paused
                self.pool.release(self)
            else:
                self.close()

    def close(self) -> None:
        self.reusable = False
        if self._uploading is not None and not self._uploading.done():
            self._abandon()
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()  # now: a close would first wait to flush what an upstream may never read


class _Trailers:
    """Where header lines go once the head is complete: trailers are counted against the limits, never kept."""

    __slots__ = ("conn", "lines", "size")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lines = 0
        self.size = 0

    def __len__(self) -> int:
        return self.lines

    def append(self, line: tuple[str, str]) -> None:
        self.lines += 1
        self.size += len(line[0]) + len(line[1]) + 4
        limit = self.conn.pool.max_head
        if self.size > limit:
            self.conn._stop = InvalidResponse(f"the upstream's trailers are longer than {limit} bytes")
            raise self.conn._stop


class _AfterMessage(Exception):
    """Raised in a parser callback to stop parsing bytes that follow the answer."""


def _keep_alive(value: str, default: float) -> float:
    """``Keep-Alive: timeout=5, max=100`` -> 4.0: how long an idle connection may be kept (0: do not reuse it)."""
    keep = default
    for part in value.split(","):
        key, _, number = part.strip().partition("=")
        try:
            n = float(number)
        except ValueError:
            continue
        if key.lower() == "timeout":
            keep = min(keep, n - 1)  # a second of margin: never race the upstream closing it
        elif key.lower() == "max" and n <= 1:
            keep = 0
    return max(keep, 0)


