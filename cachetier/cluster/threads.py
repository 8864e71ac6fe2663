"""
The threads that call Redis for the primary, but for the bus's reader: a
pool of their own, so that a Redis that stops answering holds none of the
reactor's thread pool, where downloads write and publish.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

# Threads at most: a heartbeat and a node list at a time (see Membership),
# and purges and ?wait's polls.
SIZE = 4
# Seconds all the threads may be busy with no call answered before new
# purges are refused: under Redis's timeout, well over a healthy answer.
STUCK = 1.0


class NotAnswering(Exception):
    """
    Redis has not answered the calls in flight: this one was not sent.
    """


class RedisThreads:
    """
    A thread pool for Redis calls, started and stopped with the service.

    @param reactor: runs the calls' results, and the pool's stop, which
        waits for the calls in flight (each bounded by Redis's timeout).
    """

    def __init__(self, reactor: Any, size: int = SIZE) -> None:
        self._reactor = reactor
        self.size = size
        self._pool = ThreadPool(minthreads=0, maxthreads=size, name="cachetier-redis")
        self._busy = 0
        self._progress = 0.0

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> Deferred[None]:
        """
        Stop the pool; fires once every one of its threads has ended.
        """
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._pool.stop)

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        C{f(*args, **kwargs)} in one of the pool's threads; a Deferred of
        its result.
        """
        if self._busy == 0:
            self._progress = self._reactor.seconds()
        self._busy += 1
        d = deferToThreadPool(self._reactor, self._pool, f, *args, **kwargs)
        d.addBoth(self._answered)
        return d

    def run_unless_stuck(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        As L{run}, but failing with L{NotAnswering} instead, at once or,
        for a call that waited for a thread, when it gets one.
        """

        def unless_stuck() -> Any:
            if self.stuck():
                raise NotAnswering()
            return f(*args)

        if self.stuck():
            return fail(NotAnswering())
        return self.run(unless_stuck)

    def _answered(self, result: Any) -> Any:
        self._busy -= 1
        if not isinstance(result, Failure):
            self._progress = self._reactor.seconds()
        return result

    def stuck(self) -> bool:
        """
        Whether every thread has been busy for L{STUCK} seconds with no
        call answered: Redis is not answering, and calls only queue.  Read
        from the pool's threads too (a count and a time: a stale read
        sends one call too many, or refuses one).
        """
        waited = self._reactor.seconds() - self._progress
        return self._busy >= self.size and waited > STUCK
