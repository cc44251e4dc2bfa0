"""GET /api/docs and /api/docs/a/b: [[...path]] catches zero or more segments; zero gives path == ""."""


async def GET(req):
    path = req.match_info["path"]
    return {"page": path or "index"}
