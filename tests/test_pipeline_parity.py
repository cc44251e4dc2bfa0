"""A YAML forward and the equivalent ``forward()`` call are one path: byte-identical requests upstream, identical
answers, for ordinary and hostile input alike; and a handler can never desynchronise a pooled connection."""

from __future__ import annotations

import asyncio
import gzip
import json

import httptools
import pytest
from upstream_support import ENV, free_port

from gateway.app import build_table, create_app
from gateway.config import load_config

CONFIG = """
upstreams:
  svc:
    url: http://127.0.0.1:{port}/base
    timeout: 2s
    inject: {{ headers: {{ Authorization: "Bearer ${{SVC_KEY}}" }}, query: {{ key: "${{SVC_QKEY}}" }} }}
    forward_headers: [X-Trace]
    expose_headers: [X-Kept]
forwards:
  y/[...path]: {{ upstream: svc, path: "/{{path}}", methods: [GET, POST, PUT, PATCH, DELETE] }}
"""
HANDLER = '''
from gateway import forward

async def handler(req):
    return await forward(req, "svc", "/" + req.match_info["path"])
'''
SMUGGLE = '''
from gateway import forward

async def GET(req):
    smuggled = b"0\\r\\n\\r\\nGET /smuggled HTTP/1.1\\r\\nHost: up\\r\\n\\r\\n"
    await forward(req, "svc", "/x", method="POST", data=smuggled, headers={req.query["name"]: req.query["value"]})
    return {"sent": True}
'''
METHOD = '''
from gateway import forward

async def GET(req):
    await forward(req, "svc", "/x", method=req.query["m"])
    return {"sent": True}
'''


