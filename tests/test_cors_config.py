"""clients.cors at start-up: the origin forms accepted (as browsers send them), each refusal one line that says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import CorsConfig, load_config
from gateway.origins import parse_origin
from gateway.yamlsource import ConfigError


def problems_of(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "config.yaml", environ={})
    return [str(p) for p in info.value.problems]


def cors_of(tmp_path: Path, text: str) -> CorsConfig | None:
    (tmp_path / "config.yaml").write_text(text)
    return load_config(tmp_path / "config.yaml", environ={}).clients.cors


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # messages then name "config.yaml"


ACCEPTED = [
    ("https://app.example.com", "https://app.example.com"),
    ("https://app.example.com:8443", "https://app.example.com:8443"),
    ("HTTPS://App.Example.COM", "https://app.example.com"),  # scheme and host are case-insensitive
    ("https://app.example.com:443", "https://app.example.com"),  # browsers leave the default port out
    ("https://app.example.com:0443", "https://app.example.com"),
    ("http://localhost", "http://localhost"),
    ("http://localhost:80", "http://localhost"),
    ("http://localhost:5173", "http://localhost:5173"),
    ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
    ("http://[::1]", "http://[::1]"),
    ("http://[0:0:0:0:0:0:0:1]:8080", "http://[::1]:8080"),
    ("https://10.0.0.5", "https://10.0.0.5"),
    ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
    ("https://*.example.com", "https://*.example.com"),
    ("https://*.example.co.uk", "https://*.example.co.uk"),
    ("https://*.Example.com:8443", "https://*.example.com:8443"),
    ("https://*.app.example.com", "https://*.app.example.com"),
    ("*", "*"),
]


@pytest.mark.parametrize(("written", "sent"), ACCEPTED, ids=[w for w, _ in ACCEPTED])
def test_accepted_origins_are_kept_as_a_browser_sends_them(written: str, sent: str) -> None:
    assert parse_origin(written) == sent


NULL = ("sandboxed iframes, file: pages and some redirects all send Origin: null, so any site can claim it: list the "
        "real origin of your app, e.g. https://app.example.com")
FILE = ("file: pages have the origin null, which any site can claim: serve the page from http://localhost:PORT and "
        "list that origin")
PLAIN_HTTP = ("plain http is accepted only for http://localhost, http://127.0.0.1 and http://[::1] (any port): use "
              "https://{}")
SCHEME = "only https origins (and plain http on localhost) are accepted, e.g. https://app.example.com"
NOT_ORIGIN = "not an origin: write scheme://host[:port], e.g. https://app.example.com"
PATH = "an origin has no path, query or trailing slash: write {}"
ONE_LABEL = "a wildcard is one whole label, leftmost, once: write https://*.example.com"
SUFFIX = ("{0} is a public suffix, shared by sites of different owners: put the wildcard over your own domain, "
          "e.g. https://*.example.{0}")
IDN = "browsers send an international host name in its ASCII form: write"
PORT = "{!r} is not a port: a port is a number from 1 to 65535, e.g. https://localhost:5173"

REFUSED = [
    ("null", NULL),
    ("'NULL'", NULL),
    ("file://", FILE),
    ("file:///home/me/app.html", FILE),
    ("http://app.example.com", PLAIN_HTTP.format("app.example.com")),
    ("http://127.0.0.2:8080", PLAIN_HTTP.format("127.0.0.2:8080")),
    ("http://localhost.example.com", PLAIN_HTTP.format("localhost.example.com")),
    ("http://sub.localhost", PLAIN_HTTP.format("sub.localhost")),
    ("ftp://files.example.com", SCHEME),
    ("chrome-extension://abcdef", SCHEME),
    ("app.example.com", NOT_ORIGIN),
    ("//app.example.com", NOT_ORIGIN),
    ("https://app.example.com/", PATH.format("https://app.example.com")),
    ("https://app.example.com/app", PATH.format("https://app.example.com")),
    ("https://app.example.com?x=1", PATH.format("https://app.example.com")),
    ("https://app.example.com#top", PATH.format("https://app.example.com")),
    ("https://user:pw@app.example.com", "an origin has no user or password: write https://app.example.com"),
    ("https://app.example.com.", "browsers send the host without its trailing dot: write app.example.com"),
    ("https://app.example.com:99999", PORT.format(":99999")),
    ("https://app.example.com:0", PORT.format(":0")),
    ("https://app.example.com:x", PORT.format(":x")),
    ("'https://app.example.com:'", PORT.format(":")),
    ("https://", "the origin has no host, e.g. https://app.example.com"),
    ("'https://[::1'", "'[::1' is not an IPv6 address, e.g. http://[::1]:8080"),
    ("https://[nope]", "'[nope]' is not an IPv6 address, e.g. http://[::1]:8080"),
    ("https://1.2.3", "'1.2.3' is not an IPv4 address"),
    ("https://127.000.0.1", "'127.000.0.1' is not an IPv4 address"),
    ("https://app_.exa mple.com", NOT_ORIGIN.replace("not an origin", "an origin has no spaces or control characters")),
    ("https://-app.example.com", "'-app.example.com' is not a host name: labels are letters, digits and inner hyphens"),
    ("https://bücher.example", f"{IDN} xn--bcher-kva.example"),
    ("https://*", ONE_LABEL),
    ("https://*.*.example.com", ONE_LABEL),
    ("https://a.*.example.com", ONE_LABEL),
    ("https://*example.com", ONE_LABEL),
    ("https://app*.example.com", ONE_LABEL),
    ("http://*.example.com", "a wildcard origin must be https: https://*.example.com"),
    ("https://*.com", SUFFIX.format("com")),
    ("https://*.co.uk", SUFFIX.format("co.uk")),
    ("https://*.github.io", SUFFIX.format("github.io")),
    ("https://*.vercel.app", SUFFIX.format("vercel.app")),
    ("https://*.com.au:8443", SUFFIX.format("com.au")),
    ("https://*.0.1", SUFFIX.format("0.1")),
]


@pytest.mark.parametrize(("written", "message"), REFUSED, ids=[w for w, _ in REFUSED])
def test_each_refused_origin_is_one_line_naming_path_and_value(tmp_path: Path, written: str, message: str) -> None:
    text = f"clients:\n  cors:\n    origins:\n      - https://ok.example.com\n      - {written}\n"
    value = written.strip("'")
    assert problems_of(tmp_path, text) == [f"config.yaml:5: clients.cors.origins[1]: {value!r}: {message}"]


def test_control_characters_in_an_origin_are_refused(tmp_path: Path) -> None:
    text = 'clients:\n  cors:\n    origins: ["https://app.example.com\\r\\nX-Evil: 1"]\n'
    assert problems_of(tmp_path, text) == [
        "config.yaml:3: clients.cors.origins[0]: 'https://app.example.com\\r\\nX-Evil: 1': an origin has no spaces or "
        "control characters: write scheme://host[:port], e.g. https://app.example.com"
    ]


def test_every_bad_origin_is_reported_at_once(tmp_path: Path) -> None:
    text = "clients:\n  cors:\n    origins: [null, 'http://a.example.com', 'https://*.com']\n    credentials: 1\n"
    found = problems_of(tmp_path, text)
    assert [line.split(": ", 2)[1] for line in found] == [
        "clients.cors.origins[0]", "clients.cors.origins[1]", "clients.cors.origins[2]", "clients.cors.credentials",
    ]


OTHER_MISTAKES = [
    ("clients:\n  cors:\n    origins: ['*']\n    credentials: true\n",
     "config.yaml:2: clients.cors: credentials: true cannot be combined with the origin '*': list the origins"),
    ("clients:\n  cors: {credentials: true}\n",
     "config.yaml:2: clients.cors: list the origins allowed to call, e.g. origins: [https://app.example.com]"),
    ("clients:\n  cors:\n    origins: []\n",
     "config.yaml:3: clients.cors.origins: list the origins allowed to call, e.g. origins: [https://app.example.com]"),
    ("clients:\n  cors:\n",
     "config.yaml:2: clients.cors: list the origins allowed to call, e.g. origins: [https://app.example.com]"),
    ("clients:\n  cors:\n    origins: https://app.example.com\n",
     "config.yaml:3: clients.cors.origins: expected a list of strings, got 'https://app.example.com'"),
    ("clients:\n  cors:\n    origins: ['https://a.example.com']\n    max_age: soon\n",
     "config.yaml:4: clients.cors.max_age: 'soon': expected a duration like 250ms, 10s, 5m, 1h or a number of seconds"),
    ("clients:\n  cors:\n    origins: ['https://a.example.com']\n    max_age: -5\n",
     "config.yaml:4: clients.cors.max_age: -5: a duration cannot be negative"),
    ("clients:\n  cors:\n    origins: ['https://a.example.com']\n    credential: true\n",
     "config.yaml:4: clients.cors.credential: unknown key 'credential': did you mean 'credentials'?"),
    ("clients:\n  cors:\n    origins: ['https://a.example.com']\n    credentials: 'yes'\n",
     "config.yaml:4: clients.cors.credentials: expected true or false, got 'yes'"),
]


@pytest.mark.parametrize(("yaml_text", "message"), OTHER_MISTAKES, ids=[m for _, m in OTHER_MISTAKES])
def test_other_cors_mistakes(tmp_path: Path, yaml_text: str, message: str) -> None:
    assert problems_of(tmp_path, yaml_text) == [message]


def test_defaults_and_values(tmp_path: Path) -> None:
    cors = cors_of(tmp_path, "clients:\n  cors:\n    origins: ['https://App.example.com', 'https://app.example.com']\n")
    assert cors == CorsConfig(origins=("https://app.example.com",), credentials=False, max_age=600.0)
    text = "clients:\n  cors:\n    origins: ['https://*.example.com', 'http://localhost:5173']\n" \
           "    credentials: true\n    max_age: 2h\n"
    assert cors_of(tmp_path, text) == CorsConfig(("https://*.example.com", "http://localhost:5173"), True, 7200.0)
    assert cors_of(tmp_path, "clients:\n  cors: {origins: ['*']}\n") == CorsConfig(("*",), False, 600.0)
    assert cors_of(tmp_path, "clients: {}\n") is None


def test_an_origin_from_the_environment_is_checked_too(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("clients:\n  cors:\n    origins: ['${APP_ORIGIN}']\n")
    config = load_config(tmp_path / "config.yaml", environ={"APP_ORIGIN": "https://app.example.com"})
    assert config.clients.cors is not None and config.clients.cors.origins == ("https://app.example.com",)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "config.yaml", environ={"APP_ORIGIN": "http://app.example.com"})
    assert str(info.value).startswith("config.yaml:3: clients.cors.origins[0]: 'http://app.example.com': plain http")
