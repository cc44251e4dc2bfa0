"""End to end: the real ``gateway serve`` process between real clients (the official ``openai`` SDK, raw sockets)
and fake upstreams on 127.0.0.1 that run in the test's own event loop.

Every test leaves through ``running_gateway``: SIGTERM must exit 0 and the process's stdout/stderr must hold no
secret. Upstream and client are coordinated with events (bounded by WAIT), never with fixed sleeps.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qsl

import httpx2
import pytest
from aiohttp import web
from cli_support import free_port
from e2e_support import (
    ENV,
    OPENAI_KEY,
    WAIT,
    WEATHER_KEY,
    Received,
    TeeTransport,
    leaks,
    raw_get,
    running_gateway,
    serve,
)
from model_support import OPENAI_UPSTREAM
from openai import AsyncOpenAI
from upstream_support import Recorder

DUMMY = "dummy"

OPENAI_CONFIG = """\
server:
  shutdown_grace: 2s
""" + OPENAI_UPSTREAM + """\
forwards:
  openai/[...path]: {{ upstream: openai, path: "/{{path}}", methods: [GET, POST] }}
"""

SERVER = """\
server:
  shutdown_grace: 2s
"""
WEATHER_UPSTREAM = """\
  weather:
    url: http://127.0.0.1:{port}/data/2.5
    inject:
      query: {{ appid: "${{OPENWEATHER_KEY}}" }}
"""
WEATHER_FORWARDS = """\
  weather/[city]:
    upstream: weather
    path: /weather?q={{city}}&units=metric
    response:
      drop: [base, id]
      select: "{{temp: main.temp, summary: weather[0].description}}"
  weather-full/[city]:
    upstream: weather
    path: /weather?q={{city}}&units=metric
    response:
      drop: [base, id, main.humidity]
