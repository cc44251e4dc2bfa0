"""`gateway dev` for real, as a subprocess: a route that fails to import answers 500 with its error while the others
serve; .env, routes/ subfolders, helpers and *_FILE secrets are watched; a busy port stops it with one line."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
from pathlib import Path

import pytest
from cli_support import (
    PYTHON_M,
    SCRIPT,
    USER_ROUTE,
    Reply,
    Server,
    clean_env,
    free_port,
    make_project,
    run_cli,
    wait_until,
)

from gateway.devloop import project_files

KEY = "ow-dev-SECRET-4e7a19c2b8"
CONFIG = """\
server:
  host: 127.0.0.1
  shutdown_grace: 2s
upstreams:
  weather:
    url: https://api.openweathermap.org/data/2.5
    inject:
      query: { appid: "${OPENWEATHER_KEY}" }
forwards:
  weather/[city]:
    upstream: weather
"""
PID_ROUTE = "import os\n\n\nasync def GET(req):\n    return {'pid': os.getpid()}\n"
SYNTAX_ERROR = "async def GET(req):\n    return {'oops': 1\n"
RESTART = 20.0  # seconds: reached only when a change is not picked up


def answer(server: Server, path: str) -> tuple[int, object] | None:
    reply: Reply | None = server.get(path)
    if reply is None:
        return None
    try:
        return reply.status, json.loads(reply.body)
    except ValueError:
        return reply.status, reply.body


def wait_for(server: Server, path: str, expected: tuple[int, object], what: str) -> None:
    wait_until(lambda: answer(server, path) == expected, RESTART, what, server.alive)


def child_pid(server: Server) -> int:
    result = answer(server, "/api/pid")
    assert result is not None and result[0] == 200, result
    return result[1]["pid"]  # type: ignore[index]


def dev(tmp_path: Path, env: dict[str, str], *args: str, command: tuple[str, ...] = PYTHON_M) -> Server:
    port = free_port()
    return Server(command, "dev", "--port", str(port), *args, cwd=tmp_path, env=env, port=port)


# -- a route module that fails to import ------------------------------------------------------------------------


def test_a_broken_route_answers_its_import_error_while_the_others_serve(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG, routes={"user.py": USER_ROUTE, "post/[pid].py": SYNTAX_ERROR})
    with dev(tmp_path, clean_env(OPENWEATHER_KEY=KEY), command=SCRIPT) as server:
        server.wait_ready()
        assert answer(server, "/api/user") == (200, {"name": "John Doe"})
        problem = "routes/post/[pid].py: failed to import: SyntaxError: '{' was never closed ([pid].py, line 2)"
        for method in ("GET", "POST"):  # every method: the module's own methods are unknown
            status, body = answer(server, "/api/post/abc") if method == "GET" else post(server, "/api/post/abc")
            assert status == 500
            assert body == {"error": "internal_error",
                            "message": f"{problem}; fix the file and the route is served again"}
        # the terminal shows it once, however often the route is called
        assert server.stderr.count(problem) == 1, server.stderr
        assert "1 route answers 500 with its error until fixed; the other routes are served" in server.stderr
        assert "Traceback" not in server.stderr
        before = server.proc.pid

        (tmp_path / "routes" / "post" / "[pid].py").write_text("async def GET(req):\n    return {'pid': "
                                                               "req.match_info['pid']}\n")
        wait_for(server, "/api/post/abc", (200, {"pid": "abc"}), "the fixed route to be served")
        assert server.proc.pid == before and server.proc.poll() is None  # no restart by hand
        assert answer(server, "/api/user") == (200, {"name": "John Doe"})
        assert server.stderr.count(problem) == 1
        assert server.terminate() == 0


def post(server: Server, path: str) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("POST", path, body=b"{}", headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_an_import_error_that_quotes_a_secret_is_redacted(tmp_path: Path) -> None:
    leaky = "import os\n\nraise ValueError('bad key ' + os.environ['OPENWEATHER_KEY'])\n"
    make_project(tmp_path, CONFIG, routes={"user.py": USER_ROUTE, "leaky.py": leaky})
    with dev(tmp_path, clean_env(OPENWEATHER_KEY=KEY)) as server:
        server.wait_ready()
        status, body = answer(server, "/api/leaky")  # type: ignore[misc]
        assert status == 500
        assert body["message"].startswith("routes/leaky.py: failed to import: ValueError: bad key [REDACTED] (line 3)")
        assert KEY not in json.dumps(body)
        assert server.terminate() == 0
        assert KEY not in server.stderr + server.stdout
        assert "bad key [REDACTED]" in server.stderr


def test_serve_and_check_still_refuse_a_broken_route(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG, routes={"user.py": USER_ROUTE, "broken.py": SYNTAX_ERROR})
    for args in (("serve", "--port", str(free_port())), ("check",)):
        result = run_cli(PYTHON_M, *args, cwd=tmp_path, env=clean_env(OPENWEATHER_KEY=KEY))
        assert result.returncode == 1, args
        assert "error: routes/broken.py: failed to import: SyntaxError" in result.stderr


def test_a_broken_route_still_needs_the_client_key(tmp_path: Path) -> None:
    config = CONFIG + "clients:\n  api_keys: ['${CLIENT_KEY}']\n"
    make_project(tmp_path, config, routes={"user.py": USER_ROUTE, "broken.py": SYNTAX_ERROR})
    with dev(tmp_path, clean_env(OPENWEATHER_KEY=KEY, CLIENT_KEY="client-key-9f8e7d6c")) as server:
        server.wait_ready()
        reply = server.get("/api/broken")
        assert reply is not None and reply.status == 401  # its source is shown only to a client that may call it
        assert b"SyntaxError" not in reply.body
        reply = server.get("/api/broken", {"X-API-Key": "client-key-9f8e7d6c"})
        assert reply is not None and reply.status == 500 and b"SyntaxError" in reply.body
        os.killpg(server.proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches dev and its child alike
        assert server.proc.wait(15) == 0
        assert "Traceback" not in server.stderr


# -- what is watched --------------------------------------------------------------------------------------------


def test_dotenv_is_watched(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG, routes={"user.py": USER_ROUTE, "pid.py": PID_ROUTE})
    with dev(tmp_path, clean_env()) as server:
        # no OPENWEATHER_KEY anywhere: the child says so, and dev keeps waiting for a fix
        wait_until(lambda: "gateway dev: waiting for a change to" in server.stderr, RESTART, "the wait line",
                   server.alive)
        assert "environment variable OPENWEATHER_KEY is not set" in server.stderr
        assert server.get("/healthz") is None
        (tmp_path / ".env").write_text(f"OPENWEATHER_KEY={KEY}\nGREETING=hello\n")
        wait_for(server, "/api/user", (200, {"name": "John Doe"}), "the gateway to start once .env exists")
        first = child_pid(server)
        (tmp_path / ".env").write_text(f"OPENWEATHER_KEY={KEY}-2\n")  # a changed .env: a new child reads it
        wait_until(lambda: answer(server, "/api/pid") not in (None, (200, {"pid": first})), RESTART,
                   "a new child after .env changed", server.alive)
        assert server.terminate() == 0
        assert KEY not in server.stderr + server.stdout


def test_subfolders_helpers_and_new_folders_of_routes_are_watched(tmp_path: Path) -> None:
    helper = "def name():\n    return 'one'\n"
    uses_helper = "from _lib.names import name\n\n\nasync def GET(req):\n    return {'name': name()}\n"
    make_project(tmp_path, CONFIG, routes={"user.py": USER_ROUTE, "a/b/deep.py": uses_helper, "_lib/names.py": helper})
    with dev(tmp_path, clean_env(OPENWEATHER_KEY=KEY)) as server:
        server.wait_ready()
        assert answer(server, "/api/a/b/deep") == (200, {"name": "one"})
        (tmp_path / "routes" / "_lib" / "names.py").write_text(helper.replace("one", "two"))
        wait_for(server, "/api/a/b/deep", (200, {"name": "two"}), "a changed helper")
        (tmp_path / "routes" / "a" / "b" / "deep.py").write_text(USER_ROUTE)
        wait_for(server, "/api/a/b/deep", (200, {"name": "John Doe"}), "a changed module two folders down")
        (tmp_path / "routes" / "fresh").mkdir()
        (tmp_path / "routes" / "fresh" / "[x].py").write_text("async def GET(req):\n    return req.match_info['x']\n")
        wait_for(server, "/api/fresh/y", (200, b"y"), "a module in a new folder")
        assert server.terminate() == 0


def test_a_secret_file_is_watched(tmp_path: Path) -> None:
    secret = tmp_path / "secrets" / "openweather"
    secret.parent.mkdir()
    secret.write_text(KEY + "\n")
    make_project(tmp_path, CONFIG, routes={"pid.py": PID_ROUTE})
    with dev(tmp_path, clean_env(OPENWEATHER_KEY_FILE=str(secret))) as server:
        server.wait_ready()
        first = child_pid(server)
        secret.write_text(KEY + "-rotated\n")
        wait_until(lambda: answer(server, "/api/pid") not in (None, (200, {"pid": first})), RESTART,
                   "a new child after the secret file changed", server.alive)
        child = child_pid(server)
        assert child != server.proc.pid
        assert server.terminate() == 0  # SIGTERM stops dev and its child
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)  # reaped: gone with its parent
        assert KEY not in server.stderr + server.stdout
        assert "Traceback" not in server.stderr


def test_what_dev_watches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_project(tmp_path, CONFIG.replace("${OPENWEATHER_KEY}", "${A}${B}${C}"),
                          routes={"user.py": USER_ROUTE, "x/[y].py": USER_ROUTE, ".hidden/h.py": USER_ROUTE})
    (tmp_path / "routes" / "__pycache__").mkdir()
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".env").write_text(f"B_FILE={tmp_path / 'b.txt'}\nC=from-dotenv\nC_FILE={tmp_path / 'c.txt'}\n")
    for name in ("A", "A_FILE", "B", "B_FILE", "C", "C_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("A_FILE", str(tmp_path / "run" / "a.txt"))
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path)
    watched = project_files(config.resolve())
    root = tmp_path.resolve()
    # the config's folder on its own (never its .venv), and each folder of routes/ but caches and hidden ones
    assert watched.folders == {root, root / "routes", root / "routes" / "x", root / "run"}
    # A from the real environment's A_FILE, B from .env's B_FILE; C is given in .env itself
    assert watched.files == {root / "config.yaml", root / ".env", root / "run" / "a.txt", root / "b.txt"}
    yes = [root / "config.yaml", root / ".env", root / "routes" / "x" / "[y].py", root / "routes" / "new",
           root / "run" / "a.txt", root / "run" / "..data", root / "b.txt"]
    no = [root / "README.md", root / "other.yaml", root / "routes" / "__pycache__" / "user.cpython-311.pyc",
          root / "routes" / "x" / ".user.py.swp", root / "routes" / "user.py~", root / "routes" / ".hidden" / "h.py",
          root / "run" / "other.txt", root / ".venv" / "lib" / "x.py"]
    assert [p for p in yes if not watched.accepts(None, str(p))] == []  # type: ignore[arg-type]
    assert [p for p in no if watched.accepts(None, str(p))] == []  # type: ignore[arg-type]


def test_the_redis_ca_file_is_watched(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    config = make_project(tmp_path, CONFIG + f"state: rediss://127.0.0.1:6390/0?ca={tmp_path / 'tls' / 'ca.pem'}\n")
    watched = project_files(config.resolve())
    ca = (tmp_path / "tls" / "ca.pem").resolve()
    assert ca in watched.files and watched.accepts(None, str(ca))  # type: ignore[arg-type]
    assert not watched.accepts(None, str(ca.parent / "other.pem"))  # type: ignore[arg-type]


def test_routes_named_elsewhere_are_followed(tmp_path: Path) -> None:
    config = make_project(tmp_path, CONFIG.replace("server:\n", "server:\n  routes: api-files\n"), routes={})
    (tmp_path / "api-files").mkdir()
    watched = project_files(config.resolve())
    assert watched.trees == {(tmp_path / "api-files").resolve()}


# -- start and stop ---------------------------------------------------------------------------------------------


def test_a_busy_port_stops_dev_with_one_line(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(PYTHON_M, "dev", "--port", str(port), cwd=tmp_path, env=clean_env(OPENWEATHER_KEY=KEY))
    assert result.returncode == 1
    assert result.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert result.stdout == ""
