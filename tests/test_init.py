"""`gateway init [DIR]` for real: the starter passes `gateway check` and serves; nothing is ever overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import PYTHON_M, SCRIPT, Server, clean_env, free_port, run_cli

from gateway.starter import FILES

STARTER = sorted(FILES)  # config.yaml, .env.example, routes/hello.py, README.md


def written(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_init_writes_a_starter_that_passes_check_and_serves(tmp_path: Path) -> None:
    command = SCRIPT
    result = run_cli(command, "init", "my-gateway", cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "my-gateway"
    assert written(folder) == sorted(STARTER)
    lines = result.stdout.splitlines()
    assert lines[0] == ("created my-gateway/config.yaml, my-gateway/.env.example, my-gateway/routes/hello.py, "
                        "my-gateway/README.md")
    assert lines[1:3] == ["next:", "  cd my-gateway"]
    assert any(line.strip().startswith("gateway dev") for line in lines)

    check = run_cli(command, "check", cwd=folder, env=clean_env())  # no variable needed as written
    assert check.returncode == 0, check.stderr
    assert "ok: config.yaml and 1 routes are valid" in check.stdout
    port = free_port()
    with Server(command, "serve", "--port", str(port), cwd=folder, env=clean_env(), port=port) as server:
        server.wait_ready()
        for path, expected in (("/api/hello", {"hello": "world"}), ("/api/hello?name=Ada", {"hello": "Ada"})):
            reply = server.get(path)
            assert reply is not None and reply.status == 200 and json.loads(reply.body) == expected
        assert server.terminate() == 0


def test_the_commented_example_is_valid_once_uncommented(tmp_path: Path) -> None:
    assert run_cli(PYTHON_M, "init", cwd=tmp_path, env=clean_env()).returncode == 0  # DIR defaults to "."
    config = tmp_path / "config.yaml"
    text = config.read_text()
    uncommented = "\n".join(line[2:] if line.startswith(("# upstreams", "#   ", "# forwards", "# clients")) else line
                            for line in text.splitlines())
    assert "\nupstreams:" in uncommented and "\nforwards:" in uncommented and "\nclients:" in uncommented
    config.write_text(uncommented)
    (tmp_path / ".env").write_text((tmp_path / ".env.example").read_text())  # the step the README names
    check = run_cli(PYTHON_M, "check", cwd=tmp_path, env=clean_env())
    assert check.returncode == 0, check.stderr
    assert "/api/openai/[...path]" in check.stdout and "sk-your-key-here" not in check.stdout + check.stderr


@pytest.mark.parametrize("existing", STARTER)
def test_init_never_overwrites(tmp_path: Path, existing: str) -> None:
    target = tmp_path / existing
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("mine\n")
    result = run_cli(PYTHON_M, "init", str(tmp_path), cwd=tmp_path, env=clean_env())
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {existing} already exists: gateway init never overwrites a file")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert target.read_text() == "mine\n"
    assert written(tmp_path) == [existing]  # and nothing else was written either


def test_init_names_every_file_in_the_way_and_refuses_a_dangling_link(tmp_path: Path) -> None:
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "hello.py").symlink_to(tmp_path / "nowhere.py")  # writing through it would create a file
    (tmp_path / "README.md").write_text("mine\n")
    result = run_cli(PYTHON_M, "init", cwd=tmp_path, env=clean_env())
    assert result.returncode == 1
    assert result.stderr.startswith("error: routes/hello.py, README.md already exist: ")
    assert not (tmp_path / "nowhere.py").exists() and not (tmp_path / "config.yaml").exists()


def test_init_into_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    result = run_cli(PYTHON_M, "init", "taken", cwd=tmp_path, env=clean_env())
    assert result.returncode == 1
    assert result.stderr == ("error: taken is a file, not a folder: give gateway init a folder to write into\n")
