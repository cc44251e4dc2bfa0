"""Route path syntax shared by file routes and forwards: ``post/[pid]``, ``files/[...path]``, ``docs/[[...path]]``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

_PARAM = re.compile(r"^\[([A-Za-z_][A-Za-z0-9_]*)\]$")
_CATCH = re.compile(r"^\[\.\.\.([A-Za-z_][A-Za-z0-9_]*)\]$")
_OPTIONAL = re.compile(r"^\[\[\.\.\.([A-Za-z_][A-Za-z0-9_]*)\]\]$")
_STATIC = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@-]+$")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
PLACEHOLDER_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")  # ${name}: an environment variable


class Kind(IntEnum):
    """Segment kinds in precedence order: a lower value wins when several match."""

    STATIC = 0
    PARAM = 1
    CATCH = 2
    OPTIONAL = 3


@dataclass(frozen=True, slots=True)
class Segment:
    kind: Kind
    value: str  # the literal text for STATIC, the parameter name otherwise

    def __str__(self) -> str:
        return {
            Kind.STATIC: "{}",
            Kind.PARAM: "[{}]",
            Kind.CATCH: "[...{}]",
            Kind.OPTIONAL: "[[...{}]]",
        }[self.kind].format(self.value)


class PathSyntaxError(ValueError):
    pass


def parse_segment(text: str) -> Segment:
    for kind, pattern in ((Kind.OPTIONAL, _OPTIONAL), (Kind.CATCH, _CATCH), (Kind.PARAM, _PARAM)):
        if match := pattern.match(text):
            return Segment(kind, match[1])
    if "[" in text or "]" in text:
        raise PathSyntaxError(
            f"{text!r} is not a valid segment: use [name], [...name] or [[...name]] with a Python identifier"
        )
    if text in (".", "..") or not _STATIC.match(text):
        raise PathSyntaxError(f"{text!r} is not a valid path segment")
    return Segment(Kind.STATIC, text)


def parse_route_path(parts: list[str]) -> tuple[Segment, ...]:
    """``["post", "[pid]"]`` -> (STATIC post, PARAM pid); checks catch-alls are last and names are unique."""
    segments = tuple(parse_segment(part) for part in parts)
    names: set[str] = set()
    for i, segment in enumerate(segments):
        if segment.kind >= Kind.CATCH and i != len(segments) - 1:
            raise PathSyntaxError(f"{segment} must be the last segment of the path")
        if segment.kind != Kind.STATIC:
            if segment.value in names:
                raise PathSyntaxError(f"parameter {segment.value!r} appears twice in the path")
            names.add(segment.value)
    return segments


def parse_forward_path(text: str) -> tuple[Segment, ...]:
    """A forward's key, relative to the prefix: ``"weather/[city]"``; ``""`` is the prefix itself."""
    stripped = text.strip("/")
    return parse_route_path(stripped.split("/")) if stripped else ()


def pattern_of(prefix: str, segments: tuple[Segment, ...]) -> str:
    """The display pattern: ``/api/post/[pid]``."""
    return "/".join([prefix, *map(str, segments)]) or "/"


def shape_of(segments: tuple[Segment, ...]) -> tuple[tuple[Kind, str], ...]:
    """Two paths with the same shape match the same URLs: parameter names do not count."""
    return tuple((s.kind, s.value if s.kind == Kind.STATIC else "") for s in segments)


def params_of(segments: tuple[Segment, ...]) -> list[str]:
    return [s.value for s in segments if s.kind != Kind.STATIC]
