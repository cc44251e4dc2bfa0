"""The access log and /metrics in one process: real upstreams on 127.0.0.1, the app served with the AccessLog hook.

Every log line is formatted by the gateway's own JSON formatter and parsed back; every test also checks (autouse
fixture) that no secret reached a log record.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from upstream_support import (  # noqa: F401  (no_secret_logged is an autouse fixture)
    ENV,
    QSECRET,
    SECRET,
    SECRETS,
    UPSTREAM,
    Recorder,
    free_port,
    leaks,
    no_secret_logged,
)

from gateway.app import build_table, create_app
from gateway.config import load_config
from gateway.mask.scrub import Scrubber
from gateway.observe.access import write_pending
from gateway.observe.logs import ACCESS, DevLines, JsonLines, _encode
from gateway.yamlsource import ConfigError

WAIT = 5.0  # seconds: reached only when the behaviour under test is broken
CLIENT_KEY = "ck-live-CLIENTKEY-99887766554433"
FORWARDS = """
forwards:
  svc/[...path]: { upstream: svc, path: "/{path}", methods: [GET, POST] }
  down: { upstream: gone, path: "/x" }
"""
ROUTES = {"user.py": 'async def GET(req):\n    return {"name": "John Doe"}\n',
          "post/[pid].py": 'async def GET(req):\n    return {"pid": req.match_info["pid"]}\n'}


async def serve_gateway(aiohttp_server: Any, tmp_path: Path, up_port: int, *, server: str = "",
                        clients: str = "") -> Any:
    gone = await free_port()
    text = (server + UPSTREAM.format(port=up_port, timeout="2s", retries=0, forward_headers="[]", expose_headers="[]")
            + f"  gone:\n    url: http://127.0.0.1:{gone}/\n" + FORWARDS + clients)
    (tmp_path / "config.yaml").write_text(text)
    for name, source in ROUTES.items():
        (tmp_path / "routes" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "routes" / name).write_text(source)
    config = load_config(tmp_path / "config.yaml", environ={**ENV, "CLIENT_KEY": CLIENT_KEY})
    from gateway.observe.access import AccessLog

    return await aiohttp_server(create_app(config, build_table(config)), access_log_class=AccessLog,
                                access_log=logging.getLogger(ACCESS))


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The access log records, as the JSON lines the gateway writes (parsed back: each must be valid JSON)."""
    write_pending()  # lines of requests answered in this loop turn are logged on the next one
    formatter = JsonLines()
    return [json.loads(line) for r in caplog.records if r.name == ACCESS for line in formatter.format(r).split("\n")]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def get(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, bytes]:
    async with session.get(url, **kwargs) as resp:
        return resp.status, await resp.read()


async def test_one_json_line_per_request_with_the_route_pattern_and_upstream(aiohttp_server, tmp_path, caplog):
    up = Recorder()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    up.route("GET", "/base/hello", hello)
    gw = await serve_gateway(aiohttp_server, tmp_path, await up.serve(aiohttp_server))
    base = f"http://127.0.0.1:{gw.port}"
    async with aiohttp.ClientSession() as session:
        assert (await get(session, f"{base}/api/user"))[0] == 200
        assert (await get(session, f"{base}/api/post/abc?token=t0p", headers={"X-Request-Id": "rid-7"}))[0] == 200
        assert (await get(session, f"{base}/api/svc/hello"))[0] == 200
        assert (await get(session, f"{base}/api/down"))[0] == 502
        assert (await get(session, f"{base}/nowhere/at/all"))[0] == 404
        assert (await get(session, f"{base}/healthz"))[0] == 200
    lines = access_lines(caplog)
    assert [(line["method"], line["route"], line["status"]) for line in lines] == [
        ("GET", "/api/user", 200),
        ("GET", "/api/post/[pid]", 200),  # the pattern, never "/api/post/abc?token=t0p"
        ("GET", "/api/svc/[...path]", 200),
        ("GET", "/api/down", 502),
        ("GET", "(unmatched)", 404),
        ("GET", "/healthz", 200),
    ]
    shown = json.dumps([{k: v for k, v in line.items() if k != "request_id"} for line in lines])  # a random id
    assert "abc" not in shown and "t0p" not in shown and "nowhere" not in shown  # may hold "abc" by chance
    for line in lines:
        assert line["level"] == "INFO" and line["logger"] == ACCESS and line["time"].endswith("Z")
        assert line["duration_ms"] >= 0 and line["bytes"] > 0
        assert set(line) >= {"request_id", "upstream", "upstream_status", "cache", "client", "pid"}
    assert lines[1]["request_id"] == "rid-7"
    assert [line["client"] for line in lines[:4]] == ["ip:127.0.0.1"] * 4  # each routed request names its caller
    assert lines[2]["upstream"] == "svc" and lines[2]["upstream_status"] == 200 and lines[2]["upstream_ms"] > 0
    assert lines[3]["upstream"] == "gone" and lines[3]["upstream_status"] is None
    assert lines[0]["upstream"] is None
    failures = [r for r in caplog.records if r.name == "gateway.upstream"]
    assert len(failures) == 1 and failures[0].levelname == "WARNING"
    assert failures[0].upstream == "gone" and "connect" in failures[0].reason.lower()


