"""
Conditional requests (RFC 9110 section 13): validators against a version.
"""

from __future__ import annotations

from twisted.web import http
from twisted.web.iweb import IRequest


def _opaque(tag: bytes) -> bytes:
    tag = tag.strip()
    return tag[2:] if tag.startswith(b"W/") else tag


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
    try:
        return http.stringToDatetime(since.split(b";", 1)[0]) >= int(last_modified)
    except ValueError:
        return False


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
    try:
        return last_modified is not None and http.stringToDatetime(if_range) == int(last_modified)
    except ValueError:
        return False
