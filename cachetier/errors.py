"""
The ground floor's errors: every error a lower room raises for a higher one
to map, each with a typed L{Reason}, so that a room upstairs maps members
of an enum, never strings it has to spell the same way.
"""

from __future__ import annotations

import enum

from .objects import ObjectHeaders


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
    @ivar shield: the shield (its URL) whose own failure this is, if it is
        one: not remembered against the name, as the next try goes
        elsewhere.
    """

    def __init__(
        self, reason: Reason, message: str, status: int | None = None, shield: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.shield = shield

    @property
    def label(self) -> str:
        """
        The reason as metrics, logs and the status API show it (C{timeout},
        C{connection}, C{http_503}, C{truncated}, ...).
        """
        if self.reason is Reason.http_status:
            return f"http_{self.status}"
        return self.reason.value


class OriginAnswer(OriginError):
    """
    The origin answered with a status cachetier does not follow (anything
    but a 200, the 304 or 206 it asked for, or a redirect within the
    origin): the answer itself, to be passed on as it came, or kept when
    its status and freshness allow.

    @ivar headers: what the origin said, its status among it.
    @ivar body: the whole body (at most L{MAX_ANSWER_BODY} bytes).
    @ivar looped: whether it is a shield's 508 to the request, whose
        C{CDN-Loop} named the shield: neither the origin's answer nor a
        failure (see L{cachetier.sync.outcomes.looped}).
    """

    def __init__(self, headers: ObjectHeaders, body: bytes, looped: bool = False) -> None:
        super().__init__(
            Reason.http_status, f"the origin answered {headers.status}", headers.status
        )
        self.headers = headers
        self.body = body
        self.looped = looped

    @property
    def not_found(self) -> bool:
        """
        Whether the origin says it has no such file (403, 404 or 410).
        """
        return self.headers.status in NOT_FOUND_STATUSES


# The most of an answer's body cachetier passes on; a bigger one is a 502.
MAX_ANSWER_BODY = 1 << 20
# Answers that say the file is not there, for the status API and the logs.
NOT_FOUND_STATUSES = frozenset({403, 404, 410})


class Overloaded(Exception):
    """
    Too many syncs are queued or starting; this one was refused, not queued.
    """

    reason = Reason.overloaded
