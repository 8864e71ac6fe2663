"""
Command-line options: every bad value is refused, naming its flag.  The
service they make: the listeners, the cache, its flushes, the workers.
"""

from __future__ import annotations

import os
import resource
from types import SimpleNamespace

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactor
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site
from twisted.web.static import Data

from cachetier.assembly import Assembly
from cachetier.config import Settings, default_backlog
from cachetier.config.flags import StartupFailure
from cachetier.metrics import Metrics
from cachetier.service import CacheService, listener
from cachetier.tap import Options, listen_endpoint, makeService, makeWorkerService
from cachetier.workers import PublicPorts, WorkersService

from .helpers import listen_backlogs, make_tls_certificate, somaxconn

ORIGIN = "--origin=http://127.0.0.1:9/"


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions([ORIGIN, f"--cache-dir={self.mktemp()}", *args])
        return options

    def assertRefused(self, flag: str, *args: str) -> None:
        with self.assertRaises(UsageError) as caught:
            self.parse(*args)
        self.assertIn(flag, str(caught.exception))

    def test_defaults(self) -> None:
        settings = self.parse()["settings"]
        self.assertEqual(settings.origin, "http://127.0.0.1:9/")
        self.assertEqual(settings.listen, ("tcp:8080",))
        self.assertEqual(
            (settings.miss, settings.ttl, settings.stale_if_error), ("stream", 86400, 604800)
        )

    def test_values(self) -> None:
        settings = self.parse(
            "--listen=tcp:8081",
            "--listen=tcp:8082:interface=127.0.0.1",
            "--max-size=300M",
            "--min-free=1G",
            "--ttl=10m",
            "--miss=redirect",
        )["settings"]
        self.assertEqual(settings.listen, ("tcp:8081", "tcp:8082:interface=127.0.0.1"))
        self.assertEqual((settings.max_size, settings.min_free), (300 * 2**20, 2**30))
        self.assertEqual((settings.ttl, settings.miss), (600.0, "redirect"))

    def test_bad_values_name_their_flag(self) -> None:
        with self.assertRaises(UsageError) as caught:
            Options().parseOptions([])
        self.assertIn("--origin", str(caught.exception))
        self.assertRefused("--origin", "--origin=ftp://x/")
        self.assertRefused("--listen", "--listen=tcp:notaport")
        self.assertRefused("--listen", "--listen=ssl:8443:privateKey=/nonexistent.pem")
        self.assertRefused("--miss", "--miss=sometimes")
        self.assertRefused("--max-concurrent-syncs", "--max-concurrent-syncs=0")
        self.assertRefused("--origin-timeout", "--origin-timeout=soon")
        self.assertRefused("--max-size", "--max-size=lots")
        self.assertRefused("--public-url", "--public-url=cdn.example.com")
        self.assertRefused("--admin-token-file", "--admin-token-file=/nonexistent")

    def test_a_listen_in_another_servers_words_gets_twisteds(self) -> None:
        for given, meant in [
            ("8080", "tcp:8080"),
            ("127.0.0.1:8080", "tcp:8080:interface=127.0.0.1"),
            ("[::1]:8080", "tcp6:8080:interface=\\:\\:1"),
            ("http:80", "tcp:80"),
        ]:
            with self.assertRaises(UsageError) as caught:
                self.parse(f"--listen={given}")
            message = str(caught.exception)
            self.assertTrue(message.startswith(f"--listen {given!r}: "), message)
            self.assertTrue(message.endswith(f" (did you mean {meant}?)"), message)

    def test_settings_that_cannot_work_are_refused(self) -> None:
        self.assertRefused("--max-size", "--max-size=0")
        self.assertRefused("--max-size", "--max-size=10MB")
        self.assertRefused("--max-size", "--max-size=1M")
        self.assertRefused("--min-free", "--min-free=999999T")
        for flag in ("origin-timeout", "idle-timeout", "send-timeout", "queue-timeout"):
            self.assertRefused(f"--{flag}", f"--{flag}=0s")
        self.assertRefused("--max-object-size", "--max-object-size=0")
        self.assertRefused("--listen", "--listen=tcp:99999")
        self.assertRefused("--trusted-proxy", "--trusted-proxy=somewhere")
        self.assertRefused("--cache-dir", "--cache-dir=/proc/nope")
        settings = self.parse("--max-size=2GiB", "--trusted-proxy=10.0.0.0/8")["settings"]
        self.assertEqual(settings.max_size, 2 << 30)
        self.assertEqual([str(n) for n in settings.trusted_proxies], ["10.0.0.0/8"])

    def test_impossible_cache_dir_is_refused(self) -> None:
        a_file = self.mktemp()
        open(a_file, "w").close()
        with self.assertRaises(UsageError) as caught:
            Options().parseOptions([ORIGIN, f"--cache-dir={a_file}/cache"])
        self.assertIn("--cache-dir", str(caught.exception))
        self.assertFalse(os.path.exists(f"{a_file}/cache"))

    def test_admin_token_from_a_file_never_shows_in_repr(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("a-long-enough-admin-token\n")
        settings = self.parse(f"--admin-token-file={path}")["settings"]
        self.assertEqual(settings.admin_token, b"a-long-enough-admin-token")
        self.assertNotIn("a-long-enough-admin-token", repr(settings))

    def test_short_admin_token_is_refused(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("short")
        self.assertRefused("--admin-token-file", f"--admin-token-file={path}")

    def test_admin_token_from_the_environment(self) -> None:
        os.environ["CACHETIER_ADMIN_TOKEN"] = "token-from-the-environment"
        self.addCleanup(os.environ.pop, "CACHETIER_ADMIN_TOKEN")
        self.assertEqual(self.parse()["settings"].admin_token, b"token-from-the-environment")

    def test_access_log_choices(self) -> None:
        self.assertIsNone(self.parse()["settings"].access_log)
        self.assertEqual(self.parse("--access-log=off")["settings"].access_log, "off")
        self.assertRefused("--access-log", "--access-log=/nonexistent/dir/access.log")


class HelpTests(SynchronousTestCase):
    def test_the_help_reads_as_plain_words(self) -> None:
        options = Options()
        for name, doc in options.docs.items():
            self.assertNotIn("  ", doc or "", name)
        self.assertNotRegex(str(options), r"[CLI]\{", "epytext markup in the help")


class _Unflushable:
    def flush(self) -> None:
        raise OSError(28, "No space left on device")


class MakeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        # makeService raises the open-files limit, as twistd would.
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, limits)

    def service(self, *args: str) -> MultiService:
        options = Options()
        options.parseOptions([ORIGIN, f"--cache-dir={self.mktemp()}", *args])
        return makeService(options, MemoryReactor())

    def test_listeners_cache_flushes(self) -> None:
        service = self.service("--listen=tcp:0", "--listen=tcp:0:interface=127.0.0.1")
        kinds = [type(child) for child in service]
        self.assertEqual(
            kinds,
            [StreamServerEndpointService, StreamServerEndpointService, CacheService, TimerService],
        )

    def test_with_workers_the_workers_too(self) -> None:
        service = self.service("--listen=tcp:0", "--workers=2")
        kinds = [type(child) for child in service]
        self.assertEqual(kinds, [PublicPorts, CacheService, TimerService, WorkersService])

    def test_a_worker_has_the_same_cache_and_flushes_and_reports(self) -> None:
        service = makeWorkerService(
            Settings(origin="http://127.0.0.1:9/"), "/nonexistent.sock", [], MemoryReactor()
        )
        self.assertEqual(
            [type(child) for child in service], [CacheService, TimerService, TimerService]
        )

    def test_a_port_that_cannot_be_bound_is_one_line(self) -> None:
        busy = CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use"))
        endpoint = SimpleNamespace(listen=lambda factory: fail(busy))
        service = listener("tcp:8080:interface=127.0.0.1", endpoint, None)  # type: ignore
        with self.assertRaises(StartupFailure) as caught:
            service.privilegedStartService()
        # What twistd's waiting parent prints (an Exception's text), and
        # the line the process ends with (a SystemExit's code).
        self.assertIsInstance(caught.exception, Exception)
        self.assertEqual(
            str(caught.exception),
            "cannot listen on tcp:8080:interface=127.0.0.1: Address already in use",
        )
        self.assertEqual(
            caught.exception.code,
            "cachetier: cannot listen on tcp:8080:interface=127.0.0.1: Address already in use",
        )

    def test_a_failed_flush_is_logged_and_the_next_one_runs(self) -> None:
        site = SimpleNamespace(metrics=Metrics())
        assembly = Assembly(None, None, site, None, access_file=_Unflushable())  # type: ignore
        assembly.flush()
        assembly.flush()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)


class BacklogTests(TestCase):
    """
    A burst of new connections waits in the kernel's queue, not in SYN
    retries: listeners take the kernel's cap as their backlog.
    """

    def descriptions(self, extra: str = "") -> list[str]:
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        key, cert, _ = make_tls_certificate(directory)
        return [
            "tcp:0:interface=127.0.0.1" + extra,
            f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}" + extra,
        ]

    async def backlog(self, description: str) -> list[int]:
        endpoint, _ = listen_endpoint(reactor, description)
        port = await endpoint.listen(Site(Data(b"", "text/plain")))
        self.addCleanup(port.stopListening)
        return listen_backlogs(port.getHost().port)

    async def test_by_default_the_kernels_cap(self) -> None:
        for description in self.descriptions():
            self.assertEqual(await self.backlog(description), [somaxconn()], description)

    async def test_an_explicit_backlog_wins(self) -> None:
        for description in self.descriptions(":backlog=100"):
            self.assertEqual(await self.backlog(description), [100], description)

    def test_without_the_kernels_cap_that_of_nginx(self) -> None:
        self.assertEqual(default_backlog(), somaxconn())
        self.assertEqual(default_backlog(os.path.abspath(self.mktemp())), 511)
