"""The ``forward_claims`` step: chosen claims of the caller's verified token sent upstream as headers (SPEC §8).

    clients.jwt.forward_claims: { X-User-Id: sub }     token {"sub": "user_42", ...}  ->  X-User-Id: user_42

Only a verified token fills them: whatever a client (or a handler's ``headers=``) put under those names is removed
first, so a request without a token, or whose token lacks the claim, sends none. A claim that is not a string,
number or boolean, or that holds a character a header cannot carry safely (CR, LF, NUL, any control or non-ASCII
character: a token's claims are whatever its subject could type), is the client's 400, never a mangled header.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import BadRequest
from .values import Answer, Call, OutRequest

MAX_VALUE = 4096  # characters: an upstream's header limit is commonly 8 KB for all of them


def forward_claims(mapping: Sequence[tuple[str, str]]):
    """``[("X-User-Id", "sub")]`` -> a step setting X-User-Id from the token's sub; None when nothing is forwarded."""
    if not mapping:
        return None
    names = frozenset(header.lower() for header, _ in mapping)

    async def forward_claims(out: OutRequest, call_next: Call) -> Answer:
        headers: Any = out.headers  # a dict since filter_request_headers
        for name in [n for n in headers if n.lower() in names]:
            del headers[name]
        claims = out.claims
        if claims:
            for header, claim in mapping:
                if claim in claims:
                    headers[header] = header_value(claims[claim], claim, header)
        return await call_next(out)

    return forward_claims


def header_value(value: Any, claim: str, header: str) -> str:
    """``"user_42"`` -> ``"user_42"``, ``42`` -> ``"42"``, ``True`` -> ``"true"``; anything else is a BadRequest."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise BadRequest(f"the token's {claim} claim is not a string, number or boolean, so it cannot be sent "
                         f"as {header}")
    if len(value) > MAX_VALUE or not value.isascii() or not value.isprintable():
        raise BadRequest(f"the token's {claim} claim cannot be sent as {header}: it is too long or holds a line "
                         "break, control or non-ASCII character")
    return value
