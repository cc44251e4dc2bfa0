"""The real ``gateway serve`` as a subprocess: supervised workers, whole-gateway metrics, SIGTERM within grace.

Fake upstreams run in the test's own event loop; every blocking wait on the gateway (readiness, exit) goes
through a thread so they keep answering. Order is coordinated with events (the upstream holds its answer until
the test has sent SIGTERM), never with sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cli_support import PYTHON_M, Server, clean_env, free_port, get, wait_until
from prometheus_client.parser import text_string_to_metric_families
from upstream_support import Recorder

WAIT = 10.0  # seconds: reached only when the behaviour under test is broken
KEY = "sk-srv-SECRETVALUE-a1b2c3d4e5f6"
CONFIG = """\
server:
  prefix: /api
  shutdown_grace: {grace}
upstreams:
  svc:
    url: http://127.0.0.1:{port}/base
    timeout: 30s
    inject: {{ headers: {{ Authorization: "Bearer ${{SVC_KEY}}" }} }}
forwards:
  svc/[...path]: {{ upstream: svc, path: "/{{path}}" }}
"""
USER = 'async def GET(req):\n    return {"name": "John Doe", "pid": __import__("os").getpid()}\n'


def start(tmp_path: Path, *args: str, grace: str = "5s", up_port: int = 9, routes: dict[str, str] | None = None
          ) -> Server:
    (tmp_path / "config.yaml").write_text(CONFIG.format(grace=grace, port=up_port))
    for name, source in {"user.py": USER, **(routes or {})}.items():
        (tmp_path / "routes" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "routes" / name).write_text(source)
    port = free_port()
    return Server(PYTHON_M, "serve", "--host", "127.0.0.1", "--port", str(port), *args, cwd=tmp_path,
                  env=clean_env(SVC_KEY=KEY), port=port)


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of ``pid``, read from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry))
    return found


def lines(text: str) -> list[dict[str, Any]]:
    """Every line of a gateway output stream, each of which must be a JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def total(text: str, name: str, **labels: str) -> float:
    found = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found += sample.value
    return found


def test_metrics_answer_for_every_worker(tmp_path: Path) -> None:
    with start(tmp_path, "--workers", "2") as server:
        server.wait_ready()
        wait_until(lambda: len(children(server.proc.pid)) == 2, WAIT, "two workers", server.alive)
        sent, pids = 0, set()
        deadline = time.monotonic() + 20
        while (len(pids) < 2 or sent < 40) and sent < 400 and time.monotonic() < deadline:
            reply = get(server.port, "/api/user")  # a new connection each time: the kernel spreads them
            assert reply.status == 200
            pids.add(json.loads(reply.body)["pid"])
            sent += 1
        assert len(pids) == 2, f"{sent} requests all went to one worker"
        # each worker hands its numbers over at most FLUSH_SECONDS after a request: wait for the other one's
        wait_until(lambda: total(get(server.port, "/metrics").body.decode(), "gateway_requests_total",
                                 route="/api/user") == sent, WAIT, "both workers' requests counted", server.alive)
        scrapes = [get(server.port, "/metrics").body.decode() for _ in range(4)]  # whichever worker answers
        for text in scrapes:
            assert total(text, "gateway_requests_total", route="/api/user") == sent
            assert total(text, "gateway_request_duration_seconds_count", route="/api/user") == sent
            assert total(text, "gateway_requests_in_flight") == 0
            assert KEY not in text
        metrics_dir = _metrics_dir(next(iter(children(server.proc.pid))))
        assert metrics_dir.is_dir()
        assert server.terminate() == 0
    assert not metrics_dir.exists()  # the supervisor's private directory is removed at exit
    access = [line for line in lines(server.stdout) if line["route"] == "/api/user"]
    assert len(access) == sent and {line["pid"] for line in access} == pids
    assert KEY not in server.stdout + server.stderr