async def test_metrics_count_a_known_sequence(aiohttp_server, tmp_path, caplog):
    up = Recorder()

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.query.get("s", "200")), text="x")

    up.route("GET", "/base/status", status)
    gw = await serve_gateway(aiohttp_server, tmp_path, await up.serve(aiohttp_server))
    base = f"http://127.0.0.1:{gw.port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            await get(session, f"{base}/api/user")
        for pid in ("a", "b"):
            await get(session, f"{base}/api/post/{pid}")
        await get(session, f"{base}/api/svc/status?s=404")
        await get(session, f"{base}/api/svc/status?s=500")  # withheld: the client sees 502
        await get(session, f"{base}/api/down")
        await get(session, f"{base}/api/user", headers={"X": "y"}, allow_redirects=False)
        status_code, body = await get(session, f"{base}/metrics")
    assert status_code == 200
    text = body.decode()
    assert value(text, "gateway_requests_total", route="/api/user", method="GET", status="200") == 4
    assert value(text, "gateway_requests_total", route="/api/post/[pid]", method="GET", status="200") == 2
    assert value(text, "gateway_requests_total", route="/api/svc/[...path]", method="GET", status="404") == 1
    assert value(text, "gateway_requests_total", route="/api/svc/[...path]", method="GET", status="502") == 1
    assert value(text, "gateway_request_duration_seconds_count", route="/api/user", method="GET", status="200") == 4
    assert value(text, "gateway_upstream_responses_total", upstream="svc", status="404") == 1
    assert value(text, "gateway_upstream_responses_total", upstream="svc", status="500") == 1
    assert value(text, "gateway_upstream_responses_total", upstream="gone", status="error") == 1
    assert value(text, "gateway_upstream_duration_seconds_count", upstream="svc") == 2
    assert value(text, "gateway_requests_in_flight") == 0
    assert value(text, "gateway_open_streams") == 0
    assert "/api/post/a" not in text and "/api/post/b" not in text  # labels are patterns, never raw paths


async def test_an_open_stream_is_counted_until_it_ends(aiohttp_server, tmp_path, caplog):
    release = asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: one\n\n")
        await asyncio.wait_for(release.wait(), WAIT)
        await resp.write(b"data: two\n\n")
        return resp

    up = Recorder()
    up.route("GET", "/base/events", sse)
    gw = await serve_gateway(aiohttp_server, tmp_path, await up.serve(aiohttp_server))
    base = f"http://127.0.0.1:{gw.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/api/svc/events") as stream:
            assert await asyncio.wait_for(stream.content.readuntil(b"\n\n"), WAIT) == b"data: one\n\n"
            text = (await get(session, f"{base}/metrics"))[1].decode()
            assert value(text, "gateway_open_streams") == 1
            assert value(text, "gateway_requests_in_flight") == 1
            release.set()
            assert await asyncio.wait_for(stream.read(), WAIT) == b"data: two\n\n"
        text = (await get(session, f"{base}/metrics"))[1].decode()
    assert value(text, "gateway_open_streams") == 0
    assert value(text, "gateway_requests_in_flight") == 0
    streamed = [line for line in access_lines(caplog) if line["route"] == "/api/svc/[...path]"]
    assert len(streamed) == 1 and streamed[0]["streamed"] is True and streamed[0]["status"] == 200
    assert streamed[0]["bytes"] >= len(b"data: one\n\ndata: two\n\n")


