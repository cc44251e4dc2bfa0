"""Replace every secret value in upstream output with ``[REDACTED]``, also when it arrives split across chunks.

What counts as a secret's appearance, for each secret value, raw and URL-encoded:
the whole value, any prefix of 8 or more characters, and any suffix of 8 or more characters — APIs that
echo a masked key (``sk-live-TOPSEC****cdef``) leak exactly such fragments.

Scanning uses ``bytes.find`` on 8-byte needles (fast, C speed); only around a hit is a match extended.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = b"[REDACTED]"
FRAGMENT = 8


class Scrubber:
    def __init__(self, secrets: Iterable[str]) -> None:
        forms = {f.encode() for s in secrets if s for f in (s, quote(s, safe=""), quote_plus(s))}
        self._forms = sorted(forms, key=len, reverse=True)
        self._heads = {f[:FRAGMENT] for f in self._forms}
        self._tails = {f[-FRAGMENT:] for f in self._forms if len(f) > FRAGMENT}
        self._longest = max((len(f) for f in self._forms), default=0)
        self._alphabet = bytes(sorted({b for f in self._forms for b in f}))
        self.active = bool(self._forms)

    def __bool__(self) -> bool:
        return self.active

    def scrub(self, data: bytes) -> bytes:
        """``b'key=sk-live-abcdefgh123'`` -> ``b'key=[REDACTED]'``."""
        if not self.active:
            return data
        spans = self._spans(data)
        return _replace(data, spans) if spans else data

    def scrub_text(self, text: str) -> str:
        if not self.active:
            return text
        return self.scrub(text.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")

    def stream(self) -> StreamScrubber:
        return StreamScrubber(self)

    def _spans(self, data: bytes) -> list[tuple[int, int]]:
        spans = []
        for head in self._heads:
            at = data.find(head)
            while at != -1:
                spans.append((at, at + self._extend_forward(data, at)))
                at = data.find(head, at + 1)
        for tail in self._tails:
            at = data.find(tail)
            while at != -1:
                end = at + FRAGMENT
                spans.append((end - self._extend_backward(data, end), end))
                at = data.find(tail, at + 1)
        if not spans:
            return spans
        spans.sort()
        merged = [spans[0]]
        for start, end in spans[1:]:
            if start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    def _extend_forward(self, data: bytes, at: int) -> int:
        """Length of the longest secret-form prefix starting at ``at`` (at least FRAGMENT, or the whole short form)."""
        best = 0
        for form in self._forms:
            if data.startswith(form[:FRAGMENT], at):
                n = FRAGMENT
                while n < len(form) and at + n < len(data) and data[at + n] == form[n]:
                    n += 1
                best = max(best, min(n, len(form)))
        return best

    def _extend_backward(self, data: bytes, end: int) -> int:
        best = 0
        for form in self._forms:
            if len(form) > FRAGMENT and data.endswith(form[-FRAGMENT:], 0, end):
                n = FRAGMENT
                while n < len(form) and end - n - 1 >= 0 and data[end - n - 1] == form[-n - 1]:
                    n += 1
                best = max(best, n)
        return best


class StreamScrubber:
    """Scrubs a stream chunk by chunk, holding back only a tail that could be the start of a split secret.

    The held tail is the trailing run of bytes that occur in some secret (at most the longest form minus one):
    a chunk that ends in ``\\n\\n`` — every SSE event — holds nothing back.
    """

    def __init__(self, scrubber: Scrubber) -> None:
        self._s = scrubber
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        s = self._s
        data = self._pending + chunk if self._pending else chunk
        spans = s._spans(data)
        window = data[-(s._longest - 1):] if s._longest > 1 else b""
        hold = len(window) - len(window.rstrip(s._alphabet))
        cut = len(data) - hold
        if spans and spans[-1][1] > cut:
            # a match reaching into the held tail may still grow: hold back from its start
            cut = min(cut, spans[-1][0])
            spans = [sp for sp in spans if sp[1] <= cut]
        self._pending = data[cut:]
        head = data[:cut]
        return _replace(head, spans) if spans else head

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._s.scrub(rest)


def _replace(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    out = []
    last = 0
    for start, end in spans:
        out.append(data[last:start])
        out.append(REDACTED)
        last = end
    out.append(data[last:])
    return b"".join(out)
