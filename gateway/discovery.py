"""Find the route files under routes/ and turn their names into paths, the way Next.js API routes do.

    routes/user.py              -> /user
    routes/users/index.py       -> /users
    routes/post/[pid].py        -> /post/[pid]
    routes/files/[...path].py   -> /files/[...path]
    routes/_lib/db.py           -> not a route (leading _), importable as ``from _lib.db import ...``
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .paths import PathSyntaxError, Segment, parse_route_path


@dataclass(frozen=True)
class RouteFile:
    file: Path  # absolute
    display: str  # "routes/post/[pid].py", as a user would name it
    segments: tuple[Segment, ...]


class RouteFileError(Exception):
    """A route file that cannot be used; the message names the file."""


def discover(routes_dir: Path, display_dir: str) -> tuple[list[RouteFile], list[str]]:
    """Every route file under ``routes_dir``, sorted, and a message for each file whose name is not a valid route."""
    found: list[RouteFile] = []
    problems: list[str] = []
    if not routes_dir.is_dir():
        return found, problems
    for file in sorted(routes_dir.rglob("*.py")):
        rel = file.relative_to(routes_dir)
        if any(part.startswith(("_", ".")) for part in rel.parts):
            continue  # private helpers, __pycache__, __init__.py, hidden files
        display = f"{display_dir}/{rel.as_posix()}"
        parts = [*rel.parts[:-1], rel.stem]
        if parts[-1] == "index":
            parts.pop()
        try:
            segments = parse_route_path(parts)
        except PathSyntaxError as exc:
            problems.append(f"{display}: {exc}")
            continue
        found.append(RouteFile(file, display, segments))
    return found, problems


def prepare_imports(routes_dir: Path) -> None:
    """Make ``routes_dir`` the one routes folder on sys.path, and forget every module imported from a routes folder.

    Call once per route table, before ``import_route``: a reload, or a second routes tree in the same process, must
    get this tree's current ``from _lib.x import y``, not a module cached from an older tree or an older version of
    this one (nor a ``_lib`` package found in an older tree still on sys.path).
    """
    root = str(routes_dir)
    roots = [*_IMPORT_ROOTS, root]
    stale = {name for name, module in list(sys.modules.items()) if "." not in name and _located_in(module, roots)}
    for name in [name for name in sys.modules if name.partition(".")[0] in stale]:
        del sys.modules[name]
    for old in roots:
        while old in sys.path:
            sys.path.remove(old)
    sys.path.insert(0, root)
    _IMPORT_ROOTS[:] = [root]
    importlib.invalidate_caches()


_IMPORT_ROOTS: list[str] = []  # the routes folder prepare_imports last put on sys.path: sys.path is process-wide


def _located_in(module: ModuleType | None, roots: list[str]) -> bool:
    spec = getattr(module, "__spec__", None)
    if spec is None:
        return False
    places = list(spec.submodule_search_locations or ())
    if spec.has_location and spec.origin:
        places.append(spec.origin)
    return any(place == root or place.startswith(root + os.sep) for place in places for root in roots)


def import_route(route: RouteFile, routes_dir: Path) -> ModuleType:
    """Import a route module under a private name; ``routes/`` is on sys.path so ``from _lib.x import y`` works."""
    root = str(routes_dir)
    if root not in sys.path:
        sys.path.insert(0, root)
    name = "gateway_routes." + route.file.relative_to(routes_dir).with_suffix("").as_posix().replace("/", ".")
    spec = importlib.util.spec_from_file_location(name, route.file)
    if spec is None or spec.loader is None:
        raise RouteFileError(f"{route.display}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # anything a user's module may raise at import time
        sys.modules.pop(name, None)
        raise RouteFileError(f"{route.display}: failed to import: {_describe(exc, route.file)}") from exc
    return module


def _describe(exc: BaseException, file: Path) -> str:
    """``NameError: name 'x' is not defined (line 3)``: the innermost line in the route file or its helpers."""
    if isinstance(exc, SyntaxError):
        where = f"{Path(exc.filename).name}, line {exc.lineno}" if exc.filename else f"line {exc.lineno}"
        return f"SyntaxError: {exc.msg} ({where})"
    line = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == str(file):
            line = f" (line {frame.lineno})"
            break
        if "site-packages" not in frame.filename and not frame.filename.startswith("<"):
            line = f" ({Path(frame.filename).name}, line {frame.lineno})"
            break
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}{line}" if text else f"{type(exc).__name__}{line}"
