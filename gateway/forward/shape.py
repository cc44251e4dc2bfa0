"""Reshape a JSON body, compiled once from a forward's ``response:``: ``drop`` fields, then ``select`` (JMESPath).

    drop: [base, main.humidity]     {"base": 1, "main": {"temp": 3, "humidity": 9}}  ->  {"main": {"temp": 3}}
    select: "{temp: main.temp}"     ->  {"temp": 3}
"""

from __future__ import annotations

import json
from typing import Any

import jmespath

from ..config import ResponseShape


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
