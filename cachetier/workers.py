"""
C{--workers N}: N processes serving the same listening sockets.

The primary (the twistd process) owns the store and every download; it
listens on the public addresses and on a private UNIX socket, and spawns
N-1 workers.  Each process has a listening socket of its own on every
public address (C{SO_REUSEPORT}, see L{PublicPorts}), so the kernel
spreads connections over all N.  A
worker serves fresh hits from disk and relays the rest to the primary, so
each file is still downloaded exactly once, and a worker's listener on a
miss follows the primary's download as it fills.

A worker's entry point is C{python -m cachetier.worker_process}; it exits
when the primary does (its stdin, a pipe from the primary, closes).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

from .config import Settings, default_backlog, parse_endpoint, to_json
from .config.flags import StartupFailure

log = Logger()

# The environment variable that carries a worker's settings, as JSON.
SETTINGS = "CACHETIER_WORKER_SETTINGS"
_FIRST_FD = 3
# The longest wait before restarting a worker that keeps dying.
MAX_BACKOFF = 60.0


class _Worker(ProcessProtocol):
    """
    One worker process.  Its log events arrive as JSON on its stdout and go
    into the primary's log (so wherever twistd logs, rotation included),
    tagged with the worker's number; anything on its stderr, too.
    """

    # Most bytes of one unfinished log record kept from the pipe.
    max_record = 1 << 20

    def __init__(self, service: WorkersService, number: int, started: float) -> None:
        self.service = service
        self.number = number
        self.started = started
        self.ended: Deferred[None] = Deferred()
        self._records = b""
        self._system = f"cachetier.worker{number}"

    def outReceived(self, data: bytes) -> None:
        # A record is one line: a separator, JSON (newlines escaped), "\n".
        records = (self._records + data).split(b"\n")
        self._records = records.pop()[-self.max_record :]
        for record in records:
            record = record.lstrip(b"\x1e")
            if record.strip():
                self._publish(record)

    def _publish(self, record: bytes) -> None:
        try:
            event = eventFromJSON(record.decode("utf-8"))
        except ValueError:
            event = {"log_format": "{line}", "line": record.decode("utf-8", "replace")}
            event["log_level"] = LogLevel.warn
            event["log_time"] = self.service.reactor.seconds()
        level = event.get("log_level", LogLevel.info)
        event["log_system"] = f"{self._system}#{getattr(level, 'name', level)}"
        event["worker"] = self.number
        globalLogPublisher(event)

    def errReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            log.error("{line}", line=line, log_system=f"{self._system}#error", worker=self.number)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.service.worker_ended(self, reason)


class WorkersService(Service):
    """
    Keeps N-1 worker processes serving the public sockets, restarting any
    that dies, and listens for them on the primary's private socket (a
    UNIX socket in a 0700 directory of its own).

    @param public: the public ports, which hold each worker's sockets.
    @param site: the primary's site, which the workers' requests reach.
    @param settings: what each worker is given (as JSON in its
        environment, under L{SETTINGS}).
    """

    def __init__(
        self,
        reactor: Any,
        count: int,
        public: PublicPorts,
        site: Any,
        settings: Settings,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.public = public
        self.site = site
        self.settings = settings
        self.primary_socket = ""
        self._private: Any = None
        self._workers: dict[int, tuple[Any, _Worker]] = {}
        # Consecutive quick deaths per worker, for the restart back-off.
        self._crashes: dict[int, int] = {}

    def startService(self) -> None:
        super().startService()
        # Private, and short: UNIX socket paths must be under 108 bytes.
        runtime = tempfile.mkdtemp(prefix="cachetier-")
        self.primary_socket = os.path.join(runtime, "primary.sock")
        self._private = self.reactor.listenUNIX(self.primary_socket, self.site, mode=0o600)
        for number in range(1, self.count):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        protocol = _Worker(self, number, self.reactor.seconds())
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        args = [
            sys.executable,
            "-m",
            "cachetier.worker_process",
            f"--primary={self.primary_socket}",
        ]
        self.public.stand_down(number)
        for offset, (listening, family) in enumerate(self.public.sockets_for(number)):
            fd = _FIRST_FD + offset
            fds[fd] = listening
            args.append(f"--fd={fd}:{'inet6' if family == socket.AF_INET6 else 'inet'}")
        args.append(f"--number={number}")
        env = {**os.environ, SETTINGS: to_json(self.settings)}
        process = self.reactor.spawnProcess(protocol, sys.executable, args, env=env, childFDs=fds)
        self._workers[number] = (process, protocol)
        log.info("worker {number} started (pid {pid})", number=number, pid=process.pid)

    def worker_ended(self, protocol: _Worker, reason: Failure) -> None:
        """
        Restart a worker that died, after 1 s, doubling for each quick death
        in a row up to 60 s; one that ran for a minute starts the count anew.
        """
        number = protocol.number
        self._workers.pop(number, None)
        if not self.running:
            return
        self.public.stand_in(number)
        if self.reactor.seconds() - protocol.started >= MAX_BACKOFF:
            self._crashes[number] = 0
        crashes = self._crashes[number] = self._crashes.get(number, 0) + 1
        delay = min(MAX_BACKOFF, 2.0 ** (crashes - 1))
        log.warn(
            "worker {number} ended ({why}); restarting it in {delay:g}s",
            number=number,
            why=reason.getErrorMessage(),
            delay=delay,
        )
        self.reactor.callLater(delay, self._respawn, number)

    def _respawn(self, number: int) -> None:
        if self.running and number not in self._workers:
            self._spawn(number)

    def signal_all(self, name: str) -> None:
        """
        Send every worker the signal C{name} (C{"HUP"}...).
        """
        for process, _ in list(self._workers.values()):
            process.signalProcess(name)

    def ended(self) -> Deferred[Any]:
        """
        Fires when every worker running now has ended.
        """
        return DeferredList([protocol.ended for _, protocol in list(self._workers.values())])

    def stopService(self) -> Deferred[Any]:
        """
        Tell every worker to stop (each drains its connections first),
        then close the private socket when all have ended.
        """
        super().stopService()
        for process, _ in list(self._workers.values()):
            process.signalProcess("TERM")
        d = self.ended()
        d.addCallback(lambda _: self._close())
        return d

    def _close(self) -> None:
        if self._private is not None:
            self._private.stopListening()
            shutil.rmtree(os.path.dirname(self.primary_socket), ignore_errors=True)
            self._private = None


class PublicPorts(Service):
    """
    The public listening ports with C{--workers}, opened in the primary
    before privileges are dropped.  If one cannot be opened, startup
    stops with one line saying which and why.

    Each plain TCP address is bound C{copies} times with C{SO_REUSEPORT}:
    one listening socket per process, so the kernel spreads new
    connections evenly over them (one shared socket lets whichever
    process wakes first accept nearly all of a burst).  The primary
    listens on the first; L{sockets_for} gives each worker its own,
    which the primary holds and listens on itself while that worker is
    down, so no connection waits for a restart.

    @param descriptions: the C{tcp:} and C{tcp6:} endpoints to listen on.
    """

    def __init__(
        self, descriptions: Sequence[str], factory: Any, reactor: Any, copies: int
    ) -> None:
        self.descriptions = descriptions
        self.factory = factory
        self.reactor = reactor
        self.copies = copies
        self.ports: list[Any] = []
        # Per address: the workers' sockets (index 0: worker 1).
        self._worker_sockets: list[tuple[int, list[socket.socket]]] = []
        self._standing_in: dict[int, list[Any]] = {}

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        for description in self.descriptions:
            try:
                self._listen_copies(description)
            except OSError as e:
                self._close()
                why = e.strerror or str(e)
                raise StartupFailure(f"cannot listen on {description}: {why}") from None

    def _listen_copies(self, description: str) -> None:
        family, host, port, backlog = tcp_address(description)
        sockets: list[socket.socket] = []
        try:
            for _ in range(self.copies):
                s = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((host, port))
                port = s.getsockname()[1]  # port 0: every copy on the one chosen
                s.listen(backlog)
                s.setblocking(False)
        except OSError:
            for s in sockets:
                s.close()
            raise
        primary = sockets[0]
        self.ports.append(self.reactor.adoptStreamPort(primary.fileno(), family, self.factory))
        primary.close()
        self._worker_sockets.append((family, sockets[1:]))

    def sockets_for(self, number: int) -> list[tuple[int, int]]:
        """
        Worker C{number}'s listening sockets, as (descriptor, family).
        """
        return [(socks[number - 1].fileno(), family) for family, socks in self._worker_sockets]

    def stand_in(self, number: int) -> None:
        """
        Accept on worker C{number}'s sockets until it is back.
        """
        if number not in self._standing_in and self.running:
            self._standing_in[number] = [
                self.reactor.adoptStreamPort(fd, family, self.factory)
                for fd, family in self.sockets_for(number)
            ]

    def stand_down(self, number: int) -> None:
        for port in self._standing_in.pop(number, []):
            # The port holds a duplicate: the worker's socket stays open.
            port.stopListening()

    def _close(self) -> None:
        for port in self.ports:
            port.stopListening()
        for _, socks in self._worker_sockets:
            for s in socks:
                s.close()
        self.ports, self._worker_sockets = [], []

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        ports = self.ports + [p for ps in self._standing_in.values() for p in ps]
        self._standing_in.clear()
        self.ports = []
        d = DeferredList([port.stopListening() for port in ports])
        for _, socks in self._worker_sockets:
            for s in socks:
                s.close()
        self._worker_sockets = []
        return d


def tcp_address(description: str) -> tuple[int, str, int, int]:
    """
    The family, interface, port and backlog of a C{tcp:} or C{tcp6:}
    endpoint description (validated by the options already).
    """
    kind, positional, named = parse_endpoint(description)
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    fields = {
        "interface": "::" if kind == "tcp6" else "0.0.0.0",
        "backlog": str(default_backlog()),
        **named,
    }
    port = int(fields.get("port", positional[0] if positional else "0"))
    return family, fields["interface"], port, int(fields["backlog"])
