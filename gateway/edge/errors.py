"""The ``render_errors`` step, outermost on every route: whatever is raised below it becomes one JSON answer.

The one place where exceptions become responses: the gateway's own errors with their status and code, aiohttp's
HTTP exceptions with a default body as JSON, anything else as a 500 with no traceback (except under ``gateway
dev``) while the traceback, scrubbed of secrets, goes to the log.
"""

from __future__ import annotations

import logging
import traceback

from aiohttp import web

from ..errors import (
    GatewayError,
    InternalError,
    PayloadTooLarge,
    error_response,
    has_default_body,
    render,
    render_http_exception,
)
from ..mask.scrub import Scrubber
from ..routing import Handler

log = logging.getLogger("gateway")


def render_errors(scrubber: Scrubber, *, debug: bool = False, style: str = "gateway"):
    """``style``: the error body's shape (``errors:`` of the route's upstream: gateway or openai)."""
    async def render_errors(request: web.Request, call_next: Handler) -> web.StreamResponse:
        try:
            return await call_next(request)
        except GatewayError as exc:
            if isinstance(exc, InternalError):  # a handler's mistake (forward() misused): the log says which
                log.error("%s %s: %s", request.method, request.rel_url.path, scrubber.scrub_text(exc.message))
            return render(exc, style=style)
        except web.HTTPRequestEntityTooLarge:
            limit = request.client_max_size
            return render(PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes"), style=style)
        except web.HTTPException as exc:
            if exc.status >= 400 and has_default_body(exc):
                return render_http_exception(exc, style=style)
            raise  # a redirect, or an error with a body of the handler's own: aiohttp sends it as is
        except Exception as exc:  # CancelledError is a BaseException: a client that left is not an error
            # a handler's exception may quote a secret it read from the environment: scrub before it is shown
            trace = scrubber.scrub_text("".join(traceback.format_exception(exc)))
            log.error("unhandled error in %s %s\n%s", request.method, request.rel_url.path, trace.rstrip())
            if debug:
                return error_response(500, "internal_error", trace, style=style)
            return render(InternalError(), style=style)

    return render_errors
