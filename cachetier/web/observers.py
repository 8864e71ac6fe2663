"""
What the site does with each finished request besides its access line
(L{cachetier.web.access}): count it in the metrics, and record a download
for the analytics.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..analytics import Analytics, Event
from ..metrics import Metrics

if TYPE_CHECKING:
    from ._site import CacheRequest

# Outcomes that are no listener's request: a worker's relayed request is
# logged and counted by the primary, which served it; a worker's report
# is nobody's.
NOT_LISTENERS = frozenset({"relayed", "internal"})


class RequestMetrics:
    """
    The observer that counts each finished request in the metrics: its
    duration, outcome (unless counted as it started) and the bytes its
    producer did not count as they left, whether it was cut short, and a
    miss's time to first byte.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._outcomes: dict[str, Any] = {}

    def started(self, request: CacheRequest) -> None:
        """
        Count C{request}'s outcome as its response starts: a download that
        lasts minutes shows in the requests by outcome at once.
        """
        outcome = request.outcome
        if outcome is None or outcome in NOT_LISTENERS or request.outcome_counted:
            return
        request.outcome_counted = True
        counter = self._outcomes.get(outcome)
        if counter is None:
            counter = self._outcomes[outcome] = self.metrics.requests.labels(outcome=outcome)
        counter.inc()

    def __call__(self, request: CacheRequest) -> None:
        metrics = self.metrics
        metrics.http_requests.inc()
        metrics.request_seconds.observe(request.duration)
        self.started(request)
        outcome = request.outcome
        if request.sent > request.counted:
            metrics.bytes_served.inc(request.sent - request.counted)
        if request.aborted:
            metrics.responses_aborted.inc()
            metrics.aborted_bytes.inc(request.sent)
        if outcome == "miss" and request.first_byte is not None:
            metrics.miss_first_byte_seconds.observe(request.first_byte - request.received)


def record_download(analytics: Analytics, request: CacheRequest) -> None:
    """
    The observer that records a download for the analytics: a GET of a
    file answered with (some of) its bytes, to a listener (an edge's
    fetch is not one: its listeners' downloads count at the edge).
    """
    if (
        getattr(request, "peer", None) != "edge"
        and request.cache_name is not None
        and request.method == b"GET"
        and request.code in (200, 206)
        and request.startedWriting
    ):
        analytics.record(
            Event(
                request.cache_name,
                request.client_address,
                request.user_agent,
                request.sent,
                request.code,
                time.time(),
                _object_size(request),
            )
        )


def _object_size(request: CacheRequest) -> int | None:
    """
    The size of the file a 200 or 206 answered with: its Content-Length,
    or the total of its Content-Range.
    """
    headers = request.responseHeaders
    if request.code == 206:
        value = headers.getRawHeaders(b"content-range", [b""])[-1]
        total = value.rpartition(b"/")[2]
        return int(total) if total.isdigit() else None
    length = headers.getRawHeaders(b"content-length", [b""])[-1]
    return int(length) if length.isdigit() else None
