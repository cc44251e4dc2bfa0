"""Issue 7: outbound proxies. ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` (either case) and an upstream's ``proxy:``
are honoured: a CONNECT tunnel for https (TLS end to end), an absolute-form target for http. Before the fix they
were ignored and the call ended in a silent 502.

The proxy is a tiny one written here, on 127.0.0.1. The upstreams are named ``upstream.test`` (a name no resolver
knows): a call that works went through the proxy, which sends every name to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import ssl
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from client_support import WAIT, fetch, gateway_with, get
from upstream_support import ENV, no_secret_logged  # noqa: F401  (no_secret_logged is an autouse fixture)

from gateway.config import load_config
from gateway.upstream.client import Pool
from gateway.yamlsource import ConfigError

pytest_plugins = ["client_support"]

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy",
              "all_proxy", "REQUEST_METHOD")
USER, PASSWORD = "gw-user", "pr0xy-PASSWORD:with@odd/chars"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
CREDENTIALS = f"{USER}:pr0xy-PASSWORD%3Awith%40odd%2Fchars"  # as written in a URL


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


class TinyProxy:
    """An HTTP proxy for the tests: CONNECT tunnels and absolute-form requests; every host name leads to
    127.0.0.1 at the port asked for. Records the head of each connection's first request."""

    def __init__(self, auth: str | None = None) -> None:
        self.auth = auth
        self.heads: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> TinyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            method, target, _ = head.split(b"\r\n")[0].split(b" ", 2)
            if self.auth and f"Proxy-Authorization: {self.auth}\r\n".encode() not in head:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n"
                             b"Content-Length: 0\r\n\r\n")
                await writer.drain()
                return
            if method == b"CONNECT":
                port = int(target.rpartition(b":")[2])
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                port = urlsplit(target.decode()).port or 80
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                up_writer.write(head)  # absolute-form, as a proxy may pass it on
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture
async def proxies():
    made: list[TinyProxy] = []

    async def start(auth: str | None = None) -> TinyProxy:
        proxy = await TinyProxy(auth).start()
        made.append(proxy)
        return proxy

    yield start
    for proxy in made:
        await proxy.stop()


