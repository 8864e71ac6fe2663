"""
The client's decisions, with no I/O: which node to ask about a file, what
it said recently, and which nodes to leave alone for now.

Everything here is driven by an injected clock and shared by the Twisted,
blocking and asyncio transports.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from attrs import define, frozen

from ..rendezvous import rank

# Kept in step with the server's quoting, so URLs built here match its own.
_SAFE = "/-._~!$&'()*+,;=:@"
_MAX_NAME_BYTES = 1024
_MAX_REMEMBERED = 100_000


class CacheException(ValueError):
    """
    A file name no cache tier would accept (the name of the 1.0.4 client's
    exception, so code catching it keeps working).
    """


def check_name(name: str) -> str:
    """
    The name to ask about, or L{CacheException} saying why it cannot be.
    """
    if not isinstance(name, str) or not name.strip():
        raise CacheException(f"Invalid filename: {name!r}")
    name = name.strip().lstrip("/")
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        raise CacheException(f"Invalid filename: longer than {_MAX_NAME_BYTES} bytes")
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise CacheException(f"Invalid filename: {name!r} has an empty, '.' or '..' segment")
        if "\\" in segment or any(ord(c) < 0x20 or ord(c) == 0x7F for c in segment):
            raise CacheException(f"Invalid filename: {name!r} has a backslash or control character")
    return name


def normalise_nodes(base_url: str | Sequence[str]) -> list[str]:
    nodes = [base_url] if isinstance(base_url, str) else list(base_url)
    if not nodes:
        raise ValueError("at least one cache tier URL is needed")
    return [n.strip().rstrip("/") + "/" for n in nodes]


@frozen
class FileStatus:
    """
    A node's answer about one file: every field of the server's status API
    (C{GET /api/v1/files/<name>}), by the same names, so
    C{attrs.asdict(status)} is the JSON object the node sent.  Fields added
    later come last, so positional construction keeps working.
    """

    file: str
    available: bool
    state: str
    download_url: str
    origin_url: str | None = None
    size: int | None = None
    bytes_synced: int = 0
    error: str | None = None
    etag: str | None = None
    last_modified: float | None = None
    content_type: str | None = None
    stale: bool = False
    status: int | None = None
    variants: int = 0

    @classmethod
    def from_json(cls, raw: Any) -> FileStatus:
        """
        @raise ValueError: when C{raw} is not a status.
        """
        if not isinstance(raw, dict):
            raise ValueError("the answer is not a JSON object")
        try:
            return cls(
                file=str(raw["file"]),
                available=raw["available"] is True,
                state=str(raw["state"]),
                size=raw.get("size"),
                bytes_synced=raw.get("bytes_synced") or 0,
                etag=raw.get("etag"),
                last_modified=raw.get("last_modified"),
                content_type=raw.get("content_type"),
                download_url=str(raw["download_url"]),
                origin_url=raw.get("origin_url"),
                error=raw.get("error"),
                stale=raw.get("stale") is True,
                status=raw.get("status"),
                variants=raw.get("variants") or 0,
            )
        except KeyError as e:
            raise ValueError(f"the answer has no {e}") from None


@define
class _Breaker:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


@define
class _Liveness:
    """
    When a node was last known alive (a successful lookup or probe), and
    whether a liveness probe of it is under way.
    """

    alive_at: float = float("-inf")
    last_probe: float = float("-inf")
    probing: bool = False


@frozen
class _Answer:
    status: FileStatus
    node: str
    expires_at: float


class Policy:
    """
    Per-file status cache, node ranking and per-node breakers.  Safe to
    share between threads.

    @param local_cache_time: how long a positive answer is reused.
    @param negative_cache_time: how long a negative one is (shorter, so a
        freshly synced file switches over within seconds).
    @param failover: when a file's node is skipped (its breaker is open),
        ask the next node in the file's ranking (which starts a sync
        there); otherwise answer "not cached" at once.
    @param breaker_threshold: consecutive failures that open a node's
        breaker; while open, the node is skipped for C{breaker_cooloff}
        seconds, then probed by one call.
    @param liveness_interval: how often each node's liveness is confirmed
        (a C{/healthz} probe); a cached positive answer is used only while
        its node was known alive within C{liveness_interval +
        request_timeout}, so a listener is sent to a dead node for at most
        that long.
    @param request_timeout: the longest a probe may take.
    """

    def __init__(
        self,
        nodes: Sequence[str],
        now: Callable[[], float],
        *,
        enable_local_cache: bool = True,
        local_cache_time: float = 120.0,
        negative_cache_time: float = 5.0,
        failover: bool = True,
        breaker_threshold: int = 1,
        breaker_cooloff: float = 10.0,
        liveness_interval: float = 2.0,
        request_timeout: float = 1.0,
    ) -> None:
        self.nodes = list(nodes)
        self.liveness_interval = liveness_interval
        self._trust_for = liveness_interval + request_timeout
        self._liveness = {node: _Liveness() for node in self.nodes}
        self._now = now
        self.enabled = enable_local_cache
        self.local_cache_time = local_cache_time
        self.negative_cache_time = min(negative_cache_time, local_cache_time)
        self.failover = failover
        self.breaker_threshold = breaker_threshold
        self.breaker_cooloff = breaker_cooloff
        self._answers: OrderedDict[str, _Answer] = OrderedDict()
        self._breakers = {node: _Breaker() for node in self.nodes}
        self._lock = threading.Lock()

    def cached(self, name: str) -> FileStatus | None:
        """
        A recent answer about C{name} still fresh enough to reuse.
        """
        if not self.enabled:
            return None
        with self._lock:
            answer = self._answers.get(name)
            if answer is None or answer.expires_at <= self._now():
                return None
            if answer.status.available and not self._alive(answer.node):
                return None
            return answer.status

    def _alive(self, node: str) -> bool:
        return (
            self._breakers[node].opened_at is None
            and self._now() - self._liveness[node].alive_at <= self._trust_for
        )

    def home(self, name: str) -> str:
        """
        The node that answered about C{name} last, else its first node.
        """
        with self._lock:
            answer = self._answers.get(name)
        return answer.node if answer is not None else rank(self.nodes, name)[0]

    def probe_due(self, node: str) -> bool:
        """
        Whether C{node}'s liveness should be confirmed now; C{True} to one
        caller only, who must report with L{probe_succeeded} or
        L{failed}.  Due every C{liveness_interval}, whether its breaker is
        open or not: a probe that succeeds closes it, so a node that comes
        back is used again within an interval, not after the cool-off.
        """
        with self._lock:
            liveness = self._liveness[node]
            due = (
                not liveness.probing
                and self._now() - liveness.last_probe >= self.liveness_interval
                and self._now() - liveness.alive_at >= self.liveness_interval
            )
            if due:
                liveness.probing = True
                liveness.last_probe = self._now()
            return due

    def probe_succeeded(self, node: str) -> None:
        with self._lock:
            now = self._now()
            self._liveness[node] = _Liveness(alive_at=now, last_probe=now)
            self._breakers[node] = _Breaker()

    def is_stale(self, name: str) -> bool:
        return self.cached(name) is None

    def choose(self, name: str) -> str | None:
        """
        The node to ask about C{name} now, or L{None} to answer "not
        cached" at once.
        """
        with self._lock:
            candidates = rank(self.nodes, name)
            if not self.failover:
                candidates = candidates[:1]
            for node in candidates:
                if self._allow(node):
                    return node
            return None

    def _allow(self, node: str) -> bool:
        breaker = self._breakers[node]
        if breaker.opened_at is None:
            return True
        if self._now() < breaker.opened_at + self.breaker_cooloff or breaker.probing:
            return False
        breaker.probing = True
        return True

    def succeeded(self, node: str, name: str, status: FileStatus) -> None:
        with self._lock:
            self._breakers[node] = _Breaker()
            self._liveness[node].alive_at = self._now()
            ttl = self.local_cache_time if status.available else self.negative_cache_time
            self._answers.pop(name, None)
            self._answers[name] = _Answer(status, node, self._now() + ttl)
            while len(self._answers) > _MAX_REMEMBERED:
                self._answers.popitem(last=False)

    def failed(self, node: str) -> None:
        """
        A lookup or a liveness probe of C{node} failed: its positive
        answers are dropped at once, and its breaker hears of it.
        """
        with self._lock:
            self._liveness[node] = _Liveness(last_probe=self._liveness[node].last_probe)
            for name in [n for n, a in self._answers.items() if a.node == node]:
                if self._answers[name].status.available:
                    del self._answers[name]
            breaker = self._breakers[node]
            breaker.failures += 1
            breaker.probing = False
            if breaker.opened_at is not None or breaker.failures >= self.breaker_threshold:
                breaker.opened_at = self._now()

    def breaker_open(self, node: str) -> bool:
        with self._lock:
            return self._breakers[node].opened_at is not None

    def status_url(self, node: str, name: str) -> str:
        return node + "api/v1/files/" + quote(name, safe=_SAFE)

    def download_url(self, name: str) -> str:
        """
        Where to send a listener for C{name} when it is cached: the URL the
        node that answered gave, else the file's first node.
        """
        with self._lock:
            answer = self._answers.get(name)
        if answer is not None:
            return answer.status.download_url
        return rank(self.nodes, name)[0] + "files/" + quote(name, safe=_SAFE)
