"""The one place where aiohttp client exceptions become gateway errors. No message names the upstream host."""

from __future__ import annotations

import logging
from types import TracebackType

import aiohttp

from ..errors import BadRequest, UpstreamTimeout, UpstreamUnavailable
from .client import BadHeader

log = logging.getLogger("gateway.upstream")


class upstream_errors:  # noqa: N801 - used like a function: ``with upstream_errors(name): ...``
    """Context manager translating client exceptions; a plain class, as it sits on every request's path."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if kind is None:
            return False
        if issubclass(kind, BadHeader):
            raise BadRequest(f"a request header cannot be passed on to upstream {self.name!r}: {exc}") from None
        if issubclass(kind, TimeoutError | aiohttp.ServerTimeoutError):
            log.warning("upstream %s: timeout", self.name, extra={"upstream": self.name, "reason": "timeout"})
            raise UpstreamTimeout(f"upstream {self.name!r} did not answer in time") from None
        if issubclass(kind, aiohttp.ClientError | OSError):
            reason = f"{kind.__name__}: {exc}" if str(exc) else kind.__name__  # refused, DNS, TLS, reset
            log.warning("upstream %s: %s", self.name, reason, extra={"upstream": self.name, "reason": reason})
            raise UpstreamUnavailable(f"upstream {self.name!r} could not be reached") from None
        return False


RETRYABLE_STATUS = frozenset({502, 503, 504})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
