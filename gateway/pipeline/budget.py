"""A forward's token budget per client (SPEC §11): reserve a request's largest cost, settle what the answer used.

    reserve   max tokens (capped) x n + body bytes / 3 (the prompt's estimate), before anything is sent: spent plus
              this reservation must fit the budget, else 429 with Retry-After at the window's end
    settle    the answer's ``usage`` (JSON body, or the stream's usage event) replaces the reservation; when no usage
              comes (a client that left mid-stream, an answer without one), the reservation is charged; an upstream
              that failed or refused (5xx, unreachable, 4xx without usage) is released: nothing was spent

The answer carries the budget in the IETF fields, in tokens: ``RateLimit-Policy: "budget";q=200000;w=86400`` and
``RateLimit: "budget";r=<tokens left>;t=<seconds until the window ends>`` (the 429 too).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any, Protocol

from ..errors import BadRequest, GatewayError, RateLimited, UpstreamError, UpstreamUnavailable
from ..keys import Facts
from ..state import Hold, State, seconds_left
from ..units import Rate
from .usage import BodyWatch, EventWatch, usage_of_body
from .values import Answer, Body, Call, OutRequest, close

PROMPT_BYTES_PER_TOKEN = 3  # a token is ~4 bytes of English, ~1-3 of other scripts: 3 over-reserves most prompts
POLICY = "budget"


class Budget:
    def __init__(self, rate: Rate, state: State, scope: str, *, limit: int) -> None:
        self.rate = rate
        self.state = state
        self.scope = scope
        self.limit = limit  # the most of a chunked JSON answer kept to read its usage
        self.policy = f'"{POLICY}";q={rate.count};w={int(rate.period)}'

    def prepare(self, data: dict[str, Any]) -> bool:
        """Ask a streamed Chat Completions (or Completions) request for its usage; True when the client did not ask
        for it itself, so the usage-only chunk is removed from what it receives. The Responses API (``input``)
        reports usage in its ``response.completed`` event by itself."""
        if data.get("stream") is not True or ("messages" not in data and "prompt" not in data):
            return False
        options = data.get("stream_options")
        if options is None:
            options = {}
        elif not isinstance(options, dict):
            raise BadRequest("stream_options must be a JSON object")
        if options.get("include_usage") is True:
            return False
        data["stream_options"] = {**options, "include_usage": True}
        return True

    @staticmethod
    def cost(output: int, copies: int, size: int) -> int:
        """The most a request can cost: its (capped) output tokens for each of its ``copies`` (``n``, ``best_of``),
        plus its body's bytes / 3 for the prompt."""
        return max(1, output * copies + math.ceil(size / PROMPT_BYTES_PER_TOKEN))

    async def spend(self, out: OutRequest, cost: int, strip: bool, call_next: Call) -> Answer:
        rate = self.rate
        hold = await self.state.reserve(f"budget\n{self.scope}\n{out.identity}", cost, rate.count, rate.period)
        if not hold.admitted:
            retry = seconds_left(hold.reset_in)
            if cost > rate.count:
                why = f"this request may cost up to {cost} tokens, more than the whole budget of {rate}: ask for " \
                      "fewer output tokens (max_tokens) or send a shorter prompt"
            else:
                why = f"the token budget of {rate} is used up ({hold.spent} spent; this request may cost up to " \
                      f"{cost}); retry in {retry}s"
            raise RateLimited(why, headers={"Retry-After": str(retry), **self.fields(hold)})
        account = Account(self.state, hold, out.facts)
        try:
            answer = await call_next(out)
        except (UpstreamError, UpstreamUnavailable):
            await _shielded(account.settle(0))  # a 5xx, or never reached: nothing was spent
            raise
        except GatewayError as exc:
            await _shielded(account.settle(0 if exc.status < 500 else None))
            raise
        except BaseException:
            await _shielded(account.settle(None))  # a timeout or a client that left: the upstream may be working
            raise
        account.ok = answer.status < 400
        body = answer.body
        if answer.encoding:  # a coding the gateway cannot read: no usage to be had
            await account.settle(None)
        elif isinstance(body, bytes):
            await account.settle(usage_of_body(body))
        else:
            watch = EventWatch(strip=strip) if answer.event_stream else BodyWatch(self.limit)
            answer.body = Metered(body, watch, account)
        answer.headers.update(self.fields(account.hold))  # type: ignore[attr-defined] - a CIMultiDict
        return answer

    def fields(self, hold: Hold) -> dict[str, str]:
        left = max(0, self.rate.count - hold.spent)
        return {"RateLimit-Policy": self.policy, "RateLimit": f'"{POLICY}";r={left};t={seconds_left(hold.reset_in)}'}


class Account:
    """One request's reservation, settled once: with the usage the upstream reported, else by what happened."""

    def __init__(self, state: State, hold: Hold, facts: Facts | None) -> None:
        self.state = state
        self.hold = hold
        self.facts = facts
        self.ok = True  # the upstream answered with success: no usage means the reservation is charged
        self.settled = False

    async def settle(self, tokens: int | None) -> None:
        """``tokens`` reported by the upstream, or None: the reservation is charged after a success (or when the
        outcome is unknown), released after an upstream's refusal."""
        if self.settled:
            return
        self.settled = True
        if tokens is None:
            tokens = self.hold.amount if self.ok else 0
        self.hold = await self.state.settle(self.hold, tokens)
        if self.facts is not None:
            self.facts.tokens = tokens


class Watch(Protocol):
    tokens: int | None

    def feed(self, chunk: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class Metered:
    """The answer's body on its way to the client, read for usage as it passes. The budget is settled when it ends,
    when it breaks off, and when it is closed unread or half read (the client left): whichever comes first."""

    def __init__(self, body: Body, watch: Watch, account: Account) -> None:
        self._body: AsyncIterator[bytes] = body  # type: ignore[assignment] - a stream here, never bytes
        self._watch = watch
        self._account = account
        self._ended = False

    def __aiter__(self) -> Metered:
        return self

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        try:
            while True:
                try:
                    chunk = await self._body.__anext__()
                except StopAsyncIteration:
                    self._ended = True
                    tail = self._watch.flush()
                    await self._account.settle(self._watch.tokens)
                    if tail:
                        return tail
                    raise
                if out := self._watch.feed(chunk):
                    return out
        except StopAsyncIteration:
            raise
        except BaseException:
            self._ended = True
            await _shielded(self._account.settle(self._watch.tokens))
            raise

    async def aclose(self) -> None:
        self._ended = True
        try:
            await close(self._body)
        finally:
            await _shielded(self._account.settle(self._watch.tokens))


async def _shielded(settle: Any) -> None:
    """A settle that a second cancellation cannot interrupt halfway (a network backend awaits its server)."""
    await asyncio.shield(settle)

