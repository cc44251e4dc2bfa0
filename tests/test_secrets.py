"""${VAR}, ${VAR:-default}, VAR_FILE and .env; and a secret's value never shows: not in errors, repr or CLI output."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import PYTHON_M, SCRIPT, clean_env, make_project, run_cli

from gateway.config import load_config
from gateway.secrets import REDACTED, Environment, MissingVariable, Secret, redact
from gateway.yamlsource import ConfigError

SECRET = "sk-live-TOPSECRET-5f3a9c71"  # distinctive: any leak is easy to spot
PARTS = ("TOPSECRET", "5f3a9c71")


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text
        for part in PARTS:
            assert part not in text


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def load(tmp_path: Path, text: str, environ: dict[str, str]):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path, environ=environ)


def failure(tmp_path: Path, text: str, environ: dict[str, str]) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ)
    return str(info.value)


def injected(config, upstream: str = "w") -> dict[str, str]:
    inject = config.upstreams[upstream].inject
    return {name: secret.reveal() for name, secret in (*inject.query, *inject.headers)}


UPSTREAM_WITH = """\
upstreams:
  w:
    url: https://api.example.com
    inject:
      query: {{ key: "{value}" }}
"""


# -- the Secret type -------------------------------------------------------------------------------------------


def test_a_secret_never_shows_itself() -> None:
    secret = Secret(SECRET)
    assert str(secret) == REDACTED == "[REDACTED]"
    assert repr(secret) == "Secret('[REDACTED]')"
    assert f"{secret}" == "[REDACTED]"
    assert_no_secret(str(secret), repr(secret), repr([secret]), repr({"k": secret}), f"{secret!r}")
    assert secret.reveal() == SECRET


def test_secrets_compare_by_value() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"  # never equal to the bare string: no accidental comparisons in logs
    assert len({Secret("a"), Secret("a"), Secret("b")}) == 2


def test_redact_replaces_every_value_longest_first() -> None:
    assert redact(f"bad header '{SECRET}' and {SECRET}", {SECRET}) == "bad header '[REDACTED]' and [REDACTED]"
    assert redact("token abcdef-long", {"abc", "abcdef-long"}) == "token [REDACTED]"
    assert redact("nothing here", {""}) == "nothing here"


# -- interpolation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "environ", "result"),
    [
        ("${A}", {"A": "1"}, "1"),
        ("Bearer ${A}", {"A": "tok"}, "Bearer tok"),
        ("${A}-${B}", {"A": "1", "B": "2"}, "1-2"),
        ("${A:-fallback}", {}, "fallback"),
        ("${A:-fallback}", {"A": "real"}, "real"),
        ("${A:-fallback}", {"A": ""}, ""),  # set but empty is set
        ("${A:-}", {}, ""),
        ("${URL:-http://localhost:9000/v1}", {}, "http://localhost:9000/v1"),
        ("no variables", {}, "no variables"),
        ("$A and {A}", {"A": "x"}, "$A and {A}"),  # only ${...} is a variable
        ("${A}", {"A": "${B}", "B": "no"}, "${B}"),  # values are not interpolated again
    ],
)
def test_interpolate(text: str, environ: dict[str, str], result: str) -> None:
    assert Environment(environ).interpolate(text)[0] == result


def test_interpolate_reports_the_values_it_used() -> None:
    env = Environment({"A": "one", "B": "two"})
    assert env.interpolate("${A}/${B}/${C:-three}") == ("one/two/three", ["one", "two"])  # a default is not env


def test_a_missing_variable_is_named() -> None:
    with pytest.raises(MissingVariable) as info:
        Environment({"OTHER": "x"}).interpolate("Bearer ${OPENAI_API_KEY}")
    assert info.value.name == "OPENAI_API_KEY"


def test_var_file_is_read_and_trimmed(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text(f"\n  {SECRET}\n\n")
    config = load(tmp_path, UPSTREAM_WITH.format(value="${OW_KEY}"), {"OW_KEY_FILE": str(tmp_path / "key.txt")})
    assert injected(config) == {"key": SECRET}
    assert config.secret_values == {SECRET}


def test_var_wins_over_var_file(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("from-file")
    config = load(tmp_path, UPSTREAM_WITH.format(value="${OW_KEY}"),
                  {"OW_KEY": "from-env", "OW_KEY_FILE": str(tmp_path / "key.txt")})
    assert injected(config) == {"key": "from-env"}


def test_an_unreadable_var_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "run" / "secrets" / "ow"
    message = failure(tmp_path, UPSTREAM_WITH.format(value="${OW_KEY}"), {"OW_KEY_FILE": str(missing)})
    assert message.startswith("config.yaml:5: upstreams.w.inject.query.key: environment variable OW_KEY "
                              f"(OW_KEY_FILE={missing} cannot be read: No such file or directory) is not set")
    assert "${OW_KEY:-value}" in message


def test_a_missing_variable_is_a_startup_error_that_names_it(tmp_path: Path) -> None:
    message = failure(tmp_path, UPSTREAM_WITH.format(value="${OW_KEY}"), {})
    assert message == (
        "config.yaml:5: upstreams.w.inject.query.key: environment variable OW_KEY is not set: set it, "
        "add it to .env beside the config, or give a default with ${OW_KEY:-value}"
    )


def test_every_missing_variable_is_named(tmp_path: Path) -> None:
    text = """\
