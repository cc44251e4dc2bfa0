"""The ``guard`` step of a model API's forward (SPEC §11): its JSON body checked, capped and budgeted before it goes.

    guard: {allow: {model: [gpt-4o-mini]}, cap: {max_tokens: 512}, budget: 200000/day}
    {"model": "gpt-4o", ...}                         -> 400 bad_request (model 'gpt-4o' is not allowed: ...)
    {"model": "gpt-4o-mini", "messages": [...]}      -> upstream gets {..., "max_tokens": 512}
    {"model": "gpt-4o-mini", "max_completion_tokens": 100000, ...}  -> upstream gets max_completion_tokens: 512

What goes upstream is the body the guard checked, serialised again: a key twice in one object, NaN or Infinity,
a body that is not UTF-8 or not a JSON object are refused, so no upstream parser can read something else in it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Mapping
from typing import Any

from ..config_guard import TOKEN_LIMITS, WHOLE_NUMBERS, GuardConfig
from ..errors import BadRequest
from ..state import State
from .budget import Budget
from .values import Answer, Call, OutRequest

SHOWN = 40  # characters of a refused value repeated in an error message
JSON_TYPES = ("application/json",)  # and any */*+json


def guard(spec: GuardConfig | None, state: State | None, *, scope: str, limit: int):
    """The step checking a forward's request bodies against ``spec``; None when the forward has no ``guard:``.

    ``scope`` names the forward (budgets are counted per forward and client); ``limit`` bounds the bytes of a
    chunked answer kept to read its usage."""
    if spec is None:
        return None
    if spec.budget is not None and state is None:
        raise ValueError("a guard with a budget needs the gateway's state")
    rules = Rules(spec)
    budget = Budget(spec.budget, state, scope, limit=limit) if spec.budget is not None and state is not None else None

    async def guard(out: OutRequest, call_next: Call) -> Answer:
        _check_content_type(out.headers)
        data = parse_object(await _read(out.body))
        rules(data)
        strip = budget.prepare(data) if budget is not None else False
        body = encode(data)
        out.body = body
        extra = {name: value for name, value in out.extra.items() if name.lower() != "content-length"}
        if "Content-Type" not in out.headers:
            extra["Content-Type"] = "application/json"
        out.extra = extra
        if budget is None:
            return await call_next(out)
        return await budget.spend(out, budget.cost(largest(data), copies(data), len(body)), strip, call_next)

    return guard


class Rules:
    """``allow`` and ``cap``, compiled once: ``rules(data)`` refuses (BadRequest) or caps ``data`` in place."""

    def __init__(self, spec: GuardConfig) -> None:
        self.allow = spec.allow
        self.cap = [(name, limit) for name, limit in spec.cap if name not in TOKEN_LIMITS]
        family = [(name, limit) for name, limit in spec.cap if name in TOKEN_LIMITS]
        self.tokens = min((limit for _, limit in family), default=None)  # one limit, whichever spelling is used
        # when the client sent none: the configured spelling; of several, the one OpenAI takes for every model
        self.spelling = next((name for name in TOKEN_LIMITS if name in dict(family)), None)

    def __call__(self, data: dict[str, Any]) -> None:
        for name, allowed in self.allow:
            value = data.get(name)
            if not any(_same(value, item) for item in allowed):
                what = f"{name} {_show(value)}" if name in data else f"{name} (missing)"
                raise BadRequest(f"{what} is not allowed here: use one of {_show_list(allowed)}")
        for name, limit in self.cap:
            value = number(data, name)
            if value is None or value > limit:
                data[name] = limit
        if self.tokens is None:
            return
        sent = [name for name in TOKEN_LIMITS if number(data, name) is not None]
        for name in TOKEN_LIMITS:
            if name in data and data[name] is None:
                del data[name]  # null means "no limit" to OpenAI; and it rejects two spellings set at once
        for name in sent:
            data[name] = min(data[name], self.tokens)
        if not sent and self.spelling is not None:
            data[self.spelling] = self.tokens


def number(data: dict[str, Any], name: str) -> int | float | None:
    """The client's value of a numeric field (None when absent or null); anything but a number >= 0 (a whole one
    for token counts, ``n`` and ``best_of``) is refused with 400, before the upstream can read it its own way."""
    value = data.get(name)
    if value is None:
        return None
    whole = name in WHOLE_NUMBERS
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or whole and \
            not isinstance(value, int):
        need = "a whole number" if whole else "a number"
        raise BadRequest(f"{name} must be {need} >= 0, not {_show(value)}")
    return value


def largest(data: dict[str, Any]) -> int:
    """The most output tokens a request may produce (after the caps, one spelling at least is set)."""
    return int(max((number(data, name) or 0 for name in TOKEN_LIMITS), default=0))


def copies(data: dict[str, Any]) -> int:
    """How many answers a request asks for at once: ``n`` choices (or ``best_of``, legacy completions)."""
    return int(max(1, number(data, "n") or 1, number(data, "best_of") or 1))


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; anything else is the client's bad request (the message says what is wrong)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body must be JSON encoded as UTF-8") from None
    try:
        data = json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError says where, never what: no client text is repeated
        where = f": {exc.msg} at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise BadRequest(f"the body is not valid JSON{where}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the body must be a JSON object, not {_kind(data)}")
    return data


def encode(data: dict[str, Any]) -> bytes:
    """What goes upstream: compact JSON, UTF-8 (a lone surrogate such as ``"\\ud800"`` cannot be, so: 400)."""
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError:
        raise BadRequest("the body holds a string that is not valid Unicode (a lone surrogate)") from None
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply") from None


async def _read(body: bytes | AsyncIterable[bytes] | None) -> bytes:
    """The client's whole body (its stream stops at max_body with 413)."""
    if body is None or isinstance(body, bytes):
        return body or b""
    return b"".join([chunk async for chunk in body])


