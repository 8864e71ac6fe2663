"""
The metrics as an operator's C{rate()} reads them: bytes to listeners
count as they go out, not when a response ends, and the history the
status page draws.
"""

from __future__ import annotations

import re
from typing import Any

from prometheus_client import generate_latest
from treq import collect
from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import deferLater

from .helpers import CacheTestCase, body_of

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
