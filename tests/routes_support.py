"""Shared helpers for the file-route tests: write a routes/ tree and a config.yaml into a tmp dir, build the app."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

from gateway.app import build_table, create_app
from gateway.config import Config, load_config
from gateway.routing import RouteTable

GET_PATH = "async def GET(req):\n    return {'file': __file__.rsplit('routes', 1)[1], 'params': dict(req.match_info)}\n"


def write_tree(root: Path, files: dict[str, str]) -> None:
    """``{"routes/user.py": "async def GET(req): ..."}`` -> files under ``root`` (text dedented)."""
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))


def make_config(root: Path, routes: dict[str, str], yaml: str = "") -> Config:
    """Write ``routes`` (paths relative to routes/) and a config.yaml, and load it with an empty environment."""
    write_tree(root, {f"routes/{rel}": text for rel, text in routes.items()})
    (root / "routes").mkdir(exist_ok=True)
    (root / "config.yaml").write_text(textwrap.dedent(yaml) or "server: {}\n")
    return load_config(root / "config.yaml", environ={})


def make_table(root: Path, routes: dict[str, str], yaml: str = "") -> RouteTable:
    return build_table(make_config(root, routes, yaml))


async def make_client(aiohttp_client, root: Path, routes: dict[str, str], yaml: str = "", *, debug: bool = False):
    config = make_config(root, routes, yaml)
    return await aiohttp_client(create_app(config, build_table(config), debug=debug))


async def assert_error(resp, status: int, code: str) -> dict:
    """The gateway's own error shape (§5): JSON ``{"error": code, "message": text}``."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


async def raw_request(client, target: str, *, method: str = "GET", headers: str = "", body: bytes = b"") -> tuple:
    """Send ``target`` byte for byte (no client-side normalisation of ``..``, ``%2e`` or ``//``).

    Returns (status, headers as a lower-cased dict, body); the server closes the connection after one answer.
    """
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n"
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), fields, payload
