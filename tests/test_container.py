"""The Docker image, built and run with podman: healthy, non-root, honours $PORT, reads *_FILE secrets, stops on
SIGTERM with exit 0. Slow (minutes on a fresh machine), so marked ``container``: ``.ci/run`` runs it on its own
(``pytest -m container``); ``make test`` leaves it out."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "tools" / "container-smoke.sh"
WORK = Path(os.environ.get("W", "/tmp/ctr-smoke"))  # where the smoke script keeps podman's config and storage
IMAGE = "localhost/app:ci"  # what the smoke script builds
pytestmark = pytest.mark.container


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    """Run the smoke script (lint, build, run, /healthz, non-root, HEALTHCHECK); podman's environment after it."""
    if os.environ.get("CI") != "true" and (os.geteuid() != 0 and shutil.which("podman") is None):
        pytest.skip("needs podman (apt-get install podman runc debootstrap) or root to let the script install it")
    result = subprocess.run(["bash", str(SMOKE), str(ROOT), "/healthz"], capture_output=True, text=True,
                            timeout=1800, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "container smoke: 1 passed, 0 failed" in result.stdout
    assert "HEALTHCHECK ok" in result.stdout
    return {**os.environ, "CONTAINERS_CONF": str(WORK / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(WORK / "storage.conf")}


def podman(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_the_image_honours_port_runs_as_non_root_and_stops_cleanly_on_sigterm(built: dict[str, str]) -> None:
    name = "gateway-ct-port"
    podman(built, "rm", "-f", name)
    port = 18091
    started = podman(built, "run", "-d", "--name", name, "-e", "PORT=9000", "-p", f"127.0.0.1:{port}:9000", IMAGE)
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, podman(built, "logs", name).stderr
                time.sleep(0.5)
        assert podman(built, "exec", name, "id", "-u").stdout.strip() == "10001"
        assert podman(built, "healthcheck", "run", name).returncode == 0  # the HEALTHCHECK follows $PORT too
        begun = time.monotonic()
        assert podman(built, "stop", "-t", "20", name).returncode == 0
        assert time.monotonic() - begun < 15  # SIGTERM reached the gateway: no wait for the SIGKILL
        code = podman(built, "inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "0"
        logs = podman(built, "logs", name)
        assert '"message": "stopped"' in logs.stderr
    finally:
        podman(built, "rm", "-f", name)


def test_secrets_come_from_the_environment_or_a_file(built: dict[str, str], tmp_path: Path) -> None:
    secret = "sk-ctr-FILESECRET-77aa88bb99cc"
    (tmp_path / "config.yaml").write_text(
        "upstreams:\n  svc:\n    url: https://api.example.com\n"
        "    inject: { headers: { Authorization: \"Bearer ${SVC_KEY}\" } }\n"
        "forwards:\n  svc: { upstream: svc, path: / }\n")
    (tmp_path / "routes").mkdir()
    (tmp_path / "key").write_text(secret + "\n")
    os.chmod(tmp_path, 0o755)
    for path in (tmp_path / "config.yaml", tmp_path / "key"):
        os.chmod(path, 0o644)
    mount = ["-v", f"{tmp_path}:/cfg:ro", IMAGE, "gateway", "check", "--config", "/cfg/config.yaml"]
    missing = podman(built, "run", "--rm", *mount)
    assert missing.returncode == 1 and "SVC_KEY" in missing.stderr
    from_file = podman(built, "run", "--rm", "-e", "SVC_KEY_FILE=/cfg/key", *mount)
    assert from_file.returncode == 0, from_file.stderr
    from_env = podman(built, "run", "--rm", "-e", f"SVC_KEY={secret}", *mount)
    assert from_env.returncode == 0, from_env.stderr
    for result in (missing, from_file, from_env):
        assert secret not in result.stdout + result.stderr
