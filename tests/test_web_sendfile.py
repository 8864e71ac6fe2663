"""
Zero-copy serving over real sockets: slow readers, readers that leave,
pipelined keep-alive requests, and TLS (which must not use sendfile).
"""

from __future__ import annotations

import os
from typing import Any

from treq import content
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from cachetier.assembly import assemble
from cachetier.config import Settings

from .helpers import body_of, make_tls_certificate, read_then_hang_up, start_cachetier, start_origin


class _Collector(Protocol):
    """
    Sends raw requests and collects everything, optionally reading slowly
    (pausing after each chunk).
    """

    def __init__(self, requests: bytes, slow: bool = False) -> None:
        self.requests = requests
        self.slow = slow
        self.received = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.requests)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.slow:
            self.transport.pauseProducing()
            reactor.callLater(0.002, self.transport.resumeProducing)

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(bytes(self.received))


def split_responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """
    Parse back-to-back HTTP/1.1 responses with Content-Length bodies.
    """
    responses = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers["content-length"])
        responses.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return responses


class SendfileTests(TestCase):
    def setUp(self) -> None:
        self.origin, self.origin_url = start_origin(self)
        self.cache, self.url = start_cachetier(self, self.origin_url)
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))

    async def cached(self, name: str, data: bytes) -> None:
        self.origin.put(name, data)
        await self.cache.syncer.start(name).when_done()

    async def raw(self, requests: bytes, slow: bool = False) -> bytes:
        collector = _Collector(requests, slow)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), collector)
        return await collector.done

    async def test_a_slow_reader_gets_exactly_the_right_bytes(self) -> None:
        data = body_of(6_000_000)
        await self.cached("big.mp3", data)
        raw = await self.raw(
            b"GET /files/big.mp3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", slow=True
        )
        [(code, headers, body)] = split_responses(raw)
        self.assertEqual((code, len(body)), (200, len(data)))
        self.assertTrue(body == data)

    async def test_pipelined_keep_alive_requests(self) -> None:
        big, small, other = body_of(3_000_000, "a"), body_of(1000, "b"), body_of(2_000_000, "c")
        await self.cached("a", big)
        await self.cached("b", small)
        await self.cached("c", other)
        raw = await self.raw(
            b"GET /files/a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /files/b HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /files/c HTTP/1.1\r\nHost: x\r\nRange: bytes=1000-1999999\r\n\r\n"
            b"GET /files/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        responses = split_responses(raw)
        self.assertEqual([r[0] for r in responses], [200, 200, 206, 200])
        self.assertTrue(responses[0][2] == big)
        self.assertEqual(responses[1][2], small)
        self.assertTrue(responses[2][2] == other[1000:2_000_000])
        self.assertEqual(responses[2][1]["content-range"], "bytes 1000-1999999/2000000")
        self.assertTrue(responses[3][2] == big)

    async def test_a_reader_leaving_mid_body_closes_the_file(self) -> None:
        data = body_of(8_000_000)
        await self.cached("big.mp3", data)
        path = self.cache.store.get("big.mp3").path

        def open_copies() -> int:
            fds = os.listdir("/proc/self/fd")
            return sum(1 for fd in fds if _link(f"/proc/self/fd/{fd}") == path)

        received = await read_then_hang_up(self.url, "/files/big.mp3", 500_000)
        self.assertGreaterEqual(len(received), 500_000)
        for _ in range(50):
            if open_copies() == 0:
                break
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(open_copies(), 0)
        # The server carries on.
        raw = await self.raw(b"GET /files/big.mp3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(split_responses(raw)[0][2] == data)

    async def test_small_files_come_from_memory_and_never_stale(self) -> None:
        await self.cached("s", b"version one")
        raw = await self.raw(b"GET /files/s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        [(code, headers, body)] = split_responses(raw)
        self.assertEqual((code, body), (200, b"version one"))
        self.assertEqual(headers["etag"], self.origin.files["s"].etag)
        self.assertIn("age", headers)
        self.origin.put("s", b"version two!")
        self.cache.syncer.purge("s")
        await self.cache.syncer.start("s").when_done()
        raw = await self.raw(b"GET /files/s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(split_responses(raw)[0][2], b"version two!")


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


class TLSTests(TestCase):
    async def test_tls_listener_serves_whole_files_and_ranges(self) -> None:
        origin, origin_url = start_origin(self)
        data = body_of(3_000_000)
        origin.put("big.mp3", data)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        key, cert, cert_pem = make_tls_certificate(directory)
        assembly = assemble(Settings(origin=origin_url, cache_dir=self.mktemp()), reactor)
        self.addCleanup(assembly.stop)
        endpoint = serverFromString(
            reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        )
        port = await endpoint.listen(assembly.site)
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        trust = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(cert_pem))
        client = HTTPClient(Agent(reactor, contextFactory=trust, pool=pool))
        url = f"https://127.0.0.1:{port.getHost().port}/files/big.mp3"
        response = await client.get(url)
        self.assertEqual((response.code, await content(response) == data), (200, True))
        fill = assembly.syncer.fill_for("big.mp3")
        if fill is not None:
            await fill.when_done()
        response = await client.get(url)
        self.assertTrue(await content(response) == data)
        response = await client.get(url, headers={"range": "bytes=10-19,100-109"})
        body = await content(response)
        self.assertEqual(response.code, 206)
        self.assertIn(data[10:20], body)
        [content_type] = response.headers.getRawHeaders(b"content-type")
        self.assertTrue(content_type.startswith(b"multipart/byteranges"))
