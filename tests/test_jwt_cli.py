"""The real ``gateway serve`` with clients.jwt: start-up stops with one line when the JWKS cannot be fetched (unless
lazy: true), tokens verify end to end, and no token reaches the program's output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import SCRIPT, Server, clean_env, free_port, get, json_server, make_project, run_cli
from jwt_support import Idp

ROUTES = {"me.py": "async def GET(req):\n    return {'sub': req['claims']['sub']}\n"}
CONFIG = """\
clients:
  jwt:
    jwks_url: {url}
    issuer: "https://idp.example.test/"
    audience: my-api
{extra}"""


@pytest.fixture
def jwks_url() -> Iterator[str]:
    """A JWKS server in a thread (the gateway under test is another process; the test polls it synchronously)."""
    keys = {"keys": Idp().keys}
    with json_server(lambda _path: keys) as (port, _asked):
        yield f"http://127.0.0.1:{port}/jwks.json"


def test_serve_stops_with_one_line_when_the_jwks_cannot_be_fetched(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks.json"
    config = make_project(tmp_path, CONFIG.format(url=url, extra=""), ROUTES)
    port = free_port()
    result = run_cli(SCRIPT, "serve", "--config", str(config), "--port", str(port), cwd=tmp_path, env=clean_env())
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: config.yaml: clients.jwt.jwks_url: cannot fetch the JWKS from {url}: ")
    assert errors[0].endswith("fix it, or set clients.jwt.lazy: true to start without the keys")
    assert "Traceback" not in result.stderr


def test_lazy_starts_without_keys_and_answers_503_meanwhile(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks.json"
    config = make_project(tmp_path, CONFIG.format(url=url, extra="    lazy: true\n"), ROUTES)
    port = free_port()
    with Server(SCRIPT, "serve", "--config", str(config), "--port", str(port), cwd=tmp_path, env=clean_env(),
                port=port) as server:
        server.wait_ready()
        token = Idp().token()
        reply = get(port, "/api/me", {"Authorization": f"Bearer {token}"})
        assert reply.status == 503 and reply.headers["Retry-After"] == "10"
        assert json.loads(reply.body)["error"] == "unavailable"
        assert server.terminate() == 0
    assert "lazy: true" in server.stderr and token not in server.stderr + server.stdout


def test_tokens_verify_end_to_end_and_never_reach_the_output(tmp_path: Path, jwks_url: str) -> None:
    config = make_project(tmp_path, CONFIG.format(url=jwks_url, extra="    cookie: __session\n"), ROUTES)
    port = free_port()
    idp = Idp()
    good, expired = idp.token(sub="cli-user"), idp.token(exp=1)
    with Server(SCRIPT, "serve", "--config", str(config), "--port", str(port), cwd=tmp_path, env=clean_env(),
                port=port) as server:
        server.wait_ready()
        reply = get(port, "/api/me", {"Authorization": f"Bearer {good}"})
        assert reply.status == 200 and json.loads(reply.body) == {"sub": "cli-user"}
        reply = get(port, "/api/me", {"Cookie": f"__session={good}"})
        assert reply.status == 200
        reply = get(port, "/api/me", {"Authorization": f"Bearer {expired}"})
        assert reply.status == 401 and reply.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert server.terminate() == 0
    output = server.stdout + server.stderr
    for token in (good, expired):
        assert all(part not in output for part in token.split("."))
