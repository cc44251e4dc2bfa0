"""The JWKS cache against a real key server on 127.0.0.1: start-up fetch, refresh before max-age, unknown-kid fetch
(once, shared, then a minute's cooldown), rotation, and an identity provider that goes down. Time is a FakeClock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from jwt_support import AUDIENCE, ISSUER, FakeClock, Idp, claims, ec_key, public_jwk, rsa_key, sign
from upstream_support import free_port

from gateway.config_jwt import JwtConfig
from gateway.edge.jwks import JwksUnavailable, KeySet, max_age
from gateway.edge.jwt import InvalidToken, JwtVerifier, KeysUnavailable


@contextlib.asynccontextmanager
async def running(idp: Idp, clock: FakeClock, *, lazy: bool = False, **config: Any) -> AsyncIterator[JwtVerifier]:
    """A verifier whose key set was started as the app starts it: first fetch, then the refresh loop."""
    verifier = JwtVerifier(JwtConfig(idp.url, ISSUER, (AUDIENCE,), lazy=lazy, **config), clock=clock)
    context = verifier.cleanup_ctx()(None)  # type: ignore[arg-type] - the app is not used
    await context.__anext__()
    try:
        yield verifier
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await context.__anext__()


@pytest.fixture
async def idp(aiohttp_server: Any) -> Idp:
    server = Idp()
    await server.serve(aiohttp_server)
    return server


async def test_start_fetches_once_and_keys_of_every_kind_verify(idp: Idp) -> None:
    async with running(idp, FakeClock()) as verifier:
        assert idp.fetches == 1
        for kid in ("rsa-1", "ec-1", "ed-1"):
            assert (await verifier.verify(idp.token(kid, sub=f"user-{kid}")))["sub"] == f"user-{kid}"
        assert idp.fetches == 1  # verifying needs no fetch


@pytest.mark.parametrize(("cache_control", "refresh_after"), [
    ("max-age=100", 80.0),
    ("public, max-age=3600, must-revalidate", 2880.0),
    (None, 480.0),  # no Cache-Control: 10 minutes
    ("no-store", 24.0),  # never less than 30 seconds
    ("max-age=0", 24.0),
    ("max-age=99999999", 69120.0),  # never more than a day
])
async def test_the_set_is_fetched_again_before_its_max_age(idp: Idp, cache_control: str | None,
                                                           refresh_after: float) -> None:
    idp.cache_control = cache_control
    clock = FakeClock()
    start = clock.now()
    async with running(idp, clock):
        assert await clock.next_wake() == start + refresh_after
        clock.advance(refresh_after - 1)
        assert idp.fetches == 1 and await clock.next_wake() == start + refresh_after
        clock.advance(1)
        await idp.wait_fetches(2)
        assert await clock.next_wake() == start + 2 * refresh_after  # and again one max-age later


async def test_an_unknown_kid_is_fetched_at_once_then_not_again_within_a_minute(idp: Idp) -> None:
    clock = FakeClock()
    async with running(idp, clock) as verifier:
        idp.keys.append(public_jwk(rsa_key("b"), "rsa-2", "RS256"))  # rotated in after our fetch
        token = sign(rsa_key("b"), "RS256", "rsa-2", claims(sub="rotated"))
        assert (await verifier.verify(token))["sub"] == "rotated"  # the request waited for the fetch
        assert idp.fetches == 2
        for kid in ("nobody-1", "nobody-2"):
            forged = sign(rsa_key("c"), "RS256", kid, claims())
            with pytest.raises(InvalidToken, match=r"signing key \(kid\) is unknown"):
                await verifier.verify(forged)
        assert idp.fetches == 2  # within the minute: no fetch for another unknown kid
        clock.advance(59)
        with pytest.raises(InvalidToken, match="unknown"):
            await verifier.verify(sign(rsa_key("c"), "RS256", "nobody-3", claims()))
        assert idp.fetches == 2
        clock.advance(1)
        with pytest.raises(InvalidToken, match="unknown"):
            await verifier.verify(sign(rsa_key("c"), "RS256", "nobody-4", claims()))
        assert idp.fetches == 3  # a minute later: one more


async def test_concurrent_unknown_kids_share_one_fetch(idp: Idp) -> None:
    async with running(idp, FakeClock()) as verifier:
        idp.keys.append(public_jwk(ec_key("b"), "ec-2", "ES256"))
        idp.gate = asyncio.Event()  # the identity provider is slow: every request arrives while it fetches
        good = [sign(ec_key("b"), "ES256", "ec-2", claims(sub=f"u{i}")) for i in range(10)]
        bad = [sign(ec_key("c"), "ES256", f"unknown-{i}", claims()) for i in range(10)]
        tasks = [asyncio.create_task(verifier.verify(t)) for t in good + bad]
        await idp.wait_fetches(2)
        await asyncio.sleep(0)  # let every task reach the shared fetch (they are all waiting on it)
        idp.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [r["sub"] for r in results[:10]] == [f"u{i}" for i in range(10)]  # type: ignore[index]
        assert all(isinstance(r, InvalidToken) for r in results[10:])
        assert idp.fetches == 2  # 20 requests, one fetch


async def test_a_caller_that_leaves_does_not_cancel_the_fetch_others_wait_for(idp: Idp) -> None:
    async with running(idp, FakeClock()) as verifier:
        idp.keys.append(public_jwk(rsa_key("b"), "rsa-2", "RS256"))
        idp.gate = asyncio.Event()
        token = sign(rsa_key("b"), "RS256", "rsa-2", claims())
        leaver = asyncio.create_task(verifier.verify(token))
        stayer = asyncio.create_task(verifier.verify(token))
        await idp.wait_fetches(2)
        leaver.cancel()
        idp.gate.set()
        assert (await stayer)["sub"] == "user_1"
        assert leaver.cancelled() and idp.fetches == 2


async def test_rotation_old_and_new_kid_both_valid_during_overlap_then_old_retired(idp: Idp) -> None:
    clock = FakeClock()
    async with running(idp, clock) as verifier:
        old = idp.token("rsa-1", sub="old")
        idp.keys.append(public_jwk(rsa_key("b"), "rsa-2", "RS256"))
        new = sign(rsa_key("b"), "RS256", "rsa-2", claims(sub="new"))
        assert (await verifier.verify(new))["sub"] == "new"
        assert (await verifier.verify(old))["sub"] == "old"  # overlap: both keys published
        idp.keys = [k for k in idp.keys if k["kid"] != "rsa-1"]  # the provider retires the old key
        clock.advance(480)  # the background refresh picks that up
        await idp.wait_fetches(3)
        await clock.next_wake()
        with pytest.raises(InvalidToken, match="unknown"):
            await verifier.verify(old)
        assert (await verifier.verify(new))["sub"] == "new"


async def test_keys_already_fetched_keep_working_while_the_provider_is_down(idp: Idp,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "gateway.jwt")
    clock = FakeClock()
    async with running(idp, clock) as verifier:
        idp.status = 503
        start = clock.now()
        clock.advance(480)
        await idp.wait_fetches(2)
        assert await clock.next_wake() == start + 480 + 10  # retried soon, then less and less often
        clock.advance(10)
        await idp.wait_fetches(3)
        assert await clock.next_wake() == start + 480 + 10 + 20
        assert (await verifier.verify(idp.token("ec-1")))["sub"] == "user_1"
        assert "answered 503" in caplog.text and "keeping the 3 keys" in caplog.text
        await idp.server.close()  # and now nothing listens at all
        clock.advance(20)
        await clock.next_wake()
        assert (await verifier.verify(idp.token("rsa-1")))["sub"] == "user_1"
        with pytest.raises(InvalidToken, match="unknown"):  # an unknown kid's fetch fails too: still one clear 401
            await verifier.verify(sign(rsa_key("c"), "RS256", "other", claims()))


@pytest.mark.parametrize(("setup", "reason"), [
    ({"status": 500}, "answered 500"),
    ({"body": b"<html>not json</html>"}, "is not JSON"),
    ({"body": b'{"nokeys": []}'}, 'has no "keys" list'),
    ({"body": b'{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h", "alg": "HS256"}]}'}, "no key usable"),
    ({"body": b"{" + b" " * 600_000 + b"}"}, "larger than 512 KiB"),
])
async def test_start_up_fails_with_one_line_when_the_set_cannot_be_had(idp: Idp, setup: dict[str, Any],
                                                                       reason: str) -> None:
    for name, value in setup.items():
        setattr(idp, name, value)
    keys = KeySet(idp.url, ("RS256",), clock=FakeClock())
    with pytest.raises(JwksUnavailable) as info:
        await keys.start(lazy=False)
    message = str(info.value)
    assert reason in message and idp.url in message and "\n" not in message


async def test_start_up_fails_when_nothing_listens_and_when_the_provider_never_answers(idp: Idp) -> None:
    url = f"http://127.0.0.1:{await free_port()}/jwks.json"
    with pytest.raises(JwksUnavailable, match="cannot fetch the JWKS from http://127.0.0.1:.*: "):
        await KeySet(url, ("RS256",)).start(lazy=False)
    idp.gate = asyncio.Event()  # never set: the provider accepts and then says nothing
    with pytest.raises(JwksUnavailable, match="no answer in 0.2s"):
        await KeySet(idp.url, ("RS256",), timeout=0.2).start(lazy=False)
    idp.gate.set()


async def test_lazy_starts_without_keys_answers_503_then_verifies_once_the_provider_is_back(idp: Idp) -> None:
    idp.status = 502
    clock = FakeClock()
    async with running(idp, clock, lazy=True) as verifier:
        token = idp.token("rsa-1")
        with pytest.raises(KeysUnavailable):  # first token: one more try, which fails: 503, not a 401
            await verifier.verify(token)
        assert idp.fetches == 2
        with pytest.raises(KeysUnavailable):  # within the minute: no new fetch per request
            await verifier.verify(token)
        assert idp.fetches == 2
        idp.status = 200
        clock.advance(await clock.next_wake() - clock.now())  # the background retry
        await idp.wait_fetches(3)
        await clock.next_wake()
        assert (await verifier.verify(token))["sub"] == "user_1"


@pytest.mark.parametrize(("entry", "usable"), [
    (public_jwk(rsa_key(), "k", "RS256"), True),
    (public_jwk(rsa_key(), "k", None), True),  # no alg: the key type decides
    (public_jwk(rsa_key(), "k", "RS256", use="enc"), False),  # an encryption key (Keycloak publishes one)
    (public_jwk(rsa_key(), "k", "RS256", key_ops=["encrypt"]), False),
    (public_jwk(rsa_key(), "k", "PS256"), False),  # its own alg is not one the config allows
    (public_jwk(ec_key(), "k", "RS256"), False),  # an EC key claiming RSA
    ({**public_jwk(rsa_key(), "k", "RS256"), "d": "AAAA"}, False),  # private material
])
async def test_which_jwks_entries_are_used(idp: Idp, entry: dict[str, Any], usable: bool) -> None:
    idp.keys = [entry, public_jwk(ec_key(), "other", "ES256")]
    keys = KeySet(idp.url, ("RS256", "ES256"), clock=FakeClock())
    await keys.start(lazy=False)
    assert (keys.key("k", "RS256") is not None) is usable
    assert keys.key("k", "ES256") is None


async def test_an_rsa_key_under_2048_bits_is_not_used(idp: Idp) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    idp.keys = [public_jwk(weak, "weak", "RS256")]
    with pytest.raises(JwksUnavailable, match="no key usable"):
        await KeySet(idp.url, ("RS256",), clock=FakeClock()).start(lazy=False)


def test_max_age_reads_cache_control() -> None:
    assert max_age('public, max-age="120"') == 120.0
    assert max_age("s-maxage=5, max-age=45") == 45.0
    assert max_age("") == 600.0
    assert max_age("private, no-cache") == 30.0


async def test_a_verified_token_is_remembered_until_it_expires_or_the_key_set_changes(idp: Idp) -> None:
    clock = FakeClock()
    async with running(idp, clock) as verifier:
        token = idp.token("rsa-1", sub="remembered", roles=["a"])
        first = await verifier.verify(token)
        first["roles"].append("admin")  # a handler changing its claims changes nothing for the next request
        assert (await verifier.verify(token))["roles"] == ["a"]
        idp.keys = [k for k in idp.keys if k["kid"] != "rsa-1"]  # the provider retires the key ...
        assert (await verifier.verify(token))["sub"] == "remembered"  # ... which the gateway learns at its next fetch
        clock.advance(480)
        await idp.wait_fetches(2)
        await clock.next_wake()
        with pytest.raises(InvalidToken, match="unknown"):  # a new key set: every token is checked again
            await verifier.verify(token)

        other = idp.token("ec-1", exp=int(verifier.now()) + 100)
        assert (await verifier.verify(other))["sub"] == "user_1"
        real = verifier.now
        verifier.now = lambda: real() + 100 + 30  # past exp + leeway: the remembered token has expired
        with pytest.raises(InvalidToken, match="expired"):
            await verifier.verify(other)
