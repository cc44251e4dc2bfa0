"""Forwarding to an https upstream: the certificate is verified (system CAs, or SSL_CERT_FILE), the key injected.

The upstream is an aiohttp server on 127.0.0.1 with a throwaway self-signed certificate made by openssl.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from aiohttp import web

from gateway.app import build_table, create_app
from gateway.config import load_config

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a certificate")
SECRET = "sk-tls-TOPSECRET-0123456789abcdef"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


async def _upstream(aiohttp_server, certificate: tuple[Path, Path]):
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        auth = request.headers["Authorization"]
        return web.json_response({"path": request.path, "scheme": request.scheme, "auth": auth})

    app = web.Application()
    app.router.add_get("/v1/{tail:.*}", echo)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    server = await aiohttp_server(app, ssl=context)
    return server, seen


async def _gateway(aiohttp_client, tmp_path: Path, port: int):
    (tmp_path / "config.yaml").write_text(
        "upstreams:\n"
        f"  secure: {{ url: 'https://127.0.0.1:{port}/v1', timeout: 5s,\n"
        "            inject: { headers: { Authorization: 'Bearer ${TLS_KEY}' } } }\n"
        "forwards:\n"
        "  secure/[...path]: { upstream: secure, path: '/{path}' }\n"
    )
    config = load_config(tmp_path / "config.yaml", environ={"TLS_KEY": SECRET})
    return await aiohttp_client(create_app(config, build_table(config)))


async def test_a_trusted_https_upstream_gets_the_key_and_the_client_never_sees_it(
    aiohttp_server, aiohttp_client, tmp_path, certificate, monkeypatch
):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trust the throwaway CA, as a deployment would
    server, seen = await _upstream(aiohttp_server, certificate)
    client = await _gateway(aiohttp_client, tmp_path, server.port)
    resp = await client.get("/api/secure/models", headers={"Authorization": "Bearer dummy"})
    body = await resp.text()
    assert resp.status == 200, body
    assert seen == [f"Bearer {SECRET}"]
    assert '"scheme": "https"' in body and '"path": "/v1/models"' in body
    assert SECRET not in body and "[REDACTED]" in body
    again = await client.get("/api/secure/again")  # over the same pooled TLS connection
    assert again.status == 200 and len(seen) == 2


async def test_an_untrusted_certificate_is_refused(aiohttp_server, aiohttp_client, tmp_path, certificate, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    server, seen = await _upstream(aiohttp_server, certificate)
    client = await _gateway(aiohttp_client, tmp_path, server.port)
    resp = await client.get("/api/secure/models")
    body = await resp.json()
    assert resp.status == 502 and body["error"] == "upstream_unavailable"
    assert seen == []  # the key was never sent to a server that could not prove who it is
    assert str(server.port) not in body["message"]
