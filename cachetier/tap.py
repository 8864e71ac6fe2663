"""
C{twistd cachetier}: command-line options and the wiring of the service.

This is the only module that touches the global reactor, and only in
L{makeService}.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import resource
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

from attrs import Factory, frozen
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool

import twisted

from . import __version__
from .analytics import Analytics
from .config import Settings, parse_duration, parse_endpoint, parse_rate, parse_size
from .metrics import Metrics
from .names import normalise_base
from .origin import Breaker, IdentityAgent, Origin, RetryPolicy
from .origin.auth import CredentialSource, HeaderFile, S3Signer
from .service import CacheService
from .store import CacheStore
from .sync import Syncer
from .tls import ReloadableCertificate, is_tls, tls_endpoint
from .web import CacheSite, build_root
from .web._twisted import QuietPool
from .web.access import AccessLine, AccessLogFile

T = TypeVar("T")

# The smallest --max-size taken: below this a cache holds next to nothing.
MIN_CACHE_SIZE = 16 << 20

log = Logger()


def _option(flag: str, parse: Callable[[str], T], text: str) -> T:
    """
    C{parse(text)}, or a L{usage.UsageError} naming C{--flag} and why.
    """
    try:
        return parse(text)
    except ValueError as e:
        raise usage.UsageError(f"--{flag}: {e}") from None


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"must be longer than 0, not {text!r}")
    return seconds


def _positive_size(text: str) -> int:
    size = parse_size(text)
    if size < 1:
        raise ValueError(f"must be at least 1 byte, not {text!r}")
    return size


def _cache_size(text: str) -> int:
    size = parse_size(text)
    if size < MIN_CACHE_SIZE:
        raise ValueError(f"must be at least 16M (a cache smaller holds nothing), not {text!r}")
    return size


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")
    return value


def _writable_directory(path: str) -> bool:
    """
    Whether a directory can be made in C{path}: tried, since
    C{os.access} says yes to root anywhere, C{/proc} included.
    """
    if not os.path.isdir(path):
        return False
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".cachetier-probe-", dir=path))
    except OSError:
        return False
    return True


def _check_port(description: str) -> None:
    """
    Refuse a TCP or TLS port out of range (the endpoint parser takes any
    number; bind() would refuse it only after start-up).
    """
    kind, positional, named = parse_endpoint(description)
    if kind not in ("tcp", "tcp6", "ssl"):
        return
    port = named.get("port", positional[0] if positional else "")
    if port.isdigit() and not 0 <= int(port) <= 65535:
        raise usage.UsageError(f"--listen {description!r}: port {port} is not in 0-65535")


def _admin_token(path: str | None) -> bytes | None:
    """
    The admin token, from a file or the environment: never from the
    command line, where every user of the machine could read it.
    """
    if path is None:
        token = os.environ.get("CACHETIER_ADMIN_TOKEN", "").encode("utf-8").strip()
        return token or None
    try:
        with open(path, "rb") as f:
            token = f.read().strip()
    except OSError as e:
        raise usage.UsageError(f"--admin-token-file: cannot read {path}: {e.strerror}") from None
    if len(token) < 16:
        raise usage.UsageError("--admin-token-file: the token must be at least 16 characters")
    return token


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
            self["trusted-proxy"].append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise usage.UsageError(
                f"--trusted-proxy: not an address or network: {cidr!r}"
            ) from None

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

    def _positive(self, flag: str) -> int:
        return _option(flag, _positive, self[flag])

    def _duration(self, flag: str) -> float:
        return _option(flag, parse_duration, self[flag])

    def _positive_duration(self, flag: str) -> float:
        return _option(flag, _positive_duration, self[flag])

    def _size(self, flag: str, parse: Callable[[str], int] = _positive_size) -> int | None:
        return None if self[flag] is None else _option(flag, parse, self[flag])

    def _origin_auth(self, origin: str) -> dict[str, Any]:
        auth, region, addressing = self["origin-auth"], self["s3-region"], self["s3-addressing"]
        if auth not in ("none", "s3"):
            raise usage.UsageError(f"--origin-auth must be 'none' or 's3', not {auth!r}")
        if addressing not in ("path", "virtual"):
            raise usage.UsageError(
                f"--s3-addressing must be 'path' or 'virtual', not {addressing!r}"
            )
        if auth == "s3":
            if not region:
                raise usage.UsageError("--origin-auth=s3 needs --s3-region (R2: auto)")
            if addressing == "path" and urlsplit(origin).path.strip("/") == "":
                raise usage.UsageError(
                    "--s3-addressing=path: the origin URL must name the bucket"
                    " (https://host/bucket/)"
                )
        header_file = self["origin-header-file"]
        if header_file is not None:
            try:
                HeaderFile(header_file)
            except OSError as e:
                raise usage.UsageError(
                    f"--origin-header-file: cannot read {header_file}: {e.strerror}"
                ) from None
            except ValueError as e:
                raise usage.UsageError(f"--origin-header-file: {e}") from None
        return {
            "origin_auth": auth,
            "s3_region": region,
            "s3_addressing": addressing,
            "origin_header_file": header_file,
        }

    def _retention(self) -> int | None:
        if self["analytics-retention"] == "off":
            return None
        days = self._positive_duration("analytics-retention") / 86400
        if days < 1:
            raise usage.UsageError("--analytics-retention: at least 1d, or 'off'")
        return int(days)

    def _owner(self) -> tuple[int, int] | None:
        """
        The user and group twistd will switch to (C{--uid}, C{--gid}), if
        any: the cache directory is made theirs.
        """
        parent = getattr(self, "parent", None)
        uid = parent.get("uid") if parent is not None else None
        if uid is None:
            return None
        gid = parent.get("gid")
        # twistd keeps its own group when only --uid is given.
        return uid, os.getgid() if gid is None else gid

    def postOptions(self) -> None:
        if not self["origin"]:
            raise usage.UsageError("--origin is required")
        origin = _option("origin", normalise_base, self["origin"])
        public_url = None
        if self["public-url"]:
            public_url = _option("public-url", normalise_base, self["public-url"])
        if self["miss"] not in ("stream", "redirect"):
            raise usage.UsageError(f"--miss must be 'stream' or 'redirect', not {self['miss']!r}")
        listen = tuple(self["listen"]) or ("tcp:8080",)
        for description in listen:
            _check_port(description)
            try:
                # Parsing needs a reactor but binds nothing; a stand-in keeps
                # the global reactor out of option parsing.
                listen_endpoint(MemoryReactor(), description)
            except (IndexError, KeyError) as e:
                if description.startswith("systemd:"):
                    raise usage.UsageError(
                        f"--listen {description!r}: systemd passed no such socket"
                        " (LISTEN_FDS and LISTEN_FDNAMES; systemd-socket-activate needs --fdname)"
                    ) from None
                raise usage.UsageError(f"--listen {description!r}: {e}") from None
            except (ValueError, TypeError, OSError, SSL.Error) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else e
                raise usage.UsageError(f"--listen {description!r}: {why}") from None
        if self["workers"] == "auto":
            workers = len(os.sched_getaffinity(0))
        else:
            workers = _option("workers", _positive, self["workers"])
        if workers > 1:
            for description in listen:
                if not description.startswith(("tcp:", "tcp6:")):
                    raise usage.UsageError(
                        f"--workers shares plain TCP listeners only, not {description!r}"
                    )
        access_log = self["access-log"]
        if access_log not in (None, "off"):
            directory = os.path.dirname(os.path.abspath(access_log))
            if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
                raise usage.UsageError(f"--access-log: cannot write in {directory}")
        cache_dir = os.path.abspath(self["cache-dir"])
        existing = cache_dir
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not _writable_directory(existing):
            raise usage.UsageError(f"--cache-dir: {existing} is not a writable directory")
        min_free = self._size("min-free", parse_size) or 0
        st = os.statvfs(existing)
        if min_free >= st.f_blocks * st.f_frsize:
            raise usage.UsageError(
                f"--min-free: {self['min-free']} is not less than the"
                f" {st.f_blocks * st.f_frsize >> 20} MiB the cache's file system holds"
            )
        self["owner"] = self._owner()
        self["settings"] = Settings(
            origin=origin,
            cache_dir=cache_dir,
            listen=listen,
            public_url=public_url,
            miss=self["miss"],
            max_concurrent_syncs=self._positive("max-concurrent-syncs"),
            origin_timeout=self._positive_duration("origin-timeout"),
            cache_control_max_age=int(self._duration("cache-control-max-age")),
            negative_ttl=self._duration("negative-ttl"),
            ttl=self._duration("ttl"),
            stale_if_error=self._duration("stale-if-error"),
            max_size=self._size("max-size", _cache_size),
            min_free=min_free,
            max_object_size=self._size("max-object-size"),
            max_queued_syncs=self._positive("max-queued-syncs"),
            max_syncs_per_second=float(self._positive("max-syncs-per-second")),
            max_syncs_per_client=float(self._positive("max-syncs-per-client")),
            idle_timeout=self._positive_duration("idle-timeout"),
            send_timeout=self._positive_duration("send-timeout"),
            max_connections=(
                None if self["max-connections"] is None else self._positive("max-connections")
            ),
            origin_min_rate=_option("origin-min-rate", parse_rate, self["origin-min-rate"]),
            queue_timeout=self._positive_duration("queue-timeout"),
            origin_retries=self._positive("origin-retries"),
            breaker_threshold=self._positive("breaker-threshold"),
            breaker_cooloff=self._positive_duration("breaker-cooloff"),
            admin_token=_admin_token(self["admin-token-file"]),
            access_log=self["access-log"],
            workers=workers,
            trusted_proxies=tuple(self["trusted-proxy"]),
            shutdown_grace=self._duration("shutdown-grace"),
            fill_connections=self._positive("fill-connections"),
            analytics_retention_days=self._retention(),
            **self._origin_auth(origin),
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
        site.access_log = AccessLine(access_file.write, reactor.seconds)
    return Assembly(store, syncer, site, pool, access_file, reloadables, analytics)


def site_limits(settings: Settings) -> dict[str, Any]:
    """
    The connection bounds of a site, as L{CacheSite} takes them.
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
