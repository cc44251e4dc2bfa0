"""Token budgets on their own: the state's reserve/settle semantics (what a Redis backend must match), reading usage
from JSON and event streams, and the budget step with a stub upstream (settled once, whatever happens)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from model_support import chunk, usage_chunk
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config_guard import GuardConfig
from gateway.errors import RateLimited, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.keys import Facts
from gateway.pipeline.guard import guard
from gateway.pipeline.usage import MAX_EVENT, BodyWatch, EventWatch, tokens_of, usage_of_body
from gateway.pipeline.values import Answer, OutRequest
from gateway.state.memory import MemoryState
from gateway.units import Rate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the state: reserve and settle ---------------------------------------------------------------------------------


async def test_reserve_admits_while_spent_plus_amount_fits_and_refusals_change_nothing() -> None:
    clock = Clock()
    state = MemoryState(clock=clock)
    first = await state.reserve("k", 60, 100, 60.0)
    assert (first.admitted, first.amount, first.spent, first.reset_in, first.window) == (True, 60, 60, 60.0, 1060.0)
    clock.now += 10
    refused = await state.reserve("k", 41, 100, 60.0)
    assert (refused.admitted, refused.amount, refused.spent, refused.reset_in) == (False, 0, 60, 50.0)
    exact = await state.reserve("k", 40, 100, 60.0)
    assert (exact.admitted, exact.spent) == (True, 100)
    assert not (await state.reserve("k", 1, 100, 60.0)).admitted
    clock.now = 1060.0  # the window ends: its total starts over
    fresh = await state.reserve("k", 1, 100, 60.0)
    assert (fresh.admitted, fresh.spent, fresh.window) == (True, 1, 1120.0)


async def test_an_amount_over_the_whole_budget_is_always_refused() -> None:
    state = MemoryState(clock=Clock())
    hold = await state.reserve("k", 101, 100, 60.0)
    assert (hold.admitted, hold.spent, hold.reset_in) == (False, 0, 60.0)
    assert (await state.reserve("k", 100, 100, 60.0)).admitted  # and it counted nothing


async def test_settle_replaces_the_reservation_by_what_was_used() -> None:
    state = MemoryState(clock=Clock())
    a = await state.reserve("k", 50, 100, 60.0)
    b = await state.reserve("k", 30, 100, 60.0)
    a = await state.settle(a, 12)
    assert (a.amount, a.spent) == (12, 42)
    b = await state.settle(b, 45)  # more than reserved: still counted
    assert b.spent == 57
    over = await state.reserve("k", 43, 100, 60.0)
    assert over.admitted and over.spent == 100
    over = await state.settle(over, 70)  # past the limit: counted; the next reservation waits for the window
    assert over.spent == 127
    assert not (await state.reserve("k", 1, 100, 60.0)).admitted
    again = await state.settle(b, 0)  # a settled hold holds what it counted (45): settling it again replaces that
    assert again.spent == 82


async def test_settle_never_goes_below_zero_and_a_refused_hold_changes_nothing() -> None:
    state = MemoryState(clock=Clock())
    hold = await state.reserve("k", 10, 100, 60.0)
    refused = await state.reserve("k", 500, 100, 60.0)
    assert (await state.settle(refused, 0)).spent == 10
    assert (await state.settle(hold, 0)).spent == 0


async def test_a_settle_after_its_window_ended_changes_nothing() -> None:
    clock = Clock()
    state = MemoryState(clock=clock)
    old = await state.reserve("k", 50, 100, 60.0)
    clock.now += 61
    new = await state.reserve("k", 20, 100, 60.0)
    settled = await state.settle(old, 99)
    assert settled.spent == 20  # the new window is not charged for the old one's request
    assert (await state.settle(new, 5)).spent == 5


async def test_fifty_concurrent_reservations_never_overspend() -> None:
    state = MemoryState()
    holds = await asyncio.gather(*[state.reserve("k", 7, 100, 60.0) for _ in range(50)])
    assert sum(h.admitted for h in holds) == 14  # 14 x 7 = 98 <= 100 < 105
    assert max(h.spent for h in holds) == 98


async def test_budget_counters_are_bounded_like_the_rate_limit_counters() -> None:
    state = MemoryState(max_counters=10)
    for i in range(100):
        await state.reserve(f"k{i}", 1, 100, 60.0)
    assert len(state.counters.counts) == 10


# -- usage ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("usage", "tokens"), [
    ({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}, 12),
    ({"prompt_tokens": 5, "completion_tokens": 7}, 12),
    ({"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}, 12),
    ({"prompt_tokens": 5, "total_tokens": 5}, 5),  # embeddings
    ({"total_tokens": 30}, 30),
    ({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 40}, 40),  # reasoning etc.: the larger counts
    ({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 1}, 12),  # never less than the parts
    ({"prompt_tokens": -5, "completion_tokens": "7", "total_tokens": True}, None),
    ({}, None), (None, None), ([12], None), ("12", None),
])
def test_tokens_of(usage: Any, tokens: int | None) -> None:
    assert tokens_of(usage) == tokens


def test_usage_of_a_json_body() -> None:
    assert usage_of_body(b'{"usage": {"total_tokens": 9}}') == 9
    assert usage_of_body(b'{"response": {"usage": {"input_tokens": 1, "output_tokens": 2}}}') == 3
    for body in (b"", b"not json", b"[]", b'{"usage": null}', b"\xff\xfe", b"[" * 100_000):
        assert usage_of_body(body) is None


USAGE = (11, 22)
STREAM = [chunk({"content": "a"}, usage=None), chunk({"content": "b"}, "stop", usage=None), usage_chunk(USAGE),
          b"data: [DONE]\n\n"]


def run_watch(watch: EventWatch | BodyWatch, parts: list[bytes]) -> bytes:
    out = b"".join(watch.feed(part) for part in parts)
    return out + watch.flush()


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 100_000])
def test_the_usage_chunk_is_removed_however_the_stream_is_cut(size: int) -> None:
    watch = EventWatch(strip=True)
    out = run_watch(watch, split_every(b"".join(STREAM), size))
    assert out == STREAM[0] + STREAM[1] + STREAM[3]
    assert watch.tokens == 33


@pytest.mark.parametrize("size", [1, 5, 100_000])
def test_without_strip_the_stream_passes_byte_for_byte_and_its_usage_is_read(size: int) -> None:
    watch = EventWatch(strip=False)
    parts = split_every(b"".join(STREAM), size)
    assert run_watch(watch, parts) == b"".join(STREAM)
    assert watch.tokens == 33


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
def test_every_sse_line_ending_is_understood(newline: bytes) -> None:
    stream = b"".join(event.replace(b"\n", newline) for event in STREAM)
    for size in (1, 3, len(stream)):
        watch = EventWatch(strip=True)
        out = run_watch(watch, split_every(stream, size))
        assert watch.tokens == 33
        assert b'"choices": []' not in out and out.endswith(b"data: [DONE]" + newline * 2)


def test_usage_on_a_chunk_with_choices_is_read_and_kept() -> None:
    """Some OpenAI-compatible APIs put the usage on the last content chunk: it is counted, and never removed."""
    last = chunk({"content": "b"}, "stop", usage={"prompt_tokens": 1, "completion_tokens": 2})
    watch = EventWatch(strip=True)
    assert run_watch(watch, [STREAM[0], last, b"data: [DONE]\n\n"]) == STREAM[0] + last + b"data: [DONE]\n\n"
    assert watch.tokens == 3


def test_a_responses_api_stream_is_read_from_its_completed_event() -> None:
    completed = {"type": "response.completed", "response": {"usage": {"input_tokens": 4, "output_tokens": 6}}}
    event = b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n"
    watch = EventWatch(strip=True)
    assert run_watch(watch, [event]) == event
    assert watch.tokens == 10


def test_an_unfinished_last_event_is_read_and_an_unfinished_usage_chunk_dropped() -> None:
    watch = EventWatch(strip=True)
    out = run_watch(watch, [STREAM[0], usage_chunk(USAGE).rstrip(b"\n")])
    assert out == STREAM[0]
    assert watch.tokens == 33


def test_an_endless_event_is_passed_on_unread_and_memory_stays_bounded() -> None:
    watch = EventWatch(strip=True)
    head = b"data: " + b"x" * (MAX_EVENT // 2)
    out = watch.feed(STREAM[0]) + watch.feed(head) + watch.feed(head) + watch.feed(usage_chunk(USAGE))
    assert out == STREAM[0] + head + head + usage_chunk(USAGE)  # nothing lost, nothing read any more
    assert watch.tokens is None


def test_a_chunked_json_body_is_read_when_small_enough() -> None:
    body = json.dumps({"usage": {"total_tokens": 9}, "pad": "x" * 100}).encode()
    watch = BodyWatch(10_000)
    assert run_watch(watch, split_every(body, 7)) == body
    assert watch.tokens == 9
    watch = BodyWatch(50)
    assert run_watch(watch, split_every(body, 7)) == body
    assert watch.tokens is None


# -- the step, with a stub upstream --------------------------------------------------------------------------------

SPEC = GuardConfig(cap=(("max_tokens", 100),), budget=Rate(1000, 86400.0))
BODY = b'{"messages":[],"max_tokens":100}'  # 32 bytes: reserves 100 + ceil(32 / 3) = 111
COST = 111


def out_request(body: bytes = BODY, identity: str = "ip:1", facts: Facts | None = None) -> OutRequest:
    return OutRequest("POST", "https://api.example.com/v1/chat/completions",
                      CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"})), body, {},
                      identity=identity, facts=facts)


class Upstream:
    """A stub call_next: answers what the test prepared, or raises it."""

    def __init__(self, answer: Answer | BaseException) -> None:
        self.answer = answer
        self.got: list[OutRequest] = []

    async def __call__(self, out: OutRequest) -> Answer:
        self.got.append(out)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def json_answer(status: int = 200, usage: dict[str, int] | None = None) -> Answer:
    body = json.dumps({"usage": usage} if usage else {"id": 1}).encode()
    return Answer(status, CIMultiDict({"Content-Type": "application/json"}), body)


def stream_answer(parts: list[bytes], content_type: str = "text/event-stream") -> Answer:
    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    return Answer(200, CIMultiDict({"Content-Type": content_type}), body())


async def spent(state: MemoryState, identity: str = "ip:1") -> int:
    counter = state.counters.live(f"budget\nchat\n{identity}")
    return 0 if counter is None else int(counter[0])


@pytest.fixture
def state() -> MemoryState:
    return MemoryState()


async def test_a_json_answer_is_settled_with_its_usage_before_it_is_returned(state: MemoryState) -> None:
    facts = Facts("/api/chat")
    step = guard(SPEC, state, scope="chat", limit=1 << 20)
    answer = await step(out_request(facts=facts), Upstream(json_answer(usage={"total_tokens": 12})))
    assert await spent(state) == 12
    assert facts.tokens == 12
    assert answer.headers["RateLimit-Policy"] == '"budget";q=1000;w=86400'
    assert answer.headers["RateLimit"] == '"budget";r=988;t=86400'


@pytest.mark.parametrize(("outcome", "charged"), [
    (json_answer(), COST),  # a success without usage: the most it could have cost
    (json_answer(400), 0),  # refused by the upstream: not billed
    (json_answer(429, usage={"total_tokens": 3}), 3),  # an answer's usage counts, whatever its status
    (UpstreamError("5xx"), 0),  # withhold_5xx: the upstream failed
    (UpstreamUnavailable("down"), 0),  # never reached
    (UpstreamTimeout("slow"), COST),  # it may have been working when the gateway gave up
    (asyncio.CancelledError(), COST),  # the client left while the upstream worked
    (RuntimeError("bug"), COST),
])
async def test_what_is_charged_when_no_usage_comes(state: MemoryState, outcome: Any, charged: int) -> None:
    facts = Facts("/api/chat")
    step = guard(SPEC, state, scope="chat", limit=1 << 20)
    if isinstance(outcome, BaseException):
        with pytest.raises(type(outcome)):
            await step(out_request(facts=facts), Upstream(outcome))
    else:
        await step(out_request(facts=facts), Upstream(outcome))
    assert await spent(state) == charged
    assert facts.tokens == charged


async def test_a_stream_is_settled_once_when_it_ends(state: MemoryState) -> None:
    facts = Facts("/api/chat")
    step = guard(SPEC, state, scope="chat", limit=1 << 20)
    answer = await step(out_request(facts=facts), Upstream(stream_answer(STREAM)))
    assert answer.headers["RateLimit"] == f'"budget";r={1000 - COST};t=86400'  # the reservation, while it streams
    assert await spent(state) == COST
    body = b"".join([part async for part in answer.body])  # type: ignore[union-attr]
    assert body == b"".join(STREAM)  # the client did not send stream: true, so the gateway added nothing to strip
    assert await spent(state) == 33 and facts.tokens == 33
    await answer.discard()  # closed again after its end: still settled once
    assert await spent(state) == 33


async def test_a_stream_closed_half_read_is_charged_what_it_reported_or_its_reservation(state: MemoryState) -> None:
    step = guard(SPEC, state, scope="chat", limit=1 << 20)
    answer = await step(out_request(identity="ip:a"), Upstream(stream_answer(STREAM)))
    await answer.body.__anext__()  # type: ignore[union-attr]
    await answer.discard()  # the client left
    assert await spent(state, "ip:a") == COST
    answer = await step(out_request(identity="ip:b"), Upstream(stream_answer(STREAM)))
    async for part in answer.body:  # type: ignore[union-attr]
        if b'"choices": []' in part:
            break  # the usage arrived, the client leaves before [DONE]
    await answer.discard()
    assert await spent(state, "ip:b") == 33
    answer = await step(out_request(identity="ip:c"), Upstream(stream_answer(STREAM)))
    await answer.discard()  # never read at all
    assert await spent(state, "ip:c") == COST


async def test_a_stream_that_breaks_off_is_charged_its_reservation(state: MemoryState) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield STREAM[0]
        raise UpstreamError("reset")

    step = guard(SPEC, state, scope="chat", limit=1 << 20)
    answer = await step(out_request(), Upstream(Answer(200, CIMultiDict({"Content-Type": "text/event-stream"}),
                                                       broken())))
    with pytest.raises(UpstreamError):
        async for _ in answer.body:  # type: ignore[union-attr]
            pass
    assert await spent(state) == COST


async def test_a_chunked_json_answer_is_settled_when_it_ends(state: MemoryState) -> None:
    step = guard(SPEC, state, scope="chat", limit=1 << 20)
    body = json.dumps({"usage": {"total_tokens": 40}}).encode()
    answer = await step(out_request(), Upstream(stream_answer(split_every(body, 5), "application/json")))
    assert b"".join([part async for part in answer.body]) == body  # type: ignore[union-attr]
    assert await spent(state) == 40


async def test_an_answer_in_an_unreadable_encoding_is_charged_its_reservation(state: MemoryState) -> None:
    answer = json_answer(usage={"total_tokens": 1})
    answer.encoding = "br"
    await guard(SPEC, state, scope="chat", limit=1 << 20)(out_request(), Upstream(answer))
    assert await spent(state) == COST


async def test_over_budget_is_429_with_the_window_and_the_upstream_is_never_called(state: MemoryState) -> None:
    step = guard(GuardConfig(cap=(("max_tokens", 100),), budget=Rate(300, 3600.0)), state, scope="chat", limit=1000)
    await step(out_request(), Upstream(json_answer()))
    await step(out_request(), Upstream(json_answer()))  # 222 spent: a third reservation (111) does not fit
    upstream = Upstream(json_answer())
    with pytest.raises(RateLimited) as info:
        await step(out_request(), upstream)
    assert upstream.got == []
    assert info.value.message == "the token budget of 300/hour is used up (222 spent; this request may cost up to " \
                                 "111); retry in 3600s"
    assert info.value.headers == {"Retry-After": "3600", "RateLimit-Policy": '"budget";q=300;w=3600',
                                  "RateLimit": '"budget";r=78;t=3600'}
    await step(out_request(identity="ip:2"), Upstream(json_answer()))  # another client has its own budget


async def test_a_request_that_could_cost_more_than_the_whole_budget_says_so(state: MemoryState) -> None:
    step = guard(GuardConfig(cap=(("max_tokens", 100),), budget=Rate(100, 60.0)), state, scope="chat", limit=1000)
    with pytest.raises(RateLimited) as info:
        await step(out_request(), Upstream(json_answer()))
    assert info.value.message == "this request may cost up to 111 tokens, more than the whole budget of 100/minute: " \
                                 "ask for fewer output tokens (max_tokens) or send a shorter prompt"


@pytest.mark.parametrize(("body", "output"), [
    (b'{"max_tokens":100,"n":3}', 300),  # each of n choices may use the whole cap
    (b'{"max_tokens":100,"best_of":4}', 400),
    (b'{"max_completion_tokens":50}', 50),  # the client's lower value is the most it can produce
    (b'{"messages":[{"content":"' + b"x" * 1500 + b'"}]}', 100),  # and a long prompt reserves its bytes / 3
])
async def test_the_reservation_is_the_largest_possible_cost(state: MemoryState, body: bytes, output: int) -> None:
    step = guard(SPEC, state, scope="chat", limit=1000)
    upstream = Upstream(stream_answer([]))
    answer = await step(out_request(body), upstream)
    cost = output + -(-len(upstream.got[0].body) // 3)  # the bytes sent upstream, 3 to a token, rounded up
    assert answer.headers["RateLimit"] == f'"budget";r={1000 - cost};t=86400'
    await answer.discard()


async def test_a_stream_request_asks_for_usage_and_its_chunk_is_removed(state: MemoryState) -> None:
    upstream = Upstream(stream_answer(STREAM))
    answer = await guard(SPEC, state, scope="chat", limit=1000)(
        out_request(b'{"messages":[],"stream":true,"stream_options":{"x":1}}'), upstream)
    assert json.loads(upstream.got[0].body)["stream_options"] == {"x": 1, "include_usage": True}
    body = b"".join([part async for part in answer.body])  # type: ignore[union-attr]
    assert body == STREAM[0] + STREAM[1] + STREAM[3]
    assert await spent(state) == 33


@pytest.mark.parametrize("body", [
    b'{"messages":[],"stream":true,"stream_options":{"include_usage":true}}',  # the client asked: it gets it
    b'{"input":"hi","stream":true}',  # the Responses API reports usage unasked
    b'{"messages":[],"stream":false}',
    b'{"messages":[],"stream":"true"}',  # not a stream to OpenAI either
])
async def test_no_usage_is_asked_for_what_the_client_did_not_hide(state: MemoryState, body: bytes) -> None:
    upstream = Upstream(stream_answer(STREAM))
    answer = await guard(SPEC, state, scope="chat", limit=1000)(out_request(body), upstream)
    sent = json.loads(upstream.got[0].body)
    assert sent.get("stream_options") == json.loads(body).get("stream_options")
    assert b"".join([part async for part in answer.body]) == b"".join(STREAM)  # type: ignore[union-attr]


async def test_stream_options_that_is_not_an_object_is_refused(state: MemoryState) -> None:
    from gateway.errors import BadRequest

    with pytest.raises(BadRequest, match="stream_options must be a JSON object"):
        await guard(SPEC, state, scope="chat", limit=1000)(
            out_request(b'{"messages":[],"stream":true,"stream_options":"yes"}'), Upstream(json_answer()))


# -- the edge merge: a budget's fields beside the rate limits' ------------------------------------------------------


@pytest.mark.parametrize(("first", "then", "merged"), [
    (['"route";r=1;t=9'], ['"budget";r=900;t=50'], '"route";r=1;t=9, "budget";r=900;t=50'),
    (['"clients";r=5;t=9, "route";r=1;t=9'], ['"budget";r=900;t=50'],
     '"clients";r=5;t=9, "route";r=1;t=9, "budget";r=900;t=50'),
    (['"route";r=1;t=9'], ['"route";r=7;t=2'], '"route";r=1;t=9'),  # one member per limit: the edge's wins
    (['"route";q=30;w=60'], [' , "budget";q=9;w=60,'], '"route";q=30;w=60, "budget";q=9;w=60'),
])
def test_merge_members(first: list[str], then: list[str], merged: str) -> None:
    from gateway.edge.answer import merge_members

    assert merge_members(first, then) == merged


def test_a_budget_per_day_reads_as_such() -> None:
    assert str(Rate(200000, 86400.0)) == "200000/day"
