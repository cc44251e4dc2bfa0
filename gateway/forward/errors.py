"""The one place where aiohttp client exceptions become gateway errors. No message names the upstream host."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp

from ..errors import UpstreamTimeout, UpstreamUnavailable


@contextmanager
def upstream_errors(name: str) -> Iterator[None]:
    try:
        yield
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout(f"upstream {name!r} did not answer in time") from None
    except aiohttp.ClientError:
        raise UpstreamUnavailable(f"upstream {name!r} could not be reached") from None
    except OSError:
        raise UpstreamUnavailable(f"upstream {name!r} could not be reached") from None


RETRYABLE_STATUS = frozenset({502, 503, 504})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
