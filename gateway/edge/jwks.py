"""The identity provider's public keys (its JWKS): fetched at start-up, cached, refreshed in the background.

    start          fetch once; a failure stops the start-up (unless ``lazy``), naming the URL and the reason
    refresh loop   fetch again before the copy expires (its Cache-Control max-age, default 10 minutes);
                   a failure keeps the keys already fetched and retries with a growing delay
    unknown kid    fetch again at once, the request waiting for it; concurrent requests share one fetch, and no
                   second fetch for an unknown kid happens within a minute of the last

Fetches go through the gateway's own HTTP client, never a blocking call. Time comes from an injectable ``Clock``
so that tests move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from ..upstream.client import Pool

log = logging.getLogger("gateway.jwt")

DEFAULT_MAX_AGE = 600.0  # without a Cache-Control max-age
MIN_MAX_AGE, MAX_MAX_AGE = 30.0, 86400.0  # a max-age of 0 must not turn into a fetch loop, nor 1 year into never
REFRESH_AT = 0.8  # of the max-age: the next copy is fetched before this one expires
UNKNOWN_KID_COOLDOWN = 60.0
RETRY_FIRST, RETRY_MAX = 10.0, 300.0  # after a failed refresh
FETCH_TIMEOUT = 10.0  # the whole fetch, body included
MAX_BYTES = 512 * 1024
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(no-cache|no-store)\b", re.IGNORECASE)
# which JWK a token's alg may use: RSA keys for RS*/PS*, the matching curve for ES*, Ed25519/Ed448 for EdDSA
_FITS: dict[str, Callable[[dict[str, Any]], bool]] = {
    **{alg: (lambda k: k.get("kty") == "RSA") for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": lambda k: k.get("kty") == "EC" and k.get("crv") == "P-256",
    "ES384": lambda k: k.get("kty") == "EC" and k.get("crv") == "P-384",
    "ES512": lambda k: k.get("kty") == "EC" and k.get("crv") == "P-521",
    "EdDSA": lambda k: k.get("kty") == "OKP" and k.get("crv") in ("Ed25519", "Ed448"),
}


class JwksUnavailable(Exception):
    """The key set could not be fetched (or held no usable key); ``str()`` is one line without any secret."""


class Clock:
    """Monotonic seconds and a way to wait; tests give the KeySet one they move by hand."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(seconds)


