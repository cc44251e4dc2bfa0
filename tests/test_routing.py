"""The route table (segment trie, precedence, conflicts) and the resource that mounts it: prefix, 308, hostile paths."""

from __future__ import annotations

import json

import pytest
from routes_support import GET_PATH, assert_error, make_client, raw_request

from gateway import routing
from gateway.paths import parse_forward_path, pattern_of
from gateway.routing import RouteConflict, RouteTable


class FakeEndpoint:
    """What RouteTable needs of an endpoint, declared by its route text (``"post/[pid]"``)."""

    kind = "file"
    methods = ("GET",)

    def __init__(self, route: str, source: str | None = None) -> None:
        self.route = route
        self.segments = parse_forward_path(route)
        self.pattern = pattern_of("/api", self.segments)
        self.target = self.source = source or f"routes/{route or 'index'}.py"

    async def handle(self, request):  # pragma: no cover - never called by the table
        raise AssertionError("the table only matches")


def table_of(*routes: str) -> RouteTable:
    table = RouteTable("/api")
    for route in routes:
        table.add(FakeEndpoint(route))
    return table


def split(path: str) -> list[str]:
    return path.split("/") if path else []


@pytest.mark.parametrize(
    ("routes", "path", "route", "params"),
    [
        # each kind, alone
        (["user"], "user", "user", {}),
        ([""], "", "", {}),
        (["post/[pid]"], "post/abc", "post/[pid]", {"pid": "abc"}),
        (["files/[...p]"], "files/a", "files/[...p]", {"p": "a"}),
        (["files/[...p]"], "files/a/b/c", "files/[...p]", {"p": "a/b/c"}),
        (["docs/[[...p]]"], "docs", "docs/[[...p]]", {"p": ""}),
        (["docs/[[...p]]"], "docs/a/b", "docs/[[...p]]", {"p": "a/b"}),
        (["[[...p]]"], "", "[[...p]]", {"p": ""}),
        # static > [param] > [...catch] > [[...optional]], at one level
        (["a/b", "a/[x]", "a/[...c]", "a/[[...o]]"], "a/b", "a/b", {}),
        (["a/b", "a/[x]", "a/[...c]", "a/[[...o]]"], "a/z", "a/[x]", {"x": "z"}),
        (["a/b", "a/[x]", "a/[...c]", "a/[[...o]]"], "a/b/c", "a/[...c]", {"c": "b/c"}),
        (["a/b", "a/[x]", "a/[...c]", "a/[[...o]]"], "a", "a/[[...o]]", {"o": ""}),
        (["[x]", "[...c]"], "q", "[x]", {"x": "q"}),
        (["[x]", "[...c]"], "q/r", "[...c]", {"c": "q/r"}),
        (["[...c]", "[[...o]]"], "q", "[...c]", {"c": "q"}),
        (["[...c]", "[[...o]]"], "", "[[...o]]", {"o": ""}),
        (["[x]", "[[...o]]"], "q/r", "[[...o]]", {"o": "q/r"}),
        # segment by segment, with backtracking
        (["a/[x]/c", "a/b/[y]"], "a/b/c", "a/b/[y]", {"y": "c"}),
        (["a/[x]/c", "a/b/[y]"], "a/b/d", "a/b/[y]", {"y": "d"}),
        (["a/[x]/c", "a/b/[y]"], "a/z/c", "a/[x]/c", {"x": "z"}),
        (["a/[x]/c", "a/b/d"], "a/b/c", "a/[x]/c", {"x": "b"}),
        (["a/[x]/c", "a/b/d"], "a/b/d", "a/b/d", {}),
        (["a/b/c", "[...all]"], "a/b/x", "[...all]", {"all": "a/b/x"}),
        (["a/b/c", "[...all]"], "a/b", "[...all]", {"all": "a/b"}),
        (["a/b/c", "[...all]"], "a/b/c", "a/b/c", {}),
        (["a/[x]/[y]/z", "a/[...rest]"], "a/1/2/z", "a/[x]/[y]/z", {"x": "1", "y": "2"}),
        (["a/[x]/[y]/z", "a/[...rest]"], "a/1/2/w", "a/[...rest]", {"rest": "1/2/w"}),
        (["a/[x]/b", "a/[[...o]]"], "a/y", "a/[[...o]]", {"o": "y"}),
        (["docs/[[...p]]", "[...all]"], "docs", "docs/[[...p]]", {"p": ""}),
        (["docs/[[...p]]", "[...all]"], "other/x", "[...all]", {"all": "other/x"}),
        # parameter names come from the endpoint that matched, even when two share a trie node
        (["[x]/b", "[y]/c"], "q/b", "[x]/b", {"x": "q"}),
        (["[x]/b", "[y]/c"], "q/c", "[y]/c", {"y": "q"}),
        # no match
        (["a/b"], "a", None, None),
        (["a/b"], "a/b/c", None, None),
        (["a/b"], "", None, None),
        (["files/[...p]"], "files", None, None),
        (["a/[x]/c", "a/b/d"], "a/z/d", None, None),
        (["User"], "user", None, None),
    ],
)
def test_match(routes, path, route, params):
    match = table_of(*routes).match(split(path))
    if route is None:
        assert match is None
    else:
        assert match is not None
        assert (match.endpoint.route, match.params) == (route, params)


