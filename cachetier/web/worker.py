"""
The resource tree of a worker process (C{--workers}): fresh hits from disk,
everything else relayed to the primary.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from ..names import InvalidName
from ..store import CacheStore, StoredObject
from ._site import name_of
from .bodies import SmallBodies
from .files import serve_stored
from .proxy import PrimaryProxy


class WorkerFiles(Resource):
    """
    C{/files/<name>} in a worker: a fresh cached object is served here,
    with the primary's own code; anything else (a miss, a stale object, a
    bad name) goes to the primary, which holds the only download of each
    file, so a worker's listener follows that download too.

    The worker learns of objects by reading their metadata when asked for
    a name it has not seen fresh; a body gone since (evicted, purged or
    replaced) sends it back to the metadata.
    """

    isLeaf = True

    def __init__(
        self, store: CacheStore, clock: IReactorTime, proxy: PrimaryProxy, max_age: int
    ) -> None:
        super().__init__()
        self.store = store
        self.clock = clock
        self.proxy = proxy
        self.cache_control = b"public, max-age=%d" % (max_age,)
        self.small = SmallBodies()
        self._seen: dict[str, StoredObject] = {}

    def render(self, request: Any) -> bytes | int:
        if request.method in (b"GET", b"HEAD"):
            try:
                name = name_of(request)
            except InvalidName:
                return self.proxy.render(request)
            now = self.clock.seconds()
            for _ in range(2):
                obj = self._fresh(name, now)
                if obj is None:
                    break
                try:
                    request.cache_name, request.outcome = name, "hit"
                    return serve_stored(
                        request, obj, self.store, self.small, self.cache_control, now
                    )
                except FileNotFoundError:
                    # Gone since we read its metadata: read it again.
                    self._seen.pop(name, None)
        request.outcome = "relayed"
        return self.proxy.render(request)

    def _fresh(self, name: str, now: float) -> StoredObject | None:
        obj = self._seen.get(name)
        if obj is None or now >= obj.expires_at:
            obj = self.store.read(name)
            if obj is None or now >= obj.expires_at:
                self._seen.pop(name, None)
                return None
            self._seen[name] = obj
        return obj


def build_worker_root(
    store: CacheStore, clock: IReactorTime, proxy: PrimaryProxy, max_age: int
) -> Resource:
    """
    A worker's tree: C{/files/} served here when it can be, every other
    path relayed to the primary.
    """
    root = _Relayed(proxy)
    root.putChild(b"files", WorkerFiles(store, clock, proxy, max_age))
    return root


class _Relayed(Resource):
    def __init__(self, proxy: PrimaryProxy) -> None:
        super().__init__()
        self.proxy = proxy

    def getChild(self, path: bytes, request: Any) -> Resource:
        return self.proxy

    def render(self, request: Any) -> int:
        return self.proxy.render(request)
