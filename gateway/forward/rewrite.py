"""Map URLs under an upstream to the gateway paths that forward to them, so the upstream host never shows.

A forward whose target ends in its catch-all (``github/[...path]`` -> ``/{path}``) maps a whole subtree:
``https://api.github.com/repos/x`` -> ``/api/github/repos/x``. A forward without parameters maps one URL.
Anything else under the upstream's host cannot be expressed through the gateway and is removed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from urllib.parse import urljoin, urlsplit

from ..config import ForwardConfig, UpstreamConfig
from ..paths import Kind

_LINK = re.compile(r'<([^>]*)>((?:[^,"]|"[^"]*")*)')  # a quoted parameter may hold a comma


class UrlRewriter:
    def __init__(self, upstream: UpstreamConfig, forwards: Iterable[ForwardConfig], prefix: str) -> None:
        self.base = upstream.url
        self.host = urlsplit(upstream.url).netloc.lower()
        self.hostname = urlsplit(upstream.url).hostname or ""
        self.trees: list[tuple[str, str]] = []  # (upstream URL prefix ending in /, gateway path prefix ending in /)
        self.exact: dict[str, str] = {}
        for forward in forwards:
            if forward.upstream != upstream.name or "?" in forward.path:
                continue
            statics = [s.value for s in forward.segments if s.kind == Kind.STATIC]
            gateway = "/".join([prefix, *statics])
            last = forward.segments[-1] if forward.segments else None
            if last is not None and last.kind >= Kind.CATCH and forward.path.endswith(f"{{{last.value}}}"):
                head = forward.path[: -len(last.value) - 2]
                if "{" not in head and len(statics) == len(forward.segments) - 1:
                    self.trees.append((self.base + head.rstrip("/") + "/", gateway + "/"))
            elif last is None or all(s.kind == Kind.STATIC for s in forward.segments):
                if "{" not in forward.path:
                    self.exact[self.base + forward.path] = gateway or "/"
        self.trees.sort(key=lambda pair: len(pair[0]), reverse=True)
        # an absolute URL on the upstream in a body, also with JSON's escaped slashes (http:\/\/host\/x)
        scheme, netloc = urlsplit(upstream.url)[:2]
        slash = rb"\\?/"
        self._in_body = re.compile(
            re.escape(scheme.encode()) + rb":" + slash + slash + re.escape(netloc.encode())
            + rb"(?![\w.:@-])(?:\\/|[^\s\"'<>\\])*",
            re.IGNORECASE,
        )

    def to_gateway(self, url: str, request_url: str | None = None) -> str | None:
        """The gateway path for an upstream URL, ``url`` itself if it is on another host, or None to drop it.
        A relative ``url`` is resolved against ``request_url`` (the upstream URL it answers), else the base."""
        absolute = urljoin(request_url or self.base + "/", url)
        parts = urlsplit(absolute)
        if (parts.hostname or "").rstrip(".") != (self.hostname or "").rstrip("."):  # "host." is "host"
            return url
        if parts.netloc.lower() != self.host or any(s in (".", "..") for s in parts.path.split("/")):
            return None  # the upstream's host with another port or a user, or a path that climbs: never shown
        path_only = absolute.split("?", 1)[0].split("#", 1)[0]
        rest = absolute[len(path_only):]
        if path_only in self.exact:
            return self.exact[path_only] + rest
        for upstream_prefix, gateway_prefix in self.trees:
            if absolute.startswith(upstream_prefix):
                return gateway_prefix + absolute[len(upstream_prefix):]
            if path_only + "/" == upstream_prefix:
                return gateway_prefix.rstrip("/") + rest
        return None

    def link_header(self, value: str, request_url: str | None = None) -> str | None:
        """``<https://up/x?page=2>; rel="next"`` -> ``</api/x?page=2>; rel="next"``; unmappable links are dropped."""
        kept = []
        for match in _LINK.finditer(value):
            target = self.to_gateway(match[1], request_url)
            if target is not None and self.host not in match[2].lower():  # a parameter may name the upstream too
                kept.append(f"<{target}>{match[2]}")
        return ", ".join(kept) or None

    def body(self, data: bytes, origin: str) -> bytes:
        """Rewrite upstream URLs inside a JSON or text body to absolute gateway URLs on ``origin``, as in headers:
        ``"https://up/v3/repos/x"`` -> ``"https://gw/api/gh/repos/x"``; one that cannot be mapped becomes ``""``."""

        def rewrite(match: re.Match[bytes]) -> bytes:
            text = match[0].decode("latin-1")
            found = text.rstrip(".,;:!?)")  # "see https://up/x." in prose: the full stop is not the URL's
            escaped = "\\/" in found
            target = self.to_gateway(found.replace("\\/", "/"))
            out = "" if target is None else origin + target
            return ((out.replace("/", "\\/") if escaped else out) + text[len(found):]).encode("latin-1")

        return self._in_body.sub(rewrite, data)


class LineRewriter:
    """Applies a body rewrite to a stream a line at a time, so a URL split across two chunks is still whole.

    A URL never spans a line break, and SSE events end in one: a chunk that ends an event is passed at once;
    only the unfinished last line is held back (at most ``limit`` bytes, then it goes as it is).
    """

    def __init__(self, rewrite: Callable[[bytes], bytes], limit: int = 64 * 1024) -> None:
        self._rewrite = rewrite
        self._limit = limit
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        cut = data.rfind(b"\n") + 1
        if not cut:
            if len(data) < self._limit:
                self._pending = data
                return b""
            cut = len(data)
        self._pending = data[cut:]
        return self._rewrite(data[:cut])

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._rewrite(rest) if rest else b""
