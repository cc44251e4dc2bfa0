"""GET /api/post/abc -> {"pid": "abc"}: [pid] in the file name is a path parameter."""


async def GET(req):
    return {"pid": req.match_info["pid"]}
