"""
A node among others, as its C{/files/} answers show it: a request whose
C{CDN-Loop} names this node is a loop (508 at once); a request carrying
the cluster secret is an edge's, not a listener's; and every answer
carries this node's C{Cache-Status} entry after those of the tiers above,
and its C{Via} when the answer came from upstream (L{stamp}, as the
answer's headers go out).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from attrs import evolve

from ..hops import (
    CACHE_STATUS,
    CDN_LOOP,
    GENERATION,
    SECRET,
    VIA,
    CacheStatus,
    generation,
    names_node,
    via,
)
from ..names import split_variant
from ..objects import StoredObject
from ..sync import Fill
from ._json import render_error


class Hops:
    """
    This node's part in the hops of the requests it answers.

    @param node: its C{--node-name}.
    @param secret: the cluster secret (C{--cluster-secret-file}), if any.
    @param agree: given a name and the log's epoch and cluster generation
        an edge knows of it, purges an older copy here (see
        L{cachetier.cluster.generations.agree}); without it, an edge's
        generation is not looked at.
    """

    def __init__(
        self,
        node: str,
        secret: bytes | None = None,
        agree: Callable[[str, str, int], object] | None = None,
    ) -> None:
        self.node = node
        self._secret = secret
        self._agree = agree

    def __repr__(self) -> str:
        return f"Hops({self.node!r})"

    def from_edge(self, request: Any) -> bool:
        """
        Whether C{request} carries the cluster secret: an edge's.  Compared
        in constant time; without a secret of ours, nobody is an edge.
        """
        if self._secret is None:
            return False
        sent = request.requestHeaders.getRawHeaders(SECRET)
        return sent is not None and hmac.compare_digest(sent[-1].strip(), self._secret)

    def receive(self, request: Any) -> bytes | None:
        """
        Take a C{/files/} request: its answer is stamped with this node's
        entry (see L{stamp}), and an edge's is marked as one.

        @return: the 508 to answer with when the request loops back to
            this node, else L{None}.
        """
        request.hop_node = self.node
        request.cache_status = CacheStatus()
        request.peer = "edge" if self.from_edge(request) else "listener"
        if names_node(request.requestHeaders.getRawHeaders(CDN_LOOP, []), self.node):
            request.outcome = "loop"
            return render_error(
                request,
                508,
                "loop_detected",
                f"this request has already passed through {self.node}: the tiers loop",
            )
        return None

    def agree(self, request: Any, name: str) -> None:
        """
        Before C{name} is looked up for an edge: a copy older than the
        cluster generation the edge sent goes, so its request is a miss.
        A listener's generation means nothing.
        """
        if self._agree is None or request.peer != "edge":
            return
        epoch, sent = generation(request.requestHeaders.getRawHeaders(GENERATION, []))
        if sent > 0:
            self._agree(split_variant(name)[0], epoch, sent)


def relayed_hop(request: Any, node: str) -> bool:
    """
    Whether a worker leaves C{request} to the primary, which holds the
    cluster secret: one that carries a secret, or loops back to C{node}.
    """
    headers = request.requestHeaders
    return headers.hasHeader(SECRET) or names_node(headers.getRawHeaders(CDN_LOOP, []), node)


def collapsing(request: Any, collapsed: bool) -> None:
    """
    Mark whether C{request} joined a fetch already going upstream.
    """
    request.cache_status = evolve(request.cache_status, collapsed=collapsed)


def forwarded(request: Any, fwd: str, status: int, stored: bool = False) -> None:
    """
    Mark C{request} answered with what its upstream sent (C{status}), or
    from the cache after that (see L{served}).
    """
    collapsed = request.cache_status is not None and request.cache_status.collapsed
    request.cache_status = CacheStatus(
        fwd=fwd, fwd_status=status, stored=stored, collapsed=collapsed
    )


def fetched(request: Any, fill: Fill) -> None:
    """
    Mark C{request} answered with what C{fill} fetched upstream: its body
    as it streams, a 304 that renewed the cached copy, or an answer kept
    (then served from the cache: see L{served}).
    """
    fwd = "miss" if fill.revalidating is None else "stale"
    stored, old = fill.stored, fill.revalidating
    if stored is None:
        status = 200 if fill.headers is None else fill.headers.status
        forwarded(request, fwd, status, fill.publish)
    elif old is not None and stored.path == old.path:
        forwarded(request, fwd, 304)
    else:
        forwarded(request, fwd, stored.status, stored=True)


def served(request: Any, obj: StoredObject, now: float) -> None:
    """
    Mark C{request} answered from the cache with C{obj}, with the
    freshness it has left (negative: stale), in the whole seconds its
    C{Age} header counts: a hit, unless it was forwarded first (a
    revalidation).
    """
    status = request.cache_status or CacheStatus()
    fwd = status.fwd is not None
    request.cache_status = evolve(
        status,
        hit=not fwd,
        collapsed=fwd and status.collapsed,
        ttl=int(obj.lifetime) - int(obj.age(now)),
    )


def redirected(request: Any) -> None:
    """
    Mark C{request} answered with a redirect to the origin: this node's
    own answer.
    """
    request.cache_status = CacheStatus(detail="redirect")


def stamp(request: Any) -> None:
    """
    Add this node's hop headers to the answer to a C{/files/} request (one
    L{Hops.receive} took), as its headers go out: C{Via} when the answer
    came from upstream or the cache, then C{Cache-Status}, each after the
    upstream's own lines.
    """
    node = getattr(request, "hop_node", None)
    if node is None:
        return
    status = request.cache_status
    headers = request.responseHeaders
    if status.hit or status.fwd is not None:
        headers.addRawHeader(VIA, via(node))
    headers.addRawHeader(CACHE_STATUS, status.entry(node))
