"""
The cache store: complete objects on local disk, indexed in memory.

L{layout} owns the files (atomic publish, recovery), L{index} what is
cached and in which order it was used, L{quota} reservations and eviction,
L{handles} the shared descriptors of open bodies; L{CacheStore} puts them
together and is the rest of the server's only way to them: nothing outside
this package reaches a layout or a quota.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..objects import ObjectHeaders, Partial, StoredObject
from .generation import Generation
from .handles import Handle, Handles
from .index import Index
from .layout import PARTIAL_MAX_AGE, Layout, unlink
from .quota import META_BYTES, Quota, Reservation

__all__ = [
    "BIG_BODY",
    "META_BYTES",
    "GENERATION_FILE",
    "CacheStore",
    "Generation",
    "Handle",
    "Reservation",
]

log = Logger()

# Bodies from this size up are unlinked in a thread: on ext4 and XFS an
# unlink takes time in proportion to a file's extents, seconds for gigabytes.
BIG_BODY = 16 << 20

# The shared generation counter's file, beside tmp/ and objects/.
GENERATION_FILE = "generation"


class CacheStore:
    """
    Complete objects on local disk, indexed in memory.

    L{get} never touches the disk.  L{commit} does all the slow, blocking
    file-system work of a publish and may run in a thread; L{install} makes
    the result visible and must run in the reactor thread, as must every
    other method.

    @param on_evict: called with each object evicted to make room.
    @param now: the clock for fetch and expiry times (thread-safe: L{commit}
        reads it from a thread).
    @param open_file: L{os.open}, or a stand-in that fails on demand (tests).
    @param discard: unlinks a retired body; the service runs it in a
        thread (a multi-gigabyte unlink can take seconds).
    @param fsync: L{os.fsync}, or a stand-in that fails on demand (tests).
    @param free_bytes: the file system's free bytes, or a stand-in (tests);
        by default what C{statvfs} says of C{root}.
    """

    def __init__(
        self,
        root: str,
        max_size: int | None = None,
        min_free: int = 0,
        on_evict: Callable[[StoredObject], None] | None = None,
        now: Callable[[], float] = time.time,
        open_file: Callable[..., int] = os.open,
        fsync: Callable[[int], None] = os.fsync,
        free_bytes: Callable[[], int] | None = None,
        discard: Callable[[str], object] = unlink,
    ) -> None:
        self._now = now
        self._discard = discard
        self._layout = Layout(root, now, open_file, fsync)
        self.root = self._layout.root
        self._index = Index()
        self.handles = Handles(open_file)
        self._quota = Quota(
            self.root,
            self._index,
            self._evict,
            self._layout.discard_partial,
            self.handles.is_open,
            max_size,
            min_free,
            free_bytes,
        )
        self._evicted = [] if on_evict is None else [on_evict]
        self.generation: Generation | None = None

    @classmethod
    def open(cls, root: str, **kwargs: Any) -> CacheStore:
        """
        Create the directories if needed, recover from any crash and load the
        index.
        """
        store = cls(root, **kwargs)
        store._layout.create()
        store.generation = Generation(os.path.join(store.root, GENERATION_FILE))
        store._index.load(store._layout.recover())
        for partial, size, at in store._layout.leftovers():
            store._quota.keep_leftover(partial, size, at)
        log.info(
            "cache at {root}: {count} objects, {bytes} bytes",
            root=store.root,
            count=len(store),
            bytes=store.total_bytes,
        )
        return store

    # --- lookups ---------------------------------------------------------

    def get(self, name: str) -> StoredObject | None:
        return self._index.get(name)

    def used(self, obj: StoredObject) -> None:
        """
        Mark C{obj} as just served, for least-recently-used eviction.
        """
        self.touch(obj.name)

    def names(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def locate(self, name: str) -> tuple[str, int] | None:
        """
        The body's path and size of C{name} as its metadata on disk says
        (so from any process, any thread).
        """
        obj = self._layout.read(name)
        return None if obj is None else (obj.path, obj.size)

    @property
    def total_bytes(self) -> int:
        return self._index.total_bytes

    # --- capacity --------------------------------------------------------

    @property
    def max_size(self) -> int | None:
        return self._quota.max_size

    @max_size.setter
    def max_size(self, value: int | None) -> None:
        self._quota.max_size = value

    @property
    def min_free(self) -> int:
        return self._quota.min_free

    @property
    def reserved(self) -> int:
        return self._quota.reserved

    def free_bytes(self) -> int:
        return self._quota.free_bytes()

    def capacity(self) -> int:
        """
        The most the cache could ever hold (see L{Quota.capacity}).
        """
        return self._quota.capacity()

    def largest_object(self) -> int:
        """
        The biggest body that could ever be cached, with its metadata.
        """
        return self._quota.largest_object()

    def reserve(self, size: int, keep: str | None = None) -> Reservation | None:
        """
        Set aside C{size} bytes for a download (see L{Quota.reserve}).
        """
        return self._quota.reserve(size, keep)

    def writable(self) -> str | None:
        """
        Whether a download could create its temp file now: L{None}, or why
        not (see L{Layout.writable}).
        """
        return self._layout.writable()

    def _evict(self, name: str) -> StoredObject | None:
        obj = self.remove(name)
        if obj is not None:
            for observer in self._evicted:
                observer(obj)
        return obj

    def on_evict(self, observer: Callable[[StoredObject], None]) -> None:
        """
        Call C{observer} too with each object evicted to make room.
        """
        self._evicted.append(observer)

    # --- downloads (blocking file work may run in a thread) ----------------

    def new_temp(self) -> tuple[int, str]:
        """
        Create an empty temp file for a download: its read-write descriptor
        and its path.
        """
        return self._layout.new_temp()

    def write(self, fd: int, data: bytes, offset: int) -> None:
        """
        Write C{data} at C{offset} of a download's file (see L{Layout.write}).
        """
        self._layout.write(fd, data, offset)

    def discard_temp(self, path: str) -> None:
        self._layout.discard_temp(path)

    def partial(self, name: str) -> Partial | None:
        """
        What an out-of-order fill of C{name} left on disk, if anything usable.
        """
        return self._layout.partial(name)

    def open_partial(self, name: str, validator: str, fresh: bool) -> tuple[int, str]:
        """
        Open the body of an out-of-order fill of C{name}'s version
        C{validator}: the leftover one, or (C{fresh}) a new empty one.  The
        fill's reservation charges it from now on.
        """
        self._quota.forget_leftover(name, validator)
        return self._layout.open_partial(name, validator, fresh)

    def keep_partial(self, partial: Partial) -> None:
        """
        A sparse fill stopped and left C{partial} on disk for the next one:
        charge its allocated bytes against the quota until it is resumed,
        evicted, or removed after a day.
        """
        size = self._layout.allocated(partial)
        if size is not None:
            self._quota.keep_leftover(partial, size, self._now())

    def expire_partials(self) -> None:
        """
        Remove leftovers nobody resumed within a day.
        """
        for partial in self._quota.leftovers_kept_before(self._now() - PARTIAL_MAX_AGE):
            log.info("removing the leftover of {name}: a day old", name=partial.name)
            self.discard_partial(partial)

    def save_partial(self, fd: int, partial: Partial) -> None:
        """
        Record what of an out-of-order body is on disk (see
        L{Layout.save_partial}).  Blocking.
        """
        self._layout.save_partial(fd, partial)

    def discard_partial(self, partial: Partial, body: bool = True) -> None:
        """
        Forget an out-of-order fill's leftover: its record, and (C{body}) its
        body.
        """
        self._quota.forget_leftover(partial.name, partial.validator)
        self._layout.discard_partial(partial, body)

    # --- publishing ------------------------------------------------------

    def data_path(self, name: str, version: str) -> str:
        """
        Where version C{version} of C{name}'s body lives.
        """
        return self._layout.data_path(name, version)

    def commit(
        self,
        name: str,
        fd: int,
        temp_path: str,
        size: int,
        headers: ObjectHeaders,
        lifetime: float,
    ) -> StoredObject:
        """
        Make a complete temp file durable as the next version of C{name}
        (see L{Layout.commit}); blocking, and invisible until L{install}ed.
        """
        return self._layout.commit(name, fd, temp_path, size, headers, lifetime)

    def renewed(self, obj: StoredObject, headers: ObjectHeaders, lifetime: float) -> StoredObject:
        """
        Durably record that the origin confirmed C{obj} (see
        L{Layout.renewed}); blocking, and invisible until L{install}ed.
        """
        return self._layout.renewed(obj, headers, lifetime)

    def write_meta(self, obj: StoredObject) -> None:
        """
        Durably make C{obj} what its name's metadata says.  Blocking.
        """
        self._layout.write_meta(obj)

    def read(self, name: str) -> StoredObject | None:
        """
        C{name}'s object as its metadata file says now, without the index.
        """
        return self._layout.read(name)

    def delete(self, obj: StoredObject, durable: bool = False) -> None:
        """
        Delete the files of C{obj}, a version the index does not hold, and
        (C{durable}) make that survive a power cut.  Blocking: run it in a
        thread.
        """
        retired = self._layout.delete(obj)
        if retired is not None:
            unlink(retired)
        if durable:
            self._layout.sync_deletion(obj)

    def _discard_retired(self, obj: StoredObject, path: str | None) -> None:
        """
        Have a retired body unlinked: a small one at once (a few blocks, no
        slower than the rename), a big one by C{discard}, in a thread.
        Until that is done the space it will free counts as free (unless a
        reader holds it open, when it frees nothing yet), so that eviction
        for --min-free stops in time; bytes on disk may pass --max-size by
        that body for as long as its unlink takes.
        """
        if path is None:
            return
        if obj.size < BIG_BODY:
            unlink(path)
            return
        freed = 0 if self.handles.is_open(obj) else obj.size
        self._quota.discarding += freed

        def unlinked(result: object) -> object:
            self._quota.discarding -= freed
            return result

        done = self._discard(path)
        if isinstance(done, Deferred):
            done.addBoth(unlinked)
        else:
            unlinked(None)

    def install(self, obj: StoredObject, used_at: float | None = None) -> None:
        """
        Make a committed object visible, retiring the version it replaces.

        @param used_at: when it was last asked for; a download's object was
            asked for when the download started, not when it was published.
            By default: the time of the version it replaces, or now.
        """
        old = self._index.put(obj, used_at, self._now())
        if old is not None and old.path != obj.path:
            self._discard_retired(old, self._layout.retire(old.path))
            self._retired()

    def remove(self, name: str, durable: bool = False) -> StoredObject | None:
        """
        Forget C{name} and delete its files.  Readers with the body open
        finish reading it.

        @param durable: whether the deletion must survive a power cut before
            this returns (see L{Layout.sync_deletion}); every process stops
            serving the object even when that fails.
        """
        obj = self._index.pop(name)
        if obj is not None:
            try:
                self._discard_retired(obj, self._layout.delete(obj))
                if durable:
                    self._layout.sync_deletion(obj)
            finally:
                self._retired()
        return obj

    def record_generations(self, generation_of: Callable[[str], int]) -> None:
        """
        Have every object published from now on record the cluster's
        generation of its name, as C{generation_of} gives it (called from
        the threads that commit).
        """
        self._layout.generation_of = generation_of

    def touch(self, name: str) -> None:
        """
        Mark C{name} as just served (by another process).
        """
        self._index.touch(name, self._now())

    def _retired(self) -> None:
        # A version stopped being current: every process must know before
        # the call that did it returns.
        if self.generation is not None:
            self.generation.bump()
