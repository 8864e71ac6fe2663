"""
Real C{twistd -n cachetier} nodes on loopback addresses (C{127.0.0.1} to
C{127.0.0.9}), for tests of several nodes: shields and edges, a cluster.
Each is stopped by PID when its test ends.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any

from attrs import define
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from .helpers import child_environment

_TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
]


class _Twistd(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.port: Deferred[int] = Deferred()
        self.ended: Deferred[Any] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = re.search(rb"CacheSite starting on (\d+)", self.output)
        if match and not self.port.called:
            self.port.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        if not self.port.called:
            self.port.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(reason.value)


def spawn_twistd(
    test: TestCase, args: list[str], prefix: tuple[str, ...] = (), twistd: tuple[str, ...] = ("-n",)
) -> tuple[Any, _Twistd]:
    """
    Start C{[prefix] twistd [twistd] cachetier [args]} (with C{--pidfile=}
    unless C{twistd} names one); killed by PID, if still running, when
    C{test} ends.
    """
    protocol = _Twistd()
    protocol.port.addErrback(lambda _: None)
    if not any(option.startswith("--pidfile=") for option in twistd):
        twistd = (*twistd, "--pidfile=")
    argv = [*prefix, *_TWISTD, *twistd, "cachetier", *args]
    process = reactor.spawnProcess(protocol, argv[0], argv, env=child_environment())

    async def stop() -> None:
        if not protocol.ended.called:
            process.signalProcess("KILL")
            await protocol.ended

    test.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return process, protocol


@define
class Node:
    """
    One running node.

    @ivar url: its base URL, ending in C{/}.
    @ivar cache_dir: its cache directory (kept across L{restart_node}).
    @ivar output: what it has logged so far (twistd's log, stdout and
        stderr together).
    """

    name: str
    url: str
    cache_dir: str
    args: tuple[str, ...]
    host: str
    process: Any
    protocol: _Twistd

    @property
    def output(self) -> str:
        return self.protocol.output.decode(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """
        Send C{sig} to the node's process (SIGKILL by default).
        """
        self.process.signalProcess(sig)

    async def ended(self) -> Any:
        """
        Wait for the process to end; its end (a L{ProcessDone} or
        L{ProcessTerminated}).
        """
        return await self.protocol.ended

    async def stop(self) -> Any:
        """
        SIGTERM, then wait for the end.
        """
        if not self.protocol.ended.called:
            self.kill(signal.SIGTERM)
        return await self.ended()


async def start_node(
    test: TestCase,
    origin_url: str,
    *args: str,
    name: str = "node1",
    host: str = "127.0.0.1",
    cache_dir: str | None = None,
    port: int = 0,
) -> Node:
    """
    Start C{twistd -n cachetier --origin=ORIGIN_URL ARGS} as C{name},
    listening on C{host} (a free port unless C{port} is given), and wait
    until it listens.

    @param cache_dir: its cache directory (default: a new one).
    """
    cache_dir = cache_dir or os.path.abspath(test.mktemp())
    argv = [
        f"--origin={origin_url}",
        f"--cache-dir={cache_dir}",
        f"--listen=tcp:{port}:interface={host}",
        f"--node-name={name}",
        *args,
    ]
    process, protocol = spawn_twistd(test, argv)
    bound = await protocol.port
    return Node(name, f"http://{host}:{bound}/", cache_dir, tuple(args), host, process, protocol)


async def restart_node(test: TestCase, node: Node, origin_url: str) -> Node:
    """
    Start C{node} again (after it ended) on the same address, port and
    cache directory, with the same flags.
    """
    port = int(node.url.rsplit(":", 1)[1].rstrip("/"))
    return await start_node(
        test,
        origin_url,
        *node.args,
        name=node.name,
        host=node.host,
        cache_dir=node.cache_dir,
        port=port,
    )


async def until(condition: Any, within: float = 10.0, every: float = 0.05) -> None:
    """
    Wait until C{await condition()} is true, failing after C{within}
    seconds.
    """
    for _ in range(int(within / every)):
        if await condition():
            return
        await deferLater(reactor, every, lambda: None)
    raise AssertionError(f"not within {within}s: {condition!r}")
