"""RedisState while Redis cannot be reached: local fallback or 503, logged once a minute, back when Redis is, and
the password in no log line, error or /readyz answer."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from redis_support import RedisServer, free_port

from gateway.app import build_table, create_app
from gateway.config import load_config
from gateway.errors import Unavailable
from gateway.state import Cached, Limit, limit_item
from gateway.state.shared import PREFIX, RedisState
from gateway.state.url import parse_state
from gateway.units import Rate

WAIT = 10.0
PASSWORD = "redis-TOPSECRET-pw-0a1b2c3d4e5f"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def lim(count: int = 2) -> Limit:
    return Limit(limit_item(Rate(count, 60.0)), ("route", "/api/x", "ip:203.0.113.9"))


async def until(check, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def down_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "cannot be reached" in r.getMessage()]


def no_password_anywhere(caplog: pytest.LogCaptureFixture) -> None:
    text = "\n".join(logging.Formatter("%(message)s").format(r) for r in caplog.records)
    assert PASSWORD not in text and PASSWORD[:10] not in text, text


async def test_down_at_start_falls_back_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    state = RedisState(parse_state(f"redis://:{PASSWORD}@127.0.0.1:{port}/0?timeout=200ms"), probe_every=60)
    try:
        assert await state.status() == "redis (unreachable: local fallback)"  # a PING, before any request
        verdicts = [await state.acquire([lim()], lock="c") for _ in range(3)]
        now = time.time()
        assert await state.cache_set("cache:k", Cached(200, (), b"x", now, now + 60))
        assert (await state.cache_get("cache:k")).body == b"x"  # this process's own cache meanwhile
        async with state.lock("k", wait=1):
            pass
    finally:
        await state.close()
    assert [v.admitted for v in verdicts] == [True, True, False]  # counted in this process, still exact here
    assert len(down_lines(caplog)) == 1
    assert down_lines(caplog)[0].startswith(f"state: Redis at redis://127.0.0.1:{port}/0 cannot be reached (")
    no_password_anywhere(caplog)


async def test_closed_answers_503_with_retry_after() -> None:
    state = RedisState(parse_state(f"redis://127.0.0.1:{free_port()}/0?timeout=200ms", "closed"), probe_every=60)
    try:
        for call in (lambda: state.acquire([lim()], lock="c"), lambda: state.cache_get("cache:k"),
                     lambda: state.window(lim())):
            with pytest.raises(Unavailable) as info:
                await call()
            assert (info.value.status, info.value.code, info.value.headers) == (503, "unavailable",
                                                                                {"Retry-After": "1"})
        assert await state.status() == "redis (unreachable: closed)"
    finally:
        await state.close()


async def test_logged_once_a_minute_and_back_when_redis_is(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    redis = RedisServer(tmp_path, password=PASSWORD)
    clock = Clock()
    state = RedisState(parse_state(f"{redis.url}?timeout=200ms"), clock=clock, probe_every=0.02)
    try:
        for _ in range(50):  # Redis is not started: 50 requests, one line
            await state.acquire([lim(1000)], lock="c")
        assert len(down_lines(caplog)) == 1
        clock.now += 61  # a minute later, the probe (still failing) says it once more
        await until(lambda: len(down_lines(caplog)) == 2, "the next minute's line")
        for _ in range(50):
            await state.acquire([lim(1000)], lock="c")
        assert len(down_lines(caplog)) == 2
        redis.start()
        await until(lambda: state.health.up, "the probe to find Redis")
        assert await state.status() == "redis"
        verdict = await state.acquire([lim(1000)], lock="c")
        assert verdict.windows[0].remaining == 999  # Redis's own count: the 100 counted locally stay local
        assert redis.command("EXISTS", f"{PREFIX}rl:{lim(1000).item.key_for(*lim().scope)}") == 1
    finally:
        await state.close()
        redis.stop()
    assert [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()] == [
        f"state: Redis at redis://127.0.0.1:{redis.port}/0 answers again: rate limits and the cache are shared again"]
    no_password_anywhere(caplog)


async def test_a_wrong_password_is_a_failure_that_shows_no_password(tmp_path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    redis = RedisServer(tmp_path, password=PASSWORD).start()
    wrong = f"redis://:{PASSWORD[::-1]}@127.0.0.1:{redis.port}/0?timeout=500ms"
    right = f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/0?timeout=500ms"
    bad, good = RedisState(parse_state(wrong), probe_every=60), RedisState(parse_state(right), probe_every=60)
    try:
        assert (await bad.acquire([lim()], lock="c")).admitted
        assert (await good.acquire([lim()], lock="c")).admitted
        assert await bad.status() == "redis (unreachable: local fallback)"
        assert await good.status() == "redis"
    finally:
        await bad.close()
        await good.close()
        redis.stop()
    assert "AuthenticationError" in down_lines(caplog)[0] or "WRONGPASS" in down_lines(caplog)[0]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert PASSWORD[::-1] not in text and PASSWORD[::-1][:10] not in text
    no_password_anywhere(caplog)


@pytest.mark.parametrize(("state", "expected"), [
    ("", "memory"),
    ("state: redis://:${REDIS_PASSWORD}@127.0.0.1:{port}/0?timeout=200ms\n", "redis (unreachable: local fallback)"),
    ("state: redis://:${REDIS_PASSWORD}@127.0.0.1:{port}/0?timeout=200ms\nstate_on_error: closed\n",
     "redis (unreachable: closed)"),
])
async def test_readyz_names_the_backend(tmp_path, aiohttp_client, state: str, expected: str) -> None:
    (tmp_path / "routes").mkdir()
    (tmp_path / "config.yaml").write_text("server:\n  prefix: /api\n" + state.replace("{port}", str(free_port())))
    config = load_config(tmp_path / "config.yaml", environ={"REDIS_PASSWORD": PASSWORD})
    client = await aiohttp_client(create_app(config, build_table(config)))
    resp = await client.get("/readyz")
    body = await resp.text()
    assert resp.status == 200  # ready: with local the gateway serves, with closed it answers 503 per request
    assert json.loads(body) == {"status": "ready", "state": expected}
    assert PASSWORD not in body
