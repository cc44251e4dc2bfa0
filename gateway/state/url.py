"""``state: redis://…`` read at load: where Redis is and how to reach it, its password kept a Secret, never shown.

    redis://127.0.0.1:6379/0                       -> host 127.0.0.1, port 6379, database 0
    rediss://:${REDIS_PASSWORD}@cache:6380/2       -> TLS; the password never appears in what is shown
    redis://cache?timeout=250ms                    -> port 6379, database 0; Redis is "down" after 250 ms of silence
    rediss://cache?ca=/run/secrets/redis-ca.pem    -> TLS verified against this CA file (default: the system's)

``shown`` (``rediss://cache:6380/2``) is the only form that reaches a log line, ``gateway check`` or an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from ..secrets import Secret, redact
from ..units import parse_duration

DEFAULT_PORT = 6379
DEFAULT_TIMEOUT = 1.0  # seconds: a connect or a command slower than this means Redis is down (see shared.py)
ON_ERROR = ("local", "closed")
EXAMPLE = "redis://127.0.0.1:6379/0"
_AUTHORITY = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)")


@dataclass(frozen=True)
class StateConfig:
    """A Redis backend (SPEC §9). ``on_error``: what happens while it cannot be reached (local | closed)."""

    shown: str  # rediss://cache:6380/2: no user, no password
    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: Secret | None = None
    timeout: float = DEFAULT_TIMEOUT
    ca_file: str | None = None  # rediss: the CA bundle that signed the server's certificate
    on_error: str = "local"


def parse_state(text: str, on_error: str = "local") -> StateConfig | None:
    """``"memory"`` -> None (state in this process); a redis(s):// URL -> its StateConfig.

    Raises ValueError with one line saying what is wrong, quoting the URL without its user and password.
    """
    if text.strip() == "memory":
        return None
    try:
        return _parse(text.strip(), on_error)
    except ValueError as exc:  # the password may also stand elsewhere in the URL (a query): never quote it
        raise ValueError(redact(str(exc), [unquote(_userinfo(text.strip()).partition(":")[2])])) from None


def _parse(text: str, on_error: str) -> StateConfig:
    shown = _without_userinfo(text)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:  # a port out of range or not a number; an unclosed IPv6 bracket
        raise ValueError(f"{shown!r}: {_reason(exc)}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{shown!r}: expected memory or a redis:// or rediss:// URL such as {EXAMPLE}")
    if not parts.hostname:
        raise ValueError(f"{shown!r}: the URL names no host: write it as {EXAMPLE}")
    if parts.fragment:
        raise ValueError(f"{shown!r}: a Redis URL has no #fragment: remove it")
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit() or "/" in parts.path.strip("/"):
        raise ValueError(f"{shown!r}: the database must be a number, as in {EXAMPLE}")
    options = _options(parts.query, shown, tls=parts.scheme == "rediss")
    host = parts.hostname
    port = DEFAULT_PORT if port is None else port
    if port == 0:
        raise ValueError(f"{shown!r}: {_reason(ValueError('port'))}")
    db = int(db_text)
    clean = f"{parts.scheme}://{'[' + host + ']' if ':' in host else host}:{port}/{db}"
    password = unquote(parts.password) if parts.password else None
    return StateConfig(
        shown=clean, host=host, port=port, db=db, tls=parts.scheme == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=Secret(password) if password else None, on_error=on_error, **options,
    )


def _options(query: str, shown: str, *, tls: bool) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "timeout":
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                raise ValueError(f"{shown!r}: timeout={value!r}: {exc}") from None
            if not 0.01 <= seconds <= 60:
                raise ValueError(f"{shown!r}: timeout={value!r} must be between 10ms and 60s")
            out["timeout"] = seconds
        elif name == "ca" and tls:
            if not value:
                raise ValueError(f"{shown!r}: ca= needs the path of a CA file")
            out["ca_file"] = value
        elif name == "ca":
            raise ValueError(f"{shown!r}: ca= applies to rediss:// (TLS) only")
        else:
            raise ValueError(f"{shown!r}: unknown option {name!r}: known options are timeout and (rediss) ca")
    return out


def _userinfo(text: str) -> str:
    """``redis://u:pw@h:1/0`` -> ``u:pw``; "" when there is none (split as urlsplit does: the authority ends at the
    first / ? or #, and its user information at its last @)."""
    match = _AUTHORITY.match(text)
    return match[2].rpartition("@")[0] if match else ""


def _without_userinfo(text: str) -> str:
    """``redis://u:pw@h:1/0`` -> ``redis://h:1/0``."""
    match = _AUTHORITY.match(text)
    if not match:
        return text if "@" not in text else "…" + text.rpartition("@")[2]
    return f"{match[1]}{match[2].rpartition('@')[2]}{text[match.end():]}"


def _reason(exc: ValueError) -> str:
    text = str(exc)
    if "Port" in text or "port" in text:
        return "the port must be a number between 1 and 65535"
    return f"not a valid URL ({text}): write it as {EXAMPLE}"
