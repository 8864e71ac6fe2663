"""
Which of two versions of a file is the more recent (RFC 9111 section 4:
a cache uses the most recent response), so that a revalidation never
replaces a copy with an older version (rule 2): a shield may still hold,
fresh by its own lifetime, a version older than the one an edge fetched
from the origin while that shield was down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from ..errors import OriginError, Reason
from ..objects import ObjectHeaders, StoredObject
from ..origin import OriginResponse, Upstreams
from ..origin.freshness import http_date

log = Logger()


def _date(extra: tuple[tuple[str, str], ...]) -> float | None:
    return next((http_date(value) for key, value in extra if key == "date"), None)


def older(headers: ObjectHeaders, stored: StoredObject) -> bool:
    """
    Whether a 200 with C{headers} is an older version than C{stored}: by
    their Last-Modified where both give one and they differ (the
    versions' own times), else by their Date (when each response was
    made: RFC 9111 section 4's "most recent").
    """
    ours, theirs = stored.origin_last_modified, headers.last_modified
    if ours is not None and theirs is not None and ours != theirs:
        return theirs < ours
    ours, theirs = _date(stored.extra), _date(headers.extra)
    return ours is not None and theirs is not None and theirs < ours


async def not_older(
    upstreams: Any, name: str, response: OriginResponse, old: StoredObject | None
) -> OriginResponse:
    """
    The answer to a revalidation of C{old}: C{response}, unless it is a
    200 from a shield that is older than C{old}; then that is abandoned
    and the origin itself is asked (see L{Upstreams.from_origin}), whose
    answer stands, whatever it is.
    """
    if (
        old is None
        or response.not_modified
        or response.upstream is None
        or not isinstance(upstreams, Upstreams)
        or not older(response.headers, old)
    ):
        return response
    upstreams.abandon(response)
    log.info(
        "shield {shield} answered {name} with a version older than the copy: asking the origin",
        shield=response.upstream.url,
        name=name,
    )
    answer: OriginResponse = await upstreams.from_origin(name, old, response.upstream.url)
    return answer


async def settled(
    upstreams: Any,
    name: str,
    response: OriginResponse,
    old: StoredObject | None,
    interruptible: Callable[[Any], Any],
) -> OriginResponse:
    """
    What a revalidation of C{old} goes on with, from its first answer
    C{response}: a 304 that confirms C{old}, or a 200 not older than it
    (L{not_older}).  A 304 that names another version (a shield holding an
    older one, asked with C{If-Modified-Since}, says it has not changed
    since) is followed by a fetch of the file whole, checked the same
    way, so that the older version does not come in by that door either.

    @param interruptible: awaits a call to the upstreams in a way a purge
        may stop (the download's).
    """
    response = await interruptible(not_older(upstreams, name, response, old))
    if old is None or not response.not_modified or old.confirmed_by(response.headers):
        return response
    log.info("a 304 for {name} names another version: fetching it whole", name=name)
    whole = await interruptible(upstreams.get(name))
    response = await interruptible(not_older(upstreams, name, whole, old))
    if response.not_modified and not old.confirmed_by(response.headers):
        if not isinstance(upstreams, Upstreams):
            raise OriginError(Reason.http_status, "a 304 to a request without validators", 304)
        # The origin itself, asked with the copy's validators, names yet
        # another version (it went back to an older one): its own whole
        # answer stands, whatever its age.
        upstream = "" if response.upstream is None else response.upstream.url
        response = await interruptible(upstreams.from_origin(name, None, upstream))
    return response
