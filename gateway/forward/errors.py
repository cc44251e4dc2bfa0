"""The one place where aiohttp client exceptions become gateway errors. No message names the upstream host."""

from __future__ import annotations

from types import TracebackType

import aiohttp

from ..errors import BadRequest, UpstreamTimeout, UpstreamUnavailable
from .client import BadHeader


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
            raise UpstreamTimeout(f"upstream {self.name!r} did not answer in time") from None
        if issubclass(kind, aiohttp.ClientError | OSError):
            raise UpstreamUnavailable(f"upstream {self.name!r} could not be reached") from None
        return False


RETRYABLE_STATUS = frozenset({502, 503, 504})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
