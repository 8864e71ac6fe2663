"""
The fail-open client never sends a listener to a dead node: a remembered
"cached" answer is used only while its node is known alive.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import server

from cachetier.client import AsyncioCacheTierClient, BlockingCacheTierClient, CacheTierClient
from cachetier.client._policy import Policy

from .helpers import body_of, child_environment, listen, start_origin
from .nodes import _TWISTD, _Twistd
from .test_client import _Node, run_asyncio, status_json
from .test_client_policy import status

NODE = "http://node.test/"


class LivenessPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = 0.0
        self.policy = Policy([NODE], lambda: self.now, liveness_interval=2.0, request_timeout=1.0)
        self.policy.succeeded(NODE, "a", status("a", True))

    def test_a_positive_answer_lasts_only_while_its_node_is_known_alive(self) -> None:
        self.now = 3.0
        self.assertTrue(self.policy.cached("a").available)
        self.now = 3.01
        self.assertIsNone(self.policy.cached("a"))
        self.policy.probe_succeeded(NODE)
        self.assertTrue(self.policy.cached("a").available)

    def test_a_failed_probe_drops_the_nodes_positives_at_once(self) -> None:
        self.policy.succeeded(NODE, "b", status("b", False))
        self.policy.failed(NODE)
        self.assertIsNone(self.policy.cached("a"))
        self.assertFalse(self.policy.cached("b").available, "negatives stay")
        self.assertIsNone(self.policy.choose("a"), "breaker open: no one to ask")

    def test_one_probe_per_node_per_interval(self) -> None:
        self.assertFalse(self.policy.probe_due(NODE), "a lookup just proved it alive")
        self.now = 2.0
        self.assertTrue(self.policy.probe_due(NODE))
        self.assertFalse(self.policy.probe_due(NODE), "already claimed")
        self.policy.probe_succeeded(NODE)
        self.now = 3.9
        self.assertFalse(self.policy.probe_due(NODE))
        self.now = 4.0
        self.assertTrue(self.policy.probe_due(NODE))


class TwistedLivenessClockTests(SynchronousTestCase):
    def test_a_node_that_stops_answering_gets_no_more_listeners(self) -> None:
        clock = Clock()
        node = _Node(status_json("a", True), clock=clock)
        treq = StubTreq(node)
        client = CacheTierClient(
            NODE, reactor=clock, http_client=treq, request_timeout=1.0, local_cache_time=120
        )
        self.addCleanup(client.close)
        d = client.verify_file("a")
        treq.flush()
        self.assertIs(self.successResultOf(d), True)
        answers = []
        node.delay = 3600  # frozen: accepts, never answers
        for _ in range(16):  # 4 s, a call every 0.25 s
            clock.advance(0.25)
            treq.flush()
            answers.append(self.successResultOf(client.verify_file("a")))
        # Known alive at 0; probed at 2, which times out at 3.
        self.assertEqual(answers[:11], [True] * 11)
        self.assertEqual(answers[12:], [False] * 4)
        self.assertEqual(node.calls, 1, "no status call while its breaker is open")


class _Server:
    """
    A real C{twistd -n cachetier} to kill and freeze.
    """

    def __init__(self, test: TestCase, origin_url: str) -> None:
        self.protocol = _Twistd()
        args = _TWISTD + [
            "-n",
            "--pidfile=",
            "cachetier",
            f"--origin={origin_url}",
            f"--cache-dir={os.path.abspath(test.mktemp())}",
            "--listen=tcp:0:interface=127.0.0.1",
        ]
        self.process = reactor.spawnProcess(self.protocol, args[0], args, env=child_environment())
        test.addCleanup(self.stop)

    async def url(self) -> str:
        return f"http://127.0.0.1:{await self.protocol.port}/"

    def signal(self, name: str) -> None:
        os.kill(self.process.pid, getattr(signal, name))

    async def stop(self) -> None:
        if not self.protocol.ended.called:
            self.signal("SIGCONT")
            self.process.signalProcess("KILL")
            await self.protocol.ended


def poll(ask: Callable[[], bool], seconds: float) -> list[tuple[float, bool]]:
    """
    Call C{ask} every 0.25 s for C{seconds}; (elapsed, answer) pairs.
    """
    started = time.monotonic()
    answers = []
    while (elapsed := time.monotonic() - started) < seconds:
        answers.append((elapsed, ask()))
        time.sleep(max(0.0, 0.25 - (time.monotonic() - started - elapsed)))
    return answers


class LiveNodeTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.origin, origin_url = start_origin(self)
        self.origin.put("a.mp3", body_of(1000))
        self.server = _Server(self, origin_url)
        self.url = await self.server.url()
        # The file is cached there.
        client = BlockingCacheTierClient(self.url)
        for _ in range(100):
            if await deferToThread(client.refresh_status_from_server, "a.mp3"):
                break
            await deferLater(reactor, 0.05, lambda: None)

    def first_false(self, answers: list[tuple[float, bool]]) -> float:
        falses = [t for t, answer in answers if not answer]
        self.assertTrue(falses, answers)
        self.assertTrue(all(not answer for t, answer in answers if t >= falses[0]), answers)
        return falses[0]

    async def test_blocking_client_after_sigkill(self) -> None:
        client = BlockingCacheTierClient(self.url, request_timeout=1.0, local_cache_time=120)
        self.assertTrue(await deferToThread(client.verify_file, "a.mp3"))
        self.server.signal("SIGKILL")
        answers = await deferToThread(poll, lambda: client.verify_file("a.mp3"), 5.0)
        self.assertLessEqual(self.first_false(answers), 4.0)

    async def test_blocking_client_after_sigstop_and_sigcont(self) -> None:
        client = BlockingCacheTierClient(self.url, request_timeout=1.0, local_cache_time=120)
        self.assertTrue(await deferToThread(client.verify_file, "a.mp3"))
        self.server.signal("SIGSTOP")
        answers = await deferToThread(poll, lambda: client.verify_file("a.mp3"), 5.0)
        self.assertLessEqual(self.first_false(answers), 4.0)
        self.server.signal("SIGCONT")
        answers = await deferToThread(poll, lambda: client.verify_file("a.mp3"), 5.0)
        back = [t for t, answer in answers if answer]
        self.assertTrue(back, answers)
        # The liveness probe closes the breaker: no need to wait out its
        # cool-off (10 s by default).
        self.assertLessEqual(back[0], 4.0)

    async def test_twisted_client_after_sigkill(self) -> None:
        client = CacheTierClient(self.url, request_timeout=1.0, local_cache_time=120)
        self.addCleanup(client.close)
        self.assertTrue(await client.verify_file("a.mp3"))
        self.server.signal("SIGKILL")
        started = reactor.seconds()
        answers = []
        while reactor.seconds() - started < 5.0:
            answers.append((reactor.seconds() - started, await client.verify_file("a.mp3")))
            await deferLater(reactor, 0.25, lambda: None)
        self.assertLessEqual(self.first_false(answers), 4.0)

    async def test_asyncio_client_after_sigkill(self) -> None:
        url, kill = self.url, self.server.signal

        async def scenario() -> list[tuple[float, bool]]:
            client = AsyncioCacheTierClient(url, request_timeout=1.0, local_cache_time=120)
            assert await client.verify_file("a.mp3")
            reactor.callFromThread(kill, "SIGKILL")
            started = time.monotonic()
            answers = []
            while time.monotonic() - started < 5.0:
                answers.append((time.monotonic() - started, await client.verify_file("a.mp3")))
                await asyncio.sleep(0.25)
            await client.close()
            return answers

        answers = await run_asyncio(scenario)
        self.assertLessEqual(self.first_false(answers), 4.0)


class ProbeCountTests(TestCase):
    async def test_a_busy_page_probes_each_node_once_an_interval(self) -> None:
        node = _Node(status_json("a.mp3", True))
        port = listen(self, server.Site(node))
        url = f"http://127.0.0.1:{port.getHost().port}/"

        def page() -> None:
            client = BlockingCacheTierClient(url, liveness_interval=1.0)
            client.verify_file("a.mp3")  # the answer is remembered
            threads = [
                threading.Thread(target=poll, args=(lambda: client.verify_file("a.mp3"), 3.0))
                for _ in range(25)
            ]  # 25 threads, 4 calls a second each: 100 lookups a second
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        await deferToThread(page)
        self.assertEqual(node.calls, 1)
        self.assertGreaterEqual(node.probes, 2)
        self.assertLessEqual(node.probes, 3)
        # The Twisted client, on a clock: the same 3 s of lookups.
        clock = Clock()
        treq = StubTreq(node)
        twisted = CacheTierClient(NODE, reactor=clock, http_client=treq, liveness_interval=1.0)
        self.addCleanup(twisted.close)
        before = node.probes
        while clock.seconds() < 3.0:
            for _ in range(25):
                lookup = twisted.verify_file("a.mp3")
                treq.flush()
                self.successResultOf(lookup)
            clock.advance(0.25)
        self.assertLessEqual(node.probes - before, 4)
