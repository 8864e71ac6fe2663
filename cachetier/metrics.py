"""
Prometheus metrics, one registry per service so tests and several services
in one process never share counters.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    """
    The collectors the service updates.  Gauges that mirror state (objects
    cached, syncs in flight) read it when scraped; see L{watch}.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cachetier_requests",
            "File requests by cache outcome (hit, miss, stale, not_found, error...).",
            ["outcome"],
            registry=r,
        )
        self.http_requests = Counter(
            "cachetier_http_requests", "Responses of every kind, from every process.", registry=r
        )
        self.bytes_served = Counter(
            "cachetier_served_bytes", "Body bytes sent to listeners.", registry=r
        )
        self.origin_requests = Counter(
            "cachetier_origin_requests", "GET requests sent to the origin.", registry=r
        )
        self.origin_bytes = Counter(
            "cachetier_origin_bytes", "Body bytes received from the origin.", registry=r
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

    @property
    def counters(self) -> dict[str, Counter]:
        """
        The counters by attribute name: what a worker reports to the primary.
        """
        return {k: v for k, v in vars(self).items() if isinstance(v, Counter)}

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
            (counter.labels(**labels) if labels else counter).inc(delta)
        except ValueError:
            pass  # labels this counter does not have

    def watch(
        self,
        objects: Callable[[], float],
        cached_bytes: Callable[[], float],
        in_flight: Callable[[], float],
        queued: Callable[[], float],
        breaker_open: Callable[[], float],
    ) -> None:
        """
        Have the state gauges read their values when scraped.
        """
        self.cached_objects.set_function(objects)
        self.cached_bytes.set_function(cached_bytes)
        self.syncs_in_flight.set_function(in_flight)
        self.syncs_queued.set_function(queued)
        self.breaker_open.set_function(breaker_open)
