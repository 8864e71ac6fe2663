"""
What the L{Syncer} answers: where one name stands (L{FileStatus}), what a
request for it gets (L{Lookup}), and how the origin fares
(L{OriginHealth}).  Web renders these; it decides none of them.
"""

from __future__ import annotations

from enum import Enum

from attrs import frozen

from ..errors import NotFoundAtOrigin
from ..objects import StoredObject
from .fill import Fill


@frozen
class FileStatus:
    """
    What the cache knows of one name right now.

    @ivar state: C{cached}, C{syncing}, C{missing}, C{not_found} or C{error}.
    @ivar stale: a cached object past its lifetime, served while it is
        revalidated (or while the origin fails, up to stale-if-error).
    """

    name: str
    state: str
    stored: StoredObject | None = None
    fill: Fill | None = None
    error: Exception | None = None
    stale: bool = False


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
        if status.state == "cached":
            outcome = Outcome.STALE if status.stale else Outcome.CACHED
            return cls(outcome, stored=status.stored)
        if status.fill is not None:
            return cls(Outcome.MUST_WAIT if cached else Outcome.FILL, fill=status.fill)
        return cls(Outcome.WITHHELD if cached else Outcome.ERROR, error=status.error)

    @property
    def servable(self) -> bool:
        """
        Whether it is answered from the cached copy.
        """
        return self.outcome in (Outcome.CACHED, Outcome.STALE)

    @property
    def not_found(self) -> bool:
        """
        Whether the origin recently said it has no such file.
        """
        return isinstance(self.error, NotFoundAtOrigin)


@frozen
class OriginHealth:
    """
    How the origin fares, as this node sees it.

    @ivar breaker: the circuit breaker's state: C{closed}, C{open} or
        C{half_open}.
    @ivar failures: the breaker's count of consecutive failures.
    @ivar rejected: when the origin last refused this node's requests, and
        why (for the operator), if it has.
    """

    base: str
    breaker: str
    failures: int
    rejected: tuple[float, str] | None
