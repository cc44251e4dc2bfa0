"""The README runs as written: its config snippets pass `gateway check`, its curls against the example config.yaml
and routes/ give the documented answers, its `gateway` and `make` commands exist, its route snippets are routes/.

A ```yaml block that is deliberately partial is marked with `<!-- partial -->` on the line before it and skipped.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_support import SCRIPT, Server, clean_env, free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
PARTIAL = "<!-- partial -->"


@dataclass
class Block:
    language: str
    line: int  # of the opening fence, 1-based
    text: str
    marker: str  # the non-blank line before the fence


def blocks(language: str) -> list[Block]:
    lines = README.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, lang, start = match[1], match[2], i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        if lang == language:
            found.append(Block(lang, start + 1, "\n".join(body) + "\n", before))
    return found


def env_without_proxies(**extra: str) -> dict[str, str]:
    env = clean_env(**extra)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(name, None)
    return env


# -- config snippets --------------------------------------------------------------------------------------------

CHECK_ALL = """\
import contextlib, io, json, sys
from gateway.cli import main
for path in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["check", "--config", path])
    print(json.dumps({"path": path, "code": code, "stderr": err.getvalue()}))
"""


def test_every_config_snippet_passes_gateway_check(tmp_path: Path) -> None:
    snippets = [b for b in blocks("yaml") if b.marker != PARTIAL]
    skipped = [b for b in blocks("yaml") if b.marker == PARTIAL]
    assert len(snippets) >= 12 and len(skipped) <= 2, (len(snippets), [b.line for b in skipped])
    closed = free_port()  # only loopback is a network target: a state: URL's Redis is one that does not answer
    paths, env = [], env_without_proxies()
    for block in snippets:
        folder = tmp_path / f"line{block.line}"
        (folder / "routes").mkdir(parents=True)  # the project it lives in; `routes: routes` names this one
        text = re.sub(r"(state: redis://[^@\s]*@)[^/\s]+", rf"\g<1>127.0.0.1:{closed}", block.text)
        (folder / "config.yaml").write_text(text)
        paths.append(str(folder / "config.yaml"))
        env.update({name: f"readme-{name.lower()}-0123456789" for name in VARIABLE.findall(block.text)})
    # one interpreter runs `gateway check` (cli.main) on each, so 15 snippets cost one start-up, not 15
    result = subprocess.run([sys.executable, "-c", CHECK_ALL, *paths], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    outcomes = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(outcomes) == len(snippets)
    failed = [f"README.md:{b.line}: {o['stderr']}" for b, o in zip(snippets, outcomes, strict=True) if o["code"] != 0]
    assert failed == []


def test_the_check_runner_fails_a_broken_snippet(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("sever: {}\n")  # the runner above must be able to say no
    result = subprocess.run([sys.executable, "-c", CHECK_ALL, str(tmp_path / "config.yaml")], cwd=tmp_path,
                            env=clean_env(), capture_output=True, text=True, timeout=60, check=False)
    (outcome,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert outcome["code"] == 1 and "unknown key 'sever'" in outcome["stderr"]


# -- curl against the example config.yaml and routes/ ----------------------------------------------------------


@dataclass
class Curl:
    line: int
    command: str
    status: int
    body: object | None  # a JSON value, or None
    partial: bool  # the documented body ends in "...": its keys must be there, others may be too
    header: tuple[str, str] | None


def curls() -> list[Curl]:
    """Every ``curl localhost:8080/...  # <answer>`` line of the README's ```sh blocks."""
    found = []
    for block in blocks("sh"):
        for offset, line in enumerate(block.text.splitlines(), start=1):
            if not line.startswith("curl ") or "localhost:8080" not in line:
                continue
            command, _, expected = line.partition("  #")
            assert expected, f"README.md:{block.line + offset}: a curl with no documented answer: {line}"
            found.append(parse_answer(block.line + offset, command.strip(), expected.strip()))
    return found


def parse_answer(line: int, command: str, expected: str) -> Curl:
    """``201 {"echo": "hi"}``, ``{"pid": "abc"}   (a note)``, ``400 {"error": "bad_request", ...}``,
    ``308, Location: /api/user``."""
    status, rest = 200, expected
    if match := re.match(r"(\d{3}),?\s*", expected):
        status, rest = int(match[1]), expected[match.end():]
    body, partial, header = None, False, None
    if rest.startswith("{"):
        depth, end = 0, 0
        while True:  # to the brace that closes the first one; a note may follow it
            depth += {"{": 1, "}": -1}.get(rest[end], 0)
            if depth == 0:
                break
            end += 1
        text = rest[:end + 1]
        partial = text.endswith(", ...}")
        body = json.loads(text.replace(", ...}", "}"))
    elif match := re.match(r"([A-Za-z-]+): (\S+)", rest):
        header = (match[1], match[2])
    return Curl(line, command, status, body, partial, header)


def run_curl(curl: Curl, port: int) -> tuple[int, dict[str, str], bytes]:
    argv = shlex.split(curl.command.replace("localhost:8080", f"127.0.0.1:{port}"))
    # as written, plus -s (no progress) and -i (the status and headers, to compare with the documented answer)
    result = subprocess.run([argv[0], "-s", "-i", *argv[1:]], capture_output=True, timeout=30, check=False,
                            env=env_without_proxies())
    assert result.returncode == 0, (curl.command, result.stderr)
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