class Echo:
    """A well-behaved upstream answering with what it was asked, recording the headers it saw."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def handle(self, request: web.BaseRequest) -> web.Response:
        self.seen.append(dict(request.headers))
        return web.json_response({"path": request.path, "host": request.headers.get("Host"), "scheme": request.scheme})


@pytest.fixture
async def echo(aiohttp_raw_server) -> tuple[Echo, int]:
    up = Echo()
    server = await aiohttp_raw_server(up.handle, access_log=None)  # its lines would carry the key
    return up, server.port


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        message = "openssl is needed to make a test certificate: apt-get install openssl"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("proxy-tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=upstream.test",
         "-addext", "subjectAltName=DNS:upstream.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.fixture
async def tls_echo(aiohttp_raw_server, certificate, monkeypatch) -> tuple[Echo, int]:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trust the throwaway certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    up = Echo()
    server = await aiohttp_raw_server(up.handle, ssl=context, access_log=None)
    return up, server.port


# --- from the environment ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["HTTP_PROXY", "http_proxy"])
async def test_an_http_upstream_goes_through_http_proxy_in_absolute_form(monkeypatch, pools, proxies, echo, name):
    up, port = echo
    proxy = await proxies()
    monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
    pool = pools(f"http://upstream.test:{port}/base")
    for _ in range(2):
        data = json.loads(await fetch(pool, "/base/x?q=1"))
        assert data == {"path": "/base/x", "host": f"upstream.test:{port}", "scheme": "http"}
    assert len(proxy.heads) == 1  # one connection to the proxy, kept alive
    assert proxy.heads[0].startswith(f"GET http://upstream.test:{port}/base/x?q=1 HTTP/1.1\r\n".encode())
    assert f"Host: upstream.test:{port}\r\n".encode() in proxy.heads[0]


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy"])
async def test_an_https_upstream_goes_through_a_connect_tunnel(monkeypatch, pools, proxies, tls_echo, name, caplog):
    up, port = tls_echo
    proxy = await proxies(auth=AUTH)
    monkeypatch.setenv(name, f"http://{CREDENTIALS}@127.0.0.1:{proxy.port}")
    pool = pools(f"https://upstream.test:{port}/v1")
    for _ in range(2):
        data = json.loads(await fetch(pool, "/v1/models"))
        assert data == {"path": "/v1/models", "host": f"upstream.test:{port}", "scheme": "https"}
    assert len(proxy.heads) == 1  # the tunnel is kept alive
    assert proxy.heads[0] == (f"CONNECT upstream.test:{port} HTTP/1.1\r\nHost: upstream.test:{port}\r\n"
                              f"Proxy-Authorization: {AUTH}\r\n\r\n").encode()
    assert all("Proxy-Authorization" not in headers for headers in up.seen)  # the key to the proxy stays there
    assert not [r for r in caplog.records if PASSWORD in r.getMessage() or AUTH in r.getMessage()]


async def test_no_proxy_sends_a_host_direct(monkeypatch, pools, proxies, echo):
    up, port = echo
    proxy = await proxies()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    for rule in ("upstream.test", ".test", "other.example, upstream.test", "*"):
        monkeypatch.setenv("NO_PROXY", rule)
        with pytest.raises(ConnectionError, match="DNS lookup failed"):
            await get(pools(f"http://upstream.test:{port}"))  # direct: nobody knows the name
    monkeypatch.setenv("NO_PROXY", "other.example")
    assert json.loads(await fetch(pools(f"http://upstream.test:{port}")))["path"] == "/"
    assert len(proxy.heads) == 1


async def test_a_loopback_upstream_never_goes_through_an_environment_proxy(monkeypatch, pools, proxies, echo):
    up, port = echo
    proxy = await proxies()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    assert json.loads(await fetch(pools(f"http://127.0.0.1:{port}")))["path"] == "/"
    assert json.loads(await fetch(pools(f"http://localhost:{port}")))["path"] == "/"
    assert proxy.heads == []


async def test_an_explicit_proxy_wins_and_none_means_direct(monkeypatch, pools, proxies, echo):
    up, port = echo
    env_proxy, own_proxy = await proxies(), await proxies()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{env_proxy.port}")
    assert json.loads(await fetch(pools(f"http://upstream.test:{port}", proxy=f"127.0.0.1:{own_proxy.port}")))
    assert len(own_proxy.heads) == 1 and env_proxy.heads == []
    with pytest.raises(ConnectionError, match="DNS lookup failed"):
        await get(pools(f"http://upstream.test:{port}", proxy=None))
    assert env_proxy.heads == []


# --- proxies that fail ------------------------------------------------------------------------------------------


async def test_a_proxy_that_refuses_the_tunnel_is_a_clear_connection_error(monkeypatch, pools, proxies, tls_echo):
    up, port = tls_echo
    proxy = await proxies(auth=AUTH)
    monkeypatch.setenv("HTTPS_PROXY", f"http://{USER}:wrong-password@127.0.0.1:{proxy.port}")
    with pytest.raises(ConnectionError) as caught:
        await asyncio.wait_for(get(pools(f"https://upstream.test:{port}")), WAIT)
    assert "the proxy refused the tunnel (status 407)" in str(caught.value)
    assert "wrong-password" not in str(caught.value) and "127.0.0.1" not in str(caught.value)
    assert up.seen == []


async def test_a_proxy_that_is_down_is_a_clear_connection_error(monkeypatch, pools):
    from upstream_support import free_port

    monkeypatch.setenv("HTTP_PROXY", f"http://{CREDENTIALS}@127.0.0.1:{await free_port()}")
    with pytest.raises(ConnectionError) as caught:
        await get(pools("http://upstream.test:8080"))
    assert str(caught.value) == "cannot connect through the proxy: connection refused"


@pytest.mark.parametrize("value", [f"socks5://{CREDENTIALS}@127.0.0.1:1080", "https://proxy.example:3128",
                                   "http://proxy.example:3128/some/path", "http://proxy.example:99999"])
async def test_an_unusable_environment_proxy_fails_each_call_saying_why(monkeypatch, pools, value):
    monkeypatch.setenv("HTTPS_PROXY", value)
    pool = pools("https://upstream.test")
    for _ in range(2):
        with pytest.raises(ConnectionError) as caught:
            await get(pool)
        assert "HTTPS_PROXY" in str(caught.value)
        assert PASSWORD not in str(caught.value) and "pr0xy" not in str(caught.value)


def test_a_pool_never_shows_the_proxy_credentials(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", f"http://{CREDENTIALS}@127.0.0.1:3128")
    pool = Pool("https://upstream.test")
    assert pool.proxy is not None and pool.proxy.authorization == AUTH
    assert "pr0xy" not in repr(pool.proxy) and AUTH not in repr(pool.proxy)


# --- through the gateway: the upstream's `proxy:` setting ------------------------------------------------------


async def test_an_upstreams_proxy_setting_is_used_and_its_credentials_never_shown(aiohttp_client, tmp_path, proxies,
                                                                                 echo, caplog):
    up, port = echo
    proxy = await proxies(auth=AUTH)
    extra = f'    proxy: "http://{USER}:${{PROXY_PASS}}@127.0.0.1:{proxy.port}"'
    env = {"PROXY_PASS": "pr0xy-PASSWORD%3Awith%40odd%2Fchars"}
    client = await gateway_with(aiohttp_client, tmp_path, f"http://upstream.test:{port}/base", extra, env=env)
    resp = await client.get("/api/svc/models")
    body = await resp.read()
    assert resp.status == 200, body
    assert json.loads(body)["path"] == "/base/models"
    assert proxy.heads[0].startswith(f"GET http://upstream.test:{port}/base/models?key=".encode())
    assert f"Proxy-Authorization: {AUTH}\r\n".encode() in proxy.heads[0]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "pr0xy" not in logged and AUTH not in logged


async def test_proxy_none_ignores_the_environment_and_the_failure_is_logged(monkeypatch, aiohttp_client, tmp_path,
                                                                            proxies, echo, caplog):
    up, port = echo
    proxy = await proxies()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    client = await gateway_with(aiohttp_client, tmp_path, f"http://upstream.test:{port}/base", "    proxy: none")
    resp = await client.get("/api/svc/models")
    assert resp.status == 502
    assert (await resp.json())["error"] == "upstream_unavailable"
    assert proxy.heads == []
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.upstream"]
    assert len(lines) == 1 and lines[0].startswith("upstream svc failed: cannot connect: DNS lookup failed"), lines


async def test_an_environment_proxy_reaches_an_upstream_through_the_gateway(monkeypatch, aiohttp_client, tmp_path,
                                                                           proxies, tls_echo):
    up, port = tls_echo
    proxy = await proxies()
    monkeypatch.setenv("HTTPS_PROXY", f"127.0.0.1:{proxy.port}")  # no scheme: http is meant
    client = await gateway_with(aiohttp_client, tmp_path, f"https://upstream.test:{port}/v1")
    resp = await client.get("/api/svc/models")
    assert resp.status == 200
    assert json.loads(await resp.read())["scheme"] == "https"
    assert proxy.heads[0].startswith(f"CONNECT upstream.test:{port} ".encode())
    assert up.seen[0]["Authorization"] == f"Bearer {ENV['SVC_KEY']}"  # the key went inside the tunnel only


@pytest.mark.parametrize(("value", "message"), [
    ("socks5://user:hunter2@proxy:1080", "the proxy uses socks5://: only http:// proxies are supported"),
    ("http://user:hunter2@proxy:3128/path", "the proxy must be a proxy URL like http://proxy.internal:3128"),
    ("http://user:hunter2@proxy:99999", "the proxy is not a valid proxy URL"),
    ("[]", "expected a string, got a list"),
])
def test_a_bad_proxy_setting_is_one_clear_line_without_the_password(tmp_path, monkeypatch, value, message):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(f"upstreams:\n  svc:\n    url: http://api.example\n    proxy: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    lines = str(caught.value).splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("config.yaml:4: upstreams.svc.proxy: ")
    assert message in lines[0]
    assert "hunter2" not in lines[0]


@pytest.mark.parametrize(("value", "message"), [
    ("0", "0: must be between 1 and 10000"),
    ("lots", "'lots': expected a whole number"),
])
def test_a_bad_connection_cap_is_one_clear_line(tmp_path, monkeypatch, value, message):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(f"upstreams:\n  svc:\n    url: http://api.example\n    max_connections: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value) == f"config.yaml:4: upstreams.svc.max_connections: {message}"


def test_the_connection_settings_load(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("upstreams:\n"
                    "  a: { url: 'http://a.example' }\n"
                    "  b: { url: 'http://b.example', proxy: NONE, max_connections: 7 }\n"
                    "  c: { url: 'http://c.example', proxy: 'http://u:${PW}@proxy:3128' }\n")
    config = load_config(path, environ={"PW": "proxy-secret-1234"})
    a, b, c = (config.upstreams[name] for name in "abc")
    assert (a.max_connections, a.proxy, a.proxy_from_env) == (100, None, True)
    assert (b.max_connections, b.proxy, b.proxy_from_env) == (7, None, False)
    assert c.proxy is not None and c.proxy.reveal() == "http://u:proxy-secret-1234@proxy:3128"
    assert "proxy-secret-1234" not in repr(config)
    assert "proxy-secret-1234" in config.secret_values  # scrubbed from answers like any key

