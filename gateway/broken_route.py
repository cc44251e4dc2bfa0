"""Under ``gateway dev``, a route module that fails to import answers 500 with its error; the other routes serve.

``gateway serve`` and ``gateway check`` never mount one: there an import error stops start-up (app.build_table).
"""

from __future__ import annotations

from aiohttp import web

from .config import METHODS
from .discovery import RouteFile
from .errors import error_response
from .keys import Resources
from .paths import pattern_of
from .routing import Handler


class BrokenRoute:
    """Stands in for a route module that cannot be used, at its own path, until the file is fixed."""

    kind = "file"
    websocket = False
    public = False  # the module's config is unknown: the route stays behind the client keys, as most routes are
    auth = None
    own_options = True  # OPTIONS gets the error too: the module might have answered it
    receives = None
    exposes: tuple[str, ...] = ()
    upstream = None
    rate_limit = None
    cache = None
    budgeted = False

    def __init__(self, route: RouteFile, problem: str, prefix: str) -> None:
        self.segments = route.segments
        self.pattern = pattern_of(prefix, route.segments)
        self.target = self.source = route.display
        self.problem = problem  # "routes/x.py: failed to import: SyntaxError: ... (x.py, line 3)"
        self.methods = tuple(sorted(METHODS))
        self.allow = ", ".join(self.methods)

    def terminal(self, res: Resources) -> Handler:
        # an import error may quote what the module read from the environment: never show a secret
        message = res.scrubber.scrub_text(f"{self.problem}; fix the file and the route is served again")

        async def broken_route(request: web.Request) -> web.StreamResponse:
            return error_response(500, "internal_error", message)  # answered, not raised: logged once, at start

        return broken_route
