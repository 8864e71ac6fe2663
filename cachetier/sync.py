"""
Single-flight downloads from the origin into the store.

A L{Fill} is the one download of one name.  Readers follow it while it runs:
each gets its own duplicate of the temp file's descriptor and reads with
C{pread} as bytes land, so the first byte goes out as soon as the origin
sends it, readers go at their own pace, and a publish (a rename) or a
failure (an unlink) never pulls the file from under a reader.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .metrics import Metrics
from .origin import NotFoundAtOrigin, Origin, OriginError, OriginResponse
from .store import CacheStore, ObjectHeaders, StoredObject

log = Logger()

T = TypeVar("T")
RunInThread = Callable[..., "Deferred[Any]"]

# How many failed names to remember at most; a flood of random names must
# not grow memory without bound.
_MAX_REMEMBERED = 100_000


class Overloaded(Exception):
    """
    Too many syncs are queued or starting; this one was refused, not queued.
    """


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


class Follower(Protocol):
    def fill_progressed(self) -> None:
        """
        The fill has more bytes on disk, or has ended (see L{Fill.state}).
        """


class Fill:
    """
    One in-flight download of C{name}.

    @ivar state: C{queued}, C{fetching}, C{publishing}, C{done} or C{failed}.
    @ivar written: bytes on disk so far.
    @ivar length: the Content-Length the origin promised, if any.
    @ivar headers: what the origin said about the body, once it answered.
    @ivar error: why the fill failed (a L{NotFoundAtOrigin} or
        L{OriginError}), once it has.
    @ivar revalidating: the cached object this download may replace; the
        origin is asked whether it changed.
    @ivar used_at: when a request last asked for it (its recency, once
        published).
    @ivar publish: whether the body goes into the cache when complete;
        cleared by a purge or an origin C{no-store}, in which case readers
        still get every byte and nothing is kept.
    """

    def __init__(self, name: str, used_at: float, revalidating: StoredObject | None = None) -> None:
        self.name = name
        self.used_at = used_at
        self.revalidating = revalidating
        self.publish = True
        self.state = "queued"
        self.written = 0
        self.length: int | None = None
        self.headers: ObjectHeaders | None = None
        self.error: Exception | None = None
        self.stored: StoredObject | None = None
        self._fd = -1
        self._write: Callable[[int, bytes], None] | None = None
        self._md5: Any = None
        self._expected_md5: bytes | None = None
        self._start_waiters: list[Deferred[Fill]] = []
        self._done_waiters: list[Deferred[StoredObject | None]] = []
        self._followers: set[Follower] = set()
        self._waiting: set[Follower] = set()

    # --- for readers -----------------------------------------------------

    @property
    def readable(self) -> bool:
        """
        Whether readers can still open this fill's bytes.
        """
        return self._fd >= 0

    def when_started(self) -> Deferred[Fill]:
        """
        Fires with this fill once the origin's headers are in (or the fill
        ended without a body to follow), or fails with the fill's error.
        """
        if self.state != "queued":
            return self._settled(self, self.error is None)
        d: Deferred[Fill] = Deferred()
        self._start_waiters.append(d)
        return d

    def when_done(self) -> Deferred[StoredObject | None]:
        """
        Fires with the published object (L{None} if nothing was kept), or
        fails with the fill's error.
        """
        if self.state in ("done", "failed"):
            return self._settled(self.stored, self.state == "done")
        d: Deferred[StoredObject | None] = Deferred()
        self._done_waiters.append(d)
        return d

    def _settled(self, value: T, ok: bool) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        if ok:
            d.callback(value)
        else:
            assert self.error is not None
            d.errback(self.error)
        return d

    def follow(self, follower: Follower) -> int:
        """
        Start following: returns a descriptor of the body that stays valid
        after the fill ends, which the follower must close.
        """
        self._followers.add(follower)
        return os.dup(self._fd)

    def unfollow(self, follower: Follower) -> None:
        self._followers.discard(follower)
        self._waiting.discard(follower)

    def wait(self, follower: Follower) -> None:
        """
        Call C{follower.fill_progressed} once when more bytes arrive or the
        fill ends.
        """
        self._waiting.add(follower)

    # --- for the syncer --------------------------------------------------

    def begin(self, response: OriginResponse, fd: int, write: Callable[[int, bytes], None]) -> None:
        self.state = "fetching"
        self.length = response.length
        self.headers = response.headers
        self._fd = fd
        self._write = write
        self._expected_md5 = response.md5
        if response.md5 is not None:
            self._md5 = hashlib.md5(usedforsecurity=False)
        for d in self._take(self._start_waiters):
            d.callback(self)

    def write(self, data: bytes) -> None:
        """
        Append a chunk to the temp file and wake the readers waiting for it.
        """
        assert self._write is not None
        self._write(self._fd, data)
        if self._md5 is not None:
            self._md5.update(data)
        self.written += len(data)
        waiting, self._waiting = self._waiting, set()
        for follower in waiting:
            follower.fill_progressed()

    def check_complete(self) -> None:
        """
        @raise OriginError: when the body is shorter or longer than promised,
            or does not match the origin's MD5.
        """
        if self.length is not None and self.written != self.length:
            raise OriginError(
                "truncated",
                f"the origin promised {self.length} bytes and sent {self.written}",
            )
        if self._md5 is not None and self._md5.digest() != self._expected_md5:
            raise OriginError("checksum", "the body does not match the origin's MD5")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def finish(self, stored: StoredObject | None) -> None:
        self.state = "done"
        self.stored = stored
        self._end()
        for d in self._take(self._start_waiters):
            d.callback(self)
        for d in self._take(self._done_waiters):
            d.callback(stored)

    def fail(self, error: Exception) -> None:
        self.state = "failed"
        self.error = error
        self._end()
        for waiters in (self._start_waiters, self._done_waiters):
            for d in self._take(waiters):
                d.errback(error)

    def _end(self) -> None:
        self._waiting.clear()
        for follower in list(self._followers):
            follower.fill_progressed()

    @staticmethod
    def _take(waiters: list[Deferred[T]]) -> list[Deferred[T]]:
        # A waiter whose request went away was cancelled: skip it.
        taken = [d for d in waiters if not d.called]
        waiters.clear()
        return taken


class Syncer:
    """
    Owns every download: at most one per name, at most C{max_concurrent} at
    once (the rest queue, up to C{max_queued}), at most
    C{max_new_per_second} new ones a second, and a short memory of recent
    failures so a missing or failing name does not send a request per
    listener.

    @param run_in_thread: runs a blocking callable off the reactor thread
        and returns a L{Deferred} of its result (the fsyncs of a publish).
    @param ttl: an object's lifetime when the origin gives none.
    @param stale_if_error: how long past its lifetime an object may still
        be served while it cannot be revalidated.
    @param max_object_size: bigger objects are not cached (L{None}: any).
    """

    def __init__(
        self,
        origin: Origin,
        store: CacheStore,
        clock: IReactorTime,
        run_in_thread: RunInThread,
        *,
        max_concurrent: int = 8,
        max_queued: int = 1000,
        max_new_per_second: float = 50.0,
        max_object_size: int | None = None,
        ttl: float = 86400.0,
        stale_if_error: float = 7 * 86400.0,
        negative_ttl: float = 60.0,
        error_ttl: float = 5.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.origin = origin
        self.store = store
        self.clock = clock
        self._run_in_thread = run_in_thread
        self._slots = DeferredSemaphore(max_concurrent)
        self._max_queued = max_queued
        self._rate = max_new_per_second
        self._tokens = self._burst = max(1.0, max_new_per_second)
        self._refilled_at = clock.seconds()
        self._max_object_size = max_object_size
        self._ttl = ttl
        self._stale_if_error = stale_if_error
        self._negative_ttl = negative_ttl
        self._error_ttl = error_ttl
        self.metrics = metrics or Metrics()
        self._fills: dict[str, Fill] = {}
        self._tasks: dict[Fill, Deferred[None]] = {}
        self._failures: OrderedDict[str, tuple[float, Exception]] = OrderedDict()
        self._stopping = False

    @property
    def in_flight(self) -> int:
        return self._slots.limit - self._slots.tokens

    @property
    def queued(self) -> int:
        return len(self._slots.waiting)

    def fill_for(self, name: str) -> Fill | None:
        """
        The download of C{name} under way, if there is one.
        """
        return self._fills.get(name)

    def recent_failure(self, name: str) -> Exception | None:
        """
        Why the last sync of C{name} failed, while that is still remembered.
        """
        entry = self._failures.get(name)
        if entry is None:
            return None
        if entry[0] <= self.clock.seconds():
            del self._failures[name]
            return None
        return entry[1]

    def status(self, name: str, start: bool = True) -> FileStatus:
        """
        Where C{name} stands; with C{start}, begin syncing it if it is
        neither cached, under way nor recently failed, and begin
        revalidating it if it is stale.
        """
        stored = self.store.get(name)
        if stored is not None:
            now = self.clock.seconds()
            if now < stored.expires_at:
                return FileStatus(name, "cached", stored=stored)
            servable = now <= stored.expires_at + self._stale_if_error
            if start and name not in self._fills and self.recent_failure(name) is None:
                try:
                    # Past stale-if-error the copy is not served, so a 304
                    # would leave nothing to serve: fetch it whole.
                    self.start(name, revalidating=stored if servable else None)
                except Overloaded:
                    pass
            if servable:
                return FileStatus(name, "cached", stored=stored, stale=True)
        fill = self._fills.get(name)
        if fill is None:
            failure = self.recent_failure(name)
            if isinstance(failure, NotFoundAtOrigin):
                return FileStatus(name, "not_found", error=failure)
            if failure is not None:
                return FileStatus(name, "error", error=failure)
            if not start:
                return FileStatus(name, "missing")
            try:
                fill = self.start(name)
            except Overloaded as e:
                return FileStatus(name, "missing", error=e)
        if fill.state == "done":
            if fill.stored is not None:
                return FileStatus(name, "cached", stored=fill.stored)
            return FileStatus(name, "missing")
        if fill.state == "failed":
            return self.status(name, start=False)
        if start:
            fill.used_at = self.clock.seconds()
        return FileStatus(name, "syncing", fill=fill)

    def start(self, name: str, revalidating: StoredObject | None = None) -> Fill:
        """
        Join the download of C{name}, starting one if none is under way.
        The caller checks the store first.

        @raise Overloaded: when a new download would pass the caps.
        """
        fill = self._fills.get(name)
        if fill is None:
            self._admit()
            fill = self._fills[name] = Fill(name, self.clock.seconds(), revalidating)
            self._failures.pop(name, None)
            task = Deferred.fromCoroutine(self._run(fill))
            if not task.called:
                self._tasks[fill] = task
        return fill

    def _admit(self) -> None:
        if self._slots.tokens == 0 and self.queued >= self._max_queued:
            self.metrics.syncs_refused.labels(reason="queue_full").inc()
            raise Overloaded(f"{self.queued} syncs are already queued")
        now = self.clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = now
        if self._tokens < 1:
            self.metrics.syncs_refused.labels(reason="rate").inc()
            raise Overloaded(f"more than {self._rate:g} new syncs a second")
        self._tokens -= 1

    def purge(self, name: str) -> bool:
        """
        Forget C{name}: its cached copy, its download (readers finish;
        nothing is published) and any remembered failure.

        @return: whether there was anything to forget.
        """
        removed = self.store.remove(name) is not None
        fill = self._fills.pop(name, None)
        if fill is not None:
            fill.publish = False
        forgot = self._failures.pop(name, None) is not None
        if removed or fill is not None or forgot:
            log.info("purged {name}", name=name)
            self.metrics.purges.inc()
            return True
        return False

    def purge_prefix(self, prefix: str) -> list[str]:
        """
        L{purge} every name starting with C{prefix}; returns those purged.
        """
        names = set(self.store.names()) | set(self._fills) | set(self._failures)
        return sorted(n for n in names if n.startswith(prefix) and self.purge(n))

    def stop(self) -> Deferred[Any]:
        """
        Cancel every download; fires when all have wound down.  A download
        that is already publishing (complete and verified) is let finish:
        its file-system work runs in a thread that cannot be interrupted.
        """
        self._stopping = True
        tasks = list(self._tasks.items())
        # Queued ones first, so no slot freed by a cancellation goes to them.
        for fill, task in sorted(tasks, key=lambda item: item[0].state != "queued"):
            if fill.state != "publishing":
                task.cancel()
        return DeferredList([task for _, task in tasks], consumeErrors=True)

    def _lifetime(self, headers: ObjectHeaders) -> float:
        return self._ttl if headers.max_age is None else headers.max_age

    async def _run(self, fill: Fill) -> None:
        try:
            await self._slots.acquire()
        except CancelledError:
            self._ended(fill, OriginError("cancelled", "the service stopped"))
            return
        if self._stopping:
            self._slots.release()
            self._ended(fill, OriginError("cancelled", "the service stopped"))
            return
        try:
            await self._download(fill)
        finally:
            self._slots.release()

    async def _download(self, fill: Fill) -> None:
        started = self.clock.seconds()
        try:
            stored = await self._fetch(fill)
        except (NotFoundAtOrigin, OriginError) as e:
            self._ended(fill, e)
        except CancelledError:
            self._ended(fill, OriginError("cancelled", "the download was cancelled"))
        except OSError as e:
            self._ended(fill, OriginError("write_error", f"cache write failed: {e}"))
        except Exception:
            log.failure("sync of {name} failed unexpectedly", name=fill.name)
            self._ended(fill, OriginError("internal", "internal error"))
        else:
            log.info(
                "synced {name} ({size} bytes) in {secs:.2f}s",
                name=fill.name,
                size=fill.written if stored is None else stored.size,
                secs=self.clock.seconds() - started,
                result="not_modified" if fill.headers is None else "ok",
            )
            self._forget(fill)
            fill.finish(stored)

    async def _fetch(self, fill: Fill) -> StoredObject | None:
        """
        Ask the origin for C{fill}'s name and keep what it sends: a renewed
        object (304), a new one, or nothing (purged, or no-store).  Releases
        its space reservation and temp file before it returns or raises.
        """
        name = fill.name
        self.metrics.origin_requests.inc()
        response = await self.origin.get(name, fill.revalidating)
        if response.not_modified:
            assert fill.revalidating is not None
            renewed: StoredObject = await self._run_in_thread(
                self.store.renewed, fill.revalidating, self._lifetime(response.headers)
            )
            self.metrics.revalidations.labels(result="not_modified").inc()
            if self.store.get(name) != fill.revalidating:
                return None  # purged or replaced meanwhile
            self.store.install(renewed)
            return renewed
        length, limit = response.length, self._max_object_size
        if limit is not None and length is not None and length > limit:
            self.origin.abandon(response)
            raise OriginError(
                "too_large", f"{length} bytes is over the --max-object-size of {limit}"
            )
        reservation = self.store.reserve(length or 0, keep=name)
        if reservation is None:
            self.origin.abandon(response)
            raise OriginError("no_space", f"no room in the cache for {length} more bytes")
        fd, temp_path = self.store.new_temp()
        try:

            def write(data: bytes) -> None:
                total = fill.written + len(data)
                if limit is not None and total > limit:
                    raise OSError(errno.EFBIG, "the body passed --max-object-size")
                reservation.ensure(total)
                fill.write(data)
                self.metrics.origin_bytes.inc(len(data))

            if response.headers.no_store:
                fill.publish = False
            fill.begin(response, fd, self.store.write)
            await self.origin.stream(response, write)
            fill.check_complete()
            if fill.revalidating is not None:
                self.metrics.revalidations.labels(result="modified").inc()
                if response.headers.no_store:
                    # The origin no longer lets it be cached.
                    self.store.remove(name)
            if not fill.publish:
                return None
            fill.state = "publishing"
            stored: StoredObject = await self._run_in_thread(
                self.store.commit,
                name,
                fd,
                temp_path,
                fill.written,
                response.headers,
                self._lifetime(response.headers),
            )
            temp_path = None
            self.store.install(stored, None if fill.revalidating else fill.used_at)
            if not fill.publish:
                # Purged while its files were being committed.
                self.store.remove(name)
                return None
            return stored
        finally:
            reservation.release()
            if temp_path is not None:
                self.store.discard_temp(temp_path)

    def _ended(self, fill: Fill, error: Exception) -> None:
        if isinstance(error, NotFoundAtOrigin):
            reason, ttl = "not_found", self._negative_ttl
            if fill.revalidating is not None and self._fills.get(fill.name) is fill:
                # The origin deleted it: so do we.
                self.store.remove(fill.name)
        else:
            assert isinstance(error, OriginError)
            reason = error.reason
            ttl = self._negative_ttl if reason == "too_large" else self._error_ttl
            self.metrics.sync_failures.labels(reason=reason).inc()
        if fill.revalidating is not None:
            self.metrics.revalidations.labels(
                result="not_found" if reason == "not_found" else "error"
            ).inc()
        if reason != "cancelled" and self._fills.get(fill.name) is fill:
            self._remember(fill.name, error, ttl)
        log.info(
            "sync of {name} failed: {reason}: {why}",
            name=fill.name,
            reason=reason,
            why=str(error),
            result=reason,
        )
        self._forget(fill)
        fill.fail(error)

    def _forget(self, fill: Fill) -> None:
        fill.close()
        self._tasks.pop(fill, None)
        if self._fills.get(fill.name) is fill:
            del self._fills[fill.name]

    def _remember(self, name: str, error: Exception, ttl: float) -> None:
        now = self.clock.seconds()
        self._failures.pop(name, None)
        self._failures[name] = (now + ttl, error)
        while self._failures:
            oldest_name, (expires, _) = next(iter(self._failures.items()))
            if expires > now and len(self._failures) <= _MAX_REMEMBERED:
                break
            del self._failures[oldest_name]
