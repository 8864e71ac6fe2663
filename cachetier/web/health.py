"""
Operator endpoints: C{/healthz} (JSON), C{/metrics} (Prometheus) and the
status page at C{/}.
"""

from __future__ import annotations

import html
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web.iweb import IRequest

from ..store import CacheStore
from ..sync import Syncer
from ._json import JSONResource, render_json


def health(store: CacheStore, syncer: Syncer) -> dict[str, Any]:
    return {
        "status": "ok",
        "origin": syncer.origin.base,
        "cached_objects": len(store),
        "cached_bytes": store.total_bytes,
        "syncs_in_flight": syncer.in_flight,
        "syncs_queued": syncer.queued,
        "origin_breaker": syncer.origin.breaker.state,
        "origin_consecutive_failures": syncer.origin.breaker.failures,
    }


class HealthResource(JSONResource):
    """
    C{GET /healthz}: 200 and a JSON summary while the service is up.
    """

    isLeaf = True

    def __init__(self, store: CacheStore, syncer: Syncer) -> None:
        super().__init__()
        self.store = store
        self.syncer = syncer

    def render_GET(self, request: IRequest) -> bytes:
        return render_json(request, health(self.store, self.syncer))


class StatusPage(HealthResource):
    """
    C{GET /}: the same summary, as a page a person can read.
    """

    def render_GET(self, request: IRequest) -> bytes:
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in health(self.store, self.syncer).items()
        )
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return (
            "<!DOCTYPE html><html><head><title>cachetier</title></head><body>"
            f"<h1>cachetier</h1><table>{rows}</table>"
            '<p><a href="/healthz">/healthz</a> · <a href="/metrics">/metrics</a></p>'
            "</body></html>"
        ).encode()


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
