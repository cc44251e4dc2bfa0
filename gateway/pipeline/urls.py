"""Build the upstream URL from the forward's path template, so no parameter can leave the upstream's base path.

    upstream url  https://api.example.com/v1     forward path  /weather?q={city}&units=metric
    city = "São Paulo/../x"   ->   https://api.example.com/v1/weather?q=S%C3%A3o%20Paulo%2F..%2Fx&units=metric

Every parameter value is percent-encoded whole (``/``, ``?``, ``#``, ``\\``, ``@``, CR and LF included); a
``[...catch]`` value keeps its ``/`` between segments, each segment encoded on its own. The router has already
refused ``.``/``..``/empty segments, so a catch-all cannot climb out of the base path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, unquote_plus

from ..paths import PLACEHOLDER

_QUOTE_SAFE = "-._~"
_NOTHING_TO_ENCODE = re.compile(r"[A-Za-z0-9._~-]*\Z").match


def encode_segment(value: str) -> str:
    """Percent-encode a parameter value (or a path segment) whole: ``"a b/c"`` -> ``"a%20b%2Fc"``.

    Most values need nothing, and the regex check is cheaper than quote."""
    return value if _NOTHING_TO_ENCODE(value) else quote(value, safe=_QUOTE_SAFE)


class UrlTemplate:
    """Compiled once per forward: literal pieces and parameter slots for the path and the query."""

    def __init__(self, base_url: str, template: str, inject_names: set[str]) -> None:
        path, _, query = template.partition("?")
        self._base = base_url.rstrip("/")
        self._path = _compile(path)
        self._query = _compile(query) if query else None
        self._query_names = {pair.split("=", 1)[0] for pair in query.split("&") if pair} if query else set()
        self._override = {n.lower() for n in inject_names} | {n.lower() for n in self._query_names}
        self._static = None if len(self._path) != 1 or self._query else self._base + self._path[0]

    def build(self, params: Mapping[str, str], raw: Mapping[str, list[str]], client_query: str,
              inject_query: str) -> str:
        """The upstream URL, already percent-encoded: the template's own params, then the client's, then secrets."""
        url = self._static
        if url is None:
            url = self._base + "".join(self._fill(self._path, params, raw))
        own = "".join(self._fill(self._query, params, {})) if self._query is not None else ""
        query = join_query(client_query, self._override, own, inject_query)
        return f"{url}?{query}" if query else url

    def _fill(self, pieces: list[str], params: Mapping[str, str], raw: Mapping[str, list[str]]) -> list[str]:
        out = []
        for i, piece in enumerate(pieces):
            if i % 2 == 0:
                out.append(piece)
            elif piece in raw:
                out.append("/".join(map(encode_segment, raw[piece])))
            else:
                out.append(encode_segment(params.get(piece, "")))
        return out


def _compile(text: str) -> list[str]:
    """``"/a/{x}/b"`` -> ``["/a/", "x", "/b"]``: literals at even positions, parameter names at odd ones."""
    return PLACEHOLDER.split(text)


def join_query(client: str, drop: set[str] | frozenset[str], own: str, inject: str) -> str:
    """The query sent upstream: the call's own params, the client's (less any name in ``drop``), then the secrets.

    ``join_query("a=1&key=x", {"key"}, "q=Paris", "key=SECRET")`` -> ``"q=Paris&a=1&key=SECRET"``.
    """
    if client and drop:
        client = without_params(client, drop)
    if not own and not inject:
        return client
    return "&".join(p for p in (own, client, inject) if p)


def without_params(query: str, names: set[str]) -> str:
    """``"a=1&KEY=x&%6Bey=y"`` without ``{"key"}`` -> ``"a=1"``: names compared decoded and case-insensitively."""
    keep = []
    for pair in query.split("&"):
        name = unquote_plus(pair.split("=", 1)[0]).lower()
        if name and name not in names:
            keep.append(pair)
    return "&".join(keep)


def encode_query(pairs: tuple[tuple[str, str], ...]) -> str:
    return "&".join(f"{quote(k, safe=_QUOTE_SAFE)}={quote(v, safe=_QUOTE_SAFE)}" for k, v in pairs)