"""
WEATHER_CONFIG = SERVER + "upstreams:\n" + WEATHER_UPSTREAM + "forwards:\n" + WEATHER_FORWARDS


# --- a fake OpenAI -------------------------------------------------------------------------------------------------


def completion(content: str) -> dict:
    return {
        "id": "chatcmpl-e2e1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
        "system_fingerprint": "fp_e2e",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
    body = {"id": "chatcmpl-e2e2", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-4o-mini",
            "system_fingerprint": "fp_e2e",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class FakeOpenAI:
    """``POST /v1/chat/completions``: JSON, or SSE chunks when ``stream`` is true. It echoes the key it was given in
    a header that the gateway passes (ETag), in headers it drops, and in the body, and names its own host:port in a
    Link header: all of which the client must never see.

    While streaming it sends the first chunk, then waits for ``first_seen`` (set by the test once the SDK has that
    chunk): if the gateway held the stream back, the wait runs out and ``held_back`` says so."""

    def __init__(self) -> None:
        self.up = Recorder()
        self.up.route("POST", "/v1/chat/completions", self.chat)
        self.port = 0
        self.bodies: list[dict] = []
        self.first_seen = asyncio.Event()
        self.held_back = False
        self.hang_after_first = False  # for the disconnect test: never finish, note the cancellation
        self.cancelled = asyncio.Event()

    def echo_headers(self, request: web.Request) -> dict[str, str]:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return {"ETag": f'"{key}"', "X-Echo-Key": key, "Server": "uvicorn", "x-request-id": "req_e2e",
                "openai-organization": "org-e2e", "Set-Cookie": f"k={key}",
                "Link": f'<http://127.0.0.1:{self.port}/v1/models>; rel="models"'}

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not body.get("stream"):
            return web.json_response(completion(f"Hello! Your key is {key}."), headers=self.echo_headers(request))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache", **self.echo_headers(request)})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(chunk({"role": "assistant", "content": "Hel"}))
        try:
            await asyncio.wait_for(self.first_seen.wait(), WAIT)
            if self.hang_after_first:
                await asyncio.sleep(WAIT * 2)  # the gateway must cancel this long before
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        except TimeoutError:
            self.held_back = True
        for piece in ("lo", " from", " the stream"):
            await resp.write(chunk({"content": piece}))
        # the key inside an event, split over two writes: the gateway must scrub it across the boundary
        event = chunk({"content": f" ({key})"})
        cut = event.index(key.encode()) + len(key) // 2
        await resp.write(event[:cut])
        await resp.write(event[cut:])
        await resp.write(chunk({}, "stop"))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def start(self, aiohttp_server) -> int:
        self.port = await serve(aiohttp_server, self.up)
        return self.port


def sdk(base: str, tee: TeeTransport) -> AsyncOpenAI:
    # trust_env=False: no proxy from the environment between the SDK and 127.0.0.1
    http = httpx2.AsyncClient(transport=tee, trust_env=False, timeout=httpx2.Timeout(WAIT * 2))
    return AsyncOpenAI(base_url=f"{base}/api/openai", api_key=DUMMY, max_retries=0, http_client=http)


def assert_nothing_of_the_upstream(received: Received, upstream_port: int) -> None:
    """No secret in what the SDK got (headers, raw body bytes), no upstream host:port, none of its own headers."""
    assert not leaks(received.header_text), received.header_text
    assert not leaks(bytes(received.body)), received.body
    for text in (received.header_text, bytes(received.body).decode("utf-8", "replace")):
        assert f"127.0.0.1:{upstream_port}" not in text
        assert f":{upstream_port}/" not in text
    names = {name.lower() for name, _ in received.headers}
    for name in ("x-echo-key", "openai-organization", "set-cookie", "via", "x-powered-by"):
        assert name not in names, received.header_text
    # the gateway's own request id, never the upstream's
    request_ids = [value for name, value in received.headers if name.lower() == "x-request-id"]
    assert len(request_ids) == 1 and request_ids[0] != "req_e2e", received.header_text
    assert dict(received.headers).get("server", "gateway") == "gateway"


def assert_upstream_saw_only_the_real_key(up: Recorder, calls: int) -> None:
    assert len(up.seen) == calls
    for seen in up.seen:
        assert seen.headers.getall("Authorization") == [f"Bearer {OPENAI_KEY}"]
        assert not any(DUMMY in value for value in seen.headers.values()), seen.headers


MESSAGES = [{"role": "user", "content": "hi"}]


async def test_openai_sdk_completion_through_the_gateway(aiohttp_server, tmp_path):
    fake = FakeOpenAI()
    config = OPENAI_CONFIG.format(port=await fake.start(aiohttp_server))
    tee = TeeTransport()
    async with running_gateway(tmp_path, config, ENV) as gw, sdk(gw.base, tee) as client:
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        result = raw.parse()
    assert result.object == "chat.completion"
    assert result.choices[0].message.content == "Hello! Your key is [REDACTED]."
    assert result.usage.total_tokens == 12
    assert fake.bodies == [{"model": "gpt-4o-mini", "messages": MESSAGES}]
    assert [s.raw_path for s in fake.up.seen] == ["/v1/chat/completions"]
    assert_upstream_saw_only_the_real_key(fake.up, 1)
    [received] = tee.received
    assert received.status == 200
    headers = dict(received.headers)
    assert headers["etag"] == '"[REDACTED]"'  # passed on, and scrubbed: not merely filtered out
    assert headers["content-type"].startswith("application/json")
    assert int(headers["content-length"]) == len(received.body)
    assert headers["link"] == '</api/openai/models>; rel="models"'  # rewritten to the gateway's own path
    assert_nothing_of_the_upstream(received, fake.port)


async def test_openai_sdk_stream_arrives_chunk_by_chunk(aiohttp_server, tmp_path):
    fake = FakeOpenAI()
    config = OPENAI_CONFIG.format(port=await fake.start(aiohttp_server))
    tee = TeeTransport()
    async with running_gateway(tmp_path, config, ENV) as gw, sdk(gw.base, tee) as client:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        chunks = stream.__aiter__()
        # the upstream sends nothing more until the SDK has the first chunk: a gateway that buffers fails here
        first = await asyncio.wait_for(chunks.__anext__(), WAIT)
        fake.first_seen.set()
        rest = [c async for c in chunks]
    assert not fake.held_back
    assert first.object == "chat.completion.chunk"
    assert first.choices[0].delta.content == "Hel"
    content = "".join(c.choices[0].delta.content or "" for c in [first, *rest])
    assert content == "Hello from the stream ([REDACTED])"
    assert rest[-1].choices[0].finish_reason == "stop"
    assert fake.bodies == [{"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}]
    assert_upstream_saw_only_the_real_key(fake.up, 1)
    [received] = tee.received
    headers = dict(received.headers)
    assert headers["content-type"].startswith("text/event-stream")
    assert "content-length" not in headers
    assert "no-transform" in headers["cache-control"]
    assert headers["x-accel-buffering"] == "no"
    assert headers["etag"] == '"[REDACTED]"'
    assert bytes(received.body).endswith(b"data: [DONE]\n\n")
    assert_nothing_of_the_upstream(received, fake.port)


async def test_closing_an_sdk_stream_cancels_the_upstream_call(aiohttp_server, tmp_path):
    fake = FakeOpenAI()
    fake.hang_after_first = True
    config = OPENAI_CONFIG.format(port=await fake.start(aiohttp_server))
    async with running_gateway(tmp_path, config, ENV) as gw, sdk(gw.base, TeeTransport()) as client:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        first = await asyncio.wait_for(stream.__aiter__().__anext__(), WAIT)
        assert first.choices[0].delta.content == "Hel"
        fake.first_seen.set()
        await stream.close()  # the user stops reading: the gateway must drop the upstream call, not finish it
        await asyncio.wait_for(fake.cancelled.wait(), WAIT)
    assert not fake.held_back


# --- a shaped weather forward ----------------------------------------------------------------------------------------


def weather_doc(appid: str) -> dict:
    return {
        "coord": {"lon": -0.13, "lat": 51.51},
        "weather": [{"id": 500, "main": "Rain", "description": "light rain", "icon": "10d"}],
        "base": "stations",
        "main": {"temp": 11.3, "feels_like": 10.5, "humidity": 81},
        "id": 2643743,
        "name": "London",
        "echo": {"appid": appid},  # an API that repeats the request's key back
    }


async def test_weather_forward_is_shaped_with_the_key_injected(aiohttp_server, tmp_path):
    async def weather(request: web.Request) -> web.Response:
        return web.json_response(weather_doc(request.query.get("appid", "")), headers={"Server": "openresty"})

    up = Recorder()
    up.route("GET", "/data/2.5/weather", weather)
    port = await serve(aiohttp_server, up)
    async with running_gateway(tmp_path, WEATHER_CONFIG.format(port=port), ENV) as gw:
        shaped = await raw_get(gw.port, "/api/weather/London?appid=evil&units=imperial&lang=en")
        full = await raw_get(gw.port, "/api/weather-full/New%20York?appid=evil")

    assert shaped.status == 200, shaped.body
    assert json.loads(shaped.body) == {"temp": 11.3, "summary": "light rain"}
    assert shaped.headers["content-type"].startswith("application/json")
    assert int(shaped.headers["content-length"]) == len(shaped.body)

    assert full.status == 200, full.body
    expected = weather_doc("[REDACTED]")
    del expected["base"], expected["id"], expected["main"]["humidity"]
    assert json.loads(full.body) == expected
    assert int(full.headers["content-length"]) == len(full.body)

    for reply in (shaped, full):
        shown = "\n".join(f"{k}: {v}" for k, v in reply.headers.items())
        assert not leaks(shown) and not leaks(reply.body)
        assert f"127.0.0.1:{port}" not in shown
        assert reply.headers.get("server") == "gateway"

    queries = [parse_qsl(seen.query, keep_blank_values=True) for seen in up.seen]
    # the client's appid=evil and units=imperial are replaced, its lang=en is passed on; '+' and '/' and '=' in
    # the key arrive as the key (parse_qsl would turn an unencoded '+' into a space)
    assert sorted(queries[0]) == sorted([("q", "London"), ("units", "metric"), ("appid", WEATHER_KEY), ("lang", "en")])
    assert sorted(queries[1]) == sorted([("q", "New York"), ("units", "metric"), ("appid", WEATHER_KEY)])
    assert all("evil" not in seen.query for seen in up.seen)


# --- clients that leave ------------------------------------------------------------------------------------------

SVC_UPSTREAM = """\
  svc:
    url: http://127.0.0.1:{port}/base
    timeout: 10s
    inject:
      headers: {{ Authorization: "Bearer ${{OPENAI_API_KEY}}" }}
