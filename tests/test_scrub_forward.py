"""Masking through a real forward and a real ``forward()`` handler, with upstreams that echo the key as other
encoders write it: .NET's and Gson's ``\\u`` escapes, Go's PathEscape, hex digits of mixed case; streamed in
7-byte chunks, so that every spelling is split across chunks somewhere."""

from __future__ import annotations

import json
import re
from urllib.parse import quote

from aiohttp import web
from upstream_support import QSECRET, Recorder, gateway

HANDLER = """
from gateway import forward

async def GET(req):
    up = await forward(req, "svc", "/echo")
    return {"got": await up.json()}
"""


def _escaped(text: str, chars: str, upper: bool) -> str:
    return "".join((f"\\u{ord(c):04X}" if upper else f"\\u{ord(c):04x}") if c in chars else c for c in text)


def _mixed_hex(text: str) -> str:
    flip = iter(range(10**6))
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower() if next(flip) % 2 else m.group(), text)


ECHOES = {  # QSECRET = "qk/TOPSECRET+ab=cd~Z98765": / + = change under every encoding
    "dotnet": _escaped(QSECRET, "+'\"&<>`", upper=True),
    "gson": _escaped(QSECRET, "<>&='", upper=False),
    "all-escaped": _escaped(QSECRET, "/+=", upper=False),
    "go-path": quote(QSECRET, safe="$&+:=@"),
    "mixed-hex": _mixed_hex(quote(QSECRET, safe="")),
    "masked-head": _escaped(QSECRET[:12], "/+", upper=True) + "****",
    "masked-tail": "****" + _escaped(QSECRET[-10:], "=", upper=False),
}


def no_fragment(text: str, secret: str = QSECRET) -> list[str]:
    """8+ first or last characters of the secret, raw: what a client reads once the JSON is decoded."""
    return [p for k in range(8, len(secret) + 1) for p in (secret[:k], secret[-k:]) if p in text]


async def echo(request: web.Request) -> web.StreamResponse:
    body = ("{" + ", ".join(f'"{name}": "{value}"' for name, value in ECHOES.items()) + "}").encode()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    for at in range(0, len(body), 7):
        await response.write(body[at : at + 7])
    return response


async def test_the_key_in_other_encoders_spellings_is_masked_in_a_streamed_forward(aiohttp_client, aiohttp_server,
                                                                                   tmp_path):
    up = Recorder()
    up.route("GET", "/base/echo", echo)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server))
    resp = await client.get("/api/svc/echo")
    assert resp.status == 200
    raw = await resp.read()
    data = json.loads(raw)  # what the browser sees: the escapes decoded
    assert set(data) == set(ECHOES)
    assert all("[REDACTED]" in value for value in data.values()), data
    assert not no_fragment(json.dumps(data, ensure_ascii=False)), data


async def test_the_key_in_other_encoders_spellings_never_reaches_a_handler_through_up_json(aiohttp_client,
                                                                                        aiohttp_server, tmp_path):
    up = Recorder()
    up.route("GET", "/base/echo", echo)
    client = await gateway(aiohttp_client, tmp_path, await up.serve(aiohttp_server), routes={"echo.py": HANDLER})
    resp = await client.get("/api/echo")
    assert resp.status == 200
    got = (await resp.json())["got"]
    assert set(got) == set(ECHOES)
    assert not no_fragment(json.dumps(got, ensure_ascii=False)), got
