"""
C{--workers N}: N processes serving the same listening sockets.

The primary (the twistd process) owns the store and every download; it
listens on the public sockets and on a private UNIX socket in the cache
directory, and spawns N-1 workers that adopt the public sockets
(C{adoptStreamPort}), so the kernel spreads connections over all N.  A
worker serves fresh hits from disk and relays the rest to the primary, so
each file is still downloaded exactly once, and a worker's listener on a
miss follows the primary's download as it fills.

A worker's entry point is C{python -m cachetier.workers}; it exits when
the primary does (its stdin, a pipe from the primary, closes).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

_FIRST_FD = 3


class _Worker(ProcessProtocol):
    def __init__(self, service: WorkersService, number: int) -> None:
        self.service = service
        self.number = number
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.service.worker_ended(self, reason)


class WorkersService(Service):
    """
    Listens on the public endpoints (in the primary) and keeps N-1 worker
    processes serving them, restarting any that dies.

    @param ports: the primary's listening ports, whose sockets the workers
        adopt.
    """

    def __init__(
        self,
        reactor: Any,
        count: int,
        ports: list[Any],
        primary_socket: str,
        worker_args: list[str],
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.ports = ports
        self.primary_socket = primary_socket
        self.worker_args = worker_args
        self._workers: dict[int, tuple[Any, _Worker]] = {}

    def startService(self) -> None:
        super().startService()
        for number in range(1, self.count):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        protocol = _Worker(self, number)
        fds: dict[int, Any] = {0: "w", 1: 1, 2: 2}
        args = [sys.executable, "-m", "cachetier.workers", f"--primary={self.primary_socket}"]
        for offset, port in enumerate(self.ports):
            fd = _FIRST_FD + offset
            fds[fd] = port.fileno()
            family = "inet6" if isinstance(port.getHost(), IPv6Address) else "inet"
            args.append(f"--fd={fd}:{family}")
        args += self.worker_args + [f"--number={number}"]
        process = self.reactor.spawnProcess(
            protocol, sys.executable, args, env=os.environ.copy(), childFDs=fds
        )
        self._workers[number] = (process, protocol)
        log.info("worker {number} started (pid {pid})", number=number, pid=process.pid)

    def worker_ended(self, protocol: _Worker, reason: Failure) -> None:
        self._workers.pop(protocol.number, None)
        if self.running:
            log.warn(
                "worker {number} ended ({why}); restarting it",
                number=protocol.number,
                why=reason.getErrorMessage(),
            )
            self.reactor.callLater(1.0, self._respawn, protocol.number)

    def _respawn(self, number: int) -> None:
        if self.running and number not in self._workers:
            self._spawn(number)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        ended = []
        for process, protocol in list(self._workers.values()):
            process.signalProcess("TERM")
            ended.append(protocol.ended)
        return DeferredList(ended)


class PublicPorts(Service):
    """
    The public listening ports, opened in the primary before privileges
    are dropped, and shared with the workers.
    """

    def __init__(self, endpoints: list[Any], factory: Any) -> None:
        self.endpoints = endpoints
        self.factory = factory
        self.ports: list[Any] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        for endpoint in self.endpoints:
            endpoint.listen(self.factory).addCallback(self.ports.append)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        ports, self.ports = self.ports, []
        return DeferredList([port.stopListening() for port in ports])


class _ExitWithPrimary(Protocol):
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.reactor.running:
            self.reactor.stop()


def main(argv: list[str] | None = None) -> None:
    """
    Run one worker process (spawned by L{WorkersService}).
    """
    parser = argparse.ArgumentParser(prog="python -m cachetier.workers")
    parser.add_argument("--primary", required=True, help="the primary's UNIX socket")
    parser.add_argument("--fd", action="append", default=[], help="FD:inet|inet6 to adopt")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--cache-control-max-age", type=int, required=True)
    parser.add_argument("--access-log")
    parser.add_argument("--number", type=int, required=True)
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from .metrics import Metrics
    from .store import CacheStore
    from .web._site import AccessLogFile, CacheSite
    from .web.proxy import PrimaryProxy, primary_agent
    from .web.worker import build_worker_root

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    proxy = PrimaryProxy(primary_agent(reactor, args.primary))
    root = build_worker_root(CacheStore(args.cache_dir), reactor, proxy, args.cache_control_max_age)
    access_file = None
    namespace = f"cachetier.worker{args.number}"
    if args.access_log == "off":
        site = CacheSite(root, Metrics(), access_log=None)
    elif args.access_log:
        # One file per process: buffered lines from several would interleave.
        access_file = AccessLogFile(f"{args.access_log}.{args.number}")
        access = Logger(namespace=namespace, observer=access_file)
        site = CacheSite(root, Metrics(), access_log=access)
        reactor.addSystemEventTrigger("before", "shutdown", access_file.close)
    else:
        site = CacheSite(root, Metrics(), access_log=Logger(namespace=namespace))
    if access_file is not None:
        from twisted.internet.task import LoopingCall

        LoopingCall(access_file.flush).start(1.0, now=False)
    for spec in args.fd:
        fd, family = spec.split(":")
        reactor.adoptStreamPort(
            int(fd), socket.AF_INET6 if family == "inet6" else socket.AF_INET, site
        )
        os.close(int(fd))
    StandardIO(_ExitWithPrimary(reactor), stdout=os.open(os.devnull, os.O_WRONLY))
    log.info("worker {number} serving", number=args.number)
    reactor.run()


if __name__ == "__main__":
    main()
