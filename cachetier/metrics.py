"""
Prometheus metrics, one registry per service so tests and several services
in one process never share counters.
"""

from __future__ import annotations

import platform
import time
from collections import deque
from collections.abc import Callable
from itertools import pairwise
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily

import twisted

from . import __version__

# Request durations: a hit of a small file takes milliseconds, a whole
# episode to a slow listener many minutes.
_DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0, 300.0, 1800.0)
_FIRST_BYTE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# What the status page draws of the requests' outcomes: each outcome's
# group (the others, such as relayed or internal, are counted where they
# are served, or are no listener's).
OUTCOME_GROUPS = {
    "hit": "hit",
    "miss": "miss",
    "redirect": "miss",
    "stale": "stale",
    "error": "error",
    "overloaded": "error",
    "no_space": "error",
    "refused": "error",
    "stale_withheld": "error",
    "not_found": "not_found",
    "bad_name": "not_found",
}
GROUPS = ("hit", "miss", "stale", "error", "not_found")
# Sync failures that are not the origin's fault: the rest are.
NOT_ORIGIN_FAILURES = frozenset(
    {"not_found", "too_large", "cancelled", "internal", "write_error", "no_space"}
)


class ByteTally:
    """
    A counter of bytes that the serving path adds to for every chunk it
    sends: one int add on a plain attribute (L{value}), no lock and no
    label lookup, as a body may be thousands of chunks.  Read (as a
    Prometheus counter) only when scraped, in the reactor thread like
    every add.
    """

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0
        registry.register(self)

    def inc(self, amount: float = 1) -> None:
        """
        Count C{amount} more (as L{Counter.inc}).
        """
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += int(amount)

    def collect(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.documentation, value=self.value)]

    describe = collect


