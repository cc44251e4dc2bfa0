"""Unit tests of the forward path's pure pieces: URL templates, header allowlists, URL rewriting, shaping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config import ResponseShape, load_config
from gateway.pipeline.headers import (
    REQUEST_ALLOW,
    RESPONSE_ALLOW,
    pick_request_headers,
    pick_response_headers,
    request_allowlist,
    response_allowlist,
)
from gateway.pipeline.shape import Shaper
from gateway.pipeline.urlmap import UrlMapper
from gateway.pipeline.urls import UrlTemplate, encode_query, without_params

BASE = "http://127.0.0.1:9999/base"


def build(template: str, params: dict[str, str], *, catch: dict[str, list[str]] | None = None, query: str = "",
          inject_names: tuple[str, ...] = ("key",), inject: str = "key=SECRET") -> str:
    catch = catch or {}
    url = UrlTemplate(BASE, template, set(inject_names))
    return url.build({**params, **{k: "/".join(v) for k, v in catch.items()}}, catch, query, inject)


# --- URL template -----------------------------------------------------------------------------------------------


def test_param_is_percent_encoded_whole() -> None:
    assert build("/items/{id}", {"id": "a b/c?d#e&f"}, inject="") == f"{BASE}/items/a%20b%2Fc%3Fd%23e%26f"


def test_param_in_template_query_is_encoded() -> None:
    url = build("/weather?q={city}&units=metric", {"city": "São Paulo&key=x"}, inject="")
    assert url == f"{BASE}/weather?q=S%C3%A3o%20Paulo%26key%3Dx&units=metric"


def test_catch_all_keeps_slashes_and_encodes_each_segment() -> None:
    url = build("/{path}", {}, catch={"path": ["a b", "c/d", "ü", "x?y"]}, inject="")
    assert url == f"{BASE}/a%20b/c%2Fd/%C3%BC/x%3Fy"


# A bare "." or ".." never reaches the template: the router answers 400 first (see test_forward.py).
@pytest.mark.parametrize("value", [
    "%2e%2e", "%2E%2E/x", "../../admin", "..\\..\\admin", "\\\\evil.example", "//evil.example/x",
    "@evil.example", "user:pw@evil.example", "http://evil.example/", "a\r\nX-Evil: 1", "a\nb", "#frag", "?key=x",
])
def test_hostile_param_stays_on_host_and_under_base(value: str) -> None:
    for template, params, catch in (
        ("/items/{id}", {"id": value}, None),
        ("/{path}", {}, {"path": ["ok", value]}),
    ):
        raw = build(template, params, catch=catch, inject="")
        url = URL(raw, encoded=True)
        assert (url.scheme, url.host, url.port) == ("http", "127.0.0.1", 9999)
        assert url.raw_path.startswith("/base/"), raw
        assert not url.raw_query_string and not url.raw_fragment, raw
        assert not any(c in raw for c in "\r\n\\@#") and "//" not in raw[len("http://"):], raw
        # no raw "/" from the value: the path keeps its number of segments (+1 for /base, +1 for the catch's "ok")
        assert url.raw_path.count("/") == template.count("/") + 1 + (1 if catch else 0), raw


def test_client_query_is_passed_and_injected_params_replace_the_clients() -> None:
    query = "a=1&key=evil&KEY=evil&%6Bey=evil&k%65y=evil&key&b=x%26key%3Devil&c"
    url = URL(build("/s", {}, query=query, inject="key=SECRET"), encoded=True)
    assert url.raw_query_string == "a=1&b=x%26key%3Devil&c&key=SECRET"
    assert url.query.getall("key") == ["SECRET"]


def test_template_query_params_win_over_the_clients() -> None:
    url = build("/w?units=metric", {}, query="units=imperial&Units=x&q=paris", inject="")
    assert url == f"{BASE}/w?units=metric&q=paris"


def test_without_params_compares_decoded_names_case_insensitively() -> None:
    assert without_params("a=1&KEY=x&%6Bey=y&k%65y&key+=z&b=key%3Dv&&=w", {"key"}) == "a=1&key+=z&b=key%3Dv"


def test_encode_query_encodes_names_and_values() -> None:
    assert encode_query((("k", "a/b+c=d&e f"), ("x y", "1"))) == "k=a%2Fb%2Bc%3Dd%26e%20f&x%20y=1"


# --- header allowlists ------------------------------------------------------------------------------------------


def test_request_allowlist_can_never_include_credentials_host_or_forwarded_headers() -> None:
    allow = request_allowlist(("X-Trace", "Authorization", "cookie", "X-API-Key", "Host", "X-Forwarded-For",
                               "x-forwarded-host", "Content-Length", "Connection", "TE", "Upgrade"))
    assert allow == {h.lower() for h in REQUEST_ALLOW} | {"x-trace"}


def test_response_allowlist_can_never_include_identifying_headers() -> None:
    allow = response_allowlist(("X-RateLimit-Remaining", "Set-Cookie", "server", "X-Powered-By", "Via",
                                "Transfer-Encoding", "Connection"))
    assert allow == {h.lower() for h in RESPONSE_ALLOW} | {"x-ratelimit-remaining"}


def test_pick_request_headers_drops_unlisted_and_connection_named_headers() -> None:
    headers = CIMultiDictProxy(CIMultiDict([
        ("Accept", "application/json"), ("accept-language", "fr"), ("X-Trace", "t1"), ("Cookie", "c=1"),
        ("Authorization", "Bearer client"), ("Connection", "keep-alive, X-Trace"), ("Connection", "Accept-Language"),
        ("Range", "bytes=0-1"),
    ]))
    picked = pick_request_headers(headers, request_allowlist(("X-Trace",)))
    assert picked == {"Accept": "application/json", "Range": "bytes=0-1"}


def test_pick_response_headers_keeps_repeated_allowed_headers() -> None:
    headers = CIMultiDictProxy(CIMultiDict([
        ("Server", "nginx/1.2"), ("Set-Cookie", "a=1"), ("Cache-Control", "no-cache"), ("X-Powered-By", "PHP"),
        ("X-Rate", "1"), ("X-Rate", "2"), ("X-Request-Id", "abc"),
    ]))
    picked = pick_response_headers(headers, response_allowlist(("X-Rate",)))
    assert list(picked.items()) == [("Cache-Control", "no-cache"), ("X-Rate", "1"), ("X-Rate", "2")]


# --- URL rewriting ----------------------------------------------------------------------------------------------


@pytest.fixture
def rewriter(tmp_path: Path) -> UrlMapper:
    (tmp_path / "config.yaml").write_text("""
