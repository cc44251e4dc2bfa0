"""A route module as an endpoint: method dispatch, HEAD/OPTIONS/405, return values, body limits and error rendering."""

from __future__ import annotations

import logging

import pytest
from routes_support import assert_error, make_client, make_config, raw_request

from gateway.config import METHODS
from gateway.discovery import RouteFileError
from gateway.file_routes import RouteOptions, route_options, to_response
from gateway.units import Rate

ALL_METHODS = """
async def GET(req):
    return {"method": "GET"}

async def POST(req):
    return {"method": "POST"}

async def PUT(req):
    return {"method": "PUT"}

async def PATCH(req):
    return {"method": "PATCH"}

async def DELETE(req):
    return {"method": "DELETE"}
"""


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
async def test_each_method_reaches_its_function(aiohttp_client, tmp_path, method):
    client = await make_client(aiohttp_client, tmp_path, {"thing.py": ALL_METHODS})
    resp = await client.request(method, "/api/thing")
    assert (resp.status, await resp.json()) == (200, {"method": method})


@pytest.mark.parametrize("method", [m for m in METHODS if m != "HEAD"])
async def test_one_handler_answers_every_method(aiohttp_client, tmp_path, method):
    client = await make_client(aiohttp_client, tmp_path, {
        "any/[id].py": "async def handler(req):\n    return {'method': req.method, 'id': req.match_info['id']}\n",
    })
    resp = await client.request(method, "/api/any/7")
    assert (resp.status, await resp.json()) == (200, {"method": method, "id": "7"})


async def test_one_handler_also_answers_head_without_a_body(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, {"any.py": "async def handler(req):\n    return req.method\n"})
    status, headers, body = await raw_request(client, "/api/any", method="HEAD")
    assert (status, headers["content-length"], body) == (200, "4", b"")


