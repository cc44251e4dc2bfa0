"""The command line, run for real as a subprocess: check, routes, serve, dev; `python -m gateway` and the script."""

from __future__ import annotations

import json
import socket
import threading
import time
import tomllib
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
    get,
    make_project,
    run_cli,
    wait_until,
)

KEY = "ow-test-key-7Q2"
ENV = {"OPENWEATHER_KEY": KEY}
CONFIG = """\
server:
  host: 127.0.0.1
  shutdown_grace: 5s
upstreams:
  weather:
    url: https://api.openweathermap.org/data/2.5
    inject:
      query: { appid: "${OPENWEATHER_KEY}" }
forwards:
  weather/[city]:
    upstream: weather
    path: /weather?q={city}&units=metric
  chat:
    upstream: weather
    methods: [POST]
"""
BOOM_ROUTE = 'async def GET(req):\n    raise RuntimeError("kaboom-detail")\n'
INVOCATIONS = pytest.mark.parametrize("command", [PYTHON_M, SCRIPT], ids=["python-m", "script"])


def table(stdout: str) -> list[list[str]]:
    """The route table's rows, split into cells (the columns are padded with spaces)."""
    return [line.split() for line in stdout.splitlines() if line.startswith(("PATH", "/"))]


def errors(stderr: str) -> list[str]:
    return [line.removeprefix("error: ") for line in stderr.splitlines() if line.startswith("error: ")]


def json_of(reply: Reply | None) -> object:
    assert reply is not None
    return json.loads(reply.body)


EXPECTED_TABLE = [
    ["PATH", "METHODS", "KIND", "TARGET"],
    ["/api/chat", "OPTIONS,POST", "forward", "weather"],
    ["/api/user", "GET,HEAD,OPTIONS", "file", "routes/user.py"],
    ["/api/weather/[city]", "GET,HEAD,OPTIONS", "forward", "weather"],
]


# -- check -----------------------------------------------------------------------------------------------------


@INVOCATIONS
def test_check_prints_the_table_and_exits_0(tmp_path: Path, command: tuple[str, ...]) -> None:
    make_project(tmp_path, CONFIG)
    result = run_cli(command, "check", cwd=tmp_path, env=clean_env(**ENV))
    assert result.returncode == 0, result.stderr
    assert table(result.stdout) == EXPECTED_TABLE
    assert "ok: config.yaml and 3 routes are valid" in result.stdout
    assert result.stderr == ""


@INVOCATIONS
def test_check_lists_every_problem_and_exits_1(tmp_path: Path, command: tuple[str, ...]) -> None:
    broken = CONFIG.replace("  host: 127.0.0.1\n", "  host: 127.0.0.1\n  prot: 1\n").replace(
        "    upstream: weather\n    path", "    upstream: wether\n    path").replace("{city}&", "{town}&")
    make_project(tmp_path, broken, routes={"user.py": USER_ROUTE, "bad.py": "import no_such_module_here\n"})
    result = run_cli(command, "check", cwd=tmp_path, env=clean_env())
    assert result.returncode == 1
    assert errors(result.stderr) == [
        "config.yaml:3: server.prot: unknown key 'prot': did you mean 'port'?",
        "config.yaml:9: upstreams.weather.inject.query.appid: environment variable OPENWEATHER_KEY is not set: "
        "set it, add it to .env beside the config, or give a default with ${OPENWEATHER_KEY:-value}",
        "config.yaml:12: forwards.weather/[city].upstream: unknown upstream 'wether': did you mean 'weather'?",
        "config.yaml:13: forwards.weather/[city].path: {town} is not a parameter of weather/[city] "
        "(its parameters are city)",
    ]
    assert result.stderr.splitlines()[-1] == "gateway: 4 problems; nothing was started"
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_check_reports_route_modules_that_fail_to_import(tmp_path: Path) -> None:
    routes = {
        "user.py": USER_ROUTE,
        "missing.py": "import no_such_module_here\n",
        "syntax.py": "async def GET(req:\n    return 1\n",
        "post/[pid].py": "async def GET(req):\n    return 1\n\nraise ValueError('broken at import')\n",
    }
    make_project(tmp_path, CONFIG, routes=routes)
    result = run_cli(PYTHON_M, "check", cwd=tmp_path, env=clean_env(**ENV))
    assert result.returncode == 1
    assert errors(result.stderr) == [
        "routes/missing.py: failed to import: ModuleNotFoundError: No module named 'no_such_module_here' (line 1)",
        "routes/post/[pid].py: failed to import: ValueError: broken at import (line 4)",
        "routes/syntax.py: failed to import: SyntaxError: '(' was never closed (syntax.py, line 1)",
    ]
    assert "Traceback" not in result.stderr


