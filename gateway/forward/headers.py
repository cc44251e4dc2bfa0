"""Which headers cross the gateway, each way. Allowlists only: anything not named here is dropped."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

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


def request_allowlist(extra: tuple[str, ...]) -> frozenset[str]:
    names = {h.lower() for h in (*REQUEST_ALLOW, *extra)}
    return frozenset(n for n in names if n not in NEVER_FORWARD and not n.startswith("x-forwarded-"))


def response_allowlist(extra: tuple[str, ...]) -> frozenset[str]:
    return frozenset(h.lower() for h in (*RESPONSE_ALLOW, *extra) if h.lower() not in NEVER_EXPOSE)


def pick_request_headers(headers: CIMultiDictProxy[str], allow: frozenset[str]) -> dict[str, str]:
    """The client's headers that may go upstream; headers the client named in ``Connection`` are hop-by-hop."""
    out = {}
    for name, value in headers.items():
        if name.lower() in allow:
            out[name] = value
    if out and "Connection" in headers:
        listed = {n.strip().lower() for token in headers.getall("Connection") for n in token.split(",")}
        out = {name: value for name, value in out.items() if name.lower() not in listed}
    return out


def pick_response_headers(headers: CIMultiDictProxy[str], allow: frozenset[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() in allow:
            out.add(name, value)
    return out
