"""Parse the config's human units: durations (10s), sizes (1mb) and rates (30/minute)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, None: 1}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour)\s*$")
_RATE_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
_BUDGET = re.compile(r"^\s*(\d+)\s*/\s*(minute|hour|day)\s*$")
_BUDGET_UNITS = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests per ``period`` seconds, e.g. ``30/minute`` -> Rate(30, 60.0)."""

    count: int
    period: float

    def __str__(self) -> str:
        unit = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}[self.period]
        return f"{self.count}/{unit}"


def parse_duration(value: object) -> float:
    """``"250ms"`` -> 0.25, ``"5m"`` -> 300.0, ``10`` -> 10.0 (seconds)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 250ms, 10s, 5m, 1h or a number of seconds")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        if not math.isfinite(value):  # YAML's .inf / .nan
            raise ValueError("expected a duration like 250ms, 10s, 5m, 1h or a number of seconds")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError("expected a duration like 250ms, 10s, 5m, 1h or a number of seconds")
    return float(match[1]) * _DURATION_UNITS[match[2]]


def parse_size(value: object) -> int:
    """``"512kb"`` -> 524288, ``"1mb"`` -> 1048576, ``100`` -> 100 (bytes)."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 512kb, 1mb or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError("expected a size like 512kb, 1mb or a number of bytes")
    return int(float(match[1]) * _SIZE_UNITS[match[2] and match[2].lower()])


def parse_rate(value: object) -> Rate:
    """``"30/minute"`` -> Rate(30, 60.0)."""
    match = _RATE.match(str(value)) if isinstance(value, str) else None
    if not match or int(match[1]) < 1:
        raise ValueError("expected a rate like 30/minute (N/second, N/minute or N/hour, N >= 1)")
    return Rate(int(match[1]), _RATE_UNITS[match[2]])


def parse_budget(value: object) -> Rate:
    """A token budget: ``"200000/day"`` -> Rate(200000, 86400.0); per minute, hour or day."""
    match = _BUDGET.match(str(value)) if isinstance(value, str) else None
    if not match or int(match[1]) < 1:
        raise ValueError("expected a budget like 200000/day (N/minute, N/hour or N/day, N >= 1)")
    return Rate(int(match[1]), _BUDGET_UNITS[match[2]])
