"""
The bus: this node's side of the cluster's purge log.  A purge taken here
goes into the log before it is answered; every entry of the log is
applied here, in order, as a purge sent here would be; and while the log
is not heard from, nothing cached is served without asking its upstream.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from ..config import Settings
from ..names import split_variant
from ..sync import Syncer
from .connection import TIMEOUT, connect, prefix
from .follower import BLOCK_MS, Follower
from .log import REDIS_ERRORS, Entry, PurgeLog, Snapshot, stream_id

log = Logger()

# How often the bus judges whether it hears from the log.
JUDGE_EVERY = 0.25
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
    the reactor's thread pool.

    @param syncer: the syncer whose purges the log's entries are; its
        C{doubt_before} is set to infinity while the log is not heard
        from (every copy is revalidated before it is served), to the
        time of the resync after the log's epoch changed, else 0.
    @param run_in_thread: runs a blocking call in the reactor's pool.
    @ivar gens: the cluster's generation of each name purged, as far as
        this node knows (every published object records its name's).
    """

    def __init__(
        self, settings: Settings, syncer: Syncer, reactor: Any, run_in_thread: Any
    ) -> None:
        self.node = settings.node_name
        self.max_lag = settings.cluster_max_lag
        self._syncer = syncer
        self._clock = reactor
        self._run_in_thread = run_in_thread
        self.gens: dict[str, int] = {}
        self.heard_at = float("-inf")
        self.applied_at: float | None = None
        self.problem = "connecting to Redis"
        self._doubt_base = 0.0

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
        self._judging = LoopingCall(self._judge)
        self._judging.clock = reactor
        syncer.store.record_generations(self.generation_of)

    def start(self) -> None:
        self._judge()
        self._follower.start()
        self._judging.start(JUDGE_EVERY, now=False)

    def stop(self) -> Deferred[None]:
        """
        Stop following the log; fires once the reader thread has ended.
        """
        if self._judging.running:
            self._judging.stop()
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

    def generation_of(self, name: str) -> int:
        """
        The cluster's generation of C{name} (or of the name whose variant
        it is), as far as this node knows; thread-safe.
        """
        return self.gens.get(split_variant(name)[0], 0)

    def _judge(self) -> None:
        doubt = self.status()[0] != "ok"
        self._syncer.doubt_before = float("inf") if doubt else self._doubt_base

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
        self._judge()

    def _apply(self, entry: Entry) -> None:
        if entry.kind == "names":
            for name, gen in zip(entry.names, entry.gens, strict=False):
                self.gens[name] = max(gen, self.gens.get(name, 0))
            purged = sum(self._syncer.purge(name) for name in entry.names)
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

    def resync(self, snapshot: Snapshot, since: str, doubt: bool) -> None:
        """
        The log no longer reaches back to this node's position (or is
        another log): drop every copy older than the cluster's generation
        of its name, apply the prefix purges after C{since}, and with
        C{doubt} (a log that came back empty) revalidate every copy held
        before it is served again.
        """
        downloading = self._downloading()
        self.gens = dict(snapshot.gens)
        # A download whose generation the resync raised started before
        # purges never applied here: it would publish the old bytes stamped
        # with the new generation.
        dropped = sum(
            self._syncer.purge(name)
            for name, generation in downloading.items()
            if generation < self.generation_of(name)
        )
        for key in list(self._syncer.store.names()):
            stored = self._syncer.store.get(key)
            if stored is not None and stored.cluster_generation < self.generation_of(key):
                dropped += self._syncer.purge(split_variant(key)[0])
        for purged_prefix, at in snapshot.prefixes.items():
            if stream_id(at) > stream_id(since):
                dropped += len(self._syncer.purge_prefix(purged_prefix))
        if doubt:
            self._doubt_base = self._clock.seconds()
        self.problem = "catching up with the cluster's purge log"
        # Joining (no position, nothing doubted) is no news; the rest is.
        report = log.warn if since != "0-0" or doubt else log.info
        report(
            "cluster: resynced from the purge log at {id}: {count} dropped{doubt}",
            id=snapshot.last,
            count=dropped,
            doubt="; the rest is revalidated before it is served" if doubt else "",
        )

    def _downloading(self) -> dict[str, int]:
        """
        The names with a download under way, and their generations now.
        """
        names = {split_variant(fill.name)[0] for fill in self._syncer.syncs()}
        return {name: self.generation_of(name) for name in names}

    def behind(self, why: str) -> None:
        """
        The log skipped entries this node has not applied (trimmed past
        its position): until it has resynced and is level again, it is
        not level, and every hit is revalidated before it is served.
        """
        self.heard_at, self.problem = float("-inf"), why
        self._judge()

    def lost(self, why: str) -> None:
        self.problem = why
        self._judge()

    # --- purges taken here -------------------------------------------------

    async def purge(self, names: list[str] | None = None, purge_prefix: str = "") -> str:
        """
        Put a purge of C{names}, or of C{purge_prefix}, into the log; its
        entry's id, once Redis has it.

        @raise ClusterUnavailable: when Redis does not take it.
        """
        try:
            return str(await self._run_in_thread(self._log.append, self.node, names, purge_prefix))
        except REDIS_ERRORS as e:
            raise ClusterUnavailable(
                "the purge could not be put into the cluster's log (Redis is unreachable:"
                f" {type(e).__name__}): only this node purged; send it again"
            ) from None

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
                    f" applied it cannot be told (Redis is unreachable: {type(e).__name__})"
                ) from None
            if not pending or self._clock.seconds() >= deadline:
                return applied, pending
            await deferLater(self._clock, WAIT_EVERY, lambda: None)
