"""
What the three clients share beyond the lookup: construction compatible
with cache-tier 1.0.4 and the methods that need no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ._discovery import Membership
from ._policy import Policy, check_name, normalise_nodes


class ClientBase:
    """
    @ivar log: the transport's txaio logger (each transport sets it).
    @ivar membership_error: with C{cluster=}, why the last read of the
        cluster's membership failed (the nodes known are kept), or
        L{None} when it succeeded.

    @param base_url: a cache tier node's URL, or a list of them (each file
        then has its own node, by rendezvous hashing).
    @param request_timeout: seconds a status request may take in all.
    @param enable_local_cache: reuse recent answers (see L{Policy}).
    @param local_cache_time: how long a positive answer is reused.
    @param log_enabled: log every answer, not only failures.
    @param negative_cache_time: how long "not cached yet" is reused.
    @param failover: when a file's node is down, ask the next one.
    @param breaker_threshold: failures that make a node skipped for
        C{breaker_cooloff} seconds.
    @param liveness_interval: how often each node's liveness is confirmed
        with a request to its C{/healthz}.  A remembered "cached" answer is
        used only while its node is known alive: a listener is sent to a
        dead or frozen node for at most C{liveness_interval +
        request_timeout} seconds.
    @param now: the clock.
    @param cluster: the Redis URL of a cluster (C{redis://}, C{rediss://}
        or C{unix://}, as the nodes' C{--cluster}): the nodes to ask are
        its live edges, read from its membership every
        C{discovery_interval} seconds off the event loop.  When Redis
        cannot be reached, the last list is kept.  C{base_url}, if given
        too, is the list until the first read.  Needs redis-py.
    @param cluster_name: the cluster's C{--cluster-name}.
    @param cluster_password: the password of the cluster's Redis, if any.
    """

    log: Any
    membership_error: str | None = None

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        request_timeout: float = 1.0,
        enable_local_cache: bool = True,
        local_cache_time: float = 120.0,
        log_enabled: bool = False,
        *,
        negative_cache_time: float = 5.0,
        failover: bool = True,
        breaker_threshold: int = 1,
        breaker_cooloff: float = 10.0,
        liveness_interval: float = 2.0,
        now: Callable[[], float] = time.monotonic,
        cluster: str | None = None,
        cluster_name: str = "cachetier",
        cluster_password: str | None = None,
        discovery_interval: float = 3.0,
    ) -> None:
        nodes = normalise_nodes(base_url or [])
        if not nodes and cluster is None:
            raise ValueError("at least one cache tier URL, or cluster=, is needed")
        self.membership = (
            None if cluster is None else Membership(cluster, cluster_name, cluster_password)
        )
        self.discovery_interval = discovery_interval
        self.request_timeout = request_timeout
        self.log_enabled = log_enabled
        self.policy = Policy(
            nodes,
            now,
            enable_local_cache=enable_local_cache,
            local_cache_time=local_cache_time,
            negative_cache_time=negative_cache_time,
            failover=failover,
            breaker_threshold=breaker_threshold,
            breaker_cooloff=breaker_cooloff,
            liveness_interval=liveness_interval,
            request_timeout=request_timeout,
        )

    @property
    def base_url(self) -> str | None:
        """
        The first node (cache-tier 1.0.4's attribute), or L{None} while a
        cluster's membership has not been read.
        """
        return next(iter(self.policy.nodes), None)

    def refresh_nodes(self) -> None:
        """
        Read the cluster's live edges and ask them from now on; when Redis
        cannot be reached, keep the nodes known.  Blocks: the transports
        call it off their event loop.
        """
        assert self.membership is not None
        try:
            edges = self.membership.edges()
        except Exception as e:
            if self.membership_error is None:
                # Once when it starts failing, not at every refresh.
                self.log.warn(
                    "the cluster's membership cannot be read ({why}); keeping {count} nodes",
                    why=str(e) or type(e).__name__,
                    count=len(self.policy.nodes),
                )
            self.membership_error = str(e) or type(e).__name__
            return
        self.membership_error = None
        if edges != self.policy.nodes:
            self.log.info("the cluster's edges are now {nodes}", nodes=" ".join(edges))
        self.policy.set_nodes(edges)

    def build_download_url(self, file_name: str) -> str:
        """
        The URL to send a listener to once L{verify_file} said the file is
        cached: the one the answering node gave.
        """
        return self.policy.download_url(check_name(file_name))

    def is_stale(self, file_name: str) -> bool:
        """
        Whether the next L{verify_file} will ask a node (no fresh answer).
        """
        return self.policy.is_stale(check_name(file_name))
