"""
C{twistd cachetier}: command-line options and the wiring of the service.

This is the only module that touches the global reactor, and only in
L{makeService}.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from attrs import frozen
from treq.client import HTTPClient
from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThreadPool
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool

from .config import Settings, parse_duration
from .metrics import Metrics
from .names import normalise_base
from .origin import Origin
from .store import CacheStore
from .sync import Syncer
from .web import CacheSite, build_root


def _positive_int(flag: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise usage.UsageError(f"--{flag} must be a whole number, not {text!r}") from None
    if value < 1:
        raise usage.UsageError(f"--{flag} must be at least 1, not {value}")
    return value


def _duration(flag: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise usage.UsageError(f"--{flag}: {e}") from None


class Options(usage.Options):
    synopsis = "--origin=URL [options]"
    longdesc = (
        "Serve the files of an HTTP origin (S3 or any file server) from local "
        "disk: each is fetched once, on first request or status call."
    )

    optParameters = [
        ["origin", None, None, "Origin base URL (http:// or https://). Required."],
        ["cache-dir", None, "cachetier-cache", "Directory for cached files (created 0700)."],
        [
            "public-url",
            None,
            None,
            "Base URL for download_url (default: from each request's Host).",
        ],
        [
            "miss",
            None,
            "stream",
            "On a miss: 'stream' from the download, or 'redirect' to the origin.",
        ],
        ["max-concurrent-syncs", None, "8", "Origin downloads at once; the rest queue."],
        ["origin-timeout", None, "30s", "Origin connect, answer and idle timeout."],
        ["cache-control-max-age", None, "1d", "max-age of the Cache-Control sent with files."],
        ["negative-ttl", None, "60s", "How long an origin 404/403/410 is remembered."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """
        Endpoint to listen on, e.g. tcp:8080 or ssl:8443:privateKey=k.pem
        (repeatable; default tcp:8080).
        """
        self["listen"].append(description)

    def postOptions(self) -> None:
        if not self["origin"]:
            raise usage.UsageError("--origin is required")
        try:
            origin = normalise_base(self["origin"])
        except ValueError as e:
            raise usage.UsageError(f"--origin: {e}") from None
        public_url = None
        if self["public-url"]:
            try:
                public_url = normalise_base(self["public-url"])
            except ValueError as e:
                raise usage.UsageError(f"--public-url: {e}") from None
        if self["miss"] not in ("stream", "redirect"):
            raise usage.UsageError(f"--miss must be 'stream' or 'redirect', not {self['miss']!r}")
        listen = tuple(self["listen"]) or ("tcp:8080",)
        for description in listen:
            try:
                # Parsing needs a reactor but binds nothing; a stand-in keeps
                # the global reactor out of option parsing.
                serverFromString(MemoryReactor(), description)
            except (ValueError, KeyError, TypeError, OSError) as e:
                raise usage.UsageError(f"--listen {description!r}: {e}") from None
        cache_dir = os.path.abspath(self["cache-dir"])
        existing = cache_dir
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
            raise usage.UsageError(f"--cache-dir: {existing} is not a writable directory")
        self["settings"] = Settings(
            origin=origin,
            cache_dir=cache_dir,
            listen=listen,
            public_url=public_url,
            miss=self["miss"],
            max_concurrent_syncs=_positive_int(
                "max-concurrent-syncs", self["max-concurrent-syncs"]
            ),
            origin_timeout=_duration("origin-timeout", self["origin-timeout"]),
            cache_control_max_age=int(
                _duration("cache-control-max-age", self["cache-control-max-age"])
            ),
            negative_ttl=_duration("negative-ttl", self["negative-ttl"]),
        )


@frozen
class Assembly:
    """
    The parts of a running cache tier, wired together.
    """

    store: CacheStore
    syncer: Syncer
    site: CacheSite
    pool: HTTPConnectionPool

    def stop(self) -> Deferred[Any]:
        """
        Cancel the downloads, then close the origin connections.
        """
        d = self.syncer.stop()
        d.addCallback(lambda _: self.pool.closeCachedConnections())
        return d


def assemble(settings: Settings, reactor: Any) -> Assembly:
    """
    Open the store and build the syncer and the site; bind nothing.
    """
    metrics = Metrics()
    store = CacheStore.open(settings.cache_dir)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = settings.max_concurrent_syncs
    agent = Agent(reactor, connectTimeout=settings.origin_timeout, pool=pool)
    origin = Origin(settings.origin, HTTPClient(agent), reactor, settings.origin_timeout)
    syncer = Syncer(
        origin,
        store,
        reactor,
        partial(deferToThreadPool, reactor, reactor.getThreadPool()),
        max_concurrent=settings.max_concurrent_syncs,
        negative_ttl=settings.negative_ttl,
        metrics=metrics,
    )
    metrics.watch(
        objects=lambda: len(store),
        cached_bytes=lambda: store.total_bytes,
        in_flight=lambda: syncer.in_flight,
        queued=lambda: syncer.queued,
    )
    site = CacheSite(build_root(store, syncer, settings, metrics), metrics, reactor=reactor)
    return Assembly(store, syncer, site, pool)


class _Downloads(Service):
    """
    Winds the downloads down when twistd stops.
    """

    def __init__(self, assembly: Assembly) -> None:
        self.assembly = assembly

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return self.assembly.stop()


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the whole service from parsed options.
    """
    if reactor is None:
        from twisted.internet import reactor
    settings: Settings = options["settings"]
    assembly = assemble(settings, reactor)
    service = MultiService()
    _Downloads(assembly).setServiceParent(service)
    for description in settings.listen:
        # strports.service makes twistd fail at startup when a port is busy.
        strports.service(description, assembly.site, reactor=reactor).setServiceParent(service)
    return service
