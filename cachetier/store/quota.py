"""
Capacity: reservations for downloads in progress, eviction to make room,
and the file system's free space.
"""

from __future__ import annotations

import errno
import heapq
import os
from collections.abc import Callable, Iterator

from twisted.logger import Logger

from ..objects import Partial, StoredObject
from .index import Index

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

    The free space C{statvfs} reports already lacks the bytes downloads
    have written, so only what they have reserved and not yet written is
    subtracted from it.  A body still held open frees no space when it is
    deleted, so it is never evicted to keep C{min_free}.

    Leftovers of sparse fills that stopped (L{keep_leftover}) are charged
    their allocated bytes too, and are evicted with the objects, least
    recently used first.

    @param evict: removes one object by name, returning it.
    @param drop: removes one leftover.
    @param is_open: whether a reader holds an object's body open.
    @param free_bytes: the file system's free bytes (by default what
        C{statvfs} says of C{root}).
    """

    def __init__(
        self,
        root: str,
        index: Index,
        evict: Callable[[str], StoredObject | None],
        drop: Callable[[Partial], None],
        is_open: Callable[[StoredObject], bool],
        max_size: int | None = None,
        min_free: int = 0,
        free_bytes: Callable[[], int] | None = None,
    ) -> None:
        self._root = root
        self._free_bytes = free_bytes
        self._index = index
        self._evict = evict
        self._drop = drop
        # Leftovers nobody fills now, by name and version: (the record,
        # allocated bytes, when the fill stopped).
        self._leftovers: dict[tuple[str, str], tuple[Partial, int, float]] = {}
        self.leftover_bytes = 0
        self._is_open = is_open
        self.max_size = max_size
        self.min_free = min_free
        self.reserved = 0
        # Of the reserved bytes, those already written to temp files.
        self.written = 0

    def free_bytes(self) -> int:
        if self._free_bytes is not None:
            return self._free_bytes()
        st = os.statvfs(self._root)
        return st.f_bavail * st.f_frsize

    def capacity(self) -> int:
        """
        The most the cache could ever hold: C{max_size}, or the file
        system's size less C{min_free}, whichever is less.
        """
        st = os.statvfs(self._root)
        room = st.f_blocks * st.f_frsize - self.min_free
        return room if self.max_size is None else min(self.max_size, room)

    def largest_object(self) -> int:
        """
        The biggest body that could ever be cached, with its metadata.
        """
        return self.capacity() - META_BYTES

    def keep_leftover(self, partial: Partial, size: int, at: float) -> None:
        """
        Charge a sparse fill's leftover, C{size} bytes allocated, kept at
        C{at}, until it is resumed, dropped or evicted.
        """
        self.forget_leftover(partial.name, partial.validator)
        self._leftovers[(partial.name, partial.validator)] = (partial, size, at)
        self.leftover_bytes += size

    def forget_leftover(self, name: str, validator: str) -> None:
        """
        Stop charging a leftover: a fill took it over, or it is gone.
        """
        found = self._leftovers.pop((name, validator), None)
        if found is not None:
            self.leftover_bytes -= found[1]

    def leftovers_kept_before(self, when: float) -> list[Partial]:
        return [partial for partial, _, at in self._leftovers.values() if at < when]

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
        # One pass, least recently used first.  Past the quota any object
        # goes; short of free space only bodies no reader holds open, since
        # deleting an open one frees nothing yet.  Neither condition can
        # come back once it is met: eviction only lowers the charge.
        for victim in list(self._victims(keep)):
            if not self._over_quota(size):
                if not self._short_of_free(size):
                    return True
                if isinstance(victim, str) and self._open(victim):
                    continue
            if isinstance(victim, Partial):
                log.info("evicted the leftover of {name}", name=victim.name)
                self.forget_leftover(victim.name, victim.validator)
                self._drop(victim)
                continue
            obj = self._evict(victim)
            if obj is not None:
                log.info("evicted {name} ({size} bytes)", name=obj.name, size=obj.size)
        return not (self._over_quota(size) or self._short_of_free(size))

    def _victims(self, keep: str | None) -> Iterator[str | Partial]:
        """
        Objects (by name) and leftovers, least recently used first.
        """
        objects = ((at, 0, name) for at, name in self._index.used() if name != keep)
        leftovers = sorted(
            ((at, 1, partial) for partial, _, at in self._leftovers.values()),
            key=lambda entry: entry[0],
        )
        for _, _, victim in heapq.merge(objects, leftovers, key=lambda entry: entry[:2]):
            yield victim

    def _open(self, name: str) -> bool:
        obj = self._index.get(name)
        return obj is not None and self._is_open(obj)

    def _over_quota(self, size: int) -> bool:
        if self.max_size is None:
            return False
        charged = (
            self._index.total_bytes
            + len(self._index) * META_BYTES
            + self.reserved
            + self.leftover_bytes
        )
        return charged + size > self.max_size

    def _short_of_free(self, size: int) -> bool:
        if self.min_free <= 0:
            return False
        promised = self.reserved - self.written + size
        return self.free_bytes() - promised < self.min_free


class Reservation:
    """
    Space set aside for one download, grown as it turns out bigger and
    given back when it ends.
    """

    def __init__(self, quota: Quota) -> None:
        self._quota = quota
        self.size = 0
        self.written = 0

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

    def wrote(self, total: int) -> None:
        """
        C{total} of the reserved bytes are now on disk.
        """
        total = min(total, self.size)
        self._quota.written += total - self.written
        self.written = total

    def release(self) -> None:
        """
        Give the space back; safe to call more than once.
        """
        self._quota.reserved -= self.size
        self._quota.written -= self.written
        self.size = self.written = 0
