"""
Membership: every node's heartbeat in Redis, once a second, and the list
of every node that any node can show (C{GET /api/v1/cluster}).

The keys (prefix C{P}, C{"<cluster-name>:"}): C{P node:<name>}, this
node's record as JSON, expiring C{EXPIRES_AFTER} seconds after its last
heartbeat (a node whose key is gone is gone), and C{P nodes}, a sorted set
of node names scored by the time of their last heartbeat (so that a gone
node is still listed, as gone, for a day).

redis-py blocks: every call here runs in the thread pool it is given, at
most one heartbeat at a time, so that a slow Redis never piles jobs up.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from attrs import frozen
from redis.exceptions import ResponseError
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import __version__
from ..config import Settings
from .connection import connect, prefix

log = Logger()

# Seconds a node's record outlives its last heartbeat (one a second).
EXPIRES_AFTER = 5
# A node gone for longer than this is no longer listed.
FORGET_AFTER = 86400.0
# Entries counted behind a node's position at most (more reads as this).
MAX_LAG_COUNTED = 10_000
# How often whether this node applied a purge since its last heartbeat is
# checked: one that did writes its heartbeat at once, so that a purge's
# ?wait= (which reads the heartbeats) hears of it within this long.
PROMPT_EVERY = 0.02

# Entries after a node's last applied one: how many (up to a bound) and
# the first one's ID (its time is how long the oldest unapplied purge has
# waited), counted inside Redis rather than sent over.
_BEHIND = """
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
if #entries == 0 then return {0, false} end
return {#entries, entries[1][1]}
"""


@frozen
class Identity:
    """
    What a node is to the others: its name, how they reach it, its role
    (C{edge} or C{shield}) and the version it runs.
    """

    name: str
    url: str | None
    role: str
    version: str = __version__


class Membership:
    """
    This node's heartbeat, and the cluster's node list.

    @param redis: a redis-py client (see L{connect}), with
        C{decode_responses}.
    @param key_prefix: C{"<cluster-name>:"}.
    @param report: what the heartbeat says of this node's state now,
        called on the reactor thread: C{status}, C{reason}, C{disk_used},
        C{disk_quota}, C{hit_ratio}, C{applied}, C{applied_at},
        C{lag_seconds}.
    @param run_in_thread: runs a blocking call in the thread pool; a
        Deferred of its result.
    @param clock: the reactor's C{seconds()} is Unix time.
    @param applied: the last purge log entry this node applied.
    """

    def __init__(
        self,
        redis: Any,
        key_prefix: str,
        identity: Identity,
        report: Callable[[], dict[str, Any]],
        run_in_thread: Callable[..., Deferred[Any]],
        clock: Any,
        applied: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.redis = redis
        self.prefix = key_prefix
        self.identity = identity
        self.report = report
        self._run = run_in_thread
        self._clock = clock
        self._beating: Deferred[None] | None = None
        self._failing = False
        self._viewing: list[Deferred[dict[str, Any]]] = []
        self._behind = redis.register_script(_BEHIND)
        self._applied = applied
        self._told: str | None = None
        self._prompt = LoopingCall(self._tell_applied)
        self._prompt.clock = clock

    def start(self) -> None:
        """
        Write a heartbeat as soon as this node applies a purge, besides
        the one a second (L{beat}, called by the service's flush).
        """
        self._prompt.start(PROMPT_EVERY, now=False)

    def _tell_applied(self) -> None:
        if self._applied() != self._told:
            self.beat()

    def record(self) -> dict[str, Any]:
        """
        This node's heartbeat record: the contract's fields.
        """
        return {
            "name": self.identity.name,
            "url": self.identity.url,
            "role": self.identity.role,
            "version": self.identity.version,
            **self.report(),
        }

    def beat(self) -> None:
        """
        Write this node's heartbeat, unless the last one is still being
        written (a slow Redis gets one write at a time).  A failure is
        logged when it starts and when it ends, not every second.
        """
        if self._beating is not None:
            return
        record = self.record()
        self._told = record.get("applied")
        d = self._run(self._write, json.dumps(record), self._clock.seconds())
        d.addCallbacks(self._written, self._not_written)
        self._beating = d
        d.addBoth(self._beaten)

    def _beaten(self, _: object) -> None:
        self._beating = None

    def _write(self, record: str, now: float) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.prefix}node:{self.identity.name}", record, ex=EXPIRES_AFTER)
            pipe.zadd(f"{self.prefix}nodes", {self.identity.name: now})
            pipe.execute()

    def _written(self, _: object) -> None:
        if self._failing:
            self._failing = False
            log.info("heartbeats reach the cluster again")

    def _not_written(self, failure: Any) -> None:
        if not self._failing:
            self._failing = True
            log.warn(
                "the heartbeat cannot be written ({why}); the others will see this node gone",
                why=failure.getErrorMessage() or failure.type.__name__,
            )

    def leave(self) -> Deferred[None]:
        """
        At stop: after the heartbeat in flight, remove this node's record,
        so that the others see it gone at once (it stays listed, as gone),
        then close the connection.  A failure is logged: the record expires
        by itself.
        """
        if self._prompt.running:
            self._prompt.stop()
        beating = self._beating if self._beating is not None else succeed(None)
        d: Deferred[None] = Deferred()
        beating.addBoth(lambda _: d.callback(None))
        d.addCallback(
            lambda _: self._run(self.redis.delete, f"{self.prefix}node:{self.identity.name}")
        )
        d.addErrback(lambda f: log.warn("leaving the cluster: {why}", why=f.getErrorMessage()))
        d.addCallback(lambda _: self._run(self.redis.close))
        return d

    def view(self) -> Deferred[dict[str, Any]]:
        """
        Every node of the cluster (see L{read_view}); callers that ask
        while a read is under way share it.
        """
        d: Deferred[dict[str, Any]] = Deferred()
        self._viewing.append(d)
        if len(self._viewing) == 1:
            read = self._run(self.read_view, self._clock.seconds())
            read.addBoth(self._viewed)
        return d

    def _viewed(self, result: Any) -> None:
        waiting, self._viewing = self._viewing, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def read_view(self, now: float) -> dict[str, Any]:
        """
        Every node heard from within a day (older ones are forgotten
        here): alive or gone, its last record and its lag behind the purge
        log.  Blocks.
        """
        nodes_key = f"{self.prefix}nodes"
        self.redis.zremrangebyscore(nodes_key, "-inf", now - FORGET_AFTER)
        members = sorted(self.redis.zrange(nodes_key, 0, -1, withscores=True))
        names = [name for name, _ in members]
        records = self.redis.mget([f"{self.prefix}node:{n}" for n in names]) if names else []
        stream = self._stream()
        nodes = []
        for (name, seen), raw in zip(members, records, strict=True):
            record = _parsed(raw)
            node: dict[str, Any] = {
                "name": name,
                "alive": record is not None,
                "last_seen": seen,
                "seconds_since": max(0.0, now - seen),
                "lag": None,
            }
            if record is not None:
                node.update((k, v) for k, v in record.items() if k not in node)
                node["lag"] = self._lag(record.get("applied"), stream["last_id"], now)
            nodes.append(node)
        return {
            "cluster": self.prefix[:-1],
            "node": self.identity.name,
            "stream": stream,
            "nodes": nodes,
        }

    def _stream(self) -> dict[str, Any]:
        """
        The purge log's length and last ID (none before the first purge).
        """
        key = f"{self.prefix}purges"
        if not self.redis.exists(key):
            return {"length": 0, "last_id": None}
        info = self.redis.xinfo_stream(key)
        return {"length": info["length"], "last_id": info["last-generated-id"]}

    def _lag(self, applied: Any, last_id: str | None, now: float) -> dict[str, Any]:
        """
        How far a node is behind the log: entries after its last applied
        one (at most L{MAX_LAG_COUNTED}), and seconds since the first of
        them was added.
        """
        if last_id is None or applied == last_id:
            return {"entries": 0, "seconds": 0.0}
        position = applied if isinstance(applied, str) and applied else "0-0"
        try:
            count, first = self._behind(
                keys=[f"{self.prefix}purges"], args=[position, MAX_LAG_COUNTED]
            )
        except ResponseError:
            return {"entries": None, "seconds": None}  # not a stream ID
        if not count:
            return {"entries": 0, "seconds": 0.0}
        added = int(str(first).split("-", 1)[0]) / 1000
        return {"entries": int(count), "seconds": round(max(0.0, now - added), 3)}


def _parsed(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def membership_for(
    settings: Settings,
    report: Callable[[], dict[str, Any]],
    run_in_thread: Callable[..., Deferred[Any]],
    clock: Any,
    applied: Callable[[], str | None] = lambda: None,
) -> Membership | None:
    """
    This node's membership in C{settings.cluster}, or L{None} outside a
    cluster.
    """
    if settings.cluster is None:
        return None
    identity = Identity(settings.node_name, settings.node_url, settings.role)
    return Membership(
        connect(settings), prefix(settings), identity, report, run_in_thread, clock, applied
    )
