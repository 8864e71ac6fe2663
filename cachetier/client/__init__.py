"""
Fail-open clients for a cachetier cache tier: ask whether a file is cached
(asking starts a sync), send the listener to the cache tier when it is and
to the origin when it is not, or when the cache tier is down, slow or
confused.

These modules import nothing of the server, and the blocking and asyncio
clients import neither Twisted nor treq: the Twisted client is loaded only
when asked for.
"""

from typing import Any

from ._asyncio import AsyncioCacheTierClient
from ._blocking import BlockingCacheTierClient
from ._policy import CacheException, FileStatus, rank

__all__ = [
    "AsyncioCacheTierClient",
    "BlockingCacheTierClient",
    "CacheException",
    "CacheTierClient",
    "FileStatus",
    "rank",
]


def __getattr__(name: str) -> Any:
    if name == "CacheTierClient":
        from ._twisted import CacheTierClient

        return CacheTierClient
    raise AttributeError(name)
