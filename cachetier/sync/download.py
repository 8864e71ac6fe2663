"""
A L{Download}: one origin transfer into the cache.  It owns the space
reservation, the temp file and its descriptor, and releases each on every
way out.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from ..metrics import Metrics
from ..origin import Origin, OriginError
from ..store import CacheStore, ObjectHeaders, StoredObject
from .fill import Fill

RunInThread = Callable[..., "Deferred[Any]"]


class Download:
    """
    Asks the origin for C{fill}'s name and keeps what it sends: a renewed
    object (304), a new one, or nothing (purged, or no-store).

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
    ) -> None:
        self.fill = fill
        self._origin = origin
        self._store = store
        self._run_in_thread = run_in_thread
        self._metrics = metrics
        self._lifetime = lifetime
        self._limit = max_object_size

    async def run(self) -> StoredObject | None:
        """
        Releases its space reservation and temp file before it returns or
        raises.
        """
        fill, store = self.fill, self._store
        name = fill.name
        self._metrics.origin_requests.inc()
        response = await self._origin.get(name, fill.revalidating)
        if response.not_modified:
            assert fill.revalidating is not None
            renewed: StoredObject = await self._run_in_thread(
                store.renewed, fill.revalidating, self._lifetime(response.headers)
            )
            self._metrics.revalidations.labels(result="not_modified").inc()
            if store.get(name) != fill.revalidating:
                return None  # purged or replaced meanwhile
            store.install(renewed)
            return renewed
        length, limit = response.length, self._limit
        if limit is not None and length is not None and length > limit:
            self._origin.abandon(response)
            raise OriginError(
                "too_large", f"{length} bytes is over the --max-object-size of {limit}"
            )
        reservation = store.reserve(length or 0, keep=name)
        if reservation is None:
            self._origin.abandon(response)
            raise OriginError("no_space", f"no room in the cache for {length} more bytes")
        fd, temp_path = store.new_temp()
        try:

            def write(data: bytes) -> None:
                total = fill.written + len(data)
                if limit is not None and total > limit:
                    raise OSError(errno.EFBIG, "the body passed --max-object-size")
                reservation.ensure(total)
                fill.write(data)
                self._metrics.origin_bytes.inc(len(data))

            if response.headers.no_store:
                fill.publish = False
            fill.begin(response, fd, store.write)
            await self._origin.stream(response, write)
            fill.check_complete()
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
                fd,
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
            reservation.release()
            if temp_path is not None:
                store.discard_temp(temp_path)
