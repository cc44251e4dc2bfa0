"""The one URL mapper: an upstream URL becomes the gateway path of the forward that serves it, or goes.

Used alike for ``Location``/``Content-Location``/``Link`` headers and for URLs inside bodies (``rewrite_urls``).
A forward of the upstream maps the URLs its path template produces (SPEC §4):

    gh/[...path] -> /{path}         https://api.github.com/repos/x?page=2  ->  /api/gh/repos/x?page=2
    users/[id]   -> /v2/users/{id}  https://up/v2/users/42                 ->  /api/users/42

Where several forwards could serve a URL, route precedence decides (static beats [param], and so on). A URL on the
upstream's host that no forward serves is removed, and so is any header value that still names the upstream in
a spelling a client's URL parser would accept (``%2E``-encoded or full-width dots, ``0x7f.1``, ``\\\\host\\``,
inside another URL's query ...): see ``names_upstream``.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import unquote, urljoin, urlsplit

from ..config import ForwardConfig, UpstreamConfig
from ..paths import Kind, Segment
from .urls import without_params

_LINK = re.compile(r'<([^>]*)>((?:[^,"]|"[^"]*")*)')  # a quoted parameter may hold a comma
_FULLWIDTH_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": ".", "\\": "/"})
_AUTHORITY = re.compile(r"(?://|@)\s*([^/?#@\s<>\"'`;,]+)")  # what follows "//" or "@": a host[:port]


class _Route:
    """One forward, inverted: a regex over upstream paths and how to build the gateway path from its groups."""

    __slots__ = ("regex", "build", "order")

    def __init__(self, regex: re.Pattern[str], build: list[tuple[bool, str]], order: tuple[list[int], int]) -> None:
        self.regex = regex
        self.build = build  # (is a parameter, static text or parameter name) per gateway segment
        self.order = order


class UrlMapper:
    def __init__(self, upstream: UpstreamConfig, forwards: Iterable[ForwardConfig], prefix: str) -> None:
        parts = urlsplit(upstream.url)
        self.base = upstream.url
        self.base_path = parts.path.rstrip("/")
        self.netloc = parts.netloc.lower()
        self.hostname = (parts.hostname or "").rstrip(".")
        self.prefix = prefix
        self.drop = {name.lower() for name, _ in upstream.inject.query}  # the gateway injects them again
        routes = [r for f in forwards if f.upstream == upstream.name and (r := _invert(f, self.base_path))]
        self._routes = sorted(routes, key=lambda r: r.order)
        self._spellings = _spellings(self.hostname)
        self._ipv4 = _ipv4(self.hostname)
        # an absolute URL on the upstream in a body, also with JSON's escaped slashes (http:\/\/host\/x)
        slash = rb"\\?/"
        self._in_body = re.compile(
            re.escape(parts.scheme.encode()) + rb":" + slash + slash + re.escape(parts.netloc.encode())
            + rb"(?![\w.:@-])(?:\\/|[^\s\"'<>\\])*",
            re.IGNORECASE,
        )

    # -- one URL ---------------------------------------------------------------------------------------------

    def to_gateway(self, url: str, request_url: str | None = None) -> str | None:
        """The gateway path for an upstream URL, the URL itself if it is on another host, or None to remove it.

        A relative ``url`` is resolved against ``request_url`` (the upstream URL it answers), else the base; as a
        browser would, backslashes count as slashes and tabs are ignored."""
        url = url.strip(" \x00\x01\x02\x03\x04\x05\x06\x07\x08\t\n\x0b\x0c\r").replace("\t", "")
        if "\\" in url:
            url = url.replace("\\", "/")
        absolute = urljoin(request_url or self.base + "/", url)
        parts = urlsplit(absolute)
        if (parts.hostname or "").rstrip(".") != self.hostname:
            return url
        if parts.netloc.lower() != self.netloc or any(s in (".", "..") for s in parts.path.split("/")):
            return None  # the upstream's host with another port or a user, or a path that climbs: never shown
        path = parts.path
        if path != self.base_path and not path.startswith(self.base_path + "/"):
            return None
        rest = path[len(self.base_path):] or "/"
        query = without_params(parts.query, self.drop) if parts.query and self.drop else parts.query
        tail = (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
        for route in self._routes:
            match = route.regex.fullmatch(rest)
            if match is not None:
                segments = [match[text] if is_param else text for is_param, text in route.build]
                return ("/".join([self.prefix, *(s for s in segments if s)]) or "/") + tail
        return None

    def link_header(self, value: str, request_url: str | None = None) -> str | None:
        """``<https://up/x?page=2>; rel="next"`` -> ``</api/x?page=2>; rel="next"``; unmappable links are dropped."""
        kept = []
        for match in _LINK.finditer(value):
            target = self.to_gateway(match[1], request_url)
            if target is not None and not self.names_upstream(match[2]):  # a parameter may name the upstream too
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

    # -- any spelling ----------------------------------------------------------------------------------------

    def names_upstream(self, text: str) -> bool:
        """Whether ``text`` names the upstream's host in any spelling a URL parser would take for it.

        ``http://127%2E0%2E0%2E1/x``, ``//0x7f.1/``, ``\\\\127．0．0．1\\``, ``https://login/?next=http://up/`` -> True.
        """
        if not self.hostname:
            return False
        if self._spellings[0] in text.lower():
            return True
        if not _suspect(text):
            return False
        normal = _normalise(text)
        if any(spelling in normal for spelling in self._spellings):
            return True
        if self._ipv4 is not None:
            for match in _AUTHORITY.finditer(normal):
                if _ipv4_of(match[1]) == self._ipv4:
                    return True
        return False


