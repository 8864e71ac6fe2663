"""
Admission: which new syncs may start, and what recent failures are
remembered so a missing or failing name does not send a request per
listener.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

from ..metrics import Metrics

# How many failed names to remember at most; a flood of random names must
# not grow memory without bound.
_MAX_REMEMBERED = 100_000


class Overloaded(Exception):
    """
    Too many syncs are queued or starting; this one was refused, not queued.
    """


class Admission:
    """
    At most C{max_queued} syncs waiting for a slot, and at most
    C{max_new_per_second} new ones a second (a token bucket with a burst
    of one second's worth).
    """

    def __init__(
        self,
        clock: IReactorTime,
        metrics: Metrics,
        max_queued: int = 1000,
        max_new_per_second: float = 50.0,
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._max_queued = max_queued
        self._rate = max_new_per_second
        self._tokens = self._burst = max(1.0, max_new_per_second)
        self._refilled_at = clock.seconds()

    def admit(self, slots_free: int, queued: int) -> None:
        """
        Take one new sync's place.

        @raise Overloaded: when the queue is full or the rate is spent.
        """
        if slots_free == 0 and queued >= self._max_queued:
            self._metrics.syncs_refused.labels(reason="queue_full").inc()
            raise Overloaded(f"{queued} syncs are already queued")
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = now
        if self._tokens < 1:
            self._metrics.syncs_refused.labels(reason="rate").inc()
            raise Overloaded(f"more than {self._rate:g} new syncs a second")
        self._tokens -= 1


class FailureMemory:
    """
    Why recent syncs failed, by name, each for its own time to live; at
    most C{_MAX_REMEMBERED} names, the oldest forgotten first.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._failures: OrderedDict[str, tuple[float, Exception]] = OrderedDict()

    def get(self, name: str) -> Exception | None:
        entry = self._failures.get(name)
        if entry is None:
            return None
        if entry[0] <= self._clock.seconds():
            del self._failures[name]
            return None
        return entry[1]

    def remember(self, name: str, error: Exception, ttl: float) -> None:
        now = self._clock.seconds()
        self._failures.pop(name, None)
        self._failures[name] = (now + ttl, error)
        while self._failures:
            oldest_name, (expires, _) = next(iter(self._failures.items()))
            if expires > now and len(self._failures) <= _MAX_REMEMBERED:
                break
            del self._failures[oldest_name]

    def forget(self, name: str) -> bool:
        return self._failures.pop(name, None) is not None

    def names(self) -> list[str]:
        return list(self._failures)
