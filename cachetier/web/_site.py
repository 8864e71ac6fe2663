"""
The site: per-request bookkeeping, the access log and request metrics.
"""

from __future__ import annotations

import time

from twisted.logger import Logger
from twisted.web import server
from twisted.web.iweb import IRequest

from ..metrics import Metrics
from ..names import name_from_path, quote_name

log = Logger()


class CacheRequest(server.Request):
    """
    A request that remembers what the cache did with it, for the access log.

    @ivar cache_name: the validated file name asked for, if any.
    @ivar outcome: C{hit}, C{miss}, C{not_found}, C{error}... or L{None}
        for requests that are not about a file.
    """

    cache_name: str | None = None
    outcome: str | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.received = time.monotonic()


class CacheSite(server.Site):
    """
    A L{server.Site} that emits one structured access event per request.
    """

    requestFactory = CacheRequest

    def __init__(self, resource: object, metrics: Metrics, **kwargs: object) -> None:
        super().__init__(resource, **kwargs)
        self.metrics = metrics

    def log(self, request: CacheRequest) -> None:
        sent = request.sentLength
        if request.outcome is not None:
            self.metrics.requests.labels(outcome=request.outcome).inc()
        self.metrics.bytes_served.inc(sent)
        log.info(
            "{method} {path} {status} {bytes}B {outcome} {duration_ms:.1f}ms",
            method=request.method.decode("latin-1"),
            path=request.uri.decode("latin-1"),
            name=request.cache_name,
            status=request.code,
            bytes=sent,
            outcome=request.outcome or "-",
            duration_ms=(time.monotonic() - request.received) * 1000,
            client=(
                request.getClientAddress().host
                if hasattr(request.getClientAddress(), "host")
                else None
            ),
        )


def name_of(request: IRequest) -> str:
    """
    The validated file name below the resource that is rendering
    C{request}, read from the still-encoded path.

    @raise cachetier.names.InvalidName: when the path is not a valid name.
    """
    segments = request.path.split(b"/")
    return name_from_path(b"/".join(segments[1 + len(request.prepath) :]))


def public_base(request: IRequest, configured: str | None) -> str:
    """
    The base URL listeners reach this server at: the configured one, or the
    scheme and Host of C{request}.
    """
    if configured is not None:
        return configured
    scheme = "https" if request.isSecure() else "http"
    host = request.getHeader(b"host")
    if host is None:
        address = request.getHost()
        host = f"{address.host}:{address.port}".encode("ascii")
    return f"{scheme}://{host.decode('latin-1')}/"


def download_url(request: IRequest, configured: str | None, name: str) -> str:
    return public_base(request, configured) + "files/" + quote_name(name)
