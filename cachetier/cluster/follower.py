"""
The reader thread: it follows the cluster's purge log (C{XREAD BLOCK}) on a
connection of its own and hands every entry, in order, to the reactor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import redis
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger

from . import position
from .connection import trouble
from .log import REDIS_ERRORS, Entry, PurgeLog, Snapshot
from .position import Position

log = Logger()

# How long one XREAD waits for an entry: the thread hears from the log (or
# sees its stop flag) at least this often.
BLOCK_MS = 500
# Entries read at once; fewer means the node has caught up.
COUNT = 500
# Reconnections back off from the first to the last, doubling.
BACKOFF = (0.1, 2.0)


class Receiver(Protocol):
    """
    What the follower hands its findings to, on the reactor's thread.
    """

    def received(self, entries: list[Entry], caught_up: bool) -> None: ...

    def resync(self, snapshot: Snapshot, since: str, doubt: float) -> None: ...

    def behind(self, why: str) -> None: ...

    def lost(self, why: str) -> None: ...


class Follower:
    """
    Follows the log from the last entry applied (kept in C{cache_dir}),
    reconnecting with a bounded backoff; when the log no longer reaches
    back that far, or its epoch changed, it has the receiver resync first.

    @param connect: a new client for this thread alone.
    """

    def __init__(
        self,
        reactor: Any,
        connect: Callable[[], redis.Redis],
        make_log: Callable[[redis.Redis], PurgeLog],
        cache_dir: str,
        receiver: Receiver,
    ) -> None:
        self._reactor = reactor
        self._connect = connect
        self._make_log = make_log
        self._cache_dir = cache_dir
        self._receiver = receiver
        self._stop = threading.Event()
        self._client: redis.Redis | None = None
        self.position = position.load(cache_dir)
        self.ended: Deferred[None] = Deferred()
        self._thread = threading.Thread(target=self._run, name="cachetier-cluster", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> Deferred[None]:
        """
        Stop after the current read (within L{BLOCK_MS} and a timeout);
        fires when the thread has ended.
        """
        self._stop.set()
        return self.ended

    def _run(self) -> None:
        delay, last = BACKOFF[0], ""
        while not self._stop.is_set():
            try:
                self._follow()
                delay, last = BACKOFF[0], ""
            except REDIS_ERRORS as e:
                if str(e) != last:
                    log.warn("cluster: Redis failed: {why}; retrying", why=str(e))
                last = str(e)
                # No address in what /healthz shows: the kind of failure.
                self._call(self._receiver.lost, trouble(e))
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF[1])
            except Exception as e:
                log.failure("following the cluster's purge log failed")
                self._call(self._receiver.lost, f"internal error ({type(e).__name__})")
                self._stop.wait(BACKOFF[1])
            finally:
                self._close()
        self._reactor.callFromThread(self.ended.callback, None)

    def _follow(self) -> None:
        """
        Connect, resync if need be, then read until the stop flag, an
        error or a change of epoch (after which L{_run} starts over).
        """
        self._client = self._connect()
        purges = self._make_log(self._client)
        epoch = purges.epoch()
        known = self.position
        if known is None or known.epoch != epoch:
            self._resync(purges, "")
        elif not purges.reaches_back_to(known.applied):
            self._resync(purges, _trimmed_past(known.applied))
        while not self._stop.is_set():
            assert self.position is not None
            after = self.position.applied
            entries = purges.read(after, BLOCK_MS, COUNT)
            # Asked after the read: a trim racing it is seen (a resync too
            # many at worst), and entries of another log are never applied.
            epoch, reached = purges.follows_on(after)
            if epoch != self.position.epoch:
                log.warn("the cluster's purge log changed epoch: resyncing")
                return
            if not reached:
                self._resync(purges, _trimmed_past(after))
                continue
            self._call(self._receiver.received, entries, len(entries) < COUNT)
            if entries:
                self._keep(Position(self.position.epoch, entries[-1].id, self.position.doubt))

    def _resync(self, purges: PurgeLog, why: str) -> None:
        """
        Have the receiver resync from a snapshot of the log, and keep the
        snapshot's position only once it has (a restart before then
        resyncs again).  With C{why} (the log no longer reaches back to
        the position), hits are doubted from now until the receiver is
        level again.  A log of another epoch doubts every copy fetched
        before now, kept with the position, so a restart doubts them too.
        """
        if why:
            log.warn("cluster: {why}: resyncing", why=why)
            self._call(self._receiver.behind, why)
        known = self.position
        now = self._reactor.seconds()
        snapshot = purges.snapshot()
        if known is not None and known.epoch != snapshot.epoch:
            since, doubt = "0-0", now
        else:
            since, doubt = ("0-0", 0.0) if known is None else (known.applied, known.doubt)
        self._call(self._receiver.resync, snapshot, since, doubt)
        self._keep(Position(snapshot.epoch, snapshot.last, doubt))

    def _keep(self, where: Position) -> None:
        position.save(self._cache_dir, where)
        self.position = where

    def _call(self, f: Callable[..., None], *args: Any) -> None:
        """
        C{f(*args)} on the reactor's thread, waited for (the reactor runs
        until this thread has ended: see L{stop}).
        """
        blockingCallFromThread(self._reactor, f, *args)

    def _close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                client.close()
            except REDIS_ERRORS:
                pass


def _trimmed_past(applied: str) -> str:
    return f"the log was trimmed past this node's position ({applied})"
