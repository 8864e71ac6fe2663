"""
Byte ranges (RFC 9110 section 14): our own parser, so that what a client
may ask for is bounded.

A range set is parsed, made concrete against the representation's size,
sorted, and overlapping or adjacent ranges are merged (section 14.2 lets a
server coalesce).  A request for more than L{MAX_RANGES} ranges, or whose
ranges add up to more than the whole, is answered with the whole
representation: the CVE-2011-3192 class ("bytes=0-,0-,0-,...") can never
make a response bigger than the file.
"""

from __future__ import annotations

import secrets

from attrs import frozen

MAX_RANGES = 100


@frozen
class ByteRange:
    """
    Bytes C{first} to C{last}, inclusive, of a representation.
    """

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self, size: int) -> bytes:
        return b"bytes %d-%d/%d" % (self.first, self.last, size)


class Unsatisfiable(Exception):
    """
    No range of the set overlaps the representation: 416.
    """


def parse_range(header: bytes, size: int) -> list[ByteRange] | None:
    """
    The ranges of C{header} to send from a representation of C{size} bytes.

    @return: the merged ranges in ascending order, or L{None} when the
        header is to be ignored and the whole representation sent (not a
        C{bytes} range, malformed, too many ranges, or more bytes than the
        whole).
    @raise Unsatisfiable: when every range lies past the end.
    """
    unit, sep, spec = header.partition(b"=")
    if not sep or unit.strip().lower() != b"bytes":
        return None
    specs = spec.split(b",")
    if len(specs) > MAX_RANGES:
        return None
    ranges: list[ByteRange] = []
    requested = 0
    for item in specs:
        item = item.strip()
        if not item:
            continue  # RFC 9110 allows empty list elements
        first_text, dash, last_text = item.partition(b"-")
        if not dash:
            return None
        try:
            if first_text.strip():
                first = _digits(first_text)
                last = _digits(last_text) if last_text.strip() else max(first, size - 1)
                if last < first:
                    return None
            else:
                suffix = _digits(last_text)
                first, last = max(0, size - suffix), size - 1
                if suffix == 0:
                    continue  # unsatisfiable: zero bytes from the end
        except ValueError:
            return None
        if first >= size:
            continue
        last = min(last, size - 1)
        requested += last - first + 1
        ranges.append(ByteRange(first, last))
    if not ranges:
        if any(s.strip() for s in specs):
            raise Unsatisfiable()
        return None
    if requested > size:
        return None
    return _merged(ranges)


def _digits(text: bytes) -> int:
    text = text.strip()
    if not text.isdigit():
        raise ValueError(text)
    return int(text)


def _merged(ranges: list[ByteRange]) -> list[ByteRange]:
    merged: list[ByteRange] = []
    for r in sorted(ranges, key=lambda r: r.first):
        if merged and r.first <= merged[-1].last + 1:
            last = merged[-1]
            merged[-1] = ByteRange(last.first, max(last.last, r.last))
        else:
            merged.append(r)
    return merged


@frozen
class Multipart:
    """
    A C{multipart/byteranges} body: each part's header block, then its
    bytes, then the closing delimiter.
    """

    content_type: bytes
    parts: list[tuple[bytes, ByteRange]]
    trailer: bytes

    @property
    def length(self) -> int:
        return sum(len(head) + r.length for head, r in self.parts) + len(self.trailer)


def multipart(ranges: list[ByteRange], size: int, content_type: bytes) -> Multipart:
    boundary = secrets.token_hex(16).encode("ascii")
    parts = []
    for i, r in enumerate(ranges):
        head = (
            (b"\r\n" if i else b"")
            + b"--"
            + boundary
            + b"\r\nContent-Type: "
            + content_type
            + b"\r\nContent-Range: "
            + r.content_range(size)
            + b"\r\n\r\n"
        )
        parts.append((head, r))
    return Multipart(
        b"multipart/byteranges; boundary=" + boundary, parts, b"\r\n--" + boundary + b"--\r\n"
    )