clients:
  api_keys: ["${CLIENT_KEY}"]
upstreams:
  w:
    url: ${W_URL}
    inject:
      headers: { Authorization: "Bearer ${W_TOKEN}" }
"""
    lines = failure(tmp_path, text, {}).splitlines()
    assert [line.split(": environment variable ")[1].split()[0] for line in lines] == [
        "CLIENT_KEY", "W_URL", "W_TOKEN",
    ]
    assert [line.split(":")[1] for line in lines] == ["2", "5", "7"]


def test_variables_work_in_any_string(tmp_path: Path) -> None:
    text = """\
server:
  host: ${HOST:-127.0.0.1}
  port: ${PORT_NUMBER}
  max_body: ${MAX_BODY:-2mb}
upstreams:
  w:
    url: ${W_URL}
    timeout: ${W_TIMEOUT:-3s}
"""
    config = load(tmp_path, text, {"PORT_NUMBER": "9123", "W_URL": "https://w.example/v2"})
    assert (config.server.host, config.server.port, config.server.max_body) == ("127.0.0.1", 9123, 2 * 1024**2)
    assert (config.upstreams["w"].url, config.upstreams["w"].timeout) == ("https://w.example/v2", 3.0)
    assert config.secret_values == frozenset()  # only inject and api_keys hold secrets


def test_secret_values_are_the_env_values_in_inject_and_api_keys(tmp_path: Path) -> None:
    text = """\
clients:
  api_keys: ["${CLIENT_KEY}", "literal-key"]
upstreams:
  w:
    url: https://${W_HOST}
    inject:
      query: { appid: "${W_QUERY}" }
      headers: { Authorization: "Bearer ${W_TOKEN}" }
"""
    env = {"CLIENT_KEY": "ck-1", "W_HOST": "w.example", "W_QUERY": "q-2", "W_TOKEN": "t-3"}
    config = load(tmp_path, text, env)
    assert config.secret_values == {"ck-1", "q-2", "t-3"}
    assert [k.reveal() for k in config.clients.api_keys] == ["ck-1", "literal-key"]
    assert injected(config) == {"appid": "q-2", "Authorization": "Bearer t-3"}


# -- .env beside the config ------------------------------------------------------------------------------------


def test_dotenv_beside_the_config_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"# comment\nOW_KEY={SECRET}\nexport OTHER='quoted value'\n")
    config = load(tmp_path, UPSTREAM_WITH.format(value="${OW_KEY}|${OTHER}"), {})
    assert injected(config) == {"key": f"{SECRET}|quoted value"}
    assert config.secret_values == {SECRET, "quoted value"}


def test_the_real_environment_wins_over_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OW_KEY=from-dotenv\nONLY_IN_DOTENV=dot\n")
    config = load(tmp_path, UPSTREAM_WITH.format(value="${OW_KEY},${ONLY_IN_DOTENV}"), {"OW_KEY": "from-env"})
    assert injected(config) == {"key": "from-env,dot"}


def test_a_real_var_file_wins_over_dotenv(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("from-file\n")
    (tmp_path / ".env").write_text("OW_KEY=from-dotenv\n")
    config = load(tmp_path, UPSTREAM_WITH.format(value="${OW_KEY}"), {"OW_KEY_FILE": str(tmp_path / "key.txt")})
    assert injected(config) == {"key": "from-file"}


def test_dotenv_may_name_a_var_file(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("via-dotenv-file\n")
    (tmp_path / ".env").write_text(f"OW_KEY_FILE={tmp_path / 'key.txt'}\n")
    assert injected(load(tmp_path, UPSTREAM_WITH.format(value="${OW_KEY}"), {})) == {"key": "via-dotenv-file"}


def test_only_the_dotenv_beside_the_config_counts(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OW_KEY=from-cwd\n")  # the working directory, not the config's
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "config.yaml"
    path.write_text(UPSTREAM_WITH.format(value="${OW_KEY}"))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "environment variable OW_KEY is not set" in str(info.value)
    (tmp_path / "conf" / ".env").write_text("OW_KEY=beside\n")
    assert injected(load_config(path, environ={})) == {"key": "beside"}


def test_dotenv_does_not_change_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_TEST_ONLY_DOTENV", raising=False)
    (tmp_path / ".env").write_text("GW_TEST_ONLY_DOTENV=1\n")
    load(tmp_path, UPSTREAM_WITH.format(value="${GW_TEST_ONLY_DOTENV}"), {})
    import os

    assert "GW_TEST_ONLY_DOTENV" not in os.environ


# -- a secret never shows --------------------------------------------------------------------------------------

LEAKY = """\
upstreams:
  w:
    url: ftp://api.example.com
    timeout: whenever
    retires: 2
    forward_headers: ["${OW_KEY}"]
    inject:
      query: { appid: "${OW_KEY}", other: "${MISSING_VAR}" }
      headers:
        X-Key: "${OW_KEY}"
        X-Split: "${OW_KEY}${CRLF}X-Evil: 1"
        "Bad Name": "${OW_KEY}"
