"""load_config: a valid config becomes the frozen tree; each mistake is one exact line naming file, line, YAML path."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from gateway.config import Config, ForwardConfig, load_config
from gateway.secrets import Secret
from gateway.units import Rate
from gateway.yamlsource import ConfigError, Problem

SPEC_EXAMPLE = """\
server:
  host: 0.0.0.0
  port: 8080
  prefix: /api              # where routes/ and forwards are mounted
  routes: routes            # folder of file routes, relative to this file
  workers: 1                # processes sharing the port
  max_body: 1mb             # request body limit -> 413
  shutdown_grace: 10s       # in-flight requests finish on SIGTERM

clients:                    # who may call the gateway (all optional)
  api_keys: ["${CLIENT_KEY}"]
  cors: { origins: ["https://app.example.com"], credentials: false }
  rate_limit: 120/minute

upstreams:
  weather:
    url: https://api.openweathermap.org/data/2.5
    timeout: 10s
    retries: 1
    inject:
      query:   { appid: "${OPENWEATHER_KEY}" }
      headers: {}
    forward_headers: []
    expose_headers: []
  openai:
    url: https://api.openai.com/v1
    inject:
      headers: { Authorization: "Bearer ${OPENAI_API_KEY}" }

forwards:
  weather/[city]:
    upstream: weather
    path: /weather?q={city}&units=metric
    methods: [GET]
    cache: 5m
    rate_limit: 30/minute
    response:
      drop: [base, id]
      select: "{temp: main.temp, summary: weather[0].description}"
  chat:
    upstream: openai
    path: /chat/completions
    methods: [POST]
