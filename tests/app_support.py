"""The real gateway app for a config file, served in this process by GatewayRunner as `gateway serve` serves it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

from gateway.app import build_table, create_app
from gateway.config import load_config
from gateway.intake import GatewayRunner


@asynccontextmanager
async def served(config_file: Path) -> AsyncIterator[int]:
    """The port the app for ``config_file`` (and its routes/) listens on, on 127.0.0.1, until the block ends."""
    loaded = load_config(config_file, environ={})
    runner = GatewayRunner(create_app(loaded, build_table(loaded)), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
