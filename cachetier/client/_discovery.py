"""
Which nodes to ask, from a cluster's membership in Redis: the live edges,
as their own heartbeats describe them (C{<cluster-name>:nodes}, a sorted
set of node names, and C{<cluster-name>:node:<name>}, a JSON record that
expires a few seconds after the node's last heartbeat).

redis-py is imported only for a client given C{cluster=}: nothing else of
the client needs it.  Every call here blocks; the transports run them off
their event loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ._policy import normalise_nodes

# Bounds on one read of the membership, so that a Redis that hangs delays
# the next refresh only, never the lookups (they go on with the last list).
_TIMEOUT = 2.0


def connect(url: str, password: str | None = None) -> Any:
    """
    A redis-py client for C{url} (C{redis://}, C{rediss://} or
    C{unix://}).

    @raise ImportError: redis-py is not installed.
    """
    try:
        import redis
    except ImportError:
        raise ImportError(
            "CacheTierClient(cluster=...) needs redis-py: pip install 'redis[hiredis]'"
        ) from None
    return redis.Redis.from_url(
        url, password=password, socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT
    )


def live_edges(records: Sequence[bytes | None]) -> list[str]:
    """
    The URLs of the edges among heartbeat records; a record that expired
    (L{None}: the node is gone), is not JSON or is a shield's is left out.
    """
    urls = []
    for raw in records:
        if raw is None:
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("role", "edge") != "edge":
            continue
        url = record.get("url")
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            urls.append(url)
    return sorted(normalise_nodes(urls))


class Membership:
    """
    Reads the live edges of one cluster.

    @param url: the cluster's Redis URL, as the nodes' C{--cluster}.
    @param name: the cluster's name (C{--cluster-name}): its keys' prefix.
    @param connection: a redis-py client (default: one for C{url}).
    """

    def __init__(
        self,
        url: str,
        name: str = "cachetier",
        password: str | None = None,
        connection: Any = None,
    ) -> None:
        self._prefix = name.encode() + b":"
        self._redis = connection if connection is not None else connect(url, password)

    def edges(self) -> list[str]:
        """
        The live edges' URLs (blocks, up to a few seconds).

        @raise Exception: whatever redis-py raises when Redis is out of reach.
        """
        names = self._redis.zrange(self._prefix + b"nodes", 0, -1)
        if not names:
            return []
        return live_edges(self._redis.mget([self._prefix + b"node:" + n for n in names]))

    def close(self) -> None:
        self._redis.close()
