"""
Zero-copy bodies: C{os.sendfile} from a cached file straight to the socket.

Twisted has no sendfile support, so this producer cooperates with the TCP
transport by hand.  The transport must have sent everything it buffered
(the response headers) before the first C{sendfile}, and nothing else may
write to it until the body is out, or bytes would interleave.  Both hold
because the producer only calls C{sendfile} when the transport has just
drained its buffer, and a request's producer is the only writer while it
is registered (HTTP/1.1 answers pipelined requests in order).
"""

from __future__ import annotations

import os
from typing import IO, Any

from twisted.internet import tcp

from ._producer import BodyProducer

# Bytes per sendfile call, and per turn of the reactor before yielding to
# other connections.
_CALL = 8 * 1024 * 1024
_TURN = 32 * 1024 * 1024


def can_sendfile(request: Any) -> bool:
    """
    Whether C{request} arrived on a plain TCP connection (not TLS, which
    must encrypt in user space).
    """
    return isinstance(getattr(request, "transport", None), tcp.Connection)


def _drained(transport: tcp.Connection) -> bool:
    # The transport's write buffer (FileDescriptor internals) is empty.
    return transport.offset == len(transport.dataBuffer) and not transport._tempDataLen


class SendfileProducer(BodyProducer):
    """
    Sends C{size} bytes of C{file} from C{offset} as the body of
    C{request}, respecting backpressure: when the socket is full, it waits
    for the transport to report it writable again, never blocking the
    reactor, and holds no body bytes in memory.
    """

    def __init__(self, request: Any, file: IO[bytes], offset: int, size: int) -> None:
        super().__init__(request)
        self.file = file
        self.offset = offset
        self.remaining = size
        self._transport: tcp.Connection = request.transport

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.request.write(b"")  # the headers, into the transport's buffer
        self._transport.setTcpNoDelay(True)
        self._wait_for_transport()

    def _wait_for_transport(self) -> None:
        """
        Have the transport resume us once it has nothing buffered and the
        socket is writable: its doWrite resumes a paused producer when it
        finds its buffer empty.
        """
        self._transport.producerPaused = True
        self._transport.startWriting()

    def _send(self) -> None:
        if self.request is None or self._paused:
            return
        if not _drained(self._transport):
            self._wait_for_transport()
            return
        socket_fd = self._transport.fileno()
        file_fd = self.file.fileno()
        sent = 0
        while self.remaining > 0:
            count = min(self.remaining, _CALL)
            try:
                n = os.sendfile(socket_fd, file_fd, self.offset, count)
            except BlockingIOError:
                self._wait_for_transport()
                return
            except OSError:
                self._abort()
                return
            if n == 0:
                # The file is shorter than its metadata said.
                self._abort()
                return
            self.offset += n
            self.remaining -= n
            self.request.sentLength += n
            sent += n
            if self.remaining and (n < count or sent >= _TURN):
                # A short send means the socket is full: asking again would
                # only fail with EAGAIN.
                self._wait_for_transport()
                return
        self._finish()

    def _release(self) -> None:
        self.file.close()
