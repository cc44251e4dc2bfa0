"""The CORS step called directly, with a stub call_next that records what reached it; origin matching; the merge."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.config import CorsConfig
from gateway.edge.answer import answer_headers, apply_answer_headers, merge_vary
from gateway.edge.cors import EXPOSED, MAX_REQUESTED_HEADERS, cors
from gateway.errors import Forbidden, Unauthorized
from gateway.keys import ANSWER_HEADERS
from gateway.origins import OriginPolicy

APP = "https://app.example.com"
ROUTE_METHODS = ("GET", "HEAD", "OPTIONS", "POST")
FORWARD_HEADERS = frozenset({"accept", "content-type", "x-request-id", "x-trace"})
PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


class Next:
    """A stub call_next: records each request it got and answers 200 (or raises ``error``)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.got: list[web.Request] = []
        self.error = error

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.got.append(request)
        if self.error is not None:
            raise self.error
        return web.Response(text="route")


def request(method: str = "GET", **headers: str) -> web.Request:
    return make_mocked_request(method, "/api/x", headers=CIMultiDict({k.replace("_", "-"): v
                                                                      for k, v in headers.items()}))


def preflight(origin: str = APP, method: str = "POST", requested: str | None = None) -> web.Request:
    headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if requested is not None:
        headers["Access-Control-Request-Headers"] = requested
    return make_mocked_request("OPTIONS", "/api/x", headers=CIMultiDict(headers))


def step_for(origins: tuple[str, ...] = (APP,), *, credentials: bool = False, max_age: float = 600.0,
             allow_headers: frozenset[str] | None = FORWARD_HEADERS, expose: tuple[str, ...] = ("X-Trace",)):
    step = cors(CorsConfig(origins, credentials, max_age), methods=ROUTE_METHODS, allow_headers=allow_headers,
                expose_headers=expose)
    assert step is not None
    return step


async def answered(req: web.Request, response: web.StreamResponse) -> CIMultiDict[str]:
    """The response's headers once the app's on_response_prepare merge has run."""
    await apply_answer_headers(req, response)
    return CIMultiDict(response.headers)


def test_no_clients_cors_no_step() -> None:
    assert cors(None, methods=ROUTE_METHODS, allow_headers=None, expose_headers=()) is None


# -- preflights -------------------------------------------------------------------------------------------------


async def test_a_preflight_from_an_allowed_origin_is_answered_here() -> None:
    nxt, req = Next(), preflight(requested="Content-Type,X-Trace")
    response = await step_for(max_age=90)(req, nxt)
    assert nxt.got == []  # answered by the step: no client key needed, never counted by a limit, never upstream
    assert response.status == 204
    headers = await answered(req, response)
    assert headers["Access-Control-Allow-Origin"] == APP
    assert headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS, POST"
    assert headers["Access-Control-Allow-Headers"] == "content-type, x-trace"
    assert headers["Access-Control-Max-Age"] == "90"
    assert headers["Vary"] == PREFLIGHT_VARY
    assert "Access-Control-Allow-Credentials" not in headers
    assert "Access-Control-Expose-Headers" not in headers


async def test_a_preflight_with_credentials_says_so() -> None:
    req = preflight()
    headers = await answered(req, await step_for(credentials=True)(req, Next()))
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Allow-Origin"] == APP
    assert "Access-Control-Allow-Headers" not in headers  # nothing was requested


async def test_any_origin_is_echoed_never_a_literal_star() -> None:
    req = preflight(origin="http://localhost:5173")
    headers = await answered(req, await step_for(("*",))(req, Next()))
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert "Origin" in headers["Vary"]


REFUSED_PREFLIGHTS = {  # built per test: a mocked request wants the test's event loop
    "another origin": lambda: preflight(origin="https://evil.example.com"),
    "null": lambda: preflight(origin="null"),
    "suffix trick": lambda: preflight(origin="https://app.example.com.evil.com"),
    "upper case": lambda: preflight(origin="https://APP.example.com"),
    "trailing dot": lambda: preflight(origin="https://app.example.com."),
    "with a path": lambda: preflight(origin="https://app.example.com/"),
    "userinfo": lambda: preflight(origin="https://user@app.example.com"),
    "plain http": lambda: preflight(origin="http://app.example.com"),
    "a method the route does not answer": lambda: preflight(method="PUT"),
    "method names are case-sensitive": lambda: preflight(method="post"),
    "a header the route does not take": lambda: preflight(requested="content-type, x-secret"),
    "cookie": lambda: preflight(requested="cookie"),
    "CRLF in the list": lambda: preflight(requested="x-trace\r\nx-evil"),
    "not a token": lambda: preflight(requested="bad header"),
    "too many names": lambda: preflight(requested=",".join(["x-trace"] * (MAX_REQUESTED_HEADERS + 1))),
    "two Origin headers": lambda: make_mocked_request("OPTIONS", "/api/x", headers=CIMultiDict(
        [("Origin", APP), ("Origin", "https://evil.example.com"), ("Access-Control-Request-Method", "GET")])),
}


