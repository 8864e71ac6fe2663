"""
The access log: one line per request, nginx's C{combined} format and more
(L{access_line}, a formatter in the spirit of Twisted's
L{IAccessLogFormatter}), written to a file of its own (L{AccessLine} on an
L{AccessLogFile}) or into twistd's log (L{TwistdAccessLog}, the default);
and L{OncePerSecond}, for events that may come thousands of times a second.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger, LogLevel, LogPublisher, formatTime, globalLogPublisher
from twisted.python.logfile import BaseLogFile
from twisted.web.iweb import IAccessLogFormatter
from zope.interface import provider

from ._twisted import log_observers, observer_file

if TYPE_CHECKING:
    from ._site import CacheRequest

# The namespace access lines have always had in twistd's log, where
# operators (and the workers' tests) find them.
NAMESPACE = "cachetier.web._site"

# What nginx escapes in its log variables: no quote or control character
# can break a line or a field.
_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')


def _quoted(text: str) -> str:
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02X}", text)


@functools.lru_cache(maxsize=4)
def access_time(second: int) -> str:
    """
    The time of an access line, as nginx writes it; formatted once a
    second, not once a request.
    """
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))


def _header(request: Any, name: bytes) -> str:
    value = request.requestHeaders.getRawHeaders(name)
    return value[-1].decode("latin-1") if value else "-"


def access_fields(request: CacheRequest) -> dict[str, Any]:
    """
    What the access line of a finished L{CacheRequest} says, as the
    fields of a log event.
    """
    return {
        "client": request.client_address,
        # In nginx's $remote_user place: "edge" for a cluster edge's fetch.
        "peer": getattr(request, "peer", "listener"),
        "method": request.method.decode("latin-1"),
        "path": request.uri.decode("latin-1"),
        "protocol": request.clientproto.decode("latin-1"),
        "name": request.cache_name,
        # nginx's 499: the client left before any of the answer.
        "status": request.code if request.startedWriting else 499,
        "bytes": request.sent,
        "referer": _header(request, b"referer"),
        "user_agent": request.user_agent,
        "range": _header(request, b"range"),
        "outcome": request.outcome or "-",
        # Rounded here: a worker's events reach the log as JSON, which
        # keeps values, not format specs.
        "duration_ms": round(request.duration * 1000, 1),
        "completion": "aborted" if request.aborted else "OK",
    }


def format_access(timestamp: str, event: dict[str, Any]) -> str:
    """
    One access log line from its fields (L{access_fields}): nginx's
    C{combined} format (with C{edge} as the user of a request that carried
    the cluster secret), then the Range asked for, the cache outcome, the
    duration and whether the response was complete (C{OK}) or cut short
    (C{aborted}); see the README.
    """
    request = _quoted(f"{event['method']} {event['path']} {event['protocol']}")
    user = "edge" if event.get("peer") == "edge" else "-"
    return (
        f'{event["client"]} - {user} [{timestamp}] "{request}" {event["status"]} {event["bytes"]}'
        f' "{_quoted(event["referer"])}" "{_quoted(event["user_agent"])}"'
        f' "{_quoted(event["range"])}" {event["outcome"]} {event["duration_ms"]:.1f}ms'
        f" {event['completion']}"
    )


@provider(IAccessLogFormatter)
def access_line(timestamp: str, request: CacheRequest) -> str:
    """
    The access line of a finished L{CacheRequest}, stamped C{timestamp}
    (see L{access_time}).
    """
    return format_access(timestamp, access_fields(request))


class AccessLine:
    """
    The access line observer for a file of the lines' own: formats each
    request's line and hands it to C{write} (L{AccessLogFile.write}).
    """

    def __init__(self, write: Callable[[str], None], clock: Callable[[], float] = time.time):
        self._write = write
        self._clock = clock

    def __call__(self, request: CacheRequest) -> None:
        self._write(access_line(access_time(int(self._clock())), request))


class TwistdAccessLog:
    """
    The default access line observer: each line into twistd's log, as an
    info event in L{NAMESPACE} with the line's fields.

    When twistd's log is a file and its only observer, the line is written
    to it finished instead: the very text twistd's observer would write
    for the event, its prefix formatted once a second.  Formatting an
    event per request (a timestamp with its time zone, the format string)
    costs a third of a small hit.  The lines of one turn of the reactor
    go out in one write when the turn ends (and at shutdown), so the
    default costs what a file of its own costs; an event logged later in
    the same turn may come before them.  Whether the file is there and
    writes that text is looked at again each second.

    @param reactor: its C{seconds} stamps the lines; its C{callLater}
        ends a turn's batch.
    """

    def __init__(self, reactor: Any, publisher: LogPublisher = globalLogPublisher) -> None:
        self._reactor = reactor
        self._publisher = publisher
        self._log = Logger(namespace=NAMESPACE, observer=publisher)
        self._second = -1
        self._timestamp = ""
        self._file: BaseLogFile | None = None
        self._prefix = ""
        self._lines: list[str] = []
        self._flushing_at_shutdown = False

    def __call__(self, request: CacheRequest) -> None:
        second = int(self._reactor.seconds())
        if second != self._second:
            self._next_second(second)
        fields = access_fields(request)
        line = format_access(self._timestamp, fields)
        if self._file is None:
            self._log.info("{line}", line=line, **fields)
            return
        if not self._lines:
            self._reactor.callLater(0, self.flush)
        self._lines.append(self._prefix + line.replace("\n", "\n\t") + "\n")

    def _next_second(self, second: int) -> None:
        self.flush()
        self._second = second
        self._timestamp = access_time(second)
        self._file, self._prefix = twistd_log_file(self._publisher, second)
        if self._file is not None and not self._flushing_at_shutdown:
            self._flushing_at_shutdown = True
            self._reactor.addSystemEventTrigger("after", "shutdown", self.flush)

    def flush(self) -> None:
        """
        Write the lines held to twistd's log file, in one write.
        """
        if self._lines and self._file is not None:
            data = "".join(self._lines)
            self._lines.clear()
            self._file.write(data)


def twistd_log_file(publisher: LogPublisher, second: int) -> tuple[BaseLogFile | None, str]:
    """
    twistd's log file, when it is C{publisher}'s only observer and writes
    an access event at C{second} as its prefix then the line; with that
    prefix.  C{(None, "")} for any other log.
    """
    observers = log_observers(publisher)
    if len(observers) != 1:
        return None, ""
    [observer] = observers
    out = observer_file(observer)
    if not isinstance(out, BaseLogFile):
        return None, ""
    prefix = f"{formatTime(second)} [{NAMESPACE}#info] "
    probe = {
        "log_format": "{line}",
        "line": "-",
        "log_namespace": NAMESPACE,
        "log_level": LogLevel.info,
        "log_time": second + 0.5,
    }
    if getattr(observer, "formatEvent", lambda _: None)(probe) != prefix + "-\n":
        return None, ""
    return out, prefix


class AccessLogFile:
    """
    Writes access lines to a file of their own: the cheap way to keep a
    line per request at tens of thousands of requests a second.

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

    def write(self, line: str) -> None:
        line += "\n"
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