def _metrics_dir(pid: int) -> Path:
    """The directory of the multiprocess metric files a worker has mapped into memory."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[-1]
        if path.endswith(".db") and "/gateway-metrics-" in path:
            return Path(path).parent
    raise AssertionError(f"worker {pid} maps no metrics file")


def test_a_killed_worker_is_replaced_and_the_port_keeps_answering(tmp_path: Path) -> None:
    with start(tmp_path, "--workers", "2") as server:
        server.wait_ready()
        wait_until(lambda: server.stderr.count("gateway listening on") == 2, WAIT, "two workers", server.alive)
        before = children(server.proc.pid)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        # reaped by the supervisor (it says so): the process is gone, and its listening socket with it. Connections
        # the kernel had queued on that socket at the kill are reset: SO_REUSEPORT's known cost of a dying worker.
        wait_until(lambda: f"worker {victim} exited with -9" in server.stderr, WAIT, "the killed worker to be reaped")
        for i in range(20):  # the survivor answers every new connection meanwhile
            try:
                assert get(server.port, "/api/user").status == 200
            except OSError as exc:
                raise AssertionError(f"request {i} after the kill: {exc!r}\n{server.stderr}") from None
        wait_until(lambda: len(children(server.proc.pid)) == 2, WAIT, "a new worker", server.alive)
        after = children(server.proc.pid)
        assert victim not in after and len(after - before) == 1
        wait_until(lambda: server.stderr.count("gateway listening on") == 3, WAIT, "the new worker listening")
        pids = {json.loads(get(server.port, "/api/user").body)["pid"] for _ in range(60)}
        assert pids <= after
        assert server.terminate() == 0
    errors = lines(server.stderr)
    assert any(line["level"] == "WARNING" and f"worker {victim} exited with -9" in line["message"] for line in errors)
    assert not children(server.proc.pid)


# --- SIGTERM: in-flight requests and streams within and past shutdown_grace ---------------------------------------


async def _upstream(aiohttp_server: Any, release: asyncio.Event, entered: asyncio.Event) -> int:
    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.json_response({"done": True})

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: one\n\n")
        entered.set()
        await release.wait()
        await resp.write(b"data: two\n\n")
        return resp

    up = Recorder()
    up.route("GET", "/base/slow", slow)
    up.route("GET", "/base/events", events)
    return await up.serve(aiohttp_server)


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def _sigterm_during(aiohttp_server: Any, tmp_path: Path, path: str, *, grace: str, release_after: bool,
                          workers: str = "1") -> tuple[int, float, bytes | Exception, Server]:
    """Start ``path`` (held by the upstream), SIGTERM the gateway, then release the upstream or not.

    Returns the exit code, the seconds from SIGTERM to exit, what the client got, and the server."""
    release, entered = asyncio.Event(), asyncio.Event()
    up_port = await _upstream(aiohttp_server, release, entered)
    server = start(tmp_path, "--workers", workers, grace=grace, up_port=up_port)
    with server:
        await asyncio.to_thread(server.wait_ready)
        count = int(workers)
        await asyncio.to_thread(wait_until, lambda: server.stderr.count("gateway listening on") == count, WAIT,
                                "every worker listening", server.alive)
        async with aiohttp.ClientSession() as session:
            first = asyncio.Event()

            async def fetch() -> bytes:
                async with session.get(f"http://127.0.0.1:{server.port}{path}") as resp:
                    head = await resp.content.readuntil(b"\n\n") if path.endswith("events") else b""
                    first.set()
                    return head + await resp.read()

            task = asyncio.create_task(fetch())
            try:
                await asyncio.wait_for(entered.wait(), WAIT)
                if path.endswith("events"):
                    await asyncio.wait_for(first.wait(), WAIT)  # the client has the first event
                stopped = time.monotonic()
                server.proc.send_signal(signal.SIGTERM)
                # no new connections: the listening socket closes at once, while the request is still in flight
                await asyncio.to_thread(wait_until, lambda: _refused(server.port), WAIT, "the port to close")
                assert server.proc.poll() is None
                if release_after:
                    release.set()
                got: bytes | Exception
                try:
                    got = await asyncio.wait_for(task, WAIT)
                except (aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
                    got = exc
                code = await asyncio.to_thread(server.proc.wait, WAIT)
                return code, time.monotonic() - stopped, got, server
            finally:
                release.set()
                task.cancel()


async def test_sigterm_lets_a_slow_upstream_call_finish_within_grace(aiohttp_server, tmp_path):
    code, _, got, server = await _sigterm_during(aiohttp_server, tmp_path, "/api/svc/slow", grace="5s",
                                                 release_after=True)
    assert code == 0
    assert got == b'{"done": true}'
    messages = [line["message"] for line in lines(server.stderr)]
    assert any(m.startswith("shutting down") for m in messages) and messages[-1] == "stopped"
    access = [(line["route"], line["status"]) for line in lines(server.stdout) if line["route"] != "/healthz"]
    assert access == [("/api/svc/[...path]", 200)]


async def test_sigterm_cuts_a_slow_call_past_grace_and_still_exits_0(aiohttp_server, tmp_path):
    code, seconds, got, server = await _sigterm_during(aiohttp_server, tmp_path, "/api/svc/slow", grace="300ms",
                                                       release_after=False)
    assert code == 0
    assert isinstance(got, Exception), got  # the connection was cut, no answer
    assert seconds < WAIT
    assert [line["status"] for line in lines(server.stdout) if line["route"] != "/healthz"] == [499]  # logged as cut


async def test_sigterm_lets_an_open_sse_stream_finish_within_grace(aiohttp_server, tmp_path):
    code, _, got, _ = await _sigterm_during(aiohttp_server, tmp_path, "/api/svc/events", grace="5s",
                                            release_after=True)
    assert code == 0
    assert got == b"data: one\n\ndata: two\n\n"


async def test_sigterm_cuts_an_sse_stream_past_grace(aiohttp_server, tmp_path):
    code, seconds, got, server = await _sigterm_during(aiohttp_server, tmp_path, "/api/svc/events", grace="300ms",
                                                       release_after=False)
    assert code == 0 and seconds < WAIT
    assert isinstance(got, Exception) or got == b"data: one\n\n", got  # never the second event
    assert KEY not in server.stdout + server.stderr


async def test_sigterm_reaches_every_worker_which_each_drain(aiohttp_server, tmp_path):
    code, _, got, server = await _sigterm_during(aiohttp_server, tmp_path, "/api/svc/slow", grace="5s",
                                                 release_after=True, workers="2")
    assert code == 0 and got == b'{"done": true}'
    stopped = [line for line in lines(server.stderr) if line["message"] == "stopped"]
    assert len({line["pid"] for line in stopped}) == 2, server.stderr


def test_readyz_is_503_while_draining(tmp_path: Path) -> None:
    """A request in flight during the drain asks /readyz's own handler: 503, while the port is already closed."""
    slow = """\
import asyncio
import pathlib

from gateway.app import readyz


async def GET(req):
    pathlib.Path("started").write_text("1")
    while not pathlib.Path("go").exists():
        await asyncio.sleep(0.02)
    return {"readyz": (await readyz(req)).status}
"""
    results: list[Any] = []
    with start(tmp_path, grace="5s", routes={"drain.py": slow}) as server:
        server.wait_ready()
        assert json.loads(get(server.port, "/readyz").body) == {"status": "ready", "state": "memory"}
        client = threading.Thread(target=lambda: results.append(get(server.port, "/api/drain", timeout=WAIT)))
        client.start()
        try:
            wait_until((tmp_path / "started").exists, WAIT, "the request to start", server.alive)
            server.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: _refused(server.port), WAIT, "the port to close")
            (tmp_path / "go").write_text("1")
            assert server.proc.wait(WAIT) == 0
        finally:
            client.join(WAIT)
    assert len(results) == 1 and results[0].status == 200
    assert json.loads(results[0].body) == {"readyz": 503}


