"""
C{POST /internal/v1/report}: what a worker process tells the primary once a
second (the names it served, for the LRU, and its counters' increments, for
C{/metrics}).  Answered only on the primary's private UNIX socket; on any
public socket the path does not exist.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.iweb import IRequest

from ..metrics import Metrics
from ..store import CacheStore
from ._json import JSONResource, NotFound, render_error, render_json

# Most names and counter samples one report may carry.
MAX_ITEMS = 10_000


def private(request: IRequest) -> bool:
    """
    Whether C{request} came over a UNIX socket (the workers' private way
    to the primary), not from the network.
    """
    return getattr(request.getClientAddress(), "host", None) is None


class ReportResource(JSONResource):
    isLeaf = True

    def __init__(self, store: CacheStore, metrics: Metrics) -> None:
        super().__init__()
        self.store = store
        self.metrics = metrics

    def render(self, request: IRequest) -> bytes | int:
        if not private(request):
            return NotFound().render(request)
        # Traffic between our processes: never logged or counted as a listener's.
        request.outcome = "internal"  # type: ignore[attr-defined]
        return super().render(request)

    def render_POST(self, request: IRequest) -> bytes:
        try:
            report: Any = json.loads(request.content.read())
            touched = report["touched"][:MAX_ITEMS]
            counters = report["counters"][:MAX_ITEMS]
            for name in touched:
                self.store.touch(str(name))
            for attr, labels, delta in counters:
                self.metrics.add(str(attr), dict(labels), float(delta))
        except (ValueError, KeyError, TypeError) as e:
            return render_error(request, 400, "bad_report", str(e))
        return render_json(request, {"ok": True})
