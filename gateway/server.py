"""Run the app: uvloop, graceful SIGTERM within shutdown_grace, and N worker processes sharing the port."""

from __future__ import annotations

import logging
import os
import signal
import sys

from .app import create_app
from .config import Config
from .edge.jwks import JwksUnavailable
from .intake import run_app
from .routing import RouteTable
from .secrets import redact

log = logging.getLogger("gateway")


def run(config: Config, table: RouteTable, *, host: str, port: int, workers: int, debug: bool) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if workers <= 1:
        return _serve_one(config, table, host, port, debug, reuse_port=False)
    return _serve_many(config, table, host, port, debug, workers)


def _serve_one(config: Config, table: RouteTable, host: str, port: int, debug: bool, *, reuse_port: bool) -> int:
    """Serve until SIGTERM/SIGINT: 0; 1 after one ``error:`` line when the port cannot be listened on."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        uvloop = None
    app = create_app(config, table, debug=debug)
    # the host may be a secret's value (`server.host: ${KEY}` by mistake): every line printed is redacted
    log.info(redact(f"gateway listening on http://{host}:{port}{config.server.prefix} ({len(table.endpoints)} routes)",
                    config.secret_values))
    try:
        run_app(  # web.run_app with the gateway's intake: JSON answers to malformed requests, bounded decoding
            app,
            host=host,
            port=port,
            reuse_port=reuse_port or None,
            shutdown_timeout=config.server.shutdown_grace,
            handler_cancellation=True,  # a client that leaves cancels its upstream call
            access_log=None,
            print=None,
            loop=uvloop.new_event_loop() if uvloop else None,
        )
    except JwksUnavailable as exc:  # clients.jwt: no key to verify tokens with, and lazy is not set
        print(f"error: {config.file.name}: clients.jwt.jwks_url: {exc}; fix it, or set clients.jwt.lazy: true to "
              "start without the keys", file=sys.stderr)
        return 1
    except (OSError, OverflowError, UnicodeError) as exc:  # address in use, no such address, a label too long (idna)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(redact(f"error: cannot listen on {host}:{port}: {reason}", config.secret_values), file=sys.stderr)
        return 1
    return 0


def _serve_many(config: Config, table: RouteTable, host: str, port: int, debug: bool, workers: int) -> int:
    """Fork ``workers`` processes that all listen on the port (SO_REUSEPORT); pass SIGTERM/SIGINT on to them."""
    children: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    # handlers first: a SIGTERM that arrives while forking still reaches every child already started
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # child: default signals until its event loop installs its own graceful handlers
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            code = 1
            try:
                code = _serve_one(config, table, host, port, debug, reuse_port=True)
            finally:
                os._exit(code)
        children.append(pid)

    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return 0 if status in (0, -signal.SIGTERM, -signal.SIGINT) else 1


__all__ = ["run"]