async def test_a_client_that_leaves_is_logged_as_499(aiohttp_server, tmp_path, caplog):
    entered = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        entered.set()
        await asyncio.sleep(3600)  # cancelled when the gateway drops the call
        return web.Response()

    up = Recorder()
    up.route("GET", "/base/hang", hang)
    gw = await serve_gateway(aiohttp_server, tmp_path, await up.serve(aiohttp_server))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /api/svc/hang HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(entered.wait(), WAIT)
    writer.close()
    await writer.wait_closed()
    deadline = asyncio.get_running_loop().time() + WAIT
    while not [line for line in access_lines(caplog) if line["status"] == 499]:
        assert asyncio.get_running_loop().time() < deadline, "no 499 line for a client that left"
        await asyncio.sleep(0.02)
    line = next(line for line in access_lines(caplog) if line["status"] == 499)
    assert line["route"] == "/api/svc/[...path]" and line["upstream"] == "svc"
    async with aiohttp.ClientSession() as session:
        text = (await get(session, f"http://127.0.0.1:{gw.port}/metrics"))[1].decode()
    assert value(text, "gateway_requests_total", route="/api/svc/[...path]", method="GET", status="499") == 1
    assert value(text, "gateway_requests_in_flight") == 0


HOSTILE_PATHS = [
    f"/api/svc/{SECRET}",
    f"/api/post/{SECRET}?key={QSECRET}",
    f"/api/user?appid={SECRET}&token={CLIENT_KEY}",
    f"/{SECRET}/../api/user",
    "/api/svc/%0d%0aX-Injected:%20" + SECRET,
    f"/api/{'a' * 4000}",
    f"/metrics?{SECRET}",
]


async def test_no_secret_client_key_or_token_in_any_line_or_metric(aiohttp_server, tmp_path, caplog):
    async def echo(request: web.Request) -> web.Response:  # echoes the injected key, as some APIs do
        return web.json_response({"auth": request.headers.get("Authorization"), "q": request.query_string})

    up = Recorder()
    up.route("GET", "/base/{tail:.*}", echo)
    clients = f'clients:\n  api_keys: ["{CLIENT_KEY}"]\n'
    gw = await serve_gateway(aiohttp_server, tmp_path, await up.serve(aiohttp_server), clients=clients)
    base = f"http://127.0.0.1:{gw.port}"
    sent = 0
    async with aiohttp.ClientSession() as session:
        for path in HOSTILE_PATHS:
            for headers in ({}, {"X-API-Key": CLIENT_KEY}, {"Authorization": f"Bearer {SECRET}"},
                            {"X-API-Key": QSECRET}):
                status, _ = await get(session, base + path, headers=headers)
                assert status < 600
                sent += 1
        text = (await get(session, f"{base}/metrics"))[1].decode()
    assert value(text, "gateway_requests_in_flight") == 0
    assert sum(v for (name, _), v in samples(text).items() if name == "gateway_requests_total") == sent
    assert not leaks(text, (*SECRETS, CLIENT_KEY)), "a secret reached /metrics"
    formatted = "\n".join(JsonLines().format(r) for r in caplog.records)
    assert not leaks(formatted, (*SECRETS, CLIENT_KEY)), "a secret reached a log line"
    assert len(access_lines(caplog)) == sent + 1
    assert any(line["status"] == 401 for line in access_lines(caplog))
    assert any(line["status"] == 200 and line["upstream"] == "svc" for line in access_lines(caplog))


async def test_a_client_request_id_shaped_like_a_key_is_scrubbed_as_serve_does(aiohttp_server, tmp_path, caplog):
    gw = await serve_gateway(aiohttp_server, tmp_path, await free_port())
    async with aiohttp.ClientSession() as session:
        await get(session, f"http://127.0.0.1:{gw.port}/api/user", headers={"X-Request-Id": SECRET[:24]})
    write_pending()
    formatter = JsonLines()
    formatter.scrub = Scrubber(SECRETS).scrub_text  # what `gateway serve` installs (reload.protect_logs)
    lines = [line for r in caplog.records if r.name == ACCESS for line in formatter.format(r).split("\n")]
    assert len(lines) == 1 and not leaks(lines[0]) and "[REDACTED]" in lines[0]


async def test_metrics_need_no_client_key_and_can_move_or_be_off(aiohttp_server, tmp_path):
    up_port = await free_port()
    clients = f'clients:\n  api_keys: ["{CLIENT_KEY}"]\n'
    gw = await serve_gateway(aiohttp_server, tmp_path, up_port, clients=clients)
    async with aiohttp.ClientSession() as session:
        status, body = await get(session, f"http://127.0.0.1:{gw.port}/metrics")
        assert status == 200 and b"gateway_requests_total" in body
        assert (await get(session, f"http://127.0.0.1:{gw.port}/api/user"))[0] == 401
        assert (await session.post(f"http://127.0.0.1:{gw.port}/metrics")).status == 405
    moved = tmp_path / "moved"
    (moved / "routes").mkdir(parents=True)
    gw = await serve_gateway(aiohttp_server, moved, up_port, server="server:\n  metrics: /ops/metrics\n")
    off = tmp_path / "off"
    (off / "routes").mkdir(parents=True)
    gw_off = await serve_gateway(aiohttp_server, off, up_port, server="server:\n  metrics: false\n")
    async with aiohttp.ClientSession() as session:
        assert (await get(session, f"http://127.0.0.1:{gw.port}/ops/metrics"))[0] == 200
        assert (await get(session, f"http://127.0.0.1:{gw.port}/metrics"))[0] == 404
        assert (await get(session, f"http://127.0.0.1:{gw_off.port}/metrics"))[0] == 404
        assert (await get(session, f"http://127.0.0.1:{gw_off.port}/api/user"))[0] == 200  # still served, logged


