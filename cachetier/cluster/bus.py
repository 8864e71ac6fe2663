"""
The bus: this node's side of the cluster's purge log.  A purge taken here
goes into the log before it is answered; every entry of the log is
applied here, in order, as a purge sent here would be; and while the log
is not heard from, nothing cached is served without asking its upstream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ..config import Settings
from ..names import split_variant
from ..sync import Syncer
from .connection import TIMEOUT, connect, prefix, trouble
from .follower import BLOCK_MS, Follower
from .generations import Generations
from .log import REDIS_ERRORS, Entry, PurgeLog, Snapshot
from .threads import NotAnswering

log = Logger()

# How often ?wait asks which nodes have applied a purge.
WAIT_EVERY = 0.05


class ClusterUnavailable(Exception):
    """
    A purge could not be put into the cluster's log: the message says why
    (no address: it is answered to the caller).
    """


class Bus:
    """
    The cluster's purge log, followed by a L{Follower} and written from
    a thread pool for Redis calls.

    @param syncer: the syncer whose purges the log's entries are; it asks
        L{doubt_before} at every lookup.
    @param run_in_thread: runs a blocking call in the Redis calls' pool.
    @param run_purge: the same for a purge's append, or fails with
        L{NotAnswering} while that pool is full of calls Redis does not
        answer (see L{RedisThreads.run_unless_stuck}); by default
        C{run_in_thread}.
    @param generations: the cluster's generation of each name purged, as
        far as this node knows, which the bus keeps up to date (every
        published object records its name's).
    """

    def __init__(
        self,
        settings: Settings,
        syncer: Syncer,
        reactor: Any,
        run_in_thread: Any,
        generations: Generations,
        run_purge: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        self.node = settings.node_name
        self.max_lag = settings.cluster_max_lag
        self._syncer = syncer
        self._clock = reactor
        self._run_in_thread = run_in_thread
        self._run_purge = run_in_thread if run_purge is None else run_purge
        self.generations = generations
        self.heard_at = float("-inf")
        self.applied_at: float | None = None
        self.problem = "connecting to Redis"

        def make_log(client: Any) -> PurgeLog:
            return PurgeLog(client, prefix(settings), settings.cluster_stream_length)

        self._log = make_log(connect(settings))
        reader_timeout = TIMEOUT + BLOCK_MS / 1000
        self._follower = Follower(
            reactor,
            lambda: connect(settings, reader_timeout),
            make_log,
            settings.cache_dir,
            self,
        )
        where = self._follower.position
        self._doubt_base = 0.0 if where is None else where.doubt
        generations.epoch = "" if where is None else where.epoch
        syncer.doubt_before = self.doubt_before

    def start(self) -> None:
        self._follower.start()

    def stop(self) -> Deferred[None]:
        """
        Stop following the log; fires once the reader thread has ended.
        """
        d = self._follower.stop()
        d.addCallback(lambda _: self._log.client.close())
        return d

    # --- state -------------------------------------------------------------

    @property
    def applied(self) -> str | None:
        """
        The id of the last entry applied here (L{None}: none yet).
        """
        where = self._follower.position
        return None if where is None else where.applied

    def lag_seconds(self) -> float:
        """
        How long since this node was last level with the log's end.
        """
        return max(0.0, self._clock.seconds() - self.heard_at)

    def status(self) -> tuple[str, str | None]:
        """
        C{("ok", None)}, or C{("degraded", why)} while the log is not
        heard from: not yet caught up, or silent for C{--cluster-max-lag}.
        """
        lag = self.lag_seconds()
        if lag <= self.max_lag:
            return "ok", None
        if self.heard_at == float("-inf"):
            return "degraded", f"not level with the cluster's purge log yet ({self.problem})"
        return "degraded", (
            f"not level with the cluster's purge log for {lag:.0f}s"
            f" ({self.problem or 'no answer'}): every hit is revalidated"
        )

    def doubt_before(self) -> float:
        """
        Copies fetched before this time are revalidated before they are
        served: all of them (infinity) while L{status} is degraded, those
        held before a resync after the log's epoch changed, else none.
        """
        return float("inf") if self.status()[0] != "ok" else self._doubt_base

    # --- what the follower finds (on the reactor's thread) -----------------

    def received(self, entries: list[Entry], caught_up: bool) -> None:
        for entry in entries:
            self._apply(entry)
        now = self._clock.seconds()
        if entries:
            self.applied_at = now
        if caught_up:
            if self.heard_at == float("-inf") or self.problem:
                log.info("cluster: level with the purge log at {id}", id=self.applied)
            self.heard_at, self.problem = now, ""

    def _apply(self, entry: Entry) -> None:
        if entry.kind == "names":
            purged = sum(self._syncer.purge(name) for name in self._news(entry))
        elif entry.kind == "prefix":
            purged = len(self._syncer.purge_prefix(entry.prefix))
        else:
            log.warn("cluster: passing over entry {id}, not a purge", id=entry.id)
            return
        log.debug(
            "cluster: applied {id} from {node}: {count} purged here",
            id=entry.id,
            node=entry.node,
            count=purged,
        )

    def _news(self, entry: Entry) -> list[str]:
        """
        The names of C{entry} to purge: all but those whose generation this
        node knew already, which it purged when it learnt it (an edge sent
        it: see L{cachetier.cluster.generations.agree}).
        """
        gens = entry.gens + (0,) * len(entry.names)
        return [
            name
            for name, gen in zip(entry.names, gens, strict=False)
            if gen <= 0 or self.generations.learn(name, gen)
        ]

    def resync(self, snapshot: Snapshot, since: str, doubt: float) -> None:
        """
        The log no longer reaches back to this node's position (or is
        another log): drop every copy older than the cluster's generation
        of its name, apply the prefix purges after C{since}, and
        revalidate every copy fetched before C{doubt} (since a log came
        back empty: see L{Follower._resync}) before it is served again.
        """
        downloading = self._downloading()
        self.generations.replace(snapshot.gens, snapshot.epoch)
        doubted, self._doubt_base = doubt > self._doubt_base, max(self._doubt_base, doubt)
        # A download whose generation the resync raised started before
        # purges never applied here: it would publish the old bytes stamped
        # with the new generation.  Once the log came back empty, any
        # download under way may be such a one, and would be published
        # after the doubt's time, as if fetched since: it is stopped too,
        # but the copy it revalidates stays, doubted like the rest.
        dropped = sum(
            self._syncer.purge(name, copies=generation < self.generations.of(name))
            for name, generation in downloading.items()
            if doubted or generation < self.generations.of(name)
        )
        for key in list(self._syncer.store.names()):
            stored = self._syncer.store.get(key)
            if stored is not None and stored.cluster_generation < self.generations.of(key):
                dropped += self._syncer.purge(split_variant(key)[0])
        dropped += sum(self._syncer.purge(name) for name in snapshot.unreadable)
        for purged_prefix in snapshot.prefixes_after(since):
            dropped += len(self._syncer.purge_prefix(purged_prefix))
        self.problem = "catching up with the cluster's purge log"
        # Joining (no position, nothing doubted) is no news; the rest is.
        report = log.warn if since != "0-0" or doubted else log.info
        report(
            "cluster: resynced from the purge log at {id}: {count} dropped{doubt}",
            id=snapshot.last,
            count=dropped,
            doubt="; the rest is revalidated before it is served" if doubted else "",
        )

    def _downloading(self) -> dict[str, int]:
        """
        The names with a download under way, and their generations now.
        """
        names = {split_variant(fill.name)[0] for fill in self._syncer.syncs()}
        return {name: self.generations.of(name) for name in names}

    def behind(self, why: str) -> None:
        """
        The log skipped entries this node has not applied (trimmed past
        its position): until it has resynced and is level again, it is
        not level, and every hit is revalidated before it is served.
        """
        self.heard_at, self.problem = float("-inf"), why

    def lost(self, why: str) -> None:
        self.problem = why

    # --- purges taken here -------------------------------------------------

    async def purge(self, names: list[str] | None = None, purge_prefix: str = "") -> str:
        """
        Put a purge of C{names}, or of C{purge_prefix}, into the log; its
        entry's id, once Redis has it.  The names' new generations are
        known here from then on (this node's requests to its shields say
        them), and what was fetched at the old ones since this node purged
        goes too: before the purge is answered, not only once this node's
        reader applies its entry.

        @raise ClusterUnavailable: when Redis does not take it, or has not
            answered the calls already waiting (refused at once).
        """
        try:
            entry_id, gens = await self._run_purge(self._log.append, self.node, names, purge_prefix)
        except (*REDIS_ERRORS, NotAnswering) as e:
            why = "Redis is not answering" if isinstance(e, NotAnswering) else trouble(e)
            raise ClusterUnavailable(
                f"the purge could not be put into the cluster's log ({why}):"
                " only this node purged; send it again"
            ) from None
        for name in self._news(Entry(entry_id, "names", tuple(names or ()), gens=gens)):
            self._syncer.purge(name)
        return str(entry_id)

    async def wait(self, entry_id: str, seconds: float) -> tuple[list[str], list[str]]:
        """
        Wait up to C{seconds} until every live node has applied entry
        C{entry_id}: the nodes that have, and those that have not.

        @raise ClusterUnavailable: when Redis cannot say.
        """
        deadline = self._clock.seconds() + seconds
        while True:
            try:
                applied, pending = await self._run_in_thread(self._log.pending, entry_id)
            except REDIS_ERRORS as e:
                raise ClusterUnavailable(
                    f"the purge is in the cluster's log ({entry_id}), but which nodes have"
                    f" applied it cannot be told ({trouble(e)})"
                ) from None
            if not pending or self._clock.seconds() >= deadline:
                return applied, pending
            await deferLater(self._clock, WAIT_EVERY, lambda: None)
