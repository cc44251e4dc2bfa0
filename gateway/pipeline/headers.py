"""Which headers cross the gateway, each way: allowlists only, anything not named is dropped. Three steps.

    filter_request_headers   the client's headers through the allowlist (never Cookie, Authorization, Host ...)
    inject_secrets           the upstream's secret headers over them: a client can never pre-set one
    filter_response_headers  the upstream's headers through the allowlist; Location/Link through the URL mapper
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from .urlmap import UrlMapper
from .values import Answer, Call, OutRequest

# client -> upstream; never Cookie, Authorization, X-API-Key, Host or X-Forwarded-* (not listed, so dropped)
REQUEST_ALLOW = ("Accept", "Accept-Language", "Content-Type", "If-None-Match", "If-Modified-Since", "Range")
# upstream -> client; never Server, X-Powered-By, Set-Cookie, Via or request ids
RESPONSE_ALLOW = (
    "Content-Type", "Content-Length", "Content-Encoding", "Cache-Control", "ETag", "Last-Modified", "Expires",
    "Content-Language", "Content-Disposition", "Retry-After", "Accept-Ranges", "Content-Range",
)
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade",
})
# accept-encoding: the gateway asks for what it can decode (and so scrub), whatever the client accepts
NEVER_FORWARD = HOP_BY_HOP | {"cookie", "authorization", "x-api-key", "host", "content-length", "accept-encoding"}
NEVER_EXPOSE = frozenset({"set-cookie", "server", "x-powered-by", "via"}) | HOP_BY_HOP
URL_HEADERS = ("Location", "Content-Location", "Link")


def request_allowlist(extra: tuple[str, ...]) -> frozenset[str]:
    names = {h.lower() for h in (*REQUEST_ALLOW, *extra)}
    return frozenset(n for n in names if n not in NEVER_FORWARD and not n.startswith("x-forwarded-"))


def response_allowlist(extra: tuple[str, ...]) -> frozenset[str]:
    return frozenset(h.lower() for h in (*RESPONSE_ALLOW, *extra) if h.lower() not in NEVER_EXPOSE)


def pick_request_headers(headers: Mapping[str, str], allow: frozenset[str]) -> dict[str, str]:
    """The client's headers that may go upstream; headers the client named in ``Connection`` are hop-by-hop."""
    out = {}
    for name, value in headers.items():
        if name.lower() in allow:
            out[name] = value
    if out and "Connection" in headers:
        getall = getattr(headers, "getall", None)
        tokens = getall("Connection") if getall else [headers["Connection"]]
        listed = {n.strip().lower() for token in tokens for n in token.split(",")}
        out = {name: value for name, value in out.items() if name.lower() not in listed}
    return out


def pick_response_headers(headers: CIMultiDictProxy[str] | CIMultiDict[str], allow: frozenset[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() in allow:
            out.add(name, value)
    return out


def filter_request_headers(allow: frozenset[str]):
    """Only allowlisted client headers go on, plus what the gateway or a handler set (checked when it was built)."""

    async def filter_request_headers(out: OutRequest, call_next: Call) -> Answer:
        headers = pick_request_headers(out.headers, allow)
        if out.extra:
            headers.update(out.extra)
        out.headers = headers
        return await call_next(out)

    return filter_request_headers


def inject_secrets(secrets: Mapping[str, str]):
    """The upstream's secret headers, set over whatever came before (their names are never picked from the client).
    None when the upstream injects no header (an injected query is part of the URL the builder made)."""
    if not secrets:
        return None

    async def inject_secrets(out: OutRequest, call_next: Call) -> Answer:
        out.headers.update(secrets)  # type: ignore[attr-defined] - a dict since filter_request_headers
        return await call_next(out)

    return inject_secrets


def filter_response_headers(allow: frozenset[str], mapper: UrlMapper):
    """The upstream's headers through the allowlist; ``Location``, ``Content-Location`` and ``Link`` through the URL
    mapper (a URL under the upstream becomes the gateway path that serves it, or is removed), also when
    ``expose_headers`` lists them; and any other header that names the upstream is removed."""

    async def filter_response_headers(out: OutRequest, call_next: Call) -> Answer:
        answer = await call_next(out)
        raw = answer.headers
        headers = pick_response_headers(raw, allow)
        if "Content-Encoding" in raw:  # the client undid every coding it could, so the body can be scrubbed
            headers.popall("Content-Encoding", None)
            sent = ",".join(raw.getall("Content-Encoding")).replace(" ", "").lower()
            if answer.encoding.replace(" ", "") != sent:
                headers.popall("Content-Length", None)  # some coding was undone: that length is no more
            if answer.encoding:  # what it could not undo ("br", or "br" under a gzip) still applies, and is said
                headers["Content-Encoding"] = answer.encoding
        if "Location" in raw or "Content-Location" in raw or "Link" in raw:
            for name in URL_HEADERS:
                headers.popall(name, None)
            for name in ("Location", "Content-Location"):
                if name in raw and (target := mapper.to_gateway(raw[name], answer.url)) is not None:
                    headers[name] = target
            for value in raw.getall("Link", ()):
                if link := mapper.link_header(value, answer.url):
                    headers.add("Link", link)
        if mapper.names_upstream("\n".join(headers.values())):  # one scan; only then header by header
            for name, value in list(headers.items()):
                if mapper.names_upstream(value):
                    headers.popall(name, None)
        answer.headers = headers
        return answer

    return filter_response_headers
