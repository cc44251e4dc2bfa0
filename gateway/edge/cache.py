"""The response cache (SPEC §7): GET answers kept for the route's ``cache`` duration, one upstream call per miss.

It sits above every masking step, so what it keeps is the answer exactly as the client got it (body bytes, status,
headers); per-request headers (X-Request-Id, RateLimit, CORS) are added when the answer is sent, never stored.

    key = route pattern + params + query string + the request headers the upstream may vary on
          (Accept, Accept-Language, forward_headers) [+ the client's identity when it reaches the upstream]

hashed with SHA-256, so no header value is kept in it; it never holds a secret (the client's key is not an input).
Concurrent misses for one key share one call: the first makes it, the others wait for its outcome (an answer that
was kept, or the same error) at most ``timeout`` seconds, then get 504. An answer that may not be kept (private,
a stream, an uncacheable status) leaves the waiters to call for themselves. HEAD is answered from a kept GET; a HEAD
miss is passed on and not kept (it has no body to keep).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiohttp import hdrs, web
from multidict import CIMultiDict, istr

from ..errors import UpstreamTimeout
from ..keys import FACTS, IDENTITY
from ..pipeline.headers import request_allowlist
from ..state import Cached, LockTimeout, State
from .answer import answer_headers

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Step = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

X_CACHE = istr("X-Cache")
CACHEABLE = frozenset({200, 203, 204, 301, 404, 410})
# what is not part of the answer itself: sent fresh each time, or recomputed from the body
NOT_KEPT = frozenset({"content-length", "transfer-encoding", "connection", "date", "server", "x-request-id", "x-cache",
                      "age", "set-cookie"})


def vary_headers(forward_headers: Iterable[str]) -> tuple[str, ...]:
    """The request headers an upstream may answer differently for: Accept, Accept-Language and those the forward
    passes on (``forward_headers``), minus any the gateway never sends upstream (Authorization, Cookie, X-API-Key).
    """
    wanted = {"accept", "accept-language", *(name.lower() for name in forward_headers)}
    return tuple(sorted(wanted & request_allowlist(tuple(forward_headers))))


def cache(ttl: float | None, state: State, *, pattern: str, vary: Sequence[str], timeout: float,
          per_client: bool = False) -> Step | None:
    """The step keeping this route's GET answers for ``ttl`` seconds; None when the route is not cached.

    ``per_client``: something of the caller's identity reaches the upstream (``forward_claims``), so each client
    gets its own entries (``request[IDENTITY]``, set by the identify step).
    """
    if not ttl:
        return None
    names = tuple(istr(name) for name in sorted({name.lower() for name in vary}))  # istr: looked up unfolded
    flights: dict[str, asyncio.Future[Cached | None]] = {}  # key -> the one call in progress for it

    def key_of(request: web.Request) -> str:
        parts = (
            tuple(sorted(request.match_info.items())),
            request.rel_url.raw_query_string,
            tuple([request.headers.getall(name, ()) for name in names]),
            request[IDENTITY] if per_client else None,
        )
        # the repr of strings, tuples and lists is one-to-one (each string quoted and escaped): as unambiguous as
        # JSON, at half json.dumps's cost on every cached request
        digest = hashlib.sha256(repr(parts).encode("utf-8", "surrogatepass")).hexdigest()
        return f"cache:{pattern}:{digest}"

    async def cached(request: web.Request, call_next: Handler) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return await call_next(request)
        key = key_of(request)
        entry = await state.cache_get(key)
        if entry is not None:
            return _hit(request, entry, state.now())
        if request.method == "HEAD":
            return await _miss(request, call_next)
        flight = flights.get(key)
        if flight is None:
            return await lead(request, call_next, key)
        try:
            async with asyncio.timeout(timeout):
                entry = await asyncio.shield(flight)  # a waiter's own timeout never cancels the shared call
        except Exception as exc:  # the shared call's error, or this wait's timeout: a miss all the same
            _note_miss(request)
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout() from None
            raise
        if entry is not None:
            return _hit(request, entry, state.now())
        return await _miss(request, call_next)  # it could not be kept: it may be meant for its caller only

    async def lead(request: web.Request, call_next: Handler, key: str) -> web.StreamResponse:
        flight = flights[key] = asyncio.get_running_loop().create_future()
        try:
            async with state.lock(key, wait=timeout):  # shared state: one process calls, the others wait here
                entry = await state.cache_get(key)  # kept by another process while this one waited
                if entry is not None:
                    response: web.StreamResponse = _hit(request, entry, state.now())
                else:
                    response = await _miss(request, call_next)
                    entry = keepable(response, state.now(), ttl)
                    if entry is not None and not await state.cache_set(key, entry):
                        entry = None
        except LockTimeout:  # another process's call outlasted the timeout: 504, as a waiter in this process gets
            _note_miss(request)
            flight.set_exception(UpstreamTimeout())
            flight.exception()
            raise UpstreamTimeout() from None
        except Exception as exc:
            flight.set_exception(exc)  # the waiters get the same error; the next request calls again
            flight.exception()  # marked as retrieved: asyncio logs nothing when no waiter came
            raise
        except BaseException:  # cancelled (the client left): the waiters make their own calls
            flight.set_result(None)
            raise
        else:
            flight.set_result(entry)
        finally:
            del flights[key]
        return response

    return cached


def keepable(response: web.StreamResponse, now: float, ttl: float) -> Cached | None:
    """The answer as kept, or None when it may not be: see SPEC §7 (status, no-store/private, cookies, streams)."""
    if not isinstance(response, web.Response) or response.prepared or response.status not in CACHEABLE:
        return None
    body = response.body
    if not isinstance(body, bytes | bytearray):  # a payload object (a file, a generator) is a stream
        return None
    headers = response.headers
    if "Set-Cookie" in headers or headers.get("Content-Type", "").lower().startswith("text/event-stream"):
        return None
    directives = {d.split("=")[0].strip().lower() for v in headers.getall("Cache-Control", ()) for d in v.split(",")}
    if "no-store" in directives or "private" in directives:
        return None
    if any(token.strip() == "*" for v in headers.getall("Vary", ()) for token in v.split(",")):
        return None  # it varies on something no key can hold
    # the names as istr: a hit's CIMultiDict takes them without folding each name again
    kept = tuple((istr(name), value) for name, value in headers.items() if name.lower() not in NOT_KEPT)
    return Cached(response.status, kept, bytes(body), now, now + ttl)


def _hit(request: web.Request, entry: Cached, now: float) -> web.Response:
    headers = CIMultiDict(entry.headers)
    headers[X_CACHE] = "HIT"
    headers[hdrs.AGE] = str(max(0, int(now - entry.stored)))
    facts = request.get(FACTS)
    if facts is not None:
        facts.cache = "HIT"
    return web.Response(status=entry.status, headers=headers, body=entry.body)


async def _miss(request: web.Request, call_next: Handler) -> web.StreamResponse:
    _note_miss(request)
    return await call_next(request)


def _note_miss(request: web.Request) -> None:
    """Every answer to a miss says X-Cache: MISS, a stream or an error too (via the answer headers)."""
    facts = request.get(FACTS)
    if facts is not None:
        facts.cache = "MISS"
    answer_headers(request)[X_CACHE] = "MISS"
