"""A guarded forward's tokens in the operator's view, through the real ``gateway serve`` (a subprocess) and a fake
OpenAI on 127.0.0.1: the JSON access-log line of the request carries ``"tokens": <usage total>`` and ``GET /metrics``
shows ``gateway_tokens_total{route, upstream}`` grown by exactly that much, for a JSON answer and for a stream whose
usage comes in the usage-only chunk the gateway asked for."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from e2e_support import ENV, running_gateway
from model_support import GUARDED_CHAT, OPENAI_UPSTREAM, WAIT, FakeModel
from prometheus_client.parser import text_string_to_metric_families

CONFIG = """\
server:
  prefix: /api
  shutdown_grace: 2s
""" + OPENAI_UPSTREAM + GUARDED_CHAT + """\
      allow: {{ model: [gpt-4o-mini] }}
      cap: {{ max_tokens: 64, n: 1 }}
      budget: 100000/day
"""
ROUTE = "/api/openai/chat/completions"  # the route pattern: the access log's "route" and the metric's label
UPSTREAM = "openai"
MESSAGES = [{"role": "user", "content": "hi"}]


def tokens_metric(text: str) -> dict[tuple[str, str], float]:
    """``gateway_tokens_total`` by (route, upstream), from Prometheus text."""
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_tokens_total":
                found[(sample.labels["route"], sample.labels["upstream"])] = sample.value
    return found


async def scrape(session: aiohttp.ClientSession, base: str) -> dict[tuple[str, str], float]:
    async with session.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        return tokens_metric(await resp.text())


async def metric_settles(session: aiohttp.ClientSession, base: str, before: float) -> float:
    """The route's token count once it has moved from ``before`` (the access-log hook counts it after the last byte
    is sent, so a scrape right after the answer may come first); fails after ``WAIT`` seconds or 200 scrapes."""
    deadline = time.monotonic() + WAIT
    for _ in range(200):
        value = (await scrape(session, base)).get((ROUTE, UPSTREAM), 0.0)
        if value != before:
            return value
        assert time.monotonic() < deadline, "gateway_tokens_total never moved"
        await asyncio.sleep(0.02)
    raise AssertionError("gateway_tokens_total never moved in 200 scrapes")


async def access_line(gw_stdout, request_id: str) -> dict:
    """The JSON access-log line of ``request_id`` (stdout), once written; fails after ``WAIT`` seconds."""
    deadline = time.monotonic() + WAIT
    for _ in range(500):
        for line in gw_stdout().splitlines():
            if request_id in line:
                doc = json.loads(line)
                if doc.get("request_id") == request_id:
                    return doc
        assert time.monotonic() < deadline, f"no access-log line for {request_id}:\n{gw_stdout()}"
        await asyncio.sleep(0.02)
    raise AssertionError(f"no access-log line for {request_id} in 500 reads")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_access_log_and_metrics_count_the_usage(aiohttp_server, tmp_path, stream: bool) -> None:
    model = FakeModel(prefix="/v1")
    config = CONFIG.format(port=await model.start(aiohttp_server))
    usages = [(11, 23), (40, 2)]  # 34, then 42 tokens: distinct, so a count from the wrong answer shows
    async with running_gateway(tmp_path, config, ENV) as gw, aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        assert (await scrape(session, gw.base)).get((ROUTE, UPSTREAM), 0.0) == 0.0
        total = 0.0
        for n, usage in enumerate(usages):
            model.usage = usage
            request_id = f"budget-observe-{'stream' if stream else 'json'}-{n}"
            body = {"model": "gpt-4o-mini", "messages": MESSAGES, **({"stream": True} if stream else {})}
            async with session.post(f"{gw.base}{ROUTE}", json=body, headers={"X-Request-Id": request_id}) as resp:
                received = await resp.read()
                assert resp.status == 200, received
                assert resp.headers["X-Request-Id"] == request_id
            if stream:  # the gateway asked for the usage chunk and kept it from the client, who did not
                assert model.bodies[-1]["stream_options"] == {"include_usage": True}
                assert b'"usage": {' not in received and received.endswith(b"data: [DONE]\n\n")
            else:
                assert json.loads(received)["usage"]["total_tokens"] == sum(usage)

            line = await access_line(lambda: gw.server.stdout, request_id)
            assert line["tokens"] == sum(usage), line
            assert (line["route"], line["status"], line["upstream"], line["upstream_status"], line["streamed"]) == (
                ROUTE, 200, UPSTREAM, 200, stream), line

            before = total
            total = await metric_settles(session, gw.base, before)
            assert total == before + sum(usage), (before, total, usage)
        assert model.arrived == 2
        scraped = await scrape(session, gw.base)
        assert scraped == {(ROUTE, UPSTREAM): float(sum(map(sum, usages)))}  # no other series, nothing counted twice
