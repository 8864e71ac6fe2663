"""
The three clients against a live cachetier and against nodes that fail in
every way, over real loopback sockets; the Twisted client's timings with a
Clock.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import attrs
from treq import content
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import server
from twisted.web.resource import Resource

from cachetier.client import (
    AsyncioCacheTierClient,
    BlockingCacheTierClient,
    CacheException,
    CacheTierClient,
    FileStatus,
)

from .helpers import body_of, filled, http_client, listen, start_cachetier, start_origin


class _Node(Resource):
    """
    A cache tier node that answers every status call with C{body} and
    C{code}, after C{delay} seconds; C{/healthz} the same way, with a
    health body.

    @ivar calls: status calls.
    @ivar probes: liveness probes (C{/healthz}).
    """

    isLeaf = True

    def __init__(
        self, body: bytes, code: int = 200, delay: float = 0.0, clock: Any = reactor
    ) -> None:
        super().__init__()
        self.body, self.code, self.delay = body, code, delay
        self.clock = clock
        self.calls = 0
        self.probes = 0

    def render_GET(self, request: Any) -> bytes | int:
        body = self.body
        if request.path.endswith(b"/healthz"):
            self.probes += 1
            body = b'{"status": "ok"}' if self.code == 200 else b'{"status": "failing"}'
        else:
            self.calls += 1
        request.setResponseCode(self.code)
        if not self.delay:
            return body
        call = self.clock.callLater(self.delay, lambda: (request.write(body), request.finish()))
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return server.NOT_DONE_YET


class _Silent(Protocol):
    """
    Accepts the connection and never answers.
    """


class _CountedSilence(Factory):
    """
    L{_Silent} connections, and the client port of each, in the order the
    server accepted them.
    """

    protocol = _Silent

    def __init__(self) -> None:
        self.peers: list[int] = []

    def buildProtocol(self, addr: Any) -> Protocol | None:
        self.peers.append(addr.port)
        return super().buildProtocol(addr)


def status_json(name: str, available: bool) -> bytes:
    return json.dumps(
        {
            "file": name,
            "available": available,
            "state": "cached" if available else "syncing",
            "download_url": f"http://node/files/{name}",
        }
    ).encode()


def run_asyncio(coroutine_function: Any, *args: Any) -> Any:
    """
    Run an asyncio coroutine in a thread with its own event loop, while the
    reactor serves.
    """
    return deferToThread(lambda: asyncio.run(coroutine_function(*args)))


class LiveServerTests(TestCase):
    def setUp(self) -> None:
        self.origin, origin_url = start_origin(self)
        self.cache, self.url = start_cachetier(self, origin_url)
        self.origin.put("ep/1.mp3", body_of(200_000))

    async def cached(self, name: str) -> None:
        fill = self.cache.syncer.fill_for(name)
        if fill is not None:
            await fill.when_done()

    async def test_blocking_client(self) -> None:
        client = BlockingCacheTierClient(self.url, local_cache_time=60, negative_cache_time=0.01)
        self.assertFalse(await deferToThread(client.verify_file, "ep/1.mp3"), "syncing")
        await self.cached("ep/1.mp3")
        time.sleep(0.02)
        self.assertTrue(await deferToThread(client.verify_file, "ep/1.mp3"))
        self.assertEqual(client.build_download_url("ep/1.mp3"), self.url + "files/ep/1.mp3")
        status = await deferToThread(client.file_status, "ep/1.mp3")
        self.assertEqual((status.state, status.size), ("cached", 200_000))
        self.assertFalse(client.is_stale("ep/1.mp3"))
        self.assertFalse(await deferToThread(client.verify_file, "missing.mp3"))
        self.assertEqual(self.origin.counts["ep/1.mp3"], 1)
        with self.assertRaises(CacheException):
            client.verify_file("")

    async def test_twisted_client(self) -> None:
        client = CacheTierClient(self.url, local_cache_time=60, negative_cache_time=0.01)
        self.addCleanup(client.close)
        self.assertFalse(await client.verify_file("ep/1.mp3"))
        await self.cached("ep/1.mp3")
        time.sleep(0.02)
        self.assertTrue(await client.verify_file("ep/1.mp3"))
        status = await client.file_status("ep/1.mp3")
        self.assertEqual(status.download_url, self.url + "files/ep/1.mp3")
        missing = await client.file_status("missing.mp3")
        self.assertEqual(missing.state, "syncing")
        fill = self.cache.syncer.fill_for("missing.mp3")
        if fill is not None:
            await fill.when_done().addErrback(lambda _: None)
        self.assertEqual((await client.refresh_status_from_server("missing.mp3")), False)
        self.assertEqual((await client.file_status("missing.mp3")).state, "not_found")

    async def test_asyncio_client(self) -> None:
        async def scenario(url: str) -> tuple[bool, bool, str]:
            client = AsyncioCacheTierClient(url, local_cache_time=60, negative_cache_time=0.01)
            first = await client.verify_file("ep/1.mp3")
            for _ in range(100):
                await asyncio.sleep(0.02)
                if await client.refresh_status_from_server("ep/1.mp3"):
                    break
            later = await client.verify_file("ep/1.mp3")
            await client.close()
            return first, later, client.build_download_url("ep/1.mp3")

        first, later, url = await run_asyncio(scenario, self.url)
        self.assertEqual((first, later, url), (False, True, self.url + "files/ep/1.mp3"))
        self.assertEqual(self.origin.counts["ep/1.mp3"], 1)


class FileStatusTests(TestCase):
    """
    C{file_status()} gives what the status API says, every field of it,
    through each of the three clients.
    """

    def setUp(self) -> None:
        self.origin, origin_url = start_origin(self)
        self.cache, self.url = start_cachetier(self, origin_url)
        self.origin.put("ep/1.mp3", body_of(20_000), content_type="audio/x-m4a")

    async def test_file_status_has_every_field_of_the_status_api(self) -> None:
        await content(await http_client(self).get(self.url + "api/v1/files/ep/1.mp3"))
        await filled(self.cache, "ep/1.mp3")
        response = await http_client(self).get(self.url + "api/v1/files/ep/1.mp3?sync=0")
        api = json.loads(await content(response))
        self.assertEqual(
            (api["etag"], api["content_type"], api["stale"]),
            (self.origin.files["ep/1.mp3"].etag, "audio/x-m4a", False),
        )
        blocking = BlockingCacheTierClient(self.url)
        twisted = CacheTierClient(self.url)
        self.addCleanup(twisted.close)

        async def in_asyncio(url: str) -> Any:
            client = AsyncioCacheTierClient(url)
            try:
                return await client.file_status("ep/1.mp3")
            finally:
                await client.close()

        answers = {
            "blocking": await deferToThread(blocking.file_status, "ep/1.mp3"),
            "twisted": await twisted.file_status("ep/1.mp3"),
            "asyncio": await run_asyncio(in_asyncio, self.url),
        }
        for transport, status in answers.items():
            self.assertIsInstance(status, FileStatus, transport)
            self.assertEqual(attrs.asdict(status), api, transport)


class DropInTests(TestCase):
    """
    Code written for cache-tier 1.0.4 runs unchanged with the import
    swapped, against a live cachetier.
    """

    def setUp(self) -> None:
        self.origin, origin_url = start_origin(self)
        self.cache, self.url = start_cachetier(self, origin_url)
        self.origin.put("episode-42.mp3", body_of(10_000))

    async def test_code_written_for_1_0_4_runs_with_the_import_swapped(self) -> None:
        from cachetier.client import BlockingCacheTierClient as CacheTierClient

        def legacy_page(base_url: str, file: str) -> str:
            # As the cache-tier 1.0.4 README uses it.
            client = CacheTierClient(
                base_url,
                request_timeout=1.0,
                enable_local_cache=True,
                local_cache_time=120.0,
                log_enabled=False,
            )
            if client.verify_file(file):
                return client.build_download_url(file)
            return "https://origin.example/" + file

        self.assertEqual(
            await deferToThread(legacy_page, self.url, "episode-42.mp3"),
            "https://origin.example/episode-42.mp3",
        )
        await filled(self.cache, "episode-42.mp3")
        url = await deferToThread(legacy_page, self.url, "episode-42.mp3")
        self.assertEqual(url, self.url + "files/episode-42.mp3")


class FailOpenTests(TestCase):
    """
    Every way a node can fail is "not cached", within the timeout.
    """

    timeout_seconds = 0.5

    def node(self, resource: Resource) -> str:
        return f"http://127.0.0.1:{listen(self, server.Site(resource)).getHost().port}/"

    def failing_nodes(self) -> dict[str, str]:
        closed = listen(self, server.Site(Resource()))
        closed_url = f"http://127.0.0.1:{closed.getHost().port}/"
        closed.stopListening()
        silent = listen(self, Factory.forProtocol(_Silent))
        return {
            "refused": closed_url,
            "timeout": f"http://127.0.0.1:{silent.getHost().port}/",
            "500": self.node(_Node(b'{"error": "boom"}', code=500)),
            "non-JSON": self.node(_Node(b"<html>hello</html>")),
            "not a status": self.node(_Node(b'{"hello": "world"}')),
            "slow": self.node(_Node(status_json("a.mp3", True), delay=2.0)),
        }

    def check(self, results: dict[str, tuple[bool, float]]) -> None:
        for failure, (answer, elapsed) in results.items():
            self.assertIs(answer, False, failure)
            self.assertLess(elapsed, self.timeout_seconds + 0.1, failure)

    async def test_blocking_client_fails_open(self) -> None:
        def ask_all(urls: dict[str, str]) -> dict[str, tuple[bool, float]]:
            results = {}
            for failure, url in urls.items():
                client = BlockingCacheTierClient(url, request_timeout=self.timeout_seconds)
                started = time.monotonic()
                results[failure] = (client.verify_file("a.mp3"), time.monotonic() - started)
            return results

        self.check(await deferToThread(ask_all, self.failing_nodes()))

    async def test_twisted_client_fails_open(self) -> None:
        results = {}
        for failure, url in self.failing_nodes().items():
            client = CacheTierClient(url, request_timeout=self.timeout_seconds)
            self.addCleanup(client.close)
            started = time.monotonic()
            results[failure] = (await client.verify_file("a.mp3"), time.monotonic() - started)
        self.check(results)

    async def test_asyncio_client_fails_open(self) -> None:
        async def ask_all(urls: dict[str, str]) -> dict[str, tuple[bool, float]]:
            results = {}
            for failure, url in urls.items():
                client = AsyncioCacheTierClient(url, request_timeout=self.timeout_seconds)
                started = time.monotonic()
                results[failure] = (await client.verify_file("a.mp3"), time.monotonic() - started)
                await client.close()
            return results

        self.check(await run_asyncio(ask_all, self.failing_nodes()))

    async def test_open_breaker_answers_at_once_then_recovers(self) -> None:
        factory = _CountedSilence()
        port = listen(self, factory).getHost().port
        url = f"http://127.0.0.1:{port}/"

        def scenario() -> tuple[float, socket.socket]:
            client = BlockingCacheTierClient(url, request_timeout=0.3, breaker_cooloff=0.5)
            started = time.monotonic()
            self.assertFalse(client.verify_file("a"))
            first = time.monotonic() - started
            for name in ("b", "c"):
                self.assertFalse(client.verify_file(name))
            # Accepted after any connection b or c made: see below.
            return first, socket.create_connection(("127.0.0.1", port))

        first, last = await deferToThread(scenario)
        self.addCleanup(last.close)
        self.assertGreaterEqual(first, 0.3)
        # "At once" is without the network, not within a bound in real time
        # (a loaded machine missed 1 ms): once the server has accepted the
        # last connection, it has accepted every one made before it.
        while last.getsockname()[1] not in factory.peers:
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(factory.peers), 2, "b and c answered by the open breaker")


class TwistedClientClockTests(SynchronousTestCase):
    """
    Caching and breaker timings, with a Clock and StubTreq.
    """

    def make(self, resource: Any, **kwargs: Any) -> CacheTierClient:
        self.treq = StubTreq(resource)
        return CacheTierClient(
            "http://node.test/", reactor=self.clock, http_client=self.treq, **kwargs
        )

    def ask(self, client: CacheTierClient, name: str) -> Any:
        d = client.verify_file(name)
        self.treq.flush()
        return self.successResultOf(d)

    def tick(self, seconds: int) -> None:
        """
        Let C{seconds} pass a second at a time, answering the client's
        background liveness probes as they go.
        """
        for _ in range(seconds):
            self.clock.advance(1)
            self.treq.flush()

    def setUp(self) -> None:
        self.clock = Clock()

    def test_answers_are_cached_for_their_times(self) -> None:
        node = _Node(status_json("a", True), clock=self.clock)
        client = self.make(node, local_cache_time=120, negative_cache_time=5)
        self.addCleanup(client.close)
        self.assertTrue(self.ask(client, "a"))
        self.tick(119)
        self.assertTrue(self.ask(client, "a"))
        self.assertEqual(node.calls, 1)
        self.tick(1)
        self.assertTrue(client.is_stale("a"))
        self.ask(client, "a")
        self.assertEqual(node.calls, 2)
        node.body = status_json("b", False)
        self.assertFalse(self.ask(client, "b"))
        self.tick(4)
        self.assertFalse(self.ask(client, "b"))
        self.assertEqual(node.calls, 3)
        self.tick(1)
        self.ask(client, "b")
        self.assertEqual(node.calls, 4)

    def test_timeout_opens_the_breaker_which_probes_after_its_cooloff(self) -> None:
        silent = _Node(status_json("a", True), delay=3600, clock=self.clock)
        client = self.make(silent, request_timeout=1.0, breaker_cooloff=10)
        self.addCleanup(client.close)
        d = client.verify_file("a")
        self.clock.advance(1.0)
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(silent.calls, 1)
        self.assertIs(self.successResultOf(client.verify_file("a")), False)
        self.assertEqual(silent.calls, 1, "open: no request")
        self.clock.advance(10)
        silent.delay = 0
        self.assertTrue(self.ask(client, "a"), "the probe succeeds and closes it")
        self.assertEqual(silent.calls, 2)
