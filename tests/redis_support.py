"""Debian's ``redis-server``, started by the tests on a free loopback port with a temporary directory.

    redis = RedisServer(tmp_path)          # or the ``redis_server`` fixture (one per test module, flushed per test)
    redis.start(); redis.url               # redis://127.0.0.1:<port>/0
    redis.stop(); redis.start()            # the same port again: a restart, as an operator would do it
    redis.command("CLIENT", "PAUSE", "2000", "WRITE")

Locally a missing ``redis-server`` skips with the install command; under CI (``CI=true``) it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL = "apt-get install -y redis-server"
START_TIMEOUT = 10.0


def redis_or_skip() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        hint = f"redis-server is not installed: {INSTALL}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{hint} (CI installs it in .ci/run; a missing Redis is a failure there)")
        pytest.skip(hint)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process: no persistence, loopback only, DEBUG allowed from loopback."""

    def __init__(self, root: Path, *, password: str | None = None, port: int | None = None) -> None:
        self.binary = redis_or_skip()
        self.root = root
        self.password = password
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.root), "--logfile", str(self.root / "redis.log"), "--enable-debug-command", "local"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                log = (self.root / "redis.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"redis-server exited with {self.proc.returncode}:\n{log}")
            try:
                if self.command("PING") == "PONG":
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not answer on port {self.port} in {START_TIMEOUT}s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill it (as a crash or an OOM kill would) and wait until it is gone and the port is free."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def command(self, *args: str, timeout: float = 5.0) -> str | int | list | None:
        """One command over a fresh socket (RESP by hand: no client library between the test and the server)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            stream = sock.makefile("rwb")
            if self.password:
                stream.write(_pack("AUTH", self.password))
            stream.write(_pack(*args))
            stream.flush()
            if self.password:
                _read(stream)
            return _read(stream)


def _pack(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read(stream) -> str | int | list | None:
    line = stream.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RedisReplyError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        if rest == "-1":
            return None
        data = stream.read(int(rest) + 2)[:-2]
        return data.decode(errors="replace")
    if kind == b"*":
        return None if rest == "-1" else [_read(stream) for _ in range(int(rest))]
    raise ValueError(f"unexpected reply {line!r}")


class RedisReplyError(Exception):
    pass


# Imported by the test modules under these names; the fixtures are called redis_module and redis_server.
@pytest.fixture(scope="module", name="redis_module")
def redis_module_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="redis_server")
def redis_server_fixture(redis_module: RedisServer) -> RedisServer:
    """The module's redis-server, empty for this test."""
    redis_module.command("FLUSHALL")
    return redis_module
