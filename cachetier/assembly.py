"""
One assembly for every process: the primary's store, syncer and site, or
a worker's store and site, with the access log, analytics and the parts
that close with them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import Any

from attrs import Factory, frozen
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

from .analytics import Analytics
from .cluster.bus import Bus
from .cluster.generations import Generations
from .cluster.membership import Membership
from .cluster.threads import RedisThreads
from .config import Settings
from .limits import site_limits
from .metrics import Metrics
from .origin import Breaker, IdentityAgent, Origin, RetryPolicy
from .origin.auth import CredentialSource, HeaderFile, S3Signer
from .origin.upstreams import Upstreams
from .store import GENERATION_FILE, CacheStore, Generation, unlink
from .sync import Syncer
from .tiers import ClusterShields, cluster_parts, upstreams_for
from .web import CacheSite, build_root
from .web._twisted import QuietPool
from .web.access import AccessLine, AccessLogFile
from .web.proxy import PrimaryProxy, primary_agent, primary_pool
from .web.worker import Reporter, WorkerFiles, build_worker_root

log = Logger()


@frozen
class Tree:
    """
    What differs between the primary's assembly and a worker's: the
    store as the process opens it, what it serves, and what it owns.

    @ivar reporter: in a worker, what tells the primary of its hits.
    @ivar bus: in the primary of a cluster's node, its purge log.
    """

    store: CacheStore
    root: Resource
    pool: HTTPConnectionPool
    analytics: Analytics | None = None
    syncer: Syncer | None = None
    reloadables: list[Callable[[], None]] = Factory(list)
    reporter: Reporter | None = None
    membership: Membership | None = None
    bus: Bus | None = None
    upstreams: Upstreams | None = None
    following: ClusterShields | None = None
    redis_threads: RedisThreads | None = None


@frozen
class Assembly:
    """
    The parts of one process of a cache tier, wired together: the
    primary's, or (without a syncer) a worker's.
    """

    store: CacheStore
    syncer: Syncer | None
    site: CacheSite
    pool: HTTPConnectionPool
    access_file: AccessLogFile | None = None
    # What SIGHUP re-reads besides logs: origin credentials and headers.
    reloadables: list[Callable[[], None]] = Factory(list)
    analytics: Analytics | None = None
    reporter: Reporter | None = None
    upstreams: Upstreams | None = None
    membership: Membership | None = None
    bus: Bus | None = None
    following: ClusterShields | None = None
    redis_threads: RedisThreads | None = None

    def start(self) -> None:
        """
        Start what runs beside the site: the cluster's reader thread, the
        heartbeat that tells of each purge applied, and the reading of the
        cluster's shields.
        """
        if self.redis_threads is not None:
            self.redis_threads.start()
        if self.bus is not None:
            self.bus.start()
        if self.membership is not None:
            self.membership.start()
        if self.following is not None:
            self.following.start()

    def flush(self) -> None:
        """
        Buffered access lines and analytics events out, the cluster's
        heartbeat, and (in the primary) sparse fills' leftovers nobody
        resumed in a day removed.  A failure is logged, and the next
        flush tries again.
        """
        self.site.metrics.history.sample()  # the status page's, once a second
        if self.membership is not None:
            self.membership.beat()
        for buffered in (self.access_file, self.analytics):
            if buffered is not None:
                try:
                    buffered.flush()
                except Exception:
                    log.failure("flushing {what} failed", what=type(buffered).__name__)
        if self.syncer is not None:
            try:
                self.store.expire_partials()
            except OSError:
                log.failure("removing old leftovers failed")

    def stop(self) -> Deferred[Any]:
        """
        Stop following the cluster's log, cancel the downloads, then close
        the origin connections and the access log.
        """
        if self.following is not None:
            self.following.stop()
        d = succeed(None) if self.bus is None else self.bus.stop()
        if self.syncer is not None:
            d.addCallback(lambda _: self.syncer.stop())
        if self.upstreams is not None:
            d.addCallback(lambda _: self.upstreams.stop())
        if self.membership is not None:
            membership = self.membership
            d.addCallback(lambda _: membership.leave())
        if self.redis_threads is not None:
            redis_threads = self.redis_threads
            d.addCallback(lambda _: redis_threads.stop())
        d.addCallback(lambda _: self.pool.closeCachedConnections())
        if self.analytics is not None:
            d.addCallback(lambda _: self.analytics.drain())
        if self.access_file is not None:
            d.addCallback(lambda _: self.access_file.close())
        return d


def assemble(
    settings: Settings, reactor: Any, site: CacheSite | None = None, primary: str | None = None
) -> Assembly:
    """
    Open the store and build a process's site; bind nothing.

    @param site: a site already listening, to serve the cache from now
        on; by default a new one.
    @param primary: in a worker, the primary's private socket, where
        what the worker does not serve from disk goes.
    """
    metrics = Metrics() if site is None else site.metrics
    run_in_thread = partial(deferToThreadPool, reactor, reactor.getThreadPool())
    if primary is None:
        tree = primary_tree(settings, reactor, metrics, run_in_thread)
    else:
        tree = worker_tree(settings, reactor, metrics, run_in_thread, primary)
    if site is None:
        site = CacheSite(tree.root, metrics, reactor=reactor, **site_limits(settings))
    else:
        site.resource = tree.root
    site.analytics = tree.analytics
    access_file = None
    if settings.access_log == "off":
        site.access_log = None
    elif settings.access_log:
        # In a worker, the primary's file: every line is appended whole.
        access_file = AccessLogFile(settings.access_log)
        site.access_log = AccessLine(access_file.write, reactor.seconds)
    reloadables = list(tree.reloadables)
    if tree.analytics is not None:
        reloadables.append(tree.analytics.reload_bots)
    return Assembly(
        tree.store,
        tree.syncer,
        site,
        tree.pool,
        access_file,
        reloadables,
        tree.analytics,
        tree.reporter,
        membership=tree.membership,
        bus=tree.bus,
        upstreams=tree.upstreams,
        following=tree.following,
        redis_threads=tree.redis_threads,
    )


def _analytics(settings: Settings, run_in_thread: Any, store: CacheStore) -> Analytics | None:
    # One database for every process: SQLite (WAL) takes writes from all.
    if settings.analytics_retention_days is None:
        return None
    return Analytics(
        settings.cache_dir,
        run_in_thread,
        store.locate,
        settings.analytics_retention_days,
        bots_file=settings.bots_file,
    )


def syncer_for(
    settings: Settings,
    origin: Origin | Upstreams,
    store: CacheStore,
    clock: Any,
    run_in_thread: Any,
    metrics: Metrics,
) -> Syncer:
    """
    The syncer the settings call for, over C{origin} and C{store}.
    """
    return Syncer(
        origin,
        store,
        clock,
        run_in_thread,
        max_concurrent=settings.max_concurrent_syncs,
        max_queued=settings.max_queued_syncs,
        max_new_per_second=settings.max_syncs_per_second,
        max_new_per_client=settings.max_syncs_per_client,
        max_object_size=settings.max_object_size,
        ttl=settings.ttl,
        stale_while_revalidate=settings.stale_while_revalidate,
        stale_if_error=settings.stale_if_error,
        negative_ttl=settings.negative_ttl,
        metrics=metrics,
        fill_connections=settings.fill_connections,
        max_variants=settings.max_variants,
    )


def primary_tree(settings: Settings, reactor: Any, metrics: Metrics, run_in_thread: Any) -> Tree:
    """
    The primary's part: the store, opened and recovered, and the syncer
    that fills it from the origin.
    """
    store = CacheStore.open(
        settings.cache_dir,
        max_size=settings.max_size,
        min_free=settings.min_free,
        on_evict=lambda obj: metrics.evictions.inc(),
        now=reactor.seconds,
        discard=lambda path: run_in_thread(unlink, path).addErrback(
            lambda f: log.failure("removing {path} failed", f, path=path)
        ),
    )
    pool = QuietPool(reactor, persistent=True)
    pool.maxPersistentPerHost = settings.max_concurrent_syncs
    origin, reloadables = _origin(settings, reactor, pool, run_in_thread)
    generations = Generations()
    store.record_generations(generations.of)
    upstreams = upstreams_for(settings, reactor, pool, origin, metrics, generations)
    syncer = syncer_for(settings, upstreams or origin, store, reactor, run_in_thread, metrics)
    metrics.watch(
        objects=lambda: len(store),
        cached_bytes=lambda: store.total_bytes,
        in_flight=lambda: syncer.in_flight,
        queued=lambda: syncer.queued,
        breaker_open=lambda: 0 if origin.breaker.state == "closed" else 1,
        disk_free=store.free_bytes,
        disk_quota=store.capacity,
        disk_reserved=lambda: store.reserved,
    )
    analytics = _analytics(settings, run_in_thread, store)
    bus, health, membership, cluster, redis_threads = cluster_parts(
        settings, reactor, store, syncer, metrics, pool, generations
    )
    root = build_root(
        store, syncer, settings, metrics, analytics, bus, health, cluster, generations
    )
    following = None
    if settings.shields_from_cluster and membership is not None and upstreams is not None:
        following = ClusterShields(membership, upstreams, settings, reactor)
    return Tree(
        store,
        root,
        pool,
        analytics,
        syncer,
        reloadables,
        membership=membership,
        bus=bus,
        upstreams=upstreams,
        following=following,
        redis_threads=redis_threads,
    )


def _origin(
    settings: Settings, reactor: Any, pool: HTTPConnectionPool, run_in_thread: Any
) -> tuple[Origin, list[Callable[[], None]]]:
    """
    The origin's client, and what SIGHUP re-reads of its credentials.
    """
    agent = Agent(reactor, connectTimeout=settings.origin_timeout, pool=pool)
    signer = header_file = None
    reloadables: list[Callable[[], None]] = []
    if settings.origin_auth == "s3":
        assert settings.s3_region is not None
        credentials = CredentialSource()
        signer = S3Signer(settings.s3_region, credentials)
        reloadables.append(credentials.reset)
    if settings.origin_header_file is not None:
        header_file = HeaderFile(settings.origin_header_file)
        reloadables.append(header_file.reload)
    origin = Origin(
        settings.origin,
        HTTPClient(IdentityAgent(agent)),
        reactor,
        settings.origin_timeout,
        breaker=Breaker(reactor, settings.breaker_threshold, settings.breaker_cooloff),
        retry=RetryPolicy(attempts=settings.origin_retries),
        min_rate=settings.origin_min_rate,
        rate_window=settings.origin_min_rate_window,
        signer=signer,
        header_file=header_file,
        run_in_thread=run_in_thread,
        forward_headers=settings.forward_request_headers,
        node_name=settings.node_name,
    )
    return origin, reloadables


def worker_tree(
    settings: Settings, reactor: Any, metrics: Metrics, run_in_thread: Any, primary: str
) -> Tree:
    """
    A worker's part: the primary's store, opened but neither recovered
    nor filled (the primary owns it), fresh hits served from it and the
    rest relayed to the primary.
    """
    store = CacheStore(settings.cache_dir)
    pool = primary_pool(reactor)
    agent = primary_agent(reactor, primary, pool)
    files = WorkerFiles(
        store,
        Generation(os.path.join(settings.cache_dir, GENERATION_FILE)),
        reactor,
        PrimaryProxy(agent),
        settings.cache_control_max_age,
        run_in_thread,
        settings.node_name,
    )
    return Tree(
        store,
        build_worker_root(files),
        pool,
        _analytics(settings, run_in_thread, store),
        reporter=Reporter(files, metrics, agent, reactor),
    )
