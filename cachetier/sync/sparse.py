"""
Sparse fills: an object whose origin takes byte ranges is filled by
several origin transfers, each writing its bytes at their offsets of the
one temp file, laid out at full length:

  - the first answer (a plain GET) streams from byte 0;
  - a reader that needs bytes far ahead of every transfer (more than
    L{AHEAD} bytes, or L{AHEAD_SECONDS} at that transfer's rate) gets
    them from a Range request for a slice of L{SLICE} bytes from where it
    reads, extended by the next slice while a reader is still in it;
  - with C{connections} > 1, idle connections take the biggest
    uncovered region in turn (readers first), so a big object comes in
    over several connections at once;
  - a transfer that reaches bytes already on disk stops there, and the
    next uncovered region is fetched with a new Range request, so no byte
    is fetched twice (but what is in flight when a transfer stops).

Every Range request names the first answer's version with C{If-Range}: a
200 with another validator, or a 412, means the object changed, and the
whole fill fails (its readers are aborted) so that a new one starts.  A
200 with the same validator means the origin ignores ranges: that answer
becomes a transfer of the whole object, writing only what is missing, and
no more Range requests are made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import OriginError, Reason
from ..metrics import Metrics
from ..origin import Origin, OriginResponse, Upstreams
from .fill import Fill

log = Logger()

SLICE = 4 << 20
AHEAD = 2 << 20
AHEAD_SECONDS = 2.0
# Range requests at once for readers, per fill.
READER_TRANSFERS = 2


def _failed_over(failure: Failure) -> bool:
    """
    Whether a transfer broke because its shield did: what it did not
    write is fetched again (a Range request, with If-Range) from the next
    upstream, as any missing region is.
    """
    return isinstance(failure.value, OriginError) and failure.value.shield is not None


def _minus(a: tuple[int, int], b: tuple[int, int]) -> list[tuple[int, int]]:
    """
    C{a} less C{b}, as zero, one or two intervals.
    """
    pieces = [(a[0], min(a[1], b[0])), (max(a[0], b[1]), a[1])]
    return [(s, e) for s, e in pieces if e > s]


class _Transfer:
    """
    One origin transfer writing C{[position, end)} of the fill.  It owns
    its download slot (when it borrowed one) and its origin request, from
    the request to the end of the body, and gives both back in one place,
    L{close}, however it ends:

        ========================  ===================================  ==========
        state                     how it leaves                        next
        ========================  ===================================  ==========
        waiting for headers       answered and checked                 streaming
                                  answer refused, failed, cancelled    closed
        streaming                 body ended, failed, cancelled        closed
        closed                    (slot given back, out of the fill)   --
        ========================  ===================================  ==========

    @ivar skip: write only what is missing and never stop early (the origin
        ignored a Range request and sent the whole object).
    """

    def __init__(
        self,
        sparse: SparseFill,
        start: int,
        end: int,
        reader: bool,
        give_back: Callable[[], None] | None = None,
    ) -> None:
        self.sparse = sparse
        self.borrowed = give_back is not None
        self._give_back = give_back
        # Asked with a Range request (not the fill's first answer).
        self.ranged = False
        self.closed = False
        self.start = self.position = start
        # Where the origin's answer ends, and where this transfer stops
        # (sooner, when another took over the rest).
        self.requested_end = self.end = end
        self.reader = reader
        self.skip = False
        self.began = sparse.clock.seconds()
        self.stream: Deferred[None] | None = None
        self.stopped = False

    def rate(self) -> float:
        # Over a second at least: a connection's first burst (socket
        # buffers filling) says nothing of its pace.
        elapsed = max(1.0, self.sparse.clock.seconds() - self.began)
        return (self.position - self.start) / elapsed

    def ahead_of(self, position: int) -> bool:
        """
        Whether this transfer will reach C{position} soon enough for a
        reader to wait for it.
        """
        if not self.start <= position < self.end:
            return False
        return position - self.position <= max(AHEAD, self.rate() * AHEAD_SECONDS)

    def write(self, data: bytes) -> None:
        sparse, fill = self.sparse, self.sparse.fill
        sparse.received(len(data))
        coverage = fill.coverage
        view = memoryview(data)
        while view and self.position < self.end:
            covered = coverage.until(self.position)
            if covered > self.position:
                if not self.skip:
                    self.stop()
                    return
                skipped = min(covered - self.position, len(view))
                view, self.position = view[skipped:], self.position + skipped
                continue
            room = min(coverage.next_covered(self.position, self.end), self.end) - self.position
            chunk = view[:room]
            fill.write_at(self.position, bytes(chunk))
            view, self.position = view[len(chunk) :], self.position + len(chunk)
        if self.position >= self.end and self.end < self.requested_end and not self.skip:
            self.stop()  # the rest is another transfer's: no need to read it

    def stop(self) -> None:
        """
        Enough: the rest is on disk or on its way (or the fill is over).
        Cancelling the request ends it, and so closes the transfer.
        """
        if not self.stopped and self.stream is not None:
            self.stopped = True
            self.stream.cancel()

    def close(self) -> None:
        """
        The one way out: leave the fill and give back a borrowed slot.
        """
        if self.closed:
            return
        self.closed = True
        self.sparse.transfers.discard(self)
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()


class SparseFill:
    """
    Fills C{fill} (of C{length} bytes, version C{validator}) with as many
    origin transfers as its readers and C{connections} call for.

    @param borrow: takes one more connection from the global download
        budget if one is free (returns whether it did); C{give_back}
        returns it.
    @param wrote: called after bytes land (the space reservation's
        bookkeeping).
    """

    def __init__(
        self,
        fill: Fill,
        origin: Origin | Upstreams,
        clock: IReactorTime,
        metrics: Metrics,
        length: int,
        validator: str,
        connections: int = 1,
        borrow: Callable[[], bool] = lambda: False,
        give_back: Callable[[], None] = lambda: None,
        wrote: Callable[[], None] = lambda: None,
    ) -> None:
        self.fill = fill
        self.origin = origin
        self.clock = clock
        self.metrics = metrics
        self.length = length
        self.validator = validator
        self.connections = connections
        self._borrow = borrow
        self._give_back = give_back
        self._wrote = wrote
        # The transfers under way; each leaves in its close().
        self.transfers: set[_Transfer] = set()
        self._ranges = True
        self._error: Exception | None = None
        self.done: Deferred[None] = Deferred(lambda _: self._cancel())

    def received(self, count: int) -> None:
        self.metrics.origin_bytes.inc(count)
        self._wrote()

    def run(self, first: OriginResponse, start: int = 0, end: int | None = None) -> Deferred[None]:
        """
        Start with the first answer (a 200 streaming from byte 0, or a 206
        for C{[start, end)} when resuming); fires when every byte is on
        disk, or fails with the first error.
        """
        self.fill.on_need = self.need
        end = self.length if end is None else end
        transfer = _Transfer(self, start, end, reader=False)
        self.transfers.add(transfer)
        self._follow(transfer, self.origin.stream(first, transfer.write))
        self._schedule()
        return self.done

    # --- deciding what to fetch --------------------------------------------

    def need(self, position: int) -> None:
        """
        A reader waits at C{position}: fetch it unless a transfer gets there
        soon.
        """
        if self._error is not None or self.fill.coverage.until(position) > position:
            return
        if any(t.ahead_of(position) for t in self.transfers if not t.stopped):
            return
        readers = sum(1 for t in self.transfers if t.reader and not t.stopped)
        if self._ranges and readers < READER_TRANSFERS:
            self._fetch(position, SLICE, reader=True)

    def _schedule(self) -> None:
        """
        Keep C{connections} transfers busy on what is missing: the biggest
        region no transfer is working through, or else half of what the
        busiest transfer has left.
        """
        if self._error is not None:
            return
        if not self.transfers and self.fill.coverage.complete(self.length):
            self._finished()
            return
        if not self._ranges:
            if not any(not t.stopped for t in self.transfers):
                self._fail(
                    OriginError(Reason.truncated, "the origin stopped sending and takes no ranges")
                )
            return
        # Readers still inside a slice that ended get the next one.
        for follower in list(self.fill.followers):
            end = self.fill.coverage.until(follower.position)
            if end < self.length:
                self.need(end)
        while True:
            working = [t for t in self.transfers if not t.reader and not t.stopped]
            if len(working) >= max(1, self.connections):
                return
            region = self._next_region(split=bool(working))
            if region is None:
                return
            # The fill's own download slot, or one more borrowed.
            own_slot_busy = any(not t.borrowed for t in working)
            if own_slot_busy and not self._borrow():
                return
            start, end = region
            self._fetch(start, end - start, False, self._give_back if own_slot_busy else None)

    def _next_region(self, split: bool) -> tuple[int, int] | None:
        active = [t for t in self.transfers if not t.stopped]
        best: tuple[int, int] | None = None
        for piece in self.fill.coverage.gaps(self.length):
            pieces = [piece]
            for t in active:
                pieces = [p for q in pieces for p in _minus(q, (t.position, t.end))]
            for start, end in pieces:
                if best is None or end - start > best[1] - best[0]:
                    best = (start, end)
        if best is not None or not split:
            return best
        splittable = [t for t in active if not t.skip and t.end - t.position > 2 * SLICE]
        if not splittable:
            return None
        t = max(splittable, key=lambda t: t.end - t.position)
        middle = t.position + (t.end - t.position) // 2
        region, t.end = (middle, t.end), middle
        return region

    # --- transfers -----------------------------------------------------------

    def _fetch(
        self, start: int, size: int, reader: bool, give_back: Callable[[], None] | None = None
    ) -> _Transfer:
        end = min(start + size, self.fill.coverage.next_covered(start, self.length), self.length)
        transfer = _Transfer(self, start, end, reader, give_back)
        transfer.ranged = True
        self.transfers.add(transfer)
        d = ensureDeferred(
            self.origin.get(self.fill.name, byte_range=(start, end - 1, self.validator))
        )
        self._follow(transfer, d.addCallback(self._answered, transfer))
        return transfer

    def _follow(self, transfer: _Transfer, d: Deferred[Any]) -> None:
        """
        C{d} is C{transfer}'s whole life (its request, then its body):
        however it ends, the transfer closes, and then the fill goes on or
        fails.
        """
        transfer.stream = d
        d.addBoth(self._transfer_ended, transfer)

    def _transfer_ended(self, result: object, transfer: _Transfer) -> None:
        transfer.close()
        stopped = transfer.stopped and (
            not isinstance(result, Failure) or result.check(CancelledError, OriginError)
        )
        failed = isinstance(result, Failure) and not stopped
        if failed and not self._refused(result, transfer) and not _failed_over(result):
            self._fail(result.value)  # nothing more once the fill has failed
        else:
            self._schedule()

    def _refused(self, failure: Failure, transfer: _Transfer) -> bool:
        """
        Whether a Range request answered with an error status can be done
        without: ranges are given up and the transfer from byte 0, if it is
        still coming, goes on to the end.
        """
        error = failure.value
        if not (transfer.ranged and isinstance(error, OriginError)):
            return False
        if error.reason is not Reason.http_status or self._error is not None:
            return False
        if self._ranges:
            log.warn(
                "the origin refuses Range requests for {name} ({status}): filling it in order",
                name=self.fill.name,
                status=error.status,
            )
        if not self._in_order_only():
            self._fetch_whole()
        return True

    def _fetch_whole(self) -> None:
        """
        Ranges are refused and no transfer from byte 0 is left: ask for the
        whole object again, writing only what is missing (the bytes on
        disk come twice: the price of an origin that offers ranges and
        refuses them).
        """
        transfer = _Transfer(self, 0, self.length, reader=False)
        transfer.skip = True
        self.transfers.add(transfer)
        d = ensureDeferred(self.origin.get(self.fill.name))
        self._follow(transfer, d.addCallback(self._answered, transfer))

    def _in_order_only(self) -> bool:
        """
        No more Range requests: the transfer from byte 0, if one is still
        coming, alone goes on, to the end, past what others wrote.

        @return: whether there is one.
        """
        self._ranges = False
        in_order = [t for t in self.transfers if not t.stopped and (t.skip or t.start == 0)]
        if in_order:
            in_order[0].end, in_order[0].skip = self.length, True
        return bool(in_order)

    def _answered(self, response: OriginResponse, transfer: _Transfer) -> Deferred[None] | None:
        """
        Check an answer before a byte of it is written: a 206 for exactly
        the bytes asked, of this fill's version, or a 200 of this version
        (ranges ignored).  Anything else fails the fill as C{changed}.

        @return: the body's stream, or L{None} when it is not wanted.
        """
        if self._error is not None or transfer.stopped:
            self.origin.abandon(response)
            return None
        if response.content_range is not None:
            first, total = response.content_range
            if (first, total, response.validator) != (transfer.start, self.length, self.validator):
                self.origin.abandon(response)
                raise OriginError(
                    Reason.changed, "the origin sent another range, length or version"
                )
            return self.origin.stream(response, transfer.write)
        # A 200: the whole object.  Another version, or ranges ignored.
        if response.validator != self.validator or response.length != self.length:
            self.origin.abandon(response)
            raise OriginError(Reason.changed, "the object changed at the origin")
        if not transfer.ranged:
            return self.origin.stream(response, transfer.write)  # asked whole (_fetch_whole)
        if self._ranges:
            log.info(
                "the origin ignores Range for {name}: filling it in order", name=self.fill.name
            )
        self.transfers.discard(transfer)
        if self._in_order_only():
            self.origin.abandon(response)
            return None
        self.transfers.add(transfer)
        transfer.start = transfer.position = 0
        transfer.end = self.length
        transfer.skip = True
        return self.origin.stream(response, transfer.write)

    def _finished(self) -> None:
        self.fill.on_need = None
        if not self.done.called:
            self.done.callback(None)

    def _fail(self, error: Exception) -> None:
        if self._error is not None:
            return
        self._error = error
        self.fill.on_need = None
        for transfer in list(self.transfers):
            transfer.stop()
        if not self.done.called:
            self.done.errback(error)

    def _cancel(self) -> None:
        self._error = OriginError(Reason.cancelled, "the download was cancelled")
        self.fill.on_need = None
        for transfer in list(self.transfers):
            transfer.stop()