async def test_head_is_answered_from_get_with_no_body(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, {
        "user.py": "async def GET(req):\n    return {'name': 'John Doe'}, 200, {'X-Seen-Method': req.method}\n",
    })
    get_status, get_headers, get_body = await raw_request(client, "/api/user")
    status, headers, body = await raw_request(client, "/api/user", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["content-type"] == get_headers["content-type"] == "application/json"
    assert headers["content-length"] == get_headers["content-length"] == str(len(get_body))
    assert get_status == 200 and get_body == b'{"name": "John Doe"}'
    assert (get_headers["x-seen-method"], headers["x-seen-method"]) == ("GET", "HEAD")


async def test_a_module_head_wins_over_get(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, {
        "x.py": """
            async def GET(req):
                return "get"

            async def HEAD(req):
                return None, 200, {"X-Head": "1"}
        """,
    })
    status, headers, _ = await raw_request(client, "/api/x", method="HEAD")
    assert (status, headers.get("x-head")) == (200, "1")


def _module(*methods: str) -> str:
    return "\n\n".join(f"async def {m}(req):\n    return '{m}'\n" for m in methods)


@pytest.mark.parametrize(
    ("methods", "allow"),
    [
        (["GET"], "GET, HEAD, OPTIONS"),
        (["POST"], "OPTIONS, POST"),
        (["PUT", "GET", "DELETE"], "DELETE, GET, HEAD, OPTIONS, PUT"),
        (["PATCH", "HEAD"], "HEAD, OPTIONS, PATCH"),
        (["POST", "PUT", "PATCH", "DELETE", "GET"], "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"),
    ],
)
async def test_options_answers_204_with_a_sorted_allow(aiohttp_client, tmp_path, methods, allow):
    client = await make_client(aiohttp_client, tmp_path, {"r.py": _module(*methods)})
    resp = await client.options("/api/r")
    assert (resp.status, resp.headers["Allow"], await resp.read()) == (204, allow, b"")


@pytest.mark.parametrize(
    ("methods", "allow", "refused"),
    [
        (["GET"], "GET, HEAD, OPTIONS", ["POST", "PUT", "PATCH", "DELETE", "PROPFIND", "TRACE"]),
        (["POST"], "OPTIONS, POST", ["GET", "HEAD", "DELETE"]),
        (["PUT", "GET", "DELETE"], "DELETE, GET, HEAD, OPTIONS, PUT", ["POST", "PATCH"]),
        (["handler"], "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT", ["PROPFIND", "TRACE"]),
    ],
)
async def test_other_methods_get_405_with_the_same_allow(aiohttp_client, tmp_path, methods, allow, refused):
    client = await make_client(aiohttp_client, tmp_path, {"r.py": _module(*methods)})
    for method in refused:
        status, headers, body = await raw_request(client, "/api/r", method=method)
        assert (status, headers["allow"]) == (405, allow), method
        if method != "HEAD":
            assert b'"error": "method_not_allowed"' in body


async def test_a_405_body_is_the_json_error_shape(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, {"r.py": _module("GET")})
    resp = await client.delete("/api/r")
    await assert_error(resp, 405, "method_not_allowed")
    assert resp.headers["Allow"] == "GET, HEAD, OPTIONS"


async def test_a_module_options_wins(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, {
        "r.py": _module("GET") + "\n\nasync def OPTIONS(req):\n    return 'mine', 200, {'Allow': 'GET'}\n",
    })
    resp = await client.options("/api/r")
    assert (resp.status, resp.headers["Allow"], await resp.text()) == (200, "GET", "mine")
    resp = await client.post("/api/r")
    assert (resp.status, resp.headers["Allow"]) == (405, "GET, HEAD, OPTIONS")


async def test_unknown_path_is_a_json_404(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, {"r.py": _module("GET")})
    for method in ("GET", "POST", "OPTIONS"):
        await assert_error(await client.request(method, "/api/nothing/here"), 404, "not_found")


# -- return value -> response ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("expr", "status", "content_type", "body"),
    [
        ("{'a': 1}", 200, "application/json", b'{"a": 1}'),
        ("[1, 'two', None]", 200, "application/json", b'[1, "two", null]'),
        ("[]", 200, "application/json", b"[]"),
        ("{}", 200, "application/json", b"{}"),
        ("'caf\u00e9'", 200, "text/plain", "caf\u00e9".encode()),
        ("''", 200, "text/plain", b""),
        ("b'\\x00\\xff'", 200, "application/octet-stream", b"\x00\xff"),
        ("bytearray(b'ab')", 200, "application/octet-stream", b"ab"),
        ("None", 204, None, b""),
        ("({'made': True}, 201)", 201, "application/json", b'{"made": true}'),
        ("('gone', 410)", 410, "text/plain", b"gone"),
        ("(None, 202)", 202, None, b""),
        ("([1], 200, {'X-Extra': 'yes'})", 200, "application/json", b"[1]"),
        ("web.Response(status=418, text='teapot', content_type='text/x-tea')", 418, "text/x-tea", b"teapot"),
        ("web.json_response({'j': 1}, status=207)", 207, "application/json", b'{"j": 1}'),
    ],
)
async def test_return_values_become_responses(aiohttp_client, tmp_path, expr, status, content_type, body):
    client = await make_client(aiohttp_client, tmp_path, {
        "r.py": f"from aiohttp import web\n\n\nasync def GET(req):\n    return {expr}\n",
    })
    resp = await client.get("/api/r")
    assert resp.status == status
    if content_type:
        assert resp.content_type == content_type
    assert await resp.read() == body


async def test_tuple_headers_are_added(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, {
        "r.py": "async def GET(req):\n    return 'x', 201, {'X-One': '1', 'Cache-Control': 'no-store'}\n",
    })
    resp = await client.get("/api/r")
    assert (resp.status, resp.headers["X-One"], resp.headers["Cache-Control"]) == (201, "1", "no-store")


async def test_a_prepared_stream_response_is_sent_as_is(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, {"s.py": """
        from aiohttp import web

        async def GET(req):
            resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
            await resp.prepare(req)
            for i in range(3):
                await resp.write(f"data: {i}\\n\\n".encode())
            await resp.write_eof()
            return resp
    """})
    resp = await client.get("/api/s")
    assert (resp.status, resp.content_type) == (200, "text/event-stream")
    assert await resp.text() == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert resp.headers["Server"] == "gateway"


