"""GET /api -> a short index of the example routes (index.py answers its folder's own path)."""


async def GET(req):
    return {"routes": ["/api/user", "/api/post/[pid]", "/api/files/[...path]", "/api/docs/[[...path]]", "/api/echo"]}
