"""
Running cachetier as a service, through real twistd processes: option
errors, signals, users and socket activation.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from treq import content
from twisted.internet import reactor
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import (
    FileLogObserver,
    Logger,
    LogPublisher,
    formatEventAsClassicLogText,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web._newclient import ResponseFailed
from twisted.web.client import ResponseNeverReceived

from cachetier.service import give_twistd_logs, reopen_twistd_logs

from .helpers import body_of, child_environment, http_client, start_origin
from .nodes import _TWISTD, _Twistd, spawn_twistd

NOBODY = 65534


async def _sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def _until(condition: Callable[[], bool], what: str, within: float = 20) -> None:
    """
    Wait until C{condition()} holds, failing naming C{what} after
    C{within} seconds: what another process does is waited for, not
    slept on.
    """
    deadline = reactor.seconds() + within
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await _sleep(0.05)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


async def _until_in(path: str, text: str, within: float = 20) -> None:
    """
    Wait until the file at C{path} holds C{text} (the access log is
    written once a second).
    """
    await _until(lambda: text in _read(path), f"{text!r} in {path}: {_read(path)!r}", within)


async def _port_in_log(path: str) -> int:
    """
    The port twistd says, in its log file at C{path}, it listens on.
    """
    await _until(
        lambda: re.search(r"CacheSite starting on (\d+)", _read(path)) is not None,
        f"twistd listening, in {path}",
    )
    found = re.search(r"CacheSite starting on (\d+)", _read(path))
    assert found is not None
    return int(found.group(1))


class TwistdProcessCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.origin, self.origin_url = start_origin(self)
        self.client = http_client(self)
        self.cache_dir = os.path.abspath(self.mktemp())

    def spawn(
        self, *args: str, prefix: tuple[str, ...] = (), twistd: tuple[str, ...] = ("-n",)
    ) -> tuple[Any, _Twistd]:
        """
        Start C{twistd [twistd] cachetier --origin=... [args]}; killed by
        PID, if still running, when the test ends.
        """
        return spawn_twistd(
            self, [f"--origin={self.origin_url}", *args], prefix=prefix, twistd=twistd
        )

    async def ended(self, process: Any, protocol: _Twistd, within: float = 20) -> Any:
        kill = reactor.callLater(within, process.signalProcess, "KILL")
        reason = await protocol.ended
        if kill.active():
            kill.cancel()
        return reason


class OptionErrorTests(TwistdProcessCase):
    async def test_each_bad_setting_is_one_line_and_creates_nothing(self) -> None:
        token = os.path.abspath(self.mktemp())
        with open(token, "w") as f:
            f.write("x" * 32)
        os.chmod(token, 0)
        cases = {
            "--max-size": "--max-size=0",
            "--max-size ": "--max-size=10MB",
            "--min-free": "--min-free=999T",
            "--origin-timeout": "--origin-timeout=0s",
            "--idle-timeout": "--idle-timeout=0",
            "--listen": "--listen=tcp:99999",
            "--cache-dir": "--cache-dir=/proc/nope",
        }
        if os.getuid() != 0:
            # root reads any file.
            cases["--admin-token-file"] = f"--admin-token-file={token}"
        for flag, bad in cases.items():
            process, protocol = self.spawn(f"--cache-dir={self.cache_dir}", bad)
            reason = await self.ended(process, protocol)
            output = protocol.output.decode()
            self.assertEqual(reason.exitCode, 2, output)
            self.assertIn(f"twistd cachetier: {flag.strip()}", output)
            self.assertLessEqual(len(output.splitlines()), 3, output)
            self.assertNotIn("Traceback", output)
            self.assertFalse(os.path.exists(self.cache_dir), f"{bad} created the cache dir")

    async def test_the_tac_names_the_variable_it_refuses(self) -> None:
        tac = os.path.join(os.path.dirname(__file__), "..", "cachetier.tac")
        for variable, line in [
            ("CACHETIER_MAXSIZE=1G", "cachetier.tac: option CACHETIER_MAXSIZE not recognized"),
            ("CACHETIER_MAX_SIZE=10MB", "cachetier.tac: CACHETIER_MAX_SIZE: not a size: '10MB'"),
        ]:
            env = child_environment()
            env.update(CACHETIER_ORIGIN=self.origin_url, CACHETIER_CACHE_DIR=self.cache_dir)
            key, _, value = variable.partition("=")
            env[key] = value
            protocol = _Twistd()
            protocol.port.addErrback(lambda _: None)
            argv = [*_TWISTD, "-n", "--pidfile=", "-y", tac]
            process = reactor.spawnProcess(protocol, argv[0], argv, env=env)
            reason = await self.ended(process, protocol)
            output = protocol.output.decode()
            self.assertEqual(reason.exitCode, 1, output)
            self.assertIn(line, output)
            self.assertNotIn("--max", output)
            self.assertFalse(os.path.exists(self.cache_dir))

    async def test_version(self) -> None:
        from cachetier import __version__

        process, protocol = self.spawn("--version")
        reason = await self.ended(process, protocol)
        self.assertEqual(reason.exitCode, 0)
        self.assertIn(f"cachetier {__version__} (Twisted ", protocol.output.decode())


def _kill_daemon(pidfile: str) -> None:
    """
    Kill, by the PID in C{pidfile}, a twistd daemon a test left running.
    """
    try:
        with open(pidfile) as f:
            pid = int(f.read())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            running = b"twistd" in f.read()
    except (OSError, ValueError):
        return
    if running:
        os.kill(pid, signal.SIGKILL)


class DaemonStartupTests(TwistdProcessCase):
    """
    Without C{-n}, twistd's parent waits for the daemon's word that it
    started: a start-up that fails must reach the terminal through it,
    at once, and take the pidfile away.
    """

    def daemon(self, *args: str, owner: int | None = None) -> tuple[Any, _Twistd, str, str]:
        run = os.path.abspath(self.mktemp())
        os.mkdir(run)
        if owner is not None:
            os.chmod(os.path.dirname(run), 0o755)
            os.chown(run, owner, owner)
        pidfile, logfile = os.path.join(run, "twistd.pid"), os.path.join(run, "twistd.log")
        self.addCleanup(_kill_daemon, pidfile)
        uid = () if owner is None else (f"--uid={owner}", f"--gid={owner}")
        process, protocol = self.spawn(
            *args, twistd=(f"--pidfile={pidfile}", f"--logfile={logfile}", *uid)
        )
        return process, protocol, pidfile, logfile

    async def assertReported(
        self, started: tuple[Any, _Twistd, str, str], shown: str, logged: str
    ) -> None:
        process, protocol, pidfile, logfile = started
        reason = await self.ended(process, protocol, within=20)
        output = protocol.output.decode()
        self.assertEqual(reason.exitCode, 1, output)
        self.assertIn("An error has occurred: b'cachetier.StartupFailure: " + shown, output)
        # The daemon logs and goes after its word to the parent.
        await _until(lambda: not os.path.exists(pidfile), "the pidfile removed")
        await _until_in(logfile, logged)

    async def test_a_busy_port_is_reported_by_twistd(self) -> None:
        busy = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        port = busy.getHost().port
        started = self.daemon(
            f"--cache-dir={self.cache_dir}", f"--listen=tcp:{port}:interface=127.0.0.1"
        )
        await self.assertReported(
            started,
            f"cannot listen on tcp:{port}",
            f"cachetier: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use",
        )
        self.assertFalse(os.path.exists(self.cache_dir), "created before the port failed")

    async def test_a_cache_directory_the_user_cannot_reach_is_reported_by_twistd(self) -> None:
        _root_only()
        locked = os.path.abspath(self.mktemp())
        os.mkdir(locked, 0o700)
        cache_dir = os.path.join(locked, "cache")
        started = self.daemon(
            f"--cache-dir={cache_dir}", "--listen=tcp:0:interface=127.0.0.1", owner=NOBODY
        )
        await self.assertReported(
            started,
            "cannot open the cache in",
            f"cachetier: cannot open the cache in {cache_dir}: Permission denied",
        )

    async def test_a_bad_option_value_is_one_line_before_forking(self) -> None:
        process, protocol, pidfile, _ = self.daemon(
            f"--cache-dir={self.cache_dir}", "--max-size=10MB"
        )
        reason = await self.ended(process, protocol, within=20)
        output = protocol.output.decode()
        self.assertEqual(reason.exitCode, 2, output)
        self.assertIn("twistd cachetier: --max-size: not a size: '10MB'", output)
        self.assertFalse(os.path.exists(pidfile))
        self.assertFalse(os.path.exists(self.cache_dir))


class SignalTests(TwistdProcessCase):
    async def start(self, *args: str, twistd: tuple[str, ...] = ("-n",)) -> tuple[Any, str]:
        process, protocol = self.spawn(
            f"--cache-dir={self.cache_dir}",
            "--listen=tcp:0:interface=127.0.0.1",
            *args,
            twistd=twistd,
        )
        self.process, self.protocol = process, protocol
        return process, f"http://127.0.0.1:{await protocol.port}/"

    async def test_sighup_reopens_the_logs_after_a_rename(self) -> None:
        logs = os.path.abspath(self.mktemp())
        os.mkdir(logs)
        twistd_log, access_log = os.path.join(logs, "twistd.log"), os.path.join(logs, "access.log")
        process, protocol = self.spawn(
            f"--cache-dir={self.cache_dir}",
            "--listen=tcp:0:interface=127.0.0.1",
            f"--access-log={access_log}",
            twistd=("-n", f"--logfile={twistd_log}"),
        )
        port = await _port_in_log(twistd_log)
        url = f"http://127.0.0.1:{port}/"
        await content(await self.client.get(url + "healthz?before"))
        await _until_in(access_log, "/healthz?before")  # flushed once a second
        # What logrotate does: rename, then signal.
        for path in (twistd_log, access_log):
            os.rename(path, path + ".1")
        process.signalProcess(signal.SIGHUP)
        await _until_in(twistd_log, "SIGHUP: reopened")
        await content(await self.client.get(url + "healthz?after"))
        await _until_in(access_log, "/healthz?after")
        with open(access_log + ".1") as f:
            self.assertIn("/healthz?before", f.read())
        with open(access_log) as f:
            new_access = f.read()
        self.assertIn("/healthz?after", new_access)
        self.assertNotIn("/healthz?before", new_access)
        with open(twistd_log) as f:
            self.assertIn("SIGHUP: reopened 2 log files", f.read())
        self.assertFalse(protocol.ended.called, "SIGHUP must not stop the server")

    async def test_sigusr1_never_kills(self) -> None:
        process, url = await self.start()
        await content(await self.client.get(url + "healthz"))  # started, not only bound
        process.signalProcess(signal.SIGUSR1)
        await _sleep(0.3)
        response = await self.client.get(url + "healthz")
        self.assertEqual(response.code, 200)
        await content(response)
        self.assertIn(b"SIGUSR1", self.protocol.output)

    async def test_sigterm_lets_a_download_finish_and_refuses_new_connections(self) -> None:
        data = body_of(3_000_000)
        self.origin.put("ep.mp3", data)
        self.origin.rate = 1_000_000  # a 3-second download
        process, url = await self.start()  # --shutdown-grace: 30s by default
        response = await self.client.get(url + "files/ep.mp3")
        body = content(response)
        await _sleep(0.5)
        process.signalProcess("TERM")
        # Refused once twistd has seen the signal, however long that takes;
        # one accepted just before is closed unanswered, as draining does,
        # or reset by the kernel if it was still in the listener's queue.
        while True:
            try:
                await content(await self.client.get(url + "healthz"))
            except ConnectionRefusedError:
                break
            except (ResponseNeverReceived, ConnectError):
                pass
            await _sleep(0.05)
        self.assertFalse(self.protocol.ended.called, "stopped with a download in flight")
        self.assertEqual(hashlib.sha256(await body).digest(), hashlib.sha256(data).digest())
        reason = await self.ended(process, self.protocol)
        self.assertEqual(reason.signal, signal.SIGTERM)
        self.assertIn(b"draining 1 connections for up to 30s", self.protocol.output)

    async def test_sigterm_cuts_what_is_left_after_the_grace(self) -> None:
        self.origin.put("ep.mp3", body_of(3_000_000))
        self.origin.rate = 100_000
        process, url = await self.start("--shutdown-grace=0.5s")
        response = await self.client.get(url + "files/ep.mp3")
        body = content(response)
        await _sleep(0.3)
        process.signalProcess("TERM")
        with self.assertRaises(ResponseFailed):
            await body
        await self.ended(process, self.protocol, within=10)


def _root_only() -> None:
    if os.getuid() != 0:
        raise SkipTest("switching users needs root")


def _free_privileged_port() -> int:
    for port in range(1000, 1024):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SkipTest("no free port below 1024")


class PrivilegeTests(TwistdProcessCase):
    def setUp(self) -> None:
        _root_only()
        super().setUp()
        # The cache directory's parent must be reachable by the user.
        os.chmod(os.path.dirname(self.cache_dir), 0o755)

    async def test_uid_and_gid_own_the_cache_directory(self) -> None:
        os.makedirs(os.path.join(self.cache_dir, "tmp"))  # left by a root run
        data = body_of(200_000)
        self.origin.put("ep.mp3", data)
        process, protocol = self.spawn(
            f"--cache-dir={self.cache_dir}",
            "--listen=tcp:0:interface=127.0.0.1",
            twistd=("-n", f"--uid={NOBODY}", f"--gid={NOBODY}"),
        )
        url = f"http://127.0.0.1:{await protocol.port}/"
        response = await self.client.get(url + "files/ep.mp3")
        self.assertEqual((response.code, await content(response)), (200, data))
        for top, dirs, files in os.walk(self.cache_dir):
            for entry in [top, *(os.path.join(top, e) for e in dirs + files)]:
                st = os.stat(entry)
                self.assertEqual((st.st_uid, st.st_gid), (NOBODY, NOBODY), entry)
        self.assertEqual(stat.S_IMODE(os.stat(self.cache_dir).st_mode), 0o700)

    async def test_socket_activation_as_an_unprivileged_user(self) -> None:
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            raise SkipTest("systemd-socket-activate is not installed")
        port = _free_privileged_port()
        data = body_of(100_000)
        self.origin.put("ep.mp3", data)
        process, protocol = self.spawn(
            f"--cache-dir={self.cache_dir}",
            "--listen=systemd:domain=INET:name=http",
            prefix=(activate, f"--listen=127.0.0.1:{port}", "--fdname=http", "-EPYTHONPATH"),
            twistd=("-n", f"--uid={NOBODY}", f"--gid={NOBODY}"),
        )
        for _ in range(100):
            if b"Listening on" in protocol.output:
                break
            await _sleep(0.05)
        # The first connection starts twistd, which takes over the socket.
        response = await self.client.get(f"http://127.0.0.1:{port}/files/ep.mp3")
        self.assertEqual((response.code, await content(response)), (200, data))
        with open(f"/proc/{process.pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        self.assertEqual(set(uids), {str(NOBODY)})
        with socket.socket() as s:
            # Taken: by the socket the server inherited.
            with self.assertRaises(OSError):
                s.bind(("127.0.0.1", port))


class LogsUnderAServiceUserTests(TwistdProcessCase):
    """
    twistd opens C{--logfile} as root, before it switches to C{--uid}:
    every SIGHUP after must still reopen both logs, as that user.
    """

    def setUp(self) -> None:
        _root_only()
        super().setUp()
        os.chmod(os.path.dirname(self.cache_dir), 0o755)

    def directory(self) -> str:
        """
        A directory of the service user's own, as the README says the log
        and pidfile directories must be.
        """
        path = os.path.abspath(self.mktemp())
        os.mkdir(path)
        os.chmod(os.path.dirname(path), 0o755)
        os.chown(path, NOBODY, NOBODY)
        return path

    async def start(self, logs: str, *twistd: str) -> tuple[Any, _Twistd, Callable[[str], Any]]:
        """
        Start twistd as root switching to nobody, logging into C{logs};
        return it, and a request that waits for its access line.
        """
        twistd_log, access_log = os.path.join(logs, "twistd.log"), os.path.join(logs, "access.log")
        process, protocol = self.spawn(
            f"--cache-dir={self.cache_dir}",
            "--listen=tcp:0:interface=127.0.0.1",
            f"--access-log={access_log}",
            twistd=("-n", f"--uid={NOBODY}", f"--gid={NOBODY}", f"--logfile={twistd_log}", *twistd),
        )
        url = f"http://127.0.0.1:{await _port_in_log(twistd_log)}/"

        async def request(mark: str) -> None:
            await content(await self.client.get(url + f"healthz?{mark}"))
            await _until_in(access_log, f"/healthz?{mark}")

        return process, protocol, request

    async def test_a_hup_and_a_rename_then_hup_keep_every_line_in_its_file(self) -> None:
        logs = self.directory()
        twistd_log, access_log = os.path.join(logs, "twistd.log"), os.path.join(logs, "access.log")
        process, protocol, request = await self.start(logs)
        await request("first")
        process.signalProcess(signal.SIGHUP)  # a plain HUP: the same files
        await _until_in(twistd_log, "SIGHUP: reopened 2 log files")
        await request("second")
        for path in (twistd_log, access_log):  # what logrotate does
            os.rename(path, path + ".1")
        process.signalProcess(signal.SIGHUP)
        await _until_in(twistd_log, "SIGHUP: reopened 2 log files")
        await request("third")

        old_access, new_access = _read(access_log + ".1"), _read(access_log)
        self.assertIn("/healthz?first", old_access)
        self.assertIn("/healthz?second", old_access)
        self.assertNotIn("/healthz?third", old_access)
        self.assertNotIn("/healthz?second", new_access)
        old_twistd, new_twistd = _read(twistd_log + ".1"), _read(twistd_log)
        self.assertIn("CacheSite starting on", old_twistd)
        self.assertEqual(old_twistd.count("SIGHUP: reopened 2 log files"), 1)
        self.assertNotIn("CacheSite starting on", new_twistd)
        for path in (twistd_log, access_log):
            self.assertEqual(os.stat(path).st_uid, NOBODY, path)
        self.assertFalse(protocol.ended.called, "SIGHUP must not stop the server")

    async def test_the_contrib_logrotate_entry(self) -> None:
        logrotate = shutil.which("logrotate")
        if logrotate is None:
            raise SkipTest("logrotate is not installed")
        logs, run = self.directory(), self.directory()
        twistd_log, access_log = os.path.join(logs, "twistd.log"), os.path.join(logs, "access.log")
        process, protocol, request = await self.start(logs, f"--pidfile={run}/twistd.pid")
        await request("before")
        config = os.path.abspath(self.mktemp())
        entry = os.path.join(os.path.dirname(__file__), "..", "contrib", "logrotate", "cachetier")
        with open(entry) as f:
            text = f.read()
        with open(config, "w") as f:
            f.write(
                text.replace("/var/log/cachetier", logs)
                .replace("/run/cachetier", run)
                .replace("su cachetier cachetier", f"su {_name(NOBODY)} {_group(NOBODY)}")
            )
        result = await deferToThread(
            subprocess.run,
            [logrotate, "--force", f"--state={config}.state", config],
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr.decode())
        await _until_in(twistd_log, "SIGHUP: reopened 2 log files")
        await request("after")

        rotated = sorted(name for name in os.listdir(logs) if "-" in name)
        self.assertEqual([name.split("-")[0] for name in rotated], ["access.log", "twistd.log"])
        old_access = _read(os.path.join(logs, rotated[0]))
        self.assertIn("/healthz?before", old_access)
        self.assertNotIn("/healthz?after", old_access)
        self.assertNotIn("/healthz?before", _read(access_log))
        self.assertIn("CacheSite starting on", _read(os.path.join(logs, rotated[1])))
        self.assertFalse(protocol.ended.called, "the rotation must not stop the server")


class PidfileUnderAServiceUserTests(TwistdProcessCase):
    """
    twistd writes C{--pidfile} as root and removes it at stop as the
    C{--uid} user, which needs to write in its directory.
    """

    def setUp(self) -> None:
        _root_only()
        super().setUp()
        os.chmod(os.path.dirname(self.cache_dir), 0o755)
        self.run_dir = os.path.abspath(self.mktemp())
        os.mkdir(self.run_dir)
        os.chmod(os.path.dirname(self.run_dir), 0o755)

    def start(self) -> tuple[Any, _Twistd, str]:
        pidfile = os.path.join(self.run_dir, "twistd.pid")
        process, protocol = self.spawn(
            f"--cache-dir={self.cache_dir}",
            "--listen=tcp:0:interface=127.0.0.1",
            twistd=("-n", f"--uid={NOBODY}", f"--gid={NOBODY}", f"--pidfile={pidfile}"),
        )
        return process, protocol, pidfile

    async def test_a_pidfile_the_user_could_not_remove_is_refused(self) -> None:
        process, protocol, pidfile = self.start()  # the run directory is root's
        reason = await self.ended(process, protocol)
        output = protocol.output.decode()
        self.assertEqual(reason.exitCode, 2, output)
        self.assertIn(f"twistd cachetier: --pidfile={pidfile}: uid {NOBODY} could not", output)
        self.assertFalse(os.path.exists(pidfile))
        self.assertFalse(os.path.exists(self.cache_dir))

    async def test_in_the_users_directory_it_is_removed_at_stop(self) -> None:
        os.chown(self.run_dir, NOBODY, NOBODY)
        process, protocol, pidfile = self.start()
        port = await protocol.port
        # Answered: running as nobody, with twistd's signal handlers.
        await content(await self.client.get(f"http://127.0.0.1:{port}/healthz"))
        self.assertTrue(os.path.exists(pidfile))
        process.signalProcess("TERM")
        await self.ended(process, protocol)
        self.assertFalse(os.path.exists(pidfile), protocol.output.decode()[-2000:])


def _name(uid: int) -> str:
    return pwd.getpwuid(uid).pw_name


def _group(gid: int) -> str:
    return grp.getgrgid(gid).gr_name


class ReopenTests(SynchronousTestCase):
    def test_a_log_file_that_cannot_be_reopened_is_kept(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        log_file = LogFile.fromFullPath(os.path.join(directory, "twistd.log"))
        self.addCleanup(log_file.close)
        publisher = LogPublisher(textFileLogObserver(log_file))
        os.rename(directory, directory + ".gone")  # the path can no longer be opened
        self.assertEqual(reopen_twistd_logs(publisher), 0)
        Logger(observer=publisher).info("still logged")
        with open(os.path.join(directory + ".gone", "twistd.log")) as f:
            self.assertIn("still logged", f.read())


class SystemdUnitTests(TestCase):
    def test_the_units_verify(self) -> None:
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed")
        units = os.path.join(os.path.dirname(__file__), "..", "contrib", "systemd")
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        for name in ("cachetier.service", "cachetier.socket"):
            with open(os.path.join(units, name)) as f:
                text = f.read()
            # verify insists that ExecStart's program exists.
            with open(os.path.join(directory, name), "w") as f:
                f.write(text.replace("/opt/cachetier/bin/twistd", twistd))
        result = subprocess.run(
            [analyze, "verify", "--man=no", "cachetier.socket", "cachetier.service"],
            cwd=directory,
            capture_output=True,
            timeout=60,
        )
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 0, output)
        self.assertNotIn("cachetier.s", output, "verify complained about a unit")


class SocketActivatedTLSTests(TwistdProcessCase):
    async def test_tls_on_a_socket_systemd_passes(self) -> None:
        from .test_tls import Chain, _peer_serial

        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            raise SkipTest("systemd-socket-activate is not installed")
        chain = Chain(os.path.abspath(self.mktemp()))
        chain.issue_leaf(serial=4242)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        process, protocol = self.spawn(
            f"--cache-dir={self.cache_dir}",
            f"--listen=systemd:domain=INET:name=https:privateKey={chain.key}"
            f":certKey={chain.fullchain}",
            prefix=(activate, f"--listen=127.0.0.1:{port}", "--fdname=https", "-EPYTHONPATH"),
        )
        for _ in range(100):
            if b"Listening on" in protocol.output:
                break
            await _sleep(0.05)
        # Verified against the root CA alone: the intermediate was sent.
        serial = await deferToThread(_peer_serial, port, chain.ca)
        self.assertEqual(serial, 4242)


class LogFileChownTests(SynchronousTestCase):
    """
    twistd's --logfile is given to --uid without following a symlink: the
    service user owns the log directory (SIGHUP reopens the file as that
    user after logrotate), so it could replace the log with a symlink, and
    root must never give the link's target (/etc/shadow, say) away.
    """

    def test_a_symlinked_log_file_does_not_give_its_target_away(self) -> None:
        if os.getuid() != 0:
            raise SkipTest("needs root, as twistd --uid does")
        top = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(top, "logs"))
        victim = os.path.join(top, "root-only")
        with open(victim, "w") as f:
            f.write("root's\n")
        os.chmod(victim, 0o600)
        path = os.path.join(top, "logs", "twistd.log")
        log_file = LogFile.fromFullPath(path)
        self.addCleanup(log_file.close)
        observer = FileLogObserver(log_file, formatEventAsClassicLogText)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        # What the service user can do in its own log directory:
        os.unlink(path)
        os.symlink(victim, path)
        give_twistd_logs((65534, 65534))
        self.assertEqual(os.stat(victim).st_uid, 0, "root's file given to the service user")