"""
SPEC_ENV = {"CLIENT_KEY": "client-key-1", "OPENWEATHER_KEY": "ow-key-2", "OPENAI_API_KEY": "sk-openai-3"}

# an upstream that other cases can point forwards at
UPSTREAM = """\
upstreams:
  weather:
    url: https://api.example.com/v1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env or {})
    assert str(info.value) == "\n".join(map(str, info.value.problems))
    return [str(p) for p in info.value.problems]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages name the config relative to the working directory: ``config.yaml:3: ...``."""
    monkeypatch.chdir(tmp_path)


# -- a valid config --------------------------------------------------------------------------------------------


def test_the_spec_example_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SPEC_EXAMPLE), environ=SPEC_ENV)
    assert config.file == (tmp_path / "config.yaml").resolve()
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 8080
    assert config.server.prefix == "/api"
    assert config.routes_dir == (tmp_path / "routes").resolve()
    assert config.server.workers == 1
    assert config.server.max_body == 1024**2
    assert config.server.shutdown_grace == 10.0
    assert config.clients.api_keys == (Secret("client-key-1"),)
    assert config.clients.cors is not None
    assert config.clients.cors.origins == ("https://app.example.com",)
    assert config.clients.cors.credentials is False
    assert config.clients.rate_limit == Rate(120, 60.0)

    weather = config.upstreams["weather"]
    assert weather.url == "https://api.openweathermap.org/data/2.5"
    assert (weather.timeout, weather.retries) == (10.0, 1)
    assert weather.inject.query == (("appid", Secret("ow-key-2")),)
    assert weather.inject.headers == ()
    openai = config.upstreams["openai"]
    assert (openai.timeout, openai.retries) == (30.0, 0)  # the defaults
    assert openai.inject.headers == (("Authorization", Secret("Bearer sk-openai-3")),)

    city, chat = config.forwards
    assert (city.key, city.upstream, city.path, city.methods) == (
        "weather/[city]", "weather", "/weather?q={city}&units=metric", ("GET",),
    )
    assert (city.cache, city.rate_limit) == (300.0, Rate(30, 60.0))
    assert city.response is not None
    assert city.response.drop == ("base", "id")
    assert city.response.select == "{temp: main.temp, summary: weather[0].description}"
    assert city.line == 31
    assert (chat.key, chat.upstream, chat.path, chat.methods, chat.response) == (
        "chat", "openai", "/chat/completions", ("POST",), None,
    )
    # every value taken from the environment into inject / api_keys, as it is (not "Bearer ..."): for scrubbing
    assert config.secret_values == {"client-key-1", "ow-key-2", "sk-openai-3"}


def test_the_tree_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SPEC_EXAMPLE), environ=SPEC_ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.forwards[0].upstream = "openai"  # type: ignore[misc]


def test_an_empty_file_is_all_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "# nothing yet\n"), environ={})
    assert config == Config(config.file)
    assert (config.server.port, config.server.prefix, config.server.max_body) == (8080, "/api", 1024**2)
    assert config.upstreams == {} and config.forwards == () and config.secret_values == frozenset()


def test_forward_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, UPSTREAM + "forwards:\n  posts/[id]:\n    upstream: weather\n"), environ={})
    (forward,) = config.forwards
    assert forward == ForwardConfig(
        key="posts/[id]", segments=forward.segments, upstream="weather", path="/posts/{id}", methods=("GET",),
        line=5,
    )


@pytest.mark.parametrize(
    ("yaml_text", "attr", "expected"),
    [
        ("server:\n  prefix: /\n", "prefix", ""),
        ("server:\n  prefix: /v1/\n", "prefix", "/v1"),
        ("server:\n  prefix: /a/b\n", "prefix", "/a/b"),
        ("server:\n  port: '9000'\n", "port", 9000),
        ("server:\n  port: 0\n", "port", 0),
        ("server:\n  max_body: 512kb\n", "max_body", 512 * 1024),
        ("server:\n  max_body: 100\n", "max_body", 100),
        ("server:\n  shutdown_grace: 250ms\n", "shutdown_grace", 0.25),
        ("server:\n  shutdown_grace: 2\n", "shutdown_grace", 2.0),
        ("server:\n  workers: 4\n", "workers", 4),
        ("server:\n  routes: api_routes\n", "routes", Path("api_routes")),
        ("server:\n  port: ${GW_PORT:-8181}\n", "port", 8181),
    ],
)
def test_server_values(tmp_path: Path, yaml_text: str, attr: str, expected: object) -> None:
    config = load_config(write(tmp_path, yaml_text), environ={})
    assert getattr(config.server, attr) == expected


def test_methods_are_upper_cased_and_deduplicated(tmp_path: Path) -> None:
    text = UPSTREAM + "forwards:\n  x:\n    upstream: weather\n    methods: [get, POST, Get]\n"
    assert load_config(write(tmp_path, text), environ={}).forwards[0].methods == ("GET", "POST")


def test_the_upstream_url_loses_its_trailing_slash(tmp_path: Path) -> None:
    text = "upstreams:\n  w:\n    url: https://api.example.com/v1/\n"
    assert load_config(write(tmp_path, text), environ={}).upstreams["w"].url == "https://api.example.com/v1"


def test_a_yaml_alias_is_read_like_its_anchor(tmp_path: Path) -> None:
    text = """\
    upstreams:
      a: &base
        url: https://a.example.com
        timeout: 5s
      b:
        <<: *base
        url: https://b.example.com
    """
    config = load_config(write(tmp_path, text), environ={})
    assert config.upstreams["b"].timeout == 5.0
    assert config.upstreams["b"].url == "https://b.example.com"


# -- every mistake, one exact line -----------------------------------------------------------------------------

TOP_KEYS = "server, clients, upstreams, forwards, state, state_on_error"
SERVER_KEYS = ("host, port, prefix, routes, workers, max_body, max_response, shutdown_grace, trusted_proxies, "
               "cache_size, metrics, access_log")
DURATION = "expected a duration like 250ms, 10s, 5m, 1h or a number of seconds"
SIZE = "expected a size like 512kb, 1mb or a number of bytes"
RATE = "expected a rate like 30/minute (N/second, N/minute or N/hour, N >= 1)"
BASE_URL = "is not an http(s) (or ws(s)) base URL like https://api.example.com/v1"
METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
PREFIX = "the prefix must be a path such as /api (or / for none)"
NO_URL = "missing 'url': give the upstream's base URL, e.g. url: https://api.example.com/v1"

MISTAKES = [
    # unknown keys, with a did-you-mean when one is close
    # a known key at the wrong indentation says so (issue: a newcomer's first hour)
    ("clients:\n  origins: [https://a.example]\n",
     "config.yaml:2: clients.origins: unknown key 'origins': it belongs under cors: indent it there"),
    ("upstreams:\n  w:\n    url: https://w.example\n    inject: {}\n    headers: {A: b}\n",
     "config.yaml:5: upstreams.w.headers: unknown key 'headers': it belongs under inject: indent it there"),
    ("upstreams:\n  w:\n    url: https://w.example\n    inject:\n      timeout: 5s\n",
     "config.yaml:5: upstreams.w.inject.timeout: unknown key 'timeout': it belongs one level up, beside "
     "upstreams.w.inject: indent it less"),
    ("upstreams:\n  w: { url: https://w.example }\n  headers: { A: b }\n",
     "config.yaml:3: upstreams.headers: 'headers' is read as the name of an upstream: it belongs under an "
     "upstream's inject:; indent it there"),
    ("prefix: /v1\n", "config.yaml:1: prefix: unknown key 'prefix': it belongs under server: indent it there"),
    ("server:\n  host: 127.0.0.1\nport: 8080\n",
     "config.yaml:3: port: unknown key 'port': it belongs under server: indent it there"),
    ("upstreams:\n  w: { url: https://w.example }\nforwards:\n  w/[...p]:\n    upstream: w\n  path: '/{p}'\n",
     "config.yaml:6: forwards.path: 'path' is read as the route of a forward: it belongs inside a forward, beside its "
     "upstream:; indent it there"),
    # $VAR without braces in a secret is sent as written
    ("state: 'redis://:$REDIS_PASSWORD@cache:6379/0'\n",
     "config.yaml:1: state: $REDIS_PASSWORD is sent as written, not read from the environment: write "
     "${REDIS_PASSWORD}"),
    ("upstreams:\n  w:\n    url: https://w.example\n    inject: { headers: { Authorization: \"Bearer $KEY\" } }\n",
     "config.yaml:4: upstreams.w.inject.headers.Authorization: $KEY is sent as written, not read from the "
     "environment: write ${KEY}"),
    ("clients:\n  api_keys: [$CLIENT_KEY]\n",
     "config.yaml:2: clients.api_keys[0]: $CLIENT_KEY is sent as written, not read from the environment: write "
     "${CLIENT_KEY}"),
    # forward keys are relative to the prefix; ${param} is not {param}
    ("upstreams:\n  w: { url: https://w.example }\nforwards:\n  /api/w/[...p]: { upstream: w, path: '/{p}' }\n",
     "config.yaml:4: forwards./api/w/[...p]: '/api/w/[...p]': forward keys are relative to the prefix /api: "
     "write 'w/[...p]'"),
    ("upstreams:\n  w: { url: https://w.example }\nforwards:\n  w/[city]: { upstream: w, path: '/q?c=${city}' }\n",
     "config.yaml:4: forwards.w/[city].path: ${city} reads the environment variable city: for the route "
     "parameter write {city}"),
    ("sever:\n  port: 8080\n", "config.yaml:1: sever: unknown key 'sever': did you mean 'server'?"),
    ("server:\n  prot: 8080\n", "config.yaml:2: server.prot: unknown key 'prot': did you mean 'port'?"),
    ("server:\n  colour: red\n", f"config.yaml:2: server.colour: unknown key 'colour': known keys: {SERVER_KEYS}"),
    ("clients:\n  api_key: [a]\n", "config.yaml:2: clients.api_key: unknown key 'api_key': did you mean 'api_keys'?"),
    (
        UPSTREAM + "    timout: 5s\n",
        "config.yaml:4: upstreams.weather.timout: unknown key 'timout': did you mean 'timeout'?",
    ),
    (
        UPSTREAM + "    inject:\n      header: {A: b}\n",
        "config.yaml:5: upstreams.weather.inject.header: unknown key 'header': did you mean 'headers'?",
    ),
    (
        UPSTREAM + "forwards:\n  x:\n    upstream: weather\n    respons: {drop: [a]}\n",
        "config.yaml:7: forwards.x.respons: unknown key 'respons': did you mean 'response'?",
    ),
    (
        UPSTREAM + "forwards:\n  x:\n    upstream: weather\n    response:\n      dorp: [a]\n",
        "config.yaml:8: forwards.x.response.dorp: unknown key 'dorp': did you mean 'drop'?",
    ),
    ("x: &a [*a]\n", f"config.yaml:1: x: unknown key 'x': known keys: {TOP_KEYS}"),  # a recursive alias: no crash
    # wrong types
    ("- server\n", f"config.yaml: expected a mapping of {TOP_KEYS}, got a list"),
    ("server: 5\n", f"config.yaml:1: server: expected a mapping of {SERVER_KEYS}, got 5"),
    ("server:\n  host: [a, b]\n", "config.yaml:2: server.host: expected a string, got a list"),
    ("server:\n  host: {a: b}\n", "config.yaml:2: server.host: expected a string, got a mapping"),
    ("server:\n  port: abc\n", "config.yaml:2: server.port: 'abc': expected a whole number"),
    ("server:\n  port: true\n", "config.yaml:2: server.port: True: expected a whole number"),
    ("server:\n  port: 80.5\n", "config.yaml:2: server.port: 80.5: expected a whole number"),
    ("server:\n  port: 65536\n", "config.yaml:2: server.port: 65536: must be between 0 and 65535"),
    ("server:\n  port: 99999\n", "config.yaml:2: server.port: 99999: must be between 0 and 65535"),
    ("server:\n  workers: 0\n", "config.yaml:2: server.workers: 0: must be between 1 and 64"),
    ("upstreams: [a]\n", "config.yaml:1: upstreams: expected a mapping of upstream names, got a list"),
    ("forwards: [a]\n", "config.yaml:1: forwards: expected a mapping of route paths to forwards, got a list"),
    (
        UPSTREAM + "    retries: 11\n",
        "config.yaml:4: upstreams.weather.retries: 11: must be between 0 and 10",
    ),
    (
        UPSTREAM + "    forward_headers: X-Trace\n",
        "config.yaml:4: upstreams.weather.forward_headers: expected a list of strings, got 'X-Trace'",
    ),
    (
        UPSTREAM + "    expose_headers: [X-Ok, 'Bad Header']\n",
        "config.yaml:4: upstreams.weather.expose_headers[1]: 'Bad Header' is not a valid header name",
    ),
    (
        UPSTREAM + "forwards:\n  x:\n    upstream: weather\n    rewrite_urls: 'yes'\n",
        "config.yaml:7: forwards.x.rewrite_urls: expected true or false, got 'yes'",
    ),
    (
        "clients:\n  cors:\n    origins: '*'\n",
        "config.yaml:3: clients.cors.origins: expected a list of strings, got '*'",
    ),
    (
        "clients:\n  cors:\n    origins: ['*']\n    credentials: true\n",
        "config.yaml:2: clients.cors: credentials: true cannot be combined with the origin '*': list the origins",
    ),
    ("clients:\n  api_keys: ['']\n", "config.yaml:2: clients.api_keys[0]: an API key cannot be empty"),
    # units
    ("server:\n  max_body: 1zb\n", f"config.yaml:2: server.max_body: '1zb': {SIZE}"),
    ("server:\n  max_body: -1\n", "config.yaml:2: server.max_body: -1: a size cannot be negative"),
    ("server:\n  shutdown_grace: soon\n", f"config.yaml:2: server.shutdown_grace: 'soon': {DURATION}"),
    ("server:\n  shutdown_grace: -1\n", "config.yaml:2: server.shutdown_grace: -1: a duration cannot be negative"),
    (UPSTREAM + "    timeout: 10x\n", f"config.yaml:4: upstreams.weather.timeout: '10x': {DURATION}"),
    (UPSTREAM + "    timeout: .inf\n", f"config.yaml:4: upstreams.weather.timeout: inf: {DURATION}"),
    (
        UPSTREAM + "forwards:\n  x:\n    upstream: weather\n    cache: forever\n",
        f"config.yaml:7: forwards.x.cache: 'forever': {DURATION}",
    ),
    (
        UPSTREAM + "forwards:\n  x:\n    upstream: weather\n    max_body: huge\n",
        f"config.yaml:7: forwards.x.max_body: 'huge': {SIZE}",
    ),
    ("clients:\n  rate_limit: 10/day\n", f"config.yaml:2: clients.rate_limit: '10/day': {RATE}"),
    ("clients:\n  rate_limit: 0/minute\n", f"config.yaml:2: clients.rate_limit: '0/minute': {RATE}"),
    (
        UPSTREAM + "forwards:\n  x:\n    upstream: weather\n    rate_limit: 30\n",
        f"config.yaml:7: forwards.x.rate_limit: 30: {RATE}",
    ),
    # the prefix
    ("server:\n  prefix: api\n", f"config.yaml:2: server.prefix: 'api': {PREFIX}"),
    ("server:\n  prefix: /a pi\n", f"config.yaml:2: server.prefix: '/a pi': {PREFIX}"),
    ("server:\n  prefix: /api?x=1\n", f"config.yaml:2: server.prefix: '/api?x=1': {PREFIX}"),
    ("server:\n  prefix: //api\n", f"config.yaml:2: server.prefix: '//api': {PREFIX}"),
    ("server:\n  prefix: /[x]\n", f"config.yaml:2: server.prefix: '/[x]': {PREFIX}"),
    # upstreams
    (
        "upstreams:\n  weather:\n    timeout: 5s\n",
        f"config.yaml:2: upstreams.weather: {NO_URL}",
    ),
    (
        "upstreams:\n  weather:\n",  # an empty entry is not silently dropped
        f"config.yaml:2: upstreams.weather: {NO_URL}",
    ),
    (
        "upstreams:\n  w:\n    url: ftp://files.example.com\n",
        f"config.yaml:3: upstreams.w.url: 'ftp://files.example.com' {BASE_URL}",
    ),
    ("upstreams:\n  w:\n    url: a.example/v1\n", f"config.yaml:3: upstreams.w.url: 'a.example/v1' {BASE_URL}"),
    ("upstreams:\n  w:\n    url: https://\n", f"config.yaml:3: upstreams.w.url: 'https://' {BASE_URL}"),
    (
        "upstreams:\n  w:\n    url: https://a.example/v1?k=1\n",
        f"config.yaml:3: upstreams.w.url: 'https://a.example/v1?k=1' {BASE_URL}",
    ),
    (
        "upstreams:\n  w:\n    url: https://a.example/#top\n",
        f"config.yaml:3: upstreams.w.url: 'https://a.example/#top' {BASE_URL}",
    ),
    ("upstreams:\n  w:\n    url: 'https://[::1'\n", f"config.yaml:3: upstreams.w.url: 'https://[::1' {BASE_URL}"),
    (
        "upstreams:\n  w:\n    url: https://a.example:99999\n",
        f"config.yaml:3: upstreams.w.url: 'https://a.example:99999' {BASE_URL}",
    ),
    ("upstreams:\n  w:\n    url: 42\n", f"config.yaml:3: upstreams.w.url: '42' {BASE_URL}"),
    # forwards
    (
        UPSTREAM + "forwards:\n  weather/[city]:\n    upstream: wether\n",
        "config.yaml:6: forwards.weather/[city].upstream: unknown upstream 'wether': did you mean 'weather'?",
    ),
    (
        UPSTREAM + "forwards:\n  x:\n    upstream: zzz\n",
        "config.yaml:6: forwards.x.upstream: unknown upstream 'zzz': defined upstreams: weather",
    ),
    (
        "forwards:\n  x:\n    upstream: weather\n",
        "config.yaml:3: forwards.x.upstream: unknown upstream 'weather': defined upstreams: none are defined",
    ),
    (
        UPSTREAM + "forwards:\n  x:\n    path: /x\n",
        "config.yaml:5: forwards.x: missing 'upstream': name one of the entries under upstreams:",
    ),
    (
        UPSTREAM + "forwards:\n  chat:\n",  # an empty entry is not silently dropped
        "config.yaml:5: forwards.chat: missing 'upstream': name one of the entries under upstreams:",
    ),
    (
        UPSTREAM + "forwards:\n  weather/[city]:\n    upstream: weather\n    path: /weather?q={town}\n",
        "config.yaml:7: forwards.weather/[city].path: {town} is not a parameter of weather/[city] "
        "(its parameters are city)",
    ),
    (
        UPSTREAM + "forwards:\n  a/[x]/[...rest]:\n    upstream: weather\n    path: /{y}\n",
        "config.yaml:7: forwards.a/[x]/[...rest].path: {y} is not a parameter of a/[x]/[...rest] "
        "(its parameters are x, rest)",
    ),
    (
        UPSTREAM + "forwards:\n  chat:\n    upstream: weather\n    path: /chat/{id}\n",
        "config.yaml:7: forwards.chat.path: {id} is not a parameter of chat (it has no parameters)",
    ),
    (
        UPSTREAM + "forwards:\n  chat:\n    upstream: weather\n    path: chat/completions\n",
        "config.yaml:7: forwards.chat.path: 'chat/completions' must start with / "
        "(it is appended to the upstream's url)",
    ),
    (
        UPSTREAM + "forwards:\n  p/[id]:\n    upstream: weather\n    path: /p/{id\n",
        "config.yaml:7: forwards.p/[id].path: '/p/{id' has an unbalanced { or }",
    ),
    (
        UPSTREAM + "forwards:\n  chat:\n    upstream: weather\n    methods: [POST, FETCH]\n",
        f"config.yaml:7: forwards.chat.methods[1]: 'FETCH' is not an HTTP method: use {METHODS}",
    ),
    (
        UPSTREAM + "forwards:\n  chat:\n    upstream: weather\n    methods: []\n",
        "config.yaml:7: forwards.chat.methods: list at least one method, e.g. [GET]",
    ),
    (
        UPSTREAM + "forwards:\n  chat:\n    upstream: weather\n    methods: POST\n",
        "config.yaml:7: forwards.chat.methods: expected a list of strings, got 'POST'",
    ),
    (
        UPSTREAM + "forwards:\n  post/[p id]:\n    upstream: weather\n",
        "config.yaml:5: forwards.post/[p id]: 'post/[p id]': '[p id]' is not a valid segment: "
        "use [name], [...name] or [[...name]] with a Python identifier",
    ),
    (
        UPSTREAM + "forwards:\n  '[...all]/x':\n    upstream: weather\n",
        "config.yaml:5: forwards.[...all]/x: '[...all]/x': [...all] must be the last segment of the path",
    ),
    (
        UPSTREAM + "forwards:\n  x:\n    upstream: weather\n    response:\n      select: '{a: '\n",
        "config.yaml:8: forwards.x.response.select: '{a: ' is not a valid JMESPath expression: "
        "Invalid jmespath expression: Incomplete expression",
    ),
    (
        UPSTREAM + "forwards:\n  x:\n    upstream: weather\n    response:\n      select: 'a]'\n",
        "config.yaml:8: forwards.x.response.select: 'a]' is not a valid JMESPath expression: "
        'Unexpected token: ]: Parse error at column 1, token "]" (RBRACKET)',
    ),
    # headers: a value from the environment with CR/LF could add headers upstream
    (
        UPSTREAM + "    inject:\n      headers: {X-Key: \"a\\r\\nX-Evil: 1\"}\n",
        "config.yaml:5: upstreams.weather.inject.headers.X-Key: a header value cannot contain CR, LF or NUL characters",
    ),
    (
        UPSTREAM + "    inject:\n      headers: {'Bad Name': v}\n",
        "config.yaml:5: upstreams.weather.inject.headers.Bad Name: 'Bad Name' is not a valid header name",
    ),
    (
        UPSTREAM + "    inject:\n      query: [a, b]\n",
        "config.yaml:5: upstreams.weather.inject.query: expected a mapping of names to values, got a list",
    ),
    (
        UPSTREAM + "    inject:\n      query: {appid: null}\n",
        "config.yaml:5: upstreams.weather.inject.query.appid: expected a string, got nothing",
    ),
    # state
    (
        "state: http://localhost:6379/0\n",
        "config.yaml:1: state: 'http://localhost:6379/0': expected memory or a redis:// or rediss:// URL such as "
        "redis://127.0.0.1:6379/0",
    ),
    # YAML itself
    ("server:\n  port: [1, 2\n", "config.yaml:3: invalid YAML: expected ',' or ']', but got '<stream end>'"),
    ("server:\n\tport: 1\n", "config.yaml:2: invalid YAML: found character '\\t' that cannot start any token"),
    ("server: a\n  b: c\n", "config.yaml:2: invalid YAML: mapping values are not allowed here"),
    (
        "a: !!python/object:os.system x\n",
        "config.yaml:1: invalid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object:os.system'",
    ),
    ("server:\n  port: 1\n  port: 2\n", "config.yaml:3: server.port: duplicate key: remove one of them"),
    (
        UPSTREAM + "  weather:\n    url: https://b.example\n",
        "config.yaml:4: upstreams.weather: duplicate key: remove one of them",
    ),
]


@pytest.mark.parametrize(("yaml_text", "message"), MISTAKES, ids=[m for _, m in MISTAKES])
def test_each_mistake_is_one_exact_line(tmp_path: Path, yaml_text: str, message: str) -> None:
    assert problems_of(tmp_path, yaml_text) == [message]


def test_a_problem_is_a_typed_record(tmp_path: Path) -> None:
    path = write(tmp_path, UPSTREAM + "forwards:\n  weather/[city]:\n    upstream: weather\n    path: /w?q={town}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == [
        Problem("config.yaml", 7, "forwards.weather/[city].path",
                "{town} is not a parameter of weather/[city] (its parameters are city)")
    ]


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", environ={})
    assert str(info.value) == "nope.yaml: cannot read the config file: No such file or directory"


def test_a_config_outside_the_working_directory_is_named_by_its_full_path(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "sever: {}\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value) == f"{path}:1: sever: unknown key 'sever': did you mean 'server'?"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = """\
    sever:
      port: 1
    server:
      port: 99999
      max_body: 1zb
    state: redis://cache:6379/x
    upstreams:
      weather:
        url: ftp://weather.example
        timeout: soon
        inject:
          query: {appid: "${OPENWEATHER_KEY}"}
    forwards:
      weather/[city]:
        upstream: wether
        path: /weather?q={town}
        methods: [GETT]
        response:
          select: "{a: "
      ok:
        upstream: weather
    """
    found = problems_of(tmp_path, text)
    assert sorted(found) == sorted([
        "config.yaml:1: sever: unknown key 'sever': did you mean 'server'?",
        "config.yaml:4: server.port: 99999: must be between 0 and 65535",
        f"config.yaml:5: server.max_body: '1zb': {SIZE}",
        "config.yaml:6: state: 'redis://cache:6379/x': the database must be a number, as in "
        "redis://127.0.0.1:6379/0",
        f"config.yaml:9: upstreams.weather.url: 'ftp://weather.example' {BASE_URL}",
        f"config.yaml:10: upstreams.weather.timeout: 'soon': {DURATION}",
        "config.yaml:12: upstreams.weather.inject.query.appid: environment variable OPENWEATHER_KEY is not set: "
        "set it, add it to .env beside the config, or give a default with ${OPENWEATHER_KEY:-value}",
        "config.yaml:15: forwards.weather/[city].upstream: unknown upstream 'wether': did you mean 'weather'?",
        "config.yaml:16: forwards.weather/[city].path: {town} is not a parameter of weather/[city] "
        "(its parameters are city)",
        f"config.yaml:17: forwards.weather/[city].methods[0]: 'GETT' is not an HTTP method: use {METHODS}",
        "config.yaml:19: forwards.weather/[city].response.select: '{a: ' is not a valid JMESPath expression: "
        "Invalid jmespath expression: Incomplete expression",
    ])
    # 'ok' names the upstream 'weather', which exists but is broken: that is reported once, at the upstream


def test_every_problem_is_one_line(tmp_path: Path) -> None:
    text = UPSTREAM + "forwards:\n" + "".join(
        f"  f{i}:\n    upstream: weather\n    response:\n      select: '{expr}'\n"
        for i, expr in enumerate(["{a: ", "a]", 'foo."bar', "a ^ b", ""])
    )
    found = problems_of(tmp_path, text)
    assert len(found) == 5
    assert all("\n" not in line for line in found)
