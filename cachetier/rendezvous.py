"""
Rendezvous (highest-random-weight) hashing: the one order of nodes for a
name that the fail-open client (which node a listener asks) and an edge
(which shield it asks, L{cachetier.origin.upstreams}) both follow, so that
every edge sends a name's fills to the same shield.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def rank(nodes: Sequence[str], name: str) -> list[str]:
    """
    Rendezvous (highest-random-weight) order of C{nodes} for C{name}: each
    name has its own stable order, and adding a node only moves the names
    that now rank it first.
    """

    def weight(node: str) -> int:
        digest = hashlib.blake2b(f"{node}\0{name}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    return sorted(nodes, key=weight, reverse=True)
