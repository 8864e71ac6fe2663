"""
Response bodies: the push-producer contract every body of ours keeps, and
the ways a body is made.

- L{SendfileProducer}: zero-copy, C{os.sendfile} from a cached file
  straight to the socket.  Twisted has no sendfile support, so this
  producer cooperates with the TCP transport by hand.  The transport must
  have sent everything it buffered (the response headers) before the first
  C{sendfile}, and nothing else may write to it until the body is out, or
  bytes would interleave.  Both hold because the producer only calls
  C{sendfile} when the transport has just drained its buffer, and a
  request's producer is the only writer while it is registered (HTTP/1.1
  answers pipelined requests in order).
- L{PreadProducer}: a cached file's byte ranges through the transport (TLS,
  and C{multipart/byteranges}).
- L{FillProducer}: a byte range of an in-flight download, as its bytes land.
- L{SmallBodies}: small objects whole from memory.

Every producer reads with explicit offsets from a shared L{Handle}, gives
up on a client that accepts no bytes for the site's C{send_timeout}, and
counts the bytes that left for the client as it goes (L{BodyProducer.sent}),
so the served-bytes counter shows a long download's bandwidth while it
runs, not at its end.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.web import http
from zope.interface import implementer

from ..metrics import ByteTally
from ..objects import StoredObject
from ..store import Handle
from ..sync import Fill
from ._twisted import unsent_bytes
from .headers import downstream_cache_control

log = Logger()

# Bytes per sendfile call, and per turn of the reactor before yielding to
# other connections.
_CALL = 8 * 1024 * 1024
_TURN = 32 * 1024 * 1024
# Bytes per pread: one chunk in memory per response, whatever the client.
_CHUNK = 256 * 1024


@implementer(IPushProducer)
class BodyProducer:
    """
    Pushes one response body to C{request}: paused and resumed by the
    transport, stopped when the client goes away, aborted when the client
    takes nothing for the site's C{send_timeout} seconds (as nginx's
    C{send_timeout}).  Subclasses send in L{_send} and free what they hold
    in L{_release}.
    """

    def __init__(self, request: Any) -> None:
        self.request: Any = request
        self._paused = False
        self._site = getattr(getattr(request, "channel", None), "site", None)
        self._send_timeout: float | None = getattr(self._site, "send_timeout", None)
        self._stall: IDelayedCall | None = None
        metrics = getattr(self._site, "metrics", None)
        self._served: ByteTally | None = None if metrics is None else metrics.bytes_served

    def sent(self) -> None:
        """
        Count in the served bytes what has left Twisted's buffer for the
        kernel since the last count; the observer of the finished request
        counts the rest (L{CacheRequest.counted}).  Called before each
        write: a few int operations, nothing allocated.
        """
        served, request = self._served, self.request
        if served is None:
            return
        left = request.sentLength - unsent_bytes(request.transport)
        if left > request.counted:
            served.value += left - request.counted
            request.counted = left

    def pauseProducing(self) -> None:
        self._paused = True
        self._stalled()

    def resumeProducing(self) -> None:
        self._paused = False
        self._progressed()
        self._send()

    def stopProducing(self) -> None:
        self._close()

    def _stalled(self) -> None:
        """
        The client stopped taking bytes: start its clock.
        """
        if self._stall is None and self._send_timeout and self.request is not None:
            self._stall = self._site.reactor.callLater(self._send_timeout, self._send_timed_out)

    def _progressed(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _send_timed_out(self) -> None:
        self._stall = None
        if self.request is not None:
            log.info(
                "aborting a response its client took nothing of for {secs:g}s",
                secs=self._send_timeout,
            )
            self._site.metrics.responses_timed_out.inc()
            self._abort()

    def _send(self) -> None:
        raise NotImplementedError()

    def _release(self) -> None:
        raise NotImplementedError()

    def _close(self) -> None:
        # The transport may stop us after we ended the response ourselves.
        if self.request is None:
            return
        self.request = None
        self._progressed()
        self._release()

    def _finish(self) -> None:
        """
        The whole body is out: end the response cleanly.
        """
        request = self.request
        self._close()
        request.unregisterProducer()
        request.finish()

    def _abort(self) -> None:
        """
        The body cannot be completed: drop the connection, so the client can
        never take a short body for a whole one.
        """
        request = self.request
        self._close()
        request.unregisterProducer()
        request.transport.abortConnection()


class PumpingProducer(BodyProducer):
    """
    A producer that writes in a loop (L{_pump}) until paused, done or out
    of bytes.  Writing can re-enter (a write may pause and resume us), so
    only one pump runs at a time.
    """

    _pumping = False

    def _send(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            self._pump()
        finally:
            self._pumping = False

    def _pump(self) -> None:
        raise NotImplementedError()


def can_sendfile(request: Any) -> bool:
    """
    Whether C{request} arrived on a plain TCP connection (not TLS, which
    must encrypt in user space).
    """
    return isinstance(getattr(request, "transport", None), tcp.Connection)


class SendfileProducer(BodyProducer):
    """
    Sends C{size} bytes of C{handle}'s file from C{offset} as the body of
    C{request}, respecting backpressure: when the socket is full, it waits
    for the transport to report it writable again, never blocking the
    reactor, and holds no body bytes in memory.  It owns one reference to
    C{handle}.
    """

    def __init__(self, request: Any, handle: Handle, offset: int, size: int) -> None:
        super().__init__(request)
        self.handle: Handle | None = handle
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
        self._stalled()

    def _send(self) -> None:
        if self.request is None or self._paused:
            return
        if unsent_bytes(self._transport):
            self._wait_for_transport()
            return
        assert self.handle is not None
        socket_fd = self._transport.fileno()
        sent = 0
        while self.remaining > 0:
            count = min(self.remaining, _CALL)
            try:
                n = os.sendfile(socket_fd, self.handle.fd, self.offset, count)
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
            self.sent()
            sent += n
            if self.remaining and (n < count or sent >= _TURN):
                # A short send means the socket is full: asking again would
                # only fail with EAGAIN.
                self._wait_for_transport()
                return
        self._finish()

    def _release(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.release()


class PreadProducer(PumpingProducer):
    """
    Sends segments of C{handle}'s file through the transport: each segment
    is literal bytes to write first (a multipart header, or nothing) and a
    range of the file (offset, length); C{trailer} goes last.  One chunk in
    memory at a time.  It owns one reference to C{handle}.
    """

    def __init__(
        self,
        request: Any,
        handle: Handle,
        segments: list[tuple[bytes, int, int]],
        trailer: bytes = b"",
    ) -> None:
        super().__init__(request)
        self.handle: Handle | None = handle
        self._segments = list(reversed(segments))
        self._trailer = trailer

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self._send()

    def _pump(self) -> None:
        while self.request is not None and not self._paused:
            if not self._segments:
                if self._trailer:
                    self.request.write(self._trailer)
                self._finish()
                return
            head, offset, length = self._segments.pop()
            if head:
                self.request.write(head)
            if length == 0:
                continue
            assert self.handle is not None
            data = os.pread(self.handle.fd, min(_CHUNK, length), offset)
            if not data:
                self._abort()  # shorter than its metadata said
                return
            if len(data) < length:
                self._segments.append((b"", offset + len(data), length - len(data)))
            self.sent()
            self.request.write(data)

    def _release(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.release()


class FillProducer(PumpingProducer):
    """
    Streams a byte range of an in-flight download to one request, as fast
    as the bytes land and the client takes them.

    Memory stays at one chunk whatever the client's speed: a paused
    producer reads nothing, and the bytes wait on disk, not in a buffer.
    If the download fails, the connection is aborted so the client can
    never take a short body for a whole one.

    @param size: bytes to send from C{offset}, or L{None} for "until the
        download ends" (an origin that sent no length).
    """

    chunk_size = _CHUNK

    def __init__(self, request: Any, fill: Fill, offset: int, size: int | None) -> None:
        super().__init__(request)
        self.fill = fill
        self.position = offset
        self.end = None if size is None else offset + size
        self._handle: Handle | None = None

    def start(self) -> None:
        self._handle = self.fill.follow(self)
        self.request.registerProducer(self, True)
        if self.fill.readable_until(self.position) <= self.position:
            # Nothing to send yet: the status line and headers go now, so
            # a player waiting on a seek knows it was heard.
            self.request.write(b"")
        self._send()

    def fill_progressed(self) -> None:
        self._send()

    def _pump(self) -> None:
        while self.request is not None:
            if self.fill.state == "failed":
                self._abort()
                return
            if self._paused:
                return
            available = self.fill.readable_until(self.position)
            limit = available if self.end is None else min(self.end, available)
            if self.position >= limit:
                if self.end is not None and self.position >= self.end:
                    self._finish()
                elif self.fill.state == "done":
                    self._finish()
                else:
                    self.fill.wait(self)
                    self.fill.need(self.position)
                return
            assert self._handle is not None
            data = os.pread(
                self._handle.fd, min(self.chunk_size, limit - self.position), self.position
            )
            self.position += len(data)
            self.sent()
            self.request.write(data)

    def _release(self) -> None:
        self.fill.unfollow(self)
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.release()


class SmallBodies:
    """
    Small objects' bodies and prepared headers in memory, so a hit on one is
    a dictionary lookup and one write: no open, read, close or producer.
    Keyed by the version's path, so a replaced object is never served from
    here, and the headers are prepared again when a 304 renewed them;
    least recently used first out past C{max_bytes}.
    """

    max_object = 64 * 1024
    max_bytes = 64 * 1024 * 1024

    def __init__(self) -> None:
        self._entries: OrderedDict[
            str,
            tuple[StoredObject, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], bytes],
        ] = OrderedDict()
        self._bytes = 0

    def get(
        self, obj: StoredObject, default_max_age: int
    ) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], bytes]:
        """
        C{obj}'s replayed origin headers, the cache's own headers, and its
        body.
        """
        entry = self._entries.get(obj.path)
        if entry is not None and (entry[0] is obj or entry[0] == obj):
            self._entries.move_to_end(obj.path)
            return entry[1:]
        if entry is not None:
            body = entry[3]  # the same body, its headers renewed
            self._bytes -= len(body)
        else:
            with open(obj.path, "rb") as f:
                body = f.read()
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in obj.extra]
        headers = [
            (b"content-type", obj.content_type.encode("latin-1")),
            (b"etag", obj.etag.encode("latin-1")),
            (b"last-modified", http.datetimeToString(int(obj.last_modified))),
            (b"accept-ranges", b"bytes"),
            (
                b"cache-control",
                downstream_cache_control(obj.cache_control, default_max_age, obj.lifetime),
            ),
        ]
        self._entries[obj.path] = (obj, extra, headers, body)
        self._entries.move_to_end(obj.path)
        self._bytes += len(body)
        while self._bytes > self.max_bytes:
            _, (_, _, _, dropped) = self._entries.popitem(last=False)
            self._bytes -= len(dropped)
        return extra, headers, body
