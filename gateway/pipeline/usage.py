"""The tokens a model API says an answer used, read from its JSON body or, event by event, from its stream.

    {"usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}       -> 12   (Chat Completions)
    {"usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}}            -> 12   (Responses API)
    data: {"type": "response.completed", "response": {"usage": {...}}}                -> its usage (Responses stream)
    data: {"choices": [], "usage": {...}}        the usage-only chunk that ``stream_options.include_usage`` adds
"""

from __future__ import annotations

import json
import re
from typing import Any

_LINE_END = re.compile(rb"\r\n|\r|\n")
_HAS_USAGE = re.compile(rb'"usage"\s*:\s*\{').search  # a usage object, not the "usage": null of every other chunk
MAX_EVENT = 1024 * 1024  # an event longer than this is passed on unread (and its usage, if any, is missed)


def tokens_of(usage: Any) -> int | None:
    """The tokens a usage object counts: input + output, or ``total_tokens`` when that is more; None when it is not
    a usage object (a client is never charged less than the upstream reported)."""
    if not isinstance(usage, dict):
        return None
    counts = {name: value for name, value in usage.items()
              if isinstance(value, int) and not isinstance(value, bool) and value >= 0}
    prompt = counts.get("prompt_tokens", counts.get("input_tokens"))
    completion = counts.get("completion_tokens", counts.get("output_tokens"))
    total = counts.get("total_tokens")
    if prompt is None and completion is None and total is None:
        return None
    return max(total or 0, (prompt or 0) + (completion or 0))


def usage_in(doc: Any) -> int | None:
    """The tokens of a JSON answer or stream event: its ``usage``, or its ``response.usage`` (Responses API)."""
    if not isinstance(doc, dict):
        return None
    tokens = tokens_of(doc.get("usage"))
    if tokens is None and isinstance(doc.get("response"), dict):
        tokens = tokens_of(doc["response"].get("usage"))
    return tokens


def usage_of_body(body: bytes) -> int | None:
    try:
        return usage_in(json.loads(body))
    except (ValueError, RecursionError):  # not JSON (or not UTF-8): no usage to read
        return None


class EventWatch:
    """Reads an event stream as it passes for the usage it reports; with ``strip``, drops the usage-only chunk.

    Without ``strip`` every chunk goes on as it came. With it, the stream goes on event by event (an event is held
    until its blank line has arrived), so the usage-only chunk can be left out whole; an event that grows past
    ``MAX_EVENT`` is passed on as it is, unread. ``tokens`` is the last usage seen (None until one is).
    """

    def __init__(self, *, strip: bool) -> None:
        self.strip = strip
        self.tokens: int | None = None
        self._event = bytearray()  # the event being read, up to the last whole line
        self._rest = b""  # an unfinished line (or a lone CR that a LF may still follow)
        self._blind = False  # an event too long: nothing more is read, everything is passed on

    def feed(self, chunk: bytes) -> bytes:
        """Takes the next chunk; returns what goes on to the client now."""
        if self._blind:
            return chunk
        data = self._rest + chunk if self._rest else chunk
        out = bytearray()
        start = 0
        for match in _LINE_END.finditer(data):
            if match.group() == b"\r" and match.end() == len(data):
                break  # CR LF may be split across chunks: wait for the next one
            line = data[start:match.start()]
            self._event += data[start:match.end()]
            start = match.end()
            if not line:
                out += self._end_event()
        self._rest = data[start:]
        if len(self._event) + len(self._rest) > MAX_EVENT:
            self._blind = True
            held = bytes(self._event) + self._rest if self.strip else b""
            self._event.clear()
            self._rest = b""
            return bytes(out) + held if self.strip else chunk
        return bytes(out) if self.strip else chunk

    def flush(self) -> bytes:
        """The end of the stream: an unfinished last event is read too, and goes on unless it is the usage chunk."""
        if self._blind:
            return b""
        self._event += self._rest
        self._rest = b""
        out = self._end_event() if self._event else b""
        return out if self.strip else b""

    def _end_event(self) -> bytes:
        event = bytes(self._event)
        self._event.clear()
        if b'"usage"' not in event or not _HAS_USAGE(event):
            return event
        data = b"\n".join(line[5:].removeprefix(b" ") for line in _LINE_END.split(event) if line.startswith(b"data:"))
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            return event
        tokens = usage_in(doc)
        if tokens is None:
            return event
        self.tokens = tokens
        if self.strip and doc.get("choices") == []:
            return b""  # the chunk the gateway asked for on the client's behalf: the client did not
        return event


class BodyWatch:
    """Reads a JSON answer that comes in chunks (no length) for its usage, passing every chunk on as it came; a
    body past ``limit`` bytes is not kept, and its usage is not read."""

    def __init__(self, limit: int) -> None:
        self.tokens: int | None = None
        self._limit = limit
        self._parts: list[bytes] | None = []
        self._size = 0

    def feed(self, chunk: bytes) -> bytes:
        if self._parts is not None:
            self._size += len(chunk)
            if self._size > self._limit:
                self._parts = None
            else:
                self._parts.append(chunk)
        return chunk

    def flush(self) -> bytes:
        if self._parts is not None:
            self.tokens = usage_of_body(b"".join(self._parts))
            self._parts = None
        return b""
