"""
C{twistd cachetier}: command-line options and the wiring of the service.

This is the only module that touches the global reactor, and only in
L{makeService}.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from attrs import Factory, frozen
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

import twisted

from . import __version__
from .analytics import Analytics
from .config import Settings
from .config.flags import SettingError, owner, settings_from, trusted_proxy
from .limits import raise_descriptor_limit, site_limits
from .metrics import Metrics
from .origin import Breaker, IdentityAgent, Origin, RetryPolicy
from .origin.auth import CredentialSource, HeaderFile, S3Signer
from .service import CacheService
from .store import CacheStore
from .sync import Syncer
from .tls import ReloadableCertificate, is_tls, tls_endpoint
from .web import CacheSite, build_root
from .web._site import AccessLogFile

log = Logger()


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
        ["max-concurrent-syncs", None, "8", "Origin connections at once; the rest queue."],
        [
            "fill-connections",
            None,
            "1",
            "Origin connections one big download may use (Range requests).",
        ],
        ["origin-timeout", None, "30s", "Origin connect, answer and idle timeout."],
        ["cache-control-max-age", None, "1d", "max-age of the Cache-Control sent with files."],
        ["negative-ttl", None, "60s", "How long an origin 404/403/410 is remembered."],
        ["ttl", None, "24h", "Lifetime of a cached file when the origin gives no max-age."],
        [
            "stale-if-error",
            None,
            "7d",
            "How long past its lifetime a file is served while the origin fails.",
        ],
        ["max-size", None, None, "Most bytes the cache may hold, e.g. 50G (default: no limit)."],
        ["min-free", None, "0", "Bytes to keep free on the cache's file system, e.g. 5G."],
        [
            "max-object-size",
            None,
            None,
            "Bigger files are not cached but redirected to the origin.",
        ],
        ["max-queued-syncs", None, "1000", "Syncs that may wait for a slot; more are refused."],
        ["max-syncs-per-second", None, "50", "New syncs a second; more are refused."],
        [
            "max-syncs-per-client",
            None,
            "25",
            "New syncs a second from one client address; more are refused.",
        ],
        [
            "idle-timeout",
            None,
            "60s",
            "Time to send complete request headers, and keep-alive idle time.",
        ],
        [
            "send-timeout",
            None,
            "60s",
            "A response whose client takes no bytes for this long is aborted.",
        ],
        [
            "max-connections",
            None,
            None,
            "Open connections at most (default: what the open-files limit allows).",
        ],
        [
            "origin-min-rate",
            None,
            "10K",
            "Downloads slower than this (bytes/s, over 30s) are abandoned; 0: none.",
        ],
        ["queue-timeout", None, "30s", "How long a listener waits for a download slot."],
        ["origin-retries", None, "3", "Tries per origin request on connection errors and 5xx."],
        ["breaker-threshold", None, "5", "Consecutive origin failures that open the breaker."],
        ["breaker-cooloff", None, "30s", "How long the open breaker waits before probing."],
        [
            "workers",
            None,
            "1",
            "Processes serving the listening sockets, or 'auto' (one per core).",
        ],
        [
            "access-log",
            None,
            None,
            "Access log: a file of its own (cheapest), 'off', or by default twistd's log.",
        ],
        [
            "origin-auth",
            None,
            "none",
            "'s3': sign origin requests (SigV4; credentials from the AWS chain).",
        ],
        ["s3-region", None, None, "The region to sign for (R2: auto). Needed with s3."],
        [
            "s3-addressing",
            None,
            "path",
            "'path' (bucket in the origin URL's path) or 'virtual' (in its host).",
        ],
        [
            "origin-header-file",
            None,
            None,
            "'Name: value' lines sent with every origin request (re-read on SIGHUP).",
        ],
        [
            "analytics-retention",
            None,
            "400d",
            "How long per-file download counts are kept, or 'off' to keep none.",
        ],
        [
            "shutdown-grace",
            None,
            "30s",
            "On SIGTERM, how long responses in flight may take to finish.",
        ],
        [
            "admin-token-file",
            None,
            None,
            "File holding the admin API's bearer token (or set CACHETIER_ADMIN_TOKEN).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["trusted-proxy"] = []

    def opt_trusted_proxy(self, cidr: str) -> None:
        """
        A proxy (address or CIDR network) whose X-Forwarded-For names the
        client, for the access log and per-client caps (repeatable).
        """
        try:
            self["trusted-proxy"].append(trusted_proxy(cidr))
        except SettingError as e:
            raise usage.UsageError(str(e)) from None

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Under twistd, a bad option is one line on stderr naming it and a
        pointer to C{--help}, and exit status 2, before anything is
        created or bound (twistd itself would print the whole help first).
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            sys.stderr.write(
                f"twistd cachetier: {e}\n(twistd cachetier --help lists the options)\n"
            )
            raise SystemExit(2) from None

    def opt_version(self) -> None:
        """
        Print cachetier's version and exit.
        """
        print(
            f"cachetier {__version__} (Twisted {twisted.__version__}, Python {platform.python_version()})"
        )
        raise SystemExit(0)

    def opt_listen(self, description: str) -> None:
        """
        Endpoint to listen on, e.g. tcp:8080 or ssl:8443:privateKey=k.pem
        (repeatable; default tcp:8080).
        """
        self["listen"].append(description)

    def postOptions(self) -> None:
        try:
            self["settings"] = settings_from(self, check_listen, HeaderFile)
        except SettingError as e:
            raise usage.UsageError(str(e)) from None
        parent = getattr(self, "parent", None) or {}
        self["owner"] = owner(parent.get("uid"), parent.get("gid"))


def check_listen(description: str) -> None:
    """
    Refuse a C{--listen} description that names no endpoint or a TLS
    certificate that cannot be loaded, before anything is bound.
    """
    try:
        # Building an endpoint binds nothing: no reactor is needed to
        # know whether one can be built.
        listen_endpoint(None, description)
    except (IndexError, KeyError) as e:
        if description.startswith("systemd:"):
            raise SettingError(
                f"--listen {description!r}: systemd passed no such socket"
                " (LISTEN_FDS and LISTEN_FDNAMES; systemd-socket-activate needs --fdname)"
            ) from None
        raise SettingError(f"--listen {description!r}: {e}") from None
    except (ValueError, TypeError, OSError, SSL.Error) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise SettingError(f"--listen {description!r}: {why}") from None


class _QuietClientFactory(_HTTP11ClientFactory):
    # Not a "Starting factory" line in the log for every origin connection.
    noisy = False


class QuietPool(HTTPConnectionPool):
    """
    An origin connection pool that does not log each connection.
    """

    _factory = _QuietClientFactory


@frozen
class Assembly:
    """
    The parts of a running cache tier, wired together.
    """

    store: CacheStore
    syncer: Syncer
    site: CacheSite
    pool: HTTPConnectionPool
    access_file: AccessLogFile | None = None
    # What SIGHUP re-reads besides logs: origin credentials and headers.
    reloadables: list[Callable[[], None]] = Factory(list)
    analytics: Analytics | None = None

    def stop(self) -> Deferred[Any]:
        """
        Cancel the downloads, then close the origin connections and the
        access log.
        """
        d = self.syncer.stop()
        d.addCallback(lambda _: self.pool.closeCachedConnections())
        if self.analytics is not None:
            d.addCallback(lambda _: self.analytics.drain())
        if self.access_file is not None:
            d.addCallback(lambda _: self.access_file.close())
        return d


def assemble(settings: Settings, reactor: Any, site: CacheSite | None = None) -> Assembly:
    """
    Open the store and build the syncer and the site; bind nothing.

    @param site: a site already listening, to serve the cache from now
        on; by default a new one.
    """
    metrics = Metrics() if site is None else site.metrics
    store = CacheStore.open(
        settings.cache_dir,
        max_size=settings.max_size,
        min_free=settings.min_free,
        on_evict=lambda obj: metrics.evictions.inc(),
        now=reactor.seconds,
    )
    pool = QuietPool(reactor, persistent=True)
    pool.maxPersistentPerHost = settings.max_concurrent_syncs
    agent = Agent(reactor, connectTimeout=settings.origin_timeout, pool=pool)
    run_in_thread = partial(deferToThreadPool, reactor, reactor.getThreadPool())
    signer = header_file = None
    reloadables: list[Callable[[], None]] = []
    if settings.origin_auth == "s3":
        assert settings.s3_region is not None
        credentials = CredentialSource()
        signer = S3Signer(settings.s3_region, credentials)
        reloadables.append(credentials.reset)
    if settings.origin_header_file is not None:
        header_file = HeaderFile(settings.origin_header_file)
        reloadables.append(header_file.reload)
    origin = Origin(
        settings.origin,
        HTTPClient(IdentityAgent(agent)),
        reactor,
        settings.origin_timeout,
        breaker=Breaker(reactor, settings.breaker_threshold, settings.breaker_cooloff),
        retry=RetryPolicy(attempts=settings.origin_retries),
        min_rate=settings.origin_min_rate,
        rate_window=settings.origin_min_rate_window,
        signer=signer,
        header_file=header_file,
        run_in_thread=run_in_thread,
    )
    syncer = Syncer(
        origin,
        store,
        reactor,
        run_in_thread,
        max_concurrent=settings.max_concurrent_syncs,
        max_queued=settings.max_queued_syncs,
        max_new_per_second=settings.max_syncs_per_second,
        max_new_per_client=settings.max_syncs_per_client,
        max_object_size=settings.max_object_size,
        ttl=settings.ttl,
        stale_if_error=settings.stale_if_error,
        negative_ttl=settings.negative_ttl,
        metrics=metrics,
        fill_connections=settings.fill_connections,
    )
    quota = store.quota
    metrics.watch(
        objects=lambda: len(store),
        cached_bytes=lambda: store.total_bytes,
        in_flight=lambda: syncer.in_flight,
        queued=lambda: syncer.queued,
        breaker_open=lambda: 0 if origin.breaker.state == "closed" else 1,
        disk_free=quota.free_bytes,
        disk_quota=quota.capacity,
        disk_reserved=lambda: quota.reserved,
    )
    analytics = None
    if settings.analytics_retention_days is not None:
        analytics = Analytics(
            settings.cache_dir, run_in_thread, store.locate, settings.analytics_retention_days
        )
    root = build_root(store, syncer, settings, metrics, analytics)
    if site is None:
        site = CacheSite(root, metrics, reactor=reactor, **site_limits(settings))
    else:
        site.resource = root
    site.analytics = analytics
    access_file = None
    if settings.access_log == "off":
        site.access_log = None
    elif settings.access_log:
        access_file = AccessLogFile(settings.access_log)
        site.access_log = Logger(namespace="cachetier.access", observer=access_file)
    return Assembly(store, syncer, site, pool, access_file, reloadables, analytics)


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the whole service from parsed options; nothing is created or
    bound until twistd starts it (see L{cachetier.service}).
    """
    if reactor is None:
        from twisted.internet import reactor
    settings: Settings = options["settings"]
    raise_descriptor_limit()
    limits = site_limits(settings)
    worker_args = [
        f"--cache-dir={settings.cache_dir}",
        f"--cache-control-max-age={settings.cache_control_max_age}",
        f"--idle-timeout={limits['idle_timeout']}",
        f"--send-timeout={limits['send_timeout']}",
        f"--max-connections={limits['max_connections']}",
        f"--shutdown-grace={settings.shutdown_grace}",
        *(f"--trusted-proxy={network}" for network in settings.trusted_proxies),
    ]
    if settings.access_log is not None:
        worker_args.append(f"--access-log={settings.access_log}")
    if settings.analytics_retention_days is not None:
        worker_args.append(f"--analytics-retention-days={settings.analytics_retention_days}")
    endpoints, certificates = [], []
    for description in settings.listen:
        endpoint, certificate = listen_endpoint(reactor, description)
        endpoints.append((description, endpoint))
        if certificate is not None:
            certificates.append(certificate.reload)
    return CacheService(
        settings,
        reactor,
        endpoints,
        limits,
        assemble,
        worker_args,
        owner=options.get("owner"),
        reloadables=certificates,
    )


def listen_endpoint(reactor: Any, description: str) -> tuple[Any, ReloadableCertificate | None]:
    """
    The endpoint for a C{--listen} description and, for TLS, its
    certificate (reloaded on SIGHUP, served with its whole chain).
    """
    if is_tls(description):
        return tls_endpoint(reactor, description)
    return serverFromString(reactor, description), None
