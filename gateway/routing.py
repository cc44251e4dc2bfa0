"""The route table: a segment trie matched in O(path depth), mounted into aiohttp as one resource under the prefix.

Precedence is decided per segment, with backtracking: static > [param] > [...catch] > [[...optional]].
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource, AbstractRoute, ResourceRoute, UrlMappingMatchInfo
from yarl import URL

from .errors import BadRequest
from .keys import MATCH, Match
from .paths import Kind, Segment, pattern_of, shape_of

if TYPE_CHECKING:
    from .keys import Resources
    from .units import Rate


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Endpoint(Protocol):
    """What the table routes to: a file route or a forward."""

    pattern: str  # "/api/post/[pid]"
    segments: tuple[Segment, ...]
    kind: str  # "file" or "forward"
    target: str  # the file, or the upstream's name: never a secret
    source: str  # where it was declared, for conflict messages
    methods: tuple[str, ...]
    allow: str  # the Allow header: its methods, sorted
    public: bool  # needs no client API key
    auth: str | None  # the one kind of client it admits ("jwt", "api_key"), or None: whatever is configured
    own_options: bool  # it answers OPTIONS itself (then OPTIONS needs a client key like any other method)
    websocket: bool  # a WebSocket forward (its upgrade's Origin is checked)
    receives: frozenset[str] | None  # the request headers it passes on (lower case; None: a file route, any)
    exposes: tuple[str, ...]  # the upstream response headers it passes back beyond the safe ones
    upstream: str | None  # the upstream a forward calls (None: a route module, which may call any)
    rate_limit: Rate | None  # its own rate limit per client
    cache: float | None  # how long its answers are kept
    budgeted: bool  # a token budget per client counts what its calls spend (a forward's guard.budget, SPEC §11)

    def terminal(self, res: Resources) -> Handler:
        """Its innermost handler, built once at start-up from the process-wide resources."""


class RouteConflict(Exception):
    pass


class _Node:
    __slots__ = ("static", "param", "catch", "optional", "endpoint")

    def __init__(self) -> None:
        self.static: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.catch: _Node | None = None
        self.optional: _Node | None = None
        self.endpoint: Endpoint | None = None


class RouteTable:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.endpoints: list[Endpoint] = []
        self._root = _Node()
        self._shapes: dict[tuple, Endpoint] = {}
        self._names: dict[int, tuple[str, ...]] = {}  # each endpoint's parameter names, in path order

    def add(self, endpoint: Endpoint) -> None:
        """Raises RouteConflict when another endpoint already answers the same paths."""
        shape = shape_of(endpoint.segments)
        clash = self._shapes.get(shape)
        if clash is None and endpoint.segments and endpoint.segments[-1].kind == Kind.OPTIONAL:
            clash = self._shapes.get(shape[:-1])  # docs/[[...p]] also answers /docs
        if clash is None:
            clash = self._shapes.get((*shape, (Kind.OPTIONAL, "")))
        if clash is not None:
            raise RouteConflict(
                f"{endpoint.source} and {clash.source} both answer {pattern_of(self.prefix, endpoint.segments)}: "
                "remove or rename one of them"
            )
        self._shapes[shape] = endpoint
        node = self._root
        for segment in endpoint.segments:
            if segment.kind == Kind.STATIC:
                node = node.static.setdefault(segment.value, _Node())
            else:
                attr = ("param", "catch", "optional")[segment.kind - 1]
                if getattr(node, attr) is None:
                    setattr(node, attr, _Node())
                node = getattr(node, attr)
        node.endpoint = endpoint
        self.endpoints.append(endpoint)
        self._names[id(endpoint)] = tuple(s.value for s in endpoint.segments if s.kind != Kind.STATIC)

    def sorted(self) -> list[Endpoint]:
        return sorted(self.endpoints, key=lambda e: [(s.kind, s.value) for s in e.segments])

    def match(self, segments: list[str]) -> Match | None:
        """``["post", "abc"]`` -> Match(post/[pid], {"pid": "abc"}); segments are already percent-decoded."""
        values: list[str | list[str]] = []
        endpoint = _walk(self._root, segments, 0, values)
        if endpoint is None:
            return None
        if not values:
            return Match(endpoint, {}, {})
        params: dict[str, str] = {}
        raw: dict[str, list[str]] = {}
        for name, value in zip(self._names[id(endpoint)], values, strict=True):
            if isinstance(value, list):
                raw[name] = value
                params[name] = "/".join(value)
            else:
                params[name] = value
        return Match(endpoint, params, raw)


def _walk(node: _Node, segs: list[str], i: int, values: list[str | list[str]]) -> Endpoint | None:
    if i == len(segs):
        if node.endpoint is not None:
            return node.endpoint
        if node.optional is not None:
            values.append([])
            return node.optional.endpoint
        return None
    seg = segs[i]
    child = node.static.get(seg)
    if child is not None and (found := _walk(child, segs, i + 1, values)) is not None:
        return found
    if node.param is not None:
        values.append(seg)
        if (found := _walk(node.param, segs, i + 1, values)) is not None:
            return found
        values.pop()
    for tail in (node.catch, node.optional):
        if tail is not None:
            values.append(segs[i:])
            return tail.endpoint
    return None


class GatewayResource(AbstractResource):
    """One aiohttp resource answering everything under the prefix from the RouteTable.

    aiohttp's router finds it by prefix in its index; we then match the rest of the path ourselves. ``handlers``
    are the endpoints' assembled edge stacks (``pipeline.build.build_endpoint``), by ``id(endpoint)``.
    """

    def __init__(self, table: RouteTable, handlers: Mapping[int, Handler], *, redirect: Handler,
                 bad_path: Handler) -> None:
        super().__init__(name=None)
        self._table: RouteTable | None = None
        self._redirect = ResourceRoute("*", redirect, self)
        self._bad_path = ResourceRoute("*", bad_path, self)
        self.swap(table, handlers)

    def swap(self, table: RouteTable, handlers: Mapping[int, Handler], *, redirect: Handler | None = None,
             bad_path: Handler | None = None) -> None:
        """Serve ``table`` from now on; a request already routed keeps the handler it got. The prefix cannot change:
        aiohttp's router indexes it."""
        if getattr(self, "_table", None) is not None and table.prefix != self._prefix:
            raise ValueError(f"the prefix cannot change from {self._prefix!r} to {table.prefix!r} while serving")
        routes = {id(e): ResourceRoute("*", handlers[id(e)], self) for e in table.endpoints}
        allowed = {m for e in table.endpoints for m in e.methods} | {"HEAD", "OPTIONS"}
        # resolve() never awaits, so it sees the old attributes or the new ones, never a mix
        self._table, self._prefix, self._routes, self._allowed = table, table.prefix, routes, allowed
        if redirect is not None:
            self._redirect = ResourceRoute("*", redirect, self)
        if bad_path is not None:
            self._bad_path = ResourceRoute("*", bad_path, self)

    @property
    def prefix(self) -> str:
        return self._prefix

    async def resolve(self, request: web.Request) -> tuple[UrlMappingMatchInfo | None, set[str]]:
        path = request.rel_url.raw_path
        if not path.startswith(self._prefix):
            return None, set()
        rest = path[len(self._prefix):]
        if rest and rest[0] != "/":
            return None, set()  # /apiary is not under /api; nor is "*" (OPTIONS *) under the root
        stripped = rest.rstrip("/")
        if not stripped:
            segments = []
            unsafe = False
        elif "%" in stripped:
            segments = [unquote(s) for s in stripped[1:].split("/")]
            unsafe = any(map(_unsafe, segments))
        else:  # nothing encoded: no segment can hide a "/" (the common, cheaper case)
            segments = stripped[1:].split("/")
            unsafe = "" in segments or "." in segments or ".." in segments or "\\" in stripped or "\0" in stripped
        if unsafe:  # checked before the trailing-slash redirect, so it never points at one
            return UrlMappingMatchInfo({}, self._bad_path), self._allowed
        if stripped != rest and path != "/":
            return UrlMappingMatchInfo({}, self._redirect), self._allowed
        match = self._table.match(segments)
        if match is None:
            return None, set()
        info = UrlMappingMatchInfo(match.params, self._routes[id(match.endpoint)])
        request[MATCH] = match
        return info, self._allowed

    @property
    def canonical(self) -> str:
        return self._prefix or "/"

    def url_for(self, **kwargs: str) -> URL:
        return URL.build(path=self.canonical)

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("the gateway's resource cannot be mounted in a sub-application")

    def get_info(self) -> dict[str, Any]:
        return {"prefix": self._prefix}

    def raw_match(self, path: str) -> bool:
        return False

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self) -> Iterator[AbstractRoute]:
        return iter(self._routes.values())


