"""The compose example holds what README's "Shared state (Redis)" promises: Redis with a password and two gateways
(ports 8081 and 8082) sharing ``examples/shared-state.yaml``, whose ``state:`` names the redis service, with every
secret taken from the environment; and that config passes the real ``gateway check`` whether Redis answers or not.

``gateway check`` runs as the installed console script. The host name ``redis`` is the compose service's: to keep the
test on 127.0.0.1 (and away from a CI runner that might have a real host called ``redis``), the check runs with a
``sitecustomize`` that resolves ``redis`` to a port on 127.0.0.1 the test chooses, and nothing else.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_support import SCRIPT, clean_env, run_cli
from redis_support import RedisServer

from gateway.config import load_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
GATEWAYS = ("gateway-a", "gateway-b")
DUMMY = {"REDIS_PASSWORD": "redis-DUMMY-pw-0f1e2d3c4b5a", "OPENWEATHER_KEY": "ow-DUMMY-key-9a8b7c6d5e4f"}
SECRET_NAME = re.compile(r"password|secret|token|key", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")

# Loaded by every Python process started with this folder on PYTHONPATH: ``redis`` (the compose service's host name)
# resolves to 127.0.0.1 and the port in $TEST_REDIS_ALIAS_PORT; every other name resolves as usual.
SHIM = """\
import os
import socket

_real = socket.getaddrinfo


def _getaddrinfo(host, port, *args, **kwargs):
    if host in ("redis", b"redis"):
        return _real("127.0.0.1", int(os.environ["TEST_REDIS_ALIAS_PORT"]), *args, **kwargs)
    return _real(host, port, *args, **kwargs)


socket.getaddrinfo = _getaddrinfo
"""


@pytest.fixture(name="compose", scope="module")
def compose_fixture() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # SafeLoader resolves the `<<: *gateway` merge key


def config_path(compose: dict[str, Any], name: str) -> Path:
    """The file a gateway service serves: $GATEWAY_CONFIG inside the container, mapped back through its volumes."""
    service = compose["services"][name]
    inside = service["environment"]["GATEWAY_CONFIG"]
    mounts = {target: source for source, target, *_ in (v.split(":") for v in service["volumes"])}
    assert inside in mounts, f"{name}: GATEWAY_CONFIG={inside} is not mounted ({service['volumes']})"
    return (COMPOSE.parent / mounts[inside]).resolve()


def strings(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """Every string scalar of a YAML document, with the name of the mapping key it sits under."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from strings(v, str(k))
    elif isinstance(node, list):
        for item in node:
            yield from strings(item, key)
    elif isinstance(node, str):
        yield key, node


# -- the compose file ---------------------------------------------------------------------------------------------


