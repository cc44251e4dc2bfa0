"""An upstream body's content and transfer codings: which layers to undo, and undoing them a bounded step at a time.

    plan(["identity", "gzip"], [])     -> (["gzip"], "")         all decoded: the bytes delivered are identity
    plan(["gzip", "br"], [])           -> ([], "gzip, br")       br was applied last and cannot be undone: stop
    plan(["br", "gzip"], [])           -> (["gzip"], "br")       gzip undone, br still applies
    plan(["gzip"], ["gzip", "chunked"])-> (["gzip", "gzip"], "") the transfer coding first, then the content coding

A ``Decoder`` undoes its layers (outermost first) with zlib, making at most ``STEP`` decoded bytes per call, so that
a small input that expands enormously (a "zip bomb", or a zip bomb of a zip bomb) never sits in memory at once. A
stream that is corrupt, truncated, or followed by anything (a second gzip member, trailing garbage) is an error:
never a complete-looking body.
"""

from __future__ import annotations

import zlib

DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})
STEP = 64 * 1024  # decoded bytes made at a time: memory stays flat for any compression ratio


class CodingError(ValueError):
    """A body that does not match its codings, or codings that cannot be undone where they must be."""


def codings(values: list[str]) -> list[str]:
    """The codings of one or more header lines, in the order they were applied: ``["identity, GZip"]`` -> [...]."""
    return [part.strip().lower() for value in values for part in value.split(",") if part.strip()]


def plan(content: list[str], transfer: list[str]) -> tuple[list[str], str]:
    """The layers to undo (the last applied first) and the Content-Encoding that still applies afterwards.

    A transfer coding must always be undone (it is no part of the representation): one this client cannot undo,
    or ``chunked`` anywhere but last (RFC 9112 §6.1), raises CodingError. Content codings are undone from the
    last applied down to the first one this client cannot undo, which stops decoding: what remains is reported.
    """
    layers = []
    if transfer:
        inner = transfer[:-1] if transfer[-1] == "chunked" else transfer
        for coding in reversed(inner):
            if coding in DECODABLE:
                layers.append(coding)
            elif coding != "identity":
                raise CodingError(f"the upstream used the transfer coding {coding[:20]!r}, which cannot be decoded")
    remaining = [coding for coding in content if coding != "identity"]
    while remaining and remaining[-1] in DECODABLE:
        layers.append(remaining.pop())
    return layers, ", ".join(remaining)


class _Layer:
    """One zlib stream (gzip, or deflate with or without its zlib header)."""

    __slots__ = ("zobj", "raw_possible", "start", "pending", "seen", "done")

    def __init__(self, coding: str) -> None:
        deflate = coding == "deflate"
        self.zobj = zlib.decompressobj(wbits=15 if deflate else 47)  # 47: a gzip or zlib header, detected
        self.raw_possible = deflate  # "deflate" without its zlib header, as some servers send it
        self.start = b""  # what the zlib attempt was fed while raw deflate is still possible
        self.pending = b""  # input not decoded yet
        self.seen = False
        self.done = False

    def decode(self, data: bytes, limit: int) -> bytes:
        self.seen = self.seen or bool(data)
        if self.zobj.eof:
            if data:
                raise CodingError("the upstream sent data after the end of its compressed body")
            return b""
        if self.raw_possible:
            self.start += data
        try:
            out = self.zobj.decompress(data, limit)
        except zlib.error:
            if not self.raw_possible:
                raise CodingError("the upstream sent a body that does not match its Content-Encoding") from None
            self.raw_possible = False
            self.zobj = zlib.decompressobj(wbits=-15)
            start, self.start = self.start, b""
            return self.decode(start, limit)
        self.pending = self.zobj.unconsumed_tail
        if self.zobj.unused_data:  # a second gzip member, or anything after the end of the stream
            raise CodingError("the upstream sent data after the end of its compressed body")
        if self.raw_possible and len(self.start) >= 2:  # its zlib header checked out
            self.raw_possible = False
            self.start = b""
        return out

    def finish(self) -> bytes:
        """All input was decoded: the last few bytes zlib holds, once the stream is known to be whole."""
        self.done = True
        tail = self.zobj.flush()  # bounded: no input is pending, only the end of the last match
        if self.seen and not self.zobj.eof:
            raise CodingError("the upstream's compressed body ended early")
        return tail


class Decoder:
    """Layers undone in order: ``feed`` raw input, then ``step`` until it returns ``b""`` (or ``done``)."""

    __slots__ = ("layers", "closed")

    def __init__(self, layers: list[str]) -> None:
        self.layers = [_Layer(coding) for coding in layers]
        self.closed = False  # no more input will come

    def feed(self, data: bytes) -> None:
        first = self.layers[0]
        first.pending = first.pending + data if first.pending else data

    def close(self) -> None:
        self.closed = True

    @property
    def done(self) -> bool:
        return self.layers[-1].done

    @property
    def busy(self) -> bool:
        """Input is waiting to be decoded (or, after ``close``, the end is still to be checked)."""
        return any(layer.pending for layer in self.layers) or (self.closed and not self.done)

    def step(self) -> bytes:
        """At most STEP decoded bytes; ``b""`` when more input is needed (or everything is done)."""
        return self._pull(len(self.layers) - 1)

    def _pull(self, i: int) -> bytes:
        layer = self.layers[i]
        while True:
            if layer.pending:
                data, layer.pending = layer.pending, b""
                if out := layer.decode(data, STEP):
                    return out
                continue
            if i and not layer.done:
                if more := self._pull(i - 1):
                    layer.pending = more
                    continue
            if layer.done or not (self.layers[i - 1].done if i else self.closed):
                return b""  # more input is needed first
            if tail := layer.finish():  # its input is all decoded: an inner layer may still expand the tail
                return tail
