"""The request intake through the real ``gateway serve``: gzip bombs and malformed requests on raw sockets."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from cli_support import PYTHON_M, Server, clean_env, free_port, get, make_project
from test_intake import MALFORMED, assert_json_400, gzip_zeros, parse

ROUTES = {
    "echo.py": "async def POST(req):\n    return (await req.read(), 200)\n",
    "ignore.py": "async def POST(req):\n    return {'ok': True}\n",
}
CONFIG = "server:\n  host: 127.0.0.1\n  prefix: /api\n"
BOMB = gzip_zeros(1024, crc=False)  # 1 MB on the wire, 1 GiB inflated
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def chunked(body: bytes, size: int = 65536) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    """One ``gateway serve`` for the module: each test leaves it serving (asserted), so they cannot mask each other."""
    if not Path(f"/proc/{os.getpid()}/stat").exists():
        pytest.skip("needs Linux /proc to read the gateway's CPU time")
    root = tmp_path_factory.mktemp("intake")
    make_project(root, CONFIG, ROUTES)
    port = free_port()
    with Server(PYTHON_M, "serve", "--port", str(port), cwd=root, env=clean_env(), port=port) as server:
        server.wait_ready()
        yield server


@pytest.mark.parametrize(("path", "status"), [("/api/echo", 413), ("/api/ignore", 200)])
def test_a_gzip_bomb_costs_the_real_gateway_almost_nothing_and_healthz_answers_meanwhile(gateway, path, status):
    """Before: ~3 s of CPU per bomb, the event loop held all along (``/healthz`` took 2-6 s)."""
    chunks = chunked(BOMB)
    before = cpu_seconds(gateway.proc.pid)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"
                     "Connection: close\r\n\r\n".encode())
        sock.sendall(b"".join(chunks[: len(chunks) // 2]))  # half the bomb (512 MiB inflated) is in
        reply = get(gateway.port, "/healthz")  # ... and the gateway answers others while this request is open
        assert (reply.status, json.loads(reply.body)) == (200, {"status": "ok"})
        try:
            sock.sendall(b"".join(chunks[len(chunks) // 2 :]) + b"0\r\n\r\n")
        except OSError:  # it may have answered and closed before taking the rest (413)
            pass
        answer = read_all(sock)
    got, _, body, _ = parse(answer)
    assert got == status, answer
    if status == 413:
        assert json.loads(body)["error"] == "payload_too_large"
    spent = cpu_seconds(gateway.proc.pid) - before
    assert spent < 1.0, f"{spent:.2f} s of CPU for one bomb"  # a generous bound: inflating it all takes seconds
    gateway.alive()


@pytest.mark.parametrize("name", ["invalid method", "Content-Length and Transfer-Encoding", "obs-fold",
                                  "bad chunk size"])
def test_the_real_gateway_answers_a_malformed_request_in_json(gateway, name):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
        sock.sendall(MALFORMED[name])
        answer = read_all(sock)
    assert_json_400(answer)
    gateway.alive()
    assert "sk-client-MARKER" not in gateway.stderr + gateway.stdout