@pytest.mark.parametrize("case", REFUSED_PREFLIGHTS)
async def test_a_refused_preflight_gets_no_allow_headers(case: str) -> None:
    nxt, req = Next(), REFUSED_PREFLIGHTS[case]()
    with pytest.raises(Forbidden) as info:
        await step_for()(req, nxt)
    assert nxt.got == []
    assert req[ANSWER_HEADERS] == CIMultiDict({"Vary": PREFLIGHT_VARY})  # the error carries Vary, and no Allow-*
    assert "\n" not in info.value.message and "evil" not in info.value.message


async def test_a_huge_list_of_requested_headers_is_refused() -> None:
    req = preflight(requested=", ".join(f"x-h{i}" for i in range(20_000)))
    with pytest.raises(Forbidden, match="more than 64 request headers"):
        await step_for(allow_headers=None)(req, Next())


async def test_a_route_that_takes_any_header_echoes_what_was_asked() -> None:
    req = preflight(requested="X-Custom, authorization,, x-custom")
    headers = await answered(req, await step_for(allow_headers=None)(req, Next()))
    assert headers["Access-Control-Allow-Headers"] == "x-custom, authorization"


async def test_an_options_that_is_no_preflight_is_the_routes() -> None:
    nxt = Next()
    for req in (request("OPTIONS", Origin=APP), request("OPTIONS", Access_Control_Request_Method="GET"),
                request("OPTIONS")):
        response = await step_for()(req, nxt)
        assert isinstance(response, web.Response) and response.text == "route"
    assert len(nxt.got) == 3
    assert nxt.got[0][ANSWER_HEADERS]["Access-Control-Allow-Origin"] == APP
    assert nxt.got[1][ANSWER_HEADERS] == CIMultiDict({"Vary": PREFLIGHT_VARY})


# -- every other answer -----------------------------------------------------------------------------------------


async def test_an_answer_to_an_allowed_origin_can_be_read() -> None:
    nxt, req = Next(), request(Origin=APP)
    response = await step_for(expose=("X-Trace", "x-cache"))(req, nxt)
    assert nxt.got == [req]
    headers = await answered(req, response)
    assert headers["Access-Control-Allow-Origin"] == APP
    exposed = [name.strip() for name in headers["Access-Control-Expose-Headers"].split(",")]
    assert exposed == ["X-Trace", "X-Cache", "RateLimit", "RateLimit-Policy", "Retry-After", "X-Request-Id"]
    assert {n.lower() for n in EXPOSED} <= {n.lower() for n in exposed}
    assert headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Methods" not in headers and "Access-Control-Allow-Credentials" not in headers


