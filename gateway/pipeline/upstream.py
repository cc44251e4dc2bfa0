"""An upstream at run time: its session, its secrets ready to attach, and ``send`` with timeout and retries."""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any

from ..config import UpstreamConfig
from ..errors import UpstreamUnavailable
from ..mask.scrub import Scrubber
from ..upstream.client import Pool, Response
from ..upstream.errors import IDEMPOTENT, RETRYABLE_STATUS, upstream_errors
from .headers import request_allowlist, response_allowlist
from .urlmap import UrlMapper
from .urls import encode_query

if TYPE_CHECKING:
    from ..keys import Facts
    from .values import Call

BACKOFF = 0.05  # seconds before the first retry; doubles each time, with full jitter


class Upstream:
    def __init__(self, config: UpstreamConfig, pool: Pool, scrubber: Scrubber, mapper: UrlMapper) -> None:
        self.name = config.name
        self.url = config.url
        self.pool = pool
        self.scrubber = scrubber
        self.retries = config.retries
        self.timeout = config.timeout
        self.inject_headers = {name: value.reveal() for name, value in config.inject.headers}
        self.inject_query = encode_query(tuple((name, value.reveal()) for name, value in config.inject.query))
        self.inject_query_names = {name.lower() for name, _ in config.inject.query}  # compared case-insensitively
        self.inject_header_names = {name.lower() for name in self.inject_headers}
        # an injected header always wins: the client's header of the same name is never even picked
        self.request_allow = request_allowlist(config.forward_headers) - {n.lower() for n in self.inject_headers}
        self.response_allow = response_allowlist(config.expose_headers)
        self.errors = upstream_errors(config.name)
        self.mapper = mapper  # maps Location/Link and body URLs under this upstream to gateway paths (or removes them)
        self.call: Call | None = None  # its call chain for forward(), assembled by the app at start-up

    async def send(self, method: str, url: str, headers: dict[str, str], data: Any, facts: Facts | None = None
                   ) -> Response:
        """One call upstream. ``retries`` more attempts on a connect error or a 502/503/504 answer, for idempotent
        methods with a replayable body only (never a POST or PATCH, never a streamed body), never on a timeout.
        ``facts`` learns the upstream's name, status and latency (of the last attempt)."""
        if facts is not None:
            facts.upstream = self.name
        replayable = method in IDEMPOTENT and (data is None or isinstance(data, bytes | bytearray))
        attempts = 1 + (self.retries if replayable else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            started = time.perf_counter() if facts is not None else 0.0
            try:
                try:
                    response = await self.pool.request(method, url, headers, data, self.timeout)
                except Exception as exc:
                    self.errors.translate(exc)
                    raise
                if facts is not None:
                    facts.upstream_status, facts.upstream_ms = response.status, (time.perf_counter() - started) * 1000
            except UpstreamUnavailable:
                if last:
                    raise
            else:
                if last or response.status not in RETRYABLE_STATUS:
                    return response
                response.close()
            await asyncio.sleep(random.uniform(0, BACKOFF * 2**attempt))
        raise AssertionError("unreachable")  # the loop always returns or raises on its last attempt
