"""Rate limits per client identity (SPEC §7): a request must fit in every limit that applies, else 429.

Each answer names the limits in the IETF fields (draft-ietf-httpapi-ratelimit-headers), one list member per limit:

    RateLimit-Policy: "clients";q=120;w=60, "route";q=30;w=60
    RateLimit: "clients";r=97;t=41, "route";r=12;t=41

The window is limits' fixed window, opened by a client's first request: ``t`` is the whole seconds until that
window ends (its count then starts over at ``q``), rounded up, so at ``t`` there is room again; ``Retry-After`` on a
429 is the same figure for the limit that refused (the latest, if several did). A burst can therefore reach up to
2q within one period when it straddles a window's end.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from limits import RateLimitItem

from ..errors import RateLimited
from ..keys import IDENTITY
from ..state import Limit, State, Window, limit_item, seconds_left
from ..units import Rate
from .answer import RATELIMIT, RATELIMIT_POLICY, answer_headers

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Step = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Policy:
    """One limit: its name in the headers, its rate, and what it counts over besides the client."""

    name: str  # "clients" (clients.rate_limit) or "route" (the forward's or the route module's rate_limit)
    rate: Rate
    scope: str = ""  # "" for one budget across every route; the route pattern for a route's own budget


def route_policies(clients: Rate | None, route: Rate | None, pattern: str) -> list[Policy]:
    """The limits one route applies: ``clients.rate_limit`` (shared by all routes), then the route's own."""
    policies = []
    if clients is not None:
        policies.append(Policy("clients", clients))
    if route is not None:
        policies.append(Policy("route", route, pattern))
    return policies


def rate_limit(policies: Sequence[Policy], state: State) -> Step | None:
    """The step counting each request against ``policies`` per client (``request[IDENTITY]``); None without any."""
    if not policies:
        return None
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"two rate-limit policies share a name: {names}")
    items = [(p, item, *_key_around(item, p)) for p in policies for item in (limit_item(p.rate),)]
    policy_field = ", ".join(f'"{p.name}";q={p.rate.count};w={int(p.rate.period)}' for p in policies)
    field = _field([p.name for p in policies])

    @functools.lru_cache(maxsize=4096)  # a client's every request counts under the same limits: built once
    def limits_of(identity: str) -> tuple[Limit, ...]:
        return tuple([Limit(item, (p.name, p.scope, identity), before + identity + after)
                      for p, item, before, after in items])

    async def limited(request: web.Request, call_next: Handler) -> web.StreamResponse:
        identity = request[IDENTITY]  # set by the identify step, which runs before this one
        verdict = await state.acquire(limits_of(identity), lock=identity)
        headers = answer_headers(request)
        headers[RATELIMIT_POLICY] = policy_field
        headers[RATELIMIT] = field(verdict.windows)
        if not verdict.admitted:
            retry = max(seconds_left(verdict.windows[i].reset_in) for i in verdict.refused)
            which = " and ".join(f"{policies[i].name} limit of {policies[i].rate}" for i in verdict.refused)
            raise RateLimited(f"too many requests: the {which} is used up; retry in {retry}s",
                              headers={"Retry-After": str(retry)})
        return await call_next(request)

    return limited


def _key_around(item: RateLimitItem, policy: Policy) -> tuple[str, str]:
    """limits' key for this policy's counter, ``item.key_for(name, scope, identity)``, as the text before and after
    the identity: a request's key is then one concatenation (limits' ``key_for`` costs ~10 us a call)."""
    mark = "\x00identity\x00"
    before, _, after = item.key_for(policy.name, policy.scope, mark).partition(mark)
    return before, after


def _field(names: Sequence[str]) -> Callable[[Sequence[Window]], str]:
    """What builds the RateLimit field from a verdict's windows, one member per limit name, in order: for
    ``["clients", "route"]``, ``(Window(97, 40.2), Window(12, 40.2))`` -> ``'"clients";r=97;t=41, "route";r=12;t=41'``.
    """
    starts = [f'"{name}";r=' for name in names]  # each member up to its numbers
    if len(starts) == 1:  # most routes have one limit: its member alone, with no list and no join (~2k instructions)
        start = starts[0]

        def member(windows: Sequence[Window]) -> str:
            window = windows[0]
            return f"{start}{window.remaining};t={seconds_left(window.reset_in)}"

        return member

    def members(windows: Sequence[Window]) -> str:
        built = []  # a loop, not a comprehension: ~1k fewer instructions a request
        for start, window in zip(starts, windows):  # noqa: B905 - one window per name
            built.append(f"{start}{window.remaining};t={seconds_left(window.reset_in)}")
        return ", ".join(built)

    return members
