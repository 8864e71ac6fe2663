"""
The site: per-request bookkeeping, the access log and request metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.logger import ILogObserver, Logger
from twisted.web import server
from twisted.web.iweb import IRequest
from zope.interface import implementer

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

    @param access_log: where the access events go: a L{Logger} (by default
        the module's, so into twistd's log), or L{None} for none.
    """

    requestFactory = CacheRequest

    def __init__(
        self, resource: object, metrics: Metrics, access_log: Logger | None = log, **kwargs: object
    ) -> None:
        super().__init__(resource, **kwargs)
        self.metrics = metrics
        self.access_log = access_log
        self._outcomes: dict[str, Any] = {}

    def log(self, request: CacheRequest) -> None:
        sent = request.sentLength
        outcome = request.outcome
        if outcome is not None:
            counter = self._outcomes.get(outcome)
            if counter is None:
                counter = self._outcomes[outcome] = self.metrics.requests.labels(outcome=outcome)
            counter.inc()
        self.metrics.bytes_served.inc(sent)
        if self.access_log is None:
            return
        address = request.getClientAddress()
        self.access_log.info(
            "{method} {path} {status} {bytes}B {outcome} {duration_ms:.1f}ms",
            method=request.method.decode("latin-1"),
            path=request.uri.decode("latin-1"),
            name=request.cache_name,
            status=request.code,
            bytes=sent,
            outcome=outcome or "-",
            duration_ms=(time.monotonic() - request.received) * 1000,
            client=getattr(address, "host", None),
        )


@implementer(ILogObserver)
class AccessLogFile:
    """
    Writes access events to a file of their own, one line each, formatting
    the timestamp once a second: the cheap way to keep a line per request
    at tens of thousands of requests a second.  Call L{flush} now and then
    (and L{close} at the end): lines are buffered.
    """

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1 << 16, encoding="utf-8")
        self._second = -1
        self._stamp = ""

    def __call__(self, event: dict[str, Any]) -> None:
        second = int(event["log_time"])
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        self._file.write(
            f'{self._stamp} {event["client"]} "{event["method"]} {event["path"]}" '
            f"{event['status']} {event['bytes']} {event['outcome']} {event['duration_ms']:.1f}ms\n"
        )

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class OncePerSecond:
    """
    A log line for an event that may happen thousands of times a second
    (descriptors exhausted, connections refused): written at most once a
    second, with the count since the last one.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = -1.0
        self._count = 0

    def emit(self, logger: Logger, format: str, **fields: Any) -> None:
        self._count += 1
        now = self._clock()
        if now - self._last >= 1.0:
            logger.warn(format, count=self._count, **fields)
            self._last = now
            self._count = 0


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
