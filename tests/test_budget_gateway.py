"""Token budgets through the gateway, against a fake model API on 127.0.0.1 (JSON and SSE answers with usage):
reserved before sending, settled from the usage (JSON or stream), charged when a client leaves, exact under
concurrency, per client and per forward, in the IETF RateLimit fields."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

from aiohttp import web
from model_support import WAIT, FakeModel
from upstream_support import ENV, UPSTREAM, assert_clean, gateway, no_secret_logged  # noqa: F401 - autouse

from gateway.app import build_table, create_app
from gateway.config import load_config
from gateway.keys import FACTS, STATE, Facts

FORWARDS = """
forwards:
  chat:
    upstream: svc
    path: /chat/completions
    methods: [POST]
    {extra}
    guard:
      allow: {{ model: [gpt-4o-mini] }}
      cap: {{ max_tokens: 100, n: 1 }}
      budget: {budget}
  responses:
    upstream: svc
    path: /responses
    methods: [POST]
    guard:
      cap: {{ max_output_tokens: 100 }}
      budget: {budget}
"""
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 100, "n": 1}  # sent upstream as it is
CHAT_BYTES = json.dumps(CHAT, separators=(",", ":")).encode()
COST = 100 + math.ceil(len(CHAT_BYTES) / 3)  # its reservation
JSON = {"Content-Type": "application/json"}


async def start(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path, budget: str = "10000/day",
                extra: str = "", server: str = "", timeout: str = "1s",
                facts: list[Facts] | None = None) -> tuple[Any, FakeModel]:
    model = FakeModel()
    port = await model.start(aiohttp_server)
    forwards = FORWARDS.format(budget=budget, extra=extra)
    if facts is None:
        client = await gateway(aiohttp_client, tmp_path, port, forwards, server=server, timeout=timeout)
    else:  # what the observe step will do: one Facts per request, read after the answer
        text = server + UPSTREAM.format(port=port, timeout=timeout, retries=0, forward_headers="[]",
                                        expose_headers="[]") + forwards
        (tmp_path / "config.yaml").write_text(text)
        (tmp_path / "routes").mkdir(exist_ok=True)
        config = load_config(tmp_path / "config.yaml", environ=ENV)
        app = create_app(config, build_table(config))

        @web.middleware
        async def observe(request: web.Request, handler: Any) -> web.StreamResponse:
            request[FACTS] = Facts(request.path)
            try:
                return await handler(request)
            finally:
                facts.append(request[FACTS])

        app.middlewares.append(observe)
        client = await aiohttp_client(app, auto_decompress=False)
    return client, model


def spent(client: Any, identity: str = "ip:127.0.0.1", forward: str = "chat") -> int:
    counter = client.server.app[STATE].counters.live(f"budget\n{forward}\n{identity}")
    return 0 if counter is None else int(counter[0])


def budget_left(resp: Any) -> int:
    fields = dict(item.strip().split(";", 1) for item in resp.headers["RateLimit"].split(","))
    return int(fields['"budget"'].split(";")[0].removeprefix("r="))


async def test_a_json_answer_is_settled_with_its_usage(aiohttp_server, aiohttp_client, tmp_path):
    facts: list[Facts] = []
    client, model = await start(aiohttp_server, aiohttp_client, tmp_path, facts=facts)
    resp = await client.post("/api/chat", json={"model": "gpt-4o-mini", "messages": MESSAGES})
    body = await resp.read()
    assert resp.status == 200, body
    assert json.loads(body)["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    assert resp.headers["RateLimit-Policy"] == '"budget";q=10000;w=86400'
    assert resp.headers["RateLimit"] == '"budget";r=9988;t=86400'
    assert spent(client) == 12
    model.usage = (100, 50)
    resp = await client.post("/api/chat", json={"model": "gpt-4o-mini", "messages": MESSAGES})
    assert budget_left(resp) == 10000 - 12 - 150
    assert [f.tokens for f in facts] == [12, 150]  # what the access log and the metrics read
    assert_clean(resp, await resp.read())


async def test_a_stream_asks_for_usage_and_the_added_chunk_never_reaches_the_client(aiohttp_server, aiohttp_client,
                                                                                     tmp_path):
    facts: list[Facts] = []
    client, model = await start(aiohttp_server, aiohttp_client, tmp_path, facts=facts)
    resp = await client.post("/api/chat", json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True})
    body = await resp.read()
    assert resp.status == 200
    assert model.bodies[0]["stream_options"] == {"include_usage": True}
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    docs = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert [d["choices"][0]["delta"].get("content") for d in docs] == ["Hel", "lo", None]
    assert all(d["choices"] for d in docs)  # the usage-only chunk is gone
    cost = 100 + math.ceil(len(model.raw[0]) / 3)
    assert resp.headers["RateLimit"] == f'"budget";r={10000 - cost};t=86400'  # sent before the usage was known
    assert spent(client) == 12
    assert facts[0].tokens == 12


async def test_the_clients_own_include_usage_is_respected(aiohttp_server, aiohttp_client, tmp_path):
    client, model = await start(aiohttp_server, aiohttp_client, tmp_path)
    sent = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    resp = await client.post("/api/chat", json=sent)
    body = await resp.read()
    assert model.bodies[0]["stream_options"] == {"include_usage": True}
    events = [json.loads(e.removeprefix(b"data: ")) for e in body.split(b"\n\n") if e and e != b"data: [DONE]"]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 12
    assert spent(client) == 12


async def test_a_client_that_leaves_mid_stream_is_charged_its_reservation(aiohttp_server, aiohttp_client, tmp_path):
    client, model = await start(aiohttp_server, aiohttp_client, tmp_path, timeout="10s")
    model.hang_after_first = True
    resp = await client.post("/api/chat", json={**CHAT, "stream": True})
    assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: ")
    resp.close()  # the client leaves before any usage came
    await asyncio.wait_for(model.cancelled.wait(), WAIT)  # the upstream call was stopped
    cost = 100 + math.ceil(len(model.raw[0]) / 3)
    assert spent(client) == cost


async def test_a_client_that_leaves_after_the_usage_is_charged_the_usage(aiohttp_server, aiohttp_client, tmp_path):
    client, model = await start(aiohttp_server, aiohttp_client, tmp_path, timeout="10s")
    model.hang_before_done = True
    resp = await client.post("/api/chat", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    while b'"choices": []' not in await resp.content.readuntil(b"\n\n"):
        pass
    resp.close()  # [DONE] never came
    await asyncio.wait_for(model.cancelled.wait(), WAIT)
    assert spent(client) == 12


async def test_fifty_concurrent_requests_cannot_overspend(aiohttp_server, aiohttp_client, tmp_path):
    """The budget holds 10 reservations and a bit: of 50 requests sent at once, exactly 10 reach the upstream, which
    holds them until the other 40 have their 429; once settled (1 token each) the budget has room again."""
    client, model = await start(aiohttp_server, aiohttp_client, tmp_path, budget=f"{10 * COST + COST - 1}/day",
                                timeout="10s")
    model.hold = asyncio.Event()
    model.expected = 10
    model.usage = (1, 0)

    async def call() -> int:
        resp = await client.post("/api/chat", data=CHAT_BYTES, headers={"Content-Type": "application/json"})
        await resp.read()
        return resp.status

    calls = [asyncio.ensure_future(call()) for _ in range(50)]
    await asyncio.wait_for(model.arrivals.wait(), WAIT)
    pending = set(calls)
    while sum(1 for c in calls if c.done() and c.result() == 429) < 40:  # all answered while 10 are held upstream
        finished, pending = await asyncio.wait(pending, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        assert finished, "the refusals never came"
    assert model.arrived == 10
    assert spent(client) == 10 * COST
    model.hold.set()
    statuses = await asyncio.wait_for(asyncio.gather(*calls), WAIT)
    assert sorted(statuses) == [200] * 10 + [429] * 40, statuses
    assert model.arrived == 10
    assert spent(client) == 10  # settled: 1 token each
    resp = await client.post("/api/chat", data=CHAT_BYTES, headers={"Content-Type": "application/json"})
    assert resp.status == 200


async def test_over_budget_is_429_rate_limited_with_retry_after_in_tokens(aiohttp_server, aiohttp_client, tmp_path):
    client, model = await start(aiohttp_server, aiohttp_client, tmp_path, budget=f"{COST + 20}/hour")
    model.usage = (20, 10)
    assert (await client.post("/api/chat", data=CHAT_BYTES, headers=JSON)).status == 200  # 30 spent: COST - 10 left
    resp = await client.post("/api/chat", data=CHAT_BYTES, headers=JSON)
    body = await resp.read()
    assert resp.status == 429
    assert json.loads(body) == {
        "error": "rate_limited",
        "message": f"the token budget of {COST + 20}/hour is used up (30 spent; this request may cost up to {COST}); "
                   "retry in 3600s"}
    assert resp.headers["Retry-After"] == "3600"
    assert resp.headers["RateLimit-Policy"] == f'"budget";q={COST + 20};w=3600'
    assert resp.headers["RateLimit"] == f'"budget";r={COST - 10};t=3600'
    assert_clean(resp, body)
    assert model.arrived == 1


async def test_budgets_are_per_client_and_per_forward(aiohttp_server, aiohttp_client, tmp_path):
    server = 'clients:\n  api_keys: ["client-key-one", "client-key-two"]\n'
    client, model = await start(aiohttp_server, aiohttp_client, tmp_path, budget=f"{COST}/day", server=server)
    one, two = {"X-API-Key": "client-key-one"}, {"X-API-Key": "client-key-two"}
    model.usage = (COST, 0)
    assert (await client.post("/api/chat", data=CHAT_BYTES, headers={**JSON, **one})).status == 200
    resp = await client.post("/api/chat", data=CHAT_BYTES, headers={**JSON, **one})
    assert resp.status == 429
    assert "client-key-one" not in resp.headers.get("RateLimit", "") + await resp.text()
    assert (await client.post("/api/chat", data=CHAT_BYTES, headers={**JSON, **two})).status == 200
    model.usage = (3, 4)
    resp = await client.post("/api/responses", json={"input": "hi"}, headers=one)  # another forward's budget
    assert resp.status == 200


async def test_the_route_limit_and_the_budget_are_both_in_the_fields(aiohttp_server, aiohttp_client, tmp_path):
    client, model = await start(aiohttp_server, aiohttp_client, tmp_path, budget=f"{COST + 20}/minute",
                                extra="rate_limit: 100/minute")
    model.usage = (20, 10)
    resp = await client.post("/api/chat", data=CHAT_BYTES, headers=JSON)
    assert resp.headers["RateLimit-Policy"] == f'"route";q=100;w=60, "budget";q={COST + 20};w=60'
    assert resp.headers["RateLimit"] == f'"route";r=99;t=60, "budget";r={COST + 20 - 30};t=60'
    resp = await client.post("/api/chat", data=CHAT_BYTES, headers=JSON)  # the budget refuses: both on the 429
    assert resp.status == 429
    assert resp.headers["RateLimit"] == f'"route";r=98;t=60, "budget";r={COST + 20 - 30};t=60'


async def test_a_5xx_releases_the_reservation_and_a_timeout_charges_it(aiohttp_server, aiohttp_client, tmp_path):
    client, model = await start(aiohttp_server, aiohttp_client, tmp_path, timeout="250ms")
    model.status = 500
    resp = await client.post("/api/chat", data=CHAT_BYTES, headers=JSON)
    assert resp.status == 502
    assert spent(client) == 0
    model.status = 200
    model.hold = asyncio.Event()  # never set: the gateway gives up first
    resp = await client.post("/api/chat", data=CHAT_BYTES, headers=JSON)
    assert resp.status == 504
    assert spent(client) == COST


async def test_a_4xx_without_usage_is_released(aiohttp_server, aiohttp_client, tmp_path):
    client, model = await start(aiohttp_server, aiohttp_client, tmp_path)
    model.status = 400
    resp = await client.post("/api/chat", data=CHAT_BYTES, headers=JSON)
    assert resp.status == 400
    assert spent(client) == 0


async def test_a_responses_api_stream_is_settled_from_its_completed_event(aiohttp_server, aiohttp_client, tmp_path):
    client, model = await start(aiohttp_server, aiohttp_client, tmp_path)
    model.usage = (8, 9)
    resp = await client.post("/api/responses", json={"model": "gpt-4o-mini", "input": "hi", "stream": True})
    body = await resp.read()
    assert b"response.completed" in body
    assert model.bodies[0] == {"model": "gpt-4o-mini", "input": "hi", "stream": True, "max_output_tokens": 100}
    assert spent(client, forward="responses") == 17
