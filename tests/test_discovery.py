"""routes/ tree -> route table: Next.js file naming, private helpers, and every start-up problem naming its file."""

from __future__ import annotations

import sys

import pytest
from routes_support import GET_PATH, make_client, make_config, make_table

from gateway.app import StartupError, build_table
from gateway.config import load_config
from gateway.discovery import discover
from gateway.paths import pattern_of

ASYNC_GET = "async def GET(req):\n    return 'ok'\n"


@pytest.mark.parametrize(
    ("file", "pattern"),
    [
        ("user.py", "/api/user"),
        ("index.py", "/api"),
        ("users/index.py", "/api/users"),
        ("post/[pid].py", "/api/post/[pid]"),
        ("files/[...path].py", "/api/files/[...path]"),
        ("docs/[[...path]].py", "/api/docs/[[...path]]"),
        ("a/b/c.py", "/api/a/b/c"),
        ("users/[id]/posts.py", "/api/users/[id]/posts"),
        ("users/[id]/index.py", "/api/users/[id]"),
        ("v1.2/x-y_z~.py", "/api/v1.2/x-y_z~"),
    ],
)
def test_file_names_map_to_route_patterns(tmp_path, file, pattern):
    table = make_table(tmp_path, {file: ASYNC_GET})
    assert [e.pattern for e in table.endpoints] == [pattern]
    assert table.endpoints[0].target == f"routes/{file}"


@pytest.mark.parametrize(
    "file",
    ["_lib/x.py", "_x.py", "sub/_y.py", "sub/_priv/z.py", "__init__.py", "sub/__init__.py", ".hidden.py",
     "__pycache__/user.cpython-311.py", "README.md", "data.json", "user.pyc"],
)
def test_private_hidden_and_non_python_files_are_not_routes(tmp_path, file):
    make_config(tmp_path, {file: ASYNC_GET})
    found, problems = discover(tmp_path / "routes", "routes")
    assert (found, problems) == ([], [])


def test_discover_names_files_relative_to_the_configured_folder(tmp_path):
    config = make_config(tmp_path, {}, "server: {routes: handlers}\n")
    (tmp_path / "handlers" / "post").mkdir(parents=True)
    (tmp_path / "handlers" / "post" / "[pid].py").write_text(ASYNC_GET)
    table = build_table(config)
    [endpoint] = table.endpoints
    assert (endpoint.target, endpoint.pattern) == ("handlers/post/[pid].py", "/api/post/[pid]")


def test_no_routes_folder_gives_an_empty_table(tmp_path):
    (tmp_path / "config.yaml").write_text("server: {port: 8080}\n")  # the default folder, routes/, is not there
    assert build_table(load_config(tmp_path / "config.yaml", environ={})).endpoints == []
    (tmp_path / "config.yaml").write_text("server: {routes: null}\n")
    assert build_table(load_config(tmp_path / "config.yaml", environ={})).endpoints == []


def test_a_routes_folder_that_was_named_but_is_missing_is_an_error(tmp_path):
    from gateway.app import StartupError

    (tmp_path / "config.yaml").write_text("server: {routes: nowhere}\n")
    with pytest.raises(StartupError) as raised:
        build_table(load_config(tmp_path / "config.yaml", environ={}))
    [problem] = raised.value.problems
    assert problem.startswith("config.yaml: server.routes: the folder 'nowhere' does not exist")
    assert "routes: null" in problem


SPEC_TREE = {
    "user.py": GET_PATH,
    "index.py": GET_PATH,
    "users/index.py": GET_PATH,
    "post/[pid].py": GET_PATH,
    "files/[...path].py": GET_PATH,
    "docs/[[...path]].py": GET_PATH,
}


@pytest.mark.parametrize(
    ("url", "file", "params"),
    [
        ("/api/user", "/user.py", {}),
        ("/api", "/index.py", {}),
        ("/api/users", "/users/index.py", {}),
        ("/api/post/abc", "/post/[pid].py", {"pid": "abc"}),
        ("/api/post/a%20b", "/post/[pid].py", {"pid": "a b"}),
        ("/api/files/a", "/files/[...path].py", {"path": "a"}),
        ("/api/files/a/b", "/files/[...path].py", {"path": "a/b"}),
        ("/api/files/a/b/c.txt", "/files/[...path].py", {"path": "a/b/c.txt"}),
        ("/api/docs", "/docs/[[...path]].py", {"path": ""}),
        ("/api/docs/a", "/docs/[[...path]].py", {"path": "a"}),
        ("/api/docs/a/b", "/docs/[[...path]].py", {"path": "a/b"}),
    ],
)
async def test_spec_table_urls_reach_their_file_with_params(aiohttp_client, tmp_path, url, file, params):
    client = await make_client(aiohttp_client, tmp_path, SPEC_TREE)
    resp = await client.get(url, allow_redirects=False)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"file": file, "params": params}


