"""
Warm-ups: names synced ahead of their listeners, at low priority.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import DeferredSemaphore

from ..errors import Overloaded
from .fill import Fill
from .outcomes import FileStatus

# Names that may wait to be warmed.
MAX_WARM_QUEUE = 10_000


class Warming:
    """
    Warm-ups wait in a queue of their own and start only while more than a
    quarter of the download slots are free, so they never take the last
    slots listeners need.

    @param status: where a name stands, starting nothing (L{Syncer.status}).
    @param launch: starts a fill of a name.
    @param fill_for: the fill of a name under way, if any.
    @param stopping: whether the syncer is stopping (nothing starts then).
    """

    def __init__(
        self,
        status: Callable[[str], FileStatus],
        launch: Callable[[str], object],
        fill_for: Callable[[str], Fill | None],
        slots: DeferredSemaphore,
        stopping: Callable[[], bool],
    ) -> None:
        self._status = status
        self._launch = launch
        self._fill_for = fill_for
        self._slots = slots
        self._stopping = stopping
        self._order: deque[str] = deque()
        self._waiting: set[str] = set()

    def warm(self, name: str) -> str:
        """
        Sync C{name} ahead of its listeners.

        @return: where it stands: C{cached}, C{syncing}, C{queued},
            C{not_found} or C{error} (a recent failure).
        @raise Overloaded: when the warm-up queue is full.
        """
        state = self._status(name).state
        if state in ("cached", "syncing", "not_found", "error"):
            return state
        if name not in self._waiting:
            if len(self._order) >= MAX_WARM_QUEUE:
                raise Overloaded(f"the warm-up queue is full ({MAX_WARM_QUEUE} names)")
            self._order.append(name)
            self._waiting.add(name)
        self.pump()
        return "syncing" if self._fill_for(name) is not None else "queued"

    @property
    def queue(self) -> list[str]:
        return [name for name in self._order if name in self._waiting]

    def discard(self, name: str) -> None:
        """
        C{name} no longer waits: a listener or a purge took it.
        """
        self._waiting.discard(name)

    def pump(self) -> None:
        """
        Start what waits, while slots are to spare.
        """
        reserve = max(1, self._slots.limit // 4)
        while self._order and self._slots.tokens > reserve and not self._stopping():
            name = self._order.popleft()
            if name not in self._waiting:
                continue  # taken by a listener meanwhile
            self._waiting.discard(name)
            if self._status(name).state == "missing":
                self._launch(name)
