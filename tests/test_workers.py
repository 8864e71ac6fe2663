"""
C{--workers 2} through a real twistd: one origin download per file across
the processes, serve-while-fill in either, hits from both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from functools import partial
from types import SimpleNamespace
from typing import Any

from treq import content
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site
from twisted.web.static import Data

from cachetier.config import Settings
from cachetier.metrics import Metrics
from cachetier.store import GENERATION_FILE, CacheStore, Generation
from cachetier.web._site import CacheSite
from cachetier.web.proxy import PrimaryProxy, primary_agent
from cachetier.web.worker import Reporter, WorkerFiles, build_worker_root
from cachetier.workers import PublicPorts, WorkersService

from .helpers import (
    body_of,
    child_environment,
    http_client,
    listen,
    listen_backlogs,
    somaxconn,
    start_cachetier,
    start_origin,
)
from .nodes import _TWISTD, _Twistd

_LINE = r'\] 127\.0\.0\.1 - - \[[^]]+\] "GET /files/ep\.mp3 HTTP/1\.1" 200 3000000 "-" "[^"]*" "-"'
WORKER = r"\[cachetier\.worker1#info" + _LINE
PRIMARY = r"\[cachetier\.web\._site#info" + _LINE


TOKEN = "w" * 32


class WorkersTestCase(TestCase):
    """
    A real C{twistd --workers=2}; every request on a new connection, so the
    kernel spreads them over both processes.
    """

    timeout = 90
    extra: tuple[str, ...] = ()

    async def start(self, *extra: str) -> str:
        self.origin, origin_url = start_origin(self)
        self.client = http_client(self)
        self.log_path = os.path.abspath(self.mktemp())
        token_file = os.path.abspath(self.mktemp())
        with open(token_file, "w") as f:
            f.write(TOKEN)
        self.protocol = protocol = _Twistd()
        # Its port is read from the log file here, not from its stdout.
        protocol.port.addErrback(lambda _: None)
        args = _TWISTD + [
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path}",
            "cachetier",
            f"--origin={origin_url}",
            f"--cache-dir={os.path.abspath(self.mktemp())}",
            "--listen=tcp:0:interface=127.0.0.1",
            "--workers=2",
            f"--admin-token-file={token_file}",
            *extra,
        ]
        self.process = process = reactor.spawnProcess(
            protocol, sys.executable, args, env=child_environment()
        )

        async def stop() -> None:
            if not protocol.ended.called:
                process.signalProcess("TERM")
                await protocol.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        for _ in range(200):
            match = re.search(r"CacheSite starting on (\d+)", self.log())
            serving = "worker 1 serving"
            if match and (serving in self.log() or serving.encode() in protocol.output):
                return f"http://127.0.0.1:{match.group(1)}/"
            await deferLater(reactor, 0.05, lambda: None)
        self.fail("twistd --workers=2 did not start:\n" + self.log())

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    async def request(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        response = await self.client.request(method, url, **kwargs)
        return response.code, response.headers, await content(response)

    async def settle(self, url: str, name: str) -> None:
        for _ in range(200):
            _, _, body = await self.request("GET", url + f"api/v1/files/{name}?sync=0")
            if json.loads(body)["state"] == "cached":
                return
            await deferLater(reactor, 0.05, lambda: None)
        self.fail(f"{name} was never cached")

    def served_by_both(self, path: str) -> None:
        log = self.log()
        line = r'#info\] \S+ - - \[[^]]+\] "\S+ ' + re.escape(path)
        self.assertRegex(log, r"\[cachetier\.worker1" + line)
        self.assertRegex(log, r"\[cachetier\.web\._site" + line)


class WorkersTests(WorkersTestCase):
    async def test_two_processes_one_origin_download(self) -> None:
        url = await self.start()
        data = body_of(3_000_000)
        self.origin.put("ep.mp3", data)
        self.origin.rate = 3_000_000
        client = self.client

        async def get() -> bytes:
            response = await client.get(url + "files/ep.mp3")
            return await content(response)

        bodies = await gatherResults([Deferred.fromCoroutine(get()) for _ in range(40)])
        self.assertTrue(all(body == data for body in bodies))
        self.assertEqual(self.origin.counts["ep.mp3"], 1)
        await self.settle(url, "ep.mp3")
        for _ in range(4):
            bodies = await gatherResults([Deferred.fromCoroutine(get()) for _ in range(20)])
            self.assertTrue(all(body == data for body in bodies))
        self.assertEqual(self.origin.counts["ep.mp3"], 1)

        # The worker's misses were relayed to the primary, which followed
        # its one download for them (and logged them, once); afterwards
        # both served hits.
        output = self.log()
        self.assertNotRegex(output, WORKER + " relayed", "logged once, by the primary")
        self.assertRegex(output, PRIMARY + " miss")
        self.assertRegex(output, WORKER + " hit")
        self.assertRegex(output, PRIMARY + " hit")
        worker_pid = int(re.search(r"worker 1 started \(pid (\d+)\)", output).group(1))
        self.process.signalProcess("TERM")
        await self.protocol.ended
        for _ in range(100):
            if not os.path.exists(f"/proc/{worker_pid}"):
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(os.path.exists(f"/proc/{worker_pid}"), "the worker exits with the primary")


class WorkerBacklogTests(WorkersTestCase):
    async def test_every_process_listens_with_the_kernels_cap(self) -> None:
        url = await self.start()
        port = int(url.rsplit(":", 1)[1].strip("/"))
        self.assertEqual(listen_backlogs(port), [somaxconn()] * 2)

    def test_an_explicit_backlog_wins(self) -> None:
        site = Site(Data(b"", "text/plain"))
        public = PublicPorts(["tcp:0:interface=127.0.0.1:backlog=100"], site, reactor, 2)
        public.privilegedStartService()
        self.addCleanup(public.stopService)
        self.assertEqual(listen_backlogs(public.ports[0].getHost().port), [100] * 2)


class WorkerTruthTests(WorkersTestCase):
    async def test_purged_files_are_never_served_by_any_process(self) -> None:
        url = await self.start()
        old = {"small.mp3": body_of(10_240, "old"), "big.mp3": body_of(5 * 1024 * 1024, "old")}
        for name, body in old.items():
            self.origin.put(name, body)
            await self.request("GET", url + "files/" + name)
            await self.settle(url, name)
            for _ in range(10):  # both processes learn of both files
                await self.request("GET", url + "files/" + name)
                await self.request("HEAD", url + "files/" + name)
        old_etags = {name: self.origin.files[name].etag for name in old}
        code, _, _ = await self.request(
            "POST",
            url + "api/v1/purge",
            json={"files": list(old)},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        self.assertEqual(code, 200)
        for name in old:
            self.origin.put(name, body_of(len(old[name]) + 1, "new"))
        for name in old:
            for method, count in (("GET", 50), ("HEAD", 10)):
                for _ in range(count):
                    code, headers, body = await self.request(method, url + "files/" + name)
                    self.assertEqual(code, 200)
                    self.assertNotEqual(headers.getRawHeaders("etag"), [old_etags[name]])
                    if method == "GET":
                        self.assertEqual(body, body_of(len(old[name]) + 1, "new"))
        self.served_by_both("/files/small.mp3")

    async def test_heads_report_the_true_length(self) -> None:
        url = await self.start()
        for n in range(20):
            self.origin.put(f"h{n}.mp3", body_of(100_000 + n))
        for n in range(20):
            code, headers, _ = await self.request("HEAD", url + f"files/h{n}.mp3")
            self.assertEqual(headers.getRawHeaders("content-length"), [str(100_000 + n)], n)
        for n in range(20):
            await self.settle(url, f"h{n}.mp3")
        for n in range(20):
            code, headers, _ = await self.request("HEAD", url + f"files/h{n}.mp3")
            self.assertEqual(headers.getRawHeaders("content-length"), [str(100_000 + n)], n)

    async def test_metrics_count_every_process(self) -> None:
        url = await self.start()
        self.origin.put("a.mp3", body_of(1000))
        await self.request("GET", url + "files/a.mp3")
        await self.settle(url, "a.mp3")
        for _ in range(200):
            await self.request("GET", url + "files/a.mp3")
        await deferLater(reactor, 1.5, lambda: None)
        self.served_by_both("/files/a.mp3")
        totals = []
        for _ in range(6):
            _, _, body = await self.request("GET", url + "metrics")
            match = re.search(rb"^cachetier_http_requests_total (\S+)$", body, re.M)
            self.assertIsNotNone(match, body[:2000])
            totals.append(float(match.group(1)))
        # Each scrape counts itself; nothing else differs between them, and
        # nothing is counted twice: 200 hits, the miss, the status calls.
        self.assertGreaterEqual(totals[0], 200)
        self.assertLess(totals[0], 300)
        self.assertLessEqual(max(totals) - min(totals), len(totals))

    async def test_connections_are_answered_while_a_worker_is_down(self) -> None:
        url = await self.start()
        pid = int(re.search(r"worker 1 started \(pid (\d+)\)", self.log()).group(1))
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if "restarting it in 1s" in self.log():
                break
            await deferLater(reactor, 0.02, lambda: None)
        for n in range(20):
            code, _, _ = await self.request("GET", url + f"healthz?down-{n}")
            self.assertEqual(code, 200)
        # Had a dead worker's socket gone unanswered, about half of these
        # would have waited there for its restart a second later, and been
        # answered by the new worker: the primary answered them all.  (Who
        # answered, not how fast: a loaded machine can take 0.9 s for 20.)
        line = r'#info\] \S+ - - \[[^]]+\] "GET /healthz\?down-'
        for _ in range(200):
            if len(re.findall(line, self.log())) == 20:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(re.findall(r"\[cachetier\.web\._site" + line, self.log())), 20)

    async def test_workers_log_into_twistds_log(self) -> None:
        url = await self.start()
        self.origin.put("a.mp3", body_of(1000))
        await self.request("GET", url + "files/a.mp3")
        await self.settle(url, "a.mp3")
        for _ in range(20):
            await self.request("GET", url + "files/a.mp3")
        self.served_by_both("/files/a.mp3")
        # Relayed requests are logged once, by the primary, with the
        # listener's address.
        self.assertNotRegex(self.log(), r"worker1#info\] GET /api/")


def worker_of(test: TestCase, cache: Any) -> tuple[WorkerFiles, Any]:
    """
    A worker's files over C{cache}'s store, relaying to its site over a
    private UNIX socket as a real worker does, and the agent it relays with.
    """
    socket_path = os.path.join(tempfile.mkdtemp(), "primary.sock")
    port = reactor.listenUNIX(socket_path, cache.site)
    test.addCleanup(port.stopListening)
    agent = primary_agent(reactor, socket_path)
    test.addCleanup(agent._pool.closeCachedConnections)
    files = WorkerFiles(
        CacheStore(cache.store.root),
        Generation(os.path.join(cache.store.root, GENERATION_FILE)),
        reactor,
        PrimaryProxy(agent),
        60,
        partial(deferToThreadPool, reactor, reactor.getThreadPool()),
    )
    return files, agent


async def _until_served_here(test: TestCase, files: WorkerFiles, url: str, name: str) -> None:
    """
    Ask the worker at C{url} for C{name} until it serves it itself (its
    first requests go to the primary while it reads the metadata).
    """
    client = http_client(test)
    for _ in range(100):
        response = await client.get(url + "files/" + name)
        await content(response)
        if name in files.touched:
            return
        await deferLater(reactor, 0.02, lambda: None)
    test.fail(f"the worker never served {name} itself")


class WorkerVaryTests(TestCase):
    async def test_a_request_with_a_header_the_file_varies_by_goes_to_the_primary(self) -> None:
        """
        The plain copy of a file that varies (S3's CORS Vary) answers only
        requests without the headers it names: a browser's request with
        Origin is the primary's to answer, from the variant that carries
        Access-Control-Allow-Origin.
        """
        origin, origin_url = start_origin(self)
        cache, _ = start_cachetier(self, origin_url)
        files, _ = worker_of(self, cache)
        worker = listen(self, CacheSite(build_worker_root(files), Metrics(), reactor=reactor))
        worker_url = f"http://127.0.0.1:{worker.getHost().port}/"
        origin.put("ep.mp3", body_of(100_000), cors=True)
        await cache.syncer.start("ep.mp3").when_done()
        await _until_served_here(self, files, worker_url, "ep.mp3")
        site = "https://podcast.example"
        response = await http_client(self).get(
            worker_url + "files/ep.mp3", headers={"Origin": site}
        )
        self.assertEqual(await content(response), body_of(100_000))
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), [site])


class WorkerLRUTests(TestCase):
    async def test_hits_only_a_worker_saw_move_the_primarys_lru(self) -> None:
        origin, origin_url = start_origin(self)
        cache, cache_url = start_cachetier(self, origin_url)
        files, agent = worker_of(self, cache)
        worker_metrics = Metrics()
        worker = listen(self, CacheSite(build_worker_root(files), worker_metrics, reactor=reactor))
        worker_url = f"http://127.0.0.1:{worker.getHost().port}/"
        for name in ("a.mp3", "b.mp3", "c.mp3"):
            origin.put(name, body_of(100_000, name))
            await cache.syncer.start(name).when_done()
        await _until_served_here(self, files, worker_url, "a.mp3")
        files.touched.clear()
        client = http_client(self)
        for name in ("b.mp3", "c.mp3"):
            await content(await client.get(cache_url + "files/" + name))
        self.assertEqual(cache.store.names(), ["a.mp3", "b.mp3", "c.mp3"])
        for _ in range(3):
            response = await client.get(worker_url + "files/a.mp3")
            self.assertEqual(await content(response), body_of(100_000, "a.mp3"))
        self.assertEqual(cache.store.names()[0], "a.mp3", "the primary saw nothing yet")
        await Reporter(files, worker_metrics, agent, reactor).report()
        self.assertEqual(cache.store.names(), ["b.mp3", "c.mp3", "a.mp3"])
        self.assertGreaterEqual(_total(cache.site.metrics, "requests", {"outcome": "hit"}), 3)


class WorkerMetadataTests(TestCase):
    async def test_metadata_is_read_off_the_reactor_thread(self) -> None:
        """
        Defect 11 (workers): after a generation bump a worker read each
        name's metadata on its reactor thread, stalling every listener of
        that process while the disk was slow.
        """
        origin, origin_url = start_origin(self)
        cache, _ = start_cachetier(self, origin_url)
        files, _ = worker_of(self, cache)
        worker = listen(self, CacheSite(build_worker_root(files), Metrics(), reactor=reactor))
        worker_url = f"http://127.0.0.1:{worker.getHost().port}/"
        for name in ("a.mp3", "b.mp3"):
            origin.put(name, body_of(100_000, name))
            await cache.syncer.start(name).when_done()
        reads: list[tuple[str, bool]] = []
        read = files.store.read

        def recorded(name: str) -> Any:
            reads.append((name, threading.current_thread() is threading.main_thread()))
            return read(name)

        files.store.read = recorded  # type: ignore[method-assign]
        await _until_served_here(self, files, worker_url, "a.mp3")
        cache.syncer.purge("b.mp3")
        files.touched.clear()
        await _until_served_here(self, files, worker_url, "a.mp3")
        self.assertGreaterEqual(len(reads), 2, "read again after the generation moved")
        self.assertEqual([name for name, on_reactor in reads if on_reactor], [])


def _total(metrics: Metrics, attr: str, labels: dict[str, str]) -> float:
    key = (attr, tuple(sorted(labels.items())))
    return metrics.counter_values().get(key, 0.0)


class InternalTrafficTests(TestCase):
    async def test_a_workers_reports_are_neither_logged_nor_counted(self) -> None:
        origin, origin_url = start_origin(self)
        cache, _ = start_cachetier(self, origin_url)
        paths: list[bytes] = []
        cache.site.access_log = lambda request: paths.append(request.path)
        files, agent = worker_of(self, cache)
        worker_metrics = Metrics()
        reporter = Reporter(files, worker_metrics, agent, reactor)
        primary = cache.site.metrics
        for second in range(1, 4):
            worker_metrics.http_requests.inc()
            worker_metrics.bytes_served.inc(1000)
            await reporter.report()
            # Only what the worker served, reported.
            self.assertEqual(_total(primary, "http_requests", {}), second)
            self.assertEqual(_total(primary, "bytes_served", {}), 1000 * second)
        self.assertEqual(paths, [])


class _SpawningClock(Clock):
    """
    A clock that records the processes it is asked to spawn.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Any] = []

    def spawnProcess(self, protocol: Any, *args: Any, **kwargs: Any) -> Any:
        self.spawned.append(protocol)
        return SimpleNamespace(pid=1000 + len(self.spawned))

    def listenUNIX(self, path: str, factory: Any, mode: int) -> Any:
        return SimpleNamespace(stopListening=lambda: None)


