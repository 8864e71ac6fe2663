"""
A L{Download}: one origin transfer into the cache.  It owns the space
reservation, the temp file and its descriptor, and releases each on every
way out.
"""

from __future__ import annotations

import base64
import errno
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from attrs import evolve
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..errors import OriginAnswer, OriginError, Reason
from ..metrics import Metrics
from ..objects import Partial, StoredObject
from ..origin import Origin, OriginResponse, Upstreams
from ..store import CacheStore, Handle, Reservation
from .answers import answer_lifetime, keep_answer
from .coverage import Coverage
from .fill import Fill
from .freshness import aged
from .progress import Saver
from .sparse import SLICE, SparseFill
from .versions import settled

RunInThread = Callable[..., "Deferred[Any]"]
T = TypeVar("T")

log = Logger()


class Download:
    """
    Asks the origin for C{fill}'s name and keeps what it sends: a renewed
    object (304), a new one, an answer other than the file that may be
    kept (see L{keep_answer}), or nothing (purged, or no-store).

    What it acquires, in order (a space reservation, a temp file, the
    file's descriptor) is released in reverse order on every way out, each
    by the C{finally} that covers its own acquisition.

    @param lifetime: a freshness lifetime from headers (and a 304's object).
    @param max_object_size: bigger bodies are refused (L{None}: any).
    @param negative_ttl: the heuristic lifetime of a kept 404 or 410.
    @param keeps: whether a response for a key, with these headers, may be
        kept under it (see L{Variants.keeps}).
    """

    def __init__(
        self,
        fill: Fill,
        origin: Origin | Upstreams,
        store: CacheStore,
        run_in_thread: RunInThread,
        metrics: Metrics,
        lifetime: Callable[..., float],
        max_object_size: int | None,
        clock: IReactorTime | None = None,
        fill_connections: int = 1,
        borrow: Callable[[], bool] = lambda: False,
        give_back: Callable[[], None] = lambda: None,
        negative_ttl: float = 60.0,
        keeps: Callable[[str, tuple[tuple[str, str], ...], frozenset[str]], bool] = (
            lambda key, extra, sent: True
        ),
    ) -> None:
        self._keeps = keeps
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._committed = False
        self._fill_connections = fill_connections
        self._borrow = borrow
        self._give_back = give_back
        self.fill = fill
        self._origin = origin
        self._store = store
        self._run_in_thread = run_in_thread
        self._metrics = metrics
        self._lifetime = lifetime
        self._limit = max_object_size

    async def run(self) -> StoredObject | None:
        """@return: the object now cached, or L{None} if nothing was kept."""
        name = self.fill.name
        self._metrics.origin_requests.inc()
        try:
            response, resume = await self._first_answer()
            old = self.fill.revalidating
            response = await settled(self._origin, name, response, old, self._interruptible)
            if response.not_modified and old is not None:
                if self._keeps(name, response.headers.extra, self._sent()):
                    return await self._renew(response)
                # It varies by a header forwarded: that listener's variant.
                response = await self._interruptible(self._origin.get(name))
        except OriginAnswer as answer:
            if not self._keeps(name, answer.headers.extra, self._sent()):
                self.fill.publish = False
            lifetime = answer_lifetime(answer.headers, self._lifetime, self._negative_ttl)
            return await keep_answer(self.fill, self._store, self._run_in_thread, lifetime, answer)
        if not self._keeps(name, response.headers.extra, self._sent()):
            self.fill.publish = False  # streamed to its listeners, not kept
        self.fill.answered_at = None if self._clock is None else self._clock.seconds()
        return await self._receive(response, resume)

    def _sent(self) -> frozenset[str]:
        """The names of the listener's headers this fill sent the origin."""
        return frozenset(name.decode("latin-1").lower() for name, _ in self.fill.forwarded)

    async def _receive(
        self, response: OriginResponse, resume: Partial | None
    ) -> StoredObject | None:
        """
        Take the body of a 200 (or of the 206 resuming a leftover) into a
        temp file, within the space the store can give it.
        """
        fill, store = self.fill, self._store
        name = fill.name
        length, limit = response.length, self._limit
        if limit is not None and length is not None and length > limit:
            self._origin.abandon(response)
            raise OriginError(
                Reason.too_large, f"{length} bytes is over the --max-object-size of {limit}"
            )
        # A body that could never fit is treated the same way: sent to the
        # origin, instead of failing with no_space on every request.
        largest = store.largest_object()
        if length is not None and length > largest:
            self._origin.abandon(response)
            raise OriginError(Reason.too_large, f"{length} bytes can never fit in the cache")
        if limit is None or largest < limit:
            limit = self._limit = largest
        reservation = store.reserve(length or 0, keep=name)
        if reservation is None:
            self._origin.abandon(response)
            raise OriginError(Reason.no_space, f"no room in the cache for {length} more bytes")
        try:
            # Not kept: in order, in a temp file of its own, never the
            # name's leftover (a fill after it may run meanwhile).
            sparse = resume is not None or (fill.publish and self._sparse(response))
            try:
                if sparse:
                    assert response.validator is not None
                    fill.sparse = True
                    fd, temp_path = store.open_partial(name, response.validator, resume is None)
                else:
                    fd, temp_path = store.new_temp()
            except OSError:
                self._origin.abandon(response)
                raise
            handle = Handle(fd)
            try:
                if sparse:
                    return await self._fetch_sparse(
                        response, reservation, handle, temp_path, resume
                    )
                return await self._fetch(response, reservation, handle, temp_path)
            finally:
                handle.release()
        finally:
            reservation.release()

    async def _fetch(
        self,
        response: OriginResponse,
        reservation: Reservation,
        handle: Handle,
        temp_path: str | None,
    ) -> StoredObject | None:
        fill, store, limit = self.fill, self._store, self._limit
        try:

            def write(data: bytes) -> None:
                total = fill.written + len(data)
                if limit is not None and total > limit:
                    raise OSError(errno.EFBIG, "the body is too large to cache")
                reservation.ensure(total)
                fill.write(data)
                reservation.wrote(total)
                self._metrics.origin_bytes.inc(len(data))

            if response.headers.no_store:
                fill.publish = False
            fill.begin(response, handle, store.write)
            await self._interruptible(self._origin.stream(response, write))
            return await self._publish(response, handle, temp_path)
        finally:
            if temp_path is not None and not self._committed:
                store.discard_temp(temp_path)

    async def _first_answer(self) -> tuple[OriginResponse, Partial | None]:
        """
        The origin's first answer, and the leftover of an earlier fill it
        lets us resume, if any: for a name with one, a Range request for
        its first missing bytes, naming its version with If-Range.
        """
        fill, store = self.fill, self._store
        partial = None
        if fill.revalidating is None and self._clock is not None:
            partial = store.partial(fill.name)
        if partial is None:
            return await self._interruptible(self._origin.get(fill.name, fill.revalidating)), None
        on_disk = Coverage(list(partial.intervals))
        gaps = on_disk.gaps(partial.length)
        first, end = gaps[0] if gaps else (0, partial.length)
        response: OriginResponse | None
        try:
            response = await self._interruptible(
                self._origin.get(fill.name, byte_range=(first, end - 1, partial.validator))
            )
        except OriginError as e:
            if e.reason is not Reason.changed:
                raise
            response = None
        if response is not None and (response.content_range, response.validator) == (
            (first, partial.length),
            partial.validator,
        ):
            log.info(
                "resuming {name}: {have} of {length} bytes already on disk",
                name=fill.name,
                have=on_disk.total,
                length=partial.length,
            )
            checksum = None
            if partial.checksum is not None:
                checksum = (partial.checksum[0], base64.b64decode(partial.checksum[1]))
            resumed = evolve(
                response,
                headers=partial.headers,
                length=partial.length,
                checksum=checksum,
                validator=partial.validator,
                ranges=True,
            )
            return resumed, partial
        log.info("the leftover of {name} is of another version: fetching anew", name=fill.name)
        store.discard_partial(partial)
        if response is not None and response.content_range is None:
            return response, None  # the new version, whole
        if response is not None:
            self._origin.abandon(response)
        return await self._interruptible(self._origin.get(fill.name)), None

    async def _fetch_sparse(
        self,
        response: OriginResponse,
        reservation: Reservation,
        handle: Handle,
        temp_path: str | None,
        resume: Partial | None,
    ) -> StoredObject | None:
        """
        Fill out of order (see L{SparseFill}), recording what is on disk
        every second so that a restart resumes instead of starting over.
        """
        fill, store = self.fill, self._store
        length, validator = response.length, response.validator
        assert length is not None and validator is not None and self._clock is not None
        keep = False
        if response.headers.no_store:
            fill.publish = False
        if resume is not None:
            fill.coverage = Coverage(list(resume.intervals))
        fill.begin(response, handle, store.write)
        record, start, end = self._sparse_record(response, handle, resume)
        saver = Saver(self._run_in_thread, store.save_partial, handle.fd, record, fill)
        try:
            await saver.save()
            if fill.purged:
                raise CancelledError()  # while the first record was saved
            saving = LoopingCall(saver.start)
            saving.clock = self._clock
            saving.start(1.0, now=False)
            try:
                sparse = SparseFill(
                    fill,
                    self._origin,
                    self._clock,
                    self._metrics,
                    length,
                    validator,
                    connections=self._fill_connections,
                    borrow=self._borrow,
                    give_back=self._give_back,
                    wrote=lambda: (reservation.wrote(fill.written), saver.progressed()),
                )
                await self._interruptible(sparse.run(response, start, end))
            finally:
                saving.stop()
            return await self._publish(response, handle, temp_path)
        except (OriginError, CancelledError) as e:
            reason = getattr(e, "reason", Reason.cancelled)
            keep = reason not in _NOT_RESUMABLE and fill.publish
            raise
        finally:
            await saver.idle()  # no save may outlive the descriptor
            if keep:
                # What is on disk now, for the next try.
                await saver.save()
                store.keep_partial(record)
            else:
                store.discard_partial(record, body=not self._committed)

    def _sparse_record(
        self, response: OriginResponse, handle: Handle, resume: Partial | None
    ) -> tuple[Partial, int, int]:
        """
        A sparse fill's progress record, and the region its first answer
        brings: a new body laid out at full length, or the leftover resumed.
        """
        length, validator = response.length, response.validator
        assert length is not None and validator is not None
        if resume is not None:
            assert response.content_range is not None
            start = response.content_range[0]
            return resume, start, self.fill.coverage.next_covered(start, length)
        # Laid out at full length (a sparse file: no blocks yet).
        os.ftruncate(handle.fd, length)
        checksum = None
        if response.checksum is not None:
            checksum = (response.checksum[0], base64.b64encode(response.checksum[1]).decode())
        return Partial(self.fill.name, length, validator, response.headers, checksum), 0, length

    async def _publish(
        self, response: OriginResponse, handle: Handle, temp_path: str | None
    ) -> StoredObject | None:
        """
        Check the complete body and publish it (unless purged or no-store).
        """
        fill, store = self.fill, self._store
        name = fill.name
        received = aged(response.headers, fill.answered_at, self._clock)
        fill.body_received(fill.publish and self._lifetime(received, None) > 0)
        fill.check_complete()
        if fill.needs_file_hash:
            digest = await self._run_in_thread(
                _hash_file, handle.fd, fill.new_hasher(), fill.written
            )
            fill.check_digest(digest)
        if fill.revalidating is not None:
            self._metrics.revalidations.labels(result="modified").inc()
            if response.headers.no_store:
                # The origin no longer lets it be cached.
                store.remove(name)
        if not fill.publish:
            return None
        fill.state = "publishing"
        headers = aged(response.headers, fill.answered_at, self._clock)
        stored: StoredObject = await self._run_in_thread(
            store.commit,
            name,
            handle.fd,
            temp_path,
            fill.written,
            headers,
            self._lifetime(headers, None),
        )
        self._committed = True
        store.install(stored, None if fill.revalidating else fill.used_at)
        if not fill.publish:
            # Purged while its files were being committed: as durably as the
            # purge that was answered.
            store.remove(name, durable=True)
            return None
        return stored

    async def _interruptible(self, wait: Deferred[T] | Coroutine[Any, Any, T]) -> T:
        """
        Await the queue or the origin in a way a purge may stop at once
        (L{Fill.interrupt}); nothing else of a download is ever cut short.
        """
        d = ensureDeferred(wait)
        self.fill.interrupt = d.cancel
        if self.fill.purged:
            d.cancel()  # purged while the fill was busy with its disk
        try:
            return await d
        finally:
            self.fill.interrupt = None

    def _sparse(self, response: OriginResponse) -> bool:
        """
        Whether to fill with Range requests: they are taken, the length and
        version are known, and the object is over a couple of slices or from
        a shield (the next upstream then makes good a failure of the shield).
        """
        return (
            self._clock is not None
            and response.ranges
            and response.validator is not None
            and response.length is not None
            and (response.length > 2 * SLICE or response.upstream is not None)
        )

    async def _renew(self, response: OriginResponse) -> StoredObject | None:
        """
        The origin confirmed the cached copy (a 304): make it fresh again,
        unless it was purged or replaced in the meantime.
        """
        fill, store = self.fill, self._store
        old = fill.revalidating
        assert old is not None
        self._metrics.revalidations.labels(result="not_modified").inc()
        if store.get(fill.name) != old:
            return None  # purged or replaced before the answer came
        lifetime = self._lifetime(response.headers, old)
        fill.body_received(lifetime > 0)
        renewed: StoredObject = await self._run_in_thread(
            store.renewed, old, response.headers, lifetime
        )
        current = store.get(fill.name)
        if current == old:
            store.install(renewed)
            return renewed
        # Purged or replaced while the metadata was being written: put back
        # what is true now.
        if current is None:
            await self._run_in_thread(store.delete, renewed, True)
        else:
            await self._run_in_thread(store.write_meta, current)
        return None


def _hash_file(fd: int, hasher: Any, size: int) -> bytes:
    """
    Hash the first C{size} bytes of a file (blocking: run it in a thread).
    """
    position = 0
    while position < size:
        data = os.pread(fd, min(1 << 20, size - position), position)
        if not data:
            break
        hasher.update(data)
        position += len(data)
    return bytes(hasher.digest())


# Why a sparse fill may end with its body not worth resuming.
_NOT_RESUMABLE = frozenset(
    {Reason.changed, Reason.checksum, Reason.too_large, Reason.no_space, Reason.write_error}
)
