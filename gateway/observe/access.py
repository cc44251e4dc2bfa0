"""The access log line and the per-request metrics, written once each request is over.

aiohttp calls ``AccessLog.log`` after the answer's last byte is written, so status, bytes out and duration are
the real ones, also for errors rendered outside the edge stack and for paths no route matched. A handler
cancelled because its client left gets no such call: the observe step writes that line itself (status 499).
What the line says comes from the request's ``Facts``; the raw path and query are never written (they can hold
an injected key or a client's token), the route pattern is.

The lines of the requests that end in one turn of the event loop are logged together, on the loop's next turn,
as one record (``LINES``) that the formatter writes as one JSON line each, in one write: the stdlib's per-record
work (a LogRecord, the handler's lock, a flush) is paid once per batch, not once per request (README, Performance).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
from time import perf_counter, time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..keys import FACTS, METRICS, Facts
from ..request_id import request_id
from .logs import ACCESS, LINES
from .metrics import UNMATCHED, Metrics, method_label

log = logging.getLogger(ACCESS)
# when the observe step took the request: perf_counter() is finer than the loop clock aiohttp times with (uvloop's
# ticks in milliseconds), and the histogram's first buckets are 5 and 10 ms
CLIENT_CLOSED = 499  # nginx's status for a client that left before its answer was complete
_pending: list[dict[str, object]] = []  # the lines of requests answered since the loop last wrote them


class AccessLog(AbstractAccessLogger):
    """aiohttp's access-logger hook (``access_log_class``): one JSON line and the request metrics per request."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            app = request.app  # type: ignore[attr-defined]
        except (AttributeError, RuntimeError):  # a request aiohttp could not parse never reached an app
            app = None
        metrics = app.get(METRICS) if app is not None else None
        facts = request.get(FACTS)
        seconds = time if facts is None else perf_counter() - facts.started
        record(request, response.status, seconds, response.body_length, metrics)

    @property
    def enabled(self) -> bool:
        return True


def record(request: web.BaseRequest, status: int, seconds: float, sent: int | None, metrics: Metrics | None) -> None:
    facts = request.get(FACTS)
    route = facts.route if facts is not None else _route_without_facts(request)
    method = method_label(request.method)
    if log.isEnabledFor(logging.INFO):
        if not _pending:
            _write_soon()
        _pending.append(_line(request, method, route, status, seconds, sent, facts))
    if metrics is not None:
        _count(metrics, route, method, status, seconds, facts)


def write_pending() -> None:
    """Log the lines waiting as one record: on the loop's next turn, and once more at exit."""
    if _pending:
        lines = _pending.copy()
        _pending.clear()
        log.info("%d requests", len(lines), extra={LINES: lines})


atexit.register(write_pending)  # before logging's own exit hook (last registered, first run) flushes the handlers


def _write_soon() -> None:
    try:
        asyncio.get_running_loop().call_soon(write_pending)
    except RuntimeError:  # no loop runs (a 499 line at shutdown): the atexit hook writes it
        pass


def _line(request: web.BaseRequest, method: str, route: str, status: int, seconds: float, sent: int | None,
          facts: Facts | None) -> dict[str, object]:
    """One request's line; ``time`` (epoch seconds) and ``pid`` are written out by the formatter."""
    if facts is None:
        facts = Facts(route)  # a request no route answered: the same fields, all unknown
    line: dict[str, object] = {
        "time": time(), "level": "INFO", "logger": ACCESS, "pid": None, "message": f"{method} {route} {status}",
        "request_id": request_id(request),  # type: ignore[arg-type] - only reads headers and the request's dict
        "method": method, "route": route, "status": status, "duration_ms": round(seconds * 1000, 2), "bytes": sent,
        "upstream": facts.upstream, "upstream_status": facts.upstream_status,
        "upstream_ms": None if facts.upstream_ms is None else round(facts.upstream_ms, 2),
        "cache": facts.cache, "client": facts.client, "streamed": facts.streamed,
    }
    if facts.tokens is not None:
        line["tokens"] = facts.tokens
    if (ws := facts.websocket) is not None:  # a WebSocket: the line is written when it closes
        line.update(ws_messages_in=ws.messages_in, ws_messages_out=ws.messages_out, ws_bytes_in=ws.bytes_in,
                    ws_bytes_out=ws.bytes_out, ws_close_code=ws.close_code)
    return line


def _count(metrics: Metrics, route: str, method: str, status: int, seconds: float, facts: Facts | None) -> None:
    by_request = (route, method, str(status))
    metrics.count(metrics.requests, by_request)
    metrics.observe(metrics.duration, by_request, seconds)
    if facts is None:
        return
    if facts.upstream is not None:
        upstream_code = "error" if facts.upstream_status is None else str(facts.upstream_status)
        metrics.count(metrics.upstream, (facts.upstream, upstream_code))
        if facts.upstream_ms is not None:
            metrics.observe(metrics.upstream_duration, (facts.upstream,), facts.upstream_ms / 1000)
    elif status == 429:  # a 429 no upstream sent: the gateway's own limit (or budget) refused it
        metrics.count(metrics.rate_limited, (route,))
    if facts.cache is not None:
        metrics.count(metrics.cache, (route, "hit" if facts.cache == "HIT" else "miss"))
    if facts.tokens:
        metrics.count(metrics.tokens, (route, facts.upstream or ""), facts.tokens)
    if (ws := facts.websocket) is not None:
        for direction, messages, size in (("in", ws.messages_in, ws.bytes_in), ("out", ws.messages_out, ws.bytes_out)):
            metrics.count(metrics.ws_messages, (route, direction), messages)
            metrics.count(metrics.ws_bytes, (route, direction), size)


def _route_without_facts(request: web.BaseRequest) -> str:
    """``/healthz``, ``/readyz``, ``/metrics``: their fixed path; anything else no route answered: ``(unmatched)``."""
    try:
        resource = request.match_info.route.resource  # type: ignore[attr-defined]
    except (AttributeError, AssertionError):  # a request aiohttp could not parse was never routed
        resource = None
    if isinstance(resource, web.PlainResource):
        return resource.canonical
    return UNMATCHED


__all__ = ["AccessLog", "CLIENT_CLOSED", "record", "write_pending"]