class RestartTests(SynchronousTestCase):
    def test_a_crashing_worker_is_restarted_with_back_off(self) -> None:
        clock = _SpawningClock()
        public = PublicPorts([], None, clock, copies=2)
        service = WorkersService(clock, 2, public, None, Settings(origin="http://127.0.0.1:9/"))
        service.startService()
        self.addCleanup(shutil.rmtree, os.path.dirname(service.primary_socket))
        delays = []
        for _ in range(9):
            protocol = clock.spawned[-1]
            protocol.processEnded(Failure(ProcessTerminated(exitCode=1)))
            (call,) = clock.getDelayedCalls()
            delays.append(call.getTime() - clock.seconds())
            clock.advance(delays[-1])
        self.assertEqual(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60])
        # A worker that ran for a minute starts the count anew.
        clock.advance(60)
        clock.spawned[-1].processEnded(Failure(ProcessTerminated(exitCode=1)))
        (call,) = clock.getDelayedCalls()
        self.assertEqual(call.getTime() - clock.seconds(), 1)
        self.flushLoggedErrors()


class InternalOutcomeCountedTests(TestCase):
    """
    A worker's reports and relayed requests are counted once, by the
    primary, even now that an outcome counts as its response starts: never
    as cachetier_requests_total{outcome="internal"} or {outcome="relayed"}.
    """

    async def test_a_workers_reports_are_not_counted_as_requests(self) -> None:
        origin, origin_url = start_origin(self)
        cache, _ = start_cachetier(self, origin_url)
        files, agent = worker_of(self, cache)
        worker_metrics = Metrics()
        reporter = Reporter(files, worker_metrics, agent, reactor)
        primary = cache.site.metrics
        for _ in range(3):
            worker_metrics.bytes_served.inc(1000)
            await reporter.report()
        self.assertEqual(_total(primary, "requests", {"outcome": "internal"}), 0)


class RelayedOutcomeCountedTests(WorkersTestCase):
    async def test_relayed_requests_are_counted_once(self) -> None:
        url = await self.start()
        for n in range(20):
            self.origin.put(f"m{n}.mp3", body_of(1000))
            await self.request("GET", url + f"files/m{n}.mp3")  # misses: relayed by a worker
        await deferLater(reactor, 1.5, lambda: None)  # the worker's report
        _, _, body = await self.request("GET", url + "metrics")
        match = re.search(rb'^cachetier_requests_total\{outcome="relayed"\} (\S+)$', body, re.M)
        self.assertIsNone(match, match and match.group(0))
