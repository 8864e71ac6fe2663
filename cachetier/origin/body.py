"""
Reading an origin body: L{BodyReceiver} hands one to the cache chunk by
chunk, within its deadlines; L{read_answer} reads a whole answer to pass
on; L{read_body} reads an error body to its end, keeping its first bytes;
L{abandon} gives one up unread.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IProtocol, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from ..errors import MAX_ANSWER_BODY, OriginError, Reason

_WRITE_ERRORS = {errno.ENOSPC: Reason.no_space, errno.EFBIG: Reason.too_large}


class BodyReceiver(Protocol):
    """
    Hands each body chunk to C{write} as it arrives; gives up when the origin
    is silent for C{idle} seconds, or sends less than C{min_rate} bytes a
    second over any C{window} seconds (a trickle holds a slot, a temp file
    and its listeners forever otherwise).
    """

    def __init__(
        self,
        write: Callable[[bytes], None],
        done: Deferred[None],
        clock: IReactorTime,
        idle: float,
        min_rate: int = 0,
        window: float = 30.0,
    ) -> None:
        self._write = write
        self._done = done
        self._clock = clock
        self._idle = idle
        self._min_rate = min_rate
        self._window = window
        self._in_window = 0
        self._timer: IDelayedCall | None = None
        self._rate_check: IDelayedCall | None = None
        self._error: OriginError | None = None

    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(self._idle, self._timed_out)
        if self._min_rate:
            self._rate_check = self._clock.callLater(self._window, self._check_rate)

    def _timed_out(self) -> None:
        self._timer = None
        self.abort(OriginError(Reason.timeout, f"the origin sent nothing for {self._idle:g}s"))

    def _check_rate(self) -> None:
        self._rate_check = None
        rate = self._in_window / self._window
        if rate < self._min_rate:
            self.abort(
                OriginError(
                    Reason.too_slow,
                    f"the origin sent {rate:.0f} bytes/s over {self._window:g}s,"
                    f" under the minimum of {self._min_rate}",
                )
            )
            return
        self._in_window = 0
        self._rate_check = self._clock.callLater(self._window, self._check_rate)

    def abort(self, error: OriginError) -> None:
        self._error = error
        self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        if self._timer is not None:
            self._timer.reset(self._idle)
        self._in_window += len(data)
        try:
            self._write(data)
        except OSError as e:
            reason = _WRITE_ERRORS.get(e.errno or 0, Reason.write_error)
            self.abort(OriginError(reason, f"writing to the cache failed: {e.strerror}"))

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        for timer in (self._timer, self._rate_check):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._rate_check = None
        if self._done.called:
            # Cancelled: Deferred.cancel has already failed it.
            return
        if self._error is not None:
            self._done.errback(self._error)
        elif reason.check(ResponseDone):
            self._done.callback(None)
        elif reason.check(PotentialDataLoss):
            self._done.errback(
                OriginError(Reason.unframed, "the origin closed the body without a length to check")
            )
        else:
            self._done.errback(
                OriginError(Reason.truncated, "the origin connection broke mid-body")
            )


async def read_answer(response: Any, clock: IReactorTime, timeout: float) -> bytes:
    """
    Read the whole body of an answer to pass on, within the body deadline.

    @raise OriginError: when it breaks or stalls, or (C{http}, with its
        status) when it is over L{MAX_ANSWER_BODY}: cachetier does not
        pass on what it cannot hold.
    """
    chunks: list[bytes] = []
    size = 0

    def write(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > MAX_ANSWER_BODY:
            raise OSError(errno.EFBIG, "too large")
        chunks.append(data)

    done: Deferred[None] = Deferred()
    response.deliverBody(BodyReceiver(write, done, clock, timeout))
    try:
        await done
    except OriginError as e:
        if e.reason is not Reason.too_large:
            raise
        raise OriginError(
            Reason.http_status,
            f"the origin answered {response.code} with a body over {MAX_ANSWER_BODY} bytes",
            response.code,
        ) from None
    return b"".join(chunks)


class _Collect(Protocol):
    """
    Keeps the first C{limit} bytes of a body.
    """

    def __init__(self, chunks: list[bytes], done: Deferred[None], limit: int) -> None:
        self.chunks = chunks
        self.done = done
        self.left = limit

    def dataReceived(self, data: bytes) -> None:
        if self.left > 0:
            self.chunks.append(data[: self.left])
            self.left -= len(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if not self.done.called:
            self.done.callback(None)


class _Abandon(Protocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()


async def read_body(response: Any, keep: int, clock: IReactorTime, timeout: float) -> bytes:
    """
    Read an error body to its end (so its connection goes back to the
    pool, or is closed, before the sync reports the error), keeping its
    first C{keep} bytes; give up on it after C{timeout} seconds.
    """
    chunks: list[bytes] = []
    done: Deferred[None] = Deferred()
    response.deliverBody(_Collect(chunks, done, keep))
    done.addTimeout(timeout, clock)
    try:
        await done
    except Exception:
        pass
    return b"".join(chunks)


def abandon(response: Any) -> None:
    """
    Give up on a response's body without reading it: its connection is
    closed, not left waiting for a reader.
    """
    response.deliverBody(_Abandon())


class ReadResponse:
    """
    A response whose body has been read to its end already (to look into
    it): its status and headers as they were; reading its body again
    gives the C{body} that was kept, at once.
    """

    def __init__(self, response: Any, body: bytes = b"") -> None:
        self._response = response
        self._body = body

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def deliverBody(self, protocol: IProtocol) -> None:
        protocol.makeConnection(_Ended())
        if self._body:
            protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(ResponseDone()))


@implementer(IPushProducer)
class _Ended:
    """
    The transport of a body read already: nothing to pause or stop.
    """

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass
