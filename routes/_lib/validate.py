"""Private helper (leading underscore: not a route). Route modules import it as `from _lib.validate import ...`."""

from aiohttp import web


def require_fields(data, fields):
    """Raise a 400 naming the first missing or empty field."""
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text='{"error": "bad_request", "message": "expected a JSON object"}',
                                 content_type="application/json")
    for field in fields:
        if not isinstance(data.get(field), str) or not data[field].strip():
            raise web.HTTPBadRequest(
                text=f'{{"error": "bad_request", "message": "field {field!r} is required"}}',
                content_type="application/json",
            )
