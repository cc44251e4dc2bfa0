"""GET /api/user -> {"name": "John Doe"}: a dict becomes a 200 JSON response."""


async def GET(req):
    return {"name": "John Doe"}
