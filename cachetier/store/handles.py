"""
Open bodies: one descriptor per object version, shared by all its readers.

Every reader reads with explicit offsets (C{sendfile}, C{pread}), so one
descriptor serves any number of them; ten thousand listeners of one
episode hold one descriptor, not ten thousand.  A handle is closed when its
last reader releases it, and an unlinked (replaced, purged, evicted) body
stays readable until then.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..objects import StoredObject


class Handle:
    """
    One open descriptor and the count of its holders: whoever creates or
    L{retain}s it must L{release} it exactly once.
    """

    def __init__(self, fd: int, on_closed: Callable[[Handle], None] | None = None) -> None:
        self.fd = fd
        self.refs = 1
        self._on_closed = on_closed

    def retain(self) -> Handle:
        assert self.refs > 0, "retained after its last release"
        self.refs += 1
        return self

    def release(self) -> None:
        assert self.refs > 0, "released more often than held"
        self.refs -= 1
        if self.refs == 0:
            os.close(self.fd)
            self.fd = -1
            if self._on_closed is not None:
                self._on_closed(self)


class Handles:
    """
    The open bodies of published objects, by version.

    @param open_file: L{os.open}, or a stand-in that fails on demand.
    """

    def __init__(self, open_file: Callable[..., int] = os.open) -> None:
        self._open_file = open_file
        self._by_path: dict[str, Handle] = {}

    def acquire(self, obj: StoredObject) -> Handle:
        """
        A handle on C{obj}'s body; release it when done.

        @raise OSError: when the body cannot be opened: C{ENOENT} once it is
            gone, C{EMFILE} when the process is out of descriptors.
        """
        handle = self._by_path.get(obj.path)
        if handle is not None:
            return handle.retain()
        fd = self._open_file(obj.path, os.O_RDONLY | os.O_CLOEXEC)
        handle = self._by_path[obj.path] = Handle(fd, lambda h: self._closed(obj.path, h))
        return handle

    def _closed(self, path: str, handle: Handle) -> None:
        if self._by_path.get(path) is handle:
            del self._by_path[path]

    def is_open(self, obj: StoredObject) -> bool:
        """
        Whether a reader holds C{obj}'s body open: deleting it would free
        no disk space until that reader is done.
        """
        return obj.path in self._by_path

    def __len__(self) -> int:
        return len(self._by_path)
