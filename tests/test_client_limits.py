"""Issue 7: what an upstream can make the gateway hold is bounded. The response head (size, header lines, interim
answers, trailers), the connections per upstream (a cap, with a bounded wait), idle connections (they expire),
and decoded bytes in every buffered read.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import tracemalloc
import zlib

import pytest
from client_support import OK, WAIT, RawServer, fetch, gateway_with, get, keep_alive
from upstream_support import gateway, no_secret_logged  # noqa: F401  (no_secret_logged is an autouse fixture)

from gateway.upstream import codings
from gateway.upstream.client import MAX_HEAD, MAX_HEADERS, InvalidResponse, PoolFull
from gateway.upstream.response import HIGH_WATER

pytest_plugins = ["client_support"]
FLOOD = 64 * 1024 * 1024  # the most a flooding server writes: far over every limit, bounded all the same


def flooding(start: bytes, line: bytes, *, answer: bytes = b"") -> tuple[dict[str, int], object]:
    """A raw handler writing ``start`` then ``line`` over and over (up to FLOOD bytes) until the client hangs up."""
    sent = {"bytes": 0}

    async def handle(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(start)
        try:
            while sent["bytes"] < FLOOD:
                writer.write(line * 64)
                sent["bytes"] += len(line) * 64
                await writer.drain()
            writer.write(answer)
            await writer.drain()
        except ConnectionError:
            pass
        await server.wait_eof(reader)

    return sent, handle


@pytest.mark.parametrize(("start", "line"), [
    (b"HTTP/1.1 200 OK\r\n", b"X-Flood: 1\r\n"),  # 1.5 M headers took the RSS to 750 MB before the fix
    (b"HTTP/1.1 200 OK\r\nX-Big: ", b"a" * 1024),  # one endless header value
    (b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"),  # endless interim answers
], ids=["many-headers", "one-endless-value", "endless-1xx"])
async def test_an_endless_head_is_an_invalid_response_and_the_flood_stops(raw_server, pools, start, line):
    sent, handle = flooding(start, line)
    server = await raw_server(handle)
    pool = pools(server.port)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidResponse):
            await asyncio.wait_for(get(pool), WAIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    await server.until(lambda: server.eofs == 1)  # the client hung up on the flood
    assert sent["bytes"] < FLOOD
    assert peak < 4 * 1024 * 1024  # the limit (64 KiB), a read or two: never the flood


async def test_an_endless_trailer_section_is_an_invalid_response(raw_server, pools):
    sent, handle = flooding(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: ",
                            b"t" * 1024)
    server = await raw_server(handle)
    pool = pools(server.port)
    response = await get(pool)
    with pytest.raises(InvalidResponse):
        await asyncio.wait_for(response.read(), WAIT)
    await server.until(lambda: server.eofs == 1)
    assert sent["bytes"] < FLOOD


@pytest.mark.parametrize(("count", "ok"), [(MAX_HEADERS, True), (MAX_HEADERS + 1, False)])
async def test_the_header_line_limit(raw_server, pools, count, ok):
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-N%d: %d\r\n" % (i, i) for i in range(count - 1))
    server = await raw_server(keep_alive(head + b"Content-Length: 2\r\n\r\nok"))
    pool = pools(server.port)
    if ok:
        assert await fetch(pool) == b"ok"
    else:
        with pytest.raises(InvalidResponse):
            await get(pool)


@pytest.mark.parametrize(("size", "ok"), [(MAX_HEAD - 1024, True), (MAX_HEAD + 1, False)])
async def test_the_head_size_limit(raw_server, pools, size, ok):
    filler = b"X-Fill: " + b"f" * size + b"\r\n"  # arrives in one piece, with the rest of the head
    server = await raw_server(keep_alive(b"HTTP/1.1 200 OK\r\n" + filler + b"Content-Length: 2\r\n\r\nok"))
    pool = pools(server.port)
    if ok:
        assert await fetch(pool) == b"ok"
        assert len(pool._idle) == 1
    else:
        with pytest.raises(InvalidResponse):
            await get(pool)


async def test_the_limits_are_pool_options(raw_server, pools):
    head = b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 10 + b"Content-Length: 2\r\n\r\nok"
    server = await raw_server(keep_alive(head))
    assert await fetch(pools(server.port, max_headers=11)) == b"ok"
    with pytest.raises(InvalidResponse):
        await get(pools(server.port, max_headers=10))
    with pytest.raises(InvalidResponse):
        await get(pools(server.port, max_head=64))


# --- the connection cap -------------------------------------------------------------------------------------


def held(release: asyncio.Event):
    async def handle(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_head(reader) is not None:
            await asyncio.wait_for(release.wait(), WAIT)
            writer.write(OK)

    return handle


async def one_held_call(raw_server, pools, release: asyncio.Event):
    """A pool of one connection whose first call the upstream holds until ``release`` is set."""
    server = await raw_server(held(release))
    pool = pools(server.port, max_connections=1)
    first = asyncio.create_task(fetch(pool, timeout=WAIT))
    await server.until(lambda: len(server.heads) == 1)
    return server, pool, first


async def until_waiting(pool, count: int) -> None:
    async with asyncio.timeout(WAIT):
        while len(pool._waiters) < count:
            await asyncio.sleep(0)


async def test_calls_over_the_cap_wait_for_a_free_connection(raw_server, pools):
    release = asyncio.Event()
    server = await raw_server(held(release))
    pool = pools(server.port, max_connections=2)
    calls = [asyncio.create_task(fetch(pool, timeout=WAIT)) for _ in range(6)]
    await server.until(lambda: len(server.heads) == 2)
    await until_waiting(pool, 4)
    assert server.accepted == 2
    release.set()
    assert await asyncio.gather(*calls) == [b"ok"] * 6
    assert server.accepted == 2  # the waiting calls were handed the two connections in turn
    assert len(server.heads) == 6


async def test_a_wait_longer_than_the_timeout_is_pool_full_and_nothing_is_sent(raw_server, pools):
    release = asyncio.Event()
    server, pool, first = await one_held_call(raw_server, pools, release)
    start = time.monotonic()
    with pytest.raises(PoolFull) as caught:
        await get(pool, "/second", timeout=0.3)
    assert time.monotonic() - start >= 0.3
    assert isinstance(caught.value, ConnectionError)
    assert "busy" in str(caught.value)
    release.set()
    assert await first == b"ok"
    assert len(server.heads) == 1  # the second call never reached the upstream
    assert not pool._waiters


async def test_a_cancelled_waiter_gives_up_its_turn(raw_server, pools):
    release = asyncio.Event()
    server, pool, first = await one_held_call(raw_server, pools, release)
    gone = asyncio.create_task(fetch(pool, "/gone", timeout=WAIT))
    after = asyncio.create_task(fetch(pool, "/after", timeout=WAIT))
    await until_waiting(pool, 2)
    gone.cancel()
    release.set()
    assert await first == b"ok"
    assert await after == b"ok"
    assert [h.split(b" ")[1] for h in server.heads] == [b"/", b"/after"]
    assert server.accepted == 1


async def test_a_closed_connection_frees_its_place_for_a_waiter(raw_server, pools):
    release = asyncio.Event()

    async def close_each(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        await asyncio.wait_for(release.wait(), WAIT)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")

    server = await raw_server(close_each)
    pool = pools(server.port, max_connections=1)
    calls = [asyncio.create_task(fetch(pool, timeout=WAIT)) for _ in range(3)]
    await server.until(lambda: len(server.heads) == 1)
    release.set()
    assert await asyncio.gather(*calls) == [b"ok"] * 3
    assert server.accepted == 3


async def test_the_gateway_answers_503_with_retry_after_when_every_connection_stays_busy(
    raw_server, aiohttp_client, tmp_path, caplog
):
    done = asyncio.Event()

    async def streaming(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(int(WAIT / 0.05)):  # a deliberately slow stream: busy, never silent for the timeout
            writer.write(b"1\r\n.\r\n")
            if done.is_set():
                break
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await server.wait_eof(reader)

    server = await raw_server(streaming)
    client = await gateway_with(aiohttp_client, tmp_path, server.port, "    max_connections: 1", timeout="0.5s")
    first = await client.get("/api/svc/stream")
    assert first.status == 200
    second = await client.get("/api/svc/other")
    body = await second.read()
    assert second.status == 503
    assert json.loads(body)["error"] == "unavailable"
    assert second.headers["Retry-After"] == "1"
    done.set()
    assert (await first.read()).startswith(b".")
    assert server.accepted == 1 and len(server.heads) == 1
    logged = [r.getMessage() for r in caplog.records if r.name == "gateway.upstream"]
    assert any("upstream svc failed" in line and "busy" in line for line in logged), logged


# --- idle connections expire ----------------------------------------------------------------------------------


async def test_an_idle_connection_is_closed_once_it_expires(raw_server, pools):
    server = await raw_server(keep_alive())
    pool = pools(server.port, idle_timeout=0.2)
    assert await fetch(pool) == b"ok"
    assert len(pool._idle) == 1
    await server.until(lambda: server.eofs == 1)  # closed by the client, with no request on it
    assert pool._idle == []
    assert await fetch(pool) == b"ok"
    assert server.accepted == 2


async def test_an_expired_idle_connection_is_never_used(raw_server, pools):
    server = await raw_server(keep_alive())
    pool = pools(server.port)
    assert await fetch(pool) == b"ok"
    pool._idle[0].expires = 0  # as if its time had run out just before the sweep
    assert await fetch(pool) == b"ok"
    assert server.accepted == 2
    await server.until(lambda: server.eofs == 1)


@pytest.mark.parametrize(("keep_alive_header", "reused"), [
    (b"timeout=1", False),  # a second or less: too close to call, never reused
    (b"timeout=5, max=1", False),  # the last request the upstream takes on it
    (b"timeout=5, max=100", True),
    (b"max=50", True),
    (b"nonsense", True),
])
async def test_the_upstreams_keep_alive_header_is_respected(raw_server, pools, keep_alive_header, reused):
    server = await raw_server(keep_alive(b"HTTP/1.1 200 OK\r\nKeep-Alive: %s\r\nContent-Length: 2\r\n\r\nok"
                                         % keep_alive_header))
    pool = pools(server.port)
    assert await fetch(pool) == b"ok"
    assert len(pool._idle) == (1 if reused else 0)
    assert await fetch(pool) == b"ok"
    assert server.accepted == (1 if reused else 2)


async def test_a_keep_alive_timeout_expires_the_connection_before_the_upstream_would(raw_server, pools):
    server = await raw_server(keep_alive(b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2\r\nContent-Length: 2\r\n\r\nok"))
    pool = pools(server.port)  # idle_timeout 30s: the upstream's 2s (less a second of margin) decides
    assert await fetch(pool) == b"ok"
    assert len(pool._idle) == 1
    await server.until(lambda: server.eofs == 1)
    assert pool._idle == []


# --- decoded bytes in buffered reads ----------------------------------------------------------------------------

BOMB_SIZE = 128 * 1024 * 1024  # zeros: 128 MiB decoded from about 128 KiB


@pytest.fixture(scope="module")
def bomb() -> bytes:
    packer = zlib.compressobj(9, wbits=31)
    zeros = bytes(1024 * 1024)
    return b"".join(packer.compress(zeros) for _ in range(BOMB_SIZE // len(zeros))) + packer.flush()


@pytest.fixture
def steps(monkeypatch) -> list[int]:
    """Every decoding step made, with the bytes it made."""
    made: list[int] = []
    step = codings.Decoder.step

    def counted(self) -> bytes:
        out = step(self)
        made.append(len(out))
        return out

    monkeypatch.setattr(codings.Decoder, "step", counted)
    return made


def bomb_answer(bomb: bytes, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 %b\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b" % (status, len(bomb), bomb)


@pytest.mark.parametrize("limit", [0, 1, 2048, 100_000])
async def test_read_with_a_limit_stops_decoding_once_the_limit_is_reached(raw_server, pools, bomb, steps, limit):
    server = await raw_server(keep_alive(bomb_answer(bomb)))
    pool = pools(server.port)
    response = await get(pool)
    data = await asyncio.wait_for(response.read(limit), WAIT)
    assert data == bytes(limit)
    assert sum(steps) < limit + 2 * codings.STEP  # decoding stopped right after the limit, not at 128 MiB
    response.close()


async def test_a_whole_body_read_is_capped_and_stops_decoding_there(raw_server, pools, bomb, steps):
    server = await raw_server(keep_alive(bomb_answer(bomb)))
    pool = pools(server.port, max_read=1024 * 1024)
    response = await get(pool)
    with pytest.raises(InvalidResponse):
        await asyncio.wait_for(response.read(), WAIT)
    assert sum(steps) < 1024 * 1024 + 2 * codings.STEP
    await server.until(lambda: server.eofs == 1)


async def test_a_whole_body_read_under_the_cap_is_read(raw_server, pools):
    body = gzip.compress(b"z" * 100_000)
    server = await raw_server(keep_alive(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)))
    pool = pools(server.port, max_read=100_000)
    assert await fetch(pool) == b"z" * 100_000


async def test_the_gateway_reads_little_of_a_5xx_bomb(raw_server, aiohttp_client, tmp_path, bomb, steps):
    server = await raw_server(keep_alive(bomb_answer(bomb, b"500 Internal Server Error")))
    client = await gateway(aiohttp_client, tmp_path, server.port)
    resp = await client.get("/api/svc/x")
    assert resp.status == 502
    assert sum(steps) < 4 * codings.STEP  # the 2 KiB it logs, not 128 MiB


# --- a pool a reload replaced -------------------------------------------------------------------------------------


async def test_a_retired_pool_closes_its_idle_connections_and_keeps_none(raw_server, pools):
    server = await raw_server(keep_alive())
    pool = pools(server.port)
    assert await fetch(pool) == b"ok"
    assert len(pool._idle) == 1 and pool.busy == 1
    pool.retire()
    assert pool._idle == [] and pool.busy == 0
    await server.until(lambda: server.eofs == 1)
    assert await fetch(pool) == b"ok"  # a request routed before the reload still gets its answer through it
    assert pool._idle == [] and pool.busy == 0  # and its connection is closed once the answer is read
    await server.until(lambda: server.eofs == 2)
    assert server.accepted == 2


async def test_a_retired_pool_still_hands_a_connection_to_a_call_waiting_for_one(raw_server, pools):
    release = asyncio.Event()
    server, pool, first = await one_held_call(raw_server, pools, release)
    second = asyncio.create_task(fetch(pool, "/second", timeout=WAIT))
    await until_waiting(pool, 1)
    pool.retire()
    release.set()
    assert await asyncio.gather(first, second) == [b"ok", b"ok"]
    assert server.accepted == 1  # the waiter was handed the first call's connection, not refused
    assert pool.busy == 0


async def test_a_body_that_came_whole_with_the_head_leaves_the_connection_reading(raw_server, pools):
    """A body over the high-water mark that arrived before it was read paused the connection's reading (when its
    last bytes came with that network read, it is also complete): read whole, the connection goes back to the pool
    reading again, and the next call on it gets its answer."""
    body = b"b" * (HIGH_WATER + 100)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    server = await raw_server(keep_alive(answer))
    pool = pools(server.port)
    response = await get(pool)
    async with asyncio.timeout(WAIT):
        while not response._paused:  # nothing read yet, and past the mark
            await asyncio.sleep(0)
    assert await asyncio.wait_for(response.read(), WAIT) == body
    assert await fetch(pool) == body
    assert server.accepted == 1
