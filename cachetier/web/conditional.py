"""
Conditional requests (RFC 9110 section 13): validators against a version.
"""

from __future__ import annotations

from twisted.web import http
from twisted.web.iweb import IRequest


def _opaque(tag: bytes) -> bytes:
    tag = tag.strip()
    return tag[2:] if tag.startswith(b"W/") else tag


def _date(value: bytes) -> int | None:
    """
    The HTTP-date C{value} names, or L{None} when it names none: an empty or
    unreadable date is ignored (RFC 9110 section 13.1.3), never an error.
    """
    try:
        return http.stringToDatetime(value)
    except (ValueError, IndexError):
        return None


def not_modified(request: IRequest, etag: bytes | None, last_modified: float | None) -> bool:
    """
    Whether the request's validators match, per RFC 9110 13.2.2: when
    If-None-Match is present, If-Modified-Since is ignored.
    """
    if_none_match = request.getHeader(b"if-none-match")
    if if_none_match is not None:
        if if_none_match.strip() == b"*":
            return True
        return etag is not None and _opaque(etag) in {_opaque(t) for t in if_none_match.split(b",")}
    since = request.getHeader(b"if-modified-since")
    if since is None or last_modified is None:
        return False
    date = _date(since.split(b";", 1)[0])
    return date is not None and date >= int(last_modified)


def range_still_valid(request: IRequest, etag: bytes | None, last_modified: float | None) -> bool:
    """
    Whether a Range request's If-Range (if any) still names this version.
    A player resuming a download of a replaced file must get all of the new
    one, not a splice of two versions.
    """
    if_range = request.getHeader(b"if-range")
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith((b'"', b"W/")):
        # If-Range takes a strong comparison only.
        return etag is not None and not if_range.startswith(b"W/") and if_range == etag
    return last_modified is not None and _date(if_range) == int(last_modified)
