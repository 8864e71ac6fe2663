"""
How long an origin's response may be kept and served (RFC 9111): pure
functions of its headers, parsed strictly: an invalid lifetime means
stale, never fresh.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from attrs import frozen
from twisted.web.http import stringToDatetime

from ..objects import ObjectHeaders

# One directive of a Cache-Control list: a token, and an argument that is
# a token or a quoted string (kept as sent, quotes and all).
_DIRECTIVE = re.compile(r'\s*([^\s=,]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^\s,]*))?\s*(?:,|$)')
_DELTA_SECONDS = re.compile(r"[0-9]+\Z")
# no-store or private as a word anywhere in a Cache-Control that did not
# parse.
_FORBIDS = re.compile(r"(?<![\w-])(?:no-store|private)(?![\w-])", re.IGNORECASE)
# RFC 9111 section 1.2.2: the largest delta-seconds a cache need represent.
_MAX_DELTA = 2147483648.0
# RFC 9111 section 4.2.2's typical heuristic: a tenth of the time since the
# last change.
HEURISTIC_FRACTION = 0.1


def directives(value: str | None) -> dict[str, str | None]:
    """
    A Cache-Control header's directives, names lower-cased, arguments as
    sent (a quoted one keeps its quotes; L{None} for none).  Of a directive
    given twice, the first counts (RFC 9111 section 4.2.1).  A member that
    is not a directive (C{max-age=60; public}) is left out.
    """
    return _members(value)[0]


def _members(value: str | None) -> tuple[dict[str, str | None], bool]:
    """
    L{directives}, and whether a member was left out as not one (empty
    members aside, which a list may have).
    """
    found: dict[str, str | None] = {}
    text, bad = value or "", False
    position = 0
    while position < len(text):
        match = _DIRECTIVE.match(text, position)
        if match is None or match.end() == position:
            # Not a directive: skip to the next comma.
            comma = text.find(",", position)
            end = len(text) if comma < 0 else comma
            bad = bad or bool(text[position:end].strip())
            position = end + 1
            continue
        found.setdefault(match.group(1).lower(), match.group(2))
        position = match.end()
    return found, bad


def delta_seconds(text: str | None) -> float | None:
    """
    A delta-seconds argument (RFC 9111 section 1.2.2): digits only, capped
    at 2^31; L{None} when invalid (quoted, negative, fractional, absent).
    """
    if text is None or not _DELTA_SECONDS.match(text):
        return None
    return min(float(int(text)), _MAX_DELTA)


def parse_cache_control(value: str | None) -> tuple[float | None, bool]:
    """
    The lifetime a shared cache may give a response by its Cache-Control
    alone, and whether it may store it at all.

    @return: C{(s-maxage or max-age or None, no_store)}; C{no-cache}, and
        an invalid s-maxage or max-age (C{max-age="60"}, C{max-age=-1}),
        are a lifetime of 0: stored, but revalidated every time.  So is a
        header with a member that is not a directive (C{max-age=60;
        public}): what it meant cannot be known, so it means stale, and
        never stored where C{no-store} or C{private} stands anywhere in it.
    """
    found, bad = _members(value)
    no_store = "no-store" in found or "private" in found
    if bad:
        return 0.0, no_store or bool(_FORBIDS.search(value or ""))
    if "no-cache" in found:
        return 0.0, no_store
    for key in ("s-maxage", "max-age"):
        if key in found:
            return delta_seconds(found[key]) or 0.0, no_store
    return None, no_store


# The latest time an HTTP date may name here: 9999-12-31T23:59:59Z, which
# every time_t and datetime can hold.
_LAST_DATE = 253402300799.0
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAY = r"(?:mon|tue|wed|thu|fri|sat|sun)"
_TIME = r"(\d\d):(\d\d):(\d\d)"
# RFC 9110 section 5.6.7: IMF-fixdate, and the two obsolete forms a
# recipient must accept (names in any case, as most caches take them).
_IMF_FIXDATE = re.compile(rf"{_DAY}, (\d\d) ([a-z]{{3}}) (\d{{4}}) {_TIME} gmt\Z", re.I)
_RFC850 = re.compile(rf"{_DAY}[a-z]{{3,6}}, (\d\d)-([a-z]{{3}})-(\d\d) {_TIME} gmt\Z", re.I)
_ASCTIME = re.compile(rf"{_DAY} ([a-z]{{3}}) ([ \d]\d) {_TIME} (\d{{4}})\Z", re.I)


def http_date(text: str | None, strict: bool = False) -> float | None:
    """
    An HTTP-date (RFC 9110 section 5.6.7) as a POSIX time, or L{None} when
    it is not one, or names a time no time_t can hold.  A two-digit year
    more than 50 years ahead is the century before's.

    @param strict: only the three forms, in GMT (for C{Expires}, where what
        is no date means stale); else, as RFC 9110 asks of a recipient,
        whatever else Twisted reads as a date too (a one-digit day, as
        Java's RFC 1123 formatter writes in C{Last-Modified}).
    """
    if not text:
        return None
    when = _strict_date(text)
    if when is None and not strict:
        try:
            when = float(stringToDatetime(text.encode("latin-1")))
        except (ValueError, UnicodeEncodeError, IndexError, OverflowError):
            return None
    return when if when is not None and 0 <= when <= _LAST_DATE else None


def _strict_date(text: str) -> float | None:
    fields: tuple[str, ...]
    if match := _IMF_FIXDATE.match(text):
        fields = match.groups()
    elif match := _RFC850.match(text):
        day, month, yy, *clock = match.groups()
        now = datetime.now(UTC).year
        year = now // 100 * 100 + int(yy)
        if year > now + 50:
            year -= 100
        fields = (day, month, str(year), *clock)
    elif match := _ASCTIME.match(text):
        month, day, *clock, year = match.groups()
        fields = (day, month, year, *clock)
    else:
        return None
    day, month, year, hour, minute, second = fields
    if month.lower() not in _MONTHS or int(second) > 60:
        return None
    try:
        return datetime(
            int(year),
            _MONTHS.index(month.lower()) + 1,
            int(day),
            int(hour),
            int(minute),
            min(int(second), 59),  # a leap second
            tzinfo=UTC,
        ).timestamp()
    except ValueError:
        return None


def freshness_lifetime(
    cache_control: str | None, expires: str | None, date: str | None, received: float
) -> float | None:
    """
    RFC 9111 section 4.2.1: s-maxage, then max-age, then Expires minus Date
    (the time received when there is no Date); an Expires that is not a
    valid date, or is past, means already stale.

    @return: seconds, or L{None} when the origin gave no lifetime (the
        heuristic applies: L{heuristic_lifetime}).
    """
    lifetime, _ = parse_cache_control(cache_control)
    if lifetime is not None:
        return lifetime
    if expires is None:
        return None
    expires_at = http_date(expires, strict=True)
    if expires_at is None:
        return 0.0
    return max(0.0, expires_at - (http_date(date) or received))


def heuristic_lifetime(headers: ObjectHeaders, ttl: float, received: float) -> float:
    """
    RFC 9111 section 4.2.2, for a response with no explicit lifetime: a
    tenth of the time between its Last-Modified and its Date (the time
    received without one), at most C{ttl}; C{ttl} for one with an ETag but
    no Last-Modified, or for an answer other than the file (a 301, a 204);
    0 for a file with no validator at all, which is then never reused:
    every request revalidates it, that is, fetches it again.
    """
    if headers.last_modified is not None:
        date = http_date(dict(headers.extra).get("date")) or received
        return max(0.0, min(ttl, HEURISTIC_FRACTION * (date - headers.last_modified)))
    return ttl if headers.etag is not None or headers.status != 200 else 0.0


def initial_age(
    age: str | None, date: str | None, received: float, requested: float | None = None
) -> float:
    """
    RFC 9111 section 4.2.3: how old the response already was when it
    arrived (its corrected initial age): the larger of the time since its
    Date and its Age header plus the time the request took.

    Of an Age that is a list (or several field lines), the first member
    counts; one that is then not a delta-seconds (C{abc}, C{-1}, C{1.5}) is
    ignored (RFC 9111 section 5.1), and the time since Date still counts.

    @param age: the Age field, its lines joined (L{None}: none).
    @param requested: when the request was sent (L{None}: C{received}).
    """
    age_value = None if age is None else delta_seconds(age.split(",")[0].strip())
    if age_value is None:
        age_value = 0.0
    date_value = http_date(date)
    # Date has a resolution of one second: compared at that resolution,
    # its rounding down is not mistaken for age.
    apparent = 0.0 if date_value is None else max(0.0, float(int(received)) - date_value)
    delay = 0.0 if requested is None else max(0.0, received - requested)
    return max(apparent, age_value + delay)


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
        the operator's C{--stale-while-revalidate}.
    @ivar if_error: seconds it may be served while the origin fails: the
        origin's C{stale-if-error}, else the operator's C{--stale-if-error}.
    """

    allowed: bool
    while_revalidating: float
    if_error: float


def stale_policy(
    cache_control: str | None, while_revalidating: float, if_error: float
) -> StalePolicy:
    """
    @param while_revalidating: the operator's window (C{--stale-while-
        revalidate}) where the origin allows stale copies but names none.
    @param if_error: the operator's window (C{--stale-if-error}), likewise.
    """
    found, bad = _members(cache_control)
    forbidden = {"must-revalidate", "proxy-revalidate", "s-maxage", "no-cache"} & found.keys()
    if forbidden or bad:
        # A field with a member that is no directive: what it allowed
        # cannot be known, and stale needs the origin's permission.
        return StalePolicy(False, 0.0, 0.0)

    def window(key: str, default: float) -> float:
        # Named with no valid delta-seconds: no window at all.
        return delta_seconds(found[key]) or 0.0 if key in found else default

    return StalePolicy(
        True,
        window("stale-while-revalidate", while_revalidating),
        window("stale-if-error", if_error),
    )