"""
SVC_FORWARDS = """\
  svc/[...path]: {{ upstream: svc, path: "/{{path}}" }}
"""
SVC_CONFIG = SERVER + "upstreams:\n" + SVC_UPSTREAM + "forwards:\n" + SVC_FORWARDS


class Hanging:
    """An upstream handler that (optionally) starts an SSE stream, then hangs until it is cancelled."""

    def __init__(self, send_first_event: bool) -> None:
        self.send_first_event = send_first_event
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.started.set()
        try:
            if self.send_first_event:
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                await resp.write(b"data: one\n\n")
            await asyncio.sleep(WAIT * 2)  # the gateway must cancel this long before
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return web.Response(text="too late")


@pytest.mark.parametrize("mid_stream", [True, False], ids=["mid-stream", "before-first-byte"])
async def test_a_client_that_disconnects_cancels_the_upstream_call(aiohttp_server, tmp_path, mid_stream):
    handler = Hanging(send_first_event=mid_stream)
    up = Recorder()
    up.route("GET", "/base/events", handler.handle)
    port = await serve(aiohttp_server, up)
    async with running_gateway(tmp_path, SVC_CONFIG.format(port=port), ENV) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(f"GET /api/svc/events HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode())
            await writer.drain()
            if mid_stream:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
                assert head.startswith(b"HTTP/1.1 200"), head
                assert b"text/event-stream" in head
                assert b"data: one\n\n" in await asyncio.wait_for(reader.readuntil(b"data: one\n\n"), WAIT)
            else:
                await asyncio.wait_for(handler.started.wait(), WAIT)
        finally:
            writer.close()
            await writer.wait_closed()
        await asyncio.wait_for(handler.cancelled.wait(), WAIT)
    assert len(up.seen) == 1


# --- the process's own output ------------------------------------------------------------------------------------

async def test_sigterm_exits_0_and_the_output_never_holds_a_secret(aiohttp_server, tmp_path):
    """Drive the forward paths that log — an upstream 5xx whose body echoes both keys, a stream the upstream breaks,
    a body that cannot be shaped — then SIGTERM: exit 0, and the log says what happened without the secrets."""
    broke = asyncio.Event()

    async def fails(request: web.Request) -> web.Response:
        key = request.headers["Authorization"]
        return web.Response(status=500, text=f"internal error for {key} and appid={WEATHER_KEY}")

    async def breaks(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(f"data: {request.headers['Authorization']}\n\n".encode())
        request.transport.close()  # mid-stream failure
        broke.set()
        return resp

    async def not_json(request: web.Request) -> web.Response:
        return web.Response(text=f"<html>{request.query.get('appid')}</html>", content_type="text/html")

    up = Recorder()
    up.route("GET", "/base/fails", fails)
    up.route("GET", "/base/breaks", breaks)
    up.route("GET", "/data/2.5/weather", not_json)
    port = await serve(aiohttp_server, up)
    config = (SERVER + "upstreams:\n" + SVC_UPSTREAM + WEATHER_UPSTREAM + "forwards:\n" + SVC_FORWARDS
              + WEATHER_FORWARDS).format(port=port)
    async with running_gateway(tmp_path, config, ENV) as gw:
        fails_reply = await raw_get(gw.port, "/api/svc/fails")
        breaks_reply = await raw_get(gw.port, "/api/svc/breaks")
        await asyncio.wait_for(broke.wait(), WAIT)
        html_reply = await raw_get(gw.port, "/api/weather/London")
        code = await gw.stop()
        output = gw.output

    assert code == 0
    assert fails_reply.status == 502 and json.loads(fails_reply.body)["error"] == "upstream_error"
    assert breaks_reply.status == 200
    assert html_reply.status == 200 and html_reply.body == b"<html>[REDACTED]</html>"
    for reply in (fails_reply, breaks_reply, html_reply):
        assert not leaks(reply.body), reply.body
    # the log did record each event (so the check below is not vacuous) ...
    assert "answered 500: internal error for Bearer [REDACTED] and appid=[REDACTED]" in output
    assert "failed mid-stream" in output
    assert "not JSON" in output
    # ... and no form of any secret
    assert not leaks(output), output


BOOM_ROUTE = """\
import os

