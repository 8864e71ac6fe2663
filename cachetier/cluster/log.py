"""
The cluster's purge log in Redis, and every Redis command the bus sends.
Blocking: called from the bus's reader thread or the reactor's thread
pool, never from the reactor's thread.

Keys, under the prefix C{P} (C{"<cluster-name>:"}):

  - C{P epoch}: random hex, set (NX) by the first node, and by every
    append: a Redis that comes back empty has none, or another;
  - C{P purges}: the stream, one entry a purge: C{kind} (C{names} or
    C{prefix}), C{names} (a JSON list) or C{prefix}, C{node} (the node
    that took it), and for names C{gens} (their generations after it);
  - C{P gens}: name -> generation, bumped with each purge of the name in
    the same atomic step as the entry is added;
  - C{P prefixes}: prefix -> the id of its last purge; never trimmed, so
    a node whose position the stream no longer reaches still learns of
    them;
  - C{P node:<name>}: a node's heartbeat (written by membership), whose
    C{applied} field is the last entry it applied.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import redis
from attrs import frozen
from twisted.logger import Logger

# Appends a purge: the generations bumped, the entry added (the stream
# trimmed, about), the epoch set if it is missing, all or nothing.
_APPEND = """
redis.call('SET', KEYS[4], ARGV[5], 'NX')
if ARGV[2] == 'names' then
  local names = cjson.decode(ARGV[3])
  local gens = {}
  for i, name in ipairs(names) do gens[i] = redis.call('HINCRBY', KEYS[2], name, 1) end
  local encoded = cjson.encode(gens)
  return {redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'kind', 'names',
    'names', ARGV[3], 'node', ARGV[4], 'gens', encoded), encoded}
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'kind', 'prefix',
  'prefix', ARGV[3], 'node', ARGV[4])
