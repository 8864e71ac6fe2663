"""
How long an origin's response may be kept and served (RFC 9111): pure
functions of its headers.
"""

from __future__ import annotations

from attrs import frozen
from twisted.web.http import stringToDatetime


def directives(value: str | None) -> dict[str, str]:
    """
    A Cache-Control header's directives, names lower-cased, arguments
    unquoted (RFC 9111 section 5.2).
    """
    found: dict[str, str] = {}
    for part in (value or "").split(","):
        key, _, arg = part.strip().partition("=")
        if key.strip():
            found[key.strip().lower()] = arg.strip().strip('"')
    return found


def _seconds(text: str) -> float:
    """
    A delta-seconds argument; an invalid one counts as 0 (section 1.2.2).
    """
    try:
        return max(0.0, float(int(text)))
    except ValueError:
        return 0.0


def parse_cache_control(value: str | None) -> tuple[float | None, bool]:
    """
    The lifetime a shared cache may give a response by its Cache-Control
    alone, and whether it may store it at all.

    @return: C{(s-maxage or max-age or None, no_store)}; C{no-cache} is a
        lifetime of 0 (store, but revalidate every time).
    """
    found = directives(value)
    no_store = "no-store" in found or "private" in found
    if "no-cache" in found:
        return 0.0, no_store
    for key in ("s-maxage", "max-age"):
        if key in found:
            return _seconds(found[key]), no_store
    return None, no_store


def _date(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(stringToDatetime(text.encode("latin-1")))
    except (ValueError, UnicodeEncodeError):
        return None


def freshness_lifetime(
    cache_control: str | None, expires: str | None, date: str | None, received: float
) -> float | None:
    """
    RFC 9111 section 4.2.1: s-maxage, then max-age, then Expires minus Date
    (the time received when there is no Date); an Expires that is not a
    valid date means already stale.

    @return: seconds, or L{None} when the origin gave no lifetime (the
        configured default applies).
    """
    lifetime, _ = parse_cache_control(cache_control)
    if lifetime is not None:
        return lifetime
    if expires is None:
        return None
    expires_at = _date(expires)
    if expires_at is None:
        return 0.0
    return max(0.0, expires_at - (_date(date) or received))


def initial_age(age: str | None, date: str | None, received: float) -> float:
    """
    RFC 9111 section 4.2.3: how old the response already was when it
    arrived: the larger of its Age header and the time since its Date.
    """
    age_value = _seconds(age) if age else 0.0
    date_value = _date(date)
    # Date has a resolution of one second: compared at that resolution,
    # its rounding down is not mistaken for age.
    apparent = 0.0 if date_value is None else max(0.0, float(int(received)) - date_value)
    return max(age_value, apparent)


@frozen
class StalePolicy:
    """
    Whether, and how long past its lifetime, a stale copy may be served
    (RFC 9111 section 4.2.4, RFC 5861).

    @ivar allowed: L{False} when the origin forbids serving it stale at all
        (C{must-revalidate}, C{proxy-revalidate}, C{s-maxage}, C{no-cache}):
        it is revalidated before it is served.
    @ivar while_revalidating: seconds it may be served while a background
        revalidation runs: the origin's C{stale-while-revalidate}, else
        cachetier's default.
    @ivar if_error: seconds it may be served while the origin fails: the
        origin's C{stale-if-error}, else cachetier's default.
    """

    allowed: bool
    while_revalidating: float
    if_error: float


def stale_policy(cache_control: str | None, default: float) -> StalePolicy:
    """
    @param default: cachetier's own window (C{--stale-if-error}), where the
        origin allows stale copies but names no window.
    """
    found = directives(cache_control)
    forbidden = {"must-revalidate", "proxy-revalidate", "s-maxage", "no-cache"} & found.keys()
    if forbidden:
        return StalePolicy(False, 0.0, 0.0)
    swr = found.get("stale-while-revalidate")
    sie = found.get("stale-if-error")
    return StalePolicy(
        True,
        default if swr is None else _seconds(swr),
        default if sie is None else _seconds(sie),
    )