CRASHING = """\
import sys
from pathlib import Path

import gateway.supervisor as supervisor
from gateway.observe.logs import setup_logging
from gateway.reload import Project

setup_logging()
supervisor.serve = lambda *args, **kwargs: 1  # every worker fails as it starts, as one that cannot listen would
project = Project(Path("config.yaml"))
config, table = project.load()
sys.exit(supervisor.supervise(project, config, table, host="127.0.0.1", port=int(sys.argv[1]), workers=2,
                              debug=False))
"""


def test_the_supervisor_gives_up_when_workers_keep_dying_at_start(tmp_path: Path) -> None:
    """Real forks and signals; only the worker's body is replaced by one that exits 1 at once."""
    (tmp_path / "config.yaml").write_text(CONFIG.format(grace="1s", port=9))
    (tmp_path / "routes").mkdir()
    (tmp_path / "crash.py").write_text(CRASHING)
    result = subprocess.run([sys.executable, "crash.py", str(free_port())], cwd=tmp_path, env=clean_env(SVC_KEY=KEY),
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1, result.stderr
    messages = [line["message"] for line in lines(result.stderr)]
    assert "workers keep dying right after they start (5 in a row): stopping" in messages
    restarts = [m for m in messages if "exited with 1; starting another in" in m]
    assert [m.rpartition(" in ")[2] for m in restarts] == ["0.1s", "0.2s", "0.4s", "0.8s"]  # backing off


def test_dev_prints_one_readable_line_per_record(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG.format(grace="1s", port=9))
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "user.py").write_text(USER)
    port = free_port()
    with Server(PYTHON_M, "dev", "--port", str(port), cwd=tmp_path, env=clean_env(SVC_KEY=KEY), port=port) as server:
        server.wait_ready()
        assert get(port, "/api/user").status == 200
        assert get(port, "/api/svc/x").status == 502
        wait_until(lambda: "GET /api/svc/[...path] 502" in server.stdout, WAIT, "the access line", server.alive)
        assert server.terminate() == 0
    out = [line for line in server.stdout.splitlines() if "/api/" in line]
    assert len(out) == 2
    for line in out:
        assert not line.startswith("{") and " INFO " in line and "duration_ms=" in line
    assert "GET /api/user 200" in out[0] and "upstream=svc" in out[1]
    assert "upstream svc failed: cannot connect" in server.stderr
    assert KEY not in server.stdout + server.stderr


