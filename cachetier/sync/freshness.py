"""
The cache's freshness rules (RFC 9111 section 4.2): how long a response
stays fresh here, and whether a stale one may be served, under the
operator's settings.
"""

from __future__ import annotations

from typing import Any

from attrs import evolve, frozen

from ..objects import ObjectHeaders, StoredObject
from ..origin.freshness import (
    freshness_lifetime,
    heuristic_lifetime,
    parse_cache_control,
    stale_policy,
)


@frozen
class Freshness:
    """
    @ivar ttl: the longest heuristic lifetime (see L{heuristic_lifetime}).
    @ivar stale_while_revalidate: how long past its lifetime an object may
        be served while it is revalidated, where the origin does not say
        (0: revalidated before it is served, as RFC 9111 requires; more is
        a deviation the operator takes on, like Varnish's grace).
    @ivar stale_if_error: how long past its lifetime an object may be
        served while it cannot be revalidated, where the origin does not
        say and does not forbid it.
    """

    ttl: float = 86400.0
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 7 * 86400.0

    def lifetime(
        self, headers: ObjectHeaders, received: float, renewing: StoredObject | None = None
    ) -> float:
        """
        How much longer a response is fresh: its lifetime (the origin's, or
        the heuristic one) less the age it arrived with.

        @param renewing: the stored object a 304 with C{headers} renews: its
            lifetime is that of the stored headers the 304 updates (RFC 9111
            section 4.3.4), so a 304 without Cache-Control keeps the stored
            one.
        """
        if renewing is not None:
            headers = _updated(renewing, headers, received)
        if headers.no_store:
            return 0.0  # never reused: asked for again each time
        lifetime = headers.max_age
        if lifetime is None:
            lifetime = heuristic_lifetime(headers, self.ttl, received)
        return lifetime - headers.initial_age

    def may_serve_stale(self, stored: StoredObject, now: float, failing: bool) -> bool:
        """
        Whether the stale C{stored} may be served now (RFC 9111 section
        4.2.4, RFC 5861): while it is revalidated, or while the origin
        fails (C{failing}), within the window the origin, or else the
        operator, allows.
        """
        policy = stale_policy(
            stored.cache_control, self.stale_while_revalidate, self.stale_if_error
        )
        window = policy.if_error if failing else policy.while_revalidating
        return policy.allowed and now - stored.expires_at < window


def _updated(stored: StoredObject, headers: ObjectHeaders, received: float) -> ObjectHeaders:
    """
    The headers of C{stored} as the 304 carrying C{headers} updates them.
    """
    updated = stored.updated_by(headers)
    extra = dict(updated.extra)
    return evolve(
        headers,
        max_age=freshness_lifetime(
            updated.cache_control, extra.get("expires"), extra.get("date"), received
        ),
        etag=headers.etag or stored.origin_etag,
        last_modified=headers.last_modified or stored.origin_last_modified,
        no_store=headers.no_store or parse_cache_control(updated.cache_control)[1],
        extra=updated.extra,
    )


def aged(headers: ObjectHeaders, answered_at: float | None, clock: Any) -> ObjectHeaders:
    """
    C{headers} as old as they are now: the time since their answer arrived
    (a download's) counts in their age (RFC 9111 section 4.2.3), so a long
    download is not fresh for longer than the origin said.
    """
    if answered_at is None or clock is None:
        return headers
    waited = max(0.0, clock.seconds() - answered_at)
    return evolve(headers, initial_age=headers.initial_age + waited)
