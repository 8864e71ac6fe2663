"""
C{twistd cachetier}: command-line options and the wiring of the service.

This is the only module that touches the global reactor, and only in
L{makeService}.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from OpenSSL import SSL
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.python import usage

import twisted

from . import __version__
from .assembly import assemble
from .config import Settings, default_backlog, parse_endpoint
from .config.flags import (
    SettingError,
    listen_hint,
    owner,
    pidfile,
    settings_from,
    trusted_proxy,
)
from .config.forwarding import forward_request_header
from .limits import raise_descriptor_limit
from .origin.auth import HeaderFile
from .service import CacheService, listener, starting_site
from .tls import ReloadableCertificate, is_tls, tls_endpoint
from .workers import PublicPorts, WorkersService


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
        ["negative-ttl", None, "60s", "How long an origin 404/410 is kept without a lifetime."],
        ["max-variants", None, "8", "Variants (by the origin's Vary) kept of one name."],
        ["ttl", None, "24h", "Lifetime of a cached file when the origin gives no max-age."],
        [
            "stale-if-error",
            None,
            "7d",
            "How long past its lifetime a file is served while the origin fails.",
        ],
        [
            "stale-while-revalidate",
            None,
            "0s",
            "How long past its lifetime a file is served while it is revalidated"
            " (0: revalidated first).",
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
            "bots-file",
            None,
            None,
            "User-Agent fragments, one a line, that never count as downloads, added to"
            " the shipped list (re-read on SIGHUP).",
        ],
        [
            "shutdown-grace",
            None,
            "30s",
            "On SIGTERM, how long responses in flight may take to finish.",
        ],
        [
            "node-name",
            None,
            None,
            "This node's name in logs, Via, CDN-Loop and Cache-Status (default: host name).",
        ],
        [
            "cluster",
            None,
            None,
            "Join a cluster through Redis: redis://host:port/db, rediss://... or unix:///path.",
        ],
        ["cluster-name", None, "cachetier", "The cluster's name: the prefix of its Redis keys."],
        ["cluster-password-file", None, None, "File holding the Redis password (first line)."],
        [
            "node-url",
            None,
            None,
            "How the other nodes reach this one (default: from the first --listen).",
        ],
        ["role", None, "edge", "This node's role in the cluster: 'edge' or 'shield'."],
        ["cluster-stream-length", None, "100000", "Purges the cluster's log keeps (about)."],
        [
            "cluster-max-lag",
            None,
            "5s",
            "Not hearing from the cluster for this long, every hit is revalidated first.",
        ],
        [
            "cluster-secret-file",
            None,
            None,
            "A file holding the secret every node of the cluster shares: edges send it to"
            " their shields, which then treat them as edges, not listeners.",
        ],
        [
            "shield-fallback",
            None,
            "origin",
            "When no shield answers: 'origin' (ask it) or 'none' (answer 502, or 504"
            " when the last shield timed out).",
        ],
        [
            "shield-timeout",
            None,
            "2s",
            "How long a shield may take to connect; to answer, --origin-timeout more.",
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
        self["forward-request-header"] = []
        self["shield"] = []
        # The help of an opt_ method is its docstring, indentation and all.
        self.docs = {name: doc and " ".join(doc.split()) for name, doc in self.docs.items()}

    def opt_trusted_proxy(self, cidr: str) -> None:
        """
        A proxy (address or CIDR network) whose X-Forwarded-For names the
        client, for the access log and per-client caps (repeatable).
        """
        try:
            self["trusted-proxy"].append(trusted_proxy(cidr))
        except SettingError as e:
            raise usage.UsageError(str(e)) from None

    def opt_forward_request_header(self, name: str) -> None:
        """
        A request header a listener's request sends on to the origin with
        the fill it starts, e.g. X-Request-ID (repeatable; never
        Authorization or Cookie).
        """
        try:
            self["forward-request-header"].append(forward_request_header(name))
        except SettingError as e:
            raise usage.UsageError(str(e)) from None

    def opt_shield(self, url: str) -> None:
        """
        Base URL of another cachetier node that fills ask before the
        origin (repeatable: each name goes to the one rendezvous hashing
        ranks first among those up), or 'cluster': the cluster's live
        nodes whose role is shield.
        """
        self["shield"].append(url)

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
        try:
            pidfile(parent.get("pidfile"), parent.get("rundir", "."), self["owner"])
        except SettingError as e:
            raise usage.UsageError(str(e)) from None


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
        raise SettingError(f"--listen {description!r}: {why}{listen_hint(description)}") from None


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """
    Build the whole service from parsed options: the listeners, the
    cache, its flushes once a second and the workers.  Nothing is
    created or bound until twistd starts it (see L{cachetier.service}).
    """
    if reactor is None:
        from twisted.internet import reactor
    settings: Settings = options["settings"]
    raise_descriptor_limit()
    parent = MultiService()
    site = starting_site(settings, reactor)
    certificates: list[Callable[[], None]] = []
    workers = None
    if settings.workers > 1:
        public = PublicPorts(settings.listen, site, reactor, copies=settings.workers)
        public.setServiceParent(parent)
        workers = WorkersService(reactor, settings.workers, public, site, settings)
    else:
        for description in settings.listen:
            endpoint, certificate = listen_endpoint(reactor, description)
            listener(description, endpoint, site).setServiceParent(parent)
            if certificate is not None:
                certificates.append(certificate.reload)
    cache = CacheService(
        settings, reactor, site, assemble, options.get("owner"), certificates, workers
    )
    cache.setServiceParent(parent)
    every_second(cache.flush, reactor).setServiceParent(parent)
    if workers is not None:
        workers.setServiceParent(parent)
    return parent


def makeWorkerService(
    settings: Settings, primary: str, sockets: Sequence[tuple[int, int]], reactor: Any
) -> MultiService:
    """
    A worker's service (C{--workers}): the primary's, but on the
    listening sockets the primary handed it (descriptor, family), serving
    fresh hits from the primary's store and relaying the rest to the
    C{primary} socket; and once a second, its report to the primary.
    """
    parent = MultiService()
    site = starting_site(settings, reactor)
    for fd, family in sockets:
        endpoint = AdoptedStreamServerEndpoint(reactor, fd, family)
        listener(f"descriptor {fd}", endpoint, site).setServiceParent(parent)
    cache = CacheService(settings, reactor, site, partial(assemble, primary=primary))
    cache.setServiceParent(parent)
    every_second(cache.flush, reactor).setServiceParent(parent)

    def report() -> Deferred[None]:
        return Deferred.fromCoroutine(cache.assembly.reporter.report())

    every_second(report, reactor).setServiceParent(parent)
    return parent


def every_second(call: Callable[[], object], reactor: Any) -> TimerService:
    """
    A service that calls C{call} once a second (which must catch and log
    its own errors: one raised would stop it).
    """
    timer = TimerService(1.0, call)
    timer.clock = reactor
    return timer


def listen_endpoint(reactor: Any, description: str) -> tuple[Any, ReloadableCertificate | None]:
    """
    The endpoint for a C{--listen} description and, for TLS, its
    certificate (reloaded on SIGHUP, served with its whole chain).
    """
    if is_tls(description):
        return tls_endpoint(reactor, description)
    kind, _, named = parse_endpoint(description)
    if kind in ("tcp", "tcp6") and "backlog" not in named:
        description += f":backlog={default_backlog()}"
    return serverFromString(reactor, description), None
