"""
The site: connections (deadlines, the cap, request bodies refused unread),
per-request bookkeeping, and the observers of each finished request
(metrics, analytics, the access line).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web import http, server

from ..analytics import Analytics
from ..hops import CacheStatus
from ..metrics import Metrics
from . import addresses
from ._json import error_body
from ._twisted import request_line, unsent_bytes
from .access import OncePerSecond, TwistdAccessLog
from .addresses import RELAYED_FOR, Trusted
from .hops import stamp
from .observers import NOT_LISTENERS, RequestMetrics, record_download

log = Logger()

# Set by the primary on its answers to requests a worker relayed (see
# L{RELAYED_FOR}): the true Content-Length.
RELAYED_LENGTH = b"x-cachetier-length"

# The only routes that take a request body (admin JSON), and its cap.
BODY_ROUTES = frozenset(
    {
        (b"POST", b"/api/v1/purge"),
        (b"POST", b"/api/v1/warm"),
        (b"POST", b"/internal/v1/report"),
    }
)
MAX_ADMIN_BODY = 1 << 20

_READ_METHODS = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS"})

AccessObserver = Callable[["CacheRequest"], None]


class CacheRequest(server.Request):
    """
    A request that remembers what the cache did with it, for the access log.

    @ivar cache_name: the validated file name asked for, if any.
    @ivar outcome: C{hit}, C{miss}, C{not_found}, C{error}... or L{None}
        for requests that are not about a file.
    @ivar sent: the bytes of the response that reached the kernel, and
    @ivar duration: the seconds it took, both fixed by L{tally} for every
        observer of the finished request.
    @ivar counted: the body bytes already in the served-bytes counter,
        counted by the producer as they left (see L{RequestMetrics}).
    @ivar outcome_counted: whether L{outcome} is already counted: it is
        when the response starts, so a long one shows at once.
    """

    cache_name: str | None = None
    outcome: str | None = None
    sent = 0
    duration = 0.0
    counted = 0
    outcome_counted = False
    # A /files/ answer's hop headers (see hops.stamp), and who asked:
    # "edge" for a request with the cluster secret, else a listener.
    hop_node: str | None = None
    cache_status: CacheStatus | None = None
    peer = "listener"

    # When the first body byte was written (time.monotonic()).
    first_byte: float | None = None
    # Whether the connection was lost before the response was complete.
    aborted = False

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.received = time.monotonic()
        self._body_bytes = 0
        self._client_address: str | None = None

    def connectionLost(self, reason: Any) -> None:
        # Twisted logs only finished requests; one the client abandoned (a
        # player seeking, a listener stopping) is logged here, as aborted.
        site = getattr(self, "site", None)
        super().connectionLost(reason)
        if not self.finished and site is not None:
            self.aborted = True
            site.log(self)

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            stamp(self)
        if (
            not self.startedWriting
            and self.getHeader(RELAYED_FOR) is not None
            and getattr(self.getClientAddress(), "host", None) is None
        ):
            # A worker relays this: Twisted's client drops Content-Length
            # (a connection header to it) and reports 0 for HEAD and 304,
            # so the true one travels under a name of its own.
            length = self.responseHeaders.getRawHeaders(b"content-length")
            if length:
                self.responseHeaders.setRawHeaders(RELAYED_LENGTH, length)
        if data and self.first_byte is None:
            self.first_byte = time.monotonic()
        if not self.startedWriting and self.outcome is not None:
            self.site.count.started(self)
        super().write(data)

    def handleContentChunk(self, data: bytes) -> None:
        # A chunked admin body has no length to check up front.
        self._body_bytes += len(data)
        if self._body_bytes > MAX_ADMIN_BODY:
            self.channel.refuse_body(413, "too_large", "request bodies are capped at 1 MiB")
            return
        super().handleContentChunk(data)

    def tally(self) -> None:
        """
        Fix L{sent} and L{duration}: for a response cut short, only what
        left Twisted's buffer counts as sent.
        """
        sent = self.sentLength
        if self.aborted:
            sent = max(0, sent - unsent_bytes(self.transport))
        self.sent = sent
        self.duration = time.monotonic() - self.received

    @property
    def client_address(self) -> str:
        """
        The address the request came from (see
        L{addresses.client_address}), found once.
        """
        if self._client_address is None:
            self._client_address = addresses.client_address(self)
        return self._client_address

    @property
    def user_agent(self) -> str:
        value = self.requestHeaders.getRawHeaders(b"user-agent")
        return value[-1].decode("latin-1") if value else "-"


class CacheChannel(http.HTTPChannel):
    """
    An HTTP connection with the bounds a public server needs:

      - a client has C{site.idle_timeout} seconds to send complete request
        headers (and body), counted from when the connection is ready for
        a request, not reset by each byte (slowloris);
      - a keep-alive connection idle that long between requests is closed;
      - a request that declares a body on a route that takes none is
        answered 413 (405 for a method the route does not have) before any
        of the body is read, and nothing is ever spooled for it; admin
        bodies are capped at L{MAX_ADMIN_BODY}.

    Twisted's own idle timer (which every byte resets) is off: the site is
    built with C{timeout=None}.
    """

    _deadline: IDelayedCall | None = None
    _refused = False
    _winding_down = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.connection_opened(self)
        self._await_request()

    @property
    def idle(self) -> bool:
        """
        Whether no request is in progress: between keep-alive requests.
        """
        return not self.requests and not self._refused

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if self.site.draining:
            # Shutting down: this response is the connection's last.
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            self.persistent = False
            return False
        return bool(super().checkPersistence(request, version))

    def wind_down(self) -> None:
        """
        Close once the response in progress (if any) is sent.
        """
        if self._winding_down:
            return
        self._winding_down = True
        self.persistent = False
        if self.idle:
            self._close(abort_after=self.site.send_timeout)

    def _await_request(self) -> None:
        self._cancel_deadline()
        timeout = self.site.idle_timeout
        if timeout:
            self._deadline = self.site.reactor.callLater(timeout, self._idle_timed_out)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _idle_timed_out(self) -> None:
        self._deadline = None
        self._close(abort_after=self.site.send_timeout)

    def _close(self, abort_after: float | None) -> None:
        """
        Close once what is buffered is sent; abort if that takes longer than
        C{abort_after} seconds.
        """
        self._cancel_deadline()
        self.transport.loseConnection()
        if abort_after:
            self._deadline = self.site.reactor.callLater(
                abort_after, self.transport.abortConnection
            )

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped: never parsed, never spooled
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        headers = request.requestHeaders
        declared = _declared_length(headers)
        if declared:
            method, target = request_line(self)
            if (method, target.split(b"?", 1)[0]) not in BODY_ROUTES:
                if method in _READ_METHODS:
                    self.refuse_body(413, "body_not_allowed", "this URL takes no request body")
                else:
                    named = method.decode("latin-1")
                    self.refuse_body(405, "method_not_allowed", f"{named} is not allowed here")
                return
            if declared > MAX_ADMIN_BODY:
                self.refuse_body(413, "too_large", "request bodies are capped at 1 MiB")
                return
        super().allHeadersReceived()

    def refuse_body(self, code: int, error: str, message: str) -> None:
        """
        Answer at once, without reading the request body, and close.
        """
        if self._refused:
            return
        self._refused = True
        self.site.metrics.requests.labels(outcome="refused").inc()
        body = error_body(error, message)
        phrase = http.RESPONSES.get(code, b"Error")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (code, phrase, len(body), body)
        )
        self._close(abort_after=self.site.send_timeout or 60.0)

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        # Armed first: Twisted's requestDone may parse a pipelined request
        # at once, whose allContentReceived then cancels it.
        if self.persistent and not self._refused:
            self._await_request()
        super().requestDone(request)

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        self.site.connection_closed(self)
        super().connectionLost(reason)


def _declared_length(headers: http.Headers) -> int:
    """
    The body length a request declares: its Content-Length, or 1 for a
    chunked body (length unknown, but there is one).
    """
    if headers.hasHeader(b"transfer-encoding"):
        return 1
    value = headers.getRawHeaders(b"content-length", [b"0"])[-1]
    try:
        return int(value)
    except ValueError:
        return 1


class CacheSite(server.Site):
    """
    A L{server.Site} that bounds its connections (see L{CacheChannel}) and
    hands each finished request to its observers in turn: the request
    metrics, the download analytics (L{analytics}, when kept) and the
    access line (L{access_log}).

    @param access_log: the access line observer: C{"twistd"} (the default)
        for twistd's log (L{TwistdAccessLog}); L{AccessLine} for a file of
        its own; L{None} for none.
    @param max_connections: connections past this many are closed as soon
        as they are accepted (L{None}: no cap).
    @param trusted_proxies: networks whose X-Forwarded-For is believed.
    """

    requestFactory = CacheRequest
    protocol = CacheChannel

    def __init__(
        self,
        resource: object,
        metrics: Metrics,
        access_log: AccessObserver | Literal["twistd"] | None = "twistd",
        *,
        idle_timeout: float | None = 60.0,
        send_timeout: float | None = 60.0,
        max_connections: int | None = None,
        trusted_proxies: Trusted = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, timeout=None, **kwargs)
        self.trusted_proxies = trusted_proxies
        # Download analytics (set by the service), if kept.
        self.analytics: Analytics | None = None
        self.metrics = metrics
        self.count = RequestMetrics(metrics)
        self.access_log = (
            TwistdAccessLog(self.reactor) if isinstance(access_log, str) else access_log
        )
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.max_connections = max_connections
        self.channels: set[CacheChannel] = set()
        self.draining = False
        self._refusals = OncePerSecond()

    def buildProtocol(self, addr: Any) -> Any:
        if self.max_connections is not None and self.connections >= self.max_connections:
            self._refusals.emit(
                log,
                "refusing connections: {limit} open, the most allowed ({count} refused)",
                limit=self.max_connections,
            )
            self.metrics.connections_refused.inc()
            return None  # the port closes the socket at once
        return super().buildProtocol(addr)

    @property
    def connections(self) -> int:
        return len(self.channels)

    def connection_opened(self, channel: CacheChannel) -> None:
        self.channels.add(channel)
        if self.draining:
            channel.wind_down()

    def connection_closed(self, channel: CacheChannel) -> None:
        self.channels.discard(channel)

    def drain(self, grace: float) -> Deferred[None]:
        """
        Wind down for a shutdown: idle connections close now, busy ones
        after their response in progress; whatever is still open after
        C{grace} seconds is aborted.  Stop listening first.

        @return: fires when every connection is closed.
        """
        self.draining = True
        clock = self.reactor
        deadline = clock.seconds() + grace
        done: Deferred[None] = Deferred()

        def check() -> None:
            for channel in list(self.channels):
                if clock.seconds() >= deadline:
                    channel.transport.abortConnection()
                else:
                    channel.wind_down()
            if self.channels:
                clock.callLater(0.1, check)
            else:
                done.callback(None)

        if self.channels:
            log.info(
                "draining {count} connections for up to {grace:g}s",
                count=len(self.channels),
                grace=grace,
            )
        check()
        return done

    def log(self, request: CacheRequest) -> None:
        if request.outcome in NOT_LISTENERS:
            # A worker's relayed request is logged and counted once, by the
            # primary, which knows what it did and gets the listener's
            # address with it; a worker's report is no listener's.
            return
        request.tally()
        self.count(request)
        if self.analytics is not None:
            record_download(self.analytics, request)
        if self.access_log is not None:
            self.access_log(request)
