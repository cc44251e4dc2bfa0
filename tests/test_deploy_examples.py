"""The deployment examples hold what they say: the Kubernetes manifests parse, probe the gateway's own health
paths, run as the image's user, and carry a config.yaml that `gateway check` accepts."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.app import build_table
from gateway.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_the_kubernetes_example_is_consistent(tmp_path: Path) -> None:
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all((ROOT / "examples" / "kubernetes.yaml").read_text())}
    assert set(docs) == {"Secret", "ConfigMap", "Deployment", "Service"}
    (tmp_path / "config.yaml").write_text(docs["ConfigMap"]["data"]["config.yaml"])
    (tmp_path / "openai").write_text(docs["Secret"]["stringData"]["openai"] + "\n")
    config = load_config(tmp_path / "config.yaml", environ={"OPENAI_API_KEY_FILE": str(tmp_path / "openai")})
    [endpoint] = build_table(config).endpoints
    assert endpoint.pattern == "/api/openai/chat/completions"
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    assert "USER 10001:10001" in (ROOT / "Dockerfile").read_text()
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["OPENAI_API_KEY_FILE"].startswith("/secrets/")
    assert config.server.shutdown_grace < pod["terminationGracePeriodSeconds"]
