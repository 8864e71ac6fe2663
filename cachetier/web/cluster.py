"""
C{GET /api/v1/cluster} (admin): every node of the cluster, as this node
reads the cluster's membership.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

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
