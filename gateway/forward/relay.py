"""Turn an upstream response into the client's: filtered headers, secrets scrubbed, streamed or shaped.

Two body modes, chosen per forward at start-up (STYLE rule 3):
* pass-through: a small body with a known length is read whole, scrubbed, and sent with its real length;
  anything else (SSE, downloads, unknown length) is streamed chunk by chunk, scrubbed across chunk boundaries,
  without Content-Length (the scrubbed length is not known in advance);
* shaped (``response:`` or ``rewrite_urls``): read, reshaped, scrubbed and sent with a fresh Content-Length.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from aiohttp import web
from multidict import CIMultiDict

from ..errors import UpstreamError
from .client import Response
from .headers import pick_response_headers
from .rewrite import LineRewriter, UrlRewriter
from .upstream import Upstream

log = logging.getLogger("gateway.upstream")
BUFFER_LIMIT = 1024 * 1024  # bodies up to this size with a known length are read whole: faster, bounded memory
LOGGED_ERROR_BODY = 2048
SHAPE_LIMIT = 16 * 1024 * 1024  # the most a shaped or URL-rewritten body may be: it is read whole


async def relay(
    request: web.Request,
    up: Response,
    upstream: Upstream,
    *,
    rewriter: UrlRewriter | None = None,
    shape: Callable[[bytes], bytes] | None = None,
    rewrite_body: bool = False,
) -> web.StreamResponse:
    try:
        if up.status >= 500:
            await _withhold(up, upstream)
        if request.method != "HEAD" and up.status not in (204, 304) and upstream.scrubber:
            _refuse_unreadable(up, upstream)
        headers = response_headers(up, upstream, rewriter)
        if request.method == "HEAD" or up.status in (204, 304):
            up.release()
            return web.Response(status=up.status, headers=headers)
        events = _is_event_stream(up)
        if shape is not None or (rewrite_body and not events):
            return await _shaped(request, up, upstream, headers, rewriter, shape, rewrite_body)
        length = up.content_length
        if length is not None and length <= BUFFER_LIMIT and "Content-Length" in headers:
            with upstream.errors:
                body = await up.read()
            headers.popall("Content-Length", None)
            return web.Response(status=up.status, headers=headers, body=upstream.scrubber.scrub(body))
    except BaseException:
        up.close()
        raise
    edit = None
    if rewrite_body and rewriter is not None:  # events stay a stream, rewritten line by line
        origin = f"{request.scheme}://{request.host}"
        edit = LineRewriter(functools.partial(rewriter.body, origin=origin))
    return await _stream(request, up, upstream, headers, edit)


def response_headers(up: Response, upstream: Upstream, rewriter: UrlRewriter | None) -> CIMultiDict[str]:
    headers = pick_response_headers(up.headers, upstream.response_allow)
    if "Content-Encoding" in up.headers:
        # the client undid every coding it could (so the body can be scrubbed): the old encoding and length no
        # longer apply; what it could not undo ("x-snappy", or "br" under a gzip) still does, and is said so
        headers.popall("Content-Encoding", None)
        headers.popall("Content-Length", None)
        if up.remaining_encoding:
            headers["Content-Encoding"] = up.remaining_encoding
    scrub = upstream.scrubber.scrub_text if upstream.scrubber else None
    if scrub is not None and scrub(joined := "\n".join(headers.values())) != joined:  # one scan for all headers
        for name, value in list(headers.items()):
            clean = scrub(value)
            if clean != value:
                headers[name] = clean
    if rewriter is not None and ("Location" in up.headers or "Content-Location" in up.headers or "Link" in up.headers):
        # also when expose_headers lists them: an upstream URL that cannot be mapped is removed, never passed on
        for name in ("Location", "Content-Location", "Link"):
            headers.popall(name, None)
        here = str(up.url.with_query(None).with_fragment(None))  # what a relative URL is relative to
        for name in ("Location", "Content-Location"):
            if name in up.headers:
                target = rewriter.to_gateway(up.headers[name], here)
                if target is not None:
                    headers[name] = scrub(target) if scrub else target
        if "Link" in up.headers:
            links = [rewriter.link_header(v, here) for v in up.headers.getall("Link")]
            for link in links:
                if link:
                    headers.add("Link", scrub(link) if scrub else link)
    return headers


def _refuse_unreadable(up: Response, upstream: Upstream) -> None:
    """A body in an encoding the gateway cannot decode cannot be checked for secrets: it is not passed on."""
    if up.remaining_encoding:
        up.close()
        log.warning("upstream %s answered in an encoding that cannot be checked for secrets", upstream.name)
        raise UpstreamError(f"upstream {upstream.name!r} answered in an encoding the gateway cannot check")


async def _withhold(up: Response, upstream: Upstream) -> None:
    """An upstream 5xx: log (scrubbed) what it said, tell the client only that the upstream failed."""
    try:
        with upstream.errors:
            snippet = await up.content.read(LOGGED_ERROR_BODY)
    except Exception:
        snippet = b""
    log.warning(
        "upstream %s answered %s: %s", upstream.name, up.status,
        upstream.scrubber.scrub(snippet).decode("utf-8", "replace"),
    )
    up.close()
    raise UpstreamError(f"upstream {upstream.name!r} failed (status {up.status})")


async def _shaped(request, up, upstream, headers, rewriter, shape, rewrite_body) -> web.Response:
    with upstream.errors:
        body = await up.read(SHAPE_LIMIT + 1)  # a shaped body is held whole in memory: never an unbounded one
    if len(body) > SHAPE_LIMIT:
        up.close()
        log.warning("upstream %s sent more than %d bytes to a shaped forward: not relayed", upstream.name, SHAPE_LIMIT)
        raise UpstreamError(f"upstream {upstream.name!r} answered with a body too large to shape")
    if shape is not None and 200 <= up.status < 300:
        try:
            body = shape(body)
            headers["Content-Type"] = "application/json"
        except ValueError:
            log.warning("upstream %s sent a body that is not JSON: it was not shaped", upstream.name)
    if rewrite_body and rewriter is not None:
        body = rewriter.body(body, f"{request.scheme}://{request.host}")
    headers.popall("Content-Length", None)
    return web.Response(status=up.status, headers=headers, body=upstream.scrubber.scrub(body))


def _is_event_stream(up: Response) -> bool:
    return up.headers.get("Content-Type", "").startswith("text/event-stream")


async def _stream(request: web.Request, up: Response, upstream: Upstream,
                  headers: CIMultiDict[str], edit: LineRewriter | None = None) -> web.StreamResponse:
    headers.popall("Content-Length", None)
    if _is_event_stream(up):
        headers["Cache-Control"] = "no-cache, no-transform"
        headers["X-Accel-Buffering"] = "no"
    response = web.StreamResponse(status=up.status, headers=headers)
    finished = False
    try:
        await response.prepare(request)
        scrubber = upstream.scrubber
        if scrubber:
            stream = scrubber.stream()
            async for chunk in up.content.iter_any():
                if out := stream.feed(edit.feed(chunk) if edit else chunk):
                    await response.write(out)
            if edit and (out := stream.feed(edit.flush())):
                await response.write(out)
            if tail := stream.flush():
                await response.write(tail)
        else:
            async for chunk in up.content.iter_any():
                if out := edit.feed(chunk) if edit else chunk:
                    await response.write(out)
            if edit and (tail := edit.flush()):
                await response.write(tail)
        await response.write_eof()
        finished = True
    except (OSError, TimeoutError) as exc:
        # headers are already sent: all we can do is cut the connection so the client sees a truncated body
        log.warning("upstream %s failed mid-stream: %s", upstream.name, type(exc).__name__)
        request.transport and request.transport.close()
    finally:
        if finished:
            up.release()
        else:
            up.close()  # the client left or the upstream broke: stop the upstream call (and its quota)
    return response
