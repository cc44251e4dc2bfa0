"""A lean HTTP/1.1 client for upstream calls: one keep-alive pool per upstream, httptools' C parser, nothing else.

Why not aiohttp's ClientSession: measured on the bench (../shared/bench), a session request spends most of a
small proxied call's CPU on machinery a gateway never uses (cookie jar, redirects, proxies, tracing, per-read
timeout rescheduling). This client does what a forward needs and no more:

* pooled keep-alive connections, reused last-in-first-out; a reused connection that the upstream had already
  closed is retried once on a fresh one when the request can be replayed (no streamed body);
* ``timeout`` bounds the connect, the wait for response headers, and each silence between body chunks;
* bodies are read chunk by chunk with flow control (reading pauses while the consumer lags), gzip and
  deflate are decoded (so they can be scrubbed); other encodings are passed through untouched;
* cancelling a call (the client left) closes its connection, so the upstream sees the call end.

Errors are raised as ``TimeoutError`` or ``ConnectionError`` (an OSError) and translated to gateway errors in
``errors.upstream_errors``, like any other client failure.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

HIGH_WATER = 256 * 1024  # buffered body bytes at which reading from the upstream pauses
INFLATE_STEP = 64 * 1024  # decoded bytes made at a time from a compressed body: memory stays flat for any ratio
DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})
_CHUNKED_HEAD_END = b"\r\nTransfer-Encoding: chunked\r\n\r\n"
_UNSAFE = re.compile(r"[\r\n\0]").search


class BadHeader(ValueError):
    """A header that cannot be written into an HTTP/1.1 request (line break, NUL, non-latin-1 text)."""


class UpstreamClosed(ConnectionError):
    """The upstream closed the connection before the response was complete."""


class Pool:
    """The keep-alive connections to one upstream origin (scheme, host, port)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.host_header = parts.netloc.rpartition("@")[2]
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()

    async def request(self, method: str, url: str, headers: dict[str, str], body: Any,
                      timeout: float) -> Response:
        """Send one request (``url`` starts with this pool's origin) and return once the headers have arrived."""
        head = self._head(method, url, headers, body)
        replayable = body is None or isinstance(body, bytes | bytearray)
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            try:
                return await conn.send(head, body, method, url, timeout)
            except UpstreamClosed:
                if not replayable or conn.received_any:
                    raise
                # the upstream had closed this idle connection just before we used it: try a fresh one
        conn = await self._connect(timeout)
        return await conn.send(head, body, method, url, timeout)

    def _head(self, method: str, url: str, headers: dict[str, str], body: Any) -> bytes:
        target = url[len(self.origin):]
        if not target.startswith("/"):  # "" or "?q=1" after a base URL without a path
            target = "/" + target
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        names = {name.lower() for name in headers}
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if "accept-encoding" not in names:
            lines.append("Accept-Encoding: gzip, deflate")
        if "user-agent" not in names:
            lines.append("User-Agent: gateway")  # some APIs (GitHub's) refuse calls without one
        if isinstance(body, bytes | bytearray):
            if "content-length" not in names:
                lines.append(f"Content-Length: {len(body)}")
        elif body is not None:
            if "content-length" not in names:
                lines.append("Transfer-Encoding: chunked")  # last line of the head: send() knows it by that
        elif method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0")
        for name, value in headers.items():
            if _UNSAFE(name) or _UNSAFE(value):
                raise BadHeader(f"the header {name!r} contains a line break or NUL")
        try:
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise BadHeader("a header holds characters that HTTP/1.1 cannot carry") from None

    async def _connect(self, timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self), self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                )
        except TimeoutError:
            raise
        except OSError as exc:
            raise ConnectionError(f"cannot connect: {exc.strerror or type(exc).__name__}") from None
        self._open.add(conn)
        return conn

    def release(self, conn: Connection) -> None:
        if conn.reusable:
            self._idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: Connection) -> None:
        self._open.discard(conn)

    async def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; carries one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self.received_any = False
        self.response: Response | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[str, str]] = []
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._head_only = False

    # -- asyncio.Protocol ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"invalid HTTP response: {type(exc).__name__}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self.pool.forget(self)
        self._can_write.set()
        response = self.response
        if response is not None and not response.complete:
            if response.status and response.until_eof and exc is None:
                response._finish()  # a body delimited by the end of the connection (a reset cuts it short)
            else:
                self._fail(UpstreamClosed("the upstream closed the connection"))

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- httptools callbacks ---------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        response = self.response
        if response is None or status < 200:  # 1xx: an interim answer, the real one follows
            self._headers = []
            return
        headers = CIMultiDict(self._headers)
        self._headers = []
        response._start(status, headers, self._head_only or status in (204, 304))
        if response.complete:
            self.reusable = False  # HEAD: the parser still expects a body; never reuse this connection

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            return  # the end of an interim answer: the response is still to come
        self.reusable = self._parser.should_keep_alive() and not self._head_only
        if self.response is not None:
            self.response._finish()

    # -- requests --------------------------------------------------------------------------------------------

    async def send(self, head: bytes, body: Any, method: str, url: str, timeout: float) -> Response:
        assert self.transport is not None
        self.reusable = False
        self.received_any = False
        self._head_only = method == "HEAD"
        self._parser = httptools.HttpResponseParser(self)
        response = self.response = Response(self, timeout, url)
        done = False
        try:
            if isinstance(body, bytes | bytearray):
                self.transport.write(head + body)
            else:
                self.transport.write(head)
                if body is not None:
                    await self._write_stream(body, chunked=head.endswith(_CHUNKED_HEAD_END))
            await response._wait_headers()
            done = True
            return response
        finally:
            if not done:
                self.close()

    async def _write_stream(self, body: AsyncIterable[bytes], *, chunked: bool) -> None:
        assert self.transport is not None
        async for chunk in body:
            if self.closed:
                raise UpstreamClosed("the upstream closed the connection while the body was being sent")
            if chunk:
                self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if not self._can_write.is_set():
                await self._can_write.wait()
        if chunked:
            self.transport.write(b"0\r\n\r\n")

    def _fail(self, exc: Exception) -> None:
        if self.response is not None:
            self.response._fail(exc)

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
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class Response:
    """The answer to one call: status and headers at once, the body as it arrives."""

    def __init__(self, conn: Connection, timeout: float, url: str) -> None:
        self._conn = conn
        self._url = url
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._decoder: Any = None
        self._raw_deflate_possible = False
        self._compressed_seen = False
        self._inflate_tail = b""  # compressed input not decoded yet (decoding goes INFLATE_STEP bytes at a time)
        self._input_done = False
        self._deflate_start = b""  # what the zlib attempt was fed while raw deflate is still possible
        self._body: bytes | None = None
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.content_length: int | None = None
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

    def _start(self, status: int, headers: CIMultiDict[str], no_body: bool) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(headers)
        length = headers.get("Content-Length")
        self.content_length = int(length) if length and length.isdigit() else None
        encoding = headers.get("Content-Encoding", "").strip().lower()
        if encoding in DECODABLE and not no_body:
            self._decoder = zlib.decompressobj(wbits=47 if encoding != "deflate" else 15)
            self._raw_deflate_possible = encoding == "deflate"
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.until_eof = not no_body and self.content_length is None and not chunked
        if no_body:
            self.complete = True
        self._wake()

    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            if self._inflate_tail:  # still inflating earlier input: this waits its turn
                self._inflate_tail += data
                return
            data = self._decode(data)
            if data is None:
                return
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered > HIGH_WATER:
                self._pause()
            self._wake()
        if self._inflate_tail:
            self._pause()

    def _pause(self) -> None:
        if not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and not self._inflate_tail and self._buffered <= HIGH_WATER // 2:
            if self._conn.transport is not None:
                self._paused = False
                self._conn.transport.resume_reading()

    def _inflate_more(self) -> None:
        """Decode the next step of compressed input that was held back (a small input may expand enormously)."""
        tail, self._inflate_tail = self._inflate_tail, b""
        out = self._decode(tail)
        if out:
            self._chunks.append(out)
            self._buffered += len(out)
        if not self._inflate_tail and self._input_done:
            self._finish()
        self._resume()

    def _decode(self, data: bytes) -> bytes | None:
        self._compressed_seen = self._compressed_seen or bool(data)
        if self._raw_deflate_possible:
            self._deflate_start += data
        try:
            out = self._decoder.decompress(data, INFLATE_STEP)
            self._inflate_tail = self._decoder.unconsumed_tail
        except zlib.error:
            if self._raw_deflate_possible:  # "deflate" without its zlib header, as some servers send it
                self._raw_deflate_possible = False
                self._decoder = zlib.decompressobj(wbits=-15)
                start, self._deflate_start = self._deflate_start, b""
                return self._decode(start)
            self._fail(ConnectionError("the upstream sent a body that does not match its Content-Encoding"))
            self._conn.close()
            return None
        if self._raw_deflate_possible and len(self._deflate_start) >= 2:  # its zlib header checked out
            self._raw_deflate_possible = False
            self._deflate_start = b""
        return out

    def _finish(self) -> None:
        if self._inflate_tail:  # all input is here, but not all of it is decoded yet: iter_any finishes
            self._input_done = True
            self._wake()
            return
        if self._decoder is not None:
            tail = self._decoder.flush()
            truncated = self._compressed_seen and not self._decoder.eof
            self._decoder = None
            if truncated:  # the compressed stream stopped before its end: the body is not whole
                self._fail(ConnectionError("the upstream's compressed body ended early"))
                return
            if tail:
                self._chunks.append(tail)
        self.complete = True
        self._wake()

    def _fail(self, exc: Exception) -> None:
        if self.error is None and not self.complete:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Until something happens (data, end, error), at most ``timeout`` seconds."""
        self._waiter = waiter = self._loop.create_future()
        timer = self._loop.call_later(self._timeout, _expire, waiter)
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
            elif self._inflate_tail and self.error is None:
                self._inflate_more()
            elif self.error is not None:
                raise self.error
            elif self.complete:
                self.release()
                return
            else:
                await self._wait()

    async def read(self, limit: int = -1) -> bytes:
        """The whole body (kept, so a second read gives it again), or up to ``limit`` bytes of it."""
        if self._body is not None:
            return self._body
        parts = []
        size = 0
        async for chunk in self.iter_any():
            parts.append(chunk)
            size += len(chunk)
            if 0 <= limit <= size:
                break
        data = b"".join(parts)
        if limit < 0:
            self._body = data
        return data[:limit] if limit >= 0 else data

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


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("the upstream did not answer in time"))
