"""How a request gets in: aiohttp's server with the gateway's connection class, run like ``web.run_app``.

aiohttp gives no setting for what happens before app code runs, and two things there must be the gateway's:

* a request it cannot parse (bad request line, invalid header, Content-Length with Transfer-Encoding, obs-fold,
  a bad chunk size) is answered like every gateway error: ``{"error": "bad_request", ...}`` as JSON, with
  ``X-Request-Id``, the connection closed, one log line that quotes none of the client's bytes (aiohttp writes
  text/plain and logs a traceback holding the raw request, client keys included);
* a compressed request body is decoded by :class:`~gateway.inflate.InflatedBody` (bounded, on demand) instead
  of aiohttp's parser, which inflates whole network reads at once and drains what no handler reads.

:class:`GatewayRunner` is ``web.AppRunner`` serving through :class:`GatewayServer`; :func:`run_app` is
``web.run_app``'s loop (signals, graceful shutdown, task clean-up) around it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentLengthError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.streams import EmptyStreamReader

from .errors import error_response
from .inflate import InflatedBody
from .request_id import HEADER as REQUEST_ID_HEADER
from .request_id import request_id

log = logging.getLogger("gateway")

# what a client is told, by aiohttp's exception class: aiohttp's own messages quote the raw bytes received
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (BadHttpMethod, "the request method is not valid HTTP"),
    (BadStatusLine, "the request line is not valid HTTP"),
    (InvalidURLError, "the request target is not a valid URL"),
    (LineTooLong, "the request line or a header is too long"),
    (InvalidHeader, "a request header is not valid HTTP"),
    (TransferEncodingError, "the chunked request body is malformed"),
    (ContentLengthError, "the request body is shorter than its Content-Length"),
)
_CODES = {400: "bad_request", 408: "bad_request", 413: "payload_too_large", 414: "bad_request",
          431: "bad_request", 500: "internal_error", 503: "unavailable", 504: "upstream_timeout"}


class GatewayConnection(web.RequestHandler):
    """One client connection: aiohttp's, except that its own error answers are the gateway's JSON errors."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # the response has begun: nothing else can be sent (as aiohttp does)
            raise ConnectionError("the response was already started when the error occurred")
        if status >= 500:
            text = "internal error"
            # the exception's text may quote a secret: its type names the bug well enough for the log
            log.error("unhandled %s in %s %s", type(exc).__name__ if exc else "error", request.method,
                      request.rel_url.path)
        else:
            text = _reason(exc, status)
            log.info("refused a malformed request from %s: %s", request.remote, text)
        response = error_response(status, _CODES.get(status, "bad_request" if status < 500 else "internal_error"),
                                  text, {REQUEST_ID_HEADER: request_id(request)})  # type: ignore[arg-type]
        response.force_close()
        return response


class GatewayServer(web.Server):
    """``web.Server`` whose connections are :class:`GatewayConnection` and whose bodies are never auto-decoded."""

    def __call__(self) -> GatewayConnection:
        return GatewayConnection(self, loop=self._loop, **{**self._kwargs, "auto_decompress": False})


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` that serves the application through :class:`GatewayServer`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the application's startup, handler and request factory
        return GatewayServer(server.request_handler, request_factory=decoding(server.request_factory),
                             handler_cancellation=server.handler_cancellation, loop=server._loop, **server._kwargs)


class GatewayRequest(web.Request):
    """aiohttp's request, whose ``get`` and ``in`` are a dict's. The steps ask for keys that are often absent (no
    claims without clients.jwt, no identity before auth); the Mapping mixin answers those by raising and catching a
    KeyError, about a microsecond each, several times per request."""

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._state

    def __setitem__(self, key: Any, value: Any) -> None:
        if type(key) is web.RequestKey:  # the gateway's own keys; a str key still gets aiohttp's advice
            self._state[key] = value
        else:
            super().__setitem__(key, value)


def decoding(make_request: Callable[..., web.BaseRequest]) -> Callable[..., web.BaseRequest]:
    """Wrap a request factory: a body sent with a Content-Encoding aiohttp recognises is read through InflatedBody;
    requests are GatewayRequests."""

    def make(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        coding = getattr(message, "compression", None)  # aiohttp's reading of Content-Encoding (gzip, deflate, ...)
        if coding and not isinstance(payload, EmptyStreamReader):
            payload = InflatedBody(payload, coding, loop=asyncio.get_running_loop())
        return make_request(message, payload, protocol, writer, task, _cls=GatewayRequest)

    return make


def _reason(exc: BaseException | None, status: int) -> str:
    for kind, text in _REASONS:
        if isinstance(exc, kind):
            return text
    return "the request is not valid HTTP" if status == 400 else f"the request was refused ({status})"


def run_app(app: web.Application, *, host: str | None, port: int, reuse_port: bool | None = None,
            shutdown_timeout: float = 60.0, loop: asyncio.AbstractEventLoop | None = None,
            print: Callable[..., None] | None = None, **runner_options: Any) -> None:
    """``web.run_app(app, host=..., port=...)`` served by :class:`GatewayRunner`: SIGINT/SIGTERM stop it gracefully.

    ``print`` is accepted for ``web.run_app`` compatibility and unused: the gateway logs its own start line.
    """
    loop = loop or asyncio.new_event_loop()
    runner = GatewayRunner(app, handle_signals=True, shutdown_timeout=shutdown_timeout, **runner_options)
    main = loop.create_task(_serve(runner, host, port, reuse_port))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():  # a signal stopped it: let the runner's cleanup finish in-flight requests
                main.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def _serve(runner: GatewayRunner, host: str | None, port: int, reuse_port: bool | None) -> None:
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
        await asyncio.Event().wait()  # until a signal raises GracefulExit out of the loop
    finally:
        await runner.cleanup()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler({"message": "unhandled exception during shutdown",
                                         "exception": task.exception(), "task": task})


__all__ = ["GatewayConnection", "GatewayRunner", "GatewayServer", "decoding", "run_app"]
