"""An identity provider on 127.0.0.1 for the JWT tests: keys made here, a real JWKS server, tokens signed by hand.

    idp = Idp()                                   # RSA, EC P-256 and Ed25519 keys, one JWKS entry each
    url = await idp.serve(aiohttp_server)         # http://127.0.0.1:<port>/jwks.json; idp.fetches counts requests
    token = idp.token(sub="user_1")               # RS256, kid "rsa-1", valid iss/aud/exp
    clock = FakeClock()                           # KeySet time that tests move instead of sleeping
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.example.test/"
AUDIENCE = "my-api"


@functools.cache
def rsa_key(name: str = "a") -> rsa.RSAPrivateKey:
    """2048-bit RSA keys are slow to make: each name is made once per test run."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(name: str = "a") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def ed_key(name: str = "a") -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(private: Any, kid: str | None, alg: str | None = None, **extra: Any) -> dict[str, Any]:
    """The JWKS entry for ``private``'s public half."""
    public = private.public_key()
    if isinstance(private, rsa.RSAPrivateKey):
        entry = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        entry = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        entry = OKPAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        entry["kid"] = kid
    if alg is not None:
        entry["alg"] = alg
    entry["use"] = "sig"
    entry.update(extra)
    return entry


def pem(private: Any) -> bytes:
    public = private.public_key()
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for the test issuer and audience; ``name=None`` removes a claim."""
    now = int(time.time())
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user_1", "iat": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(private: Any, alg: str, kid: str | None, payload: dict[str, Any], **header: Any) -> str:
    headers = {"kid": kid, **header} if kid is not None else dict(header)
    return jwt.encode(payload, private, algorithm=alg, headers=headers or None)


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(header)}.{b64(payload)}.{b64(signature)}"


def hmac_token(secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """An HS256 token made by hand (PyJWT refuses a PEM as an HMAC secret): the algorithm-confusion forgery."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


class Idp:
    """A JWKS server whose key set, status and Cache-Control the test changes; it counts the fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = [
            public_jwk(rsa_key(), "rsa-1", "RS256"),
            public_jwk(ec_key(), "ec-1", "ES256"),
            public_jwk(ed_key(), "ed-1", "EdDSA"),
        ]
        self.status = 200
        self.cache_control: str | None = "max-age=600"
        self.body: bytes | None = None  # instead of the key set
        self.fetches = 0
        self.gate: asyncio.Event | None = None  # when set, a fetch waits for it (a slow identity provider)
        self._fetched = asyncio.Event()
        self.url = ""

    async def serve(self, aiohttp_server: Any) -> str:
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        server = await aiohttp_server(app)
        self.server = server
        self.url = f"http://127.0.0.1:{server.port}/jwks.json"
        return self.url

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        self._fetched.set()
        if self.gate is not None:
            await self.gate.wait()
        headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
        if self.status != 200:
            return web.Response(status=self.status, text="down", headers=headers)
        body = self.body if self.body is not None else json.dumps({"keys": self.keys}).encode()
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def wait_fetches(self, count: int, timeout: float = 5.0) -> None:
        """Until the server has answered ``count`` fetches in all (bounded: fails after ``timeout`` seconds)."""
        async with asyncio.timeout(timeout):
            while self.fetches < count:
                self._fetched.clear()
                await self._fetched.wait()

    def token(self, kid: str = "rsa-1", **overrides: Any) -> str:
        private, alg = {"rsa-1": (rsa_key(), "RS256"), "ec-1": (ec_key(), "ES256"), "ed-1": (ed_key(), "EdDSA")}[kid]
        return sign(private, alg, kid, claims(**overrides))


class FakeClock:
    """Monotonic time that only moves when the test says so; ``sleep`` returns when ``advance`` passes its end."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._asleep = asyncio.Event()

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.t + seconds, future))
        self._asleep.set()
        return future

    async def next_wake(self, timeout: float = 5.0) -> float:
        """The time at which the earliest pending sleeper wakes, waiting (bounded) for one to go to sleep."""
        async with asyncio.timeout(timeout):
            while not [s for s in self.sleepers if not s[1].done()]:
                self._asleep.clear()
                await self._asleep.wait()
        return min(t for t, f in self.sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        self.t += seconds
        for wake, future in self.sleepers:
            if wake <= self.t and not future.done():
                future.set_result(None)
        self.sleepers = [(w, f) for w, f in self.sleepers if not f.done()]
