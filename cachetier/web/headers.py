"""
Response headers the cache decides itself.
"""

from __future__ import annotations

from typing import Any

from ..objects import ObjectHeaders


def downstream_cache_control(
    origin: str | None, default_max_age: int, lifetime: float | None
) -> bytes:
    """
    The Cache-Control sent with a file: the origin's, unchanged, when it
    sent one (private stays private, max-age=60 stays 60); otherwise
    C{public, max-age=} the configured default, but never more than the
    object's own freshness lifetime, so a stale copy (whose Age is past
    its lifetime) never looks fresh downstream.
    """
    if origin is not None:
        return origin.encode("latin-1")
    max_age = default_max_age if lifetime is None else min(default_max_age, int(lifetime))
    return b"public, max-age=%d" % (max(0, max_age),)


def fill_cache_control(
    headers: ObjectHeaders, default_max_age: int, lifetime: float
) -> bytes | None:
    """
    The Cache-Control sent with a download's answer: as
    L{downstream_cache_control} (capped at C{lifetime}, how long the
    answer is fresh here, as a hit is), but none of cachetier's own for an
    answer it does not reuse itself (one that sets a cookie or varies by
    everything, or a file with neither freshness nor a validator): that
    goes on as the origin sent it, so that no cache in front shares what
    cachetier would not.
    """
    reused = not headers.no_store and (
        headers.max_age is not None or headers.etag is not None or headers.last_modified is not None
    )
    if headers.cache_control is None and not reused:
        return None
    return downstream_cache_control(headers.cache_control, default_max_age, lifetime)


def replay(request: Any, extra: list[tuple[bytes, bytes]]) -> None:
    """
    Send the origin's stored headers; its Date, if it sent one, replaces
    the one Twisted set (RFC 9111 section 4: a cache keeps the origin's
    Date, and Age says how old that makes the answer).
    """
    if any(name == b"date" for name, _ in extra):
        request.responseHeaders.removeHeader(b"date")
    for name, value in extra:
        request.responseHeaders.addRawHeader(name, value)
