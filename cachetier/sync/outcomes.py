"""
What the L{Syncer} answers: where one name stands (L{FileStatus}), what a
request for it gets (L{Lookup}), and how the origin fares
(L{OriginHealth}).  Web renders these; it decides none of them.
"""

from __future__ import annotations

from enum import Enum

from attrs import frozen

from ..errors import NOT_FOUND_STATUSES, OriginAnswer, OriginError, Overloaded
from ..metrics import NOT_ORIGIN_FAILURES
from ..objects import StoredObject
from ..origin import Origin, Upstreams
from .fill import Fill


@frozen
class FileStatus:
    """
    What the cache knows of one name right now.

    @ivar state: C{cached}, C{syncing}, C{missing}, C{not_found} or C{error}.
        The origin's answer kept for the name is C{cached} when it is a
        2xx, C{not_found} when it is a 403, 404 or 410, and C{error} when
        it is another (a redirect, a 405...): the file is not here.
    @ivar stale: a cached object past its lifetime, served while it is
        revalidated (or while the origin fails, up to stale-if-error).
    @ivar status: the origin's status for what is kept, or for the answer
        it last gave (L{None} when there is neither).
    """

    name: str
    state: str
    stored: StoredObject | None = None
    fill: Fill | None = None
    error: Exception | None = None
    stale: bool = False
    status: int | None = None

    @classmethod
    def of(cls, name: str, stored: StoredObject, stale: bool = False) -> FileStatus:
        """
        Where a name with an object kept stands.
        """
        return cls(name, _state(stored.status), stored=stored, stale=stale, status=stored.status)

    @classmethod
    def failed(cls, name: str, error: Exception) -> FileStatus:
        """
        Where a name whose last sync failed with C{error} stands.
        """
        status = error.status if isinstance(error, OriginAnswer) else None
        state = "not_found" if status in NOT_FOUND_STATUSES else "error"
        return cls(name, state, error=error, status=status)


def _state(status: int) -> str:
    if status < 300:
        return "cached"
    return "not_found" if status in NOT_FOUND_STATUSES else "error"


class Outcome(Enum):
    """
    What a request for a name gets.
    """

    # The cached copy, fresh (or just published or revalidated).
    CACHED = "cached"
    # The cached copy, past its lifetime but servable: while it is
    # revalidated, or while the origin fails.
    STALE = "stale"
    # The cached copy is stale and may not be served: wait for its
    # revalidation.
    MUST_WAIT = "must_wait"
    # Not cached: follow the download under way.
    FILL = "fill"
    # The cached copy is stale, may not be served, and cannot be
    # revalidated now (RFC 9111 4.2.4).
    WITHHELD = "withheld"
    # Nothing to serve: the error says why.
    ERROR = "error"


@frozen
class Lookup:
    """
    The one answer to a request for a name.

    @ivar stored: the object to serve (L{Outcome.CACHED}, L{Outcome.STALE}).
    @ivar fill: the download to follow (L{Outcome.MUST_WAIT},
        L{Outcome.FILL}).
    @ivar error: why there is nothing to serve, if known
        (L{Outcome.WITHHELD}, L{Outcome.ERROR}).
    """

    outcome: Outcome
    stored: StoredObject | None = None
    fill: Fill | None = None
    error: Exception | None = None

    @classmethod
    def of(cls, status: FileStatus, cached: bool) -> Lookup:
        """
        What a request gets where C{status} says the name stands.

        @param cached: whether the store had a copy when it was asked (a
            download to follow is then a revalidation to wait for, and no
            answer means the stale copy is withheld).
        """
        if status.stored is not None:
            outcome = Outcome.STALE if status.stale else Outcome.CACHED
            return cls(outcome, stored=status.stored)
        if status.fill is not None:
            return cls(Outcome.MUST_WAIT if cached else Outcome.FILL, fill=status.fill)
        if cached and not isinstance(status.error, Overloaded | OriginAnswer):
            return cls(Outcome.WITHHELD, error=status.error)
        # The caps refusing a revalidation is the cache overloaded, not the
        # origin unavailable: the listener gets 503 and Retry-After; and the
        # origin's answer to it is passed on (RFC 9111 section 4.3.3).
        return cls(Outcome.ERROR, error=status.error)

    @property
    def servable(self) -> bool:
        """
        Whether it is answered from the cached copy.
        """
        return self.outcome in (Outcome.CACHED, Outcome.STALE)

    @property
    def answered(self) -> bool:
        """
        Whether the origin's answer is to be passed on as it came.
        """
        return isinstance(self.error, OriginAnswer)


@frozen
class OriginHealth:
    """
    How the origin fares, as this node sees it.

    @ivar breaker: the circuit breaker's state: C{closed}, C{open} or
        C{half_open}.
    @ivar failures: the breaker's count of consecutive failures.
    @ivar rejected: when the origin last refused this node's requests, and
        why (for the operator), if it has.
    @ivar shields_down: the shields skipped now (C{--shield}), and why.
    """

    base: str
    breaker: str
    failures: int
    rejected: tuple[float, str] | None
    shields_down: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, origin: Origin | Upstreams) -> OriginHealth:
        breaker = origin.breaker
        down = tuple(origin.down()) if isinstance(origin, Upstreams) else ()
        return cls(origin.base, breaker.state, breaker.failures, origin.rejected, down)


def origin_failed(error: Exception | None) -> bool:
    """
    Whether C{error} ended a sync because the origin failed (what
    stale-if-error covers: unreachable, too slow, or a 5xx), not because it
    answered (a 4xx), nor for a reason of the cache's own.
    """
    if not isinstance(error, OriginError):
        return False
    if error.status is not None:
        return error.status >= 500 and not looped(error)
    return error.reason.value not in NOT_ORIGIN_FAILURES


def looped(error: Exception) -> bool:
    """
    Whether C{error} is a shield's own 508: the answer to the request
    whose C{CDN-Loop} named a node up there (a listener's may), passed on
    to it, but neither the origin's failure (no stale-if-error, nothing
    in C{/healthz}) nor the name's (not remembered for the next request).
    """
    return isinstance(error, OriginAnswer) and error.looped
