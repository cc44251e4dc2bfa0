"""guard through the gateway, against a fake model API on 127.0.0.1: what it refuses never reaches the upstream; what
it lets through arrives capped, as one JSON body with its own length."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from model_support import FakeModel
from multidict import CIMultiDict
from upstream_support import assert_clean, gateway, no_secret_logged  # noqa: F401 - an autouse fixture

FORWARDS = """
forwards:
  chat:
    upstream: svc
    path: /chat/completions
    methods: [POST]
    max_body: 64kb
    guard:
      allow: { model: [gpt-4o-mini, gpt-4.1-mini] }
      cap: { max_tokens: 512, n: 1 }
"""
MESSAGES = [{"role": "user", "content": "hi"}]


async def client_for(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> tuple[Any, FakeModel]:
    model = FakeModel()
    client = await gateway(aiohttp_client, tmp_path, await model.start(aiohttp_server), FORWARDS)
    return client, model


async def test_a_model_not_allowed_is_400_naming_the_field_and_never_sent(aiohttp_server, aiohttp_client, tmp_path):
    client, model = await client_for(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.post("/api/chat", json={"model": "gpt-4o", "messages": MESSAGES})
    body = await resp.read()
    assert resp.status == 400
    assert json.loads(body) == {"error": "bad_request",
                                "message": "model 'gpt-4o' is not allowed here: use one of gpt-4o-mini, gpt-4.1-mini"}
    assert resp.headers["X-Request-Id"]
    assert_clean(resp, body)
    assert model.up.seen == []


async def test_caps_arrive_in_one_json_body_with_its_own_length(aiohttp_server, aiohttp_client, tmp_path):
    client, model = await client_for(aiohttp_server, aiohttp_client, tmp_path)
    sent = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_completion_tokens": 100000, "n": 5}
    resp = await client.post("/api/chat", json=sent)
    body = await resp.read()
    assert resp.status == 200, body
    assert json.loads(body)["usage"]["total_tokens"] == 12
    assert model.bodies == [{"model": "gpt-4o-mini", "messages": MESSAGES, "max_completion_tokens": 512, "n": 1}]
    assert model.lengths == [str(len(model.raw[0]))]
    assert model.up.last.headers.getall("Content-Length") == [str(len(model.raw[0]))]
    assert "Transfer-Encoding" not in model.up.last.headers
    assert model.up.last.headers["Content-Type"] == "application/json"


async def test_a_chunked_client_body_goes_with_a_length(aiohttp_server, aiohttp_client, tmp_path):
    client, model = await client_for(aiohttp_server, aiohttp_client, tmp_path)

    async def chunks():
        yield b'{"model": "gpt-4o-mini", '
        yield b'"messages": [], "max_tokens": 9}'

    resp = await client.post("/api/chat", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()
    assert model.raw == [b'{"model":"gpt-4o-mini","messages":[],"max_tokens":9,"n":1}']
    assert model.lengths == [str(len(model.raw[0]))]


HOSTILE = [
    (b"model=gpt-4o-mini", 400, "the body is not valid JSON: Expecting value at line 1 column 1"),
    (b"[]", 400, "the body must be a JSON object, not an array"),
    (b'{"model": "gpt-4o-mini", "model": "gpt-4o"}', 400,
     "the key 'model' appears twice in one JSON object: send it once"),
    (b'{"model": "gpt-4o-mini", "max_tokens": 5, "max_tokens": 100000}', 400,
     "the key 'max_tokens' appears twice in one JSON object: send it once"),
    (b'{"model": "gpt-4o-mini", "max_tokens": NaN}', 400, "NaN is not a JSON number: send a finite number"),
    (b'{"model": "gpt-4o-mini", "max_tokens": "100000"}', 400,
     "max_tokens must be a whole number >= 0, not '100000'"),
    (b'{"model": "gpt-4o-mini", "max_tokens": true}', 400, "max_tokens must be a whole number >= 0, not true"),
    ('{"model": "gpt-4o-mini", "x": "caf\u00e9"}'.encode("latin-1"), 400, "the body must be JSON encoded as UTF-8"),
    (b"[" * 60_000, 400, "the JSON body is nested too deeply"),
    (b'{"model": "' + b"x" * 70_000 + b'"}', 413, "the request body is larger than the limit of 65536 bytes"),
    (b"", 400, "the body is not valid JSON: Expecting value at line 1 column 1"),
]


@pytest.mark.parametrize(("raw", "status", "message"), HOSTILE)
async def test_hostile_bodies_are_refused_before_anything_is_sent(aiohttp_server, aiohttp_client, tmp_path, raw,
                                                                  status, message):
    client, model = await client_for(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.post("/api/chat", data=raw, headers={"Content-Type": "application/json"})
    body = await resp.read()
    assert resp.status == status, body
    assert json.loads(body)["message"] == message
    assert len(body) < 400  # nothing of a huge body is repeated
    assert_clean(resp, body)
    assert model.up.seen == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=iso-8859-1"])
async def test_a_body_that_is_not_json_in_utf8_by_its_type_is_refused(aiohttp_server, aiohttp_client, tmp_path,
                                                                      content_type):
    client, model = await client_for(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.post("/api/chat", data=b'{"model": "gpt-4o-mini"}', headers={"Content-Type": content_type})
    assert resp.status == 400
    assert model.up.seen == []


async def test_get_is_not_a_method_of_a_guarded_forward(aiohttp_server, aiohttp_client, tmp_path):
    client, model = await client_for(aiohttp_server, aiohttp_client, tmp_path)
    resp = await client.get("/api/chat")
    assert resp.status == 405
    assert model.up.seen == []


async def test_two_content_types_are_refused_before_anything_is_sent(aiohttp_server, aiohttp_client, tmp_path):
    client, model = await client_for(aiohttp_server, aiohttp_client, tmp_path)
    headers = CIMultiDict([("Content-Type", "application/json"), ("Content-Type", "text/plain")])
    resp = await client.post("/api/chat", data=b'{"model": "gpt-4o-mini"}', headers=headers)
    assert resp.status == 400
    assert model.up.seen == []
