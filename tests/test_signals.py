"""SIGHUP on the real ``gateway serve``: config, .env and routes/ swapped in for new requests; a bad config changes
nothing and is logged one JSON line per problem; with workers every one of them reloads."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from pathlib import Path
from typing import Any

from aiohttp import web
from cli_support import PYTHON_M, Reply, Server, clean_env, free_port, get, wait_until
from upstream_support import ENV, Recorder, gateway

from gateway.app import build_table, swap
from gateway.config import load_config
from gateway.keys import RUNTIME, UPSTREAMS

WAIT = 10.0  # seconds: reached only when the behaviour under test is broken
KEY = "sk-hup-SECRETVALUE-0f1e2d3c4b5a"
CONFIG = """\
server:
  prefix: /api
upstreams:
  svc:
    url: http://127.0.0.1:9/base
    inject: { headers: { Authorization: "Bearer ${SVC_KEY}" } }
forwards:
  svc/[...path]: { upstream: svc, path: "/{path}" }
"""
USER = 'import os\n\n\nasync def GET(req):\n    return {"version": VERSION, "pid": os.getpid()}\n\nVERSION = 1\n'
ENV_ROUTE = 'import os\n\n\nasync def GET(req):\n    return {"greeting": os.environ.get("GREETING")}\n'
SLOW = """\
import asyncio
import pathlib


async def GET(req):
    pathlib.Path("started").write_text("1")
    while not pathlib.Path("go").exists():  # another process releases it: a file is the signal
        await asyncio.sleep(0.02)
    return {"answer": "old"}
