"""
The service twistd runs: what happens, in which order, at start, on
signals and at stop.

C{makeService} returns a C{MultiService} of the listeners, the cache
(L{CacheService}), a C{TimerService} that flushes buffered log lines
once a second, and with C{--workers} the workers; Twisted starts them in
that order and stops them in the reverse.

Start.  twistd calls C{privilegedStartService} as root (if started as
root), switches to C{--uid}/C{--gid}, then calls C{startService}:

  1. the public ports are bound: a failure is one line, and nothing has
     been created yet;
  2. the cache directory is made, and given to C{--uid}/C{--gid}, and so
     is twistd's log file;
  3. as the service's own user: the store is opened (and recovered), the
     access log opened, the site starts serving the cache;
  4. with C{--workers}: the primary's private socket, then the workers.

A failure in 1 to 3 is a L{StartupFailure}: one line, and without
C{-n} twistd's report to the command that waits for the daemon.

Signals.  SIGHUP reopens every log file (twistd's and C{--access-log},
after a rename by logrotate; one that cannot be opened is logged, and
the old one kept) and reloads TLS certificates, in every process.
SIGUSR1 rotates twistd's log file as twistd does, and never kills the
server (under C{-n} it does nothing).

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
import signal
from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger, LogPublisher, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.logfile import BaseLogFile
from twisted.web.resource import Resource
from zope.interface import implementer

from .config import Settings
from .config.flags import StartupFailure
from .limits import site_limits
from .metrics import Metrics
from .web import CacheSite
from .web._json import render_error
from .web._twisted import log_observers, observer_file
from .workers import WorkersService

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


def starting_site(settings: Settings, reactor: Any) -> CacheSite:
    """
    The site the listeners serve: it answers 503 until the cache is open,
    and then serves it.
    """
    return CacheSite(_Starting(), Metrics(), reactor=reactor, **site_limits(settings))


@implementer(IStreamServerEndpoint)
class _AtOnce:
    """
    An endpoint that listens at once or stops startup with one line
    saying where and why (no traceback).
    """

    def __init__(self, description: str, endpoint: Any) -> None:
        self.description = description
        self.endpoint = endpoint

    def listen(self, factory: Any) -> Deferred[Any]:
        failures: list[Failure] = []
        d = self.endpoint.listen(factory)
        d.addErrback(failures.append)
        if failures:
            error = failures[0].value
            socket_error = getattr(error, "socketError", None)
            why = getattr(socket_error, "strerror", None) or failures[0].getErrorMessage()
            raise StartupFailure(f"cannot listen on {self.description}: {why}")
        return d


def listener(description: str, endpoint: Any, site: CacheSite) -> StreamServerEndpointService:
    """
    The service listening on one C{--listen}, bound before privileges
    are dropped.
    """
    return StreamServerEndpointService(_AtOnce(description, endpoint), site)


def prepare_cache_dir(path: str, owner: tuple[int, int] | None) -> None:
    """
    Make the cache directory (0700) and, when twistd is to switch users,
    give it (and anything in it another user owns) to that user: the
    server writes there after privileges are dropped.

    @raise StartupFailure: when it cannot be done.
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
        raise StartupFailure(f"cannot prepare the cache directory {path}: {e.strerror}") from None


def twistd_log_files(publisher: LogPublisher = globalLogPublisher) -> list[BaseLogFile]:
    """
    twistd's log file (C{--logfile}), if it has one: twistd keeps no
    handle on it but its observer's, so this looks among the observers
    of C{publisher} (the global one) for one writing to a Twisted log file.
    """
    files = (observer_file(observer) for observer in log_observers(publisher))
    return [out for out in files if isinstance(out, BaseLogFile)]


def give_twistd_logs(owner: tuple[int, int]) -> None:
    """
    Give twistd's log file, which it created as root, to the user it is
    to switch to: SIGHUP reopens it as that user.
    """
    for out in twistd_log_files():
        try:
            os.chown(out.path, *owner, follow_symlinks=False)
        except OSError as e:
            log.warn(
                "cannot give {path} to uid {uid}: {why}; SIGHUP will not reopen it",
                path=out.path,
                uid=owner[0],
                why=e.strerror,
            )


def reopen_twistd_logs(publisher: LogPublisher = globalLogPublisher) -> int:
    """
    Reopen twistd's log file, which logrotate may have renamed.  A file
    that cannot be opened is logged, and the old one kept: Twisted's
    C{reopen} closes the old file first, and would leave twistd logging
    nowhere.

    @return: how many files were reopened.
    """
    reopened = 0
    for out in twistd_log_files(publisher):
        try:
            with open(out.path, "ab"):
                pass
        except OSError as e:
            log.error(
                "SIGHUP: cannot reopen {path}: {why}; still writing to the file it had",
                path=out.path,
                why=e.strerror,
            )
            continue
        out.reopen()
        reopened += 1
    return reopened


class CacheService(Service):
    """
    The cache: it makes the cache directory, opens the store onto the
    listening site, reopens and reloads on SIGHUP, and at stop lets the
    responses in flight finish before it closes (see the module's
    docstring for the order of things).

    @param site: the site the listeners serve, which serves the cache
        once it is open.
    @param assemble: builds the cache's parts onto C{site}.
    @param owner: the uid and gid twistd switches to, if it does.
    @param reloadables: what SIGHUP reloads besides the logs (TLS
        certificates).
    @param workers: the worker processes, if any: told of SIGHUP, and
        waited for before the cache closes.
    """

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        site: CacheSite,
        assemble: Callable[[Settings, Any, CacheSite], Any],
        owner: tuple[int, int] | None = None,
        reloadables: list[Callable[[], None]] | None = None,
        workers: WorkersService | None = None,
    ) -> None:
        self.settings = settings
        self.reactor = reactor
        self.site = site
        self.owner = owner
        self.reloadables = reloadables or []
        self.workers = workers
        self._assemble = assemble
        self.assembly: Any = None
        self._previous: dict[int, Any] = {}

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        prepare_cache_dir(self.settings.cache_dir, self.owner)
        if self.owner is not None:
            give_twistd_logs(self.owner)

    def startService(self) -> None:
        super().startService()
        try:
            self.assembly = self._assemble(self.settings, self.reactor, self.site)
        except OSError as e:
            raise StartupFailure(
                f"cannot open the cache in {self.settings.cache_dir}: {e.strerror or e}"
            ) from None
        self.assembly.start()
        self._install_signals()

    def flush(self) -> None:
        """
        Once a second (a C{TimerService} calls it): buffered access lines
        and analytics events out.
        """
        if self.assembly is not None:
            self.assembly.flush()

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
        access_file = self.assembly.access_file if self.assembly is not None else None
        if access_file is not None:
            try:
                access_file.reopen()
                files += 1
            except OSError as e:
                log.error(
                    "SIGHUP: cannot reopen {path}: {why}; still writing to the file it had",
                    path=access_file.path,
                    why=e.strerror,
                )
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
        """
        Let the responses in flight finish (up to C{--shutdown-grace}) and
        the workers end, then cancel the downloads and close the rest.
        The listeners stop accepting beside this.
        """
        super().stopService()
        self._restore_signals()
        closing = [self.site.drain(self.settings.shutdown_grace)]
        if self.workers is not None:
            closing.append(self.workers.ended())
        d = DeferredList(closing)
        d.addCallback(lambda _: self.assembly.stop() if self.assembly is not None else None)
        return d
