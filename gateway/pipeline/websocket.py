"""WebSocket forwards (SPEC §10): the client's upgrade is opened to the upstream with the secrets injected, and
messages are relayed both ways as they come — so a realtime API's key never has to reach the browser.

    client --ws--> gateway --ws + Authorization: Bearer KEY--> upstream

The upstream is asked first: only once it has accepted is the client's upgrade answered, with the subprotocol
the upstream chose. A refusal is an HTTP error the client can read (502 JSON), never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import WSMsgType, web

from ..config import Config, ForwardConfig
from ..edge.ws_credential import QUERY_PARAM
from ..errors import BadRequest, MethodNotAllowed, UpstreamError
from ..keys import FACTS, MATCH, Resources, WebSocketTraffic
from ..paths import pattern_of
from ..routing import Handler
from .headers import pick_request_headers
from .urls import UrlTemplate, without_params

log = logging.getLogger("gateway.upstream")
HEARTBEAT = 30.0  # pings both ways keep idle-but-alive connections open through proxies
# a subprotocol entry that carries a credential (OpenAI's "openai-insecure-api-key.<key>", a bearer token) never
# goes upstream; nor does anything shaped like a JWT
_CREDENTIAL = re.compile(r"api[-_.]?key|token|bearer|secret|passw|auth", re.IGNORECASE).search
_JWT_SHAPED = re.compile(r"[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}").search
_UNSENDABLE = {1005, 1006, 1015}  # close codes that may not be sent in a close frame
BROWSER_ONLY = {QUERY_PARAM}  # query parameters that carry the browser's own credential (edge/ws_credential.py)


def offered_protocols(header: str) -> list[str]:
    """``"openai-beta.realtime-v1, openai-insecure-api-key.sk-x"`` -> ``["openai-beta.realtime-v1"]``."""
    entries = (p.strip() for p in header.split(","))
    return [p for p in entries if p and not _CREDENTIAL(p) and not _JWT_SHAPED(p)]


@dataclass
class WebSocketSessions:
    """One aiohttp ClientSession for every WebSocket forward of the app, made at first use, closed at shutdown."""

    _session: aiohttp.ClientSession | None = field(default=None, repr=False)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # no cookie jar: an upstream's cookies are never kept, nor sent to another client; no pool limit: each
            # WebSocket holds its connection for its whole life (aiohttp's default of 100 would queue the 101st)
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
                                                  connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class WebSocketEndpoint:
    kind = "forward"
    own_options = False
    websocket = True
    budgeted = False  # guard is refused on a WebSocket forward
    receives: frozenset[str] = frozenset()  # a browser never preflights a WebSocket
    exposes: tuple[str, ...] = ()

    def __init__(self, forward: ForwardConfig, config: Config, prefix: str) -> None:
        self.forward = forward
        self.segments = forward.segments
        self.pattern = pattern_of(prefix, forward.segments)
        self.target = self.upstream = forward.upstream
        self.auth = forward.auth
        self.rate_limit = forward.rate_limit
        self.cache = forward.cache if not forward.websocket else None
        where = f"{config.file.name}:{forward.line}" if forward.line else config.file.name
        self.source = f"{where}: forwards.{forward.key}"
        self.public = forward.public
        self.methods = ("GET", "OPTIONS")
        self.allow = "GET, OPTIONS"

    def terminal(self, res: Resources) -> Handler:
        upstream = res.upstreams[self.target]
        base = upstream.url
        if base.startswith("http"):
            base = "ws" + base[4:]  # http -> ws, https -> wss
        template = UrlTemplate(base, self.forward.path, upstream.inject_query_names)
        sessions, forward, scrubber = res.websockets, self.forward, res.scrubber
        timeout = aiohttp.ClientWSTimeout(ws_close=min(upstream.timeout, 10.0))

        async def websocket_endpoint(request: web.Request) -> web.StreamResponse:
            if request.method != "GET":
                raise MethodNotAllowed(request.method, "GET, OPTIONS")
            if request.headers.get("Upgrade", "").lower() != "websocket":
                raise BadRequest("this path is a WebSocket: open it with an Upgrade: websocket request",
                                 headers={"Upgrade": "websocket"})
            match = request[MATCH]
            query = without_params(request.rel_url.raw_query_string, BROWSER_ONLY)  # a browser's credential stays here
            url = template.build(match.params, match.raw, query, upstream.inject_query)
            headers = pick_request_headers(request.headers, upstream.request_allow)
            headers.update(upstream.inject_headers)
            protocols = offered_protocols(request.headers.get("Sec-WebSocket-Protocol", ""))
            with upstream.errors:  # connect failures and timeouts, mapped as for any upstream call
                try:
                    up = await asyncio.wait_for(sessions.session().ws_connect(
                        url, protocols=protocols, headers=headers, max_msg_size=forward.max_message,
                        heartbeat=HEARTBEAT, timeout=timeout), upstream.timeout)
                except aiohttp.WSServerHandshakeError as exc:
                    log.warning("upstream %s refused the WebSocket upgrade (status %s)", upstream.name, exc.status)
                    raise UpstreamError(f"upstream {upstream.name!r} refused the WebSocket (status {exc.status})",
                                        ) from None
            traffic = WebSocketTraffic()
            facts = request.get(FACTS)
            if facts is not None:
                facts.upstream, facts.websocket = upstream.name, traffic  # the access line says what it carried
            try:
                client = web.WebSocketResponse(protocols=(up.protocol,) if up.protocol else (), heartbeat=HEARTBEAT,
                                               max_msg_size=forward.max_message)
                await client.prepare(request)
                await relay(client, up, scrubber.scrub_text, scrubber.scrub, forward.idle_timeout, traffic)
            finally:
                await up.close()
            log.debug("websocket %s closed with %s: %d/%d messages in/out", upstream.name, traffic.close_code,
                      traffic.messages_in, traffic.messages_out)
            return client

        return websocket_endpoint


async def relay(client: web.WebSocketResponse, up: aiohttp.ClientWebSocketResponse,
                scrub_text: Callable[[str], str], scrub_bytes: Callable[[bytes], bytes], idle: float,
                traffic: WebSocketTraffic) -> None:
    """Messages both ways until one side closes, fails or stays silent for ``idle`` seconds; then the other side
    is closed too, with the code and reason the first one gave (scrubbed)."""
    loop = asyncio.get_running_loop()
    last = [loop.time()]
    said_by_client: list[tuple[int, str]] = []  # the code and reason of the client's close frame, if it sent one

    async def pump(source, sink, inbound: bool) -> tuple[int, str]:
        said = said_by_client if inbound else []
        async for kind, data in _messages(source, said):
            last[0] = loop.time()
            if kind == WSMsgType.TEXT:
                text = data if inbound else scrub_text(data)
                await sink.send_str(text)
                size = len(text) if text.isascii() else len(text.encode())  # bytes, as they went on the wire
            else:
                payload = data if inbound else scrub_bytes(data)
                await sink.send_bytes(payload)
                size = len(payload)
            if inbound:
                traffic.messages_in += 1
                traffic.bytes_in += size
            else:
                traffic.messages_out += 1
                traffic.bytes_out += size
        code, reason = said[0] if said else (None, "")
        if code is None or code in _UNSENDABLE:
            code = 1011 if source is up else 1001  # the upstream broke / the client went away
        if code == 1009 or source.close_code == 1009:  # aiohttp refused a message over max_message
            code = 1009
        return code, reason

    async def watchdog() -> tuple[int, str]:
        while (left := last[0] + idle - loop.time()) > 0:
            await asyncio.sleep(left)
        return 1001, "idle timeout"

    tasks = {asyncio.ensure_future(pump(client, up, True)): up, asyncio.ensure_future(pump(up, client, False)): client,
             asyncio.ensure_future(watchdog()): None}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        code, reason = first.result() if not first.cancelled() and first.exception() is None else (1011, "")
        traffic.close_code = code
        reason = scrub_text(reason)[:120]
        targets = [tasks[first]] if tasks[first] is not None else [client, up]
        for ws in targets:
            with contextlib.suppress(Exception):
                await ws.close(code=code, message=reason.encode())
    except asyncio.CancelledError:  # the client's connection is gone: the upstream hears why, then the call ends
        code, reason = said_by_client[0] if said_by_client else (1001, "")
        traffic.close_code = code
        with contextlib.suppress(Exception):
            await asyncio.shield(up.close(code=code, message=scrub_text(reason)[:120].encode()))
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _messages(ws, said: list[tuple[int, str]]) -> AsyncIterator[tuple[WSMsgType, str | bytes]]:
    """Text and binary messages until the peer closes or the connection fails (aiohttp answers pings itself);
    the code and reason of the peer's close frame are put in ``said``."""
    while True:
        msg = await ws.receive()
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            yield msg.type, msg.data
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            if msg.type == WSMsgType.CLOSE:
                said.append((int(msg.data), str(msg.extra or "")))
            return