forwards:
  x:
    upstream: w
    path: q?key=${OW_KEY}
"""


def test_a_secret_is_in_no_error_message(tmp_path: Path) -> None:
    message = failure(tmp_path, LEAKY, {"OW_KEY": f"{SECRET} x", "CRLF": "\r\n"})
    lines = message.splitlines()
    assert len(lines) == 8, message  # url, timeout, retires, forward_headers, MISSING_VAR, CRLF, Bad Name, path
    assert_no_secret(message)
    assert "config.yaml:6: upstreams.w.forward_headers[0]: '[REDACTED]' is not a valid header name" in lines
    assert "config.yaml:16: forwards.x.path: 'q?key=[REDACTED]' must start with / " \
           "(it is appended to the upstream's url)" in lines


def test_a_secret_is_not_in_repr_of_the_config(tmp_path: Path) -> None:
    text = """\
clients:
  api_keys: ["${CLIENT_KEY}"]
upstreams:
  w:
    url: https://api.example.com
    inject:
      query: { appid: "${OW_KEY}" }
      headers: { Authorization: "Bearer ${OW_KEY}" }
"""
    config = load(tmp_path, text, {"OW_KEY": SECRET, "CLIENT_KEY": f"client-{SECRET}"})
    assert_no_secret(repr(config), str(config), repr(config.upstreams), repr(config.clients), repr(config.server))
    assert config.secret_values == {SECRET, f"client-{SECRET}"}  # still there for scrubbing, just not shown


# -- ... nor in anything the CLI prints ------------------------------------------------------------------------

CLI_CONFIG = """\
clients:
  api_keys: ["${CLIENT_KEY}"]
upstreams:
  weather:
    url: https://api.example.com/v1
    inject:
      query: { appid: "${OPENWEATHER_KEY}" }
      headers: { Authorization: "Bearer ${OPENWEATHER_KEY}" }
forwards:
  weather/[city]:
    upstream: weather
"""


@pytest.mark.parametrize("command", ["check", "routes"])
def test_check_and_routes_never_print_a_secret(tmp_path: Path, command: str) -> None:
    make_project(tmp_path, CLI_CONFIG)
    env = clean_env(OPENWEATHER_KEY=SECRET, CLIENT_KEY=f"ck-{SECRET}")
    result = run_cli(PYTHON_M, command, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "/api/weather/[city]" in result.stdout and "weather" in result.stdout
    assert_no_secret(result.stdout, result.stderr)


def test_a_failing_config_never_prints_a_secret(tmp_path: Path) -> None:
    make_project(tmp_path, LEAKY)
    result = run_cli(SCRIPT, "check", cwd=tmp_path, env=clean_env(OW_KEY=f"{SECRET} x", CRLF="\r\n"))
    assert result.returncode == 1
    assert result.stderr.count("error: ") == 8, result.stderr
    assert "Traceback" not in result.stderr
    assert_no_secret(result.stdout, result.stderr)


def test_a_secret_from_dotenv_is_never_printed(tmp_path: Path) -> None:
    make_project(tmp_path, CLI_CONFIG.replace("    upstream: weather\n", "    upstream: wether\n"))
    (tmp_path / ".env").write_text(f"OPENWEATHER_KEY={SECRET}\nCLIENT_KEY=ck-{SECRET}\n")
    result = run_cli(PYTHON_M, "check", cwd=tmp_path, env=clean_env())
    assert result.returncode == 1
    assert "error: config.yaml:11: forwards.weather/[city].upstream: unknown upstream 'wether'" in result.stderr
    assert_no_secret(result.stdout, result.stderr)


def test_a_route_that_fails_to_import_cannot_print_a_secret(tmp_path: Path) -> None:
    route = 'import os\n\nraise RuntimeError("bad key " + os.environ["OPENWEATHER_KEY"])\n'
    make_project(tmp_path, CLI_CONFIG, routes={"leak.py": route})
    result = run_cli(PYTHON_M, "check", cwd=tmp_path, env=clean_env(OPENWEATHER_KEY=SECRET, CLIENT_KEY="ck"))
    assert result.returncode == 1
    assert "error: routes/leak.py: failed to import: RuntimeError: bad key [REDACTED] (line 3)" in result.stderr
    assert_no_secret(result.stdout, result.stderr)
