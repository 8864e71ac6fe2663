"""
The ground floor's errors: every error a lower room raises for a higher one
to map, each with a typed L{Reason}, so that a room upstairs maps members
of an enum, never strings it has to spell the same way.
"""

from __future__ import annotations

import enum


class Reason(enum.Enum):
    """
    Why a sync failed or was refused.  A member's value is its short,
    stable code, as metrics, logs and the status API show it.
    """

    # The origin, or the way to it.
    timeout = "timeout"
    too_slow = "too_slow"
    connection = "connection"
    truncated = "truncated"
    unframed = "unframed"
    changed = "changed"
    checksum = "checksum"
    breaker_open = "breaker_open"
    origin_redirect = "origin_redirect"
    auth = "auth"
    credentials = "credentials"
    # A status cachetier does not follow: shown as C{http_<status>}.
    http_status = "http"
    not_found = "not_found"
    # This node.
    too_large = "too_large"
    no_space = "no_space"
    write_error = "write_error"
    cancelled = "cancelled"
    internal = "internal"
    overloaded = "overloaded"


class OriginError(Exception):
    """
    The origin could not give us a good body (or the cache could not keep
    it).

    @ivar reason: why, for the room that maps it to an answer.
    @ivar status: the origin's status, for L{Reason.http_status}.
    """

    def __init__(self, reason: Reason, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status

    @property
    def label(self) -> str:
        """
        The reason as metrics, logs and the status API show it (C{timeout},
        C{connection}, C{http_503}, C{truncated}, ...).
        """
        if self.reason is Reason.http_status:
            return f"http_{self.status}"
        return self.reason.value


class NotFoundAtOrigin(Exception):
    """
    The origin answered 403, 404 or 410 for a name.

    @ivar code: the origin's status.
    """

    reason = Reason.not_found

    def __init__(self, code: int) -> None:
        super().__init__(f"the origin answered {code}")
        self.code = code


class Overloaded(Exception):
    """
    Too many syncs are queued or starting; this one was refused, not queued.
    """

    reason = Reason.overloaded
