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


class _QuietClientFactory(_HTTP11ClientFactory):  # type: ignore[misc]
    # Not a "Starting factory" line in the log for every origin connection.
    noisy = False


class QuietPool(HTTPConnectionPool):
    """
    An origin connection pool that does not log each connection.
    """

    _factory = _QuietClientFactory
