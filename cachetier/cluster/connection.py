"""
The one place a Redis client is built (C{--cluster}): redis-py, called
from threads only, never from the reactor's.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..config import Settings

# A request that gets no answer within this many seconds fails, so no
# thread waits on a Redis that is gone for longer than that.
TIMEOUT = 2.0


def connect(settings: Settings, timeout: float = TIMEOUT) -> redis.Redis:
    """
    A client of C{settings.cluster}, with its password (from
    C{--cluster-password-file}), bounded connect and socket timeouts and
    one quick retry (a dropped idle connection), no more: the callers
    back off themselves.

    @param timeout: seconds a connection attempt or an answer may take
        (a blocking C{XREAD} needs its block time on top).
    """
    assert settings.cluster is not None
    return redis.Redis.from_url(
        settings.cluster,
        password=settings.cluster_password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
        decode_responses=True,
        client_name=f"cachetier:{settings.node_name}",
    )


def trouble(error: Exception) -> str:
    """
    What an error of Redis's means for the operator, in words fit for
    C{/healthz} and a JSON error: the kind of failure, never Redis's
    address; a refused password or permission names the flag to check.
    """
    kind = type(error).__name__
    if isinstance(error, redis.AuthenticationError | redis.exceptions.NoPermissionError):
        return f"Redis refused this node ({kind}): check --cluster-password-file"
    return f"Redis is unreachable ({kind})"


def prefix(settings: Settings) -> str:
    """
    The prefix of every key of the cluster: C{"<cluster-name>:"}.
    """
    return f"{settings.cluster_name}:"
