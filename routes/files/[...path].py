"""GET /api/files/a/b -> {"path": "a/b"}: [...path] catches one or more segments (not /api/files itself)."""


async def GET(req):
    path = req.match_info["path"]
    return {"path": path, "segments": path.split("/")}
