"""
Protecting a failing origin: the circuit breaker and the retry policy.
"""

from __future__ import annotations

import random

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..errors import Reason

log = Logger()


class Breaker:
    """
    Stops calls to a failing origin: after C{threshold} consecutive
    failures it opens for C{cooloff} seconds, then lets one probe through
    (half-open); the probe's success closes it, its failure reopens it.

    Connection failures and timeouts are the origin's; a 5xx may be one
    broken file's.  So 5xx answers count only from C{threshold} distinct
    names in a row: one name's repeated 5xx never opens the breaker for
    every other file (that name has its own failure memory in the syncer).
    """

    def __init__(self, clock: IReactorTime, threshold: int = 5, cooloff: float = 30.0) -> None:
        self._clock = clock
        self.threshold = threshold
        self.cooloff = cooloff
        self.failures = 0
        self._failing_names: set[str] = set()
        self._open = False
        self._opened_at = 0.0
        self._probing = False
        # Numbers the probes, so that only the probe's own request can end it.
        self._probes = 0

    @property
    def state(self) -> str:
        """
        C{closed}, C{open}, or C{half_open} once the cool-off has passed.
        """
        if not self._open:
            return "closed"
        if self._clock.seconds() >= self._opened_at + self.cooloff:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """
        Whether a request may go out now; in half-open, the one that may is
        the probe.
        """
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            self._probes += 1
            return True
        return False

    @property
    def probe(self) -> int | None:
        """
        The number of the probe in flight, if one is.
        """
        return self._probes if self._probing else None

    def settle(self, probe: int | None) -> None:
        """
        A request that L{allow} let through is over, whatever happened to
        it: if it was the probe C{probe} and it ended with no verdict (an
        error that is not the origin's: credentials, a redirect off the
        origin, a cancellation), the probe is abandoned, so the next
        request may probe instead of the origin being shut out for good.
        """
        if probe is not None and self.probe == probe:
            self.abandoned()

    def succeeded(self) -> None:
        self.failures = 0
        self._failing_names.clear()
        self._open = False
        self._probing = False

    def failed(self, name: str | None = None) -> None:
        """
        A request failed: a connection failure or timeout, or, with
        C{name}, a 5xx answer for that name.
        """
        self._probing = False
        if name is not None and not self._open:
            if name in self._failing_names or len(self._failing_names) >= self.threshold:
                return
            self._failing_names.add(name)
        self.failures += 1
        if self._open or self.failures >= self.threshold:
            if not self._open:
                log.warn(
                    "origin breaker open after {failures} failures; next probe in {cooloff:g}s",
                    failures=self.failures,
                    cooloff=self.cooloff,
                )
            self._open = True
            self._opened_at = self._clock.seconds()

    def abandoned(self) -> None:
        """
        A request that was let through ended with no verdict (cancelled).
        """
        self._probing = False


# What a retry may mend: the way to the origin, or an origin's 5xx.
RETRYABLE = frozenset({Reason.connection, Reason.timeout})
RETRYABLE_STATUSES = range(500, 600)


@frozen
class RetryPolicy:
    """
    How failed origin requests are retried: on connection errors, timeouts
    and 5xx, up to C{attempts} tries in all, waiting C{base * 2**n} seconds
    (times a random factor in [0.5, 1), so many syncs do not retry in step)
    but never past C{budget} seconds since the first try.
    """

    attempts: int = 3
    base: float = 0.5
    budget: float = 10.0

    def delay(self, attempt: int) -> float:
        return self.base * (2**attempt) * (0.5 + random.random() / 2)
