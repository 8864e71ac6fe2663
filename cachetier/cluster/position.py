"""
Where a node is in the cluster's purge log: the last entry it applied, the
epoch of the log it applied it from, and since when it doubts its copies,
kept fsynced in its cache directory (C{cluster.json}), so a restart
catches up from there, doubting what it doubted.
"""

from __future__ import annotations

import json
import os

from attrs import frozen

FILE = "cluster.json"


@frozen
class Position:
    """
    @ivar doubt: copies fetched before this time (the reactor's seconds)
        are revalidated before they are served: set when the node found
        the log emptied, whose lost purges it cannot know (0: none).
    """

    epoch: str
    applied: str
    doubt: float = 0.0


def load(cache_dir: str) -> Position | None:
    """
    The position kept, or L{None} for a node that never followed a log
    (or whose record cannot be read: it resyncs).
    """
    try:
        with open(os.path.join(cache_dir, FILE), encoding="utf-8") as f:
            raw = json.load(f)
        return Position(str(raw["epoch"]), str(raw["applied"]), float(raw.get("doubt", 0.0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(cache_dir: str, position: Position) -> None:
    """
    Replace the position kept, durably (a temp file fsynced, renamed, the
    directory fsynced).  Blocking.
    """
    path = os.path.join(cache_dir, FILE)
    temp = path + ".tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        record = {"epoch": position.epoch, "applied": position.applied, "doubt": position.doubt}
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, path)
    directory = os.open(cache_dir, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
