"""Debian's headless Chromium, driven over the DevTools protocol with aiohttp's websocket client (no new deps).

    browser = launch_chromium(tmp_dir)             # once per module (the ``chromium`` fixture); stop() at the end
    async with open_page(browser, "http://127.0.0.1:5173/") as page:
        value = await page.evaluate("fetch('http://127.0.0.1:8080/api/x').then(r => r.status)")  # awaited in the page
        page.console                                 # what Chromium logged (CORS refusals are explained there)

Locally a missing ``chromium`` skips with the install command; under CI (``CI=true``) it fails.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

WAIT = 20.0  # seconds for one DevTools call or page load: reached only when something is broken
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--no-default-browser-check",
    # without these Chromium keeps dialing out, and this machine's closed network refuses its connections
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--metrics-recording-only", "--remote-debugging-port=0",
)


def chromium_or_skip() -> str:
    path = shutil.which("chromium")
    if path is None:
        hint = "Debian's chromium is not installed: apt-get install -y chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{hint} (CI installs it in .ci/run; a missing browser is a failure there)")
        pytest.skip(hint)
    return path


@dataclass
class Chromium:
    proc: subprocess.Popen
    ws_url: str  # the browser's DevTools endpoint
    log: Path

    def stop(self) -> None:
        """SIGTERM to the browser's process group (the one this launch started), SIGKILL if it lingers."""
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


def launch_chromium(profile: Path) -> Chromium:
    """Start headless Chromium with a fresh profile; wait (bounded) for its DevToolsActivePort file."""
    binary = chromium_or_skip()
    log = profile.parent / f"{profile.name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"], stdout=out,
                                stderr=out, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "TMPDIR": str(profile.parent)})  # its scratch files: the test's
    browser = Chromium(proc, "", log)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + WAIT
    while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
        if proc.poll() is not None or time.monotonic() > deadline:
            browser.stop()
            raise AssertionError(f"chromium did not start (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)  # nothing to await: Chromium only tells by writing this file
    port, path = port_file.read_text().split()
    browser.ws_url = f"ws://127.0.0.1:{port}{path}"
    return browser


class JsError(Exception):
    """The page's expression threw (or its promise rejected)."""


class DevTools:
    """One websocket to the browser; calls matched to answers by id, events handed to whoever waits for them."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: list[tuple[str, str | None, asyncio.Queue[dict[str, Any]]]] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            for method, session, queue in self._listeners:
                if data.get("method") == method and data.get("sessionId") == session:
                    queue.put_nowait(data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the DevTools connection closed"))

    def listen(self, method: str, session: str | None = None) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._listeners.append((method, session, queue))
        return queue

    async def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send_str(json.dumps(message))
        answer = await asyncio.wait_for(future, WAIT)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def close(self) -> None:
        await self._ws.close()  # the reader's loop then ends by itself
        await asyncio.wait_for(self._reader, WAIT)


@dataclass
class Page:
    devtools: DevTools
    session: str
    console: list[str] = field(default_factory=list)  # every console/log entry, in order
    _logged: asyncio.Event = field(default_factory=asyncio.Event)

    async def logged(self, text: str, count: int = 1) -> list[str]:
        """The console entries containing ``text``, once there are ``count`` (waiting, bounded, for Chromium)."""
        async with asyncio.timeout(WAIT):
            while True:
                found = [entry for entry in self.console if text in entry]
                if len(found) >= count:
                    return found
                self._logged.clear()
                await self._logged.wait()

    async def evaluate(self, expression: str) -> Any:
        """Run ``expression`` in the page, await its promise there, and return its value (JSON-like)."""
        answer = await self.devtools.call("Runtime.evaluate", {
            "expression": expression, "awaitPromise": True, "returnByValue": True}, self.session)
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            raise JsError(details.get("exception", {}).get("description") or details.get("text"))
        return answer["result"].get("value")


@asynccontextmanager
async def open_page(browser: Chromium, url: str) -> AsyncIterator[Page]:
    """A new tab on ``url``, loaded; closed on the way out."""
    async with aiohttp.ClientSession() as http, http.ws_connect(browser.ws_url, max_msg_size=0) as ws:
        devtools = DevTools(ws)
        target = (await devtools.call("Target.createTarget", {"url": "about:blank"}))["targetId"]
        try:
            attached = await devtools.call("Target.attachToTarget", {"targetId": target, "flatten": True})
            page = Page(devtools, attached["sessionId"])
            entries = devtools.listen("Log.entryAdded", page.session)
            console = devtools.listen("Runtime.consoleAPICalled", page.session)
            loaded = devtools.listen("Page.loadEventFired", page.session)
            for domain in ("Page", "Log", "Runtime"):
                await devtools.call(f"{domain}.enable", None, page.session)
            navigated = await devtools.call("Page.navigate", {"url": url}, page.session)
            assert "errorText" not in navigated, f"{url}: {navigated['errorText']}"
            await asyncio.wait_for(loaded.get(), WAIT)
            collect = asyncio.ensure_future(_collect(page, entries, console))
            try:
                yield page
            finally:
                collect.cancel()
                await asyncio.gather(collect, return_exceptions=True)
        finally:
            await devtools.call("Target.closeTarget", {"targetId": target})
            await devtools.close()


async def _collect(page: Page, entries: asyncio.Queue, console: asyncio.Queue) -> None:
    async def drain(queue: asyncio.Queue, text: Any) -> None:
        while True:
            page.console.append(text(await queue.get()))
            page._logged.set()

    await asyncio.gather(
        drain(entries, lambda p: p["entry"].get("text", "")),
        drain(console, lambda p: " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])),
    )
