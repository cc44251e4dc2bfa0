"""POST /api/echo with {"message": "hi"} -> 201 {"echo": "hi"}: a POST handler that validates its JSON body.

Invalid JSON gets 400 bad_request from the gateway; a missing field gets the 400 raised by the helper.
Other methods get 405 with Allow: OPTIONS, POST.
"""

from _lib.validate import require_fields

config = {"max_body": "16kb"}  # per-route override of server.max_body -> 413 past it


async def POST(req):
    data = await req.json()
    require_fields(data, ["message"])
    return {"echo": data["message"]}, 201
