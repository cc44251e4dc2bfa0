"""A forward's ``guard:`` section (spend guards for model APIs, SPEC §11), read like any section of the config:
every problem recorded with its YAML path, none raised."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config_reader import show_value
from .units import Rate, parse_budget
from .yamlsource import YamlPath

if TYPE_CHECKING:
    from .config_reader import ValueReader

# the spellings of one limit, the most output tokens a model may produce: capping one caps them all (guard.py)
TOKEN_LIMITS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
WHOLE_NUMBERS = (*TOKEN_LIMITS, "n", "best_of")  # guard.cap fields that only take whole numbers >= 1
GUARDED_METHODS = ("POST", "PUT", "PATCH")  # the methods that carry the JSON bodies a guard checks


@dataclass(frozen=True)
class GuardConfig:
    """A forward's ``guard:`` (SPEC §11): rules for its JSON request bodies, and a token budget per client."""

    allow: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # top-level field -> allowed values (None: may be absent)
    cap: tuple[tuple[str, int | float], ...] = ()  # numeric field -> its highest value, set when absent
    budget: Rate | None = None  # model tokens per client identity and period


def read_guard(reader: ValueReader, value: Any, path: YamlPath, methods: tuple[str, ...] | None
               ) -> GuardConfig | None:
    """``guard: {allow: {model: [a, b]}, cap: {max_tokens: 512}, budget: 200000/day}`` (SPEC §11)."""
    raw = reader.mapping(value, path, ("allow", "cap", "budget"))
    if not isinstance(value, dict | None):
        return None
    if methods is not None and (others := [m for m in methods if m not in GUARDED_METHODS]):
        reader.fail(path, f"a guard checks JSON request bodies, which {', '.join(others)} requests do not carry: "
                        f"give this forward methods: [POST] (or put {', '.join(others)} on another forward)")
    allow = _allow(reader, raw.get("allow"), (*path, "allow"))
    cap = _cap(reader, raw.get("cap"), (*path, "cap"))
    budget = reader.converted(raw["budget"], (*path, "budget"), parse_budget) if "budget" in raw else None
    if budget is not None and not any(name in TOKEN_LIMITS for name, _ in cap):
        reader.fail((*path, "budget"), "a budget needs a cap on the tokens a request may produce, or its largest "
                                     "cost is unknown: add cap: {max_tokens: 512} (or max_completion_tokens, "
                                     "max_output_tokens)")
    return GuardConfig(allow, cap, budget)

def _allow(reader: ValueReader, value: Any, path: YamlPath) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        reader.fail(path, f"expected a mapping of JSON fields to lists of allowed values, got {show_value(value)}")
        return ()
    out = []
    for name, listed in value.items():
        item_path = (*path, str(name))
        if not isinstance(listed, list) or not listed:
            reader.fail(item_path, f"expected a list of the values allowed, e.g. [gpt-4o-mini], got "
                                 f"{show_value(listed)}")
            continue
        values: list[Any] = []
        for i, item in enumerate(listed):
            if isinstance(item, str):
                item = reader.string(item, (*item_path, i))
            elif not isinstance(item, bool | int | float | None) or isinstance(item, float) and \
                    not math.isfinite(item):
                reader.fail((*item_path, i), f"expected a string, number, true, false or null, got "
                                           f"{show_value(item)}")
                continue
            values.append(item)
        out.append((str(name), tuple(values)))
    return tuple(out)

def _cap(reader: ValueReader, value: Any, path: YamlPath) -> tuple[tuple[str, int | float], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        reader.fail(path, f"expected a mapping of JSON fields to their highest value, got {show_value(value)}")
        return ()
    out = []
    for name, limit in value.items():
        name = str(name)
        whole = name in WHOLE_NUMBERS
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not math.isfinite(limit) or \
                limit < (1 if whole else 0) or whole and not isinstance(limit, int):
            need = "a whole number >= 1" if whole else "a number >= 0"
            reader.fail((*path, name), f"expected {need}, got {show_value(limit)}")
            continue
        out.append((name, limit))
    return tuple(out)
