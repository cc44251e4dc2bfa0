"""Issue 7: a request is replayed only when RFC 9112 §9.3.1 allows it: an idempotent method, nothing of the answer.

The hostile upstream processes a request and then drops the connection without answering. Before the fix a POST
was sent again on each idle pooled connection in turn (processed 2, 4 and 11 times with 1, 3 and 10 idle ones).
"""

from __future__ import annotations

import asyncio

import pytest
from client_support import OK, WAIT, RawServer, get
from upstream_support import gateway, no_secret_logged  # noqa: F401  (no_secret_logged is an autouse fixture)

pytest_plugins = ["client_support"]

FORWARDS = """
forwards:
  svc/[...path]: { upstream: svc, path: "/{path}", methods: [GET, POST, PUT, PATCH, DELETE] }
"""


class Drops:
    """A raw upstream: GETs to /warm are answered once ``warm`` of them are in (so that many connections become
    idle in the client's pool); any other request is read whole, counted, and its connection dropped unanswered
    -- except on a connection that carried nothing before, which answers it (a fresh connection works)."""

    def __init__(self, warm: int) -> None:
        self.warm = warm
        self.arrived = 0
        self.all_in = asyncio.Event()
        self.processed: list[bytes] = []  # request lines of the requests the upstream acted on

    async def handle(self, server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while (head := await server.read_head(reader)) is not None:
            if head.startswith(b"GET ") and head.split(b" ")[1].split(b"?")[0].endswith(b"/warm"):
                self.arrived += 1
                if self.arrived >= self.warm:
                    self.all_in.set()
                await asyncio.wait_for(self.all_in.wait(), WAIT)
                writer.write(OK)
                served += 1
                continue
            if await server.read_body(reader, head) is None:
                return
            self.processed.append(head.split(b"\r\n")[0])
            server.changed()
            if served:
                return  # processed, then the connection dropped without a byte of answer
            writer.write(OK)
            served += 1


async def warm_up(pool, n: int) -> None:
    responses = await asyncio.gather(*(get(pool, "/warm") for _ in range(n)))
    assert [await r.read() for r in responses] == [b"ok"] * n
    assert len(pool._idle) == n


@pytest.mark.parametrize("idle", [1, 3, 10])
@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_a_non_idempotent_request_is_never_replayed_on_other_idle_connections(raw_server, pools, idle, method):
    drops = Drops(idle)
    server = await raw_server(drops.handle)
    pool = pools(server.port)
    await warm_up(pool, idle)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(get(pool, "/charge", method=method, body=b'{"amount": 100}'), WAIT)
    assert drops.processed == [f"{method} /charge HTTP/1.1".encode()]  # exactly once
    assert server.accepted == idle  # not even on a fresh connection


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS", "TRACE"])
async def test_an_idempotent_request_is_replayed_until_a_connection_answers(raw_server, pools, method):
    drops = Drops(3)
    server = await raw_server(drops.handle)
    pool = pools(server.port)
    await warm_up(pool, 3)
    response = await asyncio.wait_for(get(pool, "/item", method=method, body=b"v" if method == "PUT" else None), WAIT)
    assert await response.read() == b"ok"
    assert len(drops.processed) == 4  # the three stale connections, then a fresh one that answered
    assert server.accepted == 4


async def test_an_idempotent_request_is_not_replayed_once_part_of_the_answer_arrived(raw_server, pools):
    heads = 0

    async def half_answer(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal heads
        while await server.read_head(reader) is not None:
            heads += 1
            if heads == 1:
                writer.write(OK)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")  # something of the answer, then the connection drops
                return

    server = await raw_server(half_answer)
    pool = pools(server.port)
    assert await (await get(pool)).read() == b"ok"
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(get(pool, "/again"), WAIT)
    assert heads == 2
    assert server.accepted == 1


# --- through the gateway: `retries` is the one retry policy, and it never replays a POST or PATCH --------------


CHARGE_ROUTE = ("from gateway import forward\n"
                "async def POST(req):\n"
                "    return await forward(req, 'svc', '/charge', method=req.query['m'], json={'amount': 100})\n")


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize("how", ["forward-no-body", "forward-streamed-body", "handler-json"])
async def test_retries_in_the_config_never_replay_a_post_or_patch(raw_server, aiohttp_client, tmp_path, method, how):
    drops = Drops(3)
    server = await raw_server(drops.handle)
    client = await gateway(aiohttp_client, tmp_path, server.port, FORWARDS, retries=3, routes={"pay.py": CHARGE_ROUTE})
    warm = await asyncio.gather(*(client.get("/api/svc/warm") for _ in range(3)))
    assert [r.status for r in warm] == [200] * 3
    if how == "handler-json":  # forward(json=...): a body the gateway holds as bytes, and so could replay
        resp = await client.post(f"/api/pay?m={method}")
    else:
        resp = await client.request(method, "/api/svc/charge", data=b'{"amount": 100}' if "streamed" in how else None)
    assert resp.status == 502
    assert (await resp.json())["error"] == "upstream_unavailable"
    assert [line.split(b" ")[0] for line in drops.processed] == [method.encode()]


async def test_retries_in_the_config_replay_a_put_with_its_bytes(raw_server, aiohttp_client, tmp_path):
    """A PUT forwarded by a route handler with ``data=`` bytes: idempotent and replayable, so retried."""
    failures = 0

    async def flaky(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal failures
        while (head := await server.read_head(reader)) is not None:
            body = await server.read_body(reader, head)
            if failures < 2:
                failures += 1
                writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body or b""), body or b""))

    server = await raw_server(flaky)
    route = ("from gateway import forward\n"
             "async def POST(req):\n"
             "    return await forward(req, 'svc', '/thing', method='PUT', data=b'the-bytes')\n")
    client = await gateway(aiohttp_client, tmp_path, server.port, "", retries=2, routes={"thing.py": route})
    resp = await client.post("/api/thing")
    assert resp.status == 200
    assert await resp.read() == b"the-bytes"
    assert [h.split(b" ")[0] for h in server.heads] == [b"PUT"] * 3
