"""Browser origins: the forms ``clients.cors.origins`` accepts (checked at start-up) and matching an Origin to them.

    parse_origin("https://App.example.com:443") -> "https://app.example.com"   (the form a browser sends)
    parse_origin("https://*.example.com")       -> "https://*.example.com"     (one label: a.example.com, not a.b.)
    parse_origin("http://app.example.com")      -> ValueError (plain http only on localhost)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

ANY = "*"
LOOPBACK = frozenset({"localhost", "127.0.0.1", "[::1]"})  # the only hosts plain http is accepted for
DEFAULT_PORTS = {"http": "80", "https": "443"}
# Suffixes under which every label belongs to someone else, so "*.<suffix>" would admit strangers' sites. A small
# built-in list of the common multi-label ones (a single-label base such as "com" is refused by rule), not the
# full Public Suffix List.
PUBLIC_SUFFIXES = frozenset("""
    co.uk org.uk me.uk ac.uk gov.uk ltd.uk plc.uk net.uk sch.uk nhs.uk com.au net.au org.au edu.au gov.au
    co.nz net.nz org.nz co.jp ne.jp or.jp ac.jp go.jp co.kr or.kr co.in net.in org.in co.za org.za co.il
    co.id com.br net.br org.br com.cn net.cn org.cn gov.cn com.hk com.tw com.sg com.my com.mx com.ar com.tr
    com.ua com.pl com.vn com.ph com.pk com.eg com.sa com.co eu.org
    github.io gitlab.io herokuapp.com vercel.app now.sh netlify.app pages.dev workers.dev web.app firebaseapp.com
    appspot.com blogspot.com azurewebsites.net azurestaticapps.net cloudfront.net amazonaws.com cloudfunctions.net
    onrender.com fly.dev glitch.me repl.co ngrok.io ngrok-free.app trycloudflare.com surge.sh readthedocs.io
    pythonanywhere.com deno.dev railway.app up.railway.app codesandbox.io csb.app stackblitz.io gitpod.io
""".split())
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")
# a request's Origin as a browser serializes it, split for wildcard matching: scheme, first label, rest, port
_REQUEST_ORIGIN = re.compile(r"(https?)://([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)\.([a-z0-9.-]{1,253})((?::[0-9]{1,5})?)")
# what "*" admits: any origin a browser can serialize, but never "null", a path, CR/LF, spaces or upper case
_SERIALIZED_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[a-z0-9._~\[\]:-]{1,300}")
_EXAMPLE = "e.g. https://app.example.com"


def parse_origin(text: str) -> str:
    """The origin as a browser would send it in ``Origin``; ValueError saying what is wrong and how to fix it."""
    if text == ANY:
        return ANY
    if text.strip().lower() == "null":
        raise ValueError("sandboxed iframes, file: pages and some redirects all send Origin: null, so any site can "
                         f"claim it: list the real origin of your app, {_EXAMPLE}")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"an origin has no spaces or control characters: write scheme://host[:port], {_EXAMPLE}")
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme == "file" or text.lower().startswith("file:"):
        raise ValueError("file: pages have the origin null, which any site can claim: serve the page from "
                         "http://localhost:PORT and list that origin")
    if not sep:
        raise ValueError(f"not an origin: write scheme://host[:port], {_EXAMPLE}")
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"only https origins (and plain http on localhost) are accepted, {_EXAMPLE}")
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=-1)
    if cut >= 0:
        raise ValueError(f"an origin has no path, query or trailing slash: write {scheme}://{rest[:cut]}")
    if "@" in rest:
        raise ValueError(f"an origin has no user or password: write {scheme}://{rest.rpartition('@')[2]}")
    host, port = _split_port(rest)
    host = _normal_host(host)
    if port is not None and port != DEFAULT_PORTS[scheme]:
        host_port = f"{host}:{port}"
    else:  # browsers leave the default port out of Origin
        host_port = host
    if "*" in host:
        return _wildcard(scheme, host, host_port)
    if scheme == "http" and host not in LOOPBACK:
        raise ValueError("plain http is accepted only for http://localhost, http://127.0.0.1 and http://[::1] "
                         f"(any port): use https://{host_port}")
    return f"{scheme}://{host_port}"


def _split_port(rest: str) -> tuple[str, str | None]:
    if rest.startswith("["):
        end = rest.find("]")
        host, tail = (rest[: end + 1], rest[end + 1 :]) if end > 0 else (rest, "")
    else:
        host, colon, port = rest.partition(":")
        tail = colon + port
    if not tail:
        return host, None
    port = tail[1:]
    if tail[0] != ":" or not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise ValueError(f"{tail!r} is not a port: a port is a number from 1 to 65535, e.g. https://localhost:5173")
    return host, str(int(port))


def _normal_host(host: str) -> str:
    host = host.lower()
    if not host or host == "[]":
        raise ValueError(f"the origin has no host, {_EXAMPLE}")
    if host.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1] if host.endswith(']') else '?').compressed}]"
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address, e.g. http://[::1]:8080") from None
    if host.endswith("."):
        raise ValueError(f"browsers send the host without its trailing dot: write {host.rstrip('.')}")
    if not host.isascii():
        raise ValueError(f"browsers send an international host name in its ASCII form: write {_punycode(host)}")
    labels = host.split(".")
    if all(label.isdigit() for label in labels):
        try:  # also refuses leading zeros (0177.0.0.1), which browsers read as octal
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
    for label in labels:
        if "*" not in label and not _LABEL.fullmatch(label):  # a misplaced * is explained by _wildcard
            raise ValueError(f"{host!r} is not a host name: labels are letters, digits and inner hyphens")
    return host


def _punycode(host: str) -> str:
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return "its xn-- form"


def _wildcard(scheme: str, host: str, host_port: str) -> str:
    """``*.example.com`` covers exactly one more label; never a bare public suffix such as ``*.com``."""
    if scheme != "https":
        raise ValueError("a wildcard origin must be https: https://*.example.com")
    base = host[2:]
    if not host.startswith("*.") or "*" in base:
        raise ValueError("a wildcard is one whole label, leftmost, once: write https://*.example.com")
    if base.count(".") == 0 or base in PUBLIC_SUFFIXES or base.rsplit(".", 1)[1].isdigit():
        raise ValueError(f"{base} is a public suffix, shared by sites of different owners: put the wildcard over "
                         f"your own domain, e.g. https://*.example.{base}")
    return f"https://{host_port}"


class OriginPolicy:
    """Which request ``Origin`` values the parsed ``origins`` admit; compared exactly as browsers serialize them."""

    def __init__(self, origins: Iterable[str]) -> None:
        origins = frozenset(origins)
        self.any = ANY in origins
        self._exact = frozenset(o for o in origins if "*" not in o)
        self._wildcards = frozenset(o.replace("://*.", "://", 1) for o in origins if "*" in o and o != ANY)

    def allows(self, origin: str) -> bool:
        """``https://a.example.com`` against ``https://*.example.com``: True; ``https://a.b.example.com``: False."""
        if origin in self._exact:
            return True
        if self._wildcards and (match := _REQUEST_ORIGIN.fullmatch(origin)):
            scheme, _label, rest, port = match.groups()
            return f"{scheme}://{rest}{port}" in self._wildcards
        return self.any and _SERIALIZED_ORIGIN.fullmatch(origin) is not None
