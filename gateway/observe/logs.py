"""Log set-up: JSON lines (python-json-logger), access log on stdout, the rest on stderr; readable lines for dev.

    {"time": "2025-01-02T03:04:05.678Z", "level": "INFO", "logger": "gateway.access", "pid": 7, "message": "GET ...",
     "request_id": "9f2c...", "method": "GET", "route": "/api/user", "status": 200, "duration_ms": 1.4, ...}

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
from typing import Any

from pythonjsonlogger.json import JsonFormatter

ACCESS = "gateway.access"
FIELDS = "fields"  # the attribute of an access record holding its fields: log.info(..., extra={FIELDS: {...}})
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "fields"}


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
        fields = record.__dict__.get(FIELDS)
        if fields is None:
            return super().format(record)
        # an access line (one per request): its fields come as one dict, and python-json-logger's general path
        # (merging every extra, its own encoder) would cost most of the line; the same object, written directly
        line = {"time": _utc_text(record.created), "level": record.levelname, "logger": record.name,
                "pid": record.process, "message": record.getMessage(), **fields}
        return json.dumps(self.process_log_record(line), default=str)

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
        fields = {**vars(record), **vars(record).get(FIELDS, {})}.items()
        extra = " ".join(f"{k}={v}" for k, v in fields if k not in _RECORD_FIELDS and v is not None and v is not False)
        when = _utc(record.created).astimezone().strftime("%H:%M:%S")
        line = f"{when} {record.levelname:<7} {record.getMessage()}" + (f"  {extra}" if extra else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return self.scrub(line)


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


__all__ = ["ACCESS", "FIELDS", "DevLines", "JsonLines", "setup_logging", "use_scrubber"]