@pytest.mark.parametrize(
    ("raise_", "status", "code", "message"),
    [
        ("web.HTTPNotFound()", 404, "not_found", "not found"),  # the route exists: not "no route matches"
        ("web.HTTPForbidden()", 403, "forbidden", "forbidden"),
        ("web.HTTPUnauthorized()", 401, "unauthorized", None),
        ("web.HTTPBadRequest()", 400, "bad_request", None),
        ("web.HTTPConflict()", 409, "bad_request", None),
        ("web.HTTPTooManyRequests(headers={'Retry-After': '3'})", 429, "rate_limited", None),
        ("web.HTTPServiceUnavailable()", 503, "unavailable", None),
        ("Forbidden('members only')", 403, "forbidden", "members only"),
        ("BadRequest('field x is required')", 400, "bad_request", "field x is required"),
    ],
)
async def test_raised_http_errors_give_their_status_as_json(aiohttp_client, tmp_path, raise_, status, code, message):
    client = await make_client(aiohttp_client, tmp_path, {
        "r.py": f"from aiohttp import web\n\nfrom gateway.errors import BadRequest, Forbidden\n\n\n"
                f"async def GET(req):\n    raise {raise_}\n",
    })
    resp = await client.get("/api/r")
    body = await assert_error(resp, status, code)
    if status == 429:
        assert resp.headers["Retry-After"] == "3"
    if message:
        assert body["message"] == message


async def test_a_raised_http_error_with_its_own_body_keeps_it(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, {
        "r.py": "from aiohttp import web\n\n\nasync def GET(req):\n"
                "    raise web.HTTPForbidden(text='{\"why\": \"no\"}', content_type='application/json')\n",
    })
    resp = await client.get("/api/r")
    assert (resp.status, await resp.json()) == (403, {"why": "no"})


async def test_a_raised_redirect_is_passed_on(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, {
        "r.py": "from aiohttp import web\n\n\nasync def GET(req):\n    raise web.HTTPFound('/api/elsewhere')\n",
    })
    resp = await client.get("/api/r", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (302, "/api/elsewhere")


@pytest.mark.parametrize(
    "expr",
    ["object()", "42", "3.5", "True", "{1, 2}", "('a', '200')", "('a',)", "('a', 200, {}, 'extra')", "('a', None)",
     "('ok', 200, {'X-Bad': 'a\\r\\nX-Evil: 1'})"],
)
async def test_unsupported_return_values_are_a_500(aiohttp_client, tmp_path, caplog, expr):
    client = await make_client(aiohttp_client, tmp_path, {"r.py": f"async def GET(req):\n    return {expr}\n"})
    with caplog.at_level(logging.ERROR):
        resp = await client.get("/api/r")
    await assert_error(resp, 500, "internal_error")
    assert "X-Evil" not in resp.headers
    assert any("Traceback (most recent call last)" in r.getMessage() for r in caplog.records)


def test_to_response_passes_a_stream_response_through():
    from aiohttp import web

    stream = web.StreamResponse(status=299)
    assert to_response(stream) is stream


# -- request bodies ----------------------------------------------------------------------------------------------

JSON_ECHO = "async def POST(req):\n    return {'got': await req.json()}\n"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"{not json", {"Content-Type": "application/json"}),
        (b"", {"Content-Type": "application/json"}),
        (b"[1, 2", {}),
        (b"\xff\xfe{}", {"Content-Type": "application/json"}),
        (b"{}", {"Content-Type": "application/json; charset=no-such-charset"}),
    ],
)
async def test_invalid_json_body_read_with_req_json_is_a_400(aiohttp_client, tmp_path, body, headers):
    client = await make_client(aiohttp_client, tmp_path, {"echo.py": JSON_ECHO})
    await assert_error(await client.post("/api/echo", data=body, headers=headers), 400, "bad_request")