def test_check_reports_route_conflicts(tmp_path: Path) -> None:
    route = "async def GET(req):\n    return 1\n"
    config = CONFIG + "  users:\n    upstream: weather\n"
    make_project(tmp_path, config, routes={"user.py": USER_ROUTE, "chat.py": route})
    result = run_cli(PYTHON_M, "check", cwd=tmp_path, env=clean_env(**ENV))
    assert result.returncode == 1
    assert errors(result.stderr) == [
        "config.yaml:13: forwards.chat and routes/chat.py both answer /api/chat: remove or rename one of them",
    ]


def test_check_warns_that_limits_are_per_worker(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG.replace("server:\n", "server:\n  workers: 2\n"))
    result = run_cli(PYTHON_M, "check", cwd=tmp_path, env=clean_env(**ENV))
    assert result.returncode == 0
    assert result.stderr.startswith("warning: server.workers is 2: cache and rate-limit state is per process")


def test_a_missing_config_file(tmp_path: Path) -> None:
    result = run_cli(PYTHON_M, "check", cwd=tmp_path, env=clean_env())
    assert result.returncode == 1
    assert errors(result.stderr) == ["config.yaml: cannot read the config file: No such file or directory"]


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    make_project(tmp_path, "server:\n  host: 127.0.0.1\n  port: [1\n")
    result = run_cli(SCRIPT, "check", cwd=tmp_path, env=clean_env())
    assert result.returncode == 1
    assert errors(result.stderr) == ["config.yaml:4: invalid YAML: expected ',' or ']', but got '<stream end>'"]
    assert "Traceback" not in result.stderr


