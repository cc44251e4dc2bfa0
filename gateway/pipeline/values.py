"""The values that travel the upstream call chain, and how a chain of steps is put together.

    OutRequest  --step--step--...--> send --> Answer  (and back out through the same steps)

A step is ``async def step(out: OutRequest, call_next: Call) -> Answer``: it may change the request on the way in
and the answer on the way out. No step sees an aiohttp object: one adapter at each edge converts
(``outgoing.py`` builds the OutRequest, ``respond.py`` turns the Answer into the client's response).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from multidict import CIMultiDict, CIMultiDictProxy

from ..errors import UpstreamError

if TYPE_CHECKING:
    from ..keys import Facts

log = logging.getLogger("gateway.upstream")

Body = bytes | AsyncIterator[bytes]


@dataclass(slots=True)
class OutRequest:
    """One call to an upstream, as built from a YAML forward or a ``forward()`` call (see ``outgoing.py``)."""

    method: str
    url: str  # absolute and already percent-encoded: upstream url + path + query
    headers: Mapping[str, str]  # the client's headers until filter_request_headers; then what goes upstream
    body: bytes | AsyncIterable[bytes] | None = None
    extra: Mapping[str, str] = field(default_factory=dict)  # set by the gateway or a handler (already checked)
    origin: str = ""  # the gateway's own origin as the client called it: where rewritten body URLs point
    claims: Mapping[str, Any] | None = None  # the caller's verified token claims (clients.jwt), for forward_claims
    identity: str = ""  # who is calling (request[IDENTITY]: "sub:..", "key:..", "ip:.."): budgets count per caller
    facts: Facts | None = None  # the request's Facts (access log, metrics), when it has them


@dataclass(slots=True)
class Answer:
    """The upstream's answer on its way to the client: every step on the way back takes one and returns one."""

    status: int
    headers: CIMultiDict[str] | CIMultiDictProxy[str]  # the upstream's own until filter_response_headers
    body: Body  # bytes when read whole, else the chunks as they come (already decoded when ``encoding`` is "")
    encoding: str = ""  # a content-coding still applied to ``body`` ("" when it is plain bytes)
    url: str = ""  # the upstream URL that was asked: what a relative Location or Link is relative to
    upstream: str = ""  # the upstream's name, for log lines
    abort: Callable[[], None] | None = None  # stops the upstream call at once (also when the body never started)

    async def discard(self) -> None:
        """Nothing more of the body will be read: stop it, and the upstream call behind it."""
        await close(self.body)
        if self.abort is not None:
            self.abort()

    @property
    def event_stream(self) -> bool:
        return self.headers.get("Content-Type", "").startswith("text/event-stream")


Call = Callable[[OutRequest], Awaitable[Answer]]
Step = Callable[[OutRequest, Call], Awaitable[Answer]]
R = TypeVar("R")
H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


def chain(terminal: H, steps: Sequence[Callable[..., Awaitable[Any]] | None]) -> H:
    """``chain(send, [a, b])`` -> a call that runs ``a(x, b')`` where ``b' = b(x, send)``: the first step is outermost.

    Steps that are None (their feature is not configured) are left out, so they cost nothing per request.
    """
    present = [step for step in steps if step is not None]
    if not present:
        return terminal
    call = terminal
    for step in reversed(present[1:]):
        call = _link(step, call)
    # the outermost a partial of the (async) step: aiohttp, given it as a handler, must see a coroutine function
    return functools.partial(present[0], call_next=call)  # type: ignore[return-value]


def _link(step: Callable[..., Awaitable[Any]], call_next: H) -> H:
    """``x -> step(x, call_next)``: a closure returns the step's coroutine as is (no frame of its own), about
    half the cost per step of ``functools.partial`` with a keyword."""
    def link(x: Any) -> Awaitable[Any]:
        return step(x, call_next)

    return link  # type: ignore[return-value]


async def read_whole(answer: Answer, limit: int, purpose: str) -> bytes:
    """The answer's whole body, for a step that needs all of it; past ``limit`` bytes (decoded), or in an encoding
    the gateway cannot read, the upstream's answer is refused (502) rather than held or passed on unchecked."""
    if answer.encoding:
        await answer.discard()
        log.warning("upstream %s answered in an encoding the gateway cannot read %s", answer.upstream, purpose)
        raise UpstreamError(f"upstream {answer.upstream!r} answered in an encoding the gateway cannot read")
    body = await collect(answer.body, limit)
    if body is None:
        await answer.discard()
        log.warning("upstream %s sent more than %d bytes, the most the gateway reads %s", answer.upstream, limit,
                    purpose)
        raise UpstreamError(f"upstream {answer.upstream!r} answered with a body too large to read")
    return body


async def collect(body: Body, limit: int) -> bytes | None:
    """The whole body, or None when it grows past ``limit`` bytes (the stream is closed then)."""
    if isinstance(body, bytes):
        return body if len(body) <= limit else None
    parts = []
    size = 0
    try:
        async for chunk in body:
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
    finally:
        await close(body)
    return b"".join(parts)


async def close(body: Body) -> None:
    """Stop reading a streamed body: the upstream connection behind it is closed (or released when it was done)."""
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()