async def test_invalid_json_body_read_from_a_helper_is_still_a_400(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, {
        "_lib/body.py": "async def read(req):\n    return await req.json()\n",
        "echo.py": "from _lib.body import read\n\n\nasync def POST(req):\n    return await read(req)\n",
    })
    await assert_error(await client.post("/api/echo", data=b"{"), 400, "bad_request")


async def test_valid_json_body_is_read(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, {"echo.py": JSON_ECHO})
    resp = await client.post("/api/echo", json={"message": "hi"})
    assert (resp.status, await resp.json()) == (200, {"got": {"message": "hi"}})


@pytest.mark.parametrize(
    "code",
    [
        "json.loads('{broken')",  # the handler's own parsing of its own data is a bug, not a bad request
        "json.loads((await req.read()).decode())",
        "b'\\xff'.decode()",
        "int('x')",
    ],
)
async def test_a_handlers_own_value_errors_are_a_500(aiohttp_client, tmp_path, caplog, code):
    route = f"import json\n\n\nasync def POST(req):\n    {code}\n"
    client = await make_client(aiohttp_client, tmp_path, {"r.py": route})
    with caplog.at_level(logging.ERROR):
        resp = await client.post("/api/r", data=b"{bad")
    await assert_error(resp, 500, "internal_error")


LIMITS = {"16b": 16, "10b": 10, "1kb": 1024}


def _limits_yaml(server_limit: str) -> str:
    return f"server: {{max_body: {server_limit}}}\n"


READ_LEN = "async def POST(req):\n    return {'len': len(await req.read())}\n"
NO_READ = "async def POST(req):\n    return 'not read'\n"


def _json_string(size: int) -> bytes:
    """A valid JSON document of exactly ``size`` bytes: ``"xxxx"``."""
    return b'"' + b"x" * (size - 2) + b'"'


