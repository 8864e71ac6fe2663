"""
The resource tree, built in one place.
"""

from __future__ import annotations

from functools import partial

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from ..analytics import Analytics
from ..cluster.bus import Bus
from ..cluster.generations import Generations, agree
from ..config import Settings
from ..metrics import Metrics
from ..store import CacheStore
from ..sync import Syncer
from ._json import NotFound
from ._site import CacheSite
from .api import FileStatusResource, PurgeResource, StatsResource, SyncsResource, WarmResource
from .cluster import ClusterResource, ClusterStats
from .compat import DownloadResource, VerifyResource
from .dashboard import DashboardData, DashboardPage
from .files import FilesResource
from .health import Health, HealthResource, MetricsPage
from .hops import Hops
from .internal import ReportResource

__all__ = ["CacheSite", "build_root"]


class _Branch(Resource):
    """
    An inner node: its children; itself and anything else, the JSON 404.
    """

    def getChild(self, path: bytes, request: object) -> Resource:
        return NotFound()

    def render(self, request: IRequest) -> bytes:
        return NotFound().render(request)


def build_root(
    store: CacheStore,
    syncer: Syncer,
    settings: Settings,
    metrics: Metrics,
    analytics: Analytics | None = None,
    bus: Bus | None = None,
    health: Health | None = None,
    cluster: ClusterStats | None = None,
    generations: Generations | None = None,
) -> Resource:
    """
    Every route of the service (see the HTTP contract in DESIGN.md).

    @param health: the verdict for C{/healthz} and the dashboard (default:
        one of its own).
    @param cluster: in a cluster, its node list and download counts.
    @param generations: the cluster's generations of names as this node
        knows them, which its edges' requests may raise.
    """
    agreeing = None if generations is None else partial(agree, generations, syncer)
    hops = Hops(settings.node_name, settings.cluster_secret, agreeing)
    # One verdict, reused for a second, for /healthz, the dashboard and
    # the heartbeat.
    health = health or Health(store, syncer, bus)
    root = _Branch()
    root.putChild(b"", DashboardPage())
    root.putChild(
        b"files",
        FilesResource(
            store,
            syncer,
            settings.miss,
            settings.cache_control_max_age,
            settings.queue_timeout,
            hops,
        ),
    )
    api = _Branch()
    v1 = _Branch()
    root.putChild(b"api", api)
    api.putChild(b"v1", v1)
    status_api = FileStatusResource(syncer, settings.public_url, settings.admin_token, bus)
    v1.putChild(b"files", status_api)
    v1.putChild(b"purge", PurgeResource(syncer, settings.admin_token, bus))
    v1.putChild(b"warm", WarmResource(syncer, settings.admin_token))
    v1.putChild(b"syncs", SyncsResource(syncer, settings.admin_token))
    v1.putChild(b"stats", StatsResource(analytics, settings.admin_token, cluster))
    view = None if cluster is None else cluster.view
    v1.putChild(b"cluster", ClusterResource(view, settings.admin_token))
    dashboard = DashboardData(store, syncer, metrics, analytics, settings.admin_token, health)
    dashboard.in_cluster = cluster is not None
    v1.putChild(b"dashboard", dashboard)
    root.putChild(b"verify", VerifyResource(syncer))
    root.putChild(b"download", DownloadResource(syncer, settings.public_url))
    root.putChild(b"healthz", HealthResource(health))
    root.putChild(b"metrics", MetricsPage(metrics.registry))
    internal = _Branch()
    internal_v1 = _Branch()
    root.putChild(b"internal", internal)
    internal.putChild(b"v1", internal_v1)
    internal_v1.putChild(b"report", ReportResource(store, metrics))
    return root
