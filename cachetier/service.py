"""
The service twistd runs: what happens, in which order, at start, on
signals and at stop.

Start.  twistd calls C{privilegedStartService} as root (if started as
root), switches to C{--uid}/C{--gid}, then calls C{startService}:

  1. the public ports are bound: a failure is one line, and nothing has
     been created yet;
  2. the cache directory is made, and given to C{--uid}/C{--gid};
  3. as the service's own user: the store is opened (and recovered), the
     access log opened, the site starts serving the cache;
  4. with C{--workers}: the primary's private socket, then the workers.

Signals.  SIGHUP reopens every log file (twistd's and C{--access-log},
after a rename by logrotate) and reloads TLS certificates, in every
process.  SIGUSR1 rotates twistd's log file as twistd does, and never
kills the server (under C{-n} it does nothing).

Stop (SIGTERM, SIGINT).  The ports stop accepting; workers are told to
stop too; responses in flight get up to C{--shutdown-grace} to finish
(idle keep-alive connections are closed at once); what is left is cut;
then the downloads are cancelled and everything else closed.
"""

from __future__ import annotations

# Imported now, as root, not lazily after twistd switched to --uid, when
# the interpreter's own files may be out of reach: the resolver's threads
# encode every origin host name with it.
import encodings.idna  # noqa: F401
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.logfile import BaseLogFile
from twisted.web.resource import Resource

from .config import Settings
from .metrics import Metrics
from .web import CacheSite
from .web._json import render_error
from .web._twisted import log_observers, observer_file
from .workers import PublicPorts, WorkersService

log = Logger()


class _Starting(Resource):
    """
    What the site answers before the cache is open (never, under twistd:
    no connection is accepted before the reactor runs).
    """

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setHeader(b"retry-after", b"1")
        return render_error(request, 503, "starting", "the cache is starting")


def prepare_cache_dir(path: str, owner: tuple[int, int] | None) -> None:
    """
    Make the cache directory (0700) and, when twistd is to switch users,
    give it (and anything in it another user owns) to that user: the
    server writes there after privileges are dropped.

    @raise SystemExit: with one line, when it cannot be done.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        if owner is not None and os.stat(path).st_uid != owner[0]:
            uid, gid = owner
            os.chown(path, uid, gid)
            for top, dirs, files in os.walk(path):
                for entry in dirs + files:
                    os.chown(os.path.join(top, entry), uid, gid, follow_symlinks=False)
    except OSError as e:
        raise SystemExit(
            f"cachetier: cannot prepare the cache directory {path}: {e.strerror}"
        ) from None


def reopen_twistd_logs() -> int:
    """
    Reopen twistd's log file (C{--logfile}), which logrotate may have
    renamed.  twistd keeps no handle on it but its observer's, so this
    looks among the global observers for one writing to a Twisted log
    file.

    @return: how many files were reopened.
    """
    reopened = 0
    for observer in log_observers():
        out = observer_file(observer)
        if isinstance(out, BaseLogFile):
            out.reopen()
            reopened += 1
    return reopened


class CacheService(Service):
    """
    The whole cache tier, as twistd starts and stops it (see the module's
    docstring for the order of things).

    @param endpoints: (description, endpoint) pairs to listen on.
    @param reloadables: what SIGHUP reloads besides the logs (TLS
        certificates).
    @param owner: the uid and gid twistd switches to, if it does.
    @param assemble: builds the cache's parts onto the listening site.
    """

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        endpoints: list[tuple[str, Any]],
        site_limits: dict[str, Any],
        assemble: Callable[[Settings, Any, CacheSite], Any],
        worker_args: list[str],
        owner: tuple[int, int] | None = None,
        reloadables: list[Callable[[], None]] | None = None,
    ) -> None:
        self.settings = settings
        self.reactor = reactor
        self.owner = owner
        self.reloadables = reloadables or []
        self._assemble = assemble
        self._worker_args = worker_args
        self.site = CacheSite(_Starting(), Metrics(), reactor=reactor, **site_limits)
        self.public = PublicPorts(endpoints, self.site, reactor, copies=settings.workers)
        self.assembly: Any = None
        self.workers: WorkersService | None = None
        self._flusher: LoopingCall | None = None
        self._private: Any = None
        self._runtime: str | None = None
        self._previous: dict[int, Any] = {}

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.public.privilegedStartService()
        try:
            prepare_cache_dir(self.settings.cache_dir, self.owner)
        except SystemExit:
            self.public.stopService()
            raise

    def startService(self) -> None:
        super().startService()
        try:
            self.assembly = self._assemble(self.settings, self.reactor, self.site)
        except OSError as e:
            raise SystemExit(
                f"cachetier: cannot open the cache in {self.settings.cache_dir}: {e.strerror or e}"
            ) from None
        self.public.startService()
        self._flusher = LoopingCall(self._flush)
        self._flusher.clock = self.reactor
        self._flusher.start(1.0, now=False)
        if self.settings.workers > 1:
            self._start_workers()
        self._install_signals()

    def _flush(self) -> None:
        """
        Once a second: buffered access lines and analytics events out.
        """
        if self.assembly.access_file is not None:
            self.assembly.access_file.flush()
        if self.assembly.analytics is not None:
            self.assembly.analytics.flush()

    def _start_workers(self) -> None:
        # The workers' way to the primary: private (a 0700 directory of
        # its own) and short, as UNIX socket paths must be under 108 bytes.
        self._runtime = tempfile.mkdtemp(prefix="cachetier-")
        path = os.path.join(self._runtime, "primary.sock")
        self._private = self.reactor.listenUNIX(path, self.site, mode=0o600)
        self.workers = WorkersService(
            self.reactor, self.settings.workers, self.public, path, self._worker_args
        )
        self.workers.startService()

    def _install_signals(self) -> None:
        def on(signum: int, handler: Callable[[], None]) -> None:
            def handle(_signum: int, _frame: Any) -> None:
                self.reactor.callFromThread(handler)

            self._previous[signum] = signal.signal(signum, handle)

        on(signal.SIGHUP, self.reopen)
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            # twistd rotates its --logfile on SIGUSR1; without one (under
            # -n, logging to stdout) the signal would kill the server.
            on(signal.SIGUSR1, lambda: log.info("SIGUSR1: no log file to rotate; ignored"))

    def _restore_signals(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def reopen(self) -> None:
        """
        SIGHUP: reopen the log files, reload the TLS certificates, and have
        the workers do the same.
        """
        files = reopen_twistd_logs()
        if self.assembly is not None and self.assembly.access_file is not None:
            self.assembly.access_file.reopen()
            files += 1
        extra = self.assembly.reloadables if self.assembly is not None else []
        for reload in [*self.reloadables, *extra]:
            try:
                reload()
            except Exception as e:
                # No file content in the message: it may be a secret.
                log.error("SIGHUP: could not reload: {why}", why=type(e).__name__)
        if self.workers is not None:
            self.workers.signal_all("HUP")
        log.info(
            "SIGHUP: reopened {files} log files, reloaded {certs} certificates",
            files=files,
            certs=len(self.reloadables),
        )

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._restore_signals()
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        closing = [self.public.stopService()]
        if self.workers is not None:
            closing.append(self.workers.stopService())
        closing.append(self.site.drain(self.settings.shutdown_grace))
        d = DeferredList(closing)
        d.addCallback(lambda _: self._close())
        return d

    def _close(self) -> Deferred[Any] | None:
        if self._private is not None:
            self._private.stopListening()
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
        if self.assembly is not None:
            return self.assembly.stop()  # type: ignore[no-any-return]
        return None
