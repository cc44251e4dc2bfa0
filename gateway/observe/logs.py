"""Log set-up: JSON lines (python-json-logger), access log on stdout, the rest on stderr; readable lines for dev.

    {"time":"2025-01-02T03:04:05.678Z","level":"INFO","logger":"gateway.access","pid":7,"message":"GET ...",
     "request_id":"9f2c...","method":"GET","route":"/api/user","status":200,"duration_ms":1.4,...}

Every string in a record passes through ``scrub`` just before it is written, whatever logged it: a handler's
exception text or a library's message can quote a secret, and this is the one place all of them go through.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import orjson
from pythonjsonlogger.json import JsonFormatter

ACCESS = "gateway.access"
LINES = "lines"  # an access record's attribute: the lines it carries, one dict per request (access.py)
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", LINES}
_LINE_HEAD = frozenset({"time", "level", "logger", "pid", "message"})  # an access line's fields DevLines shows apart
# the stdlib's own C encoder, made once: json.dumps(default=...) builds a JSONEncoder and its C encoder per call,
# half the cost of an access line; the same output (ASCII, ", " and ": ", default=str)
_encoder = json.JSONEncoder(default=str)
_encode_c = c_make_encoder(None, str, encode_basestring_ascii, None, ": ", ", ", False, False, True) \
    if c_make_encoder is not None else None


def _encode(line: dict[str, Any]) -> str:
    """One access line as ASCII JSON. orjson writes it in about a tenth of the stdlib encoder's time (the largest
    cost of an access line); the stdlib's encoder takes what orjson refuses (a lone surrogate from a route file's
    name, an integer past 64 bits) and a line with non-ASCII text, which it escapes, as every other line is."""
    try:
        text = orjson.dumps(line, default=str).decode()
    except orjson.JSONEncodeError:
        text = ""
    if text and text.isascii():
        return text
    return "".join(_encode_c(line, 0)) if _encode_c is not None else _encoder.encode(line)


def _no_scrub(text: str) -> str:
    return text


class JsonLines(JsonFormatter):
    """One JSON object per record: time (UTC, ms), level, logger, message, then the record's ``extra`` fields."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",  # process: which worker wrote it
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
        )
        self.scrub: Callable[[str], str] = _no_scrub

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - stdlib name
        return _utc_text(record.created)

    def format(self, record: logging.LogRecord) -> str:
        lines = record.__dict__.get(LINES)
        if lines is None:
            return super().format(record)
        # access lines (one per request, several per record): each already one dict in the shape of every other
        # line, and python-json-logger's general path (merging every extra, its own encoder) would cost most of
        # it; the same objects, encoded directly, then scrubbed together: one scan for the whole batch
        pid = record.process
        lines = [{**line, "time": _utc_text(line["time"]), "pid": pid} for line in lines]  # type: ignore[arg-type]
        text = "\n".join(map(_encode, lines))
        if self.scrub is _no_scrub or self.scrub(text) == text:
            return text
        # the Scrubber knows JSON's escapes, but a secret's digits inside a number must not break the line either:
        # redact string values one by one, as any other record's
        return "\n".join(_encode(self.process_log_record(line)) for line in lines)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        if self.scrub is _no_scrub:
            return log_data
        joined = "\0".join(value for value in log_data.values() if isinstance(value, str))
        if self.scrub(joined) == joined:  # one scan of the whole line: the common case, nothing to redact
            return log_data
        scrub = self.scrub
        return {key: scrub(value) if isinstance(value, str) else value for key, value in log_data.items()}


class DevLines(logging.Formatter):
    """``gateway dev``: one readable line per record, ``12:00:01 INFO message key=value ...`` (a traceback follows)."""

    def __init__(self) -> None:
        super().__init__()
        self.scrub: Callable[[str], str] = _no_scrub

    def format(self, record: logging.LogRecord) -> str:
        lines = record.__dict__.get(LINES)
        if lines is not None:  # access lines: one readable line each
            return self.scrub("\n".join(
                _readable(line["time"], line["level"], line["message"],
                          {k: v for k, v in line.items() if k not in _LINE_HEAD})
                for line in lines))
        fields = {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}
        line = _readable(record.created, record.levelname, record.getMessage(), fields)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return self.scrub(line)


def _readable(created: float, level: str, message: str, fields: dict[str, Any]) -> str:
    """``12:00:01 INFO    GET /api/user 200  status=200 duration_ms=1.2 ...``: what is set, none of what is not."""
    extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and v is not False)
    when = _utc(created).astimezone().strftime("%H:%M:%S")
    return f"{when} {level:<7} {message}" + (f"  {extra}" if extra else "")


def _utc(created: float) -> datetime:
    return datetime.fromtimestamp(created, tz=UTC)


_second: list[object] = [None, ""]  # the last whole second formatted, and its text: one strftime a second


def _utc_text(created: float) -> str:
    """``1714560005.678`` -> ``"2024-05-01T10:40:05.678Z"``."""
    whole = int(created)
    if _second[0] != whole:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((created - whole) * 1000):03d}Z"


def setup_logging(*, dev: bool = False, level: int = logging.INFO, access: bool = True) -> JsonLines | DevLines:
    """Route every log record through one formatter: the access log to stdout, everything else to stderr.

    Returns the formatter, whose ``scrub`` the caller sets once the config (and so the secrets) is known.
    """
    # what no line shows is not worked out per record (the logging HOWTO's "Optimization" list): a line per request
    # makes this count
    logging._srcfile = None  # caller's file, function and line
    logging.logThreads = False
    logging.logMultiprocessing = False
    formatter: JsonLines | DevLines = DevLines() if dev else JsonLines()
    errors = logging.StreamHandler(sys.stderr)
    errors.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(errors)
    root.setLevel(level)
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(formatter)
    lines = logging.getLogger(ACCESS)
    for old in list(lines.handlers):
        lines.removeHandler(old)
    lines.addHandler(out)
    lines.propagate = False  # stdout only: the access log is data, the rest is diagnostics
    lines.setLevel(logging.INFO if access else logging.WARNING)  # server.access_log: false -> no line per request
    logging.getLogger("aiohttp.access").disabled = True  # the gateway writes its own access lines
    return formatter


def use_scrubber(scrub: Callable[[str], str]) -> None:
    """From now on every string the gateway's formatters write passes through ``scrub``."""
    for logger in (logging.getLogger(), logging.getLogger(ACCESS)):
        for handler in logger.handlers:
            if isinstance(handler.formatter, JsonLines | DevLines):
                handler.formatter.scrub = scrub


__all__ = ["ACCESS", "LINES", "DevLines", "JsonLines", "setup_logging", "use_scrubber"]
