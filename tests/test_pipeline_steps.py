"""Each step of the upstream call chain on its own, with a stub ``call_next`` that records what it received.

The steps see only OutRequest and Answer values, so no server is needed here; the chain as a whole is tested
against real upstreams in test_forward*.py and test_pipeline_parity.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import ForwardConfig, ResponseShape, UpstreamConfig
from gateway.errors import UpstreamError
from gateway.mask.scrub import Scrubber
from gateway.paths import parse_forward_path
from gateway.pipeline.headers import (
    filter_request_headers,
    filter_response_headers,
    inject_secrets,
    request_allowlist,
    response_allowlist,
)
from gateway.pipeline.rewrite import rewrite_urls
from gateway.pipeline.scrub import scrub
from gateway.pipeline.shape import shape
from gateway.pipeline.urlmap import UrlMapper
from gateway.pipeline.values import Answer, OutRequest, chain
from gateway.pipeline.withhold import withhold_5xx

SECRET = "sk-live-0123456789abcdef-SECRET"
UP = "https://api.example.com/v1"


class Stub:
    """A ``call_next`` that records the request it got and answers with a prepared Answer."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.got: list[OutRequest] = []
        self.answer = answer or Answer(200, CIMultiDictProxy(CIMultiDict()), b"", upstream="svc")

    async def __call__(self, out: OutRequest) -> Answer:
        self.got.append(out)
        return self.answer


def request(headers: dict[str, str] | None = None, extra: dict[str, str] | None = None) -> OutRequest:
    return OutRequest("GET", f"{UP}/x", CIMultiDictProxy(CIMultiDict(headers or {})), None, extra or {},
                      "https://gw.example")


def answer(status: int = 200, headers: list[tuple[str, str]] | None = None, body: bytes | list[bytes] = b"",
           encoding: str = "") -> Answer:
    chunks: bytes | AsyncIterator[bytes] = body if isinstance(body, bytes) else _iterate(body)
    return Answer(status, CIMultiDict(headers or []), chunks, encoding, f"{UP}/dir/x", "svc")