def _invert(forward: ForwardConfig, base_path: str) -> _Route | None:
    """``gh/[...path]`` with ``/{path}`` -> a regex ``/(?P<path>.+)`` over upstream paths; None when not invertible
    (a query in the template, or a route parameter the template does not use)."""
    if "?" in forward.path:
        return None
    kinds = {s.value: s.kind for s in forward.segments if s.kind != Kind.STATIC}
    used: set[str] = set()
    pattern = ""
    for i, piece in enumerate(re.split(r"\{([^{}]*)\}", forward.path)):
        if i % 2 == 0:
            pattern += re.escape(piece)
        elif piece in used:
            pattern += f"(?P={piece})"
        else:
            used.add(piece)
            body = {Kind.PARAM: r"[^/]+", Kind.CATCH: r"[^/].*", Kind.OPTIONAL: r".*"}[kinds[piece]]
            pattern += f"(?P<{piece}>{body})"
    if used != set(kinds):
        return None
    build = [(s.kind != Kind.STATIC, s.value) for s in forward.segments]
    return _Route(re.compile(pattern), build, _precedence(forward.segments, forward.path))


def _precedence(segments: tuple[Segment, ...], path: str) -> tuple[list[int], int]:
    """Route precedence, segment by segment (static < [param] < [...catch] < [[...optional]]); between equals, the
    template with more literal text is the more specific one."""
    return [int(s.kind) for s in segments], -len(re.sub(r"\{[^{}]*\}", "", path))


def _suspect(text: str) -> bool:
    """Whether ``text`` could spell a host another way: ``//``, ``%``, ``\\``, ``@`` or a non-ASCII character.
    Five C-level scans: a regex with the same alternatives costs several times more on every answer's headers."""
    return "//" in text or "%" in text or "\\" in text or "@" in text or not text.isascii()


def _normalise(text: str) -> str:
    """Percent-decoded (up to three times), NFKC-folded (full-width letters and dots), backslashes as slashes;
    a header read as latin-1 that holds UTF-8 (how a browser reads a Location) is read as UTF-8 too."""
    if not text.isascii():
        try:
            text = text.encode("latin-1").decode("utf-8")
        except UnicodeError:
            pass
    for _ in range(3):
        if "%" not in text:
            break
        text = unquote(text)
    return unicodedata.normalize("NFKC", text).translate(_FULLWIDTH_DOTS).lower()


def _spellings(hostname: str) -> tuple[str, ...]:
    """The host as it is written in URLs: its name, its IDNA form, a bracketed IPv6 address in both notations."""
    host = hostname.lower()
    if not host:
        return ("",)
    forms = [host]
    try:
        forms.append(host.encode("idna").decode("ascii"))
    except UnicodeError:
        pass
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if address.version == 6:
            forms += [address.compressed, address.exploded]
    return tuple(dict.fromkeys(forms))


def _ipv4(hostname: str) -> int | None:
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        return None
    return int(address) if address.version == 4 else None


def _ipv4_of(authority: str) -> int | None:
    """The IPv4 address an authority (``host[:port]``) names, in any notation: ``0x7f.1:80`` and
    ``[::ffff:7f00:1]`` -> 2130706433."""
    if authority.startswith("["):
        try:
            mapped = ipaddress.IPv6Address(authority[1:].partition("]")[0]).ipv4_mapped
        except ValueError:
            return None
        return int(mapped) if mapped is not None else None
    host = authority.rpartition(":")[0] if ":" in authority else authority
    return _parse_ipv4(host.rstrip("."))


def _parse_ipv4(host: str) -> int | None:
    """An IPv4 host as the WHATWG URL parser reads it: 1-4 parts, each decimal, 0x-hex or 0-octal, the last part
    filling the remaining bytes. ``0x7f.1`` -> 2130706433; ``2130706433`` -> the same; a name -> None."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        try:
            if part[:2] in ("0x", "0X"):
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part[0] == "0":
                numbers.append(int(part[1:], 8))
            else:
                numbers.append(int(part, 10))
        except ValueError:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return value
