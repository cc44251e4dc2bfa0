"""Replace every secret value in upstream output with ``[REDACTED]``, also when it arrives split across chunks.

What counts as a secret's appearance: the whole value, or any fragment of 8 or more of its first or last
characters (APIs that echo a masked key, ``sk-live-TOPSEC****cdef``, leak exactly such fragments), each character
written in any of its spellings (``secret_spellings``): raw, percent-encoded with hex digits of either case (also
mixed within one value), ``+`` for a space, JSON-escaped (``\\/``, ``\\u002B`` as .NET writes ``+``) — whatever
mix an encoder chose. A fragment always ends on a whole written character (never inside ``%2B`` or a UTF-8
sequence), so a scrubbed body stays valid UTF-8. Overlapping appearances become one ``[REDACTED]``; adjacent ones
stay two.

Scanning searches each secret's needles (the longest run of characters that have one spelling, in its first and
in its last 8 characters) with StringZilla's SIMD ``find``, about 15x ``bytes.find`` on JSON: that search is the
whole cost of a body without secrets, two needles per secret however many encodings exist (half the searches of
the former one-needle-per-encoded-form scan). Only around a hit are the characters matched one by one; a run
shorter than 3 bytes is searched with each byte that can follow it, so that a lone letter between ``+`` and ``/``
does not make every such letter in a body a hit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from stringzilla import find as _find  # (haystack, needle, start) -> index or -1, like bytes.find

from .spellings import Secret

REDACTED = b"[REDACTED]"
FRAGMENT = 8
# \u0041 for A: letters, digits and - . _ ~ have one spelling in the scan, so such an escape shows only decoded
_UNRESERVED_ESCAPE = re.compile(rb"\\u00(?:2[dDeE]|3[0-9]|[4-7][0-9A-Fa-f])")


class Scrubber:
    def __init__(self, secrets: Iterable[str]) -> None:
        values = [v for v in dict.fromkeys(secrets) if v]
        self._secrets = [Secret(v, FRAGMENT) for v in values]
        self._needles: dict[bytes, list[tuple[Secret, str, int, int]]] = {}
        for secret in self._secrets:
            for needle, role, a, b in secret.needles:
                self._needles.setdefault(needle, []).append((secret, role, a, b))
        self._longest = max((s.longest for s in self._secrets), default=0)
        # for holding back a stream's tail (see _hold): every byte any spelling uses, and the raw values
        alphabet = set()
        for secret in self._secrets:
            for char in secret.chars:
                for spelling in char:
                    for text, caseless in spelling:
                        alphabet.update(text.upper() + text.lower() if caseless else text)
        self._alphabet = bytes(sorted(alphabet))
        self._escapable = any(len(c) > 1 for secret in self._secrets for c in secret.chars)
        self._plain = b"\0".join(v.encode("utf-8", "surrogatepass").replace(b" ", b"+") for v in values)
        self.active = bool(self._secrets)
        # ASCII needles, as text: an ASCII byte in a text's UTF-8 (surrogate-escaped) bytes is that character, so a
        # text holding none of them holds no secret, known without encoding it (most header values, log lines)
        ascii_needles = all(needle.isascii() for needle in self._needles)
        self._text_needles = tuple(n.decode("ascii") for n in self._needles) if ascii_needles else None

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
        if self._text_needles is not None:
            for needle in self._text_needles:
                if needle in text:
                    break
            else:
                return text
        try:
            errors, raw = "surrogateescape", text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
            errors, raw = "surrogatepass", text.encode("utf-8", "surrogatepass")
        clean = self.scrub(raw)
        return text if clean is raw else clean.decode("utf-8", errors)

    def stream(self) -> StreamScrubber:
        return StreamScrubber(self)

    def loads_json(self, raw: bytes) -> Any:
        """``json.loads`` of an upstream body with no secret in any value (what a handler's ``up.json()`` returns).

        The bytes are scrubbed first; when the body \\u-escapes a letter or a digit (no encoder does, a hostile
        upstream might), what decoding made of the escapes is checked too: every decoded string is scrubbed.
        """
        value = json.loads(self.scrub(raw))
        if not self.active or not _UNRESERVED_ESCAPE.search(raw):
            return value
        if isinstance(value, str):
            return self.scrub_text(value)
        todo = [value]  # in place, without recursion: json.loads accepts nesting deeper than a recursive walk would
        while todo:
            node = todo.pop()
            items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            if isinstance(node, dict):
                node.clear()
            for key, item in items:
                if isinstance(item, str):
                    item = self.scrub_text(item)
                elif isinstance(item, (dict, list)):
                    todo.append(item)
                node[self.scrub_text(key) if isinstance(key, str) else key] = item
        return value

    def _spans(self, data: bytes) -> list[tuple[int, int]]:
        """Where secrets appear in ``data``: sorted, overlapping appearances merged."""
        spans = []
        for needle, roles in self._needles.items():
            at = _find(data, needle, 0)
            while at != -1:
                for secret, role, a, b in roles:
                    found = secret.appearance(data, at, role, a, b)
                    if found:
                        spans.append(found)
                at = _find(data, needle, at + 1)
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
        """Length of a tail of ``data`` (under the longest spelling) that holds where any appearance could begin.

        With no ``%`` or ``\\`` in reach, a secret can only be there raw (or with ``+`` for a space): the longest
        tail that is a piece of a value is held, exactly. Otherwise every trailing byte that some spelling uses is
        held: a little more than needed, never less, and found with one C call.
        """
        top = min(len(data), self._longest - 1)
        if top <= 0 or data[-1] not in self._alphabet:
            return 0
        tail = data[len(data) - top :]
        if self._escapable and (b"%" in tail or b"\\" in tail):
            return top - len(tail.rstrip(self._alphabet))
        tail = tail.replace(b" ", b"+")
        lo, hi = 0, top  # the longest tail that is inside some value
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if tail[top - mid :] in self._plain:
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


def _replace(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    out = []
    last = 0
    for start, end in spans:
        out.append(data[last:start])
        out.append(REDACTED)
        last = end
    out.append(data[last:])
    return b"".join(out)
