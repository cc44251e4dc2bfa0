"""Serve the app in this process: uvloop, the access log, SIGTERM drains within shutdown_grace, SIGHUP reloads.

SIGTERM (or SIGINT): /readyz answers 503 at once, the listening socket is closed (no new connections), idle
keep-alive connections are closed, requests and streams in flight get up to ``server.shutdown_grace`` to finish
and are then cancelled; the process exits 0. With ``--workers N`` this runs in each worker (supervisor.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

from aiohttp import web

from .app import create_app
from .config import Config
from .edge.jwks import JwksUnavailable
from .intake import GatewayRunner
from .keys import OBSERVER, RUNTIME
from .observe.access import AccessLog, write_pending
from .observe.logs import ACCESS
from .reload import Project, reload
from .routing import RouteTable
from .secrets import redact

log = logging.getLogger("gateway")
CANNOT_LISTEN = 3  # returned when the port cannot be listened on: `gateway serve` exits 1, `gateway dev` stops


def run(project: Project, config: Config, table: RouteTable, *, host: str, port: int, workers: int,
        debug: bool) -> int:
    if workers <= 1:
        return serve(project, config, table, host=host, port=port, debug=debug)
    from .supervisor import supervise

    return supervise(project, config, table, host=host, port=port, workers=workers, debug=debug)


def serve(project: Project, config: Config, table: RouteTable, *, host: str, port: int, debug: bool,
          reuse_port: bool = False) -> int:
    """Serve until SIGTERM/SIGINT: 0; CANNOT_LISTEN after one ``error:`` line when the port cannot be listened on."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(project, config, table, host, port, debug, reuse_port))


async def _serve(project: Project, config: Config, table: RouteTable, host: str, port: int, debug: bool,
                 reuse_port: bool) -> int:
    app = create_app(config, table, debug=debug)
    runner = GatewayRunner(  # aiohttp's runner with the gateway's intake: JSON answers to malformed requests,
        app,  # compressed request bodies decoded a bounded step at a time
        handle_signals=False,  # ours below: SIGTERM also turns /readyz to 503 before anything else
        shutdown_timeout=config.server.shutdown_grace,
        handler_cancellation=True,  # a client that leaves cancels its upstream call
        access_log_class=AccessLog,
        # nothing to write or count per request: aiohttp then makes no call at all once an answer is sent
        access_log=logging.getLogger(ACCESS) if app[OBSERVER].records else None,
    )
    try:
        await runner.setup()  # runs the app's start-up: clients.jwt fetches the identity provider's keys here
    except JwksUnavailable as exc:  # no key to verify tokens with, and lazy is not set
        await runner.cleanup()
        print(f"error: {config.file.name}: clients.jwt.jwks_url: {exc}; fix it, or set clients.jwt.lazy: true to "
              "start without the keys", file=sys.stderr)
        return 1
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except (OSError, OverflowError, UnicodeError) as exc:  # address in use, no such address, a label too long (idna)
        await runner.cleanup()
        reason = _why_not(exc)
        # the host may be a secret's value (`server.host: ${KEY}` by mistake): every line printed is redacted
        print(redact(f"error: cannot listen on {host}:{port}: {reason}", config.secret_values), file=sys.stderr)
        return CANNOT_LISTEN
    _settle_memory()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, app, project)
    log.info(redact(f"gateway listening on http://{host}:{port}{config.server.prefix} ({len(table.endpoints)} routes)",
                    config.secret_values), extra={"routes": len(table.endpoints)})
    await stop.wait()
    app[RUNTIME].draining = True  # /readyz: 503 from now on
    grace = config.server.shutdown_grace
    log.info("shutting down: no new connections; requests in flight get up to %gs", grace)
    await runner.cleanup()
    write_pending()  # the last requests' lines and numbers, before the process ends
    if (metrics := app[OBSERVER].metrics) is not None:
        metrics.flush()
    log.info("stopped")
    return 0


def _why_not(exc: Exception) -> str:
    """``Address already in use``: aiohttp words a bind error "error while attempting to bind on address (...): ..."
    (the address once more, in lower case); the errno says it plainly. A name that does not resolve keeps its text."""
    if isinstance(exc, OSError) and not isinstance(exc, socket.gaierror) and exc.errno and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _reload(app: web.Application, project: Project) -> None:
    gc.unfreeze()  # the old config's objects become collectable again once the new one is in
    try:
        reload(app, project)
    except Exception:  # a bug in reloading must not take the serving process down with it
        log.exception("reload failed; the old config keeps serving")


GC_THRESHOLDS = (20_000, 50, 1_000)  # Python's defaults: (700, 10, 10)


def _settle_memory() -> None:
    """Once started: what start-up built (config, routes, modules) is moved out of the collector's sight, and the
    youngest generation is collected after 20,000 allocations instead of 700. A proxied request allocates a few
    hundred objects, nearly all freed by reference counting; the collector ran every few requests and cost about 5 %
    of a forward's CPU (bench/proxy_bench.py). Cycles are still collected, a little later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        return None
    return uvloop.new_event_loop


__all__ = ["CANNOT_LISTEN", "run", "serve"]
