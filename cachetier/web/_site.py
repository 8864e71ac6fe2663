"""
The site: connections (deadlines, the cap, request bodies refused unread),
per-request bookkeeping, the access log and request metrics.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import ILogObserver, Logger
from twisted.web import http, server
from twisted.web.iweb import IRequest
from zope.interface import implementer

from ..analytics import Analytics, Event
from ..metrics import Metrics
from ..names import name_from_path, quote_name
from ._json import error_body
from ._twisted import request_line, unsent_bytes

log = Logger()


# Set by a worker on requests it relays to the primary over the private
# UNIX socket: the listener's address, which the primary would otherwise
# see as the worker's; and by the primary on its answers to those, the
# true Content-Length.
RELAYED_FOR = b"x-cachetier-relayed-for"
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
Trusted = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

_READ_METHODS = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS"})


class CacheRequest(server.Request):
    """
    A request that remembers what the cache did with it, for the access log.

    @ivar cache_name: the validated file name asked for, if any.
    @ivar outcome: C{hit}, C{miss}, C{not_found}, C{error}... or L{None}
        for requests that are not about a file.
    """

    cache_name: str | None = None
    outcome: str | None = None

    # When the first body byte was written (time.monotonic()).
    first_byte: float | None = None
    # Whether the connection was lost before the response was complete.
    aborted = False

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.received = time.monotonic()
        self._body_bytes = 0

    def connectionLost(self, reason: Any) -> None:
        # Twisted logs only finished requests; one the client abandoned (a
        # player seeking, a listener stopping) is logged here, as aborted.
        site = getattr(self, "site", None)
        super().connectionLost(reason)
        if not self.finished and site is not None:
            self.aborted = True
            site.log(self)

    def write(self, data: bytes) -> None:
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
        super().write(data)

    def handleContentChunk(self, data: bytes) -> None:
        # A chunked admin body has no length to check up front.
        self._body_bytes += len(data)
        if self._body_bytes > MAX_ADMIN_BODY:
            self.channel.refuse_body(413, "too_large", "request bodies are capped at 1 MiB")
            return
        super().handleContentChunk(data)


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
                    method = method.decode("latin-1")
                    self.refuse_body(405, "method_not_allowed", f"{method} is not allowed here")
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
    A L{server.Site} that emits one structured access event per request and
    bounds its connections (see L{CacheChannel}).

    @param access_log: where the access events go: a L{Logger} (by default
        the module's, so into twistd's log), or L{None} for none.
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
        access_log: Logger | None = log,
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
        self.access_log = access_log
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.max_connections = max_connections
        self.channels: set[CacheChannel] = set()
        self.draining = False
        self._refusals = OncePerSecond()
        self._outcomes: dict[str, Any] = {}

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
        outcome = request.outcome
        if outcome == "relayed":
            # A worker's relayed request is logged and counted once, by the
            # primary, which knows what it did and gets the listener's
            # address with it.
            return
        aborted = request.aborted
        sent = request.sentLength
        if aborted:
            sent = max(0, sent - unsent_bytes(request.transport))
        duration = time.monotonic() - request.received
        metrics = self.metrics
        metrics.http_requests.inc()
        metrics.request_seconds.observe(duration)
        if outcome is not None:
            counter = self._outcomes.get(outcome)
            if counter is None:
                counter = self._outcomes[outcome] = metrics.requests.labels(outcome=outcome)
            counter.inc()
        metrics.bytes_served.inc(sent)
        if aborted:
            metrics.responses_aborted.inc()
            metrics.aborted_bytes.inc(sent)
        if outcome == "miss" and request.first_byte is not None:
            metrics.miss_first_byte_seconds.observe(request.first_byte - request.received)
        analytics, access_log = self.analytics, self.access_log
        if analytics is None and access_log is None:
            return
        headers = request.requestHeaders
        client = client_address(request)
        agent = _header(headers, b"user-agent")
        if (
            analytics is not None
            and request.cache_name is not None
            and request.method == b"GET"
            and request.code in (200, 206)
            and request.startedWriting
        ):
            analytics.record(
                Event(
                    request.cache_name,
                    client,
                    agent,
                    sent,
                    request.code,
                    time.time(),
                    _object_size(request),
                )
            )
        if access_log is None:
            return
        event = {
            "client": client,
            "method": request.method.decode("latin-1"),
            "path": request.uri.decode("latin-1"),
            "protocol": request.clientproto.decode("latin-1"),
            "name": request.cache_name,
            # nginx's 499: the client left before any of the answer.
            "status": request.code if request.startedWriting else 499,
            "bytes": sent,
            "referer": _header(headers, b"referer"),
            "user_agent": agent,
            "range": _header(headers, b"range"),
            "outcome": outcome or "-",
            # Rounded here: a worker's events reach the log as JSON, which
            # keeps values, not format specs.
            "duration_ms": round(duration * 1000, 1),
            "completion": "aborted" if aborted else "OK",
        }
        event["line"] = access_line(event, self.reactor.seconds())
        access_log.info("{line}", **event)


def _object_size(request: CacheRequest) -> int | None:
    """
    The size of the file a 200 or 206 answered with: its Content-Length,
    or the total of its Content-Range.
    """
    headers = request.responseHeaders
    if request.code == 206:
        value = headers.getRawHeaders(b"content-range", [b""])[-1]
        total = value.rpartition(b"/")[2]
        return int(total) if total.isdigit() else None
    length = headers.getRawHeaders(b"content-length", [b""])[-1]
    return int(length) if length.isdigit() else None


def _header(headers: http.Headers, name: bytes) -> str:
    value = headers.getRawHeaders(name)
    return value[-1].decode("latin-1") if value else "-"


# What nginx escapes in its log variables: no quote or control character
# can break a line or a field.
_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')


def _quoted(text: str) -> str:
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02X}", text)


@functools.lru_cache(maxsize=4)
def _stamp(second: int) -> str:
    # Formatted once a second, not once a request.
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))


def access_line(event: dict[str, Any], when: float) -> str:
    """
    One access log line: nginx's C{combined} format, then the Range asked
    for, the cache outcome, the duration and whether the response was
    complete (C{OK}) or cut short (C{aborted}); see the README.
    """
    stamp = _stamp(int(when))
    request = _quoted(f"{event['method']} {event['path']} {event['protocol']}")
    return (
        f'{event["client"]} - - [{stamp}] "{request}" {event["status"]} {event["bytes"]}'
        f' "{_quoted(event["referer"])}" "{_quoted(event["user_agent"])}"'
        f' "{_quoted(event["range"])}" {event["outcome"]} {event["duration_ms"]:.1f}ms'
        f" {event['completion']}"
    )


@implementer(ILogObserver)
class AccessLogFile:
    """
    Writes access lines to a file of their own, formatting the timestamp
    once a second: the cheap way to keep a line per request at tens of
    thousands of requests a second.

    Lines are buffered and written whole, in C{O_APPEND} writes of at most
    about 64 KiB: every process of a C{--workers} server appends to the
    same file and no line is ever split or interleaved.  Call L{flush} now
    and then (and L{close} at the end); L{reopen} after the file was
    renamed (log rotation, on SIGHUP).
    """

    _FLUSH_AT = 1 << 16

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = self._open()
        self._lines: list[str] = []
        self._size = 0

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def __call__(self, event: dict[str, Any]) -> None:
        line = event["line"] + "\n"
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            data = "".join(self._lines).encode("utf-8")
            self._lines.clear()
            self._size = 0
            os.write(self._fd, data)

    def reopen(self) -> None:
        """
        Write what is buffered to the old file, then go on in a new one at
        the configured path.
        """
        self.flush()
        fd = self._open()
        os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        self.flush()
        os.close(self._fd)


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


def client_address(request: IRequest) -> str:
    """
    The address a request came from; for a request a worker relayed over
    the primary's private socket, the listener's address it names.

    When that address is one of the C{trusted} proxies (C{--trusted-proxy}),
    the client is the last address in X-Forwarded-For that is not, as
    nginx's C{real_ip_recursive}.
    """
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    if host is None:
        relayed = request.getHeader(RELAYED_FOR)
        return relayed.decode("latin-1") if relayed else "local"
    host = str(host)
    trusted = getattr(getattr(request, "site", None), "trusted_proxies", ())
    if trusted and _is_trusted(host, trusted):
        forwarded = b",".join(request.requestHeaders.getRawHeaders(b"x-forwarded-for", []))
        for hop in reversed(forwarded.decode("latin-1").split(",")):
            hop = hop.strip()
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break  # garbage: stop at the last address we could trust
            host = hop
            if not _is_trusted(hop, trusted):
                break
    return host


def _is_trusted(host: str, trusted: Trusted) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in trusted)


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


class EndWatch:
    """
    Whether a request has ended, answered or abandoned: a flag set from
    C{notifyFinish()}, as klein keeps one, for work that finishes later
    and must not answer a request that is gone.
    """

    ended = False

    def __init__(self, request: IRequest) -> None:
        request.notifyFinish().addBoth(self._end)

    def _end(self, _: object) -> None:
        self.ended = True
