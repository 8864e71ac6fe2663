"""
What an origin response says: L{parse_response} reads a 200, 206 or 304
(or an answer passed on as it came) into an L{OriginResponse}: the headers
stored and replayed (the end-to-end ones, never hop-by-hop ones), its
freshness, whether it takes ranges, and the checksum its body must have;
L{storable} says whether an answer other than a 200 may be kept.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING, Any

from attrs import frozen
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from ..objects import ObjectHeaders
from .freshness import freshness_lifetime, http_date, initial_age, parse_cache_control

if TYPE_CHECKING:
    from .shields import Shield

log = Logger()

_PLAIN_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')


@frozen
class OriginResponse:
    """
    A 200 (whose body has not been read yet) or a 304 from the origin.

    @ivar length: the promised Content-Length, or L{None} when not given.
    @ivar checksum: C{(algorithm, digest)} the body must have, when the
        origin certainly gave one (see L{_expected_checksum}).
    """

    headers: ObjectHeaders
    length: int | None
    checksum: tuple[str, bytes] | None
    response: Any
    not_modified: bool = False
    # Whether the origin takes byte ranges (Accept-Ranges: bytes), and the
    # validator an If-Range names this version by: a strong ETag, else the
    # Last-Modified date as sent.
    ranges: bool = False
    validator: str | None = None
    # For a 206: the first byte sent and the whole object's length.
    content_range: tuple[int, int] | None = None
    # The shield that sent it, or None: the origin.
    upstream: Shield | None = None


# Connection-level headers (RFC 9110 7.6.1), never stored or replayed.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Headers the cache answers with values of its own (from the fields of
# ObjectHeaders, or computed per response), so not replayed verbatim.
_OWN = frozenset(
    {
        "content-length",
        "content-range",
        "content-type",
        "etag",
        "last-modified",
        "cache-control",
        "accept-ranges",
        "age",
        "server",
        "content-md5",
        "x-cachetier-content-encoding",
        # The real one arrives under ORIGIN_CONTENT_ENCODING; what is left
        # here is treq's decoder's empty placeholder.
        "content-encoding",
    }
)
# Where the IdentityAgent (in agents) puts the origin's Content-Encoding,
# out of sight of treq's decoder.
ORIGIN_CONTENT_ENCODING = b"x-cachetier-content-encoding"


def drop_connection_options(headers: Headers) -> None:
    """
    Remove from C{headers} every field their C{Connection} header names
    (RFC 9110 section 7.6.1): options for the one connection the response
    came over, never stored or forwarded.
    """
    for value in headers.getRawHeaders(b"connection", []):
        for option in value.split(b","):
            name = option.strip()
            if name:
                headers.removeHeader(name)


def header(response: Any, name: bytes) -> str | None:
    """
    The last value of header C{name} of C{response}, or L{None}.
    """
    values = response.headers.getRawHeaders(name)
    return values[-1].decode("latin-1") if values else None


def joined(response: Any, name: bytes) -> str | None:
    """
    Every field line of the list header C{name} of C{response} as one
    value (RFC 9110 section 5.3), or L{None}.
    """
    values = response.headers.getRawHeaders(name)
    return ", ".join(v.decode("latin-1") for v in values) if values else None


def first(response: Any, name: bytes) -> str | None:
    """
    The first field line of the singleton header C{name}, or L{None}: of
    several C{Expires} or C{Date} lines, the first is used (RFC 9111
    section 5.3, RFC 9110 section 6.6.1).
    """
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def _date(response: Any) -> str | None:
    """
    The origin's Date, when its first field line is a date; else L{None},
    and the cache sends its own.
    """
    date = first(response, b"date")
    return date if http_date(date) is not None else None


# Asked for on every origin request: S3 then sends the object's full
# checksum (other servers ignore the header).
CHECKSUM_MODE = b"x-amz-checksum-mode"


def _b64(value: str | None, size: int) -> bytes | None:
    if not value:
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except binascii.Error:
        return None
    return digest if len(digest) == size else None


def _expected_checksum(response: Any, etag: str | None) -> tuple[str, bytes] | None:
    """
    The digest the body must have, where the origin certainly gave one: a
    Content-MD5; from S3, a full-object C{x-amz-checksum-sha256}, C{-sha1}
    or C{-crc32} (CRC32C is not checked: no standard-library hash), or an
    ETag that is a plain MD5 (not a multipart ETag with a C{-}, not SSE-KMS
    or SSE-C, whose ETags are not the body's MD5).  Any other 32-hex ETag
    is only an opaque validator.
    """
    content_md5 = header(response, b"content-md5")
    digest = _b64(content_md5, 16)
    if digest is not None:
        return "md5", digest
    if content_md5:
        # Content-MD5 is no longer HTTP (RFC 7231 appendix B): one that is
        # no MD5 at all says nothing about the body.
        log.info("ignoring a Content-MD5 that is not an MD5: {value!r}", value=content_md5[:64])
    s3 = header(response, b"server") == "AmazonS3" or response.headers.hasHeader(
        b"x-amz-request-id"
    )
    if not s3:
        return None
    if header(response, b"x-amz-checksum-type") != "COMPOSITE":
        for algorithm, size in (("sha256", 32), ("sha1", 20), ("crc32", 4)):
            digest = _b64(header(response, b"x-amz-checksum-" + algorithm.encode()), size)
            if digest is not None:
                return algorithm, digest
    if not etag:
        return None
    if header(response, b"x-amz-server-side-encryption") == "aws:kms" or response.headers.hasHeader(
        b"x-amz-server-side-encryption-customer-algorithm"
    ):
        return None
    match = _PLAIN_MD5_ETAG.match(etag)
    return ("md5", bytes.fromhex(match.group(1))) if match else None


def _end_to_end(response: Any) -> tuple[tuple[str, str], ...]:
    """
    The origin's headers to store and replay: every end-to-end header but
    those the cache answers itself; the Content-Encoding as the origin sent
    it.
    """
    kept = []
    for name, values in response.headers.getAllRawHeaders():
        key = name.decode("latin-1").lower()
        if key in HOP_BY_HOP or key in _OWN or key in ("set-cookie", "date"):
            continue
        kept.extend((key, v.decode("latin-1")) for v in values)
    date = _date(response)
    if date is not None:
        kept.append(("date", date))
    for value in response.headers.getRawHeaders(ORIGIN_CONTENT_ENCODING, []):
        kept.append(("content-encoding", value.decode("latin-1")))
    return tuple(kept)


def parse_response(
    response: Any, received: float, requested: float | None = None
) -> OriginResponse:
    """
    Read what a 200 or 304 response says about the body.

    @param received: when it arrived (POSIX time), for its age and for an
        Expires without a Date.
    @param requested: when it was asked for, for its age.
    """
    etag = header(response, b"etag")
    raw_lm = header(response, b"last-modified")
    last_modified = http_date(raw_lm)
    content_type = header(response, b"content-type")
    length = None if response.length is UNKNOWN_LENGTH else int(response.length)
    cache_control = joined(response, b"cache-control")
    _, no_store = parse_cache_control(cache_control)
    date = _date(response)
    lifetime = freshness_lifetime(cache_control, first(response, b"expires"), date, received)
    # A response that sets a cookie is somebody's, and one whose Vary has a
    # "*" matches no later request (RFC 9111 4.1): streamed, never stored.
    no_store = no_store or response.headers.hasHeader(b"set-cookie") or _varies_by_all(response)
    validator = etag if etag and not etag.startswith("W/") else (raw_lm if last_modified else None)
    accept = (header(response, b"accept-ranges") or "").lower()
    return OriginResponse(
        ranges="bytes" in [a.strip() for a in accept.split(",")] or response.code == 206,
        validator=validator,
        # Some S3 servers (rclone's) answer a range 200 with a Content-Range.
        content_range=_content_range(response) if response.code in (200, 206) else None,
        headers=ObjectHeaders(
            content_type=content_type or "application/octet-stream",
            content_type_given=content_type is not None,
            etag=etag,
            last_modified=last_modified,
            max_age=lifetime,
            no_store=no_store,
            initial_age=initial_age(joined(response, b"age"), date, received, requested),
            cache_control=cache_control,
            extra=_end_to_end(response),
        ),
        length=length,
        checksum=_expected_checksum(response, etag),
        response=response,
        not_modified=response.code == 304,
    )


# Statuses a cache may keep without explicit freshness (RFC 9110 section
# 15.1), but for 200 and 206, which are the file itself, and 203 and 300,
# which cachetier keeps only with explicit freshness.
HEURISTIC_STATUSES = frozenset({204, 301, 308, 404, 405, 410, 414, 501})
# Of those, the ones whose heuristic freshness is --negative-ttl.
NEGATIVE_STATUSES = frozenset({404, 405, 410, 414, 501})


def storable(headers: ObjectHeaders) -> bool:
    """
    Whether an answer other than a 200 may be kept (RFC 9111 section 3):
    never a 5xx but 501, nor one the origin forbids storing; a
    heuristically cacheable status always; any other (403, 203, 302...)
    only with explicit freshness.
    """
    status = headers.status
    if headers.no_store or (status >= 500 and status != 501):
        return False
    return status in HEURISTIC_STATUSES or headers.max_age is not None


def _varies_by_all(response: Any) -> bool:
    values = response.headers.getRawHeaders(b"vary", [])
    return any(member.strip() == b"*" for value in values for member in value.split(b","))


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$")


def _content_range(response: Any) -> tuple[int, int] | None:
    match = _CONTENT_RANGE.match(header(response, b"content-range") or "")
    if match is None:
        return None
    return int(match.group(1)), int(match.group(3))