async def _chunked(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("module", [READ_LEN, NO_READ, JSON_ECHO])
@pytest.mark.parametrize(
    ("yaml", "route_limit", "size", "status"),
    [
        (_limits_yaml("16b"), None, 16, 200),
        (_limits_yaml("16b"), None, 17, 413),
        (_limits_yaml("1kb"), "10b", 10, 200),
        (_limits_yaml("1kb"), "10b", 11, 413),
        (_limits_yaml("10b"), "1kb", 500, 200),  # a route may raise its own limit above the server's
        (_limits_yaml("10b"), "1kb", 1025, 413),
    ],
)
async def test_body_over_max_body_with_content_length_is_a_413(
    aiohttp_client, tmp_path, module, yaml, route_limit, size, status
):
    config_line = f"config = {{'max_body': '{route_limit}'}}\n\n\n" if route_limit else ""
    client = await make_client(aiohttp_client, tmp_path, {"up.py": config_line + module}, yaml)
    resp = await client.post("/api/up", data=_json_string(size))
    if status == 413:
        body = await assert_error(resp, 413, "payload_too_large")
        limit = route_limit or yaml.split("max_body: ")[1].split("}")[0]
        assert f" {LIMITS[limit]} bytes" in body["message"]
    else:
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("module", [READ_LEN, JSON_ECHO])
@pytest.mark.parametrize(
    ("yaml", "route_limit", "size", "status"),
    [
        (_limits_yaml("16b"), None, 16, 200),
        (_limits_yaml("16b"), None, 40, 413),
        (_limits_yaml("1kb"), "10b", 10, 200),
        (_limits_yaml("1kb"), "10b", 40, 413),
        (_limits_yaml("10b"), "1kb", 500, 200),
        (_limits_yaml("10b"), "1kb", 2000, 413),
    ],
)
async def test_chunked_body_over_max_body_is_a_413(aiohttp_client, tmp_path, module, yaml, route_limit, size, status):
    config_line = f"config = {{'max_body': '{route_limit}'}}\n\n\n" if route_limit else ""
    client = await make_client(aiohttp_client, tmp_path, {"up.py": config_line + module}, yaml)
    resp = await client.post("/api/up", data=_chunked(_json_string(size), 7))
    assert resp.headers.get("Content-Length") != str(size)
    if status == 413:
        body = await assert_error(resp, 413, "payload_too_large")
        limit = route_limit or yaml.split("max_body: ")[1].split("}")[0]
        assert f" {LIMITS[limit]} bytes" in body["message"]
    else:
        assert resp.status == 200, await resp.text()


async def test_a_route_limit_applies_only_to_its_route(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, {
        "small.py": "config = {'max_body': '10b'}\n\n\n" + READ_LEN,
        "large.py": READ_LEN,
    })
    await assert_error(await client.post("/api/small", data=b"x" * 11), 413, "payload_too_large")
    resp = await client.post("/api/large", data=b"x" * 11)
    assert (resp.status, await resp.json()) == (200, {"len": 11})


# -- 500s ------------------------------------------------------------------------------------------------------

BOOM = """
def explode(token):
    raise RuntimeError(f"db password is {token}")

async def GET(req):
    explode("hunter2-secret")
"""


async def test_an_exception_is_a_500_with_no_details_in_the_body(aiohttp_client, tmp_path, caplog):
    client = await make_client(aiohttp_client, tmp_path, {"boom.py": BOOM})
    with caplog.at_level(logging.ERROR):
        resp = await client.get("/api/boom")
    body = await assert_error(resp, 500, "internal_error")
    text = await resp.text()
    for leak in ("hunter2", "RuntimeError", "Traceback", "explode", "boom.py", "password"):
        assert leak not in text
    assert body["message"] == "internal error"
    logged = "\n".join(caplog.text.splitlines())
    assert "Traceback" in logged and "RuntimeError: db password is hunter2-secret" in logged and "explode" in logged
    assert "/api/boom" in logged


async def test_under_debug_the_traceback_is_in_the_body(aiohttp_client, tmp_path, caplog):
    client = await make_client(aiohttp_client, tmp_path, {"boom.py": BOOM}, debug=True)
    with caplog.at_level(logging.ERROR):
        resp = await client.get("/api/boom")
    body = await assert_error(resp, 500, "internal_error")
    assert "Traceback" in body["message"] and "RuntimeError: db password is hunter2-secret" in body["message"]
    assert "explode" in body["message"]


# -- module config = {...} -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("config", "options"),
    [
        (None, RouteOptions()),
        ({}, RouteOptions()),
        ({"max_body": "10b"}, RouteOptions(max_body=10)),
        ({"max_body": 2048}, RouteOptions(max_body=2048)),
        ({"max_body": "2mb"}, RouteOptions(max_body=2 * 1024**2)),
        ({"rate_limit": "30/minute"}, RouteOptions(rate_limit=Rate(30, 60.0))),
        ({"cache": "5m"}, RouteOptions(cache=300.0)),
        ({"cache": 10}, RouteOptions(cache=10.0)),
        ({"public": True}, RouteOptions(public=True)),
        ({"public": False, "max_body": "1kb"}, RouteOptions(max_body=1024)),
    ],
)
def test_route_options_parse_a_modules_config(config, options):
    module = type("Module", (), {"config": config})
    assert route_options(module, "routes/r.py") == options


@pytest.mark.parametrize(
    "config",
    [{"max_bdy": "1kb"}, {"max_body": "big"}, {"max_body": -1}, {"rate_limit": 5}, {"cache": "later"},
     {"public": 1}, {"public": "true"}, ["max_body"], "max_body=1kb"],
)
def test_bad_route_options_name_the_file(config):
    module = type("Module", (), {"config": config})
    with pytest.raises(RouteFileError) as info:
        route_options(module, "routes/r.py")
    assert str(info.value).startswith("routes/r.py: config")


async def test_a_route_config_is_read_from_the_module(aiohttp_client, tmp_path):
    config = make_config(tmp_path, {"r.py": "config = {'public': True, 'cache': '1m'}\n\n\n" + NO_READ})
    from gateway.app import build_table

    [endpoint] = build_table(config).endpoints
    assert endpoint.options == RouteOptions(cache=60.0, public=True)
    assert (endpoint.kind, endpoint.methods) == ("file", ("OPTIONS", "POST"))