@pytest.mark.parametrize("url", ["/api/files", "/api/post", "/api/user/x", "/api/index", "/api/users/index", "/api/x"])
async def test_urls_outside_the_spec_table_are_not_found(aiohttp_client, tmp_path, url):
    client = await make_client(aiohttp_client, tmp_path, SPEC_TREE)
    resp = await client.get(url, allow_redirects=False)
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"


@pytest.mark.parametrize(
    ("files", "url", "file", "params"),
    [
        (["a/[x]/c.py", "a/b/[y].py"], "/api/a/b/c", "/a/b/[y].py", {"y": "c"}),
        (["a/[x]/c.py", "a/b/[y].py"], "/api/a/b/d", "/a/b/[y].py", {"y": "d"}),
        (["a/[x]/c.py", "a/b/[y].py"], "/api/a/q/c", "/a/[x]/c.py", {"x": "q"}),
        (["a/[x]/c.py", "a/b/d.py"], "/api/a/b/c", "/a/[x]/c.py", {"x": "b"}),  # static b is a dead end: back up
        (["a/[x]/c.py", "a/b/d.py"], "/api/a/b/d", "/a/b/d.py", {}),
        (["a/b.py", "a/[x].py", "a/[...c].py", "a/[[...o]].py"], "/api/a/b", "/a/b.py", {}),
        (["a/b.py", "a/[x].py", "a/[...c].py", "a/[[...o]].py"], "/api/a/z", "/a/[x].py", {"x": "z"}),
        (["a/b.py", "a/[x].py", "a/[...c].py", "a/[[...o]].py"], "/api/a/z/w", "/a/[...c].py", {"c": "z/w"}),
        (["a/b.py", "a/[x].py", "a/[...c].py", "a/[[...o]].py"], "/api/a", "/a/[[...o]].py", {"o": ""}),
        (["[...all].py", "users/index.py"], "/api/users", "/users/index.py", {}),
        (["[...all].py", "users/index.py"], "/api/users/x", "/[...all].py", {"all": "users/x"}),
        (["[[...all]].py", "users/[id].py"], "/api", "/[[...all]].py", {"all": ""}),
        (["[[...all]].py", "users/[id].py"], "/api/users/1/x", "/[[...all]].py", {"all": "users/1/x"}),
    ],
)
async def test_precedence_between_files(aiohttp_client, tmp_path, files, url, file, params):
    client = await make_client(aiohttp_client, tmp_path, dict.fromkeys(files, GET_PATH))
    resp = await client.get(url)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"file": file, "params": params}


PRIVATE_HELPERS = {
    "_lib/__init__.py": "",
    "_lib/x.py": "def y():\n    return 'from _lib.x'\n",
    "_lib/deep/z.py": "W = 'from _lib.deep.z'\n",
    "_x.py": "V = 'from _x'\n",
    "use.py": """
        from _lib.x import y
        from _lib.deep.z import W
        from _x import V

        async def GET(req):
            return [y(), W, V]
    """,
}


async def test_private_helpers_are_importable_from_routes(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, PRIVATE_HELPERS)
    resp = await client.get("/api/use")
    assert await resp.json() == ["from _lib.x", "from _lib.deep.z", "from _x"]


@pytest.mark.parametrize("url", ["/api/_lib/x", "/api/_x", "/api/_lib", "/api/_lib/deep/z"])
async def test_private_helpers_are_not_served(aiohttp_client, tmp_path, url):
    client = await make_client(aiohttp_client, tmp_path, PRIVATE_HELPERS)
    assert (await client.get(url)).status == 404


def _helper_tree(value: str) -> dict[str, str]:
    """A namespace package _lib (no __init__.py) and a top-level _x, both holding ``value``."""
    return {
        "_lib/x.py": f"Y = {value!r}\n",
        "_x.py": f"Z = {value!r}\n",
        "use.py": "from _lib.x import Y\nfrom _x import Z\n\nasync def GET(req):\n    return [Y, Z]\n",
    }


async def test_each_routes_tree_imports_its_own_helpers(aiohttp_client, tmp_path):
    """Two apps in one process (tests, or a config pointing elsewhere on reload) must not share cached helpers."""
    first = await make_client(aiohttp_client, tmp_path / "one", _helper_tree("one"))
    second = await make_client(aiohttp_client, tmp_path / "two", _helper_tree("two"))
    assert await (await first.get("/api/use")).json() == ["one", "one"]
    assert await (await second.get("/api/use")).json() == ["two", "two"]


