"""
A sparse fill's progress record: what of its body is on disk, saved (after
an fsync, in a thread) every second and every 1% of the object, so that a
restart resumes instead of starting over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..objects import Partial
from .fill import Fill

log = Logger()


class Saver:
    """
    Records a sparse fill's coverage (see L{CacheStore.save_partial}), one
    save at a time, in a thread.
    """

    def __init__(
        self,
        run_in_thread: Callable[..., Deferred[Any]],
        save: Any,
        fd: int,
        record: Partial,
        fill: Fill,
    ) -> None:
        self._run_in_thread = run_in_thread
        self._save = save
        self._fd = fd
        self._record = record
        self._fill = fill
        self._busy = False
        self._current: Deferred[None] | None = None
        self._saved = fill.written
        # Progress worth a record: 1% of the object (at most 8 MiB), so a
        # crash costs at most that much again, plus what was in flight.
        self._every = max(256 << 10, min(8 << 20, record.length // 100))

    def progressed(self) -> None:
        if self._fill.written - self._saved >= self._every:
            self.start()

    def start(self) -> None:
        """
        Save now, in the background, unless a save is under way.
        """
        if not self._busy:
            self._current = Deferred.fromCoroutine(self.save())

    async def idle(self) -> None:
        """
        Wait for a save in progress, if any.
        """
        current, self._current = self._current, None
        if current is not None and not current.called:
            await current

    async def save(self) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            self._saved = self._fill.written
            record = evolve(self._record, intervals=tuple(self._fill.coverage.intervals))
            await self._run_in_thread(self._save, self._fd, record)
        except OSError as e:
            log.warn("could not record the progress of {name}: {why}", name=self._fill.name, why=e)
        finally:
            self._busy = False