async def GET(req):
    raise RuntimeError("the key " + os.environ["OPENAI_API_KEY"] + " was refused")
"""


async def test_a_route_exception_that_quotes_a_secret_is_logged_without_it(tmp_path):
    # OPENAI_API_KEY is a secret because the svc upstream injects it (never called here: nothing need listen)
    config = (SERVER + "upstreams:\n" + SVC_UPSTREAM + "forwards:\n" + SVC_FORWARDS).format(port=free_port())
    async with running_gateway(tmp_path, config, ENV, {"boom.py": BOOM_ROUTE}) as gw:
        reply = await raw_get(gw.port, "/api/boom")
        assert reply.status == 500 and json.loads(reply.body)["error"] == "internal_error"
        assert not leaks(reply.body)
        await gw.stop()
        assert "unhandled error in GET /api/boom" in gw.output
        assert not leaks(gw.output), gw.output


OPENAI_ERRORS_CONFIG = """\
clients:
  api_keys: ["${{CLIENT_KEY}}"]
upstreams:
  openai:
    url: http://127.0.0.1:{port}/v1
    errors: {style}
    inject:
      headers: {{ Authorization: "Bearer ${{OPENAI_API_KEY}}" }}
forwards:
  openai/[...path]: {{ upstream: openai, path: "/{{path}}", methods: [GET, POST], rate_limit: 1/minute }}
