"""`gateway serve` (the installed console script) with clients.cors, clients.rate_limit, and a forward and a route
module that set cache and rate_limit: no "not applied yet" line on stdout or stderr — those settings were once
validated but ignored, and announced so; they are applied now. The requests below show they are: the CORS header,
both RateLimit members, and a cache HIT, from a real upstream on 127.0.0.1. Stopped with SIGTERM: exit 0."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import SCRIPT, Server, clean_env, free_port, json_server, make_project, run_cli

ORIGIN = "https://app.example.com"
ROUTE = "config = {'rate_limit': '50/minute', 'cache': '30s'}\n\nasync def GET(req):\n    return {'route': True}\n"


@pytest.fixture(name="upstream")
def upstream_fixture() -> Iterator[tuple[int, list[str]]]:
    with json_server(lambda path: {"city": path}) as served:
        yield served


def config(upstream: int) -> str:
    return f"""\
server:
  prefix: /api
  shutdown_grace: 1s
clients:
  cors:
    origins: [{ORIGIN}]
  rate_limit: 100/minute
upstreams:
  weather:
    url: http://127.0.0.1:{upstream}/data
    proxy: none
forwards:
  weather/[city]:
    upstream: weather
    path: /weather?q={{city}}
    cache: 5m
    rate_limit: 30/minute
"""


def not_applied(text: str) -> list[str]:
    return [line for line in text.splitlines() if "not applied" in line.lower()]


def test_serve_applies_cors_rate_limits_and_cache_without_a_not_applied_warning(
        tmp_path: Path, upstream: tuple[int, list[str]]) -> None:
    up_port, asked = upstream
    make_project(tmp_path, config(up_port), routes={"news.py": ROUTE})
    port = free_port()
    with Server(SCRIPT, "serve", "--host", "127.0.0.1", "--port", str(port), cwd=tmp_path, env=clean_env(),
                port=port) as server:
        server.wait_ready()
        first = server.get("/api/weather/London", {"Origin": ORIGIN})
        second = server.get("/api/weather/London", {"Origin": ORIGIN})
        route = server.get("/api/news", {"Origin": ORIGIN})
        assert server.terminate() == 0
        stdout, stderr = server.stdout, server.stderr

    assert "gateway listening on http://127.0.0.1:" in stderr  # the start-up lines were read, not an empty file
    assert not_applied(stdout) == [] and not_applied(stderr) == [], stdout + stderr
    assert "warning" not in stderr.lower(), stderr
    # ... because they are applied
    assert first is not None and second is not None and route is not None
    assert (first.status, second.status, route.status) == (200, 200, 200)
    for reply in (first, second, route):
        assert reply.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert first.headers["RateLimit-Policy"] == '"clients";q=100;w=60, "route";q=30;w=60'
    assert route.headers["RateLimit-Policy"] == '"clients";q=100;w=60, "route";q=50;w=60'
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert len(asked) == 1


def test_check_says_nothing_is_not_applied_either(tmp_path: Path, upstream: tuple[int, list[str]]) -> None:
    """The same config under `gateway check`, which printed the same warnings in the same era."""
    make_project(tmp_path, config(upstream[0]), routes={"news.py": ROUTE})
    result = run_cli(SCRIPT, "check", cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert not_applied(result.stdout) == [] and not_applied(result.stderr) == []
    assert "warning" not in result.stderr.lower(), result.stderr