class RawUpstream:
    """Records every request exactly as it arrived (head and body bytes) and answers each on the same connection."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.connections = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        done: list[bytes] = []
        current = bytearray()

        class Sink:
            def on_message_complete(self) -> None:
                done.append(b"")

        parser = httptools.HttpRequestParser(Sink())
        try:
            while data := await reader.read(65536):
                current += data
                parser.feed_data(data)
                while done:
                    done.pop()
                    self.requests.append(bytes(current))
                    body = json.dumps({"n": len(self.requests)}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Kept: k\r\nServer: up\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    current = bytearray()
        except (httptools.HttpParserError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def parity(aiohttp_client, tmp_path):
    up = RawUpstream()
    port = await up.start()
    (tmp_path / "config.yaml").write_text(CONFIG.format(port=port))
    (tmp_path / "routes" / "h").mkdir(parents=True)
    (tmp_path / "routes" / "h" / "[...path].py").write_text(HANDLER)
    (tmp_path / "routes" / "smuggle.py").write_text(SMUGGLE)
    (tmp_path / "routes" / "method.py").write_text(METHOD)
    config = load_config(tmp_path / "config.yaml", environ=ENV)
    client = await aiohttp_client(create_app(config, build_table(config)), auto_decompress=False)
    yield up, client
    await up.close()


CASES = [
    ("GET", "/a/b?x=1&key=evil&KEY=evil2", {}, None),
    ("GET", "/S%C3%A3o%20Paulo/%3Fq%3D1/%23frag/a%0D%0AX-Evil:%201", {}, None),
    ("GET", "/a;b/..%3B/%252e%252e/x", {"Accept": "application/json", "Accept-Language": "fr"}, None),
    ("GET", "/x", {"Authorization": "Bearer client", "Cookie": "c=1", "X-API-Key": "k", "X-Forwarded-For": "1.2.3.4",
                   "X-Trace": "t1", "Connection": "X-Trace", "Accept-Encoding": "br"}, None),
    ("GET", "/x", {"X-Trace": "t2", "Range": "bytes=0-1", "If-None-Match": '"e"'}, None),
    ("HEAD", "/x?y=2", {}, None),
    ("DELETE", "/items/1", {}, None),
    ("POST", "/items", {"Content-Type": "application/json"}, b'{"a": 1}'),
    ("PUT", "/items/1", {"Content-Type": "text/plain"}, b"x" * 70000),
    ("PATCH", "/items/1", {"Content-Type": "application/json", "Content-Encoding": "gzip"}, gzip.compress(b'{"z":1}')),
    ("POST", "/items", {"Content-Type": "application/json"}, "chunked"),
]


@pytest.mark.parametrize(("method", "path", "headers", "body"), CASES)
async def test_a_yaml_forward_and_forward_send_the_same_bytes_and_answer_alike(parity, method, path, headers, body):
    up, client = parity
    sent, answers = [], []
    for prefix in ("/api/y", "/api/h"):
        data = body
        if body == "chunked":
            async def chunks():
                yield b'{"part": 1,'
                yield b' "part2": 2}'

            data = chunks()
        before = len(up.requests)
        resp = await client.request(method, prefix + path, headers={**headers, "X-Request-Id": "same-id"}, data=data)
        answers.append((resp.status, await resp.read(), sorted((k, v) for k, v in resp.headers.items()
                                                              if k not in ("Date",))))
        assert len(up.requests) == before + 1, f"{prefix}: {resp.status} {answers[-1]}"
        sent.append(up.requests[-1])
    yaml_sent, handler_sent = sent
    assert yaml_sent == handler_sent
    assert b"client" not in yaml_sent and b"Cookie" not in yaml_sent and b"1.2.3.4" not in yaml_sent
    yaml_answer, handler_answer = answers
    assert yaml_answer[0] == handler_answer[0] == 200
    assert yaml_answer[2] == handler_answer[2]  # same headers (the same X-Request-Id was sent both times)
    assert json.loads(handler_answer[1] or b'{"n": 0}')["n"] == json.loads(yaml_answer[1] or b'{"n": 0}')["n"] + 1 \
        or method == "HEAD"


@pytest.mark.parametrize(("name", "value"), [
    ("Content-Length", "0"), ("Transfer-Encoding", "chunked"), ("Host", "other"), ("Connection", "keep-alive"),
    ("X-Ok", "a\r\nContent-Length: 0"), ("X-Ok\r\nContent-Length", "0"),
])
async def test_a_handler_cannot_desync_the_pooled_connection(parity, name, value):
    up, client = parity
    first = await client.get("/api/y/warm")  # one pooled connection to the upstream now
    assert first.status == 200
    resp = await client.get("/api/smuggle", params={"name": name, "value": value})
    assert resp.status in (400, 500)
    assert (await resp.json())["error"] in ("bad_request", "internal_error")
    after = await client.get("/api/y/next")
    assert after.status == 200 and await after.json() == {"n": 2}  # its own answer: nothing was smuggled in
    assert all(b"/smuggled" not in r and b"POST" not in r.split(b" ", 1)[0] for r in up.requests)
    assert len(up.requests) == 2


@pytest.mark.parametrize("method", ["GET /admin HTTP/1.1\r\nX-Injected: 1", "GET\r\n", "GE T", "", "G\0T"])
async def test_a_method_that_is_not_an_http_token_is_never_sent(parity, method):
    up, client = parity
    resp = await client.get("/api/method", params={"m": method})
    assert resp.status == 500 and (await resp.json())["error"] == "internal_error"
    assert up.requests == []


async def test_unreachable_upstream_is_the_same_error_both_ways(aiohttp_client, tmp_path):
    port = await free_port()
    (tmp_path / "config.yaml").write_text(CONFIG.format(port=port))
    (tmp_path / "routes" / "h").mkdir(parents=True)
    (tmp_path / "routes" / "h" / "[...path].py").write_text(HANDLER)
    config = load_config(tmp_path / "config.yaml", environ=ENV)
    client = await aiohttp_client(create_app(config, build_table(config)))
    bodies = []
    for path in ("/api/y/x", "/api/h/x"):
        resp = await client.get(path)
        bodies.append((resp.status, await resp.json()))
    assert bodies[0] == bodies[1] and bodies[0][0] == 502
