"""The real `gateway serve` applies rate limits and the cache to a route module, and no longer warns about them."""

from __future__ import annotations

from pathlib import Path

from cli_support import PYTHON_M, Server, clean_env, free_port, make_project

ROUTES = {
    "clock.py": "import itertools\nn = itertools.count()\nconfig = {'rate_limit': '3/minute', 'cache': '30s'}\n"
                "async def GET(req):\n    return {'n': next(n)}\n",
}
CONFIG = "server:\n  prefix: /api\nclients:\n  rate_limit: 100/hour\n"


def test_serve_limits_and_caches_a_route_module(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG, routes=ROUTES)
    port = free_port()
    with Server(PYTHON_M, "serve", "--port", str(port), cwd=tmp_path, env=clean_env(), port=port) as server:
        server.wait_ready()
        replies = [server.get("/api/clock") for _ in range(4)]
        assert [r.status for r in replies] == [200, 200, 200, 429]
        assert [r.body for r in replies[:3]] == [b'{"n": 0}'] * 3  # one call, then hits
        assert [r.headers.get("X-Cache") for r in replies] == ["MISS", "HIT", "HIT", None]
        assert replies[0].headers["RateLimit-Policy"] == '"clients";q=100;w=3600, "route";q=3;w=60'
        assert replies[2].headers["RateLimit"].split(", ")[1].startswith('"route";r=0;t=')
        assert 1 <= int(replies[3].headers["Retry-After"]) <= 60
        assert server.terminate() == 0
    assert "warning" not in server.stderr, server.stderr
