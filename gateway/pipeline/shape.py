"""Reshape a JSON body, compiled once from a forward's ``response:``: ``drop`` fields, then ``select`` (JMESPath).

    drop: [base, main.humidity]     {"base": 1, "main": {"temp": 3, "humidity": 9}}  ->  {"main": {"temp": 3}}
    select: "{temp: main.temp}"     ->  {"temp": 3}
"""

from __future__ import annotations

import json
import logging
from typing import Any

import jmespath

from ..config import ResponseShape
from .values import Answer, Call, OutRequest, read_whole

log = logging.getLogger("gateway.upstream")


def shape(spec: ResponseShape | None, *, limit: int):
    """The ``response:`` step of a forward: a 2xx JSON answer is read whole (at most ``limit`` bytes) and reshaped;
    anything else passes as it came. None when the forward does not shape."""
    if spec is None:
        return None
    shaper = Shaper(spec)

    async def shape(out: OutRequest, call_next: Call) -> Answer:
        answer = await call_next(out)
        body = await read_whole(answer, limit, "to shape it")
        if 200 <= answer.status < 300:
            try:
                body = shaper(body)
                answer.headers["Content-Type"] = "application/json"
            except ValueError:
                log.warning("upstream %s sent a body that is not JSON: it was not shaped", answer.upstream)
        answer.body = body
        return answer

    return shape


class Shaper:
    def __init__(self, shape: ResponseShape) -> None:
        self._drop = [tuple(field.split(".")) for field in shape.drop]
        self._select = jmespath.compile(shape.select) if shape.select else None

    def __call__(self, body: bytes) -> bytes:
        """Raises ValueError when the body is not JSON."""
        data = json.loads(body)
        for path in self._drop:
            _drop(data, path)
        if self._select is not None:
            data = self._select.search(data)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _drop(data: Any, path: tuple[str, ...]) -> None:
    if isinstance(data, list):
        for item in data:
            _drop(item, path)
    elif isinstance(data, dict):
        if len(path) == 1:
            data.pop(path[0], None)
        elif path[0] in data:
            _drop(data[path[0]], path[1:])
