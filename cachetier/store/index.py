"""
What is cached: the in-memory index of published objects, in least
recently used order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

from ..objects import StoredObject


class Index:
    """
    Published objects by name, least recently used first, with the bytes
    they hold.  Every lookup is a dictionary access: a hit never touches
    the disk.
    """

    def __init__(self) -> None:
        # Least recently used first, kept sorted by _last_used.
        self._objects: OrderedDict[str, StoredObject] = OrderedDict()
        self._last_used: dict[str, float] = {}
        self.total_bytes = 0

    def load(self, objects: Iterable[StoredObject]) -> None:
        """
        Fill an empty index from what recovery found.  Without access times
        from before the restart, the oldest fetch is the first to go.
        """
        for obj in sorted(objects, key=lambda o: o.fetched_at):
            self._objects[obj.name] = obj
            self._last_used[obj.name] = obj.fetched_at
            self.total_bytes += obj.size

    def get(self, name: str) -> StoredObject | None:
        return self._objects.get(name)

    def used(self) -> Iterator[tuple[float, str]]:
        """
        When each object was last used, and its name, least recent first.
        """
        return ((self._last_used[name], name) for name in self._objects)

    def touch(self, name: str, now: float) -> None:
        """
        Mark C{name} as used at C{now}, the latest use so far.
        """
        if name in self._objects:
            self._objects.move_to_end(name)
            self._last_used[name] = now

    def put(self, obj: StoredObject, used_at: float | None, now: float) -> StoredObject | None:
        """
        Make C{obj} the current version of its name.

        @param used_at: when it was last asked for; by default the time of
            the version it replaces, or C{now}.
        @return: the version it replaces, if any.
        """
        old = self._objects.pop(obj.name, None)
        if used_at is None:
            used_at = self._last_used.get(obj.name, now)
        self._objects[obj.name] = obj
        self._last_used[obj.name] = used_at
        # Keep the order sorted: whatever was used since goes after it.
        later = []
        for name in reversed(self._objects):
            if name != obj.name:
                if self._last_used[name] <= used_at:
                    break
                later.append(name)
        for name in reversed(later):
            self._objects.move_to_end(name)
        self.total_bytes += obj.size
        if old is not None:
            self.total_bytes -= old.size
        return old

    def pop(self, name: str) -> StoredObject | None:
        obj = self._objects.pop(name, None)
        if obj is not None:
            del self._last_used[name]
            self.total_bytes -= obj.size
        return obj

    def __iter__(self) -> Iterator[str]:
        """
        The names, least recently used first.
        """
        return iter(list(self._objects))

    def __len__(self) -> int:
        return len(self._objects)
