"""
A L{Fill}: the one in-flight download of one name, as its readers see it.

Readers follow it while it runs: each holds a reference to the temp file's
one shared descriptor and reads with C{pread} as bytes land, so the first
byte goes out as soon as the origin sends it, readers go at their own
pace, joining costs no descriptor, and a publish (a rename) or a failure
(an unlink) never pulls the file from under a reader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred

from ..errors import OriginError, Reason
from ..objects import HASHERS, ObjectHeaders, StoredObject
from ..origin import OriginResponse
from ..store import Handle
from .coverage import Coverage

# Request headers, as sent to the origin.
Headers = tuple[tuple[bytes, bytes], ...]

T = TypeVar("T")


class Follower(Protocol):
    """
    A reader of a L{Fill} while it runs.

    @ivar position: the offset of the next byte it reads, which an
        out-of-order fill makes sure is on its way.
    """

    position: int

    def fill_progressed(self) -> None:
        """
        The fill has more bytes on disk, or has ended (see L{Fill.state}).
        """


class Fill:
    """
    One in-flight download of C{name}.

    @ivar state: C{queued}, C{fetching}, C{publishing}, C{done} or C{failed}.
    @ivar coverage: which bytes are on disk: one run from 0 for a download
        read in order, several when origin Range requests fill it out of
        order (see L{cachetier.sync.sparse}).
    @ivar length: the Content-Length the origin promised, if any.
    @ivar headers: what the origin said about the body, once it answered.
    @ivar answered_at: when the origin's answer came (by the download's
        clock), so that a reader joining later is told its age then.
    @ivar error: why the fill failed (an L{OriginAnswer} or
        L{OriginError}), once it has.
    @ivar revalidating: the cached object this download may replace; the
        origin is asked whether it changed.
    @ivar used_at: when a request last asked for it (its recency, once
        published).
    @ivar forwarded: the listener's request headers this fill sends to the
        origin (C{--forward-request-header}).
    @ivar publish: whether the body goes into the cache when complete;
        cleared by a purge or an origin C{no-store}, in which case readers
        still get every byte and nothing is kept.
    @ivar joinable: whether a request may still follow it (see
        L{body_received}).
    @ivar sparse: whether its body is the name's partial file (see
        L{cachetier.store.CacheStore.open_partial}).
    """

    def __init__(self, name: str, used_at: float, revalidating: StoredObject | None = None) -> None:
        self.name = name
        self.used_at = used_at
        self.revalidating = revalidating
        self.forwarded: Headers = ()
        self.publish = True
        self.joinable = True
        self.sparse = False
        self.state = "queued"
        # Stops what the fill waits on from the queue or the origin, while
        # it waits on one of them (never its disk work, which runs in
        # threads and must finish): set by the syncer and the download.
        self.interrupt: Callable[[], object] | None = None
        # Purged: every wait on the queue or the origin from now on is
        # interrupted at once (a purge may land during disk work).
        self.purged = False
        self.coverage = Coverage()
        self.length: int | None = None
        self.headers: ObjectHeaders | None = None
        self.answered_at: float | None = None
        self.error: Exception | None = None
        self.stored: StoredObject | None = None
        self._handle: Handle | None = None
        self._write: Callable[[int, bytes, int], None] | None = None
        self._hasher: Any = None
        # Bytes hashed so far, in order; a write elsewhere stops the running
        # hash, and the finished file is hashed instead (see verify).
        self._hashed = 0
        self._expected: tuple[str, bytes] | None = None
        # Called with a position a reader waits for (a sparse fill fetches
        # it); None: readers wait for the download to get there.
        self.on_need: Callable[[int], None] | None = None
        self._start_waiters: list[Deferred[Fill]] = []
        self._done_waiters: list[Deferred[StoredObject | None]] = []
        self._followers: set[Follower] = set()
        self._waiting: set[Follower] = set()

    # --- for readers -----------------------------------------------------

    @property
    def leaves_nothing(self) -> bool:
        """
        Whether the name's next fill need not wait for this one to end: it
        keeps nothing (not to be published, nor purged with disk work to
        undo) and uses no file of the name's (an in-order temp file).
        """
        return not (self.publish or self.purged or self.sparse)

    @property
    def readable(self) -> bool:
        """
        Whether readers can still open this fill's bytes.
        """
        return self._handle is not None

    @property
    def written(self) -> int:
        """
        Bytes on disk so far.
        """
        return self.coverage.total

    @property
    def followers(self) -> set[Follower]:
        return self._followers

    def readable_until(self, position: int) -> int:
        """
        Where the bytes readers may have now, from C{position} on, end: the
        covered run holding it, except that while a checksum is pending the
        last byte is held back, so no reader can take a body that fails
        its check for a whole one.
        """
        end = self.coverage.until(position)
        if self._expected is None or self.state == "done":
            return end
        last = self.coverage.until(0) if self.length is None else self.length
        return max(position, min(end, last - 1))

    def need(self, position: int) -> None:
        """
        A reader waits for the byte at C{position}.
        """
        if self.on_need is not None and self.state == "fetching":
            self.on_need(position)

    def when_started(self) -> Deferred[Fill]:
        """
        Fires with this fill once the origin's headers are in (or the fill
        ended without a body to follow), or fails with the fill's error.
        """
        if self.state != "queued":
            return self._settled(self, self.error is None)
        d: Deferred[Fill] = Deferred()
        self._start_waiters.append(d)
        return d

    def when_done(self) -> Deferred[StoredObject | None]:
        """
        Fires with the published object (L{None} if nothing was kept), or
        fails with the fill's error.
        """
        if self.state in ("done", "failed"):
            return self._settled(self.stored, self.state == "done")
        d: Deferred[StoredObject | None] = Deferred()
        self._done_waiters.append(d)
        return d

    def _settled(self, value: T, ok: bool) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        if ok:
            d.callback(value)
        else:
            assert self.error is not None
            d.errback(self.error)
        return d

    def follow(self, follower: Follower) -> Handle:
        """
        Start following: returns a handle on the body that stays valid after
        the fill ends, which the follower must release.
        """
        assert self._handle is not None, "followed before it began"
        self._followers.add(follower)
        return self._handle.retain()

    def unfollow(self, follower: Follower) -> None:
        self._followers.discard(follower)
        self._waiting.discard(follower)

    def wait(self, follower: Follower) -> None:
        """
        Call C{follower.fill_progressed} once when more bytes arrive or the
        fill ends.
        """
        self._waiting.add(follower)

    # --- for the syncer --------------------------------------------------

    def begin(
        self, response: OriginResponse, handle: Handle, write: Callable[[int, bytes, int], None]
    ) -> None:
        """
        The origin's answer is in and its body goes to C{handle}'s file; the
        fill holds its own reference to the handle until L{close}.
        """
        self.state = "fetching"
        self.length = response.length
        self.headers = response.headers
        self._handle = handle.retain()
        self._write = write
        self._expected = response.checksum
        if response.checksum is not None:
            self._hasher = HASHERS[response.checksum[0]]()
        for d in self._take(self._start_waiters):
            d.callback(self)

    def body_received(self, reusable: bool) -> None:
        """
        The whole answer is in.  Unless it may be C{reusable} without
        revalidation (it is kept, and fresh), the fill takes no new
        request: one that comes now must not get it unrevalidated (RFC 9111
        section 4.2.4), while its publish may still take a while.
        """
        self.joinable = reusable

    def write(self, data: bytes) -> None:
        """
        Append a chunk after the bytes read in order so far.
        """
        self.write_at(self.coverage.until(0), data)

    def write_at(self, offset: int, data: bytes) -> None:
        """
        Write a chunk at C{offset} of the temp file and wake the readers
        waiting for bytes.
        """
        assert self._write is not None and self._handle is not None
        self._write(self._handle.fd, data, offset)
        if self._hasher is not None:
            if offset == self._hashed:
                self._hasher.update(data)
                self._hashed += len(data)
            else:
                self._hasher = None  # out of order: hash the file at the end
        self.coverage.add(offset, offset + len(data))
        waiting, self._waiting = self._waiting, set()
        for follower in waiting:
            follower.fill_progressed()

    def check_complete(self) -> None:
        """
        @raise OriginError: when the body is shorter or longer than promised,
            or does not match the origin's MD5.
        """
        if self.length is not None and self.written != self.length:
            raise OriginError(
                Reason.truncated,
                f"the origin promised {self.length} bytes and sent {self.written}",
            )
        if self._expected is not None and self._hasher is not None:
            self.check_digest(self._hasher.digest())

    @property
    def needs_file_hash(self) -> bool:
        """
        Whether a checksum is due but the body came out of order: the
        finished file must be hashed (in a thread) and given to
        L{check_digest}.
        """
        return self._expected is not None and self._hasher is None

    def new_hasher(self) -> Any:
        assert self._expected is not None
        return HASHERS[self._expected[0]]()

    def check_digest(self, digest: bytes) -> None:
        """
        @raise OriginError: when C{digest} is not the origin's.
        """
        assert self._expected is not None
        algorithm, expected = self._expected
        if digest != expected:
            raise OriginError(
                Reason.checksum, f"the body does not match the origin's {algorithm.upper()}"
            )

    def close(self) -> None:
        """
        Drop the fill's own reference to the body; followers keep theirs.
        """
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.release()

    def finish(self, stored: StoredObject | None) -> None:
        self.state = "done"
        self.stored = stored
        self._end()
        for d in self._take(self._start_waiters):
            d.callback(self)
        for d in self._take(self._done_waiters):
            d.callback(stored)

    def fail(self, error: Exception) -> None:
        self.state = "failed"
        self.error = error
        self._end()
        for waiters in (self._start_waiters, self._done_waiters):
            for d in self._take(waiters):
                d.errback(error)

    def _end(self) -> None:
        self._waiting.clear()
        for follower in list(self._followers):
            follower.fill_progressed()

    @staticmethod
    def _take(waiters: list[Deferred[T]]) -> list[Deferred[T]]:
        # A waiter whose request went away was cancelled: skip it.
        taken = [d for d in waiters if not d.called]
        waiters.clear()
        return taken
