"""
Every read of a private Twisted name in cachetier, each behind a small
function of ours.  Twisted may move any of them in any release:
C{tests/test_twisted_private.py} pins each to the installed version and
fails naming the one that moved.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import ILogObserver, LogPublisher, globalLogPublisher
from twisted.web import http
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory


def request_line(channel: http.HTTPChannel) -> tuple[bytes, bytes]:
    """
    The method and target of the request whose headers C{channel} has
    just received: Twisted hands them to the request only once its body
    is in, too late to refuse the body unread.
    """
    return channel._command, channel._path


def unsent_bytes(transport: Any) -> int:
    """
    What a TCP transport still holds in its own write buffer (Twisted's
    C{FileDescriptor} internals), not yet handed to the kernel; 0 for any
    other transport.
    """
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except AttributeError:
        return 0


def log_observers(publisher: LogPublisher = globalLogPublisher) -> list[ILogObserver]:
    """
    The observers C{publisher} hands each event to, in order.
    """
    return list(getattr(publisher, "_observers", ()))


def observer_file(observer: ILogObserver) -> Any | None:
    """
    The file a L{twisted.logger.FileLogObserver} writes to (twistd's
    C{--logfile} among them), or L{None} for any other observer.
    """
    return getattr(observer, "_outFile", None)


class _ConnectionShowingProtocol(HTTP11ClientProtocol):  # type: ignore[misc]
    """
    An origin connection whose responses show their C{Connection} header
    among their other headers: Twisted's parser keeps it apart (with
    C{Content-Length} and C{Transfer-Encoding}), yet the header fields it
    names must be removed before the response is stored or forwarded (RFC
    9110 section 7.6.1).
    """

    def request(self, request: Any) -> Any:
        d = super().request(request)
        parser = self._parser
        if parser is None:
            return d

        def show(response: Any) -> Any:
            values = parser.connHeaders.getRawHeaders(b"connection")
            if values:
                response.headers.setRawHeaders(b"connection", values)
            return response

        return d.addCallback(show)


class _QuietClientFactory(_HTTP11ClientFactory):  # type: ignore[misc]
    # Not a "Starting factory" line in the log for every origin connection.
    noisy = False

    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        return _ConnectionShowingProtocol(self._quiescentCallback)


class QuietPool(HTTPConnectionPool):
    """
    An origin connection pool that does not log each connection, and
    whose responses show their C{Connection} header.
    """

    _factory = _QuietClientFactory
