"""Outbound proxies for upstream calls: ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY``, or an upstream's ``proxy:``.

    proxy_for("https", "api.example.com", 443, FROM_ENV)   # HTTPS_PROXY=http://u:p@proxy:3128 -> Proxy(proxy, 3128)
    proxy_for("http", "127.0.0.1", 8080, FROM_ENV)         # loopback never goes through an environment proxy
    proxy_for("https", "api.example.com", 443, None)       # proxy: none -> None (a direct connection)

An https upstream is reached through a ``CONNECT`` tunnel (TLS runs end to end, the proxy sees only the host); an
http upstream gets its request with an absolute-form target. Proxy credentials become a ``Proxy-Authorization``
header, which no message, log line or ``repr`` ever shows.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from .response import InvalidResponse

MAX_ANSWER = 16 * 1024  # bytes of the proxy's answer to CONNECT

FROM_ENV = "env"  # Pool(proxy=FROM_ENV): HTTP_PROXY / HTTPS_PROXY / NO_PROXY (and their lowercase forms) decide


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)  # "Basic ...": a secret

    def connect_head(self, authority: str) -> bytes:
        """The CONNECT request opening a tunnel to ``authority`` (``host:port``)."""
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if self.authorization:
            lines.append(f"Proxy-Authorization: {self.authorization}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ProxyFailed(ConnectionError):
    """The proxy could not be used: a bad proxy setting in the environment, or no tunnel through it."""


class Tunnel(asyncio.Protocol):
    """The proxy's answer to CONNECT: its status, once the head is in (TLS to the upstream follows)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[int] = loop.create_future()
        self._data = b""

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        self._data += data
        head, found, rest = self._data.partition(b"\r\n\r\n")
        if not found:
            if len(self._data) > MAX_ANSWER:
                self.answer.set_exception(InvalidResponse("the proxy's answer to CONNECT is too long"))
            return
        parts = head.split(b" ", 2)
        if rest or len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self.answer.set_exception(InvalidResponse("the proxy's answer to CONNECT is not valid HTTP"))
            return
        self.answer.set_result(int(parts[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ProxyFailed("the proxy closed the connection instead of opening a tunnel"))


class ProxyError(ValueError):
    """A proxy setting that cannot be used; its message never quotes credentials."""


def proxy_for(scheme: str, host: str, port: int, setting: str | None) -> Proxy | None:
    """The proxy for ``scheme://host:port``: ``setting`` is a proxy URL, None (direct) or FROM_ENV."""
    if setting is None:
        return None
    if setting != FROM_ENV:
        return parse_proxy(setting, "the upstream's proxy")
    if _is_loopback(host):  # as Go's net/http: a proxy meant for the outside never carries local calls
        return None
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(scheme)
    if not url or urllib.request.proxy_bypass_environment(f"{host}:{port}", proxies):
        return None
    return parse_proxy(url, f"{scheme.upper()}_PROXY")


def parse_proxy(url: str, source: str) -> Proxy:
    """``http://user:pass@proxy:3128`` -> Proxy; ``proxy:3128`` means http. Raises ProxyError naming ``source``."""
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError:
        raise ProxyError(f"{source} is not a valid proxy URL") from None
    if parts.scheme != "http":
        raise ProxyError(f"{source} uses {parts.scheme}://: only http:// proxies are supported")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyError(f"{source} must be a proxy URL like http://proxy.internal:3128")
    authorization = None
    if parts.username is not None or parts.password is not None:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return Proxy(parts.hostname, port, authorization)


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