async def test_credentials_on_every_answer() -> None:
    req = request("POST", Origin=APP)
    headers = await answered(req, await step_for(credentials=True)(req, Next()))
    assert headers["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.parametrize("origin", ["https://evil.example.com", "null", "https://app.example.com:443", ""])
async def test_an_answer_to_another_origin_only_varies(origin: str) -> None:
    nxt, req = Next(), request(Origin=origin)
    headers = await answered(req, await step_for()(req, nxt))
    assert nxt.got == [req]  # served as without CORS: the browser is what keeps the page from reading it
    assert not [name for name in headers if name.lower().startswith("access-control-")]
    assert headers["Vary"] == "Origin"


async def test_no_origin_still_varies_on_it() -> None:
    """A shared cache must not hand the answer to a no-Origin request to a browser (or the other way round)."""
    req = request()
    headers = await answered(req, await step_for()(req, Next()))
    assert headers["Vary"] == "Origin" and "Access-Control-Allow-Origin" not in headers


async def test_an_error_raised_below_keeps_the_headers_for_its_rendering() -> None:
    req = request(Origin=APP)
    with pytest.raises(Unauthorized):
        await step_for()(req, Next(Unauthorized()))
    rendered = web.json_response({"error": "unauthorized"}, status=401)  # what render_errors builds outside
    headers = await answered(req, rendered)
    assert headers["Access-Control-Allow-Origin"] == APP
    assert "X-Request-Id" in headers["Access-Control-Expose-Headers"]


# -- origin matching ----------------------------------------------------------------------------------------------

MATCHES = [
    ((APP,), APP, True),
    ((APP,), "https://app.example.com.evil.com", False),
    ((APP,), "https://evilapp.example.com", False),
    ((APP,), "https://APP.EXAMPLE.COM", False),  # browsers send the host in lower case: nobody else is trusted
    ((APP,), "https://app.example.com.", False),
    ((APP,), "https://app.example.com/", False),
    ((APP,), "https://app.example.com:443", False),
    ((APP,), "http://app.example.com", False),
    ((APP,), "https://user@app.example.com", False),
    ((APP,), "https://app.example.com\r\nX-Evil: 1", False),
    ((APP,), "null", False),
    ((APP,), "", False),
    (("https://*.example.com",), "https://a.example.com", True),
    (("https://*.example.com",), "https://xn--bcher-kva.example.com", True),
    (("https://*.example.com",), "https://a.b.example.com", False),  # one label only
    (("https://*.example.com",), "https://example.com", False),  # the apex is not under the wildcard
    (("https://*.example.com",), "https://evilexample.com", False),
    (("https://*.example.com",), "https://a.evilexample.com", False),
    (("https://*.example.com",), "https://a.example.com.evil.com", False),
    (("https://*.example.com",), "https://a.example.com.", False),
    (("https://*.example.com",), "https://A.example.com", False),
    (("https://*.example.com",), "https://-a.example.com", False),
    (("https://*.example.com",), "https://.example.com", False),
    (("https://*.example.com",), "https://a..example.com", False),
    (("https://*.example.com",), "https://*.example.com", False),
    (("https://*.example.com",), "http://a.example.com", False),
    (("https://*.example.com",), "https://a.example.com:8443", False),
    (("https://*.example.com",), "https://a.example.com\n", False),
    (("https://*.example.com:8443",), "https://a.example.com:8443", True),
    (("https://*.example.com:8443",), "https://a.example.com", False),
    (("*",), "https://anything.example", True),
    (("*",), "http://plain.example:8080", True),
    (("*",), "http://[::1]:3000", True),
    (("*",), "null", False),
    (("*",), "https://a.example/path", False),
    (("*",), "https://A.example", False),
    (("*",), "https://a.example\r\nX-Evil: 1", False),
    (("*",), "https://a example", False),
    (("*",), "", False),
    (("*",), "https://" + "a" * 400, False),
]


@pytest.mark.parametrize(("origins", "origin", "allowed"), MATCHES, ids=[f"{o[0]} {m!r}" for o, m, _ in MATCHES])
def test_origin_matching(origins: tuple[str, ...], origin: str, allowed: bool) -> None:
    assert OriginPolicy(origins).allows(origin) is allowed


# -- the merge into every response ------------------------------------------------------------------------------


async def test_answer_headers_replace_the_responses_own_and_vary_adds_up() -> None:
    req = request()
    answer_headers(req).update({"Access-Control-Allow-Origin": APP, "Vary": "Origin"})
    answer_headers(req).add("Vary", "X-Cache")
    response = web.Response(headers=CIMultiDict([
        ("access-control-allow-origin", "*"), ("Vary", "Accept-Encoding"), ("Vary", "origin"), ("X-Own", "kept"),
    ]))
    headers = await answered(req, response)
    assert headers.getall("Access-Control-Allow-Origin") == [APP]
    assert headers.getall("Vary") == ["Accept-Encoding, origin, X-Cache"]
    assert headers["X-Own"] == "kept"


async def test_no_answer_headers_no_change() -> None:
    req = request()
    response = web.Response(headers={"Vary": "Accept"})
    before = CIMultiDict(response.headers)
    assert await answered(req, response) == before == CIMultiDict({"Vary": "Accept"})


@pytest.mark.parametrize(("own", "added", "merged"), [
    ((), ("Origin",), "Origin"),
    (("Accept-Encoding",), ("Origin",), "Accept-Encoding, Origin"),
    (("Accept-Encoding, ORIGIN",), ("Origin",), "Accept-Encoding, ORIGIN"),
    (("*",), ("Origin",), "*"),
    (("",), ("Origin, Access-Control-Request-Method",), "Origin, Access-Control-Request-Method"),
])
def test_merge_vary(own: tuple[str, ...], added: tuple[str, ...], merged: str) -> None:
    assert merge_vary(own, added) == merged