"""


def start(tmp_path: Path, *args: str) -> Server:
    (tmp_path / "config.yaml").write_text(CONFIG)
    for name, source in {"user.py": USER, "env.py": ENV_ROUTE, "slow.py": SLOW}.items():
        (tmp_path / "routes" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "routes" / name).write_text(source)
    (tmp_path / ".env").write_text("GREETING=one\n")
    port = free_port()
    return Server(PYTHON_M, "serve", "--host", "127.0.0.1", "--port", str(port), *args, cwd=tmp_path,
                  env=clean_env(SVC_KEY=KEY), port=port)


def body(server: Server, path: str) -> Any:
    reply = server.get(path)
    assert reply is not None
    return json.loads(reply.body) if reply.body else None


def records(server: Server) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.stderr.splitlines() if line.strip()]


def hup_and_wait_for(server: Server, message: str, count: int = 1) -> None:
    already = sum(message in r["message"] for r in records(server))
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: sum(message in r["message"] for r in records(server)) >= already + count, WAIT,
               f"{count} x {message!r}", server.alive)


def test_sighup_swaps_in_routes_config_and_env_while_a_request_in_flight_finishes_on_the_old(tmp_path: Path) -> None:
    replies: list[Reply] = []
    with start(tmp_path) as server:
        server.wait_ready()
        assert body(server, "/api/user")["version"] == 1
        assert body(server, "/api/env") == {"greeting": "one"}
        assert server.get("/api/added").status == 404
        client = threading.Thread(target=lambda: replies.append(get(server.port, "/api/slow", timeout=WAIT)))
        client.start()
        try:
            wait_until((tmp_path / "started").exists, WAIT, "the slow request to start", server.alive)
            (tmp_path / "routes" / "user.py").write_text(USER.replace("VERSION = 1", "VERSION = 2"))
            (tmp_path / "routes" / "slow.py").write_text(SLOW.replace('"old"', '"new"'))
            (tmp_path / ".env").write_text("GREETING=two\n")
            (tmp_path / "config.yaml").write_text(CONFIG + "  added: { upstream: svc, path: /x }\n")
            hup_and_wait_for(server, "reloaded config.yaml")
            assert body(server, "/api/user")["version"] == 2
            assert body(server, "/api/env") == {"greeting": "two"}  # the new .env, though the old one set it
            assert server.get("/api/added").status == 502  # the new forward (its upstream is not listening)
            (tmp_path / "go").write_text("1")
        finally:
            client.join(WAIT)
        assert len(replies) == 1 and json.loads(replies[0].body) == {"answer": "old"}
        assert body(server, "/api/slow") == {"answer": "new"}
        assert server.terminate() == 0
    assert KEY not in server.stdout + server.stderr


def test_an_invalid_config_on_sighup_is_logged_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    with start(tmp_path) as server:
        server.wait_ready()
        good = CONFIG
        # two problems, one of which quotes the secret it was given: it must never be printed
        (tmp_path / "config.yaml").write_text(good.replace("    url: http://127.0.0.1:9/base\n",
                                                           '    url: "${SVC_KEY}"\n') + "  colour: blue\n")
        (tmp_path / "routes" / "user.py").write_text(USER.replace("VERSION = 1", "VERSION = 2"))
        hup_and_wait_for(server, "reload refused: 2 problems")
        problems = [r for r in records(server) if "problem" in r]
        assert len(problems) == 2 and all(r["level"] == "ERROR" for r in problems)
        assert any("upstreams.svc.url" in r["problem"] and "[REDACTED]" in r["problem"] for r in problems)
        assert any("forwards.colour" in r["problem"] for r in problems)
        assert body(server, "/api/user")["version"] == 1  # the old table, old modules
        # a route module that fails to import refuses the reload too
        (tmp_path / "config.yaml").write_text(good)
        (tmp_path / "routes" / "broken.py").write_text("1/0\n")
        hup_and_wait_for(server, "reload refused: 1 problem")
        assert body(server, "/api/user")["version"] == 1
        assert any("routes/broken.py: failed to import: ZeroDivisionError" in r.get("problem", "")
                   for r in records(server))
        # the prefix is indexed by aiohttp's router: changing it needs a restart, said in one line
        (tmp_path / "routes" / "broken.py").unlink()
        (tmp_path / "config.yaml").write_text(good.replace("prefix: /api", "prefix: /v2"))
        hup_and_wait_for(server, "reload refused: 1 problem")
        assert any("server.prefix: changed from /api to /v2, which needs a restart" in r.get("problem", "")
                   for r in records(server))
        # a verifier for signed-in users, or another shared state, is made at start: a reload that changes either is
        # refused as a whole (half applied, routes demanding tokens would have no verifier and admit everyone)
        jwt = ("clients:\n  jwt: { jwks_url: 'http://127.0.0.1:9/jwks.json', issuer: 'https://idp.example',\n"
               "         audience: gateway, lazy: true }\n")
        (tmp_path / "config.yaml").write_text(good + jwt)
        hup_and_wait_for(server, "reload refused: 1 problem")
        assert any("clients.jwt: changed, which needs a restart" in r.get("problem", "") for r in records(server))
        (tmp_path / "config.yaml").write_text(good + "state: redis://:${SVC_KEY}@127.0.0.1:9/0\n")  # never printed
        hup_and_wait_for(server, "reload refused: 1 problem")
        assert any("state: changed, which needs a restart" in r.get("problem", "") for r in records(server))
        assert body(server, "/api/user")["version"] == 1
        (tmp_path / "config.yaml").write_text(good)
        hup_and_wait_for(server, "reloaded config.yaml")
        assert body(server, "/api/user")["version"] == 2
        assert server.terminate() == 0
    assert KEY not in server.stdout + server.stderr
    assert "Traceback" not in server.stderr


def test_sighup_reaches_every_worker(tmp_path: Path) -> None:
    with start(tmp_path, "--workers", "2") as server:
        server.wait_ready()
        wait_until(lambda: server.stderr.count("gateway listening on") == 2, WAIT, "two workers", server.alive)
        (tmp_path / "routes" / "user.py").write_text(USER.replace("VERSION = 1", "VERSION = 2"))
        hup_and_wait_for(server, "reloaded config.yaml", count=2)
        reloaded = {r["pid"] for r in records(server) if r["message"].startswith("reloaded")}
        assert len(reloaded) == 2
        answers = [body(server, "/api/user") for _ in range(40)]
        assert {a["version"] for a in answers} == {2}
        assert {a["pid"] for a in answers} <= reloaded
        # an invalid config is refused once, by the supervisor, and reaches no worker
        (tmp_path / "config.yaml").write_text(CONFIG + "  colour: blue\n")
        hup_and_wait_for(server, "reload refused: 1 problem")
        assert sum("reload refused: 1 problem" in r["message"] for r in records(server)) == 1
        assert body(server, "/api/user")["version"] == 2
        assert server.terminate() == 0


async def test_a_call_in_flight_keeps_its_old_upstream_pool_until_it_is_done(aiohttp_server, aiohttp_client, tmp_path):
    """swap() in one process: a call running at the swap finishes on the old pool, which then keeps no connection;
    new calls go through the new pool."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.json_response({"done": True})

    up = Recorder()
    up.route("GET", "/base/slow", slow)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), timeout="10s")
    app = client.server.app
    old = app[UPSTREAMS]["svc"].pool
    call = asyncio.create_task(client.get("/api/svc/slow"))
    await asyncio.wait_for(entered.wait(), WAIT)
    assert (await client.get("/api/svc/not-there")).status == 404  # a second connection, idle after its answer
    assert old.busy == 2
    config = load_config(tmp_path / "config.yaml", environ=ENV)
    swap(app, config, build_table(config))
    new = app[UPSTREAMS]["svc"].pool
    assert new is not old and app[RUNTIME].retired == [old]  # new requests get a new pool
    assert old.busy == 1  # the idle connection is closed at once; the call's is not cut
    release.set()
    resp = await asyncio.wait_for(call, WAIT)
    assert resp.status == 200 and await resp.json() == {"done": True}
    assert old.busy == 0  # its answer read, the call's connection was closed, not kept idle
    assert (await client.get("/api/svc/not-there")).status == 404 and new.busy == 1 and old.busy == 0
