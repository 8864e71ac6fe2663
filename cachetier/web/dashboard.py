"""
The status page at C{/}: a live dashboard (bandwidth and requests by
outcome over 15 minutes, hit ratios, syncs in flight, the origin, disk,
top episodes today, the cluster's nodes) that updates itself.  The page holds no data and
needs nothing from the internet: its script and styles are inline, its
charts are SVG it draws from C{GET /api/v1/dashboard}, which takes the
admin token (kept in the browser's session storage; C{/#token=...} sets
it) and carries the history the service keeps (L{metrics.History}).
"""

from __future__ import annotations

import time
from collections import deque
from importlib.resources import files
from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..analytics import Analytics
from ..metrics import Metrics
from ..names import split_variant
from ..store import CacheStore
from ..sync import Syncer
from ._admin import refuse
from ._json import EndWatch, JSONResource, answer, render_error, render_json
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


class SyncSpeeds:
    """
    Each sync's speed over the last ten seconds, from the progress seen at
    each snapshot (the page asks every two seconds; at most 64 points a
    sync, however many pages ask).
    """

    window = 10.0

    def __init__(self) -> None:
        self._seen: dict[str, deque[tuple[float, int]]] = {}

    def update(self, now: float, progress: dict[str, int]) -> dict[str, float | None]:
        """
        Record C{progress} (bytes written, by name) at C{now}; the bytes a
        second of each, or L{None} until there are two points.
        """
        seen = {name: self._seen.get(name) or deque(maxlen=64) for name in progress}
        speeds: dict[str, float | None] = {}
        for name, points in seen.items():
            if points and progress[name] < points[-1][1]:
                points.clear()  # a new download of the name
            points.append((now, progress[name]))
            while len(points) > 2 and now - points[0][0] > self.window:
                points.popleft()
            (t0, w0), (t1, w1) = points[0], points[-1]
            speeds[name] = (w1 - w0) / (t1 - t0) if t1 > t0 else None
        self._seen = seen
        return speeds


def _sync_rows(syncer: Syncer, speeds: SyncSpeeds, now: float) -> list[dict[str, Any]]:
    """
    The syncs in flight with their progress, speed and time left.
    """
    fills = list(syncer.syncs())
    speed = speeds.update(now, {f.name: f.written for f in fills})
    rows = []
    for f in fills:
        rate = speed.get(f.name)
        left = None
        if rate and f.length is not None:
            left = max(0.0, (f.length - f.written) / rate)
        rows.append(
            {
                "file": split_variant(f.name)[0],
                "state": f.state,
                "bytes_synced": f.written,
                "size": f.length,
                "speed": rate,
                "seconds_left": left,
            }
        )
    return rows


class DashboardData(JSONResource):
    """
    C{GET /api/v1/dashboard[?since=T]} (admin): one snapshot for the page,
    with the per-second history after Unix time C{T} (all 15 minutes
    without it).
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
        # Whether the node is in a cluster: the page shows its card then.
        self.in_cluster = False
        self.store = store
        self.syncer = syncer
        self.metrics = metrics
        self.analytics = analytics
        self.admin_token = admin_token
        self.health = health
        self.speeds = SyncSpeeds()

    def snapshot(self, since: float) -> dict[str, Any]:
        history = self.metrics.history
        history.sample()
        now = history.clock()
        verdict = self.health.verdict()
        origin = self.syncer.origin_health()
        return {
            "time": now,
            "status": verdict["status"],
            "reasons": verdict["reasons"],
            "history": history.rates(since),
            "syncs": _sync_rows(self.syncer, self.speeds, now),
            "origin": {
                "breaker": origin.breaker,
                "consecutive_failures": origin.failures,
                "errors_last_minute": history.origin_errors_since(now - 60),
            },
            "disk": {
                "cached": self.store.total_bytes,
                "capacity": self.store.capacity(),
                "free": self.store.free_bytes(),
                "max_size": self.store.max_size,
                "min_free": self.store.min_free,
            },
            "top_today": [],
            # Whether the page shows the cluster's card (its data comes
            # from GET /api/v1/cluster).
            "cluster": self.in_cluster,
        }

    def render_GET(self, request: IRequest) -> bytes | int:
        refusal = refuse(request, self.admin_token)
        if refusal is not None:
            return refusal
        try:
            since = float(request.args.get(b"since", [b"0"])[-1])
        except ValueError:
            return render_error(request, 400, "bad_request", "since is a Unix time in seconds")
        body = self.snapshot(since)
        if self.analytics is None:
            return render_json(request, body)
        today = time.strftime("%Y-%m-%d", time.gmtime())
        watch = EndWatch(request)
        d = self.analytics.query(start=today, end=today, group="file")

        def top(rows: list[dict[str, Any]]) -> None:
            body["top_today"] = top_episodes(rows)

        def failed(failure: Any) -> None:
            log.failure("the dashboard's top episodes failed", failure)

        def send(_: Any) -> None:
            answer(request, watch, render_json(request, body))

        d.addCallbacks(top, failed)
        d.addCallback(send)
        return NOT_DONE_YET


def top_episodes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    The L{TOP} files most downloaded today, with their downloads and
    bytes; a file requested but never downloaded (a probe, a first byte
    only) is no top episode.
    """
    rows = sorted(
        (r for r in rows if r["downloads"] > 0), key=lambda r: (-r["downloads"], -r["bytes"])
    )
    return [
        {"file": r["file"], "downloads": r["downloads"], "bytes": r["bytes"]} for r in rows[:TOP]
    ]