async def test_rebuilding_the_table_picks_up_edited_helpers(aiohttp_client, tmp_path):
    """A reload (SIGHUP, gateway dev) re-imports helpers, not only the route modules."""
    make_table(tmp_path, _helper_tree("before"))
    client = await make_client(aiohttp_client, tmp_path, _helper_tree("after"))
    assert await (await client.get("/api/use")).json() == ["after", "after"]


def test_forgetting_helpers_leaves_the_standard_library_alone(tmp_path):
    import json

    before = sys.modules.get("_json")
    make_table(tmp_path, {"_json.py": "X = 1\n", "use.py": "import json\n\n" + ASYNC_GET})
    assert sys.modules["json"] is json
    assert sys.modules.get("_json") is before


def test_a_helper_only_an_older_tree_had_is_not_importable(tmp_path):
    make_table(tmp_path / "old", {"_gone.py": "X = 1\n", "use.py": "from _gone import X\n\n" + ASYNC_GET})
    [problem] = _problems(tmp_path / "new", {"use.py": "from _gone import X\n\n" + ASYNC_GET})
    assert "routes/use.py" in problem and "ModuleNotFoundError" in problem and "_gone" in problem


def _problems(tmp_path, routes: dict[str, str], yaml: str = "") -> list[str]:
    with pytest.raises(StartupError) as info:
        make_table(tmp_path, routes, yaml)
    return info.value.problems


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        pytest.param({"users.py": ASYNC_GET, "users/index.py": ASYNC_GET},
                     ["routes/users.py", "routes/users/index.py", "/api/users"], id="file-and-index"),
        pytest.param({"post/[id].py": ASYNC_GET, "post/[pid].py": ASYNC_GET},
                     ["routes/post/[id].py", "routes/post/[pid].py"], id="two-params"),
        pytest.param({"docs/index.py": ASYNC_GET, "docs/[[...p]].py": ASYNC_GET},
                     ["routes/docs/index.py", "routes/docs/[[...p]].py", "/api/docs"], id="index-and-optional"),
        pytest.param({"docs.py": ASYNC_GET, "docs/[[...p]].py": ASYNC_GET},
                     ["routes/docs.py", "routes/docs/[[...p]].py"], id="file-and-optional"),
        pytest.param({"f/[...a].py": ASYNC_GET, "f/[...b].py": ASYNC_GET},
                     ["routes/f/[...a].py", "routes/f/[...b].py"], id="two-catch-alls"),
        pytest.param({"u/[id].py": ASYNC_GET, "u/[id]/index.py": ASYNC_GET},
                     ["routes/u/[id].py", "routes/u/[id]/index.py"], id="param-file-and-folder"),
        pytest.param({"bad.py": "x = 1\n\nimport no_such_module_here\n"},
                     ["routes/bad.py", "ModuleNotFoundError", "no_such_module_here", "line 3"], id="import-error"),
        pytest.param({"bad.py": "def f():\n    return 1 / 0\n\n\nf()\n"},
                     ["routes/bad.py", "ZeroDivisionError", "line 2"], id="error-at-import"),
        pytest.param({"bad.py": "async def GET(req):\n    return (\n\n"},
                     ["routes/bad.py", "SyntaxError", "line"], id="syntax-error"),
        pytest.param({"bad.py": "from _lib.h import v\n", "_lib/h.py": "v = 1\nraise KeyError('k')\n"},
                     ["routes/bad.py", "KeyError", "h.py, line 2"], id="helper-fails"),
        pytest.param({"bad.py": "X = 1\n"}, ["routes/bad.py", "no handler"], id="no-handler"),
        pytest.param({"bad.py": "async def get(req):\n    return 1\n"}, ["routes/bad.py", "no handler"],
                     id="lowercase"),
        pytest.param({"bad.py": "async def handler(req):\n    pass\n\n\nasync def GET(req):\n    pass\n"},
                     ["routes/bad.py", "handler", "GET"], id="handler-and-get"),
        pytest.param({"bad.py": "def GET(req):\n    return 1\n"}, ["routes/bad.py", "GET", "async"], id="sync-get"),
        pytest.param({"bad.py": "def handler(req):\n    return 1\n"}, ["routes/bad.py", "handler", "async"],
                     id="sync-handler"),
        pytest.param({"bad.py": "async def GET(req):\n    pass\n\n\ndef POST(req):\n    pass\n"},
                     ["routes/bad.py", "POST", "async"], id="one-sync-method"),
        pytest.param({"a b.py": ASYNC_GET}, ["routes/a b.py", "'a b'"], id="space"),
        pytest.param({"[id.py": ASYNC_GET}, ["routes/[id.py", "[id"], id="unclosed-bracket"),
        pytest.param({"[1x].py": ASYNC_GET}, ["routes/[1x].py"], id="param-not-identifier"),
        pytest.param({"[...].py": ASYNC_GET}, ["routes/[...].py"], id="catch-without-name"),
        pytest.param({"[a-b].py": ASYNC_GET}, ["routes/[a-b].py"], id="param-with-dash"),
        pytest.param({"50%.py": ASYNC_GET}, ["routes/50%.py"], id="percent"),
        pytest.param({"[...p]/x.py": ASYNC_GET}, ["routes/[...p]/x.py", "last"], id="catch-not-last"),
        pytest.param({"[[...p]]/x.py": ASYNC_GET}, ["routes/[[...p]]/x.py", "last"], id="optional-not-last"),
        pytest.param({"[id]/[id].py": ASYNC_GET}, ["routes/[id]/[id].py", "'id'", "twice"], id="param-twice"),
        pytest.param({"c.py": "config = {'maxbody': '1kb'}\n" + ASYNC_GET}, ["routes/c.py", "'maxbody'"],
                     id="config-unknown-key"),
        pytest.param({"c.py": "config = {'max_body': 'huge'}\n" + ASYNC_GET}, ["routes/c.py", "max_body", "huge"],
                     id="config-bad-size"),
        pytest.param({"c.py": "config = {'rate_limit': '5/fortnight'}\n" + ASYNC_GET},
                     ["routes/c.py", "rate_limit", "5/fortnight"], id="config-bad-rate"),
        pytest.param({"c.py": "config = {'cache': 'soon'}\n" + ASYNC_GET}, ["routes/c.py", "cache", "soon"],
                     id="config-bad-duration"),
        pytest.param({"c.py": "config = {'public': 'yes'}\n" + ASYNC_GET}, ["routes/c.py", "public"],
                     id="config-public-not-bool"),
        pytest.param({"c.py": "config = ['max_body']\n" + ASYNC_GET}, ["routes/c.py", "config"],
                     id="config-not-a-dict"),
    ],
)
def test_start_up_problems_name_the_file(tmp_path, routes, expected):
    problems = _problems(tmp_path, routes)
    assert len(problems) == 1, problems
    for text in expected:
        assert text in problems[0], (text, problems[0])
    assert "Traceback" not in problems[0] and "\n" not in problems[0]


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    problems = _problems(tmp_path, {
        "a.py": "import no_such_module_here\n",
        "b.py": "X = 1\n",
        "c/[...p]/d.py": ASYNC_GET,
        "e.py": ASYNC_GET,
        "e/index.py": ASYNC_GET,
        "fine.py": ASYNC_GET,
    })
    assert len(problems) == 4, problems
    for file in ("routes/a.py", "routes/b.py", "routes/c/[...p]/d.py", "routes/e/index.py"):
        assert any(file in p for p in problems), file
    assert not any("fine.py" in p for p in problems)


