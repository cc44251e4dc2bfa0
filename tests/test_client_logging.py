"""Issue 7: upstream failures are visible. A refused connection, a failed DNS lookup, a TLS failure, a timeout or an
invalid answer logs one line on ``gateway.upstream`` naming the upstream (its config name) and the reason, with no
secret, no injected query value and no URL. Before the fix each ended in a 502 or 504 and nothing was logged.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from aiohttp import web
from client_support import RawServer, gateway_with, keep_alive
from upstream_support import QSECRET, SECRET, free_port, leaks, no_secret_logged  # noqa: F401  (autouse fixture)

pytest_plugins = ["client_support"]


def upstream_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.upstream"]


def assert_one_clean_line(lines: list[str], reason: str, port: int | None = None) -> None:
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("upstream svc failed: "), line
    assert reason in line, line
    assert not leaks(line), line
    assert "key=" not in line and "http" not in line and "127.0.0.1" not in line, line
    if port is not None:
        assert str(port) not in line, line


async def call(client, path: str = "/api/svc/x") -> tuple[int, dict]:
    resp = await client.get(path, headers={"Authorization": "Bearer client-key"})
    return resp.status, json.loads(await resp.read())


async def test_a_refused_connection_is_logged(aiohttp_client, tmp_path, caplog):
    port = await free_port()
    client = await gateway_with(aiohttp_client, tmp_path, port)
    assert await call(client) == (502, {"error": "upstream_unavailable",
                                        "message": "upstream 'svc' could not be reached"})
    assert_one_clean_line(upstream_lines(caplog), "cannot connect: connection refused", port)


async def test_a_failed_dns_lookup_is_logged(aiohttp_client, tmp_path, caplog):
    client = await gateway_with(aiohttp_client, tmp_path, "http://no-such-host.invalid/base", timeout="5s")
    status, body = await call(client)
    assert (status, body["error"]) == (502, "upstream_unavailable")
    assert_one_clean_line(upstream_lines(caplog), "cannot connect: DNS lookup failed")
    assert "no-such-host" not in body["message"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate: apt-get install openssl")
    folder = tmp_path_factory.mktemp("log-tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


async def test_an_untrusted_certificate_is_logged(aiohttp_client, aiohttp_raw_server, tmp_path, caplog, certificate,
                                                  monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    seen: list[str] = []

    async def handle(request: web.BaseRequest) -> web.Response:
        seen.append(request.path)
        return web.Response(text="never")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    server = await aiohttp_raw_server(handle, ssl=context, access_log=None)
    client = await gateway_with(aiohttp_client, tmp_path, f"https://127.0.0.1:{server.port}/base")
    status, body = await call(client)
    assert (status, body["error"]) == (502, "upstream_unavailable")
    assert_one_clean_line(upstream_lines(caplog), "cannot connect: TLS certificate not accepted", server.port)
    assert seen == []


async def test_a_tls_handshake_with_a_plain_server_is_logged(raw_server, aiohttp_client, tmp_path, caplog):
    async def plain(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")  # at once: no TLS here
        await server.wait_eof(reader)

    server = await raw_server(plain)
    client = await gateway_with(aiohttp_client, tmp_path, f"https://127.0.0.1:{server.port}/base")
    status, body = await call(client)
    assert (status, body["error"]) == (502, "upstream_unavailable")
    assert_one_clean_line(upstream_lines(caplog), "cannot connect: TLS handshake failed", server.port)


async def test_a_timeout_is_logged(raw_server, aiohttp_client, tmp_path, caplog):
    async def silent(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        await server.wait_eof(reader)

    server = await raw_server(silent)
    client = await gateway_with(aiohttp_client, tmp_path, server.port, timeout="0.3s")
    status, body = await call(client)
    assert (status, body["error"]) == (504, "upstream_timeout")
    assert_one_clean_line(upstream_lines(caplog), "the upstream sent nothing for 0.3s", server.port)
    assert QSECRET.split("/")[0] in server.heads[0].decode("latin-1")  # the injected key did go upstream, unlogged


async def test_an_invalid_answer_is_logged(raw_server, aiohttp_client, tmp_path, caplog):
    head = f"HTTP/1.1 200 OK\r\nX-Echo: {SECRET}\r\n".encode() + b"X-Flood: 1\r\n" * 300  # the echo is never logged
    server = await raw_server(keep_alive(head + b"Content-Length: 0\r\n\r\n"))
    client = await gateway_with(aiohttp_client, tmp_path, server.port)
    status, body = await call(client)
    assert (status, body["error"]) == (502, "upstream_error")
    assert_one_clean_line(upstream_lines(caplog), "more than 200 header lines", server.port)


async def test_the_clients_own_mistakes_are_not_logged_as_upstream_failures(raw_server, aiohttp_client, tmp_path,
                                                                            caplog):
    server = await raw_server(keep_alive())
    route = ("from gateway import forward\n"
             "async def GET(req):\n"
             "    return await forward(req, 'svc', '/x', headers={'X-Note': 'a\\r\\nX-Evil: 1'})\n")
    (tmp_path / "routes").mkdir(exist_ok=True)
    (tmp_path / "routes" / "note.py").write_text(route)
    client = await gateway_with(aiohttp_client, tmp_path, server.port)
    status, body = await call(client, "/api/note")
    assert (status, body["error"]) == (400, "bad_request")
    assert upstream_lines(caplog) == []
