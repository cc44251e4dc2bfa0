"""The one builder of outgoing requests: YAML forwards and ``forward()`` make their OutRequest here, alike.

Both get the same path safety (every segment percent-encoded exactly once), query precedence (injected names
always win), method check, body handling and limit, and header rules; the steps of the call chain then filter the
client's headers and inject the secrets for both in the same way.

    forward_request(req, ...)  YAML ``weather/[city]`` with ``path: /weather?q={city}``  -> GET <url>/weather?q=Paris
    handler_request(req, ...)  ``forward(req, "weather", "/weather", query={"q": city})`` -> the same bytes upstream
"""

from __future__ import annotations

import json as jsonlib
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..errors import BadRequest, InternalError
from ..keys import CLAIMS, FACTS, HEAD_AS_GET, IDENTITY
from ..request_id import HEADER as REQUEST_ID_HEADER
from ..request_id import request_id
from ..routing import Match
from .body import body_headers, request_body
from .headers import HOP_BY_HOP
from .urls import UrlTemplate, encode_query, encode_segment, join_query
from .values import OutRequest

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z").match  # RFC 9110 token: a method or a header name
_BAD_VALUE = re.compile(r"[\r\n\0]").search
# what a handler's headers= may never set: the framing, the connection, the host; the gateway sets these itself
FRAMING = HOP_BY_HOP | {"host", "content-length", "expect", "proxy-connection", "x-request-id"}


def forward_request(request: web.Request, match: Match, template: UrlTemplate, upstream: Any, *, max_body: int,
                    origin: bool = False) -> OutRequest:
    """The call a YAML forward makes for ``request``: its method, the templated URL, the client's body."""
    url = template.build(match.params, match.raw, request.rel_url.raw_query_string, upstream.inject_query)
    return _out(request, request.method, url, None, {}, max_body, origin)


def handler_request(request: web.Request, upstream: Any, path: str, *, method: str | None,
                    query: Mapping[str, Any] | None, headers: Mapping[str, str] | None, json: Any,
                    data: bytes | None) -> OutRequest:
    """The call ``forward(request, upstream, path, ...)`` makes from a handler.

    Without ``query`` the client's query string is passed on; without ``json``/``data`` the client's body goes when
    the method is the client's own. A GET function answering a HEAD asks the upstream with GET (it may read the
    body); otherwise the method is the client's, as for a YAML forward.
    """
    if method is None:
        method = "GET" if request.get(HEAD_AS_GET) else request.method
    elif not _TOKEN(method):
        raise InternalError(f"forward(): {method!r} is not an HTTP method")
    method = method.upper()
    client_query = request.rel_url.raw_query_string if query is None else encode_query(
        tuple((str(k), str(v)) for k, v in query.items()))
    url = upstream.url + encode_path(path)
    query_string = join_query(client_query, upstream.inject_query_names, "", upstream.inject_query)
    if query_string:
        url = f"{url}?{query_string}"
    extra = checked_headers(headers, upstream.inject_header_names) if headers else {}
    body: bytes | None = None
    if json is not None:
        body = jsonlib.dumps(json).encode()
        extra["Content-Type"] = "application/json"
    elif data is not None:
        body = bytes(data)
    elif method != request.method and not (method == "GET" and request.method == "HEAD"):
        body = b""  # another method than the client's: the client's body is not this call's
    return _out(request, method, url, body, extra, request.client_max_size, False)


def _out(request: web.Request, method: str, url: str, body: bytes | None, extra: dict[str, str], max_body: int,
         origin: bool) -> OutRequest:
    out_body: Any = body or None
    if body is None and request.body_exists and method == request.method:
        if request.content.at_eof() and request._read_bytes is not None:  # a handler read it: send what it read
            out_body = request._read_bytes
        else:
            out_body = request_body(request, max_body)
            extra.update(body_headers(request))
    extra[REQUEST_ID_HEADER] = request_id(request)
    where = f"{request.scheme}://{request.host}" if origin else ""
    return OutRequest(method, url, request.headers, out_body, extra, where, request.get(CLAIMS),
                      identity=request.get(IDENTITY, ""), facts=request.get(FACTS))


def encode_path(path: str) -> str:
    """A handler-built path, each segment percent-encoded once, as YAML forwards encode parameters.

    ``"items/a b/ü?x"`` -> ``"/items/a%20b/%C3%BC%3Fx"``: no character of it can start a query, a fragment or a new
    request line. A segment that climbs or that the router would refuse (``.``, ``..``, empty, with a backslash
    or NUL) is the client's bad request: handlers build paths from client input.
    """
    if not path:
        return ""
    segments = path.removeprefix("/").split("/")
    if any(s in (".", "..") or "\\" in s or "\0" in s for s in segments) or "" in segments[:-1]:
        raise BadRequest("the path may not contain '.', '..', empty, NUL or backslash segments")
    return "/" + "/".join(map(encode_segment, segments))


def checked_headers(headers: Mapping[str, str], injected: frozenset[str] | set[str]) -> dict[str, str]:
    """A handler's ``headers=``, checked like a client's can never be: no framing, no hop-by-hop, no secret's name.

    Raises InternalError (a handler bug: the message says which header) or BadRequest (a value with a line break
    or NUL, which comes from client input the handler copied).
    """
    out = {}
    for name, value in headers.items():
        name, value = str(name), str(value)
        lower = name.lower()
        if not _TOKEN(name):
            raise InternalError(f"forward(): {name!r} is not a valid header name")
        if lower in FRAMING or lower.startswith("proxy-"):
            raise InternalError(f"forward(): a handler cannot set the {name} header: the gateway sets it")
        if lower in injected:
            raise InternalError(f"forward(): a handler cannot set the {name} header: the upstream's secret goes there")
        if _BAD_VALUE(value):
            raise BadRequest(f"the {name} header for the upstream would contain a line break or NUL")
        out[name] = value
    return out
