"""A lean HTTP/1.1 client for upstream calls: one keep-alive pool per upstream, httptools' C parser, nothing else.

Why not aiohttp's ClientSession: measured on the bench (../shared/bench), a session request spends most of a
small proxied call's CPU on machinery a gateway never uses (cookie jar, redirects, tracing, per-read timeout
rescheduling). This client does what a forward needs and no more, and trusts the upstream with nothing:

* pooled keep-alive connections, reused last-in-first-out, at most ``max_connections`` per upstream (a call beyond
  waits up to its ``timeout`` for one, then fails with PoolFull); idle ones expire after ``idle_timeout`` or the
  upstream's ``Keep-Alive: timeout``. A reused connection that the upstream had closed just before is retried on
  another one only for an idempotent method with a replayable body, and only when nothing of the answer arrived
  (RFC 9112 §9.3.1): a POST is never sent twice;
* ``timeout`` bounds the connect, the wait for response headers, each silence between body chunks, and, while a
  request body streams up, each stall of the client's body (BodyTimeout) or of the upstream's reading;
* an upstream that answers before the upload is done gets its answer returned at once; an error answer (a 413
  mid-upload) or one that closes the connection ends the upload, any other is read while the body goes up;
* the answer is held to the message: a head over ``max_head`` bytes or ``max_headers`` lines, bytes after the
  message, a body that does not match its codings: InvalidResponse, the connection closed, never reused;
* bodies are read chunk by chunk with flow control (reading pauses while the consumer lags); every content
  and transfer coding it can undo (gzip, deflate) is undone a bounded step at a time (``codings``), and
  ``Response.remaining_encoding`` says what still applies to the bytes delivered;
* ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` or an explicit proxy (``proxy``): CONNECT for https;
* cancelling a call (the client left) closes its connection, so the upstream sees the call end.

Errors: ``TimeoutError``, ``ConnectionError`` (an OSError; InvalidResponse and PoolFull are ones), ``BadHeader`` and
``BodyTimeout``, translated to gateway errors in ``errors.upstream_errors``. Their messages never hold a secret, a
query or a proxy's credentials.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from .codings import DECODABLE
from .connection import BodyTimeout, Connection
from .proxy import FROM_ENV, ProxyError, ProxyFailed, Tunnel, proxy_for
from .response import HIGH_WATER, InvalidResponse, Response, UpstreamClosed

__all__ = ["DECODABLE", "FROM_ENV", "HIGH_WATER", "IDEMPOTENT", "BadHeader", "BodyTimeout", "InvalidResponse",
           "Pool", "PoolFull", "ProxyFailed", "Response", "UpstreamClosed"]

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})  # RFC 9110 §9.2.2: may be replayed
MAX_HEAD = 64 * 1024  # bytes of status line and headers (all interim answers included), and of trailers
MAX_HEADERS = 200
MAX_READ = 32 * 1024 * 1024  # the most a whole-body read() holds (decoded bytes)
IDLE_TIMEOUT = 30.0
_UNSAFE = re.compile(r"[\r\n\0]").search


class BadHeader(ValueError):
    """A header that cannot be written into an HTTP/1.1 request (line break, NUL, non-latin-1 text)."""


class PoolFull(ConnectionError):
    """Every connection to the upstream stayed busy for the call's whole timeout; nothing was sent."""


