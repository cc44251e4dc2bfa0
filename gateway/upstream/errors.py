"""The one place where upstream client exceptions become gateway errors, and where upstream failures are logged.

    client exception                      gateway error                 logged (gateway.upstream, one line)
    BadHeader (ValueError)                400 bad_request               no: the client's header
    BodyTimeout                           408 bad_request               no: the client's body stalled
    PoolFull (ConnectionError)            503 unavailable, Retry-After  yes: every connection stayed busy
    InvalidResponse (ConnectionError)     502 upstream_error            yes: malformed, over a limit, undecodable
    TimeoutError                          504 upstream_timeout          yes: connect, headers, body silence
    ConnectionError / OSError             502 upstream_unavailable      yes: refused, DNS, TLS, proxy, closed

PoolFull is a 503 with ``Retry-After``, not a 504: the gateway itself declined to open more connections to the
upstream and nothing was sent, so the call is safe to retry, even a POST; a 504 would say the upstream was slow
and leave the client unsure whether its request was processed.

No message names the upstream's host; the log line names the upstream (its config name) and the reason, which
the client words without secrets, queries or proxy credentials.
"""

from __future__ import annotations

import logging
from types import TracebackType

import aiohttp

from ..errors import BadRequest, RequestTimeout, Unavailable, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from .client import IDEMPOTENT, BadHeader, BodyTimeout, InvalidResponse, PoolFull

__all__ = ["IDEMPOTENT", "RETRYABLE_STATUS", "upstream_errors"]

log = logging.getLogger("gateway.upstream")
RETRYABLE_STATUS = frozenset({502, 503, 504})

log = logging.getLogger("gateway.upstream")


class upstream_errors:  # noqa: N801 - used like a function: ``with upstream_errors(name): ...``
    """Context manager translating client exceptions; a plain class, as it sits on every request's path."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc is not None:
            self.translate(exc)
        return False

    def translate(self, exc: BaseException) -> None:
        """Raise the gateway error for a client exception; return for any other (the caller re-raises it).

        ``except Exception as exc: errors.translate(exc); raise`` is the ``with`` block's meaning at no cost on the
        way through (a ``with`` calls two methods per call, on every request)."""
        name = self.name
        if isinstance(exc, BadHeader):
            raise BadRequest(f"a request header cannot be passed on to upstream {name!r}: {exc}") from None
        if isinstance(exc, BodyTimeout):
            raise RequestTimeout(f"{exc}; the call to upstream {name!r} was abandoned") from None
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            _log(name, exc)
            raise UpstreamTimeout(f"upstream {name!r} did not answer in time") from None
        if isinstance(exc, PoolFull):
            _log(name, exc)
            raise Unavailable(f"upstream {name!r} is busy: every connection to it is in use") from None
        if isinstance(exc, InvalidResponse):
            _log(name, exc)
            raise UpstreamError(f"upstream {name!r} sent an invalid response") from None
        if isinstance(exc, aiohttp.ClientError | OSError):
            _log(name, exc)
            raise UpstreamUnavailable(f"upstream {name!r} could not be reached") from None


def _log(name: str, exc: BaseException | None) -> None:
    # the client's own messages are worded safe; anything else (aiohttp's may quote a URL) only by its type
    ours = type(exc).__module__.startswith("gateway.") or type(exc).__module__ == "builtins"
    reason = (str(exc) if ours else "") or type(exc).__name__
    log.warning("upstream %s failed: %s", name, reason[:200], extra={"upstream": name, "reason": reason[:200]})
