"""The URL mapper against hostile spellings of the upstream: no header ever passes one to the client."""

from __future__ import annotations

import pytest
from aiohttp import web
from upstream_support import Recorder, assert_clean, gateway

from gateway.config import ForwardConfig, UpstreamConfig
from gateway.paths import parse_forward_path
from gateway.pipeline.urlmap import UrlMapper


def mapper(url: str) -> UrlMapper:
    forward = ForwardConfig("svc/[...path]", parse_forward_path("svc/[...path]"), "svc", "/{path}")
    return UrlMapper(UpstreamConfig("svc", url), [forward], "/api")


IP_FORMS = [
    "http://127.0.0.1:9001/private", "HTTP://127.0.0.1/x", "http://127.0.0.1./x", " http://127.0.0.1/x",
    "http://127%2E0%2E0%2E1:9001/x", "http://127%2e0%2e0%2e1/x", "http://127%252E0%252E0%252E1/x",
    "http://127\uff0e0\uff0e0\uff0e1/x", "http://127\u30020\u30020\u30021/x", "http://127\uff610\uff610\uff611/x",
    "http://2130706433/x", "http://0x7f000001/x", "http://0X7F000001/x", "http://0177.0.0.1/x", "http://0x7f.1/x",
    "http://127.1/x", "http://127.0.1/x", "http://0x7f.0x0.0x0.0x1/", "http://0000177.0.0.1/", "http://127.000.000.001/",
    "http://017700000001/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]:9001/x",
    "\\\\127.0.0.1\\x", "/\\127.0.0.1/x", "\\/0x7f.1/x", "//2130706433", "http:\\\\0177.1\\",
    "https://login.example/?next=http://127.0.0.1:9001/base/x", "https://login.example/?next=http://0x7f.1/x",
    "https://login.example/?next=http%3A%2F%2F127.0.0.1%3A9001%2Fx", "https://a.example/?n=http%253A%252F%252F0x7f.1",
    "http://user@127.0.0.1/x", "http://evil@0x7f000001/", "http://evil.example@2130706433:9001/",
    "http://\uff11\uff12\uff17.0.0.1/", "<http://127.0.0.1/x>; rel=next",
]
NAME_FORMS = [
    "https://api.example.com/x", "https://API.EXAMPLE.COM/x", "https://api.example.com./x",
    "https://api%2Eexample%2Ecom/x", "https://api\uff0eexample\uff0ecom/", "https://\uff41\uff50\uff49.example.com/",
    "//api.example.com/x", "\\\\api.example.com\\x", "https://other.example/?u=https%3A%2F%2Fapi.example.com%2Fv1",
    "https://api.example.com:8443/", "https://user:pw@api.example.com/",
]
SAFE = ["https://elsewhere.example.org/x", "/api/svc/x?page=2", "</api/svc/x>; rel=next", "text/html; charset=utf-8",
        '"etag-12345"', "max-age=60", "Thu, 01 Dec 2026 16:00:00 GMT", "127"]


@pytest.mark.parametrize("value", IP_FORMS)
def test_every_spelling_of_an_ip_upstream_is_recognised(value: str) -> None:
    assert mapper("http://127.0.0.1:9001/base").names_upstream(value)


@pytest.mark.parametrize("value", NAME_FORMS)
def test_every_spelling_of_a_named_upstream_is_recognised(value: str) -> None:
    assert mapper("https://api.example.com/v1").names_upstream(value)


@pytest.mark.parametrize("value", SAFE)
def test_ordinary_header_values_are_not_taken_for_the_upstream(value: str) -> None:
    assert not mapper("http://127.0.0.1:9001/base").names_upstream(value)
    assert not mapper("https://api.example.com/v1").names_upstream(value)


@pytest.mark.parametrize("value", [f.replace("9001", "{port}") for f in IP_FORMS])
async def test_no_header_passes_a_hostile_spelling_through_a_real_forward(aiohttp_server, aiohttp_client, tmp_path,
                                                                          value):
    async def hostile(request: web.Request) -> web.Response:
        text = value.format(port=request.url.port)
        return web.Response(status=302, text="moved", headers={
            "Location": text, "Content-Location": text, "Link": f"<{text}>; rel=next", "X-Next": text,
        })

    up = Recorder()
    up.route("GET", "/base/moved", hostile)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server),
                           expose_headers="[X-Next, Link, Location]")
    resp = await client.get("/api/svc/moved", allow_redirects=False)
    assert resp.status == 302
    shown = "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
    for name in ("Location", "Content-Location", "Link", "X-Next"):
        assert name not in resp.headers or resp.headers[name].startswith(("/api/svc/", "</api/svc/")), shown
    assert not mapper(f"http://127.0.0.1:{up.port}/base").names_upstream(shown), shown
    assert_clean(resp, await resp.read())


async def test_link_header_and_body_map_through_the_same_forward(aiohttp_server, aiohttp_client, tmp_path):
    async def paged(request: web.Request) -> web.Response:
        up = f"http://127.0.0.1:{request.url.port}/base"
        urls = [f"{up}/link?page=2", f"{up}/users/octo", f"{up}/meta/status", f"{up}/private/../x"]
        return web.json_response({"urls": urls}, headers={"Link": ", ".join(f'<{u}>; rel="r{i}"'
                                                                         for i, u in enumerate(urls))})

    up = Recorder()
    up.route("GET", "/base/{tail:.*}", paged)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), """
forwards:
  gh/[...path]: { upstream: svc, path: "/{path}", rewrite_urls: true }
  people/[name]: { upstream: svc, path: "/users/{name}" }
  status: { upstream: svc, path: /meta/status }
""")
    resp = await client.get("/api/gh/repos")
    body = await resp.json()
    gw = f"http://127.0.0.1:{client.port}"
    expected = ["/api/gh/link?page=2", "/api/people/octo", "/api/status"]
    assert body["urls"] == [gw + path for path in expected] + [""]
    assert resp.headers["Link"] == ", ".join(f'<{path}>; rel="r{i}"' for i, path in enumerate(expected))
    assert_clean(resp, str(body))
