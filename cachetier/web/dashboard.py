"""
The status page at C{/}: a live dashboard (bandwidth, requests by outcome
and hit ratio, syncs in flight, disk, top episodes today) that updates
itself.  The page holds no data and needs nothing from the internet: its
script and styles are inline, its charts are SVG it draws from
C{GET /api/v1/dashboard}, which takes the admin token (kept in the
browser's session storage; C{/#token=...} sets it).
"""

from __future__ import annotations

import time
from importlib.resources import files
from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..analytics import Analytics
from ..metrics import Metrics
from ..store import CacheStore
from ..sync import Syncer
from ._admin import refuse
from ._json import EndWatch, JSONResource, answer, render_json
from .health import Health

log = Logger()

# Read at import (before twistd drops privileges).
PAGE = files("cachetier").joinpath("data/dashboard.html").read_bytes()
TOP = 10


class DashboardPage(Resource):
    """
    C{GET /}: the page itself.
    """

    isLeaf = True

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(
            b"content-security-policy",
            b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline';"
            b" connect-src 'self'; img-src 'self' data:",
        )
        return PAGE


class DashboardData(JSONResource):
    """
    C{GET /api/v1/dashboard} (admin): one snapshot for the page.
    """

    isLeaf = True

    def __init__(
        self,
        store: CacheStore,
        syncer: Syncer,
        metrics: Metrics,
        analytics: Analytics | None,
        admin_token: bytes | None,
        health: Health,
    ) -> None:
        super().__init__()
        self.store = store
        self.syncer = syncer
        self.metrics = metrics
        self.analytics = analytics
        self.admin_token = admin_token
        self.health = health

    def snapshot(self) -> dict[str, Any]:
        counters = self.metrics.counter_values()
        requests: dict[str, float] = {}
        for (attr, labels), value in counters.items():
            if attr == "requests":
                requests[dict(labels)["outcome"]] = value
        return {
            "time": time.time(),
            "status": self.health.verdict()["status"],
            "served_bytes": counters.get(("bytes_served", ()), 0),
            "origin_bytes": counters.get(("origin_bytes", ()), 0),
            "requests": requests,
            "syncs": [
                {"file": f.name, "state": f.state, "bytes_synced": f.written, "size": f.length}
                for f in self.syncer.syncs()
            ],
            "disk": {
                "cached": self.store.total_bytes,
                "quota": self.store.capacity(),
                "free": self.store.free_bytes(),
            },
            "top_today": [],
        }

    def render_GET(self, request: IRequest) -> bytes | int:
        refusal = refuse(request, self.admin_token)
        if refusal is not None:
            return refusal
        body = self.snapshot()
        if self.analytics is None:
            return render_json(request, body)
        today = time.strftime("%Y-%m-%d", time.gmtime())
        watch = EndWatch(request)
        d = self.analytics.query(start=today, end=today, group="file")

        def top(rows: list[dict[str, Any]]) -> None:
            body["top_today"] = [
                {"file": r["file"], "downloads": r["downloads"]} for r in rows[:TOP]
            ]

        def failed(failure: Any) -> None:
            log.failure("the dashboard's top episodes failed", failure)

        def send(_: Any) -> None:
            answer(request, watch, render_json(request, body))

        d.addCallbacks(top, failed)
        d.addCallback(send)
        return NOT_DONE_YET
