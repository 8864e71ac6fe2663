"""
Descriptors: the open-files limit a server needs, and how many
connections fit in it.
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.logger import Logger

from .config import Settings

log = Logger()


def site_limits(settings: Settings) -> dict[str, Any]:
    """
    The connection bounds of a site, as L{cachetier.web.CacheSite} takes
    them.
    """
    return {
        "idle_timeout": settings.idle_timeout,
        "send_timeout": settings.send_timeout,
        "max_connections": settings.max_connections or connection_cap(settings),
        "trusted_proxies": settings.trusted_proxies,
    }


def connection_cap(settings: Settings) -> int:
    """
    How many connections fit in the descriptor limit: all of it but what
    the rest of the process needs (origin connections and temp files of
    the downloads, shared bodies, logs, the thread pool's files).  Past
    the cap, connections are closed on accept, cleanly, instead of every
    file open failing with EMFILE.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    reserve = 128 + 4 * settings.max_concurrent_syncs
    return max(16, soft - reserve)


def raise_descriptor_limit() -> None:
    """
    Raise the soft open-files limit to the hard limit, as nginx's
    C{worker_rlimit_nofile} does: systemd's default soft limit of 1024 is
    far below what thousands of listeners need.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warn("could not raise the open-files limit: {why}", why=str(e))
            hard = soft
    log.info("open-files limit: soft {before} raised to {after}", before=soft, after=hard)
