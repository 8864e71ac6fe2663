"""
L{Flights}: the fills of the names under way, at most one a name that
requests join (single flight), and those leaving: stopped by a purge, or
done with their body and not to be handed to anyone who asks from now on.
"""

from __future__ import annotations

from .fill import Fill


class Flights:
    """
    The fill each name's requests join, and the fills leaving, which wind
    down (their disk work, their files) while the name's next fill waits
    for them to end.

    A fill stops taking requests once its whole body is in, when its answer
    may not be reused without revalidation (L{Fill.joinable}): the requests
    that came during the transfer share it (they asked before that answer
    existed: collapsed forwarding), but one that comes after it was
    complete is a new request, and gets a fill of its own.
    """

    def __init__(self) -> None:
        self._joinable: dict[str, Fill] = {}
        self._leaving: dict[str, Fill] = {}

    def get(self, name: str) -> Fill | None:
        """
        The fill of C{name} a request joins now, if there is one.  One that
        no longer takes requests leaves first.
        """
        fill = self._joinable.get(name)
        if fill is not None and not fill.joinable:
            self.leave(name)
            return None
        return fill

    def newest(self, name: str) -> Fill | None:
        """
        The latest fill of C{name} under way, joinable or leaving, unless a
        purge stopped it.
        """
        fill = self._joinable.get(name) or self._leaving.get(name)
        return None if fill is None or fill.purged else fill

    def current(self, fill: Fill) -> bool:
        """
        Whether C{fill} is its name's own (what it ends with counts for
        the name): neither purged, nor followed by another.
        """
        return self._joinable.get(fill.name) is fill

    def add(self, fill: Fill) -> Fill | None:
        """
        Make C{fill} the one its name's requests join.

        @return: the fill leaving that it must wait for, if there is one.
        """
        self._joinable[fill.name] = fill
        return self._leaving.get(fill.name)

    def leave(self, name: str) -> Fill | None:
        """
        The fill requests join for C{name} stops taking them and leaves.
        """
        fill = self._joinable.pop(name, None)
        if fill is not None:
            self._leaving[name] = fill
        return fill

    def purge(self, name: str) -> bool:
        """
        Stop every fill of C{name}: whatever it waits on from the queue or
        the origin is interrupted, and nothing of it is published.  Its
        readers get what they had; the name's next fill waits for it.

        @return: whether there was one to stop.
        """
        fills = (self._joinable.get(name), self._leaving.get(name))
        stopped = [f for f in fills if f is not None and not f.purged]
        for fill in stopped:
            fill.publish = False
            fill.purged = True
            if fill.interrupt is not None:
                fill.interrupt()
        self.leave(name)
        return bool(stopped)

    def names(self) -> set[str]:
        return set(self._joinable) | set(self._leaving)

    def under_way(self) -> list[Fill]:
        """
        The fills under way or queued that no purge stopped.
        """
        leaving = [f for f in self._leaving.values() if not f.purged]
        return list(self._joinable.values()) + leaving

    def forget(self, fill: Fill) -> None:
        """
        C{fill} has ended.
        """
        for fills in (self._joinable, self._leaving):
            if fills.get(fill.name) is fill:
                del fills[fill.name]
