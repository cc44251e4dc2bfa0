"""Read config values one by one, each problem recorded with its YAML path and line instead of raised.

``ValueReader`` knows scalars (strings with ``${VAR}`` interpolation, numbers, units, lists, header maps); the
config's sections are read by its subclass in ``config.py``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any, TypeVar

from .secrets import Environment, MissingVariable, Secret
from .yamlsource import Problem, YamlDocument, YamlPath, dotted

T = TypeVar("T")
# keys of nested sections, and the section they belong in: found one level too high, the fix is to indent it
NESTED = {
    **dict.fromkeys(("query", "headers"), "inject"),
    **dict.fromkeys(("origins", "credentials", "max_age"), "cors"),
    **dict.fromkeys(("jwks_url", "issuer", "audience", "algorithms", "leeway", "cookie", "forward_claims", "lazy"),
                    "jwt"),
    **dict.fromkeys(("drop", "select"), "response"),
    **dict.fromkeys(("allow", "cap", "budget"), "guard"),
    **dict.fromkeys(("host", "port", "prefix", "routes", "workers", "max_body", "max_response", "shutdown_grace",
                     "trusted_proxies", "cache_size", "metrics", "access_log"), "server"),
}
_BARE_VAR = re.compile(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")  # $VAR without braces (${VAR} is the syntax)
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class ValueReader:
    """Walks the YAML data once, collecting every problem instead of stopping at the first."""

    def __init__(self, doc: YamlDocument, env: Environment) -> None:
        self.doc = doc
        self.env = env
        self.problems: list[Problem] = []
        self.secrets: set[str] = set()
        self.unchecked: set[YamlPath] = set()  # values that read an unset variable in a lenient load
        self._known: dict[YamlPath, tuple[str, ...]] = {}  # the keys each mapping read so far may hold
        for dup_path, line in doc.duplicates:
            self.problems.append(Problem(doc.file, line, dotted(dup_path), "duplicate key: remove one of them"))

    def fail(self, path: YamlPath, message: str) -> None:
        if path in self.unchecked:
            return  # its value is a stand-in for an unset variable: nothing to say about it
        self.problems.append(Problem(self.doc.file, self.doc.line(path), dotted(path), message))

    # -- scalars -------------------------------------------------------------------------------------------

    def mapping(self, value: Any, path: YamlPath, known: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping of {', '.join(known)}, got {show_value(value)}")
            return {}
        self._known[path] = known
        for key in value:
            if str(key) not in known:
                self.fail((*path, str(key)), f"unknown key {str(key)!r}: {self._fix(str(key), path, known)}")
        return {str(k): v for k, v in value.items() if str(k) in known}

    def _fix(self, key: str, path: YamlPath, known: tuple[str, ...]) -> str:
        """How to mend an unknown key: often a known key at the wrong indentation, else a typo."""
        home = NESTED.get(key)
        if home is not None and home in known:
            return f"it belongs under {home}: indent it there"
        parent = self._known.get(path[:-1]) if path else None
        if parent is not None and key in parent:
            return f"it belongs one level up, beside {dotted(path)}: indent it less"
        hint = difflib.get_close_matches(key, known, n=1)
        return f"did you mean {hint[0]!r}?" if hint else f"known keys: {', '.join(known)}"

    def string(self, value: Any, path: YamlPath, *, secret: bool = False) -> str | None:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail(path, f"expected a string, got {show_value(value)}")
            return None
        if secret and self.bare_variable(value, path):
            return None
        unset = len(self.env.unset)
        try:
            text, used = self.env.interpolate(str(value))
            if len(self.env.unset) > unset:
                self.unchecked.add(path)
        except MissingVariable as exc:
            self.fail(path, f"environment variable {exc.name} is not set: set it, add it to .env beside the config, "
                            f"or give a default with ${{{str(exc.name).split(' ')[0]}:-value}}")
            return None
        if secret:
            self.secrets.update(v for v in used if v)
        return text

    def bare_variable(self, value: Any, path: YamlPath) -> bool:
        """True, with a problem recorded, when ``value`` holds ``$VAR`` without braces, which is sent as written."""
        if bare := _BARE_VAR.search(str(value)):
            name = bare[1]  # "Bearer $OPENAI_API_KEY" would send that very text upstream, not the key
            self.fail(path, f"${name} is sent as written, not read from the environment: write ${{{name}}}")
            return True
        return False

    def converted(self, value: Any, path: YamlPath, parse: Callable[[Any], T]) -> T | None:
        raw = value
        if isinstance(value, str):
            value = self.string(value, path)
            if value is None:
                return None
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            self.fail(path, f"{show_value(raw)}: {exc}")
            return None

    def integer(self, value: Any, path: YamlPath, low: int, high: int | None = None) -> int | None:
        def parse(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, int | str) or not str(v).strip().isdigit():
                raise ValueError("expected a whole number")
            n = int(v)
            if n < low or (high is not None and n > high):
                raise ValueError(f"must be between {low} and {high}" if high else f"must be at least {low}")
            return n

        return self.converted(value, path, parse)

    def boolean(self, value: Any, path: YamlPath) -> bool | None:
        if not isinstance(value, bool):
            self.fail(path, f"expected true or false, got {show_value(value)}")
            return None
        return value

    def string_list(self, value: Any, path: YamlPath, *, secret: bool = False) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"expected a list of strings, got {show_value(value)}")
            return []
        items = [self.string(item, (*path, i), secret=secret) for i, item in enumerate(value)]
        return [item for item in items if item is not None]

    def header_names(self, value: Any, path: YamlPath) -> tuple[str, ...]:
        names = self.string_list(value, path)
        for i, name in enumerate(names):
            if not name or not set(name) <= _TOKEN:
                self.fail((*path, i), f"{name!r} is not a valid header name")
        return tuple(names)

    def secret_map(self, value: Any, path: YamlPath, *, header: bool) -> tuple[tuple[str, Secret], ...]:
        if value is None:
            return ()
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping of names to values, got {show_value(value)}")
            return ()
        out = []
        for name, raw in value.items():
            name = str(name)
            item_path = (*path, name)
            if header and (not name or not set(name) <= _TOKEN):
                self.fail(item_path, f"{name!r} is not a valid header name")
                continue
            text = self.string(raw, item_path, secret=True)
            if text is None:
                continue
            if header and any(c in text for c in "\r\n\0"):
                self.fail(item_path, "a header value cannot contain CR, LF or NUL characters")
                continue
            out.append((name, Secret(text)))
        return tuple(out)


def show_value(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value)