def test_compose_runs_redis_and_two_gateways_as_the_readme_says(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", *GATEWAYS}
    readme = (ROOT / "README.md").read_text()
    assert "`compose.yaml` runs two gateways" in readme and "`localhost:8081` and `localhost:8082`" in readme

    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    command = " ".join(redis["command"])
    assert '--requirepass "$$REDIS_PASSWORD"' in command  # compose's $$: the container's shell expands it
    assert "--maxmemory-policy noeviction" in command  # README: the cache's own accounting, counters never evicted
    assert "PING" in " ".join(redis["healthcheck"]["test"]).upper()

    host_ports = []
    for name in GATEWAYS:
        gw = services[name]
        assert gw["build"] == "."
        assert (COMPOSE.parent / "Dockerfile").is_file()
        assert gw["depends_on"] == {"redis": {"condition": "service_healthy"}}
        [mapping] = gw["ports"]
        host, container = (int(p) for p in str(mapping).split(":"))
        assert container == int(gw["environment"]["PORT"])
        host_ports.append(host)
    assert sorted(host_ports) == [8081, 8082]  # the README's two addresses, one per gateway

    # both serve one and the same file: examples/shared-state.yaml
    paths = {config_path(compose, name) for name in GATEWAYS}
    assert paths == {ROOT / "examples" / "shared-state.yaml"}


def test_the_shared_config_points_state_at_the_redis_service(compose: dict[str, Any]) -> None:
    for name in GATEWAYS:
        path = config_path(compose, name)
        env = {k: DUMMY.get(k, "x") for k in compose["services"][name]["environment"]}
        config = load_config(path, environ=env)
        state = config.state
        assert state is not None, f"{name}: {path} keeps its state in memory"
        assert (state.host, state.port, state.db, state.tls) == ("redis", 6379, 0, False)
        assert "redis" in compose["services"] and "--port" not in " ".join(compose["services"]["redis"]["command"])
        assert state.password is not None and state.password.reveal() == DUMMY["REDIS_PASSWORD"]
        assert state.shown == "redis://redis:6379/0"
        assert state.on_error == "local"
        # README: "one budget of 60 requests a minute across both, and an answer cached by one is a HIT on the other"
        assert config.clients.rate_limit is not None
        assert (config.clients.rate_limit.count, config.clients.rate_limit.period) == (60, 60)
        assert any(forward.cache for forward in config.forwards)
        # README: give Redis a maxmemory above cache_size plus the counters
        maxmemory = re.search(r"--maxmemory (\d+)mb", " ".join(compose["services"]["redis"]["command"]))
        assert maxmemory and int(maxmemory[1]) * 1024**2 > config.server.cache_size


def test_no_secret_is_written_in_the_files(compose: dict[str, Any]) -> None:
    config_file = ROOT / "examples" / "shared-state.yaml"
    doc = yaml.safe_load(config_file.read_text())
    # the password in the state URL is a variable, not a value
    userinfo = doc["state"].split("://", 1)[1].rpartition("@")[0]
    assert userinfo == ":${REDIS_PASSWORD}"

    for where, document in (("compose.yaml", compose), ("shared-state.yaml", doc)):
        for key, value in strings(document):
            if SECRET_NAME.search(key):
                assert INTERPOLATION.fullmatch(value), f"{where}: {key}: {value!r} is written in the file"
    # the upstream key is injected from the environment
    [inject] = [u["inject"] for u in doc["upstreams"].values()]
    assert all(INTERPOLATION.fullmatch(v) for part in inject.values() for v in part.values())

    # every variable the config reads is handed to each gateway container by compose, from the host's environment
    wanted = set(INTERPOLATION.findall(config_file.read_text()))
    assert wanted == {"REDIS_PASSWORD", "OPENWEATHER_KEY"}
    assert "REDIS_PASSWORD" in compose["services"]["redis"]["environment"]
    for name in GATEWAYS:
        assert wanted <= set(compose["services"][name]["environment"])
    for name in ("redis", *GATEWAYS):
        environment = compose["services"][name]["environment"]
        for var in wanted & set(environment):  # `${VAR:?message}`: compose refuses to start without it
            assert re.fullmatch(rf"\$\{{{var}:\?[^}}]+\}}", environment[var]), f"{name}: {var}={environment[var]!r}"


# -- gateway check on the file the gateways serve -------------------------------------------------------------------


def check_env(tmp_path: Path, redis_port: int) -> dict[str, str]:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SHIM)
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    return clean_env(**DUMMY, PYTHONPATH=path, TEST_REDIS_ALIAS_PORT=str(redis_port))


def test_check_passes_while_redis_does_not_answer(tmp_path: Path) -> None:
    """README: check prints `(does not answer; …)` with a warning saying what then happens, and does not fail."""
    with socket.socket() as closed:  # bound, never listening: a connection to it is refused, for certain
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        env = check_env(tmp_path, port)
        result = run_cli(SCRIPT, "check", "--config", str(ROOT / "examples" / "shared-state.yaml"),
                         cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "state: redis://redis:6379/0 (does not answer; state_on_error: local)" in result.stdout.splitlines()
    assert re.search(r"^ok: .*shared-state\.yaml and 1 routes are valid$", result.stdout, re.MULTILINE)
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning.startswith("warning: state: Redis at redis://redis:6379/0 does not answer (")
    assert f"('127.0.0.1', {port})" in warning  # refused on 127.0.0.1 through the shim: no name was looked up
    assert warning.endswith("until it does, each process counts its own rate limits")
    assert "error" not in result.stderr.replace(warning, "").lower()
    for secret in DUMMY.values():
        assert secret not in result.stdout + result.stderr


def test_check_says_redis_answers_with_the_compose_password(tmp_path: Path) -> None:
    """Redis started as compose starts it (--requirepass $REDIS_PASSWORD): the config's URL gets in with it."""
    redis = RedisServer(tmp_path / "redis", password=DUMMY["REDIS_PASSWORD"]).start()
    try:
        result = run_cli(SCRIPT, "check", "--config", str(ROOT / "examples" / "shared-state.yaml"),
                         cwd=tmp_path, env=check_env(tmp_path, redis.port))
        probe = redis.command("EXISTS", "gateway:probe")
    finally:
        redis.stop()
    assert result.returncode == 0, result.stderr
    assert "state: redis://redis:6379/0 (answers; state_on_error: local)" in result.stdout.splitlines()
    assert "warning" not in result.stderr
    assert probe == 1  # check's write reached this Redis, through the password
    for secret in DUMMY.values():
        assert secret not in result.stdout + result.stderr
