"""``gateway init [DIR]``: a starter project (config, .env.example, one route, a README) that passes gateway check."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG = """\
# gateway: your frontend calls /api/..., the gateway calls the real API with the key attached.
# Check it with `gateway check`, serve it with `gateway dev` (restarts when a file changes).
server:
  port: 8080              # --port, else $PORT, else this
  prefix: /api            # where routes/ and the forwards below are mounted
  routes: routes          # Python files: routes/hello.py answers /api/hello

# To hide a key: copy .env.example to .env, put the key there, and uncomment these lines.
# upstreams:
#   openai:
#     url: https://api.openai.com/v1
#     inject:
#       headers: { Authorization: "Bearer ${OPENAI_API_KEY}" }   # the client never sees it
# forwards:
#   openai/[...path]: { upstream: openai, path: "/{path}", methods: [GET, POST] }   # /api/openai/... -> /v1/...

# Who may call it (see the gateway's README: Calling it from a browser, Rate limits):
# clients:
#   cors: { origins: ["http://localhost:5173"] }   # your frontend's dev server
#   rate_limit: 60/minute                           # per client
"""

ENV_EXAMPLE = """\
# Copy to .env (never commit .env): the gateway reads it beside config.yaml; the real environment wins.
OPENAI_API_KEY=sk-your-key-here
"""

HELLO = '''\
"""GET /api/hello -> {"hello": "world"}; GET /api/hello?name=Ada -> {"hello": "Ada"}."""


async def GET(req):
    return {"hello": req.query.get("name", "world")}
'''

README = """\
# My API gateway

Made with `gateway init`. Your frontend calls `/api/...` here; the gateway calls the real API with the secret
attached, and nothing of the upstream (key, host, headers) reaches the client.

```sh
gateway check                       # the config, .env and every route module: each problem on one line
gateway dev                         # serve on :8080, restarting when a file changes
curl localhost:8080/api/hello       # {"hello": "world"}
```

* `routes/hello.py` answers `GET /api/hello`. A file is a route, named like a Next.js API route:
  `routes/post/[pid].py` answers `/api/post/abc` with `req.match_info["pid"] == "abc"`.
* To hide a key: `cp .env.example .env`, put the key in `.env` (keep `.env` out of git), and uncomment the
  `upstreams:` and `forwards:` lines in `config.yaml`. Then `/api/openai/models` is OpenAI's `/v1/models`, called
  with your key.
* `gateway routes` prints the route table; `gateway serve` runs it for real.
"""

FILES = {"config.yaml": CONFIG, ".env.example": ENV_EXAMPLE, "routes/hello.py": HELLO, "README.md": README}


class StarterError(Exception):
    """The starter cannot be written; nothing was."""


def write_starter(folder: Path) -> list[Path]:
    """Write the starter files under ``folder`` (made if missing); refuse, writing nothing, if any of them exists."""
    targets = [folder / name for name in FILES]
    existing = [path for path in targets if path.exists() or path.is_symlink()]
    if existing:
        names = ", ".join(_shown(path) for path in existing)
        raise StarterError(f"{names} already exist{'s' if len(existing) == 1 else ''}: gateway init never overwrites "
                           "a file; give it a new folder (gateway init my-gateway) or move them away")
    if folder.exists() and not folder.is_dir():
        raise StarterError(f"{_shown(folder)} is a file, not a folder: give gateway init a folder to write into")
    try:
        for path, text in zip(targets, FILES.values(), strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("x") as out:  # "x": never replace a file that appeared meanwhile
                out.write(text)
    except OSError as exc:
        raise StarterError(f"cannot write {_shown(Path(exc.filename or folder))}: {exc.strerror}") from None
    return targets


def next_steps(folder: Path, written: list[Path]) -> str:
    lines = ["created " + ", ".join(_shown(path) for path in written), "next:"]
    if folder.resolve() != Path.cwd().resolve():
        lines.append(f"  cd {_shown(folder)}")
    lines += [
        "  gateway dev                      # serve on :8080, restarting when a file changes",
        "  curl localhost:8080/api/hello    # {\"hello\": \"world\"}",
        "  cp .env.example .env             # then put your key there and uncomment upstreams: in config.yaml",
    ]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


__all__ = ["StarterError", "next_steps", "write_starter"]
