"""``state`` and ``state_on_error`` read at load: the Redis URL's parts, one exact line per mistake, and the password
kept secret in every error, repr and shown form."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.secrets import Secret
from gateway.state.url import StateConfig
from gateway.yamlsource import ConfigError

PASSWORD = "rP4ss-TOPSECRET-9f8e7d6c"
EXAMPLE = "redis://127.0.0.1:6379/0"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    (tmp_path / "config.yaml").write_text(text)
    return load_config(tmp_path / "config.yaml", environ=env or {})


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(("text", "expected"), [
    ("state: redis://127.0.0.1:6379/0", StateConfig("redis://127.0.0.1:6379/0", "127.0.0.1")),
    ("state: redis://cache", StateConfig("redis://cache:6379/0", "cache")),
    ("state: redis://cache/", StateConfig("redis://cache:6379/0", "cache")),
    ("state: rediss://cache:6380/2", StateConfig("rediss://cache:6380/2", "cache", 6380, 2, tls=True)),
    ("state: redis://[::1]:7000/1", StateConfig("redis://[::1]:7000/1", "::1", 7000, 1)),
    ("state: redis://cache?timeout=250ms", StateConfig("redis://cache:6379/0", "cache", timeout=0.25)),
    ("state: rediss://cache?ca=/run/ca.pem", StateConfig("rediss://cache:6379/0", "cache", tls=True,
                                                        ca_file="/run/ca.pem")),
    ("state: redis://cache\nstate_on_error: closed", StateConfig("redis://cache:6379/0", "cache", on_error="closed")),
    ("state: redis://app:pw@cache/3", StateConfig("redis://cache:6379/3", "cache", db=3, username="app",
                                                  password=Secret("pw"))),
])
def test_redis_urls(tmp_path: Path, text: str, expected: StateConfig) -> None:
    assert load(tmp_path, text + "\n").state == expected


@pytest.mark.parametrize("text", ["", "state: memory\n", "state: memory\nstate_on_error: closed\n"])
def test_memory_is_the_default(tmp_path: Path, text: str) -> None:
    assert load(tmp_path, text or "server: {}\n").state is None


@pytest.mark.parametrize(("text", "problem"), [
    ("state: http://cache:6379/0", f"'http://cache:6379/0': expected memory or a redis:// or rediss:// URL such as "
                                   f"{EXAMPLE}"),
    ("state: memroy", f"'memroy': expected memory or a redis:// or rediss:// URL such as {EXAMPLE}"),
    ("state: unix:///run/redis.sock", f"'unix:///run/redis.sock': expected memory or a redis:// or rediss:// URL "
                                      f"such as {EXAMPLE}"),
    ("state: redis://", f"'redis://': the URL names no host: write it as {EXAMPLE}"),
    ("state: redis://cache:99999/0", "'redis://cache:99999/0': the port must be a number between 1 and 65535"),
    ("state: redis://cache:0/0", "'redis://cache:0/0': the port must be a number between 1 and 65535"),
    ("state: redis://cache:port/0", "'redis://cache:port/0': the port must be a number between 1 and 65535"),
    ("state: redis://cache:6379/zero", f"'redis://cache:6379/zero': the database must be a number, as in {EXAMPLE}"),
    ("state: redis://cache:6379/0/1", f"'redis://cache:6379/0/1': the database must be a number, as in {EXAMPLE}"),
    ("state: 'redis://cache:6379/0#x'", "'redis://cache:6379/0#x': a Redis URL has no #fragment: remove it"),
    ("state: redis://cache?db=1", "'redis://cache?db=1': unknown option 'db': known options are timeout and "
                                  "(rediss) ca"),
    ("state: redis://cache?timeout=soon", "'redis://cache?timeout=soon': timeout='soon': expected a duration like "
                                          "250ms, 10s, 5m, 1h or a number of seconds"),
    ("state: redis://cache?timeout=2m", "'redis://cache?timeout=2m': timeout='2m' must be between 10ms and 60s"),
    ("state: redis://cache?ca=/x.pem", "'redis://cache?ca=/x.pem': ca= applies to rediss:// (TLS) only"),
    ("state: [redis]", "expected a string, got a list"),
    ("state: redis://cache:6379/0\nstate_on_error: open", None),
])
def test_each_mistake_is_one_line(tmp_path: Path, text: str, problem: str | None) -> None:
    found = problems(tmp_path, text + "\n")
    if problem is None:  # state_on_error
        assert found == ["config.yaml:2: state_on_error: 'open': use local (while Redis cannot be reached, each "
                         "process counts on its own) or closed (answer 503)"]
    else:
        assert found == [f"config.yaml:1: state: {problem}"]


def test_unknown_neighbour_keys_are_errors(tmp_path: Path) -> None:
    assert problems(tmp_path, "state: memory\nstate_on_eror: closed\n") == [
        "config.yaml:2: state_on_eror: unknown key 'state_on_eror': did you mean 'state_on_error'?"]


def test_a_missing_variable_names_it(tmp_path: Path) -> None:
    assert problems(tmp_path, "state: redis://:${REDIS_PASSWORD}@cache:6379/0\n") == [
        "config.yaml:1: state: environment variable REDIS_PASSWORD is not set: set it, add it to .env beside the "
        "config, or give a default with ${REDIS_PASSWORD:-value}"]


@pytest.mark.parametrize("text", [
    "state: redis://:${REDIS_PASSWORD}@cache:6379/0\n",  # the password from the environment
    "state: ${REDIS_URL}\n",  # the whole URL from the environment
    "state: redis://app:" + PASSWORD + "@cache:6379/0\n",  # written in the file: still never shown
])
def test_the_password_is_a_secret(tmp_path: Path, text: str) -> None:
    env = {"REDIS_PASSWORD": PASSWORD, "REDIS_URL": f"redis://:{PASSWORD}@cache:6379/0"}
    config = load(tmp_path, text, env)
    assert config.state is not None and config.state.password == Secret(PASSWORD)
    assert PASSWORD in config.secret_values  # scrubbed from upstream answers and logs like an injected key
    for shown in (repr(config), repr(config.state), str(config.state), config.state.shown):
        assert PASSWORD not in shown
    assert config.state.shown == "redis://cache:6379/0"


@pytest.mark.parametrize("url", [
    f"redis://:{PASSWORD}@cache:99999/0", f"redis://:{PASSWORD}@cache:6379/x", f"redis://u:{PASSWORD}@/0",
    f"redis://:{PASSWORD}@cache?timeout=x", f"http://:{PASSWORD}@cache", f"redis://:{PASSWORD}@cache?{PASSWORD}=1",
    f"redis://:{PASSWORD}@[::1/0",
])
def test_no_error_shows_the_password(tmp_path: Path, url: str) -> None:
    found = problems(tmp_path, "state: ${REDIS_URL}\n", {"REDIS_URL": url})
    assert len(found) == 1 and found[0].startswith("config.yaml:1: state: ")
    assert PASSWORD not in found[0]
    assert PASSWORD[:8] not in found[0] and PASSWORD[-8:] not in found[0]
