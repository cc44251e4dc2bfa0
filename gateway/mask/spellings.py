"""How a secret can be written in upstream output: each character raw, percent-encoded or JSON-escaped, in any mix.

    'a'  -> a                              unreserved (A-Z a-z 0-9 - . _ ~): always written as itself
    '+'  -> +  %2B  \\u002B                the hex digits of %XX and \\uXXXX in either case, each on its own
    '/'  -> /  %2F  \\/  \\u002F            (PHP writes \\/; Go's PathEscape keeps + and =; .NET writes \\u002B)
    ' '  ->    +  %20  \\u0020
    'ü'  -> ü  %C3%BC  \\u00FC
    '🔑' -> 🔑  %F0%9F%94%91  \\uD83D\\uDD11

Encoders differ in which characters they escape and in hex case, and some mix (an upstream that re-encodes part of
a URL): matching character by character covers every mix without listing them. A run of unreserved characters
has one spelling, so it is found as is in every spelling of the secret: the scanner searches such a run (the
needle) and matches the characters around a hit one at a time, forwards and backwards.
"""

from __future__ import annotations

import json

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_JSON_SHORT = {'"': b'\\"', "\\": b"\\\\", "/": b"\\/", "\b": b"\\b", "\f": b"\\f", "\n": b"\\n", "\r": b"\\r",
               "\t": b"\\t"}

# one spelling: a tuple of parts, each (bytes, caseless); a caseless part is compared to data.upper()
Part = tuple[bytes, bool]
Spelling = tuple[Part, ...]


def spellings(char: str) -> tuple[Spelling, ...]:
    """Every way ``char`` may be written; the raw UTF-8 first."""
    raw = char.encode("utf-8", "surrogatepass")
    if len(raw) == 1 and raw[0] in UNRESERVED:
        return (((raw, False),),)
    found: list[Spelling] = [((raw, False),), (("".join(f"%{b:02X}" for b in raw).encode(), True),)]
    if char == " ":
        found.append(((b"+", False),))
    if char in _JSON_SHORT:
        found.append(((_JSON_SHORT[char], False),))
    escaped = json.dumps(char)[1:-1]  # \u00fc, or a surrogate pair for characters beyond the BMP
    if not escaped.startswith("\\u"):
        escaped = f"\\u{ord(char):04x}"
    found.append(tuple(part for unit in escaped.split("\\u")[1:]
                       for part in ((b"\\u", False), (unit.upper().encode(), True))))
    return tuple(dict.fromkeys(found))


def length(spelling: Spelling) -> int:
    return sum(len(text) for text, _ in spelling)


def written_at(data: bytes, at: int, spelling: Spelling) -> bool:
    for text, caseless in spelling:
        piece = data[at : at + len(text)]
        if (piece.upper() if caseless else piece) != text:
            return False
        at += len(text)
    return True


