"""A fake OpenAI-compatible model API on 127.0.0.1 for the guard and budget tests: JSON and SSE answers with usage.

    model = FakeModel()                       # POST <prefix>/chat/completions and <prefix>/responses
    model.usage = (5, 7)                      # prompt and completion tokens it reports
    model.hold = asyncio.Event()              # answers wait for it (while set_on_arrival counts who arrived)
    model.bodies / model.raw                  # what it received, parsed and as bytes
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from upstream_support import Recorder

WAIT = 5.0  # seconds: reached only when the behaviour under test is broken
# config text for the e2e tests (a str.format template: {port} is the fake model's): the upstream, its key injected,
# and the head of a guarded chat forward, whose guard: lines each test adds
OPENAI_UPSTREAM = """\
upstreams:
  openai:
    url: http://127.0.0.1:{port}/v1
    timeout: 10s
    inject:
      headers: {{ Authorization: "Bearer ${{OPENAI_API_KEY}}" }}
"""
GUARDED_CHAT = """\
forwards:
  openai/chat/completions:
    upstream: openai
    path: /chat/completions
    methods: [POST]
    guard:
"""


def completion(usage: tuple[int, int] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "chatcmpl-g1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
    }
    if usage is not None:
        doc["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return doc


def chunk(delta: dict[str, Any], finish: str | None = None, *, usage: Any = ..., choices: bool = True) -> bytes:
    doc: dict[str, Any] = {"id": "chatcmpl-g2", "object": "chat.completion.chunk", "created": 1700000000,
                           "model": "gpt-4o-mini",
                           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
                           if choices else []}
    if usage is not ...:
        doc["usage"] = usage
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def usage_chunk(usage: tuple[int, int]) -> bytes:
    """The last chunk OpenAI sends when asked for ``stream_options.include_usage``: no choices, the usage."""
    return chunk({}, usage={"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
                 choices=False)


class FakeModel:
    """Chat Completions (JSON or SSE, with the usage chunk only when asked) and a Responses API stream."""

    def __init__(self, prefix: str = "/base") -> None:
        self.up = Recorder()
        self.up.route("POST", f"{prefix}/chat/completions", self.chat)
        self.up.route("POST", f"{prefix}/responses", self.responses)
        self.bodies: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.lengths: list[str | None] = []  # the Content-Length header each request came with
        self.usage: tuple[int, int] | None = (5, 7)
        self.status = 200
        self.hold: asyncio.Event | None = None  # when set to an Event: answer only once it is set
        self.arrived = 0
        self.arrivals = asyncio.Event()  # set when ``expected`` requests have arrived
        self.expected = 0
        self.hang_after_first = False  # stream one chunk, then hang until cancelled
        self.hang_before_done = False  # stream everything but [DONE], then hang until cancelled
        self.cancelled = asyncio.Event()
        self.port = 0

    async def start(self, aiohttp_server: Any) -> int:
        self.port = await self.up.serve(aiohttp_server)
        return self.port

    async def _arrive(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        self.raw.append(raw)
        self.lengths.append(request.headers.get("Content-Length"))
        body = json.loads(raw)
        self.bodies.append(body)
        self.arrived += 1
        if self.expected and self.arrived >= self.expected:
            self.arrivals.set()
        if self.hold is not None:
            await asyncio.wait_for(self.hold.wait(), WAIT)
        return body

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._arrive(request)
        if self.status != 200:
            return web.json_response({"error": {"message": "nope", "type": "invalid_request_error"}},
                                     status=self.status)
        if not body.get("stream"):
            return web.json_response(completion(self.usage))
        with_usage = (body.get("stream_options") or {}).get("include_usage") is True
        extra = {"usage": None} if with_usage else {}
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        try:
            await resp.write(chunk({"role": "assistant", "content": "Hel"}, **extra))
            if self.hang_after_first:
                await asyncio.sleep(WAIT * 2)
            await resp.write(chunk({"content": "lo"}, **extra))
            await resp.write(chunk({}, "stop", **extra))
            if with_usage and self.usage is not None:
                await resp.write(usage_chunk(self.usage))
            if self.hang_before_done:
                await asyncio.sleep(WAIT * 2)
            await resp.write(b"data: [DONE]\n\n")
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        await resp.write_eof()
        return resp

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """The Responses API streamed: its usage comes in ``response.completed``, unasked."""
        await self._arrive(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events = [
            {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "usage": None}},
            {"type": "response.output_text.delta", "delta": "Hi"},
            {"type": "response.completed", "response": {"id": "resp_1", "status": "completed", "usage": {
                "input_tokens": self.usage[0], "output_tokens": self.usage[1], "total_tokens": sum(self.usage)}}},
        ]
        for event in events:
            await resp.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        await resp.write_eof()
        return resp
