"""rediss://: the gateway talks TLS to a real redis-server, verifies its certificate against ``?ca=``, and refuses
one it cannot verify (Redis is then unreachable: the local fallback, never an unverified connection)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from redis_support import RedisServer, free_port

from gateway.state import Limit, limit_item
from gateway.state.shared import RedisState
from gateway.state.url import parse_state
from gateway.units import Rate


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory):
    if shutil.which("openssl") is None:
        hint = "openssl is not installed: apt-get install -y openssl"
        if os.environ.get("CI") == "true":
            pytest.fail(hint)
        pytest.skip(hint)
    root = tmp_path_factory.mktemp("tls")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=gateway-test-ca", cwd=root)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
            "/CN=localhost", cwd=root)
    (root / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
            "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=root)
    server = TlsRedis(root)
    try:
        yield server.start()
    finally:
        server.stop()


class TlsRedis(RedisServer):
    """redis-server with TLS only: the plain port is off."""

    def start(self) -> TlsRedis:
        self.tls_port = free_port()
        args = [self.binary, "--port", "0", "--tls-port", str(self.tls_port), "--bind", "127.0.0.1", "--save", "",
                "--tls-cert-file", str(self.root / "server.pem"), "--tls-key-file", str(self.root / "server.key"),
                "--tls-ca-cert-file", str(self.root / "ca.pem"), "--tls-auth-clients", "no",
                "--logfile", str(self.root / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while "Ready to accept connections" not in _text(self.root / "redis.log"):  # its log says when it listens
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server --tls-port did not start:\n{_text(self.root / 'redis.log')}")
            time.sleep(0.02)
        return self


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


LIMIT = Limit(limit_item(Rate(3, 60.0)), ("route", "/api/x", "ip:203.0.113.9"))


async def test_rediss_with_its_ca(tls_redis: TlsRedis) -> None:
    state = RedisState(parse_state(f"rediss://localhost:{tls_redis.tls_port}/0?ca={tls_redis.root / 'ca.pem'}"))
    try:
        verdicts = [await state.acquire([LIMIT], lock="c") for _ in range(4)]
        assert await state.status() == "redis"
    finally:
        await state.close()
    assert [v.admitted for v in verdicts] == [True, True, True, False]


async def test_an_unverifiable_certificate_is_refused(tls_redis: TlsRedis, caplog: pytest.LogCaptureFixture) -> None:
    state = RedisState(parse_state(f"rediss://localhost:{tls_redis.tls_port}/0?timeout=2s"), probe_every=60)
    try:
        assert (await state.acquire([LIMIT], lock="c")).admitted  # counted locally: not on an unverified link
        assert await state.status() == "redis (unreachable: local fallback)"
    finally:
        await state.close()
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
