"""Who is calling (SPEC §7): a verified JWT's ``sub``, else the client key's short hash, else the client's IP.

``X-Forwarded-For`` is believed only when the peer is one of ``server.trusted_proxies``, and then only up to the
rightmost hop that is not a trusted proxy: everything left of that hop was written by the client and can be forged.
IPv6 clients are named by their /64, the block one subscriber gets: otherwise one machine could rotate through 2**64
addresses and reset its budget with each.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from ..keys import CLAIMS, FACTS, IDENTITY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Step = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOPS = 16  # X-Forwarded-For entries examined from the right; no real proxy chain is longer
_MAX_ENTRY = 64  # longer than any address with a port: garbage, not parsed


def identify(trusted_proxies: Sequence[Network] = (), *, enabled: bool = True, verified: bool = True,
             observed: bool = True) -> Step | None:
    """The step that names the client for what reads the name after it (rate limits, a per-user cache, token
    budgets, the access log); None when nothing does. It runs after authentication, which records a verified key.

    ``verified``: a client key or a signed-in user may name the caller (``clients.api_keys`` or ``clients.jwt``);
    without either, and with no trusted proxy, the peer's address is all there is, named by one cached lookup.
    ``observed``: the request's Facts (the access log, the metrics) may be there to say who called.
    """
    if not enabled:
        return None
    trusted = tuple(trusted_proxies)
    name = peer_identity if not verified and not trusted else functools.partial(client_identity, trusted=trusted)

    async def identified(request: web.Request, call_next: Handler) -> web.StreamResponse:
        who = request[IDENTITY] = name(request)
        if observed:
            facts = request.get(FACTS)
            if facts is not None:
                facts.client = who
        return await call_next(request)

    return identified


def client_identity(request: web.Request, trusted: Sequence[Network] = ()) -> str:
    """``"sub:alice"``, ``"key:3f2a9c0d1b2e4f5a"`` (set by authentication for a verified key), ``"ip:203.0.113.9"``."""
    claims = request.get(CLAIMS)
    if claims:
        sub = claims.get("sub")
        if isinstance(sub, str) and sub:
            return sub_identity(sub)
    known = request.get(IDENTITY)
    if known is not None:  # a verified client key; an unverified one names nobody (a new one per request is free)
        return known
    return "ip:" + client_ip(request, trusted)


def peer_identity(request: web.Request) -> str:
    """``client_identity`` when nothing but the peer can name the caller (no key, no token, no trusted proxy)."""
    return "ip:" + _peer_name(request.remote or "")


def key_identity(key: str) -> str:
    """A client key as a short hash: ``"key:" + sha256(key)[:16]``; the key itself never leaves the auth step."""
    return "key:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def sub_identity(sub: str) -> str:
    """A JWT subject as is when it is short and printable, else hashed (it reaches log lines and storage keys)."""
    if len(sub) <= 128 and sub.isprintable():
        return "sub:" + sub
    return "sub:#" + hashlib.sha256(sub.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def client_ip(request: web.Request, trusted: Sequence[Network] = ()) -> str:
    """The client's address as text ("203.0.113.9", "2001:db8:1:2::/64"), or "unknown" without an IP peer."""
    if not trusted:
        return _peer_name(request.remote or "")
    address = parse_address(request.remote or "")
    if address is None:
        return "unknown"
    if not (trusted and _is_trusted(address, trusted) and "X-Forwarded-For" in request.headers):
        return _named(address)
    # at most MAX_HOPS entries from the right: a huge header costs one bounded split, nothing more
    hops = ",".join(request.headers.getall("X-Forwarded-For")).rsplit(",", MAX_HOPS)[-MAX_HOPS:]
    for hop in reversed(hops):
        hop_address = parse_address(hop)
        if hop_address is None:
            break  # a garbage entry: nothing to its left can be believed; the last trusted hop answers for it
        address = hop_address
        if not _is_trusted(address, trusted):
            break  # the rightmost untrusted hop: the client
    return _named(address)


@functools.lru_cache(maxsize=4096)  # a peer's every request names it the same way: one lookup by its text
def _peer_name(text: str) -> str:
    address = parse_address(text)
    return "unknown" if address is None else _named(address)


@functools.lru_cache(maxsize=4096)  # a client's every request names it the same way: worked out once
def _named(address: Address) -> str:
    if address.version == 6:
        return str(ipaddress.IPv6Network((int(address), 64), strict=False))
    return str(address)


@functools.lru_cache(maxsize=4096)  # pure: the same peer text on every request of a connection, and of a client
def parse_address(text: str) -> Address | None:
    """``" 203.0.113.9:443"`` / ``"[2001:db8::1]:443"`` / ``"::ffff:10.0.0.1"`` -> the address; anything else None."""
    text = text.strip()
    if not text or len(text) > _MAX_ENTRY:
        return None
    if text.startswith("["):
        text, closed, _port = text[1:].partition("]")
        if not closed:
            return None
    elif text.count(":") == 1:  # an IPv4 address with a port (some proxies append one)
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text.partition("%")[0])  # a zone ("fe80::1%eth0") names no client
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:  # a dual-stack socket's view of an IPv4 peer
        return address.ipv4_mapped
    return address


def _is_trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)