def _check_content_type(headers: Mapping[str, str]) -> None:
    getall = getattr(headers, "getall", None)
    types = getall("Content-Type", []) if getall else [headers[name] for name in headers if name.lower() ==
                                                          "content-type"]
    if not types:
        return
    if len(types) > 1:
        raise BadRequest("send one Content-Type: application/json, not several")
    media, *params = types[0].split(";")
    media = media.strip().lower()
    if media not in JSON_TYPES and not (media.endswith("+json") and "/" in media):
        raise BadRequest(f"this endpoint takes a JSON body: send Content-Type: application/json, not {_show(media)}")
    for param in params:
        name, _, charset = param.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise BadRequest("the body must be JSON encoded as UTF-8 (charset=utf-8)")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """One object of the body: a key given twice is refused (upstream parsers differ on which one they keep)."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise BadRequest(f"the key {_show(twice)} appears twice in one JSON object: send it once")
    return data


def _no_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not a JSON number: send a finite number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BadRequest(f"the number {_show(text)} is too large")
    return value


def _same(value: Any, allowed: Any) -> bool:
    """Equal and of the same kind: ``true`` is not ``1``, ``"1"`` is not ``1``; ``1`` is ``1.0``; None is a
    missing field or null."""
    if isinstance(value, bool) or isinstance(allowed, bool):
        return value is allowed
    if isinstance(value, int | float) and isinstance(allowed, int | float):
        return value == allowed
    return type(value) is type(allowed) and value == allowed


def _show(value: Any) -> str:
    """A client's value in a message, never long: ``'gpt-4o'``, ``100000``, ``an object``."""
    if isinstance(value, dict | list):
        return _kind(value)
    if isinstance(value, str):
        return repr(value[:SHOWN]) + ("..." if len(value) > SHOWN else "")
    text = json.dumps(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def _show_list(values: tuple[Any, ...]) -> str:
    return ", ".join("null (or leave it out)" if v is None else v if isinstance(v, str) else json.dumps(v)
                     for v in values)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "true or false"}.get(
        type(value), "null" if value is None else "a number")
