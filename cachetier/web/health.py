"""
Operator endpoints: C{/healthz} (JSON) and C{/metrics} (Prometheus).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ..metrics import NOT_ORIGIN_FAILURES
from ..store import CacheStore
from ..sync import Syncer
from ._json import JSONResource, render_json

log = Logger()

# Sync failures that mean this node cannot store files; the rest of the
# failures a sync can have are the origin's.
_NODE_FAILURES = {"write_error": "cache writes failed", "no_space": "no room for new files"}
_NOT_ORIGIN = NOT_ORIGIN_FAILURES
# How far back failures count, and how long one verdict is reused.
RECENT = 60.0
CACHED_FOR = 1.0


class Health:
    """
    Whether this node should get listeners, as a load balancer asks:

      - C{failing} (503) when it cannot admit or serve files: its cache
        directory takes no new file, or writes or space ran out in the
        last minute;
      - C{degraded} (200) when it serves its cache but the origin fails:
        the breaker is not closed, or origin errors in the last minute;
      - C{ok} otherwise.

    A verdict is reused for a second, so probes cost nothing much.  Whether
    the cache directory takes a new file is asked in a thread (a slow disk
    must not stall the reactor); a verdict uses the last answer.
    """

    def __init__(self, store: CacheStore, syncer: Syncer) -> None:
        self.store = store
        self.syncer = syncer
        self._verdict: dict[str, Any] | None = None
        self._at = float("-inf")
        self._unwritable: str | None = None
        self._probing = False

    def verdict(self) -> dict[str, Any]:
        now = self.syncer.clock.seconds()
        if self._verdict is None or now - self._at >= CACHED_FOR:
            self._probe()
            self._verdict, self._at = self._check(now), now
        return self._verdict

    def _probe(self) -> None:
        if self._probing:
            return
        self._probing = True

        def answered(why: str | None) -> None:
            self._unwritable = why

        def done(result: object) -> None:
            self._probing = False

        d = self.syncer.run_in_thread(self.store.writable)
        d.addCallback(answered).addErrback(lambda f: log.failure("probing the cache failed", f))
        d.addBoth(done)

    def _check(self, now: float) -> dict[str, Any]:
        failing, degraded = [], []
        why = self._unwritable
        if why is not None:
            failing.append(f"the cache directory takes no new file ({why})")
        recent = {r for r, at in self.syncer.last_failed.items() if now - at <= RECENT}
        failing += [
            f"{text} in the last minute" for r, text in _NODE_FAILURES.items() if r in recent
        ]
        origin = self.syncer.origin_health()
        if origin.breaker != "closed":
            degraded.append(f"the origin breaker is {origin.breaker.replace('_', '-')}")
        degraded += [f"shield {url} is down ({why})" for url, why in origin.shields_down]
        rejected = origin.rejected
        if rejected is not None and now - rejected[0] <= RECENT:
            degraded.append(rejected[1])
        origin_errors = sorted(recent - _NOT_ORIGIN)
        if origin_errors:
            degraded.append("origin errors in the last minute: " + ", ".join(origin_errors))
        status = "failing" if failing else "degraded" if degraded else "ok"
        return {
            "status": status,
            "reasons": failing + degraded,
            "origin": origin.base,
            "cached_objects": len(self.store),
            "cached_bytes": self.store.total_bytes,
            "syncs_in_flight": self.syncer.in_flight,
            "syncs_queued": self.syncer.queued,
            "origin_breaker": origin.breaker,
            "origin_consecutive_failures": origin.failures,
            "shields_down": [url for url, _ in origin.shields_down],
        }


class HealthResource(JSONResource):
    """
    C{GET /healthz}: 200 C{ok} or C{degraded}, 503 C{failing}, with the
    reasons (see L{Health}).
    """

    isLeaf = True

    def __init__(self, health: Health) -> None:
        super().__init__()
        self.health = health

    def render_GET(self, request: IRequest) -> bytes:
        verdict = self.health.verdict()
        return render_json(request, verdict, 503 if verdict["status"] == "failing" else 200)


class MetricsPage(JSONResource):
    """
    C{GET /metrics}: the Prometheus text format, rendered in the reactor
    thread (prometheus_client's own Twisted resource is WSGI, which would
    read the gauges' state from a pool thread).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self.registry)
