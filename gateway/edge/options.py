"""The gateway's own answer to OPTIONS: 204 with the route's ``Allow``, before client auth (it spends nothing).

A route module that exports OPTIONS (or one ``handler``) answers OPTIONS itself: then this step is not there, and
OPTIONS needs a client key like every other method the module answers.
"""

from __future__ import annotations

from aiohttp import web

from ..routing import Handler


def answer_options(allow: str):
    async def answer_options(request: web.Request, call_next: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return web.Response(status=204, headers={"Allow": allow})
        return await call_next(request)

    return answer_options
