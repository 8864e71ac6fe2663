"""
The client for Twisted applications (Klein, twisted.web): treq, Deferreds.
"""

from __future__ import annotations

from typing import Any

import txaio.tx
from treq import json_content
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import Agent, HTTPConnectionPool

from ._base import ClientBase
from ._lookup import lookup, probe
from ._policy import FileStatus, check_name


class CacheTierClient(ClientBase):
    """
    Asks cache tier nodes whether files are cached; never fails: any error
    is "not cached", within C{request_timeout}.

    Constructor compatible with cache-tier 1.0.4 (see L{ClientBase}), plus:

    @param reactor: the reactor (default: the global one).
    @param http_client: a treq C{HTTPClient} (default: one with its own
        connection pool).

    With C{cluster=}, the membership is read in the reactor's thread pool.
    """

    def __init__(
        self,
        *args: Any,
        reactor: Any = None,
        http_client: HTTPClient | None = None,
        **kwargs: Any,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        # The other arguments are ClientBase's, compatible with cache-tier 1.0.4.
        super().__init__(*args, now=reactor.seconds, **kwargs)
        self.pool: HTTPConnectionPool | None = None
        self._watcher: LoopingCall | None = None
        self._probes: set[Deferred[None]] = set()
        if http_client is None:
            self.pool = HTTPConnectionPool(reactor)
            agent = Agent(reactor, connectTimeout=self.request_timeout, pool=self.pool)
            http_client = HTTPClient(agent)
        self._http = http_client
        self.log = txaio.tx.make_logger()
        self._discovery: LoopingCall | None = None
        self._discovery_done: Deferred[Any] = succeed(None)
        if self.membership is not None:
            # One read at a time: the loop waits for each before the next.
            self._discovery = LoopingCall(
                deferToThreadPool, reactor, reactor.getThreadPool(), self.refresh_nodes
            )
            self._discovery.clock = reactor
            self._discovery_done = self._discovery.start(self.discovery_interval, now=True)

    def _watch(self) -> None:
        """
        Confirm every node's liveness each C{liveness_interval}, in the
        background, from the first call on, until L{close}.
        """
        if self._watcher is None:
            self._watcher = LoopingCall(self._probe_nodes)
            self._watcher.clock = self._reactor
            self._watcher.start(self.policy.liveness_interval, now=True)

    def _probe_nodes(self) -> None:
        for node in self.policy.nodes:
            if self.policy.probe_due(node):
                d = Deferred.fromCoroutine(probe(self.policy, node, self._fetch_json, self.log))
                if not d.called:
                    self._probes.add(d)
                    d.addBoth(self._probe_ended, d)

    def _probe_ended(self, result: object, d: Deferred[None]) -> object:
        self._probes.discard(d)
        return result

    def close(self) -> Deferred[None]:
        """
        Stop the liveness checks and close the client's own connections.
        """
        if self._watcher is not None and self._watcher.running:
            self._watcher.stop()
        self._watcher = None
        for d in list(self._probes):
            d.cancel()
        done = succeed(None) if self.pool is None else self.pool.closeCachedConnections()
        if self._discovery is not None:
            if self._discovery.running:
                self._discovery.stop()
            self._discovery = None
            # The read in flight (bounded by its socket timeouts) ends first.
            assert self.membership is not None
            membership = self.membership
            done.addCallback(lambda _: self._discovery_done)
            done.addCallback(lambda _: membership.close())
        return done

    def verify_file(self, file_name: str) -> Deferred[bool]:
        """
        Whether C{file_name} is cached (asking starts a sync there).

        @raise CacheException: at once, for an invalid name.
        """
        name = check_name(file_name)
        self._watch()
        status = self.policy.cached(name)
        if status is not None:
            return succeed(status.available)
        return self.refresh_status_from_server(name)

    def file_status(self, file_name: str) -> Deferred[FileStatus | None]:
        """
        The node's full answer about C{file_name}, or L{None} on failure.
        """
        name = check_name(file_name)
        self._watch()
        status = self.policy.cached(name)
        if status is not None:
            return succeed(status)
        return self._lookup(name)

    def refresh_status_from_server(self, file_name: str) -> Deferred[bool]:
        """
        Ask a node now, whatever was cached.
        """
        d = self._lookup(check_name(file_name))
        return d.addCallback(lambda status: status is not None and status.available)

    def _lookup(self, name: str) -> Deferred[FileStatus | None]:
        return Deferred.fromCoroutine(
            lookup(self.policy, name, self._fetch_json, self.log, self.log_enabled)
        )

    def _fetch_json(self, url: str) -> Deferred[Any]:
        async def fetch() -> Any:
            response = await self._http.get(url, headers={b"accept": [b"application/json"]})
            if response.code != 200:
                await response.text()
                raise ValueError(f"HTTP {response.code}")
            return await json_content(response)

        d = Deferred.fromCoroutine(fetch())
        return d.addTimeout(self.request_timeout, self._reactor)
