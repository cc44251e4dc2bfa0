"""Headers every answer to a request carries: steps add them to ``request[ANSWER_HEADERS]``, the app merges them.

Merged in ``on_response_prepare``, so they reach every response prepared for the request: the endpoint's own, a
stream it prepared itself, and the error an outer step rendered from an exception.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import hdrs, web
from multidict import CIMultiDict, istr

from ..keys import ANSWER_HEADERS

# names as multidict's istr, so a case-insensitive map need not fold them on every request
RATELIMIT, RATELIMIT_POLICY = istr("RateLimit"), istr("RateLimit-Policy")
LIMIT_LISTS = (RATELIMIT, RATELIMIT_POLICY)  # one member per limit: the edge's and a call's are both kept


def answer_headers(request: web.Request) -> CIMultiDict[str]:
    """The request's ANSWER_HEADERS, created on first use."""
    headers = request.get(ANSWER_HEADERS)
    if headers is None:
        headers = request[ANSWER_HEADERS] = CIMultiDict()
    return headers


async def apply_answer_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: each answer header replaces the response's own of that name; Vary adds its tokens.

    ``Vary: Accept-Language`` on the response + ``Vary: Origin`` answer header -> ``Vary: Accept-Language, Origin``.
    """
    extra = request.get(ANSWER_HEADERS)
    if not extra:
        return
    headers = response.headers
    vary = extra.getall(hdrs.VARY, ())
    own_vary = headers.getall(hdrs.VARY, ()) if vary else ()
    # a call's own limits (a token budget) stay beside the edge's: its values, read before they are replaced (the
    # outer test spares the list on the usual answer, which brings no RateLimit of its own)
    limits = [(name, headers.getall(name)) for name in LIMIT_LISTS if name in headers and name in extra] \
        if RATELIMIT in headers or RATELIMIT_POLICY in headers else ()
    headers.update(extra)  # every value of a name replaces every value of the response's own (multidict's update)
    if own_vary or len(vary) > 1:
        headers[hdrs.VARY] = merge_vary(own_vary, vary)
    for name, own in limits:
        headers[name] = merge_members(extra.getall(name), own)


def merge_members(first: Iterable[str], then: Iterable[str]) -> str:
    """Two RateLimit(-Policy) lists as one, one member per limit name, ``first``'s winning:
    ``['"route";r=1;t=9']`` + ``['"budget";r=900;t=50']`` -> ``'"route";r=1;t=9, "budget";r=900;t=50'``."""
    members: dict[str, str] = {}
    for value in (*first, *then):
        for member in value.split(","):
            if member := member.strip():
                members.setdefault(member.split(";")[0].strip(), member)
    return ", ".join(members.values())


def merge_vary(own: Iterable[str], added: Iterable[str]) -> str:
    """``["Accept-Encoding"]`` + ``["origin", "Origin, X-Cache"]`` -> ``"Accept-Encoding, origin, X-Cache"``; a
    response that already varies on ``*`` stays ``*``."""
    tokens: dict[str, str] = {}
    for value in (*own, *added):
        for token in value.split(","):
            token = token.strip()
            if token:
                tokens.setdefault(token.lower(), token)
    return "*" if "*" in tokens else ", ".join(tokens.values())
