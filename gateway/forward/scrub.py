"""Replace every secret value in upstream output with ``[REDACTED]``, also when it arrives split across chunks.

What counts as a secret's appearance, for each secret value and each of its *forms* (raw, URL-encoded the ways
clients and servers encode a query or a path, JSON-escaped): the whole value, and any fragment of 8 or more of its
first or last characters — APIs that echo a masked key (``sk-live-TOPSEC****cdef``) leak exactly such fragments.
A fragment always ends on a whole encoded character (never inside ``%2B`` or a UTF-8 sequence), so a scrubbed
body stays valid UTF-8. Overlapping appearances become one ``[REDACTED]``; adjacent ones stay two.

Scanning searches each 8-byte needle with StringZilla's SIMD ``find`` (about 15x ``bytes.find`` on JSON, which
made scrubbing cost as much as the whole proxying of a 1 MiB body); only around a hit is a match extended.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from urllib.parse import quote, quote_plus

from stringzilla import find as _find  # (haystack, needle, start) -> index or -1, like bytes.find

REDACTED = b"[REDACTED]"
FRAGMENT = 8

_PERCENT = re.compile(r"%[0-9A-F]{2}")
_ENCODINGS: tuple[Callable[[str], str], ...] = (
    lambda c: c,
    lambda c: quote(c, safe=""),
    lambda c: quote(c, safe="/"),  # a path segment
    lambda c: quote_plus(c, safe=""),  # urlencode()
    lambda c: quote_plus(c, safe="/:@?"),  # yarl/aiohttp query values: how the gateway itself sends a key
    lambda c: json.dumps(c, ensure_ascii=False)[1:-1],
    lambda c: json.dumps(c)[1:-1],  # \u00e9
    lambda c: json.dumps(c)[1:-1].replace("/", "\\/"),  # PHP's json_encode
)


class _Form:
    """One encoded form of a secret, and which of its prefix/suffix lengths (in bytes) count as an appearance."""

    __slots__ = ("value", "prefix", "suffix")

    def __init__(self, value: bytes) -> None:
        self.value = value
        # prefix[n] / suffix[n]: the longest counted prefix / suffix of at most n bytes (0: none)
        self.prefix = [0] * (len(value) + 1)
        self.suffix = [0] * (len(value) + 1)

    def allow(self, pieces: list[bytes]) -> None:
        """Count the whole form, and its fragments of FRAGMENT or more encoded characters."""
        total = len(self.value)
        ends = [0]
        for piece in pieces:
            ends.append(ends[-1] + len(piece))
        chars = len(pieces)
        for k in range(min(FRAGMENT, chars), chars + 1):
            self.prefix[ends[k]] = ends[k]
            self.suffix[total - ends[chars - k]] = total - ends[chars - k]

    def seal(self) -> None:
        for table in (self.prefix, self.suffix):
            for n in range(1, len(table)):
                table[n] = table[n] or table[n - 1]


class Scrubber:
    def __init__(self, secrets: Iterable[str]) -> None:
        forms: dict[bytes, _Form] = {}
        for secret in secrets:
            if not secret:
                continue
            for encode in _ENCODINGS:
                texts = [encode(c) for c in secret]
                variants = [texts]
                if any("%" in t for t in texts):
                    variants.append([_PERCENT.sub(lambda m: m.group().lower(), t) for t in texts])
                for variant in variants:
                    pieces = [t.encode() for t in variant]
                    value = b"".join(pieces)
                    forms.setdefault(value, _Form(value)).allow(pieces)
        for form in forms.values():
            form.seal()
        self._forms = list(forms.values())
        self._heads: dict[bytes, list[_Form]] = {}
        self._tails: dict[bytes, list[_Form]] = {}
        for form in self._forms:
            self._heads.setdefault(form.value[:FRAGMENT], []).append(form)
            if len(form.value) > FRAGMENT and form.suffix[-2]:
                self._tails.setdefault(form.value[-FRAGMENT:], []).append(form)
        self._longest = max((len(f.value) for f in self._forms), default=0)
        self._all = b"\0".join(f.value for f in self._forms)
        self.active = bool(self._forms)

    def __bool__(self) -> bool:
        return self.active

    def scrub(self, data: bytes) -> bytes:
        """``b'key=sk-live-abcdefgh123'`` -> ``b'key=[REDACTED]'``; data without a secret comes back as is."""
        if not self.active:
            return data
        spans = self._spans(data)
        return _replace(data, spans) if spans else data

    def scrub_text(self, text: str) -> str:
        if not self.active:
            return text
        try:
            errors, raw = "surrogateescape", text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
            errors, raw = "surrogatepass", text.encode("utf-8", "surrogatepass")
        clean = self.scrub(raw)
        return text if clean is raw else clean.decode("utf-8", errors)

    def stream(self) -> StreamScrubber:
        return StreamScrubber(self)

    def _spans(self, data: bytes) -> list[tuple[int, int]]:
        """Where secrets appear in ``data``: sorted, overlapping appearances merged."""
        spans = []
        for head, forms in self._heads.items():
            at = _find(data, head, 0)
            while at != -1:
                n = max(f.prefix[_common_prefix(data, at, f.value)] for f in forms)
                if n:
                    spans.append((at, at + n))
                at = _find(data, head, at + 1)
        for tail, forms in self._tails.items():
            at = _find(data, tail, 0)
            while at != -1:
                end = at + FRAGMENT
                n = max(f.suffix[_common_suffix(data, end, f.value)] for f in forms)
                if n:
                    spans.append((end - n, end))
                at = _find(data, tail, at + 1)
        if not spans:
            return spans
        spans.sort()
        merged = [spans[0]]
        for start, end in spans[1:]:
            if start < merged[-1][1]:
                if end > merged[-1][1]:
                    merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        return merged

    def _hold(self, data: bytes) -> int:
        """Length of the longest tail of ``data`` (under the longest form) that could begin an appearance."""
        top = min(len(data), self._longest - 1)
        if top <= 0 or data[-1:] not in self._all:
            return 0
        lo, hi = 1, top  # the tail of length lo is inside some form; find the longest that is
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if data[len(data) - mid :] in self._all:
                lo = mid
            else:
                hi = mid - 1
        return lo


class StreamScrubber:
    """Scrubs a stream chunk by chunk; ``b''.join(feed(c) for c in chunks) + flush() == scrub(b''.join(chunks))``.

    Held back is only the longest tail of what arrived that is a piece of some secret form (shorter than the
    longest form): a chunk that ends in ``\\n\\n`` — every SSE event — holds nothing back. An appearance that
    reaches into the held tail is replaced at once; the held bytes it covers are remembered as already replaced.
    """

    def __init__(self, scrubber: Scrubber) -> None:
        self._s = scrubber
        self._pending = b""
        self._covered = 0  # how many leading bytes of _pending an emitted [REDACTED] already stands for

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        data = self._pending + chunk if self._pending else chunk
        return self._emit(data, len(data) - self._s._hold(data))

    def flush(self) -> bytes:
        return self._emit(self._pending, len(self._pending))

    def _emit(self, data: bytes, cut: int) -> bytes:
        out = []
        pos = self._covered
        for start, end in self._s._spans(data) if data else ():
            if start >= cut:
                break  # wholly in the held tail: found again, and perhaps grown, with the next chunk
            if start < pos:  # overlaps what was already replaced
                pos = max(pos, end)
                continue
            out.append(data[pos:start])
            out.append(REDACTED)
            pos = end
        if pos < cut:
            out.append(data[pos:cut])
        self._covered = max(0, pos - cut)
        self._pending = data[cut:]
        return b"".join(out)


def _common_prefix(data: bytes, at: int, form: bytes) -> int:
    """The largest n with ``data[at:at + n] == form[:n]``."""
    lo, hi = 0, min(len(form), len(data) - at)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if data.startswith(form[:mid], at):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(data: bytes, end: int, form: bytes) -> int:
    """The largest n with ``data[end - n:end] == form[-n:]``."""
    lo, hi = 0, min(len(form), end)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if data.endswith(form[len(form) - mid :], 0, end):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _replace(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    out = []
    last = 0
    for start, end in spans:
        out.append(data[last:start])
        out.append(REDACTED)
        last = end
    out.append(data[last:])
    return b"".join(out)
