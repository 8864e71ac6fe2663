"""
What the three clients share beyond the lookup: construction compatible
with cache-tier 1.0.4 and the methods that need no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ._policy import Policy, check_name, normalise_nodes


class ClientBase:
    """
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
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
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
    ) -> None:
        self.request_timeout = request_timeout
        self.log_enabled = log_enabled
        self.policy = Policy(
            normalise_nodes(base_url),
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
        self.base_url = self.policy.nodes[0]

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