async def _iterate(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def body_of(answer: Answer) -> bytes:
    if isinstance(answer.body, bytes):
        return answer.body
    return b"".join([chunk async for chunk in answer.body])


def mapper(forwards: dict[str, str] | None = None) -> UrlMapper:
    upstream = UpstreamConfig("svc", UP)
    configs = [ForwardConfig(key, parse_forward_path(key), "svc", path)
               for key, path in (forwards or {"gh/[...path]": "/{path}"}).items()]
    return UrlMapper(upstream, configs, "/api")


# --- filter_request_headers, inject_secrets ---------------------------------------------------------------------


async def test_filter_request_headers_keeps_the_allowlist_and_adds_what_the_gateway_set() -> None:
    stub = Stub()
    step = filter_request_headers(request_allowlist(("X-Trace",)))
    sent = {"Accept": "a/b", "Authorization": "Bearer client", "Cookie": "c=1", "Host": "evil", "X-Trace": "t",
            "X-Forwarded-For": "1.2.3.4", "X-API-Key": "k", "Accept-Encoding": "br"}
    await step(request(sent, {"X-Request-Id": "rid", "Content-Length": "3"}), stub)
    assert stub.got[0].headers == {"Accept": "a/b", "X-Trace": "t", "X-Request-Id": "rid", "Content-Length": "3"}


async def test_filter_request_headers_drops_what_the_client_named_in_connection() -> None:
    stub = Stub()
    await filter_request_headers(request_allowlist(()))(request({"Accept": "a", "Connection": "close, Accept"}), stub)
    assert stub.got[0].headers == {}


async def test_inject_secrets_overrides_and_is_absent_without_secrets() -> None:
    assert inject_secrets({}) is None
    stub = Stub()
    out = request()
    out.headers = {"Accept": "a", "authorization": "from before"}
    await inject_secrets({"authorization": f"Bearer {SECRET}"})(out, stub)
    assert stub.got[0].headers == {"Accept": "a", "authorization": f"Bearer {SECRET}"}


async def test_the_request_steps_in_chain_order_never_let_a_client_set_the_secret() -> None:
    stub = Stub()
    call = chain(stub, [filter_request_headers(request_allowlist(("Authorization",))),
                        inject_secrets({"Authorization": f"Bearer {SECRET}"})])
    await call(request({"Authorization": "Bearer client"}))
    assert stub.got[0].headers == {"Authorization": f"Bearer {SECRET}"}


# --- withhold_5xx ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"trace: " + SECRET.encode() + b" at 10.0.0.9", [b"trace: ", SECRET.encode()]])
async def test_withhold_5xx_logs_a_scrubbed_head_and_raises(body, caplog) -> None:
    caplog.set_level(logging.WARNING)
    with pytest.raises(UpstreamError) as raised:
        await withhold_5xx(Scrubber([SECRET]))(request(), Stub(answer(503, body=body)))
    assert raised.value.status == 502 and "10.0.0.9" not in raised.value.message
    logged = caplog.text
    assert "answered 503" in logged and "[REDACTED]" in logged and SECRET not in logged


async def test_withhold_5xx_passes_4xx_untouched() -> None:
    original = answer(404, body=b"nope")
    assert await withhold_5xx(Scrubber([]))(request(), Stub(original)) is original


# --- filter_response_headers ------------------------------------------------------------------------------------


async def test_filter_response_headers_allowlist_and_url_mapping() -> None:
    raw = answer(302, [("Server", "nginx"), ("Set-Cookie", "a=b"), ("ETag", '"1"'), ("X-Upstream-Id", "7"),
                       ("Location", f"{UP}/repos/x?page=2"), ("Link", f'<{UP}/private>; rel="p"'),
                       ("Content-Location", "https://elsewhere.example.org/y")])
    step = filter_response_headers(response_allowlist(("Link",)), mapper({"gh/repos/[...path]": "/repos/{path}"}))
    got = await step(request(), Stub(raw))
    assert dict(got.headers) == {"ETag": '"1"', "Location": "/api/gh/repos/x?page=2",
                                 "Content-Location": "https://elsewhere.example.org/y"}


async def test_filter_response_headers_drops_the_length_of_a_decoded_body_and_keeps_an_unread_coding() -> None:
    step = filter_response_headers(response_allowlist(()), mapper())
    decoded = answer(200, [("Content-Encoding", "gzip"), ("Content-Length", "20")])
    assert "Content-Length" not in (await step(request(), Stub(decoded))).headers
    assert "Content-Encoding" not in decoded.headers
    kept = answer(200, [("Content-Encoding", "br"), ("Content-Length", "20")], encoding="br")
    headers = (await step(request(), Stub(kept))).headers
    assert headers["Content-Encoding"] == "br" and headers["Content-Length"] == "20"


async def test_filter_response_headers_removes_any_exposed_header_naming_the_upstream() -> None:
    raw = answer(200, [("X-Next", "see https://login.example/?next=https://api.example.com/v1/x"),
                       ("X-Other", "fine")])
    got = await filter_response_headers(response_allowlist(("X-Next", "X-Other")), mapper())(request(), Stub(raw))
    assert dict(got.headers) == {"X-Other": "fine"}


# --- rewrite_urls, shape ----------------------------------------------------------------------------------------


async def test_rewrite_urls_rewrites_a_whole_body_and_an_event_stream_line_by_line() -> None:
    assert rewrite_urls(mapper(), enabled=False, limit=100) is None
    step = rewrite_urls(mapper(), enabled=True, limit=1000)
    whole = await step(request(), Stub(answer(body=f'{{"u": "{UP}/a"}}'.encode())))
    assert whole.body == b'{"u": "https://gw.example/api/gh/a"}'
    events = answer(headers=[("Content-Type", "text/event-stream")],
                    body=[b"data: " + UP.encode()[:12], UP.encode()[12:] + b"/b\n\n"])
    streamed = await step(request(), Stub(events))
    assert not isinstance(streamed.body, bytes)
    assert await body_of(streamed) == b"data: https://gw.example/api/gh/b\n\n"


async def test_rewrite_urls_and_shape_refuse_a_body_over_the_limit_or_unreadable() -> None:
    step = rewrite_urls(mapper(), enabled=True, limit=10)
    with pytest.raises(UpstreamError):
        await step(request(), Stub(answer(body=[b"x" * 8, b"y" * 8])))
    with pytest.raises(UpstreamError):
        await shape(ResponseShape(("a",)), limit=100)(request(), Stub(answer(body=b"\x1f\x8b", encoding="br")))


async def test_shape_reshapes_2xx_json_and_passes_the_rest() -> None:
    assert shape(None, limit=10) is None
    step = shape(ResponseShape(("secret",), "{n: n}"), limit=1000)
    got = await step(request(), Stub(answer(body=[b'{"n": 1, ', b'"secret": 2}'])))
    assert got.body == b'{"n":1}' and got.headers["Content-Type"] == "application/json"
    not_found = await step(request(), Stub(answer(404, [("Content-Type", "text/plain")], body=b"gone")))
    assert not_found.body == b"gone"


# --- scrub ------------------------------------------------------------------------------------------------------


async def test_scrub_headers_and_a_body_split_across_chunks() -> None:
    assert scrub(Scrubber([])) is None
    step = scrub(Scrubber([SECRET]))
    half = len(SECRET) // 2
    raw = answer(headers=[("ETag", f'"{SECRET}"')], body=[b"a " + SECRET[:half].encode(), SECRET[half:].encode()])
    got = await step(request(), Stub(raw))
    assert got.headers["ETag"] == '"[REDACTED]"'
    assert await body_of(got) == b"a [REDACTED]"


async def test_scrub_refuses_a_body_it_cannot_read() -> None:
    with pytest.raises(UpstreamError):
        await scrub(Scrubber([SECRET]))(request(), Stub(answer(body=[b"\x00"], encoding="br")))
    empty = answer(204, encoding="br")
    assert (await scrub(Scrubber([SECRET]))(request(), Stub(empty))).body == b""  # nothing to read, nothing refused


@pytest.mark.parametrize("body", [b"x", [b"x"]])
async def test_an_unreadable_encoding_naming_a_secret_is_logged_without_it(body, caplog) -> None:
    # the coding is the upstream's text: it may echo anything, a key included, and is cut to 40 characters
    caplog.set_level(logging.WARNING)
    coding = f"x-{SECRET}-{'z' * 100}"
    with pytest.raises(UpstreamError) as raised:
        await scrub(Scrubber([SECRET]))(request(), Stub(answer(body=body, encoding=coding)))
    assert SECRET not in raised.value.message and SECRET not in caplog.text
    assert "cannot be checked for secrets" in caplog.text and "[REDACTED]" in caplog.text
    assert "z" * 50 not in caplog.text


# --- chain ------------------------------------------------------------------------------------------------------


async def test_chain_runs_the_first_step_outermost_and_leaves_out_none() -> None:
    order: list[str] = []

    def step(name: str):
        async def run(out: OutRequest, call_next) -> Answer:
            order.append(f"{name} in")
            got = await call_next(out)
            order.append(f"{name} out")
            return got

        return run

    await chain(Stub(), [step("a"), None, step("b")])(request())
    assert order == ["a in", "b in", "b out", "a out"]
