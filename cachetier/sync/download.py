"""
A L{Download}: one origin transfer into the cache.  It owns the space
reservation, the temp file and its descriptor, and releases each on every
way out.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from ..metrics import Metrics
from ..origin import Origin, OriginError, OriginResponse
from ..store import CacheStore, Handle, ObjectHeaders, Reservation, StoredObject
from .fill import Fill
from .sparse import SLICE, SparseFill

RunInThread = Callable[..., "Deferred[Any]"]


class Download:
    """
    Asks the origin for C{fill}'s name and keeps what it sends: a renewed
    object (304), a new one, or nothing (purged, or no-store).

    What it acquires, in order (a space reservation, a temp file, the
    file's descriptor) is released in reverse order on every way out, each
    by the C{finally} that covers its own acquisition.

    @param lifetime: an object's freshness lifetime from its headers.
    @param max_object_size: bigger bodies are refused (L{None}: any).
    """

    def __init__(
        self,
        fill: Fill,
        origin: Origin,
        store: CacheStore,
        run_in_thread: RunInThread,
        metrics: Metrics,
        lifetime: Callable[[ObjectHeaders], float],
        max_object_size: int | None,
        clock: IReactorTime | None = None,
        fill_connections: int = 1,
        borrow: Callable[[], bool] = lambda: False,
        give_back: Callable[[], None] = lambda: None,
    ) -> None:
        self._clock = clock
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
        """
        @return: the object now cached, or L{None} if nothing was kept.
        """
        fill, store = self.fill, self._store
        name = fill.name
        self._metrics.origin_requests.inc()
        response = await self._origin.get(name, fill.revalidating)
        if response.not_modified:
            return await self._renew(response)
        length, limit = response.length, self._limit
        if limit is not None and length is not None and length > limit:
            self._origin.abandon(response)
            raise OriginError(
                "too_large", f"{length} bytes is over the --max-object-size of {limit}"
            )
        # A body that could never fit is treated the same way: sent to the
        # origin, instead of failing with no_space on every request.
        largest = store.quota.largest_object()
        if length is not None and length > largest:
            self._origin.abandon(response)
            raise OriginError("too_large", f"{length} bytes can never fit in the cache")
        if limit is None or largest < limit:
            limit = self._limit = largest
        reservation = store.reserve(length or 0, keep=name)
        if reservation is None:
            self._origin.abandon(response)
            raise OriginError("no_space", f"no room in the cache for {length} more bytes")
        try:
            try:
                fd, temp_path = store.new_temp()
            except OSError:
                self._origin.abandon(response)
                raise
            handle = Handle(fd)
            try:
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
        name = fill.name
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
            if self._sparse(response):
                assert response.length is not None and response.validator is not None
                assert self._clock is not None
                # Laid out at full length (a sparse file: no blocks yet).
                os.ftruncate(handle.fd, response.length)
                await SparseFill(
                    fill,
                    self._origin,
                    self._clock,
                    self._metrics,
                    response.length,
                    response.validator,
                    connections=self._fill_connections,
                    borrow=self._borrow,
                    give_back=self._give_back,
                    wrote=lambda: reservation.wrote(fill.written),
                ).run(response)
            else:
                await self._origin.stream(response, write)
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
            stored: StoredObject = await self._run_in_thread(
                store.commit,
                name,
                handle.fd,
                temp_path,
                fill.written,
                response.headers,
                self._lifetime(response.headers),
            )
            temp_path = None
            store.install(stored, None if fill.revalidating else fill.used_at)
            if not fill.publish:
                # Purged while its files were being committed.
                store.remove(name)
                return None
            return stored
        finally:
            if temp_path is not None:
                store.discard_temp(temp_path)

    def _sparse(self, response: OriginResponse) -> bool:
        """
        Whether to fill out of order with Range requests: the origin takes
        them, the length and version are known, and the object is more
        than a couple of slices.
        """
        return (
            self._clock is not None
            and response.ranges
            and response.validator is not None
            and response.length is not None
            and response.length > 2 * SLICE
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
        renewed: StoredObject = await self._run_in_thread(
            store.renewed, old, self._lifetime(response.headers), response.headers.initial_age
        )
        current = store.get(fill.name)
        if current == old:
            store.install(renewed)
            return renewed
        # Purged or replaced while the metadata was being written: put back
        # what is true now.
        if current is None:
            await self._run_in_thread(store.layout.delete, renewed)
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
    digest: bytes = hasher.digest()
    return digest