def test_config_from_option_then_env_then_cwd(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good = make_project(tmp_path / "a", CONFIG)
    bad = make_project(tmp_path / "b", "sever: {}\n")
    env = clean_env(GATEWAY_CONFIG=str(good), **ENV)
    # $GATEWAY_CONFIG beats ./config.yaml (cwd b holds the broken one)
    result = run_cli(PYTHON_M, "check", cwd=tmp_path / "b", env=env)
    assert result.returncode == 0, result.stderr
    assert table(result.stdout) == EXPECTED_TABLE
    # --config beats $GATEWAY_CONFIG
    result = run_cli(PYTHON_M, "check", "--config", str(bad), cwd=tmp_path / "b", env=env)
    assert result.returncode == 1
    assert errors(result.stderr) == ["config.yaml:1: sever: unknown key 'sever': did you mean 'server'?"]
    # with neither, ./config.yaml
    result = run_cli(PYTHON_M, "check", cwd=tmp_path / "a", env=clean_env(**ENV))
    assert result.returncode == 0, result.stderr


def test_routes_is_relative_to_the_config_not_the_working_directory(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG)
    (tmp_path / "elsewhere").mkdir()
    result = run_cli(SCRIPT, "routes", "--config", str(tmp_path / "config.yaml"), cwd=tmp_path / "elsewhere",
                     env=clean_env(**ENV))
    assert result.returncode == 0, result.stderr
    assert table(result.stdout) == EXPECTED_TABLE


# -- routes ----------------------------------------------------------------------------------------------------


@INVOCATIONS
def test_routes_prints_path_methods_kind_target(tmp_path: Path, command: tuple[str, ...]) -> None:
    routes = {
        "user.py": USER_ROUTE,
        "index.py": "async def GET(req):\n    return 'home'\n",
        "post/[pid].py": "async def GET(req):\n    return 1\n\nasync def DELETE(req):\n    return None\n",
        "files/[...path].py": "async def handler(req):\n    return 1\n",
        "_lib/db.py": "X = 1\n",
    }
    make_project(tmp_path, CONFIG, routes=routes)
    result = run_cli(command, "routes", cwd=tmp_path, env=clean_env(**ENV))
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    assert rows[0] == ["PATH", "METHODS", "KIND", "TARGET"]
    assert sorted(rows[1:]) == sorted([
        ["/api", "GET,HEAD,OPTIONS", "file", "routes/index.py"],
        ["/api/chat", "OPTIONS,POST", "forward", "weather"],
        ["/api/files/[...path]", rows_methods(rows, "/api/files/[...path]"), "file", "routes/files/[...path].py"],
        ["/api/post/[pid]", "DELETE,GET,HEAD,OPTIONS", "file", "routes/post/[pid].py"],
        ["/api/user", "GET,HEAD,OPTIONS", "file", "routes/user.py"],
        ["/api/weather/[city]", "GET,HEAD,OPTIONS", "forward", "weather"],
    ])
    # a forward's target is the upstream's name: never its URL, never the injected key
    assert "openweathermap" not in result.stdout and KEY not in result.stdout
    assert "ok:" not in result.stdout  # that is check's line


def rows_methods(rows: list[list[str]], path: str) -> str:
    (methods,) = [row[1] for row in rows if row[0] == path]
    assert "GET" in methods.split(",") and "POST" in methods.split(",")  # `handler` answers every method
    return methods


def test_routes_needs_no_secrets(tmp_path: Path) -> None:
    command = SCRIPT
    # every kind of value a variable may fill: a secret, a whole URL, part of one, a proxy, a client key, Redis
    config = CONFIG.replace("url: https://api.openweathermap.org/data/2.5", "url: ${WEATHER_URL}")
    config = config.replace("forwards:\n", "  second:\n    url: https://${SECOND_HOST}/v1\n"
                                           "    proxy: http://u:${PROXY_PASS}@127.0.0.1:1\n"
                                           "forwards:\n  other:\n    upstream: second\n")
    config += "clients:\n  api_keys: ['${CLIENT_KEY}']\nstate: redis://:${REDIS_PASSWORD}@127.0.0.1:1/0\n"
    make_project(tmp_path, config)
    result = run_cli(command, "routes", cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert sorted(table(result.stdout)[1:]) == sorted([*EXPECTED_TABLE[1:], ["/api/other", "GET,HEAD,OPTIONS",
                                                                            "forward", "second"]])
    assert result.stderr == ("note: not set: CLIENT_KEY, OPENWEATHER_KEY, PROXY_PASS, REDIS_PASSWORD, SECOND_HOST, "
                             "WEATHER_URL (gateway check and serve need them)\n")
    # check and serve still need every one of them
    result = run_cli(command, "check", cwd=tmp_path, env=clean_env())
    assert result.returncode == 1
    assert len(errors(result.stderr)) == 6
    # with the secrets set, nothing of them is printed
    values = {"WEATHER_URL": "https://w.example/v1", "OPENWEATHER_KEY": KEY, "SECOND_HOST": "s.example",
              "PROXY_PASS": "proxy-pass-1c2d3e4f", "CLIENT_KEY": "client-key-5a6b7c8d",
              "REDIS_PASSWORD": "redis-9e8f7a6b"}
    result = run_cli(command, "routes", cwd=tmp_path, env=clean_env(**values))
    assert result.returncode == 0 and result.stderr == ""
    for secret in (KEY, "proxy-pass-1c2d3e4f", "client-key-5a6b7c8d", "redis-9e8f7a6b"):
        assert secret not in result.stdout


def test_routes_still_reports_every_other_problem(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG.replace("    upstream: weather\n    path", "    upstream: wether\n    path"))
    result = run_cli(PYTHON_M, "routes", cwd=tmp_path, env=clean_env())
    assert result.returncode == 1
    assert errors(result.stderr) == [
        "config.yaml:11: forwards.weather/[city].upstream: unknown upstream 'wether': did you mean 'weather'?",
    ]
    assert result.stdout == ""


# -- arguments -------------------------------------------------------------------------------------------------


def test_no_command_prints_help(tmp_path: Path) -> None:
    result = run_cli(PYTHON_M, cwd=tmp_path, env=clean_env())
    assert result.returncode == 2
    assert "serve" in result.stdout and "check" in result.stdout and "routes" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("serve", "--port", "abc"), "argument --port: 'abc' is not a port number (0-65535)"),
        (("serve", "--port", "70000"), "argument --port: '70000' is not a port number (0-65535)"),
        (("dev", "--workers", "0"), "argument --workers: '0' is not a number of workers (1-64)"),
        (("launch",), "invalid choice: 'launch'"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = run_cli(PYTHON_M, *args, cwd=tmp_path, env=clean_env())
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_port_variable_is_an_error(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG)
    result = run_cli(PYTHON_M, "serve", cwd=tmp_path, env=clean_env(PORT="eighty", **ENV))
    assert result.returncode == 1
    assert errors(result.stderr) == ["$PORT: 'eighty' is not a port number (0-65535)"]
    assert "Traceback" not in result.stderr


# -- serve -----------------------------------------------------------------------------------------------------


def test_serve_answers_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG, routes={"user.py": USER_ROUTE, "boom.py": BOOM_ROUTE})
    port = free_port()
    with Server(PYTHON_M, "serve", "--port", str(port), cwd=tmp_path, env=clean_env(**ENV), port=port) as server:
        server.wait_ready()
        assert json_of(server.get("/healthz")) == {"status": "ok"}
        reply = server.get("/api/user")
        assert reply is not None and reply.status == 200
        assert json_of(reply) == {"name": "John Doe"}
        boom = server.get("/api/boom")
        assert boom is not None and boom.status == 500
        assert b"kaboom-detail" not in boom.body and b"Traceback" not in boom.body  # only under `dev`
        assert server.terminate() == 0
        assert "Traceback (most recent call last)" in server.stderr + server.stdout  # ... it goes to the log
        assert KEY not in server.stderr + server.stdout


ENV_ROUTE = """\
import os


async def GET(req):
    return {"greeting": os.environ.get("GREETING"), "only": os.environ.get("ONLY_IN_DOTENV")}
"""


def test_serve_via_the_script_with_port_from_the_environment(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG, routes={"user.py": USER_ROUTE, "env.py": ENV_ROUTE})
    # route modules see the .env beside the config too, and the real environment still wins
    (tmp_path / ".env").write_text("GREETING=from-dotenv\nONLY_IN_DOTENV=yes\n")
    port = free_port()
    env = clean_env(PORT=str(port), GREETING="from-env", **ENV)
    with Server(SCRIPT, "serve", cwd=tmp_path, env=env, port=port) as server:
        server.wait_ready()
        assert json_of(server.get("/api/user")) == {"name": "John Doe"}
        assert json_of(server.get("/api/env")) == {"greeting": "from-env", "only": "yes"}
        assert server.terminate() == 0


def test_port_option_beats_the_environment_and_the_environment_beats_the_config(tmp_path: Path) -> None:
    config_port, env_port, option_port = free_port(), free_port(), free_port()
    make_project(tmp_path, CONFIG.replace("server:\n", f"server:\n  port: {config_port}\n"))
    env = clean_env(PORT=str(env_port), **ENV)
    with Server(PYTHON_M, "serve", "--port", str(option_port), cwd=tmp_path, env=env, port=option_port) as server:
        server.wait_ready()
        assert server.terminate() == 0
    with Server(PYTHON_M, "serve", cwd=tmp_path, env=env, port=env_port) as server:
        server.wait_ready()
        assert server.terminate() == 0
    with Server(PYTHON_M, "serve", cwd=tmp_path, env=clean_env(**ENV), port=config_port) as server:
        server.wait_ready()
        assert json_of(server.get("/api/user")) == {"name": "John Doe"}
        assert server.terminate() == 0


def test_serve_finds_the_config_through_gateway_config(tmp_path: Path) -> None:
    config = make_project(tmp_path, CONFIG.replace("server:\n", "server:\n  prefix: /v1\n"))
    (tmp_path / "elsewhere").mkdir()
    port = free_port()
    env = clean_env(GATEWAY_CONFIG=str(config), **ENV)
    with Server(PYTHON_M, "serve", "--port", str(port), cwd=tmp_path / "elsewhere", env=env, port=port) as server:
        server.wait_ready()
        assert json_of(server.get("/v1/user")) == {"name": "John Doe"}  # routes/ is beside the config
        assert server.terminate() == 0


def test_host_option_is_honoured(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG.replace("  host: 127.0.0.1\n", "  host: 203.0.113.1\n"))  # not ours to bind
    port = free_port()
    env = clean_env(**ENV)
    with Server(PYTHON_M, "serve", "--host", "127.0.0.1", "--port", str(port), cwd=tmp_path, env=env,
                port=port) as server:
        server.wait_ready()
        assert server.terminate() == 0


def test_a_route_module_that_fails_to_import_stops_serve(tmp_path: Path) -> None:
    # (under dev it answers 500 with its error while the other routes serve: tests/test_dev.py)
    make_project(tmp_path, CONFIG, routes={"user.py": USER_ROUTE, "broken.py": "1/0\n"})
    port = free_port()
    result = run_cli(PYTHON_M, "serve", "--port", str(port), cwd=tmp_path, env=clean_env(**ENV))
    assert result.returncode == 1
    assert errors(result.stderr) == ["routes/broken.py: failed to import: ZeroDivisionError: division by zero (line 1)"]
    assert "Traceback" not in result.stderr


def test_serve_with_a_bad_config_exits_1(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG + "  oops:\n    upstream: nowhere\n")
    result = run_cli(SCRIPT, "serve", "--port", str(free_port()), cwd=tmp_path, env=clean_env(**ENV))
    assert result.returncode == 1
    assert errors(result.stderr) == [
        "config.yaml:17: forwards.oops.upstream: unknown upstream 'nowhere': defined upstreams: weather",
    ]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_prints_one_line_and_nothing_else(tmp_path: Path, workers: str) -> None:
    make_project(tmp_path, CONFIG)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(PYTHON_M, "serve", "--port", str(port), "--workers", workers, cwd=tmp_path,
                         env=clean_env(**ENV))
    assert result.returncode == 1
    # nothing says "listening" (or anything else) before or after it: the one line says what is wrong
    assert result.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert result.stdout == ""


def test_listening_is_said_once_the_port_is_bound(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG, routes={"user.py": USER_ROUTE, "broken.py": "1/0\n"})
    port = free_port()
    with Server(PYTHON_M, "dev", "--port", str(port), cwd=tmp_path, env=clean_env(**ENV), port=port) as server:
        server.wait_ready()
        wait_until(lambda: "gateway listening on" in server.stderr, 10, "the listening line", server.alive)
        lines = server.stderr.splitlines()
        # the problems first, then the line that says it serves: a browser may now call it
        assert [i for i, line in enumerate(lines) if "routes/broken.py" in line] == [0]
        assert "gateway listening on http://127.0.0.1:" in lines[-1] and "(4 routes)" in lines[-1]
        assert server.terminate() == 0


def test_version_comes_from_the_package_metadata(tmp_path: Path) -> None:
    from importlib import metadata

    result = run_cli(SCRIPT, "--version", cwd=tmp_path, env=clean_env())
    assert result.returncode == 0
    assert result.stdout == f"gateway {metadata.version('gateway')}\n"
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert metadata.version("gateway") == pyproject["project"]["version"]  # as installed, no copy kept in the code


SLOW_ROUTE = """\
import asyncio
import pathlib


async def GET(req):
    pathlib.Path("started").write_text("1")
    await asyncio.sleep(float(req.query.get("s", "0.5")))
    return {"done": True}
"""


def test_sigterm_lets_an_in_flight_request_finish(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG, routes={"slow.py": SLOW_ROUTE})
    port = free_port()
    replies: list[Reply] = []
    with Server(PYTHON_M, "serve", "--port", str(port), cwd=tmp_path, env=clean_env(**ENV), port=port) as server:
        server.wait_ready()
        client = threading.Thread(target=lambda: replies.append(get(port, "/api/slow?s=0.5", timeout=10)))
        client.start()
        try:
            wait_until((tmp_path / "started").exists, 10, "the slow request to start", server.alive)
            assert server.terminate() == 0
        finally:
            client.join(15)
    assert len(replies) == 1
    assert replies[0].status == 200 and json.loads(replies[0].body) == {"done": True}


def test_sigterm_waits_no_longer_than_shutdown_grace(tmp_path: Path) -> None:
    config = CONFIG.replace("shutdown_grace: 5s", "shutdown_grace: 200ms")
    make_project(tmp_path, config, routes={"slow.py": SLOW_ROUTE})
    port = free_port()

    def call() -> None:
        try:
            get(port, "/api/slow?s=60", timeout=30)
        except Exception:  # the connection is cut: expected, and not what this test is about
            pass

    with Server(PYTHON_M, "serve", "--port", str(port), cwd=tmp_path, env=clean_env(**ENV), port=port) as server:
        server.wait_ready()
        client = threading.Thread(target=call)
        client.start()
        try:
            wait_until((tmp_path / "started").exists, 10, "the slow request to start", server.alive)
            started = time.monotonic()
            assert server.terminate(timeout=15) == 0
            assert time.monotonic() - started < 8  # 60 s of handler, cut after the 200 ms grace
        finally:
            client.join(15)


def test_two_workers_serve_and_stop_on_sigterm(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG)
    port = free_port()
    env = clean_env(**ENV)
    with Server(PYTHON_M, "serve", "--port", str(port), "--workers", "2", cwd=tmp_path, env=env, port=port) as server:
        server.wait_ready()
        wait_until(lambda: server.stderr.count("gateway listening on") == 2, 20, "two workers", server.alive)
        for _ in range(10):
            assert json_of(server.get("/api/user")) == {"name": "John Doe"}
        assert server.terminate() == 0
    assert get_refused(port)


def get_refused(port: int) -> bool:
    """After the parent exits, no worker is left holding the port."""
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


# -- dev -------------------------------------------------------------------------------------------------------


def test_dev_reloads_a_changed_route_and_shows_tracebacks(tmp_path: Path) -> None:
    make_project(tmp_path, CONFIG, routes={"user.py": USER_ROUTE, "boom.py": BOOM_ROUTE})
    port = free_port()
    with Server(PYTHON_M, "dev", "--port", str(port), cwd=tmp_path, env=clean_env(**ENV), port=port) as server:
        server.wait_ready()
        assert json_of(server.get("/api/user")) == {"name": "John Doe"}

        boom = server.get("/api/boom")
        assert boom is not None and boom.status == 500
        body = json.loads(boom.body)
        assert body["error"] == "internal_error"
        assert "Traceback (most recent call last)" in body["message"]
        assert "RuntimeError: kaboom-detail" in body["message"]

        (tmp_path / "routes" / "user.py").write_text(USER_ROUTE.replace("John Doe", "Jane Roe"))

        def reloaded() -> bool:
            reply = server.get("/api/user")
            return reply is not None and reply.status == 200 and json.loads(reply.body) == {"name": "Jane Roe"}

        wait_until(reloaded, 20, "the changed route to be served", server.alive)

        (tmp_path / "routes" / "fresh.py").write_text("async def GET(req):\n    return 'new file'\n")

        def added() -> bool:
            reply = server.get("/api/fresh")
            return reply is not None and reply.status == 200 and reply.body == b"new file"

        wait_until(added, 20, "a new route file to be served", server.alive)
        assert server.terminate() == 0


def test_dev_reloads_a_changed_config(tmp_path: Path) -> None:
    config = make_project(tmp_path, CONFIG)
    port = free_port()
    with Server(PYTHON_M, "dev", "--port", str(port), cwd=tmp_path, env=clean_env(**ENV), port=port) as server:
        server.wait_ready()
        assert json_of(server.get("/api/user")) == {"name": "John Doe"}
        config.write_text(CONFIG.replace("server:\n", "server:\n  prefix: /v2\n"))

        def moved() -> bool:
            reply = server.get("/v2/user")
            return reply is not None and reply.status == 200

        wait_until(moved, 20, "the new prefix", server.alive)
        assert json_of(server.get("/v2/user")) == {"name": "John Doe"}
        assert server.terminate() == 0


def test_check_warns_about_settings_not_applied_yet(tmp_path: Path) -> None:
    config = CONFIG.replace("    path: /weather?q={city}&units=metric\n",
                            "    path: /weather?q={city}&units=metric\n    cache: 5m\n    rate_limit: 30/minute\n", 1)
    config += "clients:\n  rate_limit: 120/minute\n  cors: { origins: ['https://app.example.com'] }\n"
    routes = {"user.py": USER_ROUTE, "slow.py": "config = {'cache': '30s'}\nasync def GET(req):\n    return 'x'\n"}
    make_project(tmp_path, config, routes=routes)
    result = run_cli(PYTHON_M, "check", cwd=tmp_path, env=clean_env(**ENV))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert not [w for w in warnings if "cors" in w], warnings  # applied since the CORS step
    # rate limits and the cache are applied: no warning names them
    assert not [w for w in warnings if "rate_limit" in w or "cache" in w], warnings
