"""
Admission: which new syncs may start, and what recent failures are
remembered so a missing or failing name does not send a request per
listener.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

from ..errors import OriginAnswer, Overloaded
from ..metrics import Metrics

# How many failed names to remember at most; a flood of random names must
# not grow memory without bound.
_MAX_REMEMBERED = 100_000
# The origin's answers are remembered with their bodies, so that a listener
# told of one gets what the origin said: one body at most this big, and all
# of them at most this much; an answer past either is not remembered (the
# next request asks the origin again).
_MAX_BODY = 64 << 10
_MAX_BODIES = 16 << 20
# How many client addresses have a bucket of their own at most.
_MAX_CLIENTS = 10_000


class TokenBucket:
    """
    C{rate} events a second, with a burst of one second's worth.
    """

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self._tokens = self._burst = max(1.0, rate)
        self._refilled_at = now

    def available(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._refilled_at) * self.rate)
        self._refilled_at = now
        return self._tokens >= 1

    def take(self) -> None:
        self._tokens -= 1


class Admission:
    """
    Which new syncs may start: each client address first (at most
    C{per_client} a second), then all together (at most C{max_queued}
    waiting for a slot, at most C{max_new_per_second} a second).  A flood
    of names from one address spends its own budget, not everyone's.

    The per-client table holds at most L{_MAX_CLIENTS} addresses, the
    least recently seen forgotten first (a forgotten address starts with a
    full bucket, which costs at most one second's worth).
    """

    def __init__(
        self,
        clock: IReactorTime,
        metrics: Metrics,
        max_queued: int = 1000,
        max_new_per_second: float = 50.0,
        per_client: float = 25.0,
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._max_queued = max_queued
        self._global = TokenBucket(max_new_per_second, clock.seconds())
        self._per_client = per_client
        self._clients: OrderedDict[str, TokenBucket] = OrderedDict()

    def admit(self, slots_free: int, queued: int, client: str | None = None) -> None:
        """
        Take one new sync's place.

        @param client: the address asking (L{None}: the server itself).
        @raise Overloaded: when the queue is full or a rate is spent.
        """
        if slots_free == 0 and queued >= self._max_queued:
            self._metrics.syncs_refused.labels(reason="queue_full").inc()
            raise Overloaded(f"{queued} syncs are already queued")
        now = self._clock.seconds()
        bucket = None if client is None else self._bucket(client, now)
        if bucket is not None and not bucket.available(now):
            self._metrics.syncs_refused.labels(reason="client_rate").inc()
            raise Overloaded(f"more than {bucket.rate:g} new syncs a second from one address")
        if not self._global.available(now):
            self._metrics.syncs_refused.labels(reason="rate").inc()
            raise Overloaded(f"more than {self._global.rate:g} new syncs a second")
        self._global.take()
        if bucket is not None:
            bucket.take()

    def _bucket(self, client: str, now: float) -> TokenBucket:
        bucket = self._clients.pop(client, None)
        if bucket is None:
            bucket = TokenBucket(self._per_client, now)
            while len(self._clients) >= _MAX_CLIENTS:
                self._clients.popitem(last=False)
        self._clients[client] = bucket
        return bucket


class FailureMemory:
    """
    Why recent syncs failed, by name, each for its own time to live; at
    most C{_MAX_REMEMBERED} names, the oldest forgotten first, and the
    origin's answers with their bodies, within C{_MAX_BODIES} in all.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._failures: OrderedDict[str, tuple[float, Exception]] = OrderedDict()
        self.body_bytes = 0

    def get(self, name: str) -> Exception | None:
        entry = self._failures.get(name)
        if entry is None:
            return None
        if entry[0] <= self._clock.seconds():
            self.forget(name)
            return None
        return entry[1]

    def remember(self, name: str, error: Exception, ttl: float) -> None:
        now = self._clock.seconds()
        self.forget(name)
        size = _body_size(error)
        if size > _MAX_BODY or self.body_bytes + size > _MAX_BODIES:
            return
        self._failures[name] = (now + ttl, error)
        self.body_bytes += size
        while self._failures:
            oldest_name, (expires, _) = next(iter(self._failures.items()))
            if expires > now and len(self._failures) <= _MAX_REMEMBERED:
                break
            self.forget(oldest_name)

    def forget(self, name: str) -> bool:
        entry = self._failures.pop(name, None)
        if entry is None:
            return False
        self.body_bytes -= _body_size(entry[1])
        return True

    def names(self) -> list[str]:
        return list(self._failures)


def _body_size(error: Exception) -> int:
    return len(error.body) if isinstance(error, OriginAnswer) else 0
