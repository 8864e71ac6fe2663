"""
The cluster's generation of each name, as far as this node knows, and how
the tiers agree on it: an edge's requests to its shield carry the
generation the edge knows and the epoch of the log it is of
(C{CacheTier-Generation}, believed only with the cluster secret), and a
shield whose copy is older purges it first, as the purge it has not
applied yet would, so the request is a miss there too.  Generations of
different epochs (a Redis that came back empty numbers them from 1 again)
are never compared: a shield in the cluster passes over a generation of
another epoch than its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.logger import Logger

from ..names import split_variant
from ..sync import Syncer

log = Logger()


class Generations:
    """
    Name -> the cluster's generation of it, as far as this node knows: from
    the purge log's entries it applied, its last resync and, on a shield,
    its edges' requests.  Only a purged name has one (the rest are 0), so
    this holds at most what the cluster's C{gens} hash holds: one integer
    a name ever purged.  Read from any thread (a published object records
    its name's: see L{cachetier.store.CacheStore.record_generations}).

    @ivar epoch: the epoch of the log these are of, set by the bus (C{""}:
        not known yet); L{None} outside a cluster, where a shield takes
        its edges' generations whatever their epoch.
    """

    def __init__(self) -> None:
        self._known: dict[str, int] = {}
        self.epoch: str | None = None

    def of(self, name: str) -> int:
        """
        The generation of C{name}, or of the name whose variant it is.
        """
        return self._known.get(split_variant(name)[0], 0)

    def stamp(self, name: str) -> tuple[str, int]:
        """
        The epoch and generation of C{name}, as an edge sends them.
        """
        epoch, known = self.epoch, self._known
        return epoch or "", known.get(split_variant(name)[0], 0)

    def learn(self, name: str, generation: int) -> bool:
        """
        Raise C{name}'s generation to C{generation}; whether that is news.
        """
        name = split_variant(name)[0]
        if generation <= self._known.get(name, 0):
            return False
        self._known[name] = generation
        return True

    def replace(self, known: Mapping[str, int], epoch: str) -> None:
        """
        The cluster's generations as a resync of the log of C{epoch} read
        them, in place of all.
        """
        self._known, self.epoch = dict(known), epoch


def agree(generations: Generations, syncer: Syncer, name: str, epoch: str, generation: int) -> bool:
    """
    An edge asks for C{name} knowing its cluster C{generation} in the log
    of C{epoch}: when this node knew an older one, or holds a copy (of any
    variant) recorded at an older one, it purges the name first, as that
    purge's entry will; the request is then a miss, filled at the new
    generation.  A generation of another epoch than this node's says
    nothing (the edge has not resynced yet, or this node has not).

    @return: whether this node purged.
    """
    if generations.epoch is not None and epoch != generations.epoch:
        return False
    news = generations.learn(name, generation)
    copies = (syncer.store.get(key) for key in (name, *syncer.variants.keys_of(name)))
    older = any(c is not None and c.cluster_generation < generation for c in copies)
    if not (news or older):
        return False
    log.info(
        "an edge knows generation {generation} of {name}, newer than this node's: purging it",
        generation=generation,
        name=name,
    )
    syncer.purge(name)
    return True
