"""
A real C{redis-server} (Debian's) for the cluster's tests: on 127.0.0.1
at a free port, in a temporary directory, without persistence, started
and killed by PID, and restartable on the same port (empty, as a Redis
without persistence comes back).
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any

import redis
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, TestCase


class _RedisProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[Any] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"Ready to accept connections" in self.output and not self.ready.called:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(reason.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """
    One C{redis-server}; see L{start_redis}.

    @ivar url: its C{redis://} URL, for C{--cluster}.
    """

    def __init__(self, test: TestCase, directory: str, args: tuple[str, ...]) -> None:
        self._args = args
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process: Any = None
        self._protocol: _RedisProcess | None = None
        test.addCleanup(lambda: Deferred.fromCoroutine(self.kill()))

    async def start(self) -> None:
        """
        Start it (again, on the same port) and wait until it takes
        connections.
        """
        self._protocol = _RedisProcess()
        argv = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self._directory,
            "--save", "",
            "--appendonly", "no",
            *self._args,
        ]  # fmt: skip
        self._process = reactor.spawnProcess(self._protocol, argv[0], argv, env=os.environ)
        await self._protocol.ready

    async def kill(self) -> None:
        """
        SIGKILL it, if running, and wait for its end.
        """
        if self._protocol is not None and not self._protocol.ended.called:
            self._process.signalProcess("KILL")
            await self._protocol.ended

    def client(self) -> redis.Redis:
        """
        A client of its own, for a test to look and meddle (blocking: for
        quick calls).
        """
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)


async def start_redis(test: TestCase, *args: str) -> RedisServer:
    """
    A running C{redis-server} (with C{args} added to its command line),
    killed by PID when C{test} ends; the test is skipped, saying why,
    where there is none.
    """
    if shutil.which("redis-server") is None:
        raise SkipTest("no redis-server: apt-get install redis-server (.ci/run does)")
    server = RedisServer(test, os.path.abspath(test.mktemp()), args)
    os.makedirs(server._directory)
    await server.start()
    return server