class Pool:
    """The keep-alive connections to one upstream origin (scheme, host, port)."""

    def __init__(self, base_url: str, *, max_connections: int = 100, idle_timeout: float = IDLE_TIMEOUT,
                 proxy: str | None = FROM_ENV, max_head: int = MAX_HEAD, max_headers: int = MAX_HEADERS,
                 max_read: int = MAX_READ) -> None:
        parts = urlsplit(base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.host_header = parts.netloc.rpartition("@")[2]
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_head = max_head
        self.max_headers = max_headers
        self.max_read = max_read
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._proxy_error: str | None = None
        try:
            self.proxy = proxy_for(parts.scheme, self.host, self.port, proxy)
        except ProxyError as exc:  # from the environment: every call fails, saying why (a config proxy is checked)
            self.proxy, self._proxy_error = None, str(exc)
        # through a plain proxy an http request names its target in absolute form and carries the proxy's key
        plain = self.proxy is not None and self._ssl is None
        self._target_prefix = f"http://{self.host_header}" if plain else ""
        key = self.proxy.authorization if plain and self.proxy is not None else None
        self._proxy_line = f"Proxy-Authorization: {key}" if key else None
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self._connecting = 0
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._retired = False  # replaced by a reload: still serves the calls of requests routed before it

    async def request(self, method: str, url: str, headers: dict[str, str], body: Any,
                      timeout: float) -> Response:
        """Send one request (``url`` starts with this pool's origin) and return once the headers have arrived."""
        head = self._head(method, url, headers, body)
        replayable = method in IDEMPOTENT and (body is None or isinstance(body, bytes | bytearray))
        while True:
            conn = self._idle_one() if self._idle and not self._waiters else None  # the common case, no await
            if conn is None:
                conn = await self._acquire(timeout)
            reused = conn.used
            try:
                return await conn.send(head, body, method, url, timeout)
            except UpstreamClosed:
                if not (reused and replayable and not conn.received_any):
                    raise
                # the upstream had closed this idle connection just as we used it: nothing of the answer came

    def _head(self, method: str, url: str, headers: dict[str, str], body: Any) -> bytes:
        target = url[len(self.origin):]
        if not target.startswith("/"):  # "" or "?q=1" after a base URL without a path
            target = "/" + target
        lines = [f"{method} {self._target_prefix}{target} HTTP/1.1", f"Host: {self.host_header}"]
        names = {name.lower() for name in headers}
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if "accept-encoding" not in names:
            lines.append("Accept-Encoding: gzip, deflate")
        if "user-agent" not in names:
            lines.append("User-Agent: gateway")  # some APIs (GitHub's) refuse calls without one
        if self._proxy_line is not None:
            lines.append(self._proxy_line)
        if isinstance(body, bytes | bytearray):
            if "content-length" not in names:
                lines.append(f"Content-Length: {len(body)}")
        elif body is not None:
            if "content-length" not in names:
                lines.append("Transfer-Encoding: chunked")  # last line of the head: send() knows it by that
        elif method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0")
        text = "\r\n".join(lines)
        # one pass for all: the joins put exactly one CR and one LF between lines; any other is an injection
        if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1 or "\0" in text:
            for name, value in headers.items():
                if _UNSAFE(name) or _UNSAFE(value):
                    raise BadHeader(f"the header {name!r} contains a line break or NUL")
            raise BadHeader("the request line contains a line break or NUL")
        try:
            return (text + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise BadHeader("a header holds characters that HTTP/1.1 cannot carry") from None

    # -- connections: the cap, the wait, idle expiry ---------------------------------------------------------

    async def _acquire(self, timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._closed:
                raise ConnectionError("the connection pool is closed")
            if not self._waiters:  # nobody queued first: an idle connection, or a new one under the cap
                if conn := self._idle_one():
                    return conn
                if len(self._open) + self._connecting < self.max_connections:
                    self._connecting += 1
                    return await self._connect(timeout)
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    given = await waiter
            except BaseException as exc:
                if not waiter.done():
                    waiter.cancel()
                    self._waiters.remove(waiter)
                elif not waiter.cancelled() and waiter.exception() is None:  # handed over as we gave up: pass on
                    self._pass_on(waiter.result())
                if isinstance(exc, TimeoutError):
                    raise PoolFull(f"all {self.max_connections} connections stayed busy for {timeout:g}s") from None
                raise
            if given is None:  # a slot was freed for us
                return await self._connect(timeout)
            if not given.closed:
                return given
            # the upstream closed it on its way to us: its place is free, queue again (within the deadline)

    def _idle_one(self) -> Connection | None:
        """The most recently used idle connection that is still open and unexpired (others are closed)."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.expires > conn.loop.time():
                return conn
            conn.close()
        return None

    def _pass_on(self, given: Connection | None) -> None:
        if given is None:
            self._connecting -= 1
            self._free_slot()
        else:
            self.release(given)

    def _free_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._connecting += 1
                waiter.set_result(None)
                return

    async def _connect(self, timeout: float) -> Connection:
        """A new connection; the caller has counted it in ``_connecting``."""
        loop = asyncio.get_running_loop()
        proxy = self.proxy
        what = " through the proxy" if proxy else ""
        try:
            if self._proxy_error:
                raise ProxyFailed(f"cannot use the proxy: {self._proxy_error}")
            async with asyncio.timeout(timeout):
                if proxy is None:
                    _, conn = await loop.create_connection(
                        lambda: Connection(self), self.host, self.port, ssl=self._ssl,
                        server_hostname=self.host if self._ssl else None,
                    )
                elif self._ssl is None:
                    _, conn = await loop.create_connection(lambda: Connection(self), proxy.host, proxy.port)
                else:
                    conn = await self._tunnel(loop, proxy.host, proxy.port, proxy.connect_head(self._authority()))
        except TimeoutError:
            self._connecting -= 1
            self._free_slot()
            raise TimeoutError(f"connecting{what} took longer than {timeout:g}s") from None
        except OSError as exc:
            self._connecting -= 1
            self._free_slot()
            if isinstance(exc, ProxyFailed | InvalidResponse):
                raise
            raise ConnectionError(f"cannot connect{what}: {_reason(exc)}") from None
        except BaseException:
            self._connecting -= 1
            self._free_slot()
            raise
        self._connecting -= 1
        if self._closed:
            conn.close()
            raise ConnectionError("the connection pool is closed")
        self._open.add(conn)
        return conn

    async def _tunnel(self, loop: asyncio.AbstractEventLoop, host: str, port: int, head: bytes) -> Connection:
        """A CONNECT tunnel through the proxy, then TLS to the upstream inside it."""
        transport, tunnel = await loop.create_connection(lambda: Tunnel(loop), host, port)
        try:
            transport.write(head)
            status = await tunnel.answer
            if not 200 <= status < 300:
                raise ProxyFailed(f"the proxy refused the tunnel (status {status})")
            conn = Connection(self)
            tls = await loop.start_tls(transport, conn, self._ssl, server_hostname=self.host)  # type: ignore[arg-type]
        except BaseException:
            transport.close()
            raise
        conn.connection_made(tls)
        return conn

    def _authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def release(self, conn: Connection) -> None:
        """A connection whose answer was read to the end: to the first waiter, else idle until it expires (a retired
        pool keeps none idle)."""
        if not conn.reusable or conn.closed or self._closed:
            conn.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if self._retired:
            conn.close()
            return
        conn.expires = expires = conn.loop.time() + conn.keep_for
        self._idle.append(conn)
        if self._sweeper is None or expires < self._sweeper.when():
            if self._sweeper is not None:
                self._sweeper.cancel()
            self._sweeper = conn.loop.call_at(expires, self._sweep)

    def _sweep(self) -> None:
        """Close the idle connections that expired (the upstream would soon close them under our feet)."""
        self._sweeper = None
        if not self._idle:
            return
        now = self._idle[0].loop.time()
        keep = []
        for conn in self._idle:
            if conn.closed:
                continue
            if conn.expires <= now:
                conn.close()
            else:
                keep.append(conn)
        self._idle = keep
        if keep:
            self._sweeper = keep[0].loop.call_at(min(conn.expires for conn in keep), self._sweep)

    def forget(self, conn: Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._free_slot()

    def retire(self) -> None:
        """A reload replaced this pool. Requests already routed may still call through it (nothing waits for them,
        nothing cuts them short), but it keeps no connection idle: each closes once its answer is read, and the
        pool is then empty (``busy`` is 0)."""
        self._retired = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @property
    def busy(self) -> int:
        """Connections open or being opened (idle ones included; not those closed and not yet gone)."""
        return sum(not conn.closed for conn in self._open) + self._connecting

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionError("the connection pool is closed"))
        self._waiters.clear()
        for conn in list(self._open):
            conn.close()
        self._idle.clear()


def _reason(exc: OSError) -> str:
    """Why a connection failed, in words safe for a log line (no host, no URL)."""
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed ({exc.strerror})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or type(exc).__name__})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or type(exc).__name__