@pytest.mark.parametrize(
    ("route", "path", "raw"),
    [
        ("files/[...p]", "files/a/b", {"p": ["a", "b"]}),
        ("docs/[[...p]]", "docs", {"p": []}),
        ("docs/[[...p]]", "docs/x", {"p": ["x"]}),
        ("post/[pid]", "post/x", {}),
    ],
)
def test_match_keeps_catch_all_segments_as_a_list(route, path, raw):
    assert table_of(route).match(split(path)).raw == raw


def test_a_catch_all_segment_may_itself_contain_a_decoded_slash():
    match = table_of("files/[...p]").match(["files", "a/b", "c"])
    assert match.raw == {"p": ["a/b", "c"]} and match.params == {"p": "a/b/c"}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("users", "users"),
        ("post/[id]", "post/[pid]"),
        ("docs", "docs/[[...p]]"),
        ("docs/[[...p]]", "docs"),
        ("", "[[...p]]"),
        ("[[...p]]", ""),
        ("f/[...a]", "f/[...b]"),
        ("f/[[...a]]", "f/[[...b]]"),
        ("a/[x]/c", "a/[y]/c"),
    ],
)
def test_two_endpoints_for_the_same_paths_conflict(first, second):
    table = table_of(first)
    with pytest.raises(RouteConflict) as info:
        table.add(FakeEndpoint(second, source="config.yaml forwards.x"))
    assert "config.yaml forwards.x" in str(info.value)
    assert f"routes/{first or 'index'}.py" in str(info.value)
    assert len(table.endpoints) == 1


def test_a_conflicting_endpoint_is_not_half_added():
    table = table_of("post/[id]")
    with pytest.raises(RouteConflict):
        table.add(FakeEndpoint("post/[pid]"))
    assert table.match(["post", "7"]).params == {"id": "7"}


class _NoScan(list):
    def __iter__(self):
        raise AssertionError("match must not scan the list of endpoints")


def test_matching_walks_the_trie_one_node_per_segment(monkeypatch):
    """Structural, not timed: with 1,000 sibling routes, a match visits one trie node per path segment."""
    table = RouteTable("/api")
    for i in range(1000):
        table.add(FakeEndpoint(f"r{i}/x"))
    table.add(FakeEndpoint("r500/[id]/y"))
    assert len(table._root.static) == 1000
    visits: list[int] = []
    walk = routing._walk

    def counting(node, segs, i, values):
        visits.append(i)
        return walk(node, segs, i, values)

    monkeypatch.setattr(routing, "_walk", counting)
    table.endpoints = _NoScan(table.endpoints)
    assert table.match(["r999", "x"]).endpoint.route == "r999/x"
    assert visits == [0, 1, 2]
    visits.clear()
    assert table.match(["r500", "7", "y"]).params == {"id": "7"}
    assert visits == [0, 1, 2, 3]
    visits.clear()
    assert table.match(["nope", "x"]) is None
    assert visits == [0]


# -- through aiohttp -------------------------------------------------------------------------------------------