def _unsafe(segment: str) -> bool:
    """A decoded segment no handler should see: ``..``, ``%2e%2e``, ``..%2Fx``, empty, or with a backslash or NUL."""
    return "\\" in segment or "\0" in segment or any(part in ("", ".", "..") for part in segment.split("/"))


class FallbackResource(AbstractResource):
    """Registered last, it answers every path nothing else matched (so 404s come from the gateway, as JSON)."""

    def __init__(self, handler: Handler) -> None:
        super().__init__(name=None)
        self._route = ResourceRoute("*", handler, self)

    def swap(self, handler: Handler) -> None:
        self._route = ResourceRoute("*", handler, self)

    async def resolve(self, request: web.Request) -> tuple[UrlMappingMatchInfo | None, set[str]]:
        return UrlMappingMatchInfo({}, self._route), set()

    @property
    def canonical(self) -> str:
        return "/"

    def url_for(self, **kwargs: str) -> URL:
        return URL.build(path="/")

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("the gateway's resource cannot be mounted in a sub-application")

    def get_info(self) -> dict[str, Any]:
        return {"fallback": True}

    def raw_match(self, path: str) -> bool:
        return False

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[AbstractRoute]:
        return iter((self._route,))


async def bad_path(request: web.Request) -> web.StreamResponse:
    raise BadRequest("the path contains an empty, '.', '..' or backslash segment")