def test_every_documented_curl_gives_the_documented_answer(tmp_path: Path) -> None:
    documented = curls()
    assert len(documented) >= 8, [c.command for c in documented]
    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is not installed: apt-get install -y curl")
        pytest.skip("curl is not installed: apt-get install -y curl")
    port = free_port()
    # the repository's config.yaml (its routes/ is found beside it); the server's output files go to tmp_path
    with Server(SCRIPT, "serve", "--config", str(ROOT / "config.yaml"), "--host", "127.0.0.1", "--port", str(port),
                cwd=tmp_path, env=env_without_proxies(), port=port) as server:
        server.wait_ready()
        wrong = []
        for curl in documented:
            status, headers, body = run_curl(curl, port)
            answer = json.loads(body) if curl.body is not None else None
            ok = status == curl.status
            if curl.body is not None:
                ok = ok and (answer == curl.body if not curl.partial else
                             isinstance(answer, dict) and curl.body.items() <= answer.items())
            if curl.header is not None:
                ok = ok and headers.get(curl.header[0]) == curl.header[1]
            if not ok:
                wrong.append(f"README.md:{curl.line}: {curl.command} -> {status} {headers} {body[:300]!r}")
        assert wrong == []
        assert server.terminate() == 0


def test_the_answer_parser_reads_each_documented_form() -> None:
    assert parse_answer(1, "c", '{"pid": "abc"}').body == {"pid": "abc"}
    note = parse_answer(1, "c", '{"page": "index"}      ([[...path]] matches zero segments)')
    assert (note.status, note.body, note.partial) == (200, {"page": "index"}, False)
    created = parse_answer(1, "c", '201 {"echo": "hi"}')
    assert (created.status, created.body) == (201, {"echo": "hi"})
    refused = parse_answer(1, "c", '400 {"error": "bad_request", ...}')
    assert (refused.status, refused.body, refused.partial) == (400, {"error": "bad_request"}, True)
    moved = parse_answer(1, "c", "308, Location: /api/user")
    assert (moved.status, moved.body, moved.header) == (308, None, ("Location", "/api/user"))


# -- the other commands -----------------------------------------------------------------------------------------


def commands(prefix: str) -> list[tuple[int, str]]:
    found = []
    for block in blocks("sh"):
        for offset, line in enumerate(block.text.splitlines(), start=1):
            command = line.partition("  #")[0].strip()
            env_free = [w for w in command.split() if not re.match(r"[A-Z_]+=", w)]  # OPENAI_API_KEY=... make run
            if env_free[:1] == [prefix]:
                found.append((block.line + offset, shlex.join(shlex.split(" ".join(env_free)))))
    return found


def test_every_make_target_and_file_the_readme_names_exists() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    makes = commands("make")
    assert len(makes) >= 3
    for line, command in makes:
        words = command.split()[1:]
        for word in words:
            if "=" in word:  # make run CONFIG=examples/openai.yaml
                assert (ROOT / word.split("=", 1)[1]).is_file(), f"README.md:{line}: {command}"
            else:
                assert word in targets, f"README.md:{line}: make {word}: no such target"
    for line, command in commands("gateway") + commands("make"):
        for word in command.split():
            if re.fullmatch(r"[\w.-]+/[\w./\[\]-]+\.(yaml|py|md)", word):
                assert (ROOT / word).is_file(), f"README.md:{line}: {word} is not in the repository"


def test_every_gateway_command_of_the_readme_runs(tmp_path: Path) -> None:
    runs = [(line, command) for line, command in commands("gateway") if command.split()[1] not in ("serve", "dev")]
    assert len(runs) >= 3, runs
    for line, command in runs:
        words = shlex.split(command)[1:]
        cwd = tmp_path if words[0] == "init" else ROOT  # init writes files: never into the repository
        result = subprocess.run([*SCRIPT, *words], cwd=cwd, env=env_without_proxies(), capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, f"README.md:{line}: {command}: {result.stderr}"
        assert "Traceback" not in result.stderr


def test_the_readme_route_snippets_are_the_example_routes() -> None:
    compared = 0
    for block in blocks("python"):
        first = block.text.splitlines()[0]
        match = re.match(r"# (routes/\S+\.py)", first)
        if match is None or not (ROOT / match[1]).is_file():
            continue  # an example of another project (routes/weather/[city].py calls a real API)
        assert code_of(block.text) == code_of((ROOT / match[1]).read_text()), f"README.md:{block.line}: {match[1]}"
        compared += 1
    assert compared >= 3  # user.py, post/[pid].py, echo.py


def code_of(source: str) -> list[str]:
    """The module's statements without its docstring and comments."""
    tree = ast.parse(source)
    body = tree.body[1:] if tree.body and isinstance(tree.body[0], ast.Expr) and \
        isinstance(tree.body[0].value, ast.Constant) else tree.body
    return [ast.dump(node) for node in body]


def test_every_python_snippet_parses_and_imports_what_exists() -> None:
    """Route snippets of other projects (a real API behind them) are not run, but each must be valid Python whose
    imports from the gateway and its libraries name what really exists."""
    import importlib

    sys.path.insert(0, str(ROOT / "routes"))  # route modules import their private helpers (routes/_lib) so
    checked = 0
    try:
        checked = _check_python_blocks(importlib)
    finally:
        sys.path.remove(str(ROOT / "routes"))
    assert checked >= 8


def _check_python_blocks(importlib) -> int:
    checked = 0
    for block in blocks("python"):
        try:
            tree = ast.parse(block.text)
        except SyntaxError as exc:
            raise AssertionError(f"README.md:{block.line + (exc.lineno or 0)}: not valid Python: {exc.msg}") from None
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or alias.name == "*", \
                        f"README.md:{block.line}: {node.module} has no {alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
        checked += 1
    return checked
