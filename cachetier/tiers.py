"""
A node's place among others, wired for the primary: its shields (fixed
by C{--shield}, or the cluster's live shields with C{--shield=cluster})
and its part in a cluster (the bus that follows the purge log, its
membership, the heartbeat's report).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from .cluster.bus import Bus
from .cluster.generations import Generations
from .cluster.membership import Membership, membership_for
from .cluster.threads import RedisThreads
from .config import Settings
from .metrics import Metrics
from .names import normalise_base
from .origin import IdentityAgent, Origin
from .origin.shields import shield
from .origin.upstreams import Upstreams
from .store import CacheStore
from .sync import Syncer
from .web.cluster import STATS_TIMEOUT, ClusterStats
from .web.health import Health

log = Logger()

# How often --shield=cluster reads the cluster's live shields.
FOLLOW_EVERY = 2.0


def cluster_parts(
    settings: Settings,
    reactor: Any,
    store: CacheStore,
    syncer: Syncer,
    metrics: Metrics,
    pool: HTTPConnectionPool,
    generations: Generations,
) -> tuple[Bus | None, Health, Membership | None, ClusterStats | None, RedisThreads | None]:
    """
    The primary's part in a cluster (C{--cluster}): the bus that follows
    the purge log, this node's membership, the cluster's numbers and the
    thread pool their Redis calls run in (all L{None} outside a cluster);
    and the health verdict, which the heartbeat carries.
    """
    threads = None if settings.cluster is None else RedisThreads(reactor)
    bus = (
        None
        if threads is None
        else Bus(settings, syncer, reactor, threads.run, generations, threads.run_unless_stuck)
    )
    health = Health(store, syncer, bus)
    report = partial(heartbeat_report, store, metrics, health, bus)
    applied = (lambda: None) if bus is None else (lambda: bus.applied)
    if bus is not None:
        metrics.watch_cluster(bus.lag_seconds)
    membership = (
        None if threads is None else membership_for(settings, report, threads.run, reactor, applied)
    )
    cluster = None
    if membership is not None:
        nodes = HTTPClient(Agent(reactor, connectTimeout=STATS_TIMEOUT, pool=pool))
        cluster = ClusterStats(membership.view, nodes, settings.admin_token, reactor)
    return bus, health, membership, cluster, threads


def upstreams_for(
    settings: Settings,
    reactor: Any,
    pool: HTTPConnectionPool,
    origin: Origin,
    metrics: Metrics,
    generations: Generations,
) -> Upstreams | None:
    """
    The shields (C{--shield}), then the origin: where the fills go; L{None}
    for a node without shields (it asks the origin itself).  The shields'
    requests share the origin's connection pool, with their own deadline
    to connect (C{--shield-timeout}), and say the cluster's generation of
    the name they ask for (with the cluster secret).  With
    C{--shield=cluster}, L{ClusterShields} tells the upstreams which
    shields are live.
    """
    if not settings.shields and not settings.shields_from_cluster:
        return None
    agent = Agent(reactor, connectTimeout=settings.shield_timeout, pool=pool)
    client = HTTPClient(IdentityAgent(agent))

    def make(url: str) -> Any:
        metrics.upstream_up.labels(upstream=url).set_function(
            lambda: 1 if upstreams.is_up(url) else 0
        )
        return shield(
            url,
            client,
            reactor,
            settings.shield_timeout,
            settings.origin_timeout,
            min_rate=settings.origin_min_rate,
            rate_window=settings.origin_min_rate_window,
            forward_headers=settings.forward_request_headers,
            node_name=settings.node_name,
            secret=settings.cluster_secret,
            generation_of=generations.stamp,
        )

    fallback = settings.shield_fallback == "origin"
    upstreams = Upstreams(
        origin, [], fallback, metrics.tally, make=make, forget=partial(forget_upstream, metrics)
    )
    upstreams.follow(settings.shields)
    return upstreams


def forget_upstream(metrics: Metrics, url: str) -> None:
    """
    Remove every series of the shield at C{url}, which has left: a cluster
    whose shields come back at new addresses must not grow /metrics.
    """
    metrics.upstream_up.remove(url)
    metrics.upstream_requests.remove(url)
    metrics.upstream_bytes.remove(url)
    reasons = {
        sample.labels["reason"]
        for family in metrics.upstream_errors.collect()
        for sample in family.samples
        if sample.labels.get("upstream") == url
    }
    for reason in reasons:
        metrics.upstream_errors.remove(url, reason)


class ClusterShields:
    """
    C{--shield=cluster}: the cluster's live nodes whose role is C{shield}
    (this node left out, and the C{--shield} URLs kept), read from
    membership every L{FOLLOW_EVERY} seconds and given to
    L{Upstreams.follow}.  While membership cannot be read, the last list
    stands.
    """

    def __init__(
        self, membership: Membership, upstreams: Upstreams, settings: Settings, clock: Any
    ) -> None:
        self._membership = membership
        self._upstreams = upstreams
        self._fixed = settings.shields
        self._own = settings.node_name
        self._following: tuple[str, ...] = settings.shields
        self._failing = False
        self._loop = LoopingCall(self._read)
        self._loop.clock = clock

    def start(self) -> None:
        self._loop.start(FOLLOW_EVERY, now=True).addErrback(
            lambda f: log.failure("following the cluster's shields stopped", f)
        )

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _read(self) -> Deferred[None]:
        d = self._membership.view()
        d.addCallbacks(self._viewed, self._unread)
        return d

    def _viewed(self, view: dict[str, Any]) -> None:
        self._failing = False
        urls = dict.fromkeys(self._fixed)
        for node in view["nodes"]:
            if node.get("alive") and node.get("role") == "shield" and node["name"] != self._own:
                try:
                    urls[normalise_base(str(node.get("url")))] = None
                except ValueError:
                    continue  # a node that could not say its URL
        following = tuple(urls)
        if following != self._following:
            log.info("shields from the cluster: {shields}", shields=", ".join(following) or "none")
            self._following = following
        self._upstreams.follow(following)

    def _unread(self, failure: Failure) -> None:
        if not self._failing:
            log.warn(
                "cannot read the cluster's shields ({why}): keeping {shields}",
                why=failure.getErrorMessage(),
                shields=", ".join(self._following) or "none",
            )
        self._failing = True


def heartbeat_report(
    store: CacheStore, metrics: Metrics, health: Health, bus: Bus | None
) -> dict[str, Any]:
    """
    What this node's heartbeat says of its state (see L{Membership}).
    """
    verdict = health.verdict()
    report = {
        "status": verdict["status"],
        "reason": "; ".join(verdict["reasons"]),
        "disk_used": store.total_bytes,
        "disk_quota": store.capacity(),
        "hit_ratio": metrics.hit_ratio(),
        "applied": None,
        "applied_at": None,
        "lag_seconds": None,
    }
    if bus is not None:
        lag = bus.lag_seconds()
        report.update(
            applied=bus.applied,
            applied_at=bus.applied_at,
            lag_seconds=None if lag == float("inf") else round(lag, 3),
        )
    return report