def test_access_log_false_writes_no_line_per_request_and_still_counts(tmp_path: Path) -> None:
    server = start(tmp_path)
    (tmp_path / "config.yaml").write_text((tmp_path / "config.yaml").read_text().replace(
        "server:\n", "server:\n  access_log: false\n", 1))
    with server:
        server.wait_ready()
        for _ in range(3):
            assert get(server.port, "/api/user").status == 200
        metrics = get(server.port, "/metrics").body.decode()
        assert 'gateway_requests_total{method="GET",route="/api/user",status="200"} 3.0' in metrics
        assert server.terminate() == 0
    assert "/api/user" not in server.stdout  # no access line ...
    assert "gateway listening" in server.stderr  # ... while the other lines are still written


def test_with_no_access_log_and_no_metrics_nothing_observes_and_answers_are_whole(tmp_path: Path) -> None:
    """Both off: no observe step, no access logger (nothing to write or count); answers keep their request ids, a
    route module still answers, /metrics is not served, and a reload still swaps in the new routes."""
    server = start(tmp_path)
    (tmp_path / "config.yaml").write_text((tmp_path / "config.yaml").read_text().replace(
        "server:\n", "server:\n  access_log: false\n  metrics: false\n", 1))
    with server:
        server.wait_ready()
        answers = [get(server.port, "/api/user") for _ in range(3)]
        assert [a.status for a in answers] == [200, 200, 200]
        assert len({a.headers["X-Request-Id"] for a in answers}) == 3
        assert get(server.port, "/metrics").status == 404
        (tmp_path / "routes" / "user.py").write_text(USER.replace("John Doe", "Jane Roe"))
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(lambda: b"Jane Roe" in get(server.port, "/api/user").body, 20, "the reloaded route")
        assert server.terminate() == 0
    assert "/api/user" not in server.stdout
