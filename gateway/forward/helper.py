"""``forward()``: call an upstream from a route handler, with the same injection, filtering and scrubbing.

    up = await forward(req, "weather", "/weather", query={"q": city})
    data = await up.json()              # reshape in code ...
    return await forward(req, "svc", "/path")   # ... or pass the answer through, masked and streamed
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web
from multidict import CIMultiDict

from ..errors import BadRequest, InternalError, PayloadTooLarge
from ..keys import FACTS
from .body import body_headers, request_body
from .client import Response
from .headers import pick_request_headers
from .relay import relay, response_headers
from .sessions import UPSTREAMS
from .upstream import Upstream
from .urls import encode_query, without_params

# the forward() answers of one request, closed when the handler is done
PENDING = web.RequestKey("gateway.upstream_responses", list)


class UpstreamResponse:
    """What ``forward()`` returns: status, safe headers, and the body — always scrubbed of secrets."""

    def __init__(self, request: web.Request, response: Response, upstream: Upstream) -> None:
        self._request = request
        self._response = response
        self._upstream = upstream
        self.status = response.status
        self.headers: CIMultiDict[str] = response_headers(response, upstream, upstream.rewriter)

    async def read(self) -> bytes:
        return self._upstream.scrubber.scrub(await self._response.read())

    async def text(self) -> str:
        return (await self.read()).decode(self._response.get_encoding(), "replace")

    async def json(self) -> Any:
        return jsonlib.loads(await self.read())

    async def respond(self) -> web.StreamResponse:
        """Relay this answer to the client (streamed when it has not been read yet)."""
        if self._response._body is not None:
            self.headers.popall("Content-Length", None)
            return web.Response(status=self.status, headers=self.headers, body=await self.read())
        return await relay(self._request, self._response, self._upstream, rewriter=self._upstream.rewriter)

    def close(self) -> None:
        self._response.close()


async def forward(
    req: web.Request,
    upstream: str,
    path: str = "",
    *,
    method: str | None = None,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    data: bytes | None = None,
) -> UpstreamResponse:
    """Call ``upstream`` at ``path`` (relative to its url). Without ``query`` the client's query string is passed;
    without ``json``/``data`` the client's body is streamed when the method is the client's own."""
    upstreams = req.app[UPSTREAMS]
    if upstream not in upstreams:
        raise InternalError(f"forward(): no upstream named {upstream!r} in the config")
    up = upstreams[upstream]
    target, path_query = _safe_path(path)
    url = up.url + target
    injected = up.inject_query_names  # as in a forward: the client can never set these
    if query is None:
        query_string = req.rel_url.raw_query_string
    else:
        query_string = encode_query(tuple((k, str(v)) for k, v in query.items()))
    parts = (without_params(path_query, injected), without_params(query_string, injected), up.inject_query)
    query_string = "&".join(q for q in parts if q)
    if query_string:
        url = f"{url}?{query_string}"
    # HEAD is answered by the GET handler, which may read the upstream's body: ask for it with GET
    method = (method or ("GET" if req.method == "HEAD" else req.method)).upper()
    out_headers = pick_request_headers(req.headers, up.request_allow)
    for name, value in (headers or {}).items():
        if name.lower() not in up.inject_header_names:
            out_headers[name] = value
    out_headers.update(up.inject_headers)
    body: Any = None
    if json is not None:
        body = jsonlib.dumps(json).encode()
        out_headers["Content-Type"] = "application/json"
    elif data is not None:
        body = data
    elif method == req.method and req.body_exists:
        if req.content.at_eof():  # the handler read it already (await req.json()): send what it read
            body = await req.read()
        else:
            body = request_body(req, req.client_max_size)
            out_headers.update(body_headers(req))
    try:
        response = await up.send(method, url, out_headers, body, req.get(FACTS))
    except Exception:
        if getattr(body, "exceeded", False):
            raise PayloadTooLarge(f"the request body is larger than the limit of {req.client_max_size} bytes") from None
        raise
    if response.status >= 500:
        await relay(req, response, up)  # logs what the upstream said and raises UpstreamError
    result = UpstreamResponse(req, response, up)
    req.setdefault(PENDING, []).append(result)
    return result


def _safe_path(path: str) -> tuple[str, str]:
    """Keep a handler-built path inside the upstream's base: no scheme, no ``//host``, no ``..``, encoded.
    Returns the encoded path and the query string written in it, if any."""
    if not path:
        return "", ""
    if not path.startswith("/"):
        path = "/" + path
    raw, _, path_query = path.partition("?")
    if any(c in path_query for c in "\r\n #"):
        raise BadRequest("the path may not carry a query with spaces, line breaks or '#'")
    segments = [unquote(s) for s in raw.split("/")[1:]]
    # a handler often builds the path from client input: a climbing or odd path is the client's bad request
    if any(s in (".", "..") or "\\" in s or "\0" in s for s in segments) or "" in segments[:-1]:
        raise BadRequest("the path may not contain '.', '..', empty, NUL or backslash segments")
    return "/" + "/".join(quote(s, safe="-._~!$&'()*+,;=:@") for s in segments), path_query
