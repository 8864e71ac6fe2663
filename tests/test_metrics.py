"""
The metrics as an operator's C{rate()} reads them: bytes to listeners
count as they go out, not when a response ends, and the history the
status page draws.
"""

from __future__ import annotations

import os
import re
from typing import Any

from prometheus_client import generate_latest
from treq import collect, content
from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cachetier.metrics import History, Metrics

from .helpers import CacheTestCase, body_of, http_client, start_origin
from .nodes import spawn_twistd

SERVED = "cachetier_served_bytes_total"


class _Stalled(Protocol):
    """
    A listener that asks for a file and then reads nothing.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        self.transport.write(self.request)


class ServedBytesTests(CacheTestCase):
    timeout = 60

    def metric(self, name: str) -> float:
        # What /metrics says, read in process: its own answers would count.
        text = generate_latest(self.cache.site.metrics.registry).decode()
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return 0.0 if match is None else float(match.group(1))

    async def served_while(self, going: Any) -> float:
        """
        Poll /metrics until its served bytes move, for as long as
        C{going()}; the value seen, or 0 if the response ended first.
        """
        while going():
            served = self.metric(SERVED)
            if served > 0:
                return served
            await deferLater(reactor, 0.05, lambda: None)
        return 0.0

    async def test_a_hit_counts_its_bytes_while_a_slow_listener_takes_them(self) -> None:
        size = 64 * 1024 * 1024
        await self.cached("big.mp3", body_of(size, "big"))
        factory = ClientFactory.forProtocol(
            lambda: _Stalled(b"GET /files/big.mp3 HTTP/1.1\r\nHost: x\r\n\r\n")
        )
        port = self.url.rsplit(":", 1)[1].rstrip("/")
        connector = reactor.connectTCP("127.0.0.1", int(port), factory)
        self.addCleanup(connector.disconnect)
        deadline = reactor.seconds() + 20

        def going() -> bool:
            # A bound: the stalled response never ends by itself.
            return reactor.seconds() < deadline

        served = await self.served_while(going)
        self.assertGreater(served, 0, "no byte of the response in flight was counted")
        self.assertLess(served, size)
        self.assertEqual(self.metric("cachetier_responses_aborted_total"), 0)

    async def test_a_miss_counts_its_bytes_during_a_throttled_download(self) -> None:
        size = 4_000_000
        self.origin.put("slow.mp3", body_of(size, "slow"))
        self.origin.rate = 400_000
        response = await self.client.get(self.url + "files/slow.mp3")
        received: list[int] = []
        done = collect(response, lambda data: received.append(len(data)))
        finished: list[object] = []
        done.addBoth(finished.append)
        served = await self.served_while(lambda: not finished)
        self.assertGreater(served, 0, "the counter moved only when the response ended")
        self.assertLess(served, size)
        await done
        self.assertEqual(sum(received), size)
        await self.settle("slow.mp3")
        self.assertEqual(self.metric(SERVED), size)

    async def test_a_download_in_progress_shows_in_the_requests_by_outcome(self) -> None:
        self.origin.put("long.mp3", body_of(4_000_000, "long"))
        self.origin.rate = 400_000
        response = await self.client.get(self.url + "files/long.mp3")
        finished: list[object] = []
        done = collect(response, lambda data: None)
        done.addBoth(finished.append)
        misses = self.metric('cachetier_requests_total{outcome="miss"}')
        self.assertEqual(finished, [], "the download is still under way")
        self.assertEqual(misses, 1)
        await done
        await self.settle("long.mp3")
        self.assertEqual(self.metric('cachetier_requests_total{outcome="miss"}'), 1)


class HistoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.metrics = Metrics()
        self.history = History(self.metrics, seconds=900, clock=self.clock.seconds)

    def second(self, served: int = 0, hits: int = 0, errors: int = 0) -> None:
        self.metrics.bytes_served.inc(served)
        if hits:
            self.metrics.requests.labels(outcome="hit").inc(hits)
        if errors:
            self.metrics.sync_failures.labels(reason="origin_error").inc(errors)
            self.metrics.sync_failures.labels(reason="not_found").inc(errors)
        self.clock.advance(1)
        self.history.sample()

    def test_rates_are_per_second_between_samples(self) -> None:
        self.history.sample()
        self.second(served=1000, hits=2)
        self.second(served=3000)
        rows = self.history.rates()
        self.assertEqual(
            [(r["out"], r["hit"], r["dt"]) for r in rows], [(1000, 2, 1), (3000, 0, 1)]
        )
        self.assertEqual(self.history.rates(since=rows[0]["t"]), rows[1:])

    def test_the_first_sample_of_a_second_stands(self) -> None:
        self.history.sample()
        self.second(served=10)
        self.metrics.bytes_served.inc(5)
        self.history.sample()
        [row] = self.history.rates()
        self.assertEqual(row["out"], 10)
        self.second()
        self.assertEqual([r["out"] for r in self.history.rates()], [10, 5])

    def test_it_keeps_fifteen_minutes(self) -> None:
        self.history.sample()
        for _ in range(1000):
            self.second(served=1)
        rows = self.history.rates()
        self.assertEqual(len(rows), 900)
        self.assertEqual(rows[-1]["t"] - rows[0]["t"], 899)

    def test_origin_errors_in_the_last_minute_leave_out_missing_files(self) -> None:
        self.history.sample()
        self.second(errors=3)
        for _ in range(60):
            self.second()
        self.second(errors=2)
        self.assertEqual(self.history.origin_errors_since(self.clock.seconds() - 60), 2)
        self.assertEqual(self.history.rates()[0]["origin_errors"], 3)

    def test_the_served_bytes_tally_is_a_prometheus_counter(self) -> None:
        self.metrics.bytes_served.inc(7)
        self.metrics.add("bytes_served", {}, 5)
        self.assertIn(
            "cachetier_served_bytes_total 12.0", generate_latest(self.metrics.registry).decode()
        )
        self.assertEqual(self.metrics.counter_values()[("bytes_served", ())], 12)


class TwistdServedBytesTests(TestCase):
    timeout = 60

    async def test_metrics_show_a_throttled_download_while_it_runs(self) -> None:
        origin, origin_url = start_origin(self)
        client = http_client(self)
        size = 8_000_000
        origin.put("long.mp3", body_of(size, "long"))
        origin.rate = 1_000_000
        cache_dir = os.path.abspath(self.mktemp())
        args = [
            f"--origin={origin_url}",
            f"--cache-dir={cache_dir}",
            "--listen=tcp:0:interface=127.0.0.1",
        ]
        _, twistd = spawn_twistd(self, args)
        url = f"http://127.0.0.1:{await twistd.port}/"
        response = await client.get(url + "files/long.mp3")
        finished: list[object] = []
        done = collect(response, lambda data: None)
        done.addBoth(finished.append)
        # /metrics' own bodies count too: what they sent before is taken off.
        scraped = 0
        listeners = 0.0
        while not finished and listeners < 256 * 1024:
            page = await content(await client.get(url + "metrics"))
            match = re.search(rb"^cachetier_served_bytes_total (\S+)$", page, re.MULTILINE)
            assert match is not None
            listeners = float(match.group(1)) - scraped
            scraped += len(page)
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(finished, [], "the download ended before the counter moved")
        self.assertGreaterEqual(listeners, 256 * 1024)
        self.assertLess(listeners, size)
        await done
