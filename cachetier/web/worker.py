"""
The resource tree of a worker process (C{--workers}): fresh hits from disk,
everything else relayed to the primary.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from ..metrics import Metrics
from ..names import InvalidName
from ..objects import StoredObject
from ..store import CacheStore, Generation
from ..sync.variants import selects_plain
from .addresses import name_of
from .bodies import SmallBodies
from .files import serve_stored
from .hops import relayed_hop
from .proxy import PrimaryProxy

log = Logger()


class WorkerFiles(Resource):
    """
    C{/files/<name>} in a worker: a fresh cached object is served here,
    with the primary's own code; anything else (a miss, a stale object, a
    bad name) goes to the primary, which holds the only download of each
    file, so a worker's listener follows that download too.

    The worker learns of objects by reading their metadata in a thread
    (C{run_in_thread}: a slow disk must not stall the worker's listeners)
    when asked for a name it has not seen fresh; that request, and any
    other for the name until the read is done, goes to the primary.  It
    remembers at most L{max_seen} objects and reads at most L{max_learning}
    at once.  Whenever the store's shared generation moves (a purge, a
    replacement, an eviction in the primary), it forgets them all, and its
    small bodies too, before serving anything, and drops any read begun
    before the move: nothing it serves is older than the last purge.  The
    names it serves go to L{touched}, which the worker's L{Reporter} hands
    to the primary for its LRU.  A request that carries the cluster secret
    or loops back to this node goes to the primary too, which knows the
    secret and answers a loop.
    """

    isLeaf = True
    max_seen = 10_000
    max_learning = 64

    def __init__(
        self,
        store: CacheStore,
        generation: Generation,
        clock: IReactorTime,
        proxy: PrimaryProxy,
        max_age: int,
        run_in_thread: Callable[..., Deferred[Any]],
        node: str = "cachetier",
    ) -> None:
        super().__init__()
        self.node = node
        self.store = store
        self.run_in_thread = run_in_thread
        self.generation = generation
        self.clock = clock
        self.proxy = proxy
        self.default_max_age = max_age
        self.small = SmallBodies()
        self.touched: set[str] = set()
        self._seen: OrderedDict[str, StoredObject] = OrderedDict()
        self._seen_generation = generation.value
        self._learning: set[str] = set()

    def render(self, request: Any) -> bytes | int:
        if request.method in (b"GET", b"HEAD") and not relayed_hop(request, self.node):
            try:
                name = name_of(request)
            except InvalidName:
                return self.proxy.render(request)
            now = self.clock.seconds()
            obj = self._fresh(name, now)
            if obj is not None and not selects_plain(obj, request.requestHeaders):
                obj = None  # another variant's: the primary knows which
            if obj is not None:
                request.cache_name, request.outcome = name, "hit"
                request.hop_node = self.node
                try:
                    body = serve_stored(
                        request, obj, self.store, self.small, self.default_max_age, now
                    )
                except FileNotFoundError:
                    # Gone since we read its metadata: the primary knows.
                    self._seen.pop(name, None)
                    request.cache_name = request.outcome = request.hop_node = None
                else:
                    if len(self.touched) < self.max_seen:
                        self.touched.add(name)
                    return body
        return self.proxy.render(request)

    def _fresh(self, name: str, now: float) -> StoredObject | None:
        """
        C{name}'s object if this worker knows it fresh; otherwise L{None},
        and its metadata is read in a thread for the next request.
        """
        generation = self.generation.value
        if generation != self._seen_generation:
            self._seen.clear()
            self.small = SmallBodies()
            self._seen_generation = generation
        obj = self._seen.get(name)
        if obj is not None and now < obj.expires_at:
            self._seen.move_to_end(name)
            return obj
        self._seen.pop(name, None)
        if name not in self._learning and len(self._learning) < self.max_learning:
            self._learning.add(name)
            d = self.run_in_thread(self.store.read, name)
            d.addCallback(self._learnt, name, generation)
            d.addErrback(lambda f: log.failure("reading {name}'s metadata", f, name=name))
            d.addBoth(lambda _: self._learning.discard(name))
        return None

    def _learnt(self, obj: StoredObject | None, name: str, generation: int) -> None:
        if obj is None or generation != self.generation.value:
            return
        if generation != self._seen_generation or self.clock.seconds() >= obj.expires_at:
            return
        self._seen[name] = obj
        while len(self._seen) > self.max_seen:
            self._seen.popitem(last=False)


class Reporter:
    """
    Once a second, tells the primary what this worker did: the names it
    served (so the primary's LRU sees every process's hits) and how much
    each of its counters grew (so C{/metrics} counts every process).  A
    report that fails is retried with the next; what it carried is kept
    (names up to L{WorkerFiles.max_seen}).
    """

    def __init__(self, files: WorkerFiles, metrics: Metrics, agent: Any, clock: Any) -> None:
        self.files = files
        self.metrics = metrics
        self.agent = agent
        self.clock = clock
        self._reported: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._sending = False

    async def report(self) -> None:
        if self._sending:
            return
        values = self.metrics.counter_values()
        counters = [
            [attr, dict(labels), value - self._reported.get((attr, labels), 0.0)]
            for (attr, labels), value in values.items()
            if value > self._reported.get((attr, labels), 0.0)
        ]
        touched = sorted(self.files.touched)
        if not counters and not touched:
            return
        body = json.dumps({"touched": touched, "counters": counters}).encode("utf-8")
        self._sending = True
        try:
            d = self.agent.request(
                b"POST",
                b"http://primary/internal/v1/report",
                Headers({b"content-type": [b"application/json"]}),
                FileBodyProducer(BytesIO(body)),
            )
            d.addTimeout(10, self.clock)
            response = await d
            await readBody(response)
            if response.code != 200:
                raise RuntimeError(f"the primary answered {response.code}")
        except Exception as e:
            log.warn("reporting to the primary failed: {why}", why=str(e) or type(e).__name__)
            return
        finally:
            self._sending = False
        self._reported.update(values)
        self.files.touched.difference_update(touched)


def build_worker_root(files: WorkerFiles) -> Resource:
    """
    A worker's tree: C{/files/} served here when it can be, every other
    path relayed to the primary.
    """
    root = _Relayed(files.proxy)
    root.putChild(b"files", files)
    return root


class _Relayed(Resource):
    def __init__(self, proxy: PrimaryProxy) -> None:
        super().__init__()
        self.proxy = proxy

    def getChild(self, path: bytes, request: Any) -> Resource:
        return self.proxy

    def render(self, request: Any) -> int:
        return self.proxy.render(request)
