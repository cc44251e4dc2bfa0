"""``${VAR}`` / ``${VAR:-default}`` / ``VAR_FILE`` / ``.env`` interpolation, and the Secret type.

A value interpolated from the environment into an ``inject`` section or ``clients.api_keys`` is a
secret: it is wrapped in :class:`Secret` (whose ``repr``/``str`` are redacted) and its raw value is
collected so that responses can be scrubbed of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from dotenv import dotenv_values

from .mask.scrub import Scrubber

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
REDACTED = "[REDACTED]"


class Secret:
    """A string that never shows itself: ``str(Secret("sk-1"))`` is ``"[REDACTED]"``; ``.reveal()`` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('[REDACTED]')"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


class MissingVariable(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass
class Environment:
    """The variables ``${...}`` reads: the real environment, then a ``.env`` file that never overrides it."""

    values: Mapping[str, str]
    used: list[str] = field(default_factory=list)
    lenient: bool = False  # an unset variable reads as "" and is listed in ``unset`` (gateway routes: no secrets)
    unset: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, config_dir: Path, environ: Mapping[str, str], *, lenient: bool = False) -> Environment:
        merged = dict(environ)
        dotenv = config_dir / ".env"
        if dotenv.is_file():
            for key, value in dotenv_values(dotenv).items():
                # the real environment wins, also when it gives the value as a file (KEY_FILE beats .env's KEY)
                if value is not None and key not in environ and f"{key}_FILE" not in environ:
                    merged[key] = value
        return cls(merged, lenient=lenient)

    def lookup(self, name: str, default: str | None) -> str:
        try:
            return self._lookup(name, default)
        except MissingVariable:
            if not self.lenient:
                raise
            self.unset.append(name)
            return ""

    def _lookup(self, name: str, default: str | None) -> str:
        if name in self.values:
            value = self.values[name]
        elif f"{name}_FILE" in self.values:
            path = Path(self.values[f"{name}_FILE"])
            try:
                value = path.read_text().strip()
            except OSError as exc:
                raise MissingVariable(f"{name} ({name}_FILE={path} cannot be read: {exc.strerror})") from None
        elif default is not None:
            return default
        else:
            raise MissingVariable(name)
        self.used.append(value)
        return value

    def interpolate(self, text: str) -> tuple[str, list[str]]:
        """``"Bearer ${KEY}"`` -> ``("Bearer sk-1", ["sk-1"])``: the result and the environment values used."""
        if "${" not in text:
            return text, []
        start = len(self.used)
        result = _VAR.sub(lambda m: self.lookup(m[1], m[2]), text)
        return result, self.used[start:]


def redact(text: str, secrets: Iterable[str]) -> str:
    """Every message the gateway prints goes through here: the masking rule of responses (SPEC §4) applies.

    ``redact("bad key 'sk-live-abcdefgh123'", {"sk-live-abcdefgh123"})`` -> ``"bad key '[REDACTED]'"``, and so for
    the secret URL- or JSON-encoded, and for any fragment of 8+ of its first or last characters: a message that
    quotes a secret cut short (``token 'sk-live-abcdef...'``, a value truncated to fit a line) shows none of it.
    """
    return _scrubber(frozenset(secrets)).scrub_text(text)


@lru_cache(maxsize=16)
def _scrubber(secrets: frozenset[str]) -> Scrubber:
    return Scrubber(secrets)
