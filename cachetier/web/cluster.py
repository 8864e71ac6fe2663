"""
C{GET /api/v1/cluster} (admin): every node of the cluster, as this node
reads the cluster's membership; and C{GET /api/v1/stats?scope=cluster}:
every live node's download counts, merged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from treq import json_content
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from ..analytics import to_csv
from ._admin import refuse
from ._json import EndWatch, JSONResource, answer, render_error, render_json

log = Logger()


class ClusterResource(JSONResource):
    """
    Every node heard from within a day: alive or gone, its role, URL,
    status, disk, hit ratio and lag behind the purge log.

    @param view: reads the cluster's node list (off the reactor thread);
        L{None} outside a cluster.
    """

    isLeaf = True

    def __init__(
        self, view: Callable[[], Deferred[dict[str, Any]]] | None, admin_token: bytes | None
    ) -> None:
        super().__init__()
        self.view = view
        self.admin_token = admin_token

    def render_GET(self, request: IRequest) -> bytes | int:
        refusal = refuse(request, self.admin_token)
        if refusal is not None:
            return refusal
        if self.view is None:
            return render_error(
                request, 404, "no_cluster", "this node is in no cluster (see --cluster)"
            )
        watch = EndWatch(request)

        def failed(failure: Any) -> None:
            log.warn("reading the cluster failed: {why}", why=failure.getErrorMessage())
            body = render_error(
                request, 503, "cluster_unreachable", "the cluster's Redis cannot be read now"
            )
            answer(request, watch, body)

        d = self.view()
        d.addCallbacks(lambda body: answer(request, watch, render_json(request, body)), failed)
        return NOT_DONE_YET


# Seconds one node may take to send its counts.
STATS_TIMEOUT = 5.0
_SUMMED = ("requests", "bytes", "complete", "downloads")


def merge_rows(answers: list[list[dict[str, Any]]], group: str) -> list[dict[str, Any]]:
    """
    Several nodes' rows of download counts as one node's would be: the
    counts of each file (and day) summed, in the same order.
    """
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rows in answers:
        for row in rows:
            key = (row.get("file"), row.get("day"))
            into = merged.setdefault(key, {**row, **dict.fromkeys(_SUMMED, 0)})
            for field in _SUMMED:
                into[field] += row.get(field) or 0
    if group == "file":
        return sorted(merged.values(), key=lambda r: (-r["downloads"], str(r["file"])))
    return sorted(merged.values(), key=lambda r: (str(r["day"]), str(r["file"])))


class ClusterStats:
    """
    C{GET /api/v1/stats?scope=cluster}: the download counts of every live
    node, asked over their URLs (with this node's admin token: a cluster
    shares one), merged; with the nodes that did not answer and why.

    @param view: reads the cluster's node list (L{ClusterResource}'s).
    @param http: a treq C{HTTPClient}.
    """

    def __init__(
        self,
        view: Callable[[], Deferred[dict[str, Any]]],
        http: Any,
        admin_token: bytes | None,
        clock: Any,
    ) -> None:
        self.view = view
        self.http = http
        self.admin_token = admin_token
        self.clock = clock

    async def collect(self, query: dict[str, str]) -> dict[str, Any]:
        """
        Every live node's rows for C{query} (the stats API's arguments),
        merged.
        """
        view = await self.view()
        nodes = [n for n in view["nodes"] if n["alive"] and isinstance(n.get("url"), str)]
        path = "api/v1/stats?" + urlencode({**query, "format": "json"})
        asked = [Deferred.fromCoroutine(self._ask(node["url"] + path)) for node in nodes]
        answers: list[tuple[bool, Any]] = await DeferredList(asked, consumeErrors=True)
        rows, answered, failed = [], [], []
        for node, (ok, result) in zip(nodes, answers, strict=True):
            if ok:
                rows.append(result)
                answered.append(node["name"])
            else:
                failed.append({"node": node["name"], "error": why_unanswered(result)})
        return {
            "rows": merge_rows(rows, query.get("group", "day")),
            "nodes": answered,
            "unanswered": failed,
        }

    async def _ask(self, url: str) -> list[dict[str, Any]]:
        assert self.admin_token is not None  # the stats API is the admin's
        headers = {b"authorization": [b"Bearer " + self.admin_token]}
        d = self.http.get(url, headers=headers)
        d.addTimeout(STATS_TIMEOUT, self.clock)
        response = await d
        body = await json_content(response)
        if response.code != 200:
            message = body.get("message") if isinstance(body, dict) else None
            raise ValueError(f"HTTP {response.code}: {message}")
        rows = body.get("rows") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError("the answer has no rows")
        return body["rows"]

    def render(self, request: IRequest, query: dict[str, str], fmt: str) -> int:
        """
        Answer C{request} with the merged counts (JSON, or CSV with the
        nodes that did not answer in a C{CacheTier-Unanswered} header).
        """
        watch = EndWatch(request)

        def send(merged: dict[str, Any]) -> None:
            if fmt == "csv":
                unanswered = ", ".join(f["node"] for f in merged["unanswered"])
                request.setHeader(b"cachetier-unanswered", unanswered.encode("utf-8"))
                request.setHeader(b"content-type", b"text/csv; charset=utf-8")
                answer(request, watch, to_csv(merged["rows"]).encode("utf-8"))
            else:
                answer(request, watch, render_json(request, merged))

        def failed(failure: Any) -> None:
            log.warn("the cluster's stats failed: {why}", why=failure.getErrorMessage())
            body = render_error(
                request, 503, "cluster_unreachable", "the cluster's Redis cannot be read now"
            )
            answer(request, watch, body)

        d = Deferred.fromCoroutine(self.collect(query))
        d.addCallbacks(send, failed)
        return NOT_DONE_YET


def why_unanswered(failure: Failure) -> str:
    """
    Why a node did not answer, in words: not Twisted's list of failures.
    """
    if failure.check(defer.TimeoutError, defer.CancelledError) or (
        failure.check(ResponseNeverReceived)
        and any(f.check(defer.CancelledError) for f in failure.value.reasons)
    ):
        return f"no answer within {STATS_TIMEOUT:g} s"
    if failure.check(ConnectionRefusedError):
        return "connection refused"
    if failure.check(ResponseNeverReceived, ResponseFailed):
        return "the connection was lost before its answer"
    return failure.getErrorMessage() or failure.type.__name__