TREE = {
    "users/index.py": GET_PATH,
    "post/[pid].py": GET_PATH,
    "echo/[v].py": "async def GET(req):\n    return 'ok', 200, {'X-Echo': req.match_info['v']}\n",
    "index.py": GET_PATH,
}


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/api/users/", "/api/users"),
        ("/api/users/?a=1&b=%20x", "/api/users?a=1&b=%20x"),
        ("/api/users//", "/api/users"),
        ("/api/", "/api"),
        ("/api/post/x%20y/", "/api/post/x%20y"),
        ("/api/no/such/route/", "/api/no/such/route"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
async def test_trailing_slash_redirects_308_to_the_path_without_it(aiohttp_client, tmp_path, target, location, method):
    client = await make_client(aiohttp_client, tmp_path, TREE)
    status, headers, _ = await raw_request(client, target, method=method)
    assert (status, headers["location"]) == (308, location)


async def test_trailing_slash_redirect_under_the_root_prefix(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, TREE, "server: {prefix: /}\n")
    status, headers, _ = await raw_request(client, "/users/?q=1")
    assert (status, headers["location"]) == (308, "/users?q=1")
    assert (await raw_request(client, "/"))[0] == 200  # the root itself is not a trailing slash


HOSTILE = [
    "//evil.com/", "//evil.com", "///evil.com/", "/\\evil.com/", "/%5Cevil.com/", "/%2F%2Fevil.com/", "/%2f/evil.com/",
    "/api//evil.com/", "/api//evil.com", "/api/\\evil.com/", "/api/%5Cevil.com/", "/api/%5cevil.com",
    "/api/%2F%2Fevil.com/", "/api/post/%2F%2Fevil.com/", "/api/..", "/api/../", "/api/%2e%2e", "/api/%2E%2E/",
    "/api/.%2e/users", "/api/users/../post", "/api/post/..", "/api/post/%2e%2e", "/api/post/%2e%2e/",
    "/api/post/..%2Fetc%2Fpasswd", "/api/post/%2e%2e%2f", "/api/post/x%2F..%2Fy", "/api/./users", "/api/%2e/users",
    "/api/post/.", "/api/post/a%5Cb", "/api/post/a%00b", "/api/post/%00", "/api/users//x", "/api/post/%2F",
]


@pytest.mark.parametrize("prefix", ["/api", "/"])
@pytest.mark.parametrize("target", HOSTILE)
async def test_hostile_paths_never_reach_a_handler_or_redirect_off_site(aiohttp_client, tmp_path, prefix, target):
    reached = "async def GET(req):\n    return {'reached': dict(req.match_info)}\n"
    routes = {**TREE, "[...all].py": reached, "post/[pid].py": reached}
    client = await make_client(aiohttp_client, tmp_path, routes, f"server: {{prefix: '{prefix}'}}\n")
    if prefix == "/":
        target = target.removeprefix("/api") or "/"
    status, headers, body = await raw_request(client, target)
    location = headers.get("location", "")
    assert not location.startswith(("//", "/\\", "\\")) and "evil.com" not in location.split("/")[:3]
    if status == 308:  # a redirect is only acceptable to a clean path on this host
        assert location.startswith("/") and "//" not in location and ".." not in location
        return
    assert status in (400, 404), body
    assert b"reached" not in body


@pytest.mark.parametrize("target", ["/api/echo/a%0d%0aX-Evil:%201", "/api/echo/a%0aX-Evil:%201", "/api/echo/a%0d"])
async def test_crlf_in_a_param_does_not_inject_a_header(aiohttp_client, tmp_path, target):
    client = await make_client(aiohttp_client, tmp_path, TREE)
    status, headers, _ = await raw_request(client, target)
    assert "x-evil" not in headers
    assert "\r" not in headers.get("x-echo", "") and "\n" not in headers.get("x-echo", "")
    assert status in (400, 500)


async def test_crlf_in_a_redirected_path_stays_encoded(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, TREE)
    status, headers, _ = await raw_request(client, "/api/users%0d%0aSet-Cookie:%20a=b/")
    assert status == 308
    assert "set-cookie" not in headers
    assert headers["location"] == "/api/users%0d%0aSet-Cookie:%20a=b"


@pytest.mark.parametrize(
    ("target", "pid"),
    [
        ("/api/post/%E2%9C%93", "\u2713"),
        ("/api/post/a+b", "a+b"),
        ("/api/post/a%20b", "a b"),
        ("/api/post/a%2Fb", "a/b"),
        ("/api/post/%252e%252e", "%2e%2e"),  # decoded once: the handler sees the literal text
        ("/api/post/x?pid=y", "x"),
        ("/api/post/...", "..."),
    ],
)
async def test_params_are_percent_decoded_once(aiohttp_client, tmp_path, target, pid):
    client = await make_client(aiohttp_client, tmp_path, TREE)
    status, _, body = await raw_request(client, target)
    assert status == 200, body
    assert json.loads(body)["params"] == {"pid": pid}


@pytest.mark.parametrize("target", ["/apiary", "/api.json", "/API/users", "/ap", "/users", "/api-users"])
async def test_only_paths_under_the_prefix_are_routed(aiohttp_client, tmp_path, target):
    client = await make_client(aiohttp_client, tmp_path, {**TREE, "[...all].py": GET_PATH})
    await assert_error(await client.get(target, allow_redirects=False), 404, "not_found")


@pytest.mark.parametrize(
    ("yaml", "url", "file"),
    [
        ("server: {prefix: /}\n", "/users", "/users/index.py"),
        ("server: {prefix: /}\n", "/", "/index.py"),
        ("server: {prefix: /v1/gw}\n", "/v1/gw/users", "/users/index.py"),
        ("server: {prefix: /v1/gw}\n", "/v1/gw", "/index.py"),
        ("server: {prefix: /v1/gw/}\n", "/v1/gw/post/7", "/post/[pid].py"),
    ],
)
async def test_the_prefix_is_configurable(aiohttp_client, tmp_path, yaml, url, file):
    client = await make_client(aiohttp_client, tmp_path, TREE, yaml)
    resp = await client.get(url, allow_redirects=False)
    assert resp.status == 200
    assert (await resp.json())["file"] == file


async def test_options_star_is_not_the_root_route(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, TREE, "server: {prefix: /}\n")
    status, headers, _ = await raw_request(client, "*", method="OPTIONS")
    assert status == 404 and "allow" not in headers


@pytest.mark.parametrize("yaml", ["", "server: {prefix: /}\n"])
async def test_health_checks_live_outside_the_prefix(aiohttp_client, tmp_path, yaml):
    client = await make_client(aiohttp_client, tmp_path, TREE, yaml)
    resp = await client.get("/healthz")
    assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    assert (await client.get("/readyz")).status == 200
    if not yaml:
        await assert_error(await client.get("/api/healthz"), 404, "not_found")
        await assert_error(await client.get("/api/readyz"), 404, "not_found")


async def test_a_route_named_healthz_does_not_replace_the_health_check(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, {"healthz.py": "async def GET(req):\n    return 'mine'\n"})
    assert await (await client.get("/api/healthz")).text() == "mine"
    assert await (await client.get("/healthz")).json() == {"status": "ok"}


async def test_health_check_with_a_wrong_method_is_a_json_405(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, TREE)
    resp = await client.post("/healthz")
    await assert_error(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"]


SERVER_CASES = [
    ("GET", "/api/users", "", 200),
    ("HEAD", "/api/users", "", 200),
    ("OPTIONS", "/api/users", "", 204),
    ("DELETE", "/api/users", "", 405),
    ("GET", "/api/nope", "", 404),
    ("GET", "/elsewhere", "", 404),
    ("GET", "/api/users/", "", 308),
    ("GET", "/api/post/%2e%2e", "", 400),
    ("GET", "/api/boom", "", 500),
    ("POST", "/api/big", "Content-Length: 20\r\n", 413),
    ("GET", "/healthz", "", 200),
    ("GET", "/readyz", "", 200),
    ("GET", "/api/users", "Bad Header\r\n", 400),  # refused by aiohttp's parser, before any app code
    ("GET", "/api/users", "X-Long: " + "a" * 9000 + "\r\n", 400),
]


@pytest.mark.parametrize(("method", "target", "headers", "status"), SERVER_CASES)
async def test_server_header_is_one_generic_word_on_every_response(
    aiohttp_client, tmp_path, method, target, headers, status
):
    routes = {
        **TREE,
        "boom.py": "async def GET(req):\n    raise RuntimeError('x')\n",
        "big.py": "config = {'max_body': '10b'}\n\n\nasync def POST(req):\n    return await req.read()\n",
    }
    client = await make_client(aiohttp_client, tmp_path, routes)
    body = b"x" * 20 if status == 413 else b""
    got, response_headers, _ = await raw_request(client, target, method=method, headers=headers, body=body)
    assert got == status
    assert response_headers.get("server") == "gateway"
    assert "x-powered-by" not in response_headers and "via" not in response_headers
