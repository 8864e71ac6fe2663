"""
A worker process (C{--workers}): its entry point, C{python -m
cachetier.worker_process}, spawned by L{cachetier.workers.WorkersService}
with its settings in the environment.  Like C{tap.py} it is wiring, and
imports the global reactor, so it lives beside it rather than in the
room that spawns it.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .config import from_json
from .tap import makeWorkerService
from .workers import SETTINGS

log = Logger()


class _ExitWithPrimary(Protocol):
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.reactor.running:
            self.reactor.stop()


def main(argv: list[str] | None = None) -> None:
    """
    Run one worker process (spawned by L{WorkersService}) with the
    settings the primary put in its environment.
    """
    parser = argparse.ArgumentParser(prog="python -m cachetier.worker_process")
    parser.add_argument("--primary", required=True, help="the primary's UNIX socket")
    parser.add_argument("--fd", action="append", default=[], help="FD:inet|inet6 to adopt")
    parser.add_argument("--number", type=int, required=True)
    args = parser.parse_args(argv)
    settings = from_json(os.environ[SETTINGS])
    sockets = []
    for spec in args.fd:
        fd, family = spec.split(":")
        sockets.append((int(fd), socket.AF_INET6 if family == "inet6" else socket.AF_INET))

    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO
    from twisted.logger import globalLogBeginner, jsonFileLogObserver

    # Events go to the primary as JSON on stdout, a record a line, as they
    # happen; it logs them for us.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(sys.stdout)], redirectStandardIO=False)
    service = makeWorkerService(settings, args.primary, sockets, reactor)
    service.startService()
    # SIGTERM from the primary: stop accepting, let responses finish.
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    StandardIO(_ExitWithPrimary(reactor), stdout=os.open(os.devnull, os.O_WRONLY))
    log.info("worker {number} serving", number=args.number)
    reactor.run()


if __name__ == "__main__":
    main()
