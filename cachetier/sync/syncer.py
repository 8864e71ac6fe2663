"""
The registry of syncs: at most one download per name (single flight),
revalidation of stale objects, purges, and the caps on downloads.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..errors import OriginAnswer, OriginError, Overloaded, Reason
from ..metrics import Metrics
from ..names import split_variant
from ..objects import ObjectHeaders, StoredObject
from ..origin import Origin, Upstreams
from ..store import CacheStore
from .admission import Admission, FailureMemory
from .download import Download, RunInThread
from .fill import Fill, Headers
from .flights import Flights
from .freshness import Freshness
from .outcomes import FileStatus, Lookup, OriginHealth, Outcome, looped, origin_failed
from .variants import Variants
from .warming import Warming

log = Logger()


class Syncer:
    """
    Owns every download: at most one per name, at most C{max_concurrent} at
    once (the rest queue, up to C{max_queued}), at most
    C{max_new_per_second} new ones a second, and a short memory of recent
    failures so a missing or failing name does not send a request per
    listener.

    @param run_in_thread: runs a blocking callable off the reactor thread
        and returns a L{Deferred} of its result (the fsyncs of a publish).
    @param ttl, stale_while_revalidate, stale_if_error: see L{Freshness}.
    @param max_object_size: bigger objects are not cached (L{None}: any).
    @param max_variants: variants kept of one name (see L{Variants}).
    """

    def __init__(
        self,
        origin: Origin | Upstreams,
        store: CacheStore,
        clock: IReactorTime,
        run_in_thread: RunInThread,
        *,
        max_concurrent: int = 8,
        max_queued: int = 1000,
        max_new_per_second: float = 50.0,
        max_new_per_client: float = 25.0,
        max_object_size: int | None = None,
        ttl: float = 86400.0,
        stale_while_revalidate: float = 0.0,
        stale_if_error: float = 7 * 86400.0,
        negative_ttl: float = 60.0,
        error_ttl: float = 5.0,
        metrics: Metrics | None = None,
        fill_connections: int = 1,
        max_variants: int = 8,
    ) -> None:
        self.variants = Variants(store, max_variants)
        self._fill_connections = fill_connections
        self.origin = origin
        self.store = store
        self.clock = clock
        self.run_in_thread = run_in_thread
        self._slots = DeferredSemaphore(max_concurrent)
        self._max_object_size = max_object_size
        self._freshness = Freshness(ttl, stale_while_revalidate, stale_if_error)
        self._negative_ttl = negative_ttl
        self._error_ttl = error_ttl
        self.metrics = metrics or Metrics()
        self._admission = Admission(
            clock, self.metrics, max_queued, max_new_per_second, max_new_per_client
        )
        self._failures = FailureMemory(clock)
        # When each kind of sync failure last happened (bounded), for /healthz.
        self.last_failed: dict[str, float] = {}
        self._fills = Flights()
        self._tasks: dict[Fill, Deferred[None]] = {}
        self._stopping = False
        self.doubt_before = lambda: 0.0  # the cluster's, per lookup: older copies revalidated
        self.warming = Warming(
            lambda name: self.status(name, start=False),
            self._launch,
            self._fills.get,
            self._slots,
            lambda: self._stopping,
        )

    @property
    def in_flight(self) -> int:
        return self._slots.limit - self._slots.tokens

    @property
    def queued(self) -> int:
        return len(self._slots.waiting)

    def fill_for(self, name: str) -> Fill | None:
        """The download of C{name} under way, if there is one."""
        return self._fills.newest(name)

    def fresh_for(self, headers: ObjectHeaders) -> float:
        """
        How much longer an answer arriving now with C{headers} is fresh
        here: the lifetime its copy will have once published.
        """
        return self._freshness.lifetime(headers, self.clock.seconds())

    def recent_failure(self, name: str) -> Exception | None:
        """Why the last sync of C{name} failed, while that is remembered."""
        return self._failures.get(name)

    def origin_url(self, name: str) -> str:
        """
        Where the origin serves C{name} (for listeners sent there).
        """
        return self.origin.url_for(name)

    def origin_health(self) -> OriginHealth:
        """
        How the origin fares now (for C{/healthz} and the dashboard).
        """
        return OriginHealth.of(self.origin)

    def lookup(self, name: str, client: str | None = None, headers: Any = None) -> Lookup:
        """
        What a request for C{name} with C{headers} gets (see L{status},
        which this starts like): the cached copy (of the variant its
        headers select), fresh or stale; the download to follow; or why
        there is nothing to serve.
        """
        name = self.variants.key(name, headers)
        stored = self.store.get(name)
        if stored is not None and self.clock.seconds() < stored.expires_at:
            if stored.fetched_at >= self.doubt_before():
                self.variants.used(name)
                return Lookup(Outcome.CACHED, stored=stored)  # the common case, cheaply
        cached = stored is not None
        failure = self.recent_failure(name)
        if isinstance(failure, OriginAnswer) and not (cached and origin_failed(failure)):
            # Not kept: ask again (a 5xx leaves a stale copy to stale-if-error).
            self._failures.forget(name)
        forwarded = self.origin.forwarded(headers)
        return Lookup.of(self.status(name, client=client, forwarded=forwarded), cached)

    def after_failure(self, name: str, error: Exception, headers: Any = None) -> Lookup:
        """
        What a request that waited for a download of C{name} gets when that
        download failed with C{error}: a revalidated copy within its
        stale-if-error window, or else the origin's answer as it came.
        """
        name = self.variants.key(name, headers)
        if self.store.get(name) is None:
            return Lookup(Outcome.ERROR, error=error)
        status = self.status(name, start=False)
        if status.stored is not None:
            return Lookup(Outcome.STALE, stored=status.stored)
        if isinstance(error, OriginAnswer):
            return Lookup(Outcome.ERROR, error=error)  # the origin's answer, passed on
        return Lookup(Outcome.WITHHELD, error=error)

    def status(
        self, name: str, start: bool = True, client: str | None = None, forwarded: Headers = ()
    ) -> FileStatus:
        """
        Where C{name} stands; with C{start}, begin syncing it if it is
        neither cached, under way nor recently failed, and begin
        revalidating it if it is stale.

        @param client, forwarded: who asks (for fair admission), and the
            headers a fill this starts sends the origin.
        """
        name = self.variants.key(name)  # a name's own: of a request without headers
        stored = self.store.get(name)
        if stored is not None:
            cached = self._cached(stored, start, client, forwarded)
            if cached is not None:
                return cached
            # Stale past every window: readers wait for the revalidation.
        fill = self._fills.get(name) if start else self._fills.newest(name)
        if fill is None:
            failure = self.recent_failure(name)
            if failure is not None:
                return FileStatus.failed(name, failure)
            if not start:
                return FileStatus(name, "missing")
            try:
                fill = self.start(name, client=client, forwarded=forwarded)
            except Overloaded as e:
                return FileStatus(name, "missing", error=e)
        if fill.state == "done":
            if fill.stored is not None:
                return FileStatus.of(name, fill.stored)
            return FileStatus(name, "missing")
        if fill.state == "failed":
            return self.status(name, start=False)
        if start:
            fill.used_at = self.clock.seconds()
        return FileStatus(name, "syncing", fill=fill)

    def _cached(
        self, stored: StoredObject, start: bool, client: str | None, forwarded: Headers
    ) -> FileStatus | None:
        """
        The cached copy, if it may be served now (L{Freshness}); a stale
        one is revalidated, once, whether it is served meanwhile or not.
        """
        name, now = stored.name, self.clock.seconds()
        doubted = stored.fetched_at < self.doubt_before()
        if now < stored.expires_at and not doubted:
            return FileStatus.of(name, stored)
        if start and self._fills.get(name) is None and self.recent_failure(name) is None:
            try:
                self.start(name, revalidating=stored, client=client, forwarded=forwarded)
            except Overloaded:
                pass
            if self.store.get(name) is not stored:  # revalidated at once
                return self.status(name, start=False)
        # After starting: a revalidation can fail at once (an open breaker).
        failing = origin_failed(self.recent_failure(name))
        if (failing or not doubted) and self._freshness.may_serve_stale(stored, now, failing):
            return FileStatus.of(name, stored, stale=True)
        return None

    def start(
        self,
        name: str,
        revalidating: StoredObject | None = None,
        client: str | None = None,
        forwarded: Headers = (),
    ) -> Fill:
        """
        Join the download of C{name}, starting one if none is under way.
        The caller checks the store first.

        @raise Overloaded: when a new download would pass the caps.
        """
        fill = self._fills.get(name)
        if fill is None:
            self._admission.admit(self._slots.tokens, self.queued, client)
            fill = self._launch(name, revalidating, forwarded)
        return fill

    def _launch(
        self, name: str, revalidating: StoredObject | None = None, forwarded: Headers = ()
    ) -> Fill:
        fill = Fill(name, self.clock.seconds(), revalidating)
        fill.forwarded = forwarded
        leaving = self._fills.add(fill)
        self.warming.discard(name)
        self._failures.forget(name)
        task = Deferred.fromCoroutine(self._run(fill, leaving))
        if not task.called:
            self._tasks[fill] = task
        return fill

    def warm(self, name: str) -> str:
        """
        Sync C{name} ahead of its listeners, at low priority (see
        L{Warming.warm}).
        """
        return self.warming.warm(self.variants.key(name))

    def syncs(self) -> list[Fill]:
        """The downloads under way or waiting for a slot."""
        return self._fills.under_way()

    def purge(self, name: str, copies: bool = True) -> bool:
        """
        Forget C{name}: its cached copies and downloads (every variant's;
        a download is cancelled: its readers are aborted, nothing is
        published, its temp files go) and any remembered failure.  Without
        C{copies}, the copies stay: only the downloads stop.

        @return: whether there was anything to forget, once that is durable.
        """
        keys = {name, *self.variants.keys_of(name)}
        keys.update(key for key in self._fills.names() if split_variant(key)[0] == name)
        return any([self._purge_key(key, copies) for key in sorted(keys)])

    def _purge_key(self, name: str, copies: bool) -> bool:
        self.warming.discard(name)
        stopped = self._fills.purge(name)
        forgot = self._failures.forget(name)
        removed = copies and self.store.remove(name, durable=True) is not None
        if copies:
            self.variants.drop(name)
        if removed or stopped or forgot:
            log.info("purged {name}", name=name)
            self.metrics.purges.inc()
            return True
        return False

    def purge_prefix(self, prefix: str) -> list[str]:
        """
        L{purge} every name starting with C{prefix}; returns those purged.
        """
        names = set(self.store.names()) | self._fills.names() | set(self._failures.names())
        return sorted(
            {split_variant(n)[0] for n in names if n.startswith(prefix) and self.purge(n)}
        )

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

    async def _run(self, fill: Fill, leaving: Fill | None) -> None:
        try:
            if leaving is not None and not leaving.leaves_nothing:
                await leaving.when_done().addErrback(lambda _: None)
                fill.revalidating = self.store.get(fill.name)  # what it left
            acquiring = self._slots.acquire()
            fill.interrupt = acquiring.cancel
            await acquiring
        except CancelledError:
            self._ended(fill, self._cancelled())
            return
        finally:
            fill.interrupt = None
        if self._stopping or fill.purged:
            self._slots.release()
            self._ended(fill, self._cancelled())
            return
        try:
            await self._download(fill)
        finally:
            self._slots.release()
            self.warming.pump()

    def _cancelled(self) -> OriginError:
        why = "the service stopped" if self._stopping else "purged while queued"
        return OriginError(Reason.cancelled, why)

    async def _download(self, fill: Fill) -> None:
        started = self.clock.seconds()
        try:
            stored = await Download(
                fill,
                self.origin.forwarding(fill.forwarded) if fill.forwarded else self.origin,
                self.store,
                self.run_in_thread,
                self.metrics,
                lambda headers, old=None: self._freshness.lifetime(
                    headers, self.clock.seconds(), old
                ),
                self._max_object_size,
                clock=self.clock,
                fill_connections=self._fill_connections,
                borrow=self._borrow_slot,
                give_back=self._slots.release,
                negative_ttl=self._negative_ttl,
                keeps=self.variants.keeps,
            ).run()
        except OriginError as e:
            self._ended(fill, e)
        except CancelledError:
            self._ended(fill, OriginError(Reason.cancelled, "the download was cancelled"))
        except OSError as e:
            self._ended(
                fill, OriginError(Reason.write_error, f"cache write failed: {e.strerror or e}")
            )
        except Exception:
            log.failure("sync of {name} failed unexpectedly", name=fill.name)
            self._ended(fill, OriginError(Reason.internal, "internal error"))
        else:
            log.info(
                "synced {name} ({size} bytes) in {secs:.2f}s",
                name=fill.name,
                size=fill.written if stored is None else stored.size,
                secs=self.clock.seconds() - started,
                result="not_modified" if fill.headers is None else "ok",
            )
            if stored is not None:
                self.variants.installed(stored.name)
            self._forget(fill)
            fill.finish(stored)

    def _borrow_slot(self) -> bool:
        """
        Take one more download slot for an extra connection of a fill, if
        one is free now (never queue for it).
        """
        if self._slots.tokens <= 0 or self._stopping:
            return False
        self._slots.acquire()
        return True

    def _ended(self, fill: Fill, error: Exception) -> None:
        assert isinstance(error, OriginError)
        reason, label, ttl = error.reason, error.label, self._error_ttl
        not_found = isinstance(error, OriginAnswer) and error.not_found
        if reason is Reason.too_large or not_found:
            ttl = self._negative_ttl
        self.metrics.sync_failures.labels(reason=label).inc()
        passing = error.shield or looped(error)  # neither the origin's failure nor the name's
        if not ((isinstance(error, OriginAnswer) and error.status < 500) or passing):
            self.last_failed[label] = self.clock.seconds()  # the origin's, for /healthz
        if fill.revalidating is not None:
            self.metrics.revalidations.labels(result="not_found" if not_found else "error").inc()
        current = self._fills.current(fill)
        if reason not in (Reason.cancelled, Reason.changed) and current and not passing:
            self._failures.remember(fill.name, error, ttl)
        log.info(
            "sync of {name} failed: {reason}: {why}",
            name=fill.name,
            reason=label,
            why=str(error),
            result=label,
        )
        self._forget(fill)
        fill.fail(error)
        if reason is Reason.changed and current and not self._stopping:
            # Another version at the origin: readers aborted; a new fill starts over.
            try:
                self.start(fill.name, revalidating=fill.revalidating)
            except Overloaded:
                pass

    def _forget(self, fill: Fill) -> None:
        fill.close()
        self._tasks.pop(fill, None)
        self._fills.forget(fill)