class Secret:
    """One secret's characters with their spellings, and its needles: where the scanner looks for it."""

    __slots__ = ("chars", "n", "least", "needles", "longest", "_one", "_by_first", "_by_last")

    def __init__(self, value: str, fragment: int) -> None:
        self.chars = [spellings(c) for c in value]
        self.n = len(value)
        self.least = min(fragment, self.n)  # characters an appearance needs: a fragment, or the whole short secret
        self.longest = sum(max(length(s) for s in c) for c in self.chars)  # bytes of its longest spelling
        # each character's spellings by the byte they begin / end with: a mismatch costs one dict lookup
        self._by_first = [_by_edge(c, 0) for c in self.chars]
        self._by_last = [_by_edge(c, -1) for c in self.chars]
        self._one = [c[0][0][0][0] if len(c) == 1 and length(c[0]) == 1 else -1 for c in self.chars]  # or -1
        # (needle, role, a, b): the raw bytes of characters a..b-1, found in every prefix (role "head") or suffix
        # (role "tail") appearance, since every such appearance covers the first/last `least` characters
        self.needles: list[tuple[bytes, str, int, int]] = []
        regions = [("head", 0)] + ([("tail", self.n - fragment)] if self.n > fragment else [])
        for role, start in regions:  # a secret of 8 characters or fewer appears only whole: one region
            self.needles += self._needles(value, role, start)

    def _needles(self, value: str, role: str, start: int) -> list[tuple[bytes, str, int, int]]:
        best = (0, start, start)  # the longest run of single-spelling characters in the region
        a = start
        for i in range(start, start + self.least + 1):
            if i == start + self.least or len(self.chars[i]) > 1:
                if i - a > best[0]:
                    best = (i - a, a, i)
                a = i + 1
        if best[0]:
            size, a, b = best
            run = value[a:b].encode()
            if size >= 3 or b == start + self.least:
                return [(run, role, a, b)]
            # a short run (a letter between reserved characters) is everywhere in text: search it followed by each
            # byte the next character's spellings begin with (raw, '%', '\\', '+') instead, a few rare needles
            return [(run + bytes([first]), role, a, b) for first in sorted(self._by_first[b])]
        # no such character (a region of 8 reserved or non-ASCII characters): every byte that can begin one of
        # the first character's spellings is a needle, b == a: the character is matched from the hit on
        firsts = {s[0][0][:1] for s in self.chars[start]}  # raw, '%', '\\', '+': never a hex digit
        return [(first, role, start, start) for first in sorted(firsts)]

    def forward(self, data: bytes, at: int, k: int, limit: int) -> dict[int, int]:
        """{k2: end}: characters k..k2-1 written at data[at:end] (end <= limit), for the ends of every way on.

        A run of single-spelling characters is stepped through byte by byte; only the others branch."""
        reach: dict[int, int] = {}
        todo = [(k, at)]
        seen = set()
        one, by_first, n = self._one, self._by_first, self.n
        while todo:
            k, at = todo.pop()
            while k < n and one[k] >= 0 and at < limit and data[at] == one[k]:
                k += 1
                at += 1
            if (k, at) in seen:
                continue
            seen.add((k, at))
            if reach.get(k, -1) < at:
                reach[k] = at
            if k < n and one[k] < 0 and at < limit:
                for spelling, size in by_first[k].get(data[at], ()):
                    if at + size <= limit and written_at(data, at, spelling):
                        todo.append((k + 1, at + size))
        return reach

    def backward(self, data: bytes, end: int, k: int, floor: int) -> dict[int, int]:
        """{k0: start}: characters k0..k-1 written at data[start:end] (start >= floor), for every way back."""
        reach: dict[int, int] = {}
        todo = [(k, end)]
        seen = set()
        one, by_last = self._one, self._by_last
        while todo:
            k, end = todo.pop()
            while k > 0 and one[k - 1] >= 0 and end > floor and data[end - 1] == one[k - 1]:
                k -= 1
                end -= 1
            if (k, end) in seen:
                continue
            seen.add((k, end))
            if reach.get(k, end + 1) > end:
                reach[k] = end
            if k > 0 and one[k - 1] < 0 and end > floor:
                for spelling, size in by_last[k - 1].get(data[end - 1], ()):
                    if end - size >= floor and written_at(data, end - size, spelling):
                        todo.append((k - 1, end - size))
        return reach

    def appearance(self, data: bytes, at: int, role: str, a: int, b: int) -> tuple[int, int] | None:
        """The stretch of data that a needle hit at ``at`` belongs to, if the characters around it spell one."""
        end = at + (b - a)
        # characters a needs on either side: the bytes next to the hit must be able to begin / end them
        if b < (self.least if role == "head" else self.n) and (end >= len(data) or data[end] not in self._by_first[b]):
            return None
        if a > (0 if role == "head" else self.n - self.least) and (at == 0 or data[at - 1] not in self._by_last[a - 1]):
            return None
        after = self.forward(data, end, b, len(data))
        before = self.backward(data, at, a, 0)
        if role == "head":  # from character 0, for `least` characters or more
            ends = [end for k, end in after.items() if k >= self.least]
            return (before[0], max(ends)) if 0 in before and ends else None
        starts = [start for k, start in before.items() if k <= self.n - self.least]  # to the last character
        return (min(starts), after[self.n]) if self.n in after and starts else None


def _by_edge(char: tuple[Spelling, ...], edge: int) -> dict[int, tuple[tuple[Spelling, int], ...]]:
    """{byte: spellings that begin (edge 0) or end (edge -1) with it, with their lengths}; hex digits in both cases."""
    found: dict[int, list[tuple[Spelling, int]]] = {}
    for spelling in char:
        text, caseless = spelling[edge]
        for byte in {text[edge], *(bytes([text[edge]]).lower() if caseless else b"")}:
            found.setdefault(byte, []).append((spelling, length(spelling)))
    return {byte: tuple(spellings) for byte, spellings in found.items()}


__all__ = ["Secret", "UNRESERVED", "spellings"]