class Metrics:
    """
    The collectors the service updates.  Gauges that mirror state (objects
    cached, syncs in flight) read it when scraped; see L{watch}.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._register_requests(self.registry)
        self._register_origin(self.registry)
        self._register_upstreams(self.registry)
        self._register_responses(self.registry)
        self._register_cache(self.registry)
        self._register_disk(self.registry)
        _register_build_and_process(self.registry)
        self.history = History(self)

    def _register_requests(self, r: CollectorRegistry) -> None:
        """
        Requests by outcome and the bytes served to listeners.
        """
        self.requests = Counter(
            "cachetier_requests",
            "File requests by cache outcome (hit, miss, stale, not_found, error...).",
            ["outcome"],
            registry=r,
        )
        self.http_requests = Counter(
            "cachetier_http_requests", "Responses of every kind, from every process.", registry=r
        )
        self.bytes_served = ByteTally(
            "cachetier_served_bytes",
            "Body bytes sent to listeners, counted as they leave (see cachetier.web.bodies).",
            r,
        )

    def _register_origin(self, r: CollectorRegistry) -> None:
        """
        What the syncs ask of the origin: requests, bytes, failures, refusals
        and revalidations.
        """
        self.origin_requests = Counter(
            "cachetier_origin_requests", "GET requests sent to the origin.", registry=r
        )
        self.origin_bytes = ByteTally(
            "cachetier_origin_bytes", "Body bytes received from the origin, as they land.", r
        )
        self.sync_failures = Counter(
            "cachetier_sync_failures", "Failed syncs by reason.", ["reason"], registry=r
        )
        self.syncs_refused = Counter(
            "cachetier_syncs_refused",
            "Syncs refused by the flood caps, by reason (queue_full, rate).",
            ["reason"],
            registry=r,
        )
        self.revalidations = Counter(
            "cachetier_revalidations",
            "Revalidations of expired objects by result (not_modified, modified, "
            "not_found, error).",
            ["result"],
            registry=r,
        )

    def _register_upstreams(self, r: CollectorRegistry) -> None:
        """
        What the fills ask of each upstream (each shield, by its URL, and
        the origin, as C{origin}): requests, bytes, errors and whether it
        is up.
        """
        self.upstream_requests = Counter(
            "cachetier_upstream_requests",
            "Requests sent to each upstream (a shield's URL, or origin).",
            ["upstream"],
            registry=r,
        )
        self.upstream_bytes = Counter(
            "cachetier_upstream_bytes",
            "Body bytes received from each upstream.",
            ["upstream"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "cachetier_upstream_errors",
            "Failed requests and bodies of each upstream, by reason.",
            ["upstream", "reason"],
            registry=r,
        )
        self.upstream_up = Gauge(
            "cachetier_upstream_up",
            "1 while a shield is up (taking requests), 0 while it is skipped.",
            ["upstream"],
            registry=r,
        )

    def tally(self, upstream: str, what: str, amount: int) -> None:
        """
        Count C{amount} requests or bytes (C{what}), or errors of reason
        C{what}, for C{upstream}.
        """
        if what == "requests":
            self.upstream_requests.labels(upstream=upstream).inc(amount)
        elif what == "bytes":
            self.upstream_bytes.labels(upstream=upstream).inc(amount)
        else:
            self.upstream_errors.labels(upstream=upstream, reason=what).inc(amount)

    def _register_responses(self, r: CollectorRegistry) -> None:
        """
        How responses end: connections refused, responses timed out or cut
        short, and how long they take.
        """
        self.connections_refused = Counter(
            "cachetier_connections_refused",
            "Connections closed on accept: the connection cap was reached.",
            registry=r,
        )
        self.responses_timed_out = Counter(
            "cachetier_responses_timed_out",
            "Responses aborted because the client took no bytes for --send-timeout.",
            registry=r,
        )
        self.responses_aborted = Counter(
            "cachetier_responses_aborted",
            "Responses cut short: the client went away or was too slow, or the body failed.",
            registry=r,
        )
        self.aborted_bytes = Counter(
            "cachetier_aborted_bytes", "Body bytes sent in responses cut short.", registry=r
        )
        self.request_seconds = Histogram(
            "cachetier_request_duration_seconds",
            "Time from a request's arrival to the end of its response (this process).",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.miss_first_byte_seconds = Histogram(
            "cachetier_miss_first_byte_seconds",
            "Time from a miss's arrival to its first body byte (origin and queue included).",
            buckets=_FIRST_BYTE_BUCKETS,
            registry=r,
        )

    def _register_cache(self, r: CollectorRegistry) -> None:
        """
        The cache's contents and the work on them: evictions, purges, the
        origin breaker and the syncs in flight or queued.
        """
        self.evictions = Counter("cachetier_evictions", "Objects evicted to make room.", registry=r)
        self.purges = Counter("cachetier_purges", "Names purged by the admin API.", registry=r)
        self.breaker_open = Gauge(
            "cachetier_origin_breaker_open",
            "1 while the origin breaker is open or half-open, else 0.",
            registry=r,
        )
        self.syncs_in_flight = Gauge(
            "cachetier_syncs_in_flight", "Downloads from the origin under way.", registry=r
        )
        self.syncs_queued = Gauge(
            "cachetier_syncs_queued", "Downloads waiting for a free slot.", registry=r
        )
        self.cached_objects = Gauge(
            "cachetier_cached_objects", "Complete objects in the cache.", registry=r
        )
        self.cached_bytes = Gauge(
            "cachetier_cached_bytes", "Bytes of complete objects in the cache.", registry=r
        )

    def _register_disk(self, r: CollectorRegistry) -> None:
        """
        The cache's file system: free space, the quota and the reservations.
        """
        self.disk_free = Gauge(
            "cachetier_disk_free_bytes",
            "Bytes free on the cache's file system (for unprivileged users).",
            registry=r,
        )
        self.disk_quota = Gauge(
            "cachetier_disk_quota_bytes",
            "The --max-size quota, or the file system's size less --min-free.",
            registry=r,
        )
        self.disk_reserved = Gauge(
            "cachetier_disk_reserved_bytes",
            "Bytes set aside for downloads in progress.",
            registry=r,
        )

    @property
    def counters(self) -> dict[str, Counter | ByteTally]:
        """
        The counters by attribute name: what a worker reports to the primary.
        """
        return {k: v for k, v in vars(self).items() if isinstance(v, Counter | ByteTally)}

    def counter_values(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """
        Every counter's current value, by attribute name and labels.
        """
        values = {}
        for attr, counter in self.counters.items():
            for family in counter.collect():
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        values[(attr, tuple(sorted(sample.labels.items())))] = sample.value
        return values

    def add(self, attr: str, labels: dict[str, str], delta: float) -> None:
        """
        Count C{delta} more for a counter another process reported; unknown
        names and negative deltas are ignored.
        """
        counter = self.counters.get(attr)
        if counter is None or delta <= 0:
            return
        try:
            if not labels:
                counter.inc(delta)
            elif isinstance(counter, Counter):
                counter.labels(**labels).inc(delta)
        except ValueError:
            pass  # labels this counter does not have (a byte tally has none)

    def watch_cluster(self, lag: Callable[[], float]) -> None:
        """
        In a cluster: how far behind the cluster's purge log this node is,
        read when scraped (C{cachetier_cluster_lag_seconds}).
        """
        Gauge(
            "cachetier_cluster_lag_seconds",
            "Seconds since this node was last level with the cluster's purge log"
            " (+Inf before it ever was; above --cluster-max-lag, every hit is revalidated).",
            registry=self.registry,
        ).set_function(lag)

    def hit_ratio(self) -> float | None:
        """
        Hits among the listeners' requests that found the file (hit, miss
        or stale) since the start; L{None} before the first.
        """
        found = dict.fromkeys(("hit", "miss", "stale"), 0.0)
        for family in self.requests.collect():
            for s in family.samples:
                group = OUTCOME_GROUPS.get(s.labels.get("outcome", ""))
                if group in found and s.name.endswith("_total"):
                    found[group] += s.value
        total = sum(found.values())
        return round(found["hit"] / total, 4) if total else None

    def watch(
        self,
        objects: Callable[[], float],
        cached_bytes: Callable[[], float],
        in_flight: Callable[[], float],
        queued: Callable[[], float],
        breaker_open: Callable[[], float],
        disk_free: Callable[[], float],
        disk_quota: Callable[[], float],
        disk_reserved: Callable[[], float],
    ) -> None:
        """
        Have the state gauges read their values when scraped.
        """
        self.disk_free.set_function(disk_free)
        self.disk_quota.set_function(disk_quota)
        self.disk_reserved.set_function(disk_reserved)
        self.cached_objects.set_function(objects)
        self.cached_bytes.set_function(cached_bytes)
        self.syncs_in_flight.set_function(in_flight)
        self.syncs_queued.set_function(queued)
        self.breaker_open.set_function(breaker_open)


class History:
    """
    The last C{seconds} of traffic, one sample a second, for the status
    page to draw when it opens: bytes to listeners and from the origin,
    requests by outcome group, and origin failures, as counter values
    (a bounded ring of 901 samples, about 300 bytes each).

    L{sample} runs once a second (the service's flush) and whenever the
    page asks; the first sample of a second stands and later ones in it
    are not taken, so that a row the page has read never changes (a
    sample replaced after a poll would lose the requests between them).
    """

    def __init__(
        self, metrics: Metrics, seconds: int = 900, clock: Callable[[], float] = time.time
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self._ring: deque[tuple[int, tuple[float, ...]]] = deque(maxlen=seconds + 1)

    def sample(self) -> None:
        at = int(self.clock())
        if self._ring and self._ring[-1][0] == at:
            return
        m = self.metrics
        outcomes = dict.fromkeys(GROUPS, 0.0)
        for family in m.requests.collect():
            for s in family.samples:
                group = OUTCOME_GROUPS.get(s.labels.get("outcome", ""))
                if group is not None and s.name.endswith("_total"):
                    outcomes[group] += s.value
        failures = 0.0
        for family in m.sync_failures.collect():
            for s in family.samples:
                if s.name.endswith("_total") and s.labels.get("reason") not in NOT_ORIGIN_FAILURES:
                    failures += s.value
        values = (m.bytes_served.value, m.origin_bytes.value, *outcomes.values(), failures)
        self._ring.append((at, values))

    def origin_errors_since(self, since: float) -> int:
        """
        Syncs failed by the origin from the first sample at or after
        C{since} to the latest.
        """
        first = next((v for at, v in self._ring if at >= since), None)
        if first is None:
            return 0
        return int(self._ring[-1][1][-1] - first[-1])

    def rates(self, since: float = 0) -> list[dict[str, Any]]:
        """
        Per sample after C{since}: C{t} (Unix time) and C{dt} (seconds since
        the sample before, 1 while the service samples), C{out} and C{origin}
        (bytes a second), each outcome group (requests a second) and
        C{origin_errors} (failed syncs a second).
        """
        keys = ("out", "origin", *GROUPS, "origin_errors")
        rows = []
        for (t0, a), (t1, b) in pairwise(self._ring):
            if t1 <= since:
                continue
            dt = t1 - t0
            row: dict[str, Any] = {"t": t1, "dt": dt}
            row.update((k, max(0.0, (y - x) / dt)) for k, x, y in zip(keys, a, b, strict=True))
            rows.append(row)
        return rows


def _register_build_and_process(r: CollectorRegistry) -> None:
    """
    The running version, and the process and platform collectors.
    """
    Info("cachetier_build", "The running version.", registry=r).info(
        {
            "version": __version__,
            "twisted": twisted.__version__,
            "python": platform.python_version(),
        }
    )
    ProcessCollector(registry=r)
    PlatformCollector(registry=r)
