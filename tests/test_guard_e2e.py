"""End to end: the official ``openai`` SDK through the real ``gateway serve`` to a guarded chat forward, against a
fake OpenAI on 127.0.0.1. The SDK works unchanged (plain and streamed); what the guard refuses reaches the SDK as
OpenAI's own error types; the budget is spent by the usage, and by the reservation of a stream the SDK dropped."""

from __future__ import annotations

import asyncio
import math

import httpx2
import openai
import pytest
from e2e_support import ENV, OPENAI_KEY, TeeTransport, leaks, running_gateway
from model_support import GUARDED_CHAT, OPENAI_UPSTREAM, WAIT, FakeModel
from openai import AsyncOpenAI

CONFIG = """\
server:
  shutdown_grace: 2s
""" + OPENAI_UPSTREAM + GUARDED_CHAT + """\
      allow: {{ model: [gpt-4o-mini, gpt-4.1-mini] }}
      cap: {{ max_tokens: 512, max_completion_tokens: 512, n: 1 }}
      budget: {budget}/day
  openai/[...path]: {{ upstream: openai, path: "/{{path}}", methods: [GET] }}
"""
MESSAGES = [{"role": "user", "content": "hi"}]
BUDGET = 20_000


def sdk(base: str, tee: TeeTransport) -> AsyncOpenAI:
    http = httpx2.AsyncClient(transport=tee, trust_env=False, timeout=httpx2.Timeout(WAIT * 2))
    return AsyncOpenAI(base_url=f"{base}/api/openai", api_key="dummy", max_retries=0, http_client=http)


def left(headers: dict[str, str]) -> int:
    """The tokens left, from ``RateLimit: "budget";r=...;t=...``."""
    member = headers["ratelimit"]
    assert member.startswith('"budget";r=')
    return int(member.split(";")[1].removeprefix("r="))


async def test_the_sdk_through_a_guarded_forward(aiohttp_server, tmp_path):
    model = FakeModel(prefix="/v1")
    config = CONFIG.format(port=await model.start(aiohttp_server), budget=BUDGET)
    tee = TeeTransport()
    async with running_gateway(tmp_path, config, ENV) as gw, sdk(gw.base, tee) as client:
        # plain: the SDK's max_completion_tokens is capped, and no second spelling is added beside it
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=100_000)
        result = raw.parse()
        assert result.choices[0].message.content == "Hello!"
        assert result.usage.total_tokens == 12
        assert model.bodies[-1] == {"model": "gpt-4o-mini", "messages": MESSAGES, "max_completion_tokens": 512,
                                    "n": 1}
        assert raw.headers["ratelimit-policy"] == f'"budget";q={BUDGET};w=86400'
        assert left(raw.headers) == BUDGET - 12

        # streamed, without asking for usage: the gateway asks for it and the SDK never sees its chunk
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello"
        assert all(c.choices for c in chunks)
        assert model.bodies[-1]["stream_options"] == {"include_usage": True}
        assert model.bodies[-1]["max_completion_tokens"] == 512  # both configured: OpenAI's current spelling
        assert "max_tokens" not in model.bodies[-1]

        # streamed, asking for usage: it gets the usage chunk, as from OpenAI
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                      stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 12

        raw = await client.chat.completions.with_raw_response.create(model="gpt-4.1-mini", messages=MESSAGES)
        assert left(raw.headers) == BUDGET - 4 * 12  # each stream was settled with its usage

        # refused: OpenAI's own error types reach the SDK, and nothing reaches the upstream
        calls = model.arrived
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert bad.value.status_code == 400
        assert bad.value.response.json() == {  # the gateway's own error shape (SPEC §5)
            "error": "bad_request",
            "message": "model 'gpt-4o' is not allowed here: use one of gpt-4o-mini, gpt-4.1-mini"}
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens="100000")
        assert model.arrived == calls

        model.usage = (BUDGET, 0)  # one answer spends the rest of the day
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert limited.value.status_code == 429
        assert 86000 < int(limited.value.response.headers["retry-after"]) <= 86400
        assert left(limited.value.response.headers) == 0
        assert model.arrived == calls + 1
    for received in tee.received:
        assert not leaks(received.header_text) and not leaks(bytes(received.body))
        assert f"127.0.0.1:{model.port}" not in received.header_text + bytes(received.body).decode("utf-8", "replace")
    assert all(seen.headers.getall("Authorization") == [f"Bearer {OPENAI_KEY}"] for seen in model.up.seen)


async def test_a_stream_the_sdk_drops_is_charged_its_reservation(aiohttp_server, tmp_path):
    model = FakeModel(prefix="/v1")
    model.hang_after_first = True
    config = CONFIG.format(port=await model.start(aiohttp_server), budget=BUDGET)
    async with running_gateway(tmp_path, config, ENV) as gw, sdk(gw.base, TeeTransport()) as client:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        first = await asyncio.wait_for(stream.__aiter__().__anext__(), WAIT)
        assert first.choices[0].delta.content == "Hel"
        await stream.close()  # the user stops reading before any usage came
        await asyncio.wait_for(model.cancelled.wait(), WAIT)
        reservation = 512 + math.ceil(len(model.raw[0]) / 3)
        model.hang_after_first = False
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        assert left(raw.headers) == BUDGET - reservation - 12
