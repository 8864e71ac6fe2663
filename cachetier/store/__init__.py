"""
The cache store: complete objects on local disk, indexed in memory.

L{layout} owns the files (atomic publish, recovery), L{index} what is
cached and in which order it was used, L{quota} reservations and eviction,
L{handles} the shared descriptors of open bodies; L{CacheStore} puts them
together for the rest of the server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from .generation import Generation
from .handles import Handle, Handles
from .index import Index
from .layout import Layout, ObjectHeaders, Partial, StoredObject, unlink
from .quota import META_BYTES, Quota, Reservation

__all__ = [
    "META_BYTES",
    "GENERATION_FILE",
    "CacheStore",
    "Generation",
    "Handle",
    "ObjectHeaders",
    "Partial",
    "Reservation",
    "StoredObject",
]

log = Logger()

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
    @param fsync: L{os.fsync}, or a stand-in that fails on demand (tests).
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
    ) -> None:
        self._now = now
        self.layout = Layout(root, now, open_file, fsync)
        self.root = self.layout.root
        self._index = Index()
        self.handles = Handles(open_file)
        self.quota = Quota(
            self.root, self._index, self._evict, self.handles.is_open, max_size, min_free
        )
        self._on_evict = on_evict
        self.generation: Generation | None = None
        # The layout's file operations, as the store's own.
        self.new_temp = self.layout.new_temp
        self.write = self.layout.write
        self.discard_temp = self.layout.discard_temp
        self.data_path = self.layout.data_path
        self.commit = self.layout.commit
        self.renewed = self.layout.renewed
        self.write_meta = self.layout.write_meta
        self.read = self.layout.read

    @classmethod
    def open(cls, root: str, **kwargs: Any) -> CacheStore:
        """
        Create the directories if needed, recover from any crash and load the
        index.
        """
        store = cls(root, **kwargs)
        store.layout.create()
        store.generation = Generation(os.path.join(store.root, GENERATION_FILE))
        store._index.load(store.layout.recover())
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
        obj = self.layout.read(name)
        return None if obj is None else (obj.path, obj.size)

    @property
    def total_bytes(self) -> int:
        return self._index.total_bytes

    # --- capacity --------------------------------------------------------

    @property
    def max_size(self) -> int | None:
        return self.quota.max_size

    @max_size.setter
    def max_size(self, value: int | None) -> None:
        self.quota.max_size = value

    @property
    def min_free(self) -> int:
        return self.quota.min_free

    @property
    def reserved(self) -> int:
        return self.quota.reserved

    def free_bytes(self) -> int:
        return self.quota.free_bytes()

    def reserve(self, size: int, keep: str | None = None) -> Reservation | None:
        """
        Set aside C{size} bytes for a download (see L{Quota.reserve}).
        """
        return self.quota.reserve(size, keep)

    def _evict(self, name: str) -> StoredObject | None:
        obj = self.remove(name)
        if obj is not None and self._on_evict is not None:
            self._on_evict(obj)
        return obj

    # --- publishing ------------------------------------------------------

    def install(self, obj: StoredObject, used_at: float | None = None) -> None:
        """
        Make a committed object visible, retiring the version it replaces.

        @param used_at: when it was last asked for; a download's object was
            asked for when the download started, not when it was published.
            By default: the time of the version it replaces, or now.
        """
        old = self._index.put(obj, used_at, self._now())
        if old is not None and old.path != obj.path:
            unlink(old.path)
            self._retired()

    def remove(self, name: str, durable: bool = False) -> StoredObject | None:
        """
        Forget C{name} and delete its files.  Readers with the body open
        finish reading it.

        @param durable: whether the deletion must survive a power cut before
            this returns (see L{Layout.delete}); every process stops serving
            the object even when that fails.
        """
        obj = self._index.pop(name)
        if obj is not None:
            try:
                self.layout.delete(obj, durable)
            finally:
                self._retired()
        return obj

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
