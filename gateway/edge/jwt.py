"""End users' tokens (``clients.jwt``, SPEC §8): where a request carries one, and whether it is valid.

    token_of(request)   ``Authorization: Bearer <token>``, else the configured cookie, else None
    verify(token)       the verified claims, or InvalidToken naming the check that failed (never the token)

Security by construction: the algorithm comes from the configured list (never ``none`` nor HMAC, refused at load),
and must fit the key the token names (an RSA key never verifies an ES256 or HS256 token: no algorithm confusion);
``iss``, ``aud``, ``exp`` and ``sub`` are required, ``nbf`` and ``iat`` checked when present; keys come only from the
configured JWKS, never from the token (``jwk``, ``jku``, ``x5u`` headers are ignored).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
from aiohttp import web
from cachetools import LRUCache
from jwt import PyJWK

from ..config_jwt import JwtConfig
from ..errors import GatewayError, Unauthorized
from .jwks import Clock, JwksUnavailable, KeySet

MAX_TOKEN = 8192  # characters; identity providers' tokens are 1-4 KB (and aiohttp refuses a header past 8 KB)
VERIFIED = 4096  # tokens remembered as verified (a browser sends one token for its whole lifetime)
REQUIRED = ["exp", "iss", "aud", "sub"]  # sub: the identity every limit is counted on (SPEC §7)
_CHECKS: tuple[tuple[type[Exception], str], ...] = (  # most specific first: subclasses before their bases
    (jwt.ExpiredSignatureError, "the token has expired (exp)"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf or iat is in the future)"),
    (jwt.InvalidAudienceError, "the token's audience (aud) is not this API"),
    (jwt.InvalidIssuerError, "the token's issuer (iss) is not the configured issuer"),
    (jwt.InvalidSignatureError, "the token's signature is not valid"),
    (jwt.InvalidAlgorithmError, "the token's algorithm does not fit its key"),
    (jwt.InvalidIssuedAtError, "the token's issue time (iat) is not a number"),
    (jwt.exceptions.InvalidSubjectError, "the token's subject (sub) is not a string"),
    (jwt.DecodeError, "the token is malformed"),
)


class InvalidToken(Unauthorized):
    """401 with ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750); the message names the failed check."""

    def __init__(self, check: str) -> None:
        super().__init__(f"invalid token: {check}", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class MissingToken(Unauthorized):
    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class KeysUnavailable(GatewayError):
    """No key was ever fetched (``lazy: true`` and the identity provider still down): the token cannot be checked."""

    status, code = 503, "unavailable"

    def __init__(self) -> None:
        super().__init__("the identity provider's keys could not be fetched yet: try again shortly",
                         headers={"Retry-After": "10"})


class JwtVerifier:
    """Verifies tokens against one identity provider: its JWKS, issuer and audience."""

    def __init__(self, config: JwtConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.keys = KeySet(config.jwks_url, config.algorithms, clock=clock)
        self._algorithms = list(config.algorithms)
        self._audience = list(config.audience)
        self._options: Any = {"require": REQUIRED, "verify_signature": True, "enforce_minimum_key_length": True}
        # sha256(token) -> (claims, usable until, key set generation): a token verified once is not verified again
        # until it expires or the key set changes (a retired key's tokens stop at the next fetch)
        self._verified: LRUCache[bytes, tuple[dict[str, Any], float, int]] = LRUCache(VERIFIED)
        self.now: Callable[[], float] = time.time  # wall-clock seconds, as exp is (tests move it)

    def cleanup_ctx(self) -> Callable[[web.Application], AsyncIterator[None]]:
        """For ``app.cleanup_ctx``: the JWKS fetched before serving (start-up fails if it cannot be, unless
        ``lazy``), refreshed while serving. Raises JwksUnavailable out of the app's start-up."""
        return functools.partial(self.keys.serve, lazy=self.config.lazy)

    def token_of(self, request: web.Request) -> str | None:
        """The token the request carries: ``Authorization: Bearer`` first, else the cookie. A request carrying both
        is judged on the header alone (a bad header token is refused even beside a good cookie)."""
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        cookie = self.config.cookie
        if cookie is not None:
            return request.cookies.get(cookie) or None
        return None

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims once every check passed; raises InvalidToken (or KeysUnavailable) otherwise."""
        if len(token) > MAX_TOKEN:
            raise InvalidToken(f"the token is larger than {MAX_TOKEN} characters")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        known = self._verified.get(digest)
        if known is not None and known[2] == self.keys.generation:
            if self.now() >= known[1]:
                del self._verified[digest]
                raise InvalidToken("the token has expired (exp)")
            return copy.deepcopy(known[0])  # a handler may change its copy; the next request gets the original
        claims = await self._decode(token)
        self._verified[digest] = (claims, int(claims["exp"]) + self.config.leeway, self.keys.generation)
        return copy.deepcopy(claims)

    async def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the token is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidToken(f"the token's algorithm (alg) is not allowed: use {', '.join(self._algorithms)}")
        key = await self._key(header.get("kid"), alg)
        try:
            return jwt.decode(token, key, algorithms=self._algorithms, audience=self._audience,
                              issuer=self.config.issuer, leeway=self.config.leeway, options=self._options)
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token has no {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(next((text for kind, text in _CHECKS if isinstance(exc, kind)),
                                    "the token is not valid")) from None

    async def _key(self, kid: str | None, alg: str) -> PyJWK:
        keys = self.keys
        if not keys.count or (kid is not None and not keys.knows(kid)):
            await keys.fetch_for_unknown_kid()  # a rotated key appears in a fresh copy (at most once a minute)
        if not keys.count:
            raise KeysUnavailable()
        if kid is None and keys.count > 1:
            raise InvalidToken("the token names no key (kid) and the identity provider has several")
        if kid is not None and not keys.knows(kid):
            raise InvalidToken("the token's signing key (kid) is unknown to the identity provider")
        key = keys.key(kid, alg)
        if key is None:
            raise InvalidToken(f"the token's algorithm ({alg}) does not fit its key")
        return key


def jwt_verifier(config: JwtConfig | None, *, clock: Clock | None = None) -> JwtVerifier | None:
    """The verifier for ``clients.jwt``, or None when it is not configured."""
    return None if config is None else JwtVerifier(config, clock=clock)


__all__ = ["InvalidToken", "JwksUnavailable", "JwtVerifier", "KeysUnavailable", "MissingToken", "jwt_verifier"]