def test_a_file_and_a_forward_for_one_path_conflict(tmp_path):
    yaml = """
        upstreams:
          svc: {url: "http://127.0.0.1:9"}
        forwards:
          users/[id]:
            upstream: svc
            path: /users/{id}
    """
    [problem] = _problems(tmp_path, {"users/[uid].py": ASYNC_GET}, yaml)
    assert "routes/users/[uid].py" in problem and "/api/users/[" in problem


def test_a_failed_import_leaves_no_half_module_behind(tmp_path):
    _problems(tmp_path, {"half.py": "X = 1\nraise RuntimeError('no')\n"})
    assert not any(name.startswith("gateway_routes.") and name.endswith("half") for name in sys.modules)


@pytest.mark.parametrize(
    "routes",
    [
        {"f/[...a].py": ASYNC_GET, "f/[[...b]].py": ASYNC_GET},  # catch and optional may share a folder
        {"[id].py": ASYNC_GET, "[id]/x.py": ASYNC_GET},
        {"a.py": ASYNC_GET, "a/b.py": ASYNC_GET, "[x].py": ASYNC_GET, "[...y]/index.py": ASYNC_GET},
        {"u/[id].py": ASYNC_GET, "v/[name].py": ASYNC_GET},
    ],
)
def test_overlapping_but_distinct_shapes_are_not_conflicts(tmp_path, routes):
    assert len(make_table(tmp_path, routes).endpoints) == len(routes)


def test_sorted_table_lists_routes_by_precedence(tmp_path):
    table = make_table(tmp_path, {
        "d/[[...o]].py": ASYNC_GET, "[...c].py": ASYNC_GET, "[p].py": ASYNC_GET, "b.py": ASYNC_GET, "a.py": ASYNC_GET,
        "index.py": ASYNC_GET, "d/[p]/x.py": ASYNC_GET,
    })
    assert [e.pattern for e in table.sorted()] == [
        "/api", "/api/a", "/api/b", "/api/d/[p]/x", "/api/d/[[...o]]", "/api/[p]", "/api/[...c]",
    ]
    assert pattern_of("", ()) == "/"