redis.call('HSET', KEYS[3], ARGV[3], id)
return {id, '[]'}
"""

# Redis's errors the bus survives: the server gone, slow, restarting, or
# answering what it should not (a key of the wrong type).
REDIS_ERRORS = (redis.RedisError, OSError)

log = Logger()


def stream_id(text: str) -> tuple[int, int]:
    """
    A stream entry's id as a pair that orders as Redis orders them.
    """
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@frozen
class Entry:
    """
    One purge of the log.

    @ivar names: the names purged (for C{kind} C{"names"}).
    @ivar gens: their generations after it, in the same order.
    """

    id: str
    kind: str
    names: tuple[str, ...] = ()
    prefix: str = ""
    node: str = ""
    gens: tuple[int, ...] = ()

    @classmethod
    def of(cls, entry_id: str, fields: dict[str, str]) -> Entry:
        """
        An entry as XREAD returns it; one this version cannot read is kept
        as a purge of nothing (C{kind} C{"unknown"}), so it is passed.  So
        is a prefix purge with an empty prefix, which the API refuses: it
        would purge every file held.
        """
        try:
            if fields["kind"] == "prefix":
                if not fields["prefix"]:
                    return cls(entry_id, "unknown")
                return cls(entry_id, "prefix", prefix=str(fields["prefix"]), node=fields["node"])
            names = tuple(str(name) for name in json.loads(fields["names"]))
            gens = tuple(int(gen) for gen in json.loads(fields.get("gens", "[]")))
            return cls(entry_id, "names", names, node=fields["node"], gens=gens)
        except (KeyError, ValueError, TypeError):
            return cls(entry_id, "unknown")


@frozen
class Snapshot:
    """
    What a node resyncs from: the cluster's generations and prefix purges
    as of the stream's entry C{last} (taken in one step).  C{last} is the
    last entry ever added (XINFO's C{last-generated-id}), which the stream
    may no longer hold: a stream trimmed to nothing is read on from there,
    not from its start.
    """

    epoch: str
    last: str
    gens: dict[str, int]
    prefixes: dict[str, str]
    unreadable: tuple[str, ...] = ()

    def prefixes_after(self, since: str) -> list[str]:
        """
        The prefixes purged after entry C{since}, and those whose last
        purge cannot be read (the safe side: purged again).
        """
        return [
            key
            for key, at in self.prefixes.items()
            if _readable_id(at) is None or stream_id(at) > stream_id(since)
        ]


class PurgeLog:
    """
    The commands of the purge log over one client.

    @param maxlen: the stream's length, kept about (C{MAXLEN ~}).
    """

    def __init__(self, client: redis.Redis, prefix: str, maxlen: int) -> None:
        self.client = client
        self.maxlen = maxlen
        self.stream = prefix + "purges"
        self.gens = prefix + "gens"
        self.prefixes = prefix + "prefixes"
        self.epoch_key = prefix + "epoch"
        self.node_keys = prefix + "node:"
        self._append = client.register_script(_APPEND)

    def append(
        self, node: str, names: list[str] | None = None, prefix: str = ""
    ) -> tuple[str, tuple[int, ...]]:
        """
        Add a purge of C{names}, or of C{prefix}; its entry's id once Redis
        has it, and the names' generations after it.
        """
        kind, payload = ("names", json.dumps(names)) if names is not None else ("prefix", prefix)
        keys = [self.stream, self.gens, self.prefixes, self.epoch_key]
        args = [self.maxlen, kind, payload, node, secrets.token_hex(8)]
        entry_id, gens = self._append(keys=keys, args=args)
        return str(entry_id), tuple(int(gen) for gen in json.loads(gens))

    def epoch(self) -> str:
        """
        The cluster's epoch, set now if it has none.
        """
        self.client.set(self.epoch_key, secrets.token_hex(8), nx=True)
        return str(self.client.get(self.epoch_key))

    def reaches_back_to(self, applied: str) -> bool:
        """
        Whether every entry after C{applied} is still in the stream: it is
        the last one, or it is still there itself (a stream is trimmed
        from its oldest end).  A position trimmed away whose successors
        all remain counts as not reached: a resync too many, never one
        too few.
        """
        return self.follows_on(applied)[1]

    def follows_on(self, applied: str) -> tuple[str | None, bool]:
        """
        The log's epoch (L{None}: it has none), and whether it reaches back
        to C{applied} (see L{reaches_back_to}), both of one moment, in one
        round trip.
        """
        pipe = self.client.pipeline(transaction=True)
        pipe.xinfo_stream(self.stream)
        pipe.get(self.epoch_key)
        pipe.xrange(self.stream, applied, applied)
        info, (epoch, there) = _with_stream_info(pipe)
        if info is None:
            return epoch, applied == "0-0"  # no stream: nothing to have missed
        if str(info["last-generated-id"]) == applied:
            return epoch, True
        if applied == "0-0":
            # Before the first entry: reached if none was ever removed.
            return epoch, int(info.get("entries-added", info["length"])) == int(info["length"])
        return epoch, bool(there)

    def read(self, after: str, block_ms: int, count: int) -> list[Entry]:
        """
        The entries after C{after}, waiting up to C{block_ms} for one.
        """
        answer = self.client.xread({self.stream: after}, count=count, block=block_ms)
        if not answer:
            return []
        _, entries = answer[0] if isinstance(answer, list) else next(iter(answer.items()))
        return [Entry.of(entry_id, fields) for entry_id, fields in entries]

    def snapshot(self) -> Snapshot:
        """
        The generations, prefix purges and last entry, in one transaction.
        """
        epoch = self.epoch()
        pipe = self.client.pipeline(transaction=True)
        pipe.xinfo_stream(self.stream)
        pipe.hgetall(self.gens)
        pipe.hgetall(self.prefixes)
        pipe.get(self.epoch_key)
        info, (gens, prefixes, now_epoch) = _with_stream_info(pipe)
        known, unreadable = _generations(gens)
        return Snapshot(
            str(now_epoch or epoch),
            "0-0" if info is None else str(info["last-generated-id"]),
            known,
            {key: at for key, at in prefixes.items() if key},  # "": see Entry.of
            unreadable,
        )

    def pending(self, entry_id: str) -> tuple[list[str], list[str]]:
        """
        The live nodes (those with a heartbeat) that have applied entry
        C{entry_id}, and those that have not.
        """
        keys = sorted(self.client.scan_iter(match=self.node_keys + "*", count=1000))
        applied, pending = [], []
        for key, raw in zip(keys, self.client.mget(keys) if keys else [], strict=True):
            name = key[len(self.node_keys) :]
            if raw is None:
                continue  # expired between the scan and the read: gone
            if _applied(raw) >= stream_id(entry_id):
                applied.append(name)
            else:
                pending.append(name)
        return applied, pending


def _with_stream_info(pipe: Any) -> tuple[dict[str, Any] | None, list[Any]]:
    """
    Run C{pipe}, whose first command is XINFO STREAM: its answer (L{None}:
    there is no stream), and the answers of the rest; any of their errors
    is raised.
    """
    info, *rest = pipe.execute(raise_on_error=False)
    for answer in rest:
        if isinstance(answer, Exception):
            raise answer
    return (None if isinstance(info, redis.ResponseError) else info), rest


def _generations(raw: dict[str, str]) -> tuple[dict[str, int], tuple[str, ...]]:
    """
    The C{gens} hash read: the names' generations, and the names whose
    generation is not an integer, each warned of.
    """
    known, unreadable = {}, []
    for name, gen in raw.items():
        try:
            known[name] = int(gen)
        except ValueError:
            log.warn("cluster: generation of {name} in the log unreadable: purging it", name=name)
            unreadable.append(name)
    return known, tuple(unreadable)


def _readable_id(at: str) -> tuple[int, int] | None:
    try:
        return stream_id(at)
    except ValueError:
        return None


def _applied(raw: str) -> tuple[int, int]:
    try:
        record: Any = json.loads(raw)
        return stream_id(str(record["applied"]))
    except (ValueError, KeyError, TypeError):
        return (0, 0)
