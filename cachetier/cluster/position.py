"""
Where a node is in the cluster's purge log: the last entry it applied and
the epoch of the log it applied it from, kept fsynced in its cache
directory (C{cluster.json}), so a restart catches up from there.
"""

from __future__ import annotations

import json
import os

from attrs import frozen

FILE = "cluster.json"


@frozen
class Position:
    epoch: str
    applied: str


def load(cache_dir: str) -> Position | None:
    """
    The position kept, or L{None} for a node that never followed a log
    (or whose record cannot be read: it resyncs).
    """
    try:
        with open(os.path.join(cache_dir, FILE), encoding="utf-8") as f:
            raw = json.load(f)
        return Position(str(raw["epoch"]), str(raw["applied"]))
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
        os.write(fd, json.dumps({"epoch": position.epoch, "applied": position.applied}).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, path)
    directory = os.open(cache_dir, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
