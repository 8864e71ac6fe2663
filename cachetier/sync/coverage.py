"""
L{Coverage}: which bytes of a file being filled are on disk.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right


class Coverage:
    """
    Sorted, disjoint, non-adjacent byte intervals C{[start, end)}.
    """

    def __init__(self, intervals: list[tuple[int, int]] | None = None) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.total = 0
        for start, end in intervals or []:
            self.add(start, end)

    @property
    def intervals(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def add(self, start: int, end: int) -> None:
        """
        Mark C{[start, end)} as on disk, merging with what it touches.
        """
        if end <= start:
            return
        # Every interval that overlaps or touches [start, end).
        lo = bisect_left(self._ends, start)
        hi = bisect_right(self._starts, end)
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
            self.total -= sum(self._ends[i] - self._starts[i] for i in range(lo, hi))
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]
        self.total += end - start

    def until(self, position: int) -> int:
        """
        The end of the covered run that holds C{position}; C{position}
        itself when that byte is not covered.
        """
        i = bisect_right(self._starts, position) - 1
        if i >= 0 and self._ends[i] > position:
            return self._ends[i]
        return position

    def next_covered(self, position: int, length: int) -> int:
        """
        Where the first covered run at or after C{position} starts
        (C{length} if none does).
        """
        i = bisect_left(self._starts, position)
        return self._starts[i] if i < len(self._starts) else length

    def gaps(self, length: int) -> list[tuple[int, int]]:
        """
        The uncovered intervals of C{[0, length)}, in order.
        """
        found, position = [], 0
        for start, end in zip(self._starts, self._ends, strict=True):
            if start > position:
                found.append((position, min(start, length)))
            position = max(position, end)
        if position < length:
            found.append((position, length))
        return found

    def complete(self, length: int) -> bool:
        return self.until(0) >= length