upstreams:
  gh: { url: "https://api.example.com/v3" }
forwards:
  gh/[...path]: { upstream: gh, path: "/{path}" }
  status: { upstream: gh, path: /meta/status }
  users/[name]: { upstream: gh, path: "/users/{name}" }
""")
    config = load_config(tmp_path / "config.yaml", environ={})
    return UrlMapper(config.upstreams["gh"], config.forwards, "/api")


@pytest.mark.parametrize(("location", "expected"), [
    ("https://api.example.com/v3/repos/x?page=2", "/api/gh/repos/x?page=2"),
    ("https://API.example.com/v3/repos/x", "/api/gh/repos/x"),  # host names are case-insensitive
    ("/v3/repos/x#readme", "/api/gh/repos/x#readme"),
    ("//api.example.com/v3/repos/x", "/api/gh/repos/x"),
    ("https://api.example.com/v3", None),  # gh/[...path] needs one segment at least: no forward serves it
    ("https://api.example.com/v3/users/octo?tab=1", "/api/users/octo?tab=1"),  # [param] beats [...catch]
    ("https://api.example.com/v3/meta/status", "/api/status"),  # an exact forward is preferred over the tree
    ("https://api.example.com/other", None),
    ("https://api.example.com/v3x/other", None),
    ("https://api.example.com/v3/../admin", None),
    ("https://api.example.com:8443/v3/repos/x", None),
    ("https://api.example.com:443/v3/repos/x", None),
    ("http://api.example.com/admin", None),
    ("https://user:pw@api.example.com/admin", None),
    ("https://elsewhere.example.org/x", "https://elsewhere.example.org/x"),
])
def test_location_rewritten_to_gateway_or_removed(rewriter: UrlMapper, location: str, expected: str | None) -> None:
    assert rewriter.to_gateway(location) == expected


@pytest.mark.parametrize(("location", "expected"), [
    ("other", "/api/gh/repos/other"),
    ("../users/x", "/api/users/x"),  # users/[name] serves it, and [param] beats [...catch]
    ("../meta/status", "/api/status"),
    ("?page=3", "/api/gh/repos/x?page=3"),
    ("../../../../etc", None),
])
def test_relative_location_resolved_against_the_request(rewriter: UrlMapper, location: str,
                                                        expected: str | None) -> None:
    assert rewriter.to_gateway(location, "https://api.example.com/v3/repos/x") == expected


def test_link_header_keeps_mappable_links_only(rewriter: UrlMapper) -> None:
    value = ('<https://api.example.com/v3/repos?page=2>; rel="next", <https://api.example.com/private/x>; rel="x", '
             '<https://docs.example.org/>; rel="help"')
    assert rewriter.link_header(value) == '</api/gh/repos?page=2>; rel="next", <https://docs.example.org/>; rel="help"'
    assert rewriter.link_header('<https://api.example.com/private>; rel="last"') is None


def test_link_header_parameters_may_quote_a_comma(rewriter: UrlMapper) -> None:
    value = ('<https://api.example.com/v3/repos?page=2>; rel="next"; title="a, b", '
             '<https://api.example.com/private/y>; rel="x"')
    assert rewriter.link_header(value) == '</api/gh/repos?page=2>; rel="next"; title="a, b"'


def test_a_link_whose_parameters_name_the_upstream_is_dropped(rewriter: UrlMapper) -> None:
    value = ('<https://api.example.com/v3/repos?page=2>; rel="next"; title="see https://API.example.com/x", '
             '<https://api.example.com/v3/repos?page=9>; rel="last"')
    assert rewriter.link_header(value) == '</api/gh/repos?page=9>; rel="last"'


def test_body_urls_rewritten_in_plain_and_escaped_json(rewriter: UrlMapper) -> None:
    body = json.dumps({"url": "https://api.example.com/v3/repos/x", "other": "https://elsewhere.example.org/v3/a"})
    escaped = body.replace("/", "\\/")
    origin = "http://gw.test"
    out = json.loads(rewriter.body(body.encode(), origin))
    assert out == {"url": "http://gw.test/api/gh/repos/x", "other": "https://elsewhere.example.org/v3/a"}
    assert json.loads(rewriter.body(escaped.encode(), origin)) == out


# --- shaping ----------------------------------------------------------------------------------------------------


def test_shape_drops_then_selects() -> None:
    shaper = Shaper(ResponseShape(drop=("base", "main.humidity", "weather.icon"),
                                  select="{temp: main.temp, main: main, weather: weather}"))
    body = {"base": "stations", "main": {"temp": 3.5, "humidity": 80},
            "weather": [{"description": "rain", "icon": "10d"}, {"description": "fog", "icon": "50d"}]}
    out = json.loads(shaper(json.dumps(body).encode()))
    assert out == {"temp": 3.5, "main": {"temp": 3.5}, "weather": [{"description": "rain"}, {"description": "fog"}]}


def test_shape_refuses_a_body_that_is_not_json() -> None:
    with pytest.raises(ValueError):
        Shaper(ResponseShape(drop=("a",)))(b"<html>")


def test_line_rewriter_holds_only_an_unfinished_line_and_at_most_its_limit() -> None:
    from gateway.pipeline.rewrite import LineRewriter

    upper = LineRewriter(bytes.upper, limit=8)
    assert upper.feed(b"data: a\n\npart") == b"DATA: A\n\n"  # the finished event goes at once
    assert upper.feed(b"ial") == b""  # "partial" is 7 bytes: held
    assert upper.feed(b"-line-without-end") == b"PARTIAL-LINE-WITHOUT-END"  # past the limit: sent as it is
    assert upper.feed(b"tail") == b""
    assert upper.flush() == b"TAIL"
    assert upper.flush() == b""