@pytest.mark.parametrize(
    ("value_text", "message"),
    [
        ("metrics", "'metrics' is not a path: give a path such as /metrics, or false to turn metrics off"),
        ("/api/metrics", "'/api/metrics' is under the prefix /api, where routes are served: choose a path outside "
                         "it, such as /metrics"),
        ("/healthz", "'/healthz' is taken by the gateway itself: give a path such as /metrics, or false to turn "
                     "metrics off"),
        ("/m?x=1", "'/m?x=1' is not a path: give a path such as /metrics, or false to turn metrics off"),
    ],
)
def test_a_bad_metrics_path_is_one_clear_error(tmp_path, monkeypatch, value_text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(f"server:\n  metrics: {value_text}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "config.yaml", environ={})
    assert [str(p) for p in caught.value.problems] == [f"config.yaml:2: server.metrics: {message}"]


def test_metrics_setting_defaults_and_off(tmp_path):
    (tmp_path / "config.yaml").write_text("server:\n  prefix: /api\n")
    assert load_config(tmp_path / "config.yaml", environ={}).server.metrics == "/metrics"
    (tmp_path / "config.yaml").write_text("server:\n  metrics: false\n")
    assert load_config(tmp_path / "config.yaml", environ={}).server.metrics is None
    (tmp_path / "config.yaml").write_text("server:\n  metrics: /internal/metrics/\n")
    assert load_config(tmp_path / "config.yaml", environ={}).server.metrics == "/internal/metrics"


def test_formatters_scrub_every_field_and_dev_lines_are_readable():
    record = logging.LogRecord("gateway", logging.ERROR, __file__, 1, "bad header %r", (SECRET,), None)
    record.reason = f"refused for {QSECRET}"
    json_lines, dev_lines = JsonLines(), DevLines()
    for formatter in (json_lines, dev_lines):
        formatter.scrub = lambda text: text.replace(SECRET, "[REDACTED]").replace(QSECRET, "[REDACTED]")
    line = json_lines.format(record)
    assert not leaks(line) and "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "bad header '[REDACTED]'" and parsed["reason"] == "refused for [REDACTED]"
    assert list(parsed)[:5] == ["time", "level", "logger", "pid", "message"]
    human = dev_lines.format(record)
    assert not leaks(human) and "\n" not in human
    assert "ERROR" in human and "bad header '[REDACTED]'" in human and "reason=refused for [REDACTED]" in human


def _batch(*lines: dict[str, Any]) -> logging.LogRecord:
    """An access record as write_pending logs it: the lines of one loop turn."""
    record = logging.LogRecord(ACCESS, logging.INFO, __file__, 1, "%d requests", (len(lines),), None)
    record.lines = list(lines)
    return record


def _access_line(**fields: Any) -> dict[str, Any]:
    line = {"time": 1764700000.5, "level": "INFO", "logger": ACCESS, "pid": None, "message": "GET /api/user 200",
            "request_id": "r1", "method": "GET", "route": "/api/user", "status": 200, "duration_ms": 1.5,
            "bytes": 12, "upstream": None}
    return {**line, **fields}


@pytest.mark.parametrize("fields", [
    {},
    {"route": "/api/caf\u00e9/[id]", "client": "sub:j\u00fcrgen"},  # non-ASCII: escaped, as in every other line
    {"route": "/api/\udcff"},  # a lone surrogate (a route file's undecodable name): orjson refuses it
    {"bytes": 2**70},  # past 64 bits: orjson refuses it
])
def test_an_access_line_is_ascii_json_whatever_its_values(fields):
    line = {**_access_line(**fields), "time": "2025-12-02T18:26:40.500Z", "pid": 7}
    text = _encode(line)
    assert text.isascii() and "\n" not in text
    assert json.loads(text) == line


@pytest.mark.parametrize("client", [f"sub:{SECRET}", f"sub:j\u00fcrgen-{SECRET}", f"sub:\udcff{SECRET}"])
def test_a_secret_in_an_access_line_is_redacted_whichever_encoder_wrote_it(client):
    """orjson writes an ASCII line; the stdlib encoder one with non-ASCII text or a lone surrogate: either way the
    batch's scan finds the secret, and the line is written again value by value, redacted."""
    json_lines = JsonLines()
    json_lines.scrub = Scrubber(SECRETS).scrub_text
    text = json_lines.format(_batch(_access_line(client=client)))
    assert not leaks(text) and "[REDACTED]" in json.loads(text)["client"]


def test_a_batch_of_access_lines_is_one_valid_json_line_each_and_scrubbed():
    json_lines, dev_lines = JsonLines(), DevLines()
    for formatter in (json_lines, dev_lines):
        formatter.scrub = Scrubber(SECRETS).scrub_text
    digits = "7301942285551203"  # a secret of digits: it must not break a number's JSON when it is redacted
    json_lines.scrub = Scrubber([*SECRETS, digits]).scrub_text
    record = _batch(_access_line(request_id=SECRET[:20]), _access_line(status=404, bytes=int(digits)),
                    _access_line(client=f"ip:{QSECRET}", route="/api/q\"uote\t"))
    text = json_lines.format(record)
    parsed = [json.loads(line) for line in text.split("\n")]
    assert len(parsed) == 3 and not leaks(text)
    assert [p["status"] for p in parsed] == [200, 404, 200]
    assert parsed[0]["time"] == "2025-12-02T18:26:40.500Z" and parsed[0]["pid"] == record.process
    assert parsed[0]["request_id"] == "[REDACTED]" and parsed[2]["client"] == "ip:[REDACTED]"
    assert parsed[1]["bytes"] == int(digits)  # strings are redacted, numbers are not rewritten
    assert parsed[2]["route"] == "/api/q\"uote\t"
    assert list(parsed[1])[:5] == ["time", "level", "logger", "pid", "message"]
    assert json_lines.format(record) == text  # formatting does not change the record: a second handler sees the same
    human = dev_lines.format(record).split("\n")
    assert len(human) == 3 and "INFO" in human[1] and "status=404" in human[1] and not leaks("\n".join(human))


def test_access_lines_of_one_loop_turn_are_logged_on_the_next_in_order(caplog):
    from gateway.observe.access import record

    caplog.set_level(logging.INFO, logger=ACCESS)

    class Request(dict):  # what record() reads of an aiohttp request
        method = "GET"
        headers: dict[str, str] = {}

    async def main() -> list[logging.LogRecord]:
        for i in range(5):
            record(Request(), 200 + i, 0.001, 10, None)
        assert not [r for r in caplog.records if r.name == ACCESS]  # nothing written yet in this turn
        await asyncio.sleep(0)
        return [r for r in caplog.records if r.name == ACCESS]

    records = asyncio.run(main())
    assert len(records) == 1
    lines = [json.loads(line) for line in JsonLines().format(records[0]).split("\n")]
    assert [line["status"] for line in lines] == [200, 201, 202, 203, 204]
    assert {line["route"] for line in lines} == {"(unmatched)"}


def test_metrics_added_up_between_flushes_render_as_prometheus_would_count_them():
    from prometheus_client import Counter, Histogram

    from gateway.observe.metrics import BUCKETS, Metrics

    batched = Metrics()
    direct = CollectorRegistry()
    requests = Counter("gateway_requests", "x", ("route", "method", "status"), registry=direct)
    duration = Histogram("gateway_request_duration_seconds", "x", ("route", "method", "status"), buckets=BUCKETS,
                         registry=direct)
    # every bucket bound exactly (le is inclusive), between bounds, beyond the last, and two label sets
    values = [*BUCKETS, 0.0, 0.004, 0.007, 0.3, 61.0, 1e9]
    for i, seconds in enumerate(values):
        labels = ("/api/a" if i % 2 else "/api/b", "GET", "200")
        batched.count(batched.requests, labels)
        batched.observe(batched.duration, labels, seconds)
        requests.labels(*labels).inc()
        duration.labels(*labels).observe(seconds)
        if i == 7:
            batched.flush()  # a flush halfway: the rest adds to what was handed over
    got, want = samples(batched.render().decode()), samples(generate_latest(direct).decode())
    wanted = {key: v for key, v in want.items() if not key[0].endswith("_created")}
    assert {key: got.get(key) for key in wanted} == wanted
    assert value(batched.render().decode(), "gateway_requests_in_flight") == 0
