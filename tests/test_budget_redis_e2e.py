"""One token budget for every process: two real ``gateway serve`` processes sharing one real redis-server, the same
guarded forward to a fake OpenAI on 127.0.0.1, and one client (one key) whose requests go to either process. Each
answer reports 30 tokens against a budget of 100/hour, so the 4th request overall is refused, whichever process gets
it — alone, each process would have admitted it. Neither the client's key nor the upstream's leaves the gateway."""

from __future__ import annotations

import contextlib
import json
import math

import aiohttp
from e2e_support import ENV, OPENAI_KEY, running_gateway
from model_support import GUARDED_CHAT, OPENAI_UPSTREAM, WAIT, FakeModel
from redis_support import RedisServer, redis_module_fixture, redis_server_fixture  # noqa: F401 (fixtures)
from upstream_support import leaks

CLIENT_KEY = "ck-E2E-CLIENTKEY-9a8b7c6d5e4f3a2b1c0d"
SECRETS = (CLIENT_KEY, OPENAI_KEY)
BUDGET, USAGE, CAP = 100, (20, 10), 5  # 30 tokens an answer: 3 fit in 100, the 4th does not
CONFIG = """\
server:
  prefix: /api
  shutdown_grace: 2s
state: {url}
state_on_error: closed
clients:
  api_keys: ["${{CLIENT_KEY}}"]
""" + OPENAI_UPSTREAM + GUARDED_CHAT + """\
      allow: {{ model: [gpt-4o-mini] }}
      cap: {{ max_tokens: {cap}, n: 1 }}
      budget: {budget}/hour
"""
ROUTE = "/api/openai/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
# the two spellings of one verified key: one client, one budget
BY_HEADER = {"X-API-Key": CLIENT_KEY}
BY_BEARER = {"Authorization": f"Bearer {CLIENT_KEY}"}


def budget_fields(headers: dict[str, str]) -> tuple[int, int]:
    """``(r, t)`` from ``RateLimit: "budget";r=...;t=...`` (the only limit on this route)."""
    name, r, t = headers["RateLimit"].split(";")
    assert name == '"budget"', headers["RateLimit"]
    return int(r.removeprefix("r=")), int(t.removeprefix("t="))


async def test_two_gateways_spend_one_token_budget(aiohttp_server, tmp_path, redis_server: RedisServer) -> None:
    model = FakeModel(prefix="/v1")
    model.usage = USAGE
    config = CONFIG.format(url=redis_server.url, port=await model.start(aiohttp_server), cap=CAP, budget=BUDGET)
    env = {**ENV, "CLIENT_KEY": CLIENT_KEY}
    seen: list[str] = []  # every response's status line, headers and body, for the leak check

    async def post(session: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> tuple[int, dict, bytes]:
        async with session.post(f"{base}{ROUTE}", json=BODY, headers=headers) as resp:
            body = await resp.read()
            seen.append(f"{resp.status}\n" + "\n".join(f"{k}: {v}" for k, v in resp.headers.items()) + "\n"
                        + body.decode("utf-8", "replace"))
            return resp.status, dict(resp.headers), body

    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(running_gateway(tmp_path, config, env))
        b = await stack.enter_async_context(running_gateway(tmp_path, config, env))
        session = await stack.enter_async_context(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)))

        admitted = [await post(session, gw.base, key) for gw, key in ((a, BY_HEADER), (b, BY_BEARER), (a, BY_BEARER))]
        refused = [await post(session, gw.base, key) for gw, key in ((b, BY_HEADER), (a, BY_HEADER))]
        for gw in (a, b):  # both use Redis, and what they answer carries nothing secret either
            async with session.get(f"{gw.base}/readyz") as resp:
                assert json.loads(await resp.read()) == {"status": "ready", "state": "redis"}
            async with session.get(f"{gw.base}/metrics") as resp:
                seen.append(await resp.text())

        assert [status for status, _, _ in admitted] == [200, 200, 200], admitted
        policy = f'"budget";q={BUDGET};w=3600'
        assert [h["RateLimit-Policy"] for _, h, _ in admitted + refused] == [policy] * 5
        # settled with the usage before the fields were written: one counter, whichever process answered
        assert [budget_fields(h)[0] for _, h, _ in admitted] == [70, 40, 10]
        resets = [budget_fields(h)[1] for _, h, _ in admitted + refused]
        assert all(3590 <= t <= 3600 for t in resets) and resets == sorted(resets, reverse=True), resets
        assert all(json.loads(body)["usage"]["total_tokens"] == 30 for _, _, body in admitted)

        cost = CAP + math.ceil(len(model.raw[0]) / 3)  # the reservation: over the 10 tokens left, under 40
        assert 10 < cost <= 40, cost
        for status, headers, body in refused:  # the 4th overall, at b, and a 5th at a: the budget is one
            assert status == 429, (status, body)
            retry = budget_fields(headers)[1]
            assert json.loads(body) == {
                "error": "rate_limited",
                "message": f"the token budget of {BUDGET}/hour is used up (90 spent; this request may cost up to "
                           f"{cost}); retry in {retry}s"}
            assert headers["Retry-After"] == str(retry)
            assert budget_fields(headers)[0] == 10
        assert model.arrived == 3  # the refused ones never reached the upstream
        budgets = redis_server.command("KEYS", "gateway:budget:*")
        assert len(budgets) == 1 and redis_server.command("HGET", budgets[0], "spent") == "90", budgets

    # the gateways were stopped with SIGTERM (exit 0, checked by running_gateway): their whole output is in
    lines = [line for gw in (a, b) for text in gw.server.stdout.splitlines()
             if (line := json.loads(text)).get("route") == ROUTE]
    assert sorted(line["tokens"] for line in lines if line["status"] == 200) == [30, 30, 30], lines
    assert len({line["client"] for line in lines}) == 1, lines  # one client, named alike by both processes
    for text in (*seen, a.output, b.output):
        assert not leaks(text, SECRETS), text
    assert all(s.headers.getall("Authorization") == [f"Bearer {OPENAI_KEY}"] and "X-API-Key" not in s.headers
               for s in model.up.seen)  # the upstream got its own key, never the client's