"""


@pytest.mark.parametrize("style", ["openai", "gateway"])
async def test_the_openai_sdk_shows_the_gateways_own_errors(aiohttp_server, tmp_path, style):
    import openai

    fake = FakeOpenAI()
    config = OPENAI_ERRORS_CONFIG.format(port=await fake.start(aiohttp_server), style=style)
    env = {**ENV, "CLIENT_KEY": "ck-live-SDKCLIENT-0123456789"}
    async with running_gateway(tmp_path, config, env) as gw:
        http = httpx2.AsyncClient(trust_env=False, timeout=httpx2.Timeout(WAIT * 2))
        wrong = AsyncOpenAI(base_url=f"{gw.base}/api/openai", api_key="wrong", max_retries=0, http_client=http)
        with pytest.raises(openai.AuthenticationError) as refused:
            await wrong.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        right = AsyncOpenAI(base_url=f"{gw.base}/api/openai", api_key=env["CLIENT_KEY"], max_retries=0,
                            http_client=http)
        await right.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as limited:
            await right.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        await http.aclose()
    if style == "openai":  # the SDK shows the gateway's message, and its type and code
        assert "a valid API key is required" in refused.value.message
        assert refused.value.code == "unauthorized" and refused.value.type == "authentication_error"
        assert "rate_limited" == limited.value.code and "too many requests" in limited.value.message.lower()
        assert limited.value.response.headers["Retry-After"]
    else:  # the gateway's shape: the SDK can only show the status and the raw body
        assert refused.value.code is None and limited.value.code is None
    assert env["CLIENT_KEY"] not in str(refused.value.body) + str(limited.value.body)
    assert len(fake.bodies) == 1
