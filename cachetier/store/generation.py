"""
The store's generation: a counter every process maps, so a worker learns
of purges, replacements and evictions on its next hit, with no message
and no round trip.

The primary bumps it after any version stops being current, before the
call that did it returns; a worker compares it on each hit with the value
its caches were filled under, and drops them when it moved.  Reading it
is one memory load: the counter is an 8-byte word in a shared mapping of
a file in the cache directory, written only by the primary.
"""

from __future__ import annotations

import mmap
import os
import struct

_WORD = struct.Struct("<Q")


class Generation:
    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < _WORD.size:
                os.ftruncate(fd, _WORD.size)
            self._map = mmap.mmap(fd, _WORD.size)
        finally:
            os.close(fd)

    @property
    def value(self) -> int:
        return int(_WORD.unpack_from(self._map)[0])

    def bump(self) -> None:
        _WORD.pack_into(self._map, 0, self.value + 1)

    def close(self) -> None:
        self._map.close()
