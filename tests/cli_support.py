"""Run the real `gateway` program as a subprocess: a small project in tmp_path, a free port, polling with deadlines."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PYTHON_M = (sys.executable, "-m", "gateway")
SCRIPT = (str(Path(sys.executable).parent / "gateway"),)  # the console script the venv installed
CLI_TIMEOUT = 30.0  # generous: a CLI run that hangs fails instead of stalling the suite

USER_ROUTE = 'async def GET(req):\n    return {"name": "John Doe"}\n'
CONFIG = """\
server:
  prefix: /api
upstreams:
  weather:
    url: https://api.openweathermap.org/data/2.5
    inject:
      query: { appid: "${OPENWEATHER_KEY}" }
forwards:
  weather/[city]:
    upstream: weather
    path: /weather?q={city}&units=metric
"""


def make_project(root: Path, config: str = CONFIG, routes: Mapping[str, str] | None = None) -> Path:
    """Write ``config.yaml`` and ``routes/`` under ``root``; returns the config's path."""
    for name, text in ({"user.py": USER_ROUTE} if routes is None else routes).items():
        file = root / "routes" / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
    (root / "routes").mkdir(exist_ok=True)
    path = root / "config.yaml"
    path.write_text(config)
    return path


STEERING = ("PORT", "GATEWAY_CONFIG", "OPENWEATHER_KEY", "OPENWEATHER_KEY_FILE", "CLIENT_KEY", "CLIENT_KEY_FILE")


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without the variables these tests set themselves, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in STEERING}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(command: Sequence[str], *args: str, cwd: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*command, *args], cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def get(port: int, path: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> Reply:
    """One GET to 127.0.0.1 (http.client: no proxy from the environment can get in the way)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Reply(resp.status, dict(resp.getheaders()), resp.read())
    finally:
        conn.close()


@contextmanager
def json_server(answer: Callable[[str], object]) -> Iterator[tuple[int, list[str]]]:
    """An HTTP server in a thread on 127.0.0.1 answering each GET with ``answer(path)`` as JSON, for a gateway run as
    another process (tests then poll it synchronously); yields its port and the paths asked so far."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
            asked.append(self.path)
            body = json.dumps(answer(self.path)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def wait_until(check: Callable[[], bool], timeout: float, what: str, alive: Callable[[], None] | None = None) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds (or as soon as ``alive`` raises)."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Server:
    """``gateway serve|dev`` as a subprocess, its output in files (a full pipe can never block it).

    Use as a context manager: the process is always killed on the way out, whatever the test did.
    """

    def __init__(self, command: Sequence[str], *args: str, cwd: Path, env: Mapping[str, str], port: int) -> None:
        self.port = port
        self.out_path = cwd / f"server-{port}.out"
        self.err_path = cwd / f"server-{port}.err"
        self._out = self.out_path.open("wb")
        self._err = self.err_path.open("wb")
        self.proc = subprocess.Popen(
            # TMPDIR: what the gateway makes there (--workers' metrics directory) goes with the test's folder, also
            # when the test ends it with SIGKILL, which leaves no chance to clean up
            [*command, *args], cwd=cwd, env={"TMPDIR": str(cwd), **env}, stdout=self._out, stderr=self._err,
            start_new_session=True
        )

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {self.proc.returncode}:\n{self.stderr}")

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Reply | None:
        """The reply, or None while nothing listens on the port yet."""
        try:
            return get(self.port, path, headers)
        except (OSError, http.client.HTTPException):
            return None

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            reply = self.get("/healthz")
            return reply is not None and reply.status == 200

        wait_until(ready, timeout, f"/healthz on port {self.port}", self.alive)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit code (the test fails if it does not exit in time)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        try:  # the session this test started: the gateway, and its workers or dev child
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._out.close()
        self._err.close()