class KeySet:
    """The verification keys of one JWKS URL, by ``kid`` and then by algorithm."""

    def __init__(self, url: str, algorithms: tuple[str, ...], *, clock: Clock | None = None,
                 timeout: float = FETCH_TIMEOUT) -> None:
        self.url = url
        self.algorithms = algorithms
        self.clock = clock or Clock()
        self.timeout = timeout
        self._pool = Pool(url)
        self._keys: dict[str | None, dict[str, PyJWK]] = {}  # kid -> alg -> key
        self.count = 0  # usable keys in the set (a token without kid is accepted only when there is one)
        self.fetched_at: float | None = None
        self.generation = 0  # counts the successful fetches: what was verified with an older set is checked again
        self._next_refresh = 0.0
        self._retry = RETRY_FIRST
        self._last_unknown = float("-inf")
        self._inflight: asyncio.Task[None] | None = None

    # -- lookups -----------------------------------------------------------------------------------------------

    def knows(self, kid: str | None) -> bool:
        return kid in self._keys

    def key(self, kid: str | None, alg: str) -> PyJWK | None:
        """The key named ``kid`` usable with ``alg``; without a kid, the set's only key (None when it has several)."""
        if kid is None:
            if self.count != 1:
                return None
            (only,) = self._keys.values()
            return only.get(alg)
        return self._keys.get(kid, {}).get(alg)

    async def fetch_for_unknown_kid(self) -> bool:
        """A token names a key this set does not hold: fetch the set again at once, unless a fetch for an unknown kid
        already happened within the last minute. Concurrent callers share one fetch. True if a fetch was awaited."""
        if self._inflight is None:
            now = self.clock.now()
            if now - self._last_unknown < UNKNOWN_KID_COOLDOWN:
                return False
            self._last_unknown = now
        try:
            await self._fetch_shared()
        except JwksUnavailable as exc:
            log.warning("clients.jwt: %s", exc)
        return True

    # -- fetching ----------------------------------------------------------------------------------------------

    async def start(self, *, lazy: bool) -> None:
        """The first fetch, at start-up. Raises JwksUnavailable unless ``lazy`` (then it only warns)."""
        try:
            await self._fetch_shared()
        except JwksUnavailable as exc:
            if not lazy:
                raise
            self._next_refresh = self.clock.now() + self._retry
            log.warning("clients.jwt: %s; starting anyway (lazy: true): tokens are refused until it succeeds", exc)

    async def refresh_forever(self) -> None:
        """Fetch a new copy before the current one expires; after a failure, retry later and keep the old keys."""
        while True:
            delay = self._next_refresh - self.clock.now()
            if delay > 0:
                await self.clock.sleep(delay)
            if self._next_refresh > self.clock.now():
                continue  # another fetch (an unknown kid) renewed the copy meanwhile
            try:
                await self._fetch_shared()
            except Exception as exc:  # noqa: BLE001 - whatever failed, the keys held keep working and we retry
                reason = str(exc) if isinstance(exc, JwksUnavailable) else f"refreshing the JWKS failed: {exc!r}"
                held = f"keeping the {self.count} keys fetched before" if self.count else "no keys yet"
                log.warning("clients.jwt: %s; %s, next try in %.0fs", reason, held, self._retry)
                self._next_refresh = self.clock.now() + self._retry
                self._retry = min(self._retry * 2, RETRY_MAX)

    async def serve(self, app: web.Application, *, lazy: bool) -> AsyncIterator[None]:
        """The app's cleanup_ctx: the first fetch before serving, the refresh loop while serving, then close."""
        try:
            await self.start(lazy=lazy)
            refresher = asyncio.create_task(self.refresh_forever())
        except BaseException:
            await self._pool.close()
            raise
        try:
            yield
        finally:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
            await self._pool.close()

    async def _fetch_shared(self) -> None:
        """One fetch at a time: whoever comes while one is under way waits for that one. A caller that is cancelled
        (its client left) does not cancel the fetch the others wait for."""
        task = self._inflight
        if task is None:
            task = self._inflight = asyncio.create_task(self._fetch())
            task.add_done_callback(self._fetched)
        await asyncio.shield(task)

    def _fetched(self, task: asyncio.Task[None]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure is never logged as "never retrieved"

    async def _fetch(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._pool.request("GET", self.url, {"Accept": "application/json"}, None,
                                                    self.timeout)
                try:
                    if response.status != 200:
                        raise JwksUnavailable(f"cannot fetch the JWKS from {self.url}: it answered {response.status}")
                    body = await response.read(MAX_BYTES + 1)
                    cache_control = response.headers.get("Cache-Control", "")
                finally:
                    response.close()
        except TimeoutError:
            raise JwksUnavailable(f"cannot fetch the JWKS from {self.url}: no answer in {self.timeout:g}s") from None
        except (OSError, ValueError) as exc:  # ConnectionError, TLS errors, a header the client cannot write
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            raise JwksUnavailable(f"cannot fetch the JWKS from {self.url}: {reason}") from None
        if len(body) > MAX_BYTES:
            raise JwksUnavailable(f"the JWKS at {self.url} is larger than {MAX_BYTES // 1024} KiB")
        keys, count = self._parse(body)
        now = self.clock.now()
        self._keys, self.count, self.fetched_at = keys, count, now
        self.generation += 1
        self._next_refresh = now + max_age(cache_control) * REFRESH_AT
        self._retry = RETRY_FIRST
        log.info("clients.jwt: fetched %d keys from %s", count, self.url)

    def _parse(self, body: bytes) -> tuple[dict[str | None, dict[str, PyJWK]], int]:
        try:
            data = json.loads(body)
        except ValueError:
            raise JwksUnavailable(f"the JWKS at {self.url} is not JSON") from None
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise JwksUnavailable(f"the JWKS at {self.url} has no \"keys\" list")
        keys: dict[str | None, dict[str, PyJWK]] = {}
        count = 0
        for entry in entries:
            usable = _usable(entry, self.algorithms)
            kid = entry.get("kid") if isinstance(entry, dict) else None
            if not usable or (kid is not None and not isinstance(kid, str)) or kid in keys:
                continue  # another use (enc), another algorithm, a symmetric key, a kid seen twice: not ours
            keys[kid] = usable
            count += 1
        if not count:
            raise JwksUnavailable(f"the JWKS at {self.url} holds no key usable with {', '.join(self.algorithms)}")
        return keys, count


def _usable(entry: Any, algorithms: tuple[str, ...]) -> dict[str, PyJWK]:
    """The entry as a key for each allowed algorithm it fits. Its own ``alg``, when given, is the only one it may
    verify; a key meant for encryption (``use``/``key_ops``) or too weak (RSA under 2048 bits) is not used."""
    if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
        return {}
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return {}
    if any(part in entry for part in ("d", "p", "q", "k")):  # private or symmetric material has no place in a JWKS
        return {}
    out = {}
    for alg in algorithms:
        fits = _FITS.get(alg)  # an algorithm with no public key (HS*, none) never gets one
        if fits is None or entry.get("alg", alg) != alg or not fits(entry):
            continue
        try:
            key = PyJWK(entry, algorithm=alg)
        except (PyJWTError, ValueError, TypeError):
            continue
        if key.Algorithm.check_key_length(key.key):  # a message: below the minimum length for this algorithm
            continue
        out[alg] = key
    return out


def max_age(cache_control: str) -> float:
    """Seconds to keep the set: ``"public, max-age=3600"`` -> 3600.0, bounded to 30s .. 1 day; default 10 minutes."""
    if _NO_CACHE.search(cache_control):
        return MIN_MAX_AGE
    match = _MAX_AGE.search(cache_control)
    if match is None:
        return DEFAULT_MAX_AGE
    return min(max(float(match.group(1)), MIN_MAX_AGE), MAX_MAX_AGE)
