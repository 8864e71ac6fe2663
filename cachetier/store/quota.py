"""
Capacity: reservations for downloads in progress, eviction to make room,
and the file system's free space.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from twisted.logger import Logger

from .index import Index
from .layout import StoredObject

log = Logger()

# What each object's metadata file costs against the quota: one block.
META_BYTES = 4096


class Quota:
    """
    Published bytes plus the space reserved by downloads in progress never
    exceed C{max_size}, and reserving never leaves less than C{min_free}
    bytes free on the file system.  Making room evicts the least recently
    used objects; their readers finish, since an unlinked file stays
    readable through open descriptors.

    @param evict: removes one object by name, returning it.
    """

    def __init__(
        self,
        root: str,
        index: Index,
        evict: Callable[[str], StoredObject | None],
        max_size: int | None = None,
        min_free: int = 0,
    ) -> None:
        self._root = root
        self._index = index
        self._evict = evict
        self.max_size = max_size
        self.min_free = min_free
        self.reserved = 0

    def free_bytes(self) -> int:
        st = os.statvfs(self._root)
        return st.f_bavail * st.f_frsize

    def reserve(self, size: int, keep: str | None = None) -> Reservation | None:
        """
        Set aside C{size} bytes for a download, evicting least recently used
        objects (never C{keep}) as needed.

        @return: the reservation, or L{None} if that much room cannot be
            made.
        """
        reservation = Reservation(self)
        return reservation if reservation.grow(size + META_BYTES, keep) else None

    def make_room(self, size: int, keep: str | None) -> bool:
        if self.max_size is not None and size > self.max_size:
            return False
        candidates = iter([n for n in self._index if n != keep])
        while self._over(size):
            victim = next(candidates, None)
            if victim is None:
                return False
            obj = self._evict(victim)
            if obj is not None:
                log.info("evicted {name} ({size} bytes)", name=obj.name, size=obj.size)
        return True

    def _over(self, size: int) -> bool:
        charged = self._index.total_bytes + len(self._index) * META_BYTES + self.reserved + size
        if self.max_size is not None and charged > self.max_size:
            return True
        # Reserved bytes are not on disk yet; keep room for them too.
        return self.min_free > 0 and self.free_bytes() - self.reserved - size < self.min_free


class Reservation:
    """
    Space set aside for one download, grown as it turns out bigger and
    given back when it ends.
    """

    def __init__(self, quota: Quota) -> None:
        self._quota = quota
        self.size = 0

    def grow(self, size: int, keep: str | None = None) -> bool:
        if not self._quota.make_room(size, keep):
            return False
        self._quota.reserved += size
        self.size += size
        return True

    def ensure(self, total: int) -> None:
        """
        Make sure C{total} bytes are reserved.

        @raise OSError: C{ENOSPC} when no more room can be made.
        """
        needed = total - self.size
        if needed > 0 and not (self.grow(max(needed, 1 << 20)) or self.grow(needed)):
            raise OSError(errno.ENOSPC, "the cache is full")

    def release(self) -> None:
        self._quota.reserved -= self.size
        self.size = 0
