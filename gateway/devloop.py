"""``gateway dev``: serve in a child process, and start a new one whenever a file the project is made of changes.

Watched: the config file, the ``.env`` beside it, every folder of the routes tree (a new, changed or fixed module
is served), and the file of each ``NAME_FILE`` secret the config reads. Each folder is watched on its own, not
recursively, so a config that sits beside a repository's ``.venv`` never has the watcher walk it; the set is worked
out again at each restart, so a new routes subfolder, or a config that names another routes folder, is followed.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import watchfiles
from dotenv import dotenv_values

from .config import load_config
from .server import CANNOT_LISTEN
from .yamlsource import ConfigError

STOP_GRACE = 5.0  # seconds a child gets to finish its requests before it is killed
TICK_MS = 500  # how often the watcher also looks whether the child is still running
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class Watched:
    """The folders to watch, and which of the changes in them are the project's."""

    folders: set[Path] = field(default_factory=set)
    files: set[Path] = field(default_factory=set)  # a change to one of these counts
    trees: set[Path] = field(default_factory=set)  # so does one anywhere under these (routes/), but caches
    secret_folders: set[Path] = field(default_factory=set)  # Kubernetes swaps a secret's ..data link, not its file

    def accepts(self, change: watchfiles.Change, path: str) -> bool:
        file = Path(path)
        if file in self.files or (file.parent in self.secret_folders and file.name.startswith("..")):
            return True
        for tree in self.trees:
            if file.is_relative_to(tree):
                parts = file.relative_to(tree).parts
                return not any(p.startswith(".") or p == "__pycache__" for p in parts) and \
                    not file.name.endswith((".pyc", "~", ".swp", ".swx"))
        return False


def project_files(config_path: Path) -> Watched:
    """What ``gateway dev`` watches for the config at ``config_path`` (absolute), as things stand now."""
    base = config_path.parent
    watched = Watched(folders={base}, files={config_path, base / ".env"})
    routes: Path | None = base / "routes"  # until the config can be read, the default folder
    named: list[Path] = []  # other files the config names: the Redis CA file of rediss://...?ca=
    try:
        config = load_config(config_path, lenient=True)  # lenient: a missing secret changes no path
        routes = config.routes_dir
        if config.state is not None and config.state.ca_file:
            named.append(Path(config.state.ca_file).resolve())  # as the connection opens it
    except ConfigError:
        pass
    if routes is not None and routes.is_dir():
        watched.trees.add(routes)
        watched.folders |= {routes, *(d for d in routes.rglob("*") if d.is_dir() and _visible(d, routes))}
    for secret in [*_secret_files(config_path), *named]:
        watched.files.add(secret)
        watched.folders.add(secret.parent)
        watched.secret_folders.add(secret.parent)
    watched.folders = {folder for folder in watched.folders if folder.is_dir()}
    return watched


def _visible(folder: Path, root: Path) -> bool:
    return not any(p.startswith(".") or p == "__pycache__" for p in folder.relative_to(root).parts)


def _secret_files(config_path: Path) -> Iterable[Path]:
    """The files ``${NAME}`` is read from when NAME is unset and NAME_FILE is set, as secrets.Environment decides."""
    try:
        names = set(_VAR.findall(config_path.read_text(errors="replace")))
    except OSError:
        return []
    dotenv = config_path.parent / ".env"
    local = {k: v for k, v in dotenv_values(dotenv).items() if v is not None} if dotenv.is_file() else {}
    files = []
    for name in sorted(names):
        for env in (os.environ, local):  # the real environment first, as it wins over .env
            if name in env:
                break
            if f"{name}_FILE" in env:
                files.append(Path(env[f"{name}_FILE"]).resolve())
                break
    return files


def run_dev(config_path: Path, target: Callable[..., None], args: tuple) -> int:
    """Run ``target(*args)`` (serving) in a child; a new child after each change. Exit 0 on SIGTERM or Ctrl-C, 1
    when the child could not listen on its port (waiting for a file change would not help)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: every route module imported anew
    try:
        while True:
            watched = project_files(config_path)
            child = spawn.Process(target=target, args=args)
            child.start()
            try:
                changes = _wait(watched, child)
                if changes is None:
                    return 1
                names = sorted({_shown(Path(path)) for _, path in changes})
                print(f"gateway dev: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} changed: restarting",
                      file=sys.stderr, flush=True)
            finally:
                _stop(child)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait(watched: Watched, child: multiprocessing.process.BaseProcess) -> set[tuple[watchfiles.Change, str]] | None:
    """The changes that call for a new child, or None when the child ended because it could not listen."""
    ended = False
    for changes in watchfiles.watch(*sorted(watched.folders), watch_filter=watched.accepts, recursive=False,
                                    rust_timeout=TICK_MS, yield_on_timeout=True, raise_interrupt=True):
        if changes:
            return changes
        if not ended and not child.is_alive():
            ended = True
            if child.exitcode == CANNOT_LISTEN:
                return None
            # it printed its problems: the same watcher goes on, so a fix saved right now is not missed
            print(f"gateway dev: waiting for a change to {_describe(watched)} (Ctrl-C to stop)",
                  file=sys.stderr, flush=True)
    return None  # pragma: no cover - the watcher stops only by an interrupt, raised above


def _stop(child: multiprocessing.process.BaseProcess) -> None:
    if child.is_alive():
        child.terminate()  # SIGTERM: it drains like `gateway serve`
        child.join(STOP_GRACE)
    if child.is_alive():
        child.kill()
    child.join()


def _describe(watched: Watched) -> str:
    shown = [_shown(f) for f in sorted(watched.files)] + [_shown(t) + "/" for t in sorted(watched.trees)]
    return ", ".join(shown)


def _shown(path: Path) -> str:
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends `gateway dev` as Ctrl-C does: the child is stopped on the way out


__all__ = ["Watched", "project_files", "run_dev"]
