"""
Lifetimes, revalidation, stale-while-revalidate, stale-if-error and the
open breaker's fast answer in memory with a clock; readers of a replaced
version and the origin breaker against the real test origin on loopback.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import generate_latest
from treq import content
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase

from cachetier.metrics import Metrics
from cachetier.origin import parse_cache_control

from .helpers import CacheTestCase, MemoryCacheTestCase, body_of


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def metric(metrics: Metrics, text: str) -> float:
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(text + " "):
            return float(line.split()[-1])
    return 0.0


class FreshnessTestCase(MemoryCacheTestCase):
    # Revalidation in the background: an operator's grace, since a stale
    # copy is otherwise revalidated before it is served.
    settings: dict[str, Any] = {"ttl": 0.3, "stale_while_revalidate": 60.0}

    def revalidation_done(self, name: str) -> None:
        fill = self.cache.syncer.fill_for(name)
        self.assertIsNotNone(fill, "a revalidation should be under way")
        self.assertIsNotNone(fill.revalidating)
        self.settle(name)

    def metric(self, text: str) -> float:
        return metric(self.cache.metrics, text)

    def bare_304s(self, etag: bytes) -> None:
        """
        Make the origin answer every conditional request for C{a.mp3} with
        a 304 carrying only C{etag}.
        """
        plain = self.origin.render_GET

        def answer(request: Any) -> bytes | int:
            if request.getHeader(b"if-none-match") is not None:
                self.origin.counts["a.mp3"] += 1
                request.setResponseCode(304)
                request.setHeader(b"etag", etag)
                return b""
            return plain(request)

        self.origin.render_GET = answer  # type: ignore[method-assign]


class LoopbackFreshnessTestCase(CacheTestCase):
    settings: dict[str, Any] = {"ttl": 0.3}

    async def revalidation_done(self, name: str) -> None:
        fill = self.cache.syncer.fill_for(name)
        self.assertIsNotNone(fill, "a revalidation should be under way")
        self.assertIsNotNone(fill.revalidating)
        await fill.when_done().addErrback(lambda _: None)

    def metric(self, text: str) -> float:
        return metric(self.cache.site.metrics, text)


class RevalidationTests(FreshnessTestCase):
    def test_unchanged_file_is_renewed_by_a_304_without_a_download(self) -> None:
        data = body_of(200_000)
        self.cached("a.mp3", data)
        before = self.cache.store.get("a.mp3")
        self.wait(0.35)
        code, headers, body = self.get("a.mp3")
        self.assertEqual((code, body), (200, data))
        self.assertTrue(headers.hasHeader(b"age"))
        self.revalidation_done("a.mp3")
        method, _, request_headers = self.origin.requests[-1]
        self.assertEqual(
            request_headers.getRawHeaders(b"if-none-match"), [before.origin_etag.encode()]
        )
        after = self.cache.store.get("a.mp3")
        self.assertEqual(after.path, before.path)
        self.assertGreater(after.expires_at, before.expires_at)
        self.assertEqual(self.metric('cachetier_revalidations_total{result="not_modified"}'), 1)
        self.assertEqual(self.metric("cachetier_origin_bytes_total"), 200_000)

    def test_a_304_updates_the_stored_headers(self) -> None:
        data = body_of(10_000)
        self.cached("a.mp3", data, extra_headers={"content-disposition": "inline"})
        self.origin.files["a.mp3"].extra_headers = {
            "cache-control": "public, max-age=600",
            "content-disposition": 'attachment; filename="a.mp3"',
        }
        self.wait(0.35)
        self.get("a.mp3")  # stale: revalidated, the origin says 304
        self.revalidation_done("a.mp3")
        self.assertEqual(self.origin.counts["a.mp3"], 2)
        _, headers, body = self.get("a.mp3")
        self.assertEqual(body, data)
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"public, max-age=600"])
        self.assertEqual(
            headers.getRawHeaders(b"content-disposition"), [b'attachment; filename="a.mp3"']
        )

    def test_a_304_naming_another_version_renews_nothing(self) -> None:
        data = body_of(10_000, "A")
        self.cached("a.mp3", data)
        etag = self.cache.store.get("a.mp3").etag
        # An origin that checks only the date, and names version B.
        self.bare_304s(b'"version-B"')
        self.wait(0.35)
        self.get("a.mp3")
        self.revalidation_done("a.mp3")
        self.assertEqual(self.origin.counts["a.mp3"], 3, "the 304, then the whole object")
        _, headers, body = self.get("a.mp3")
        self.assertEqual((body, headers.getRawHeaders(b"etag")), (data, [etag.encode()]))

    def test_a_304_without_cache_control_keeps_the_stored_lifetime(self) -> None:
        self.cached("a.mp3", body_of(10_000), extra_headers={"Cache-Control": "max-age=30"})
        etag = self.origin.files["a.mp3"].etag
        # An origin whose 304 carries the validator alone.
        self.bare_304s(etag.encode())
        self.wait(31)
        self.get("a.mp3")
        self.revalidation_done("a.mp3")
        self.assertEqual(self.origin.counts["a.mp3"], 2)
        self.assertEqual(round(self.cache.store.get("a.mp3").lifetime), 30, "not the ttl")

    def test_changed_file_is_served_in_its_new_version_after_its_ttl(self) -> None:
        old, new = body_of(100_000, "old"), body_of(120_000, "new")
        self.cached("a.mp3", old)
        self.origin.put("a.mp3", new)
        code, _, body = self.get("a.mp3")
        self.assertEqual(body, old, "fresh: served from the cache, origin not asked")
        self.assertEqual(self.origin.counts["a.mp3"], 1)
        self.wait(0.35)
        # Answered before the origin answers the revalidation it started.
        code, _, body = self.get("a.mp3")
        self.assertEqual((code, body), (200, old), "stale while revalidating")
        self.revalidation_done("a.mp3")
        code, headers, body = self.get("a.mp3")
        self.assertEqual((code, body), (200, new))
        self.assertEqual(headers.getRawHeaders(b"etag"), [self.origin.files["a.mp3"].etag.encode()])

    def test_a_hanging_origin_never_delays_a_cached_file(self) -> None:
        data = body_of(50_000)
        self.cached("a.mp3", data)
        self.wait(0.35)
        self.origin.hang.add("a.mp3")
        for _ in range(3):
            # self.get fails if the answer waits for the origin.
            code, _, body = self.get("a.mp3")
            self.assertEqual((code, body), (200, data))
        self.cache.flush()  # the origin sees what it was asked
        self.assertEqual(self.origin.counts["a.mp3"], 2, "one revalidation, not one per request")

    def test_a_404_while_revalidating_serves_stale_until_purged(self) -> None:
        # An S3 policy mistake or a WAF challenge must not wipe the cache:
        # a 403/404/410 on revalidation is an origin error like any other.
        self.cached("a.mp3", b"x" * 1000)
        del self.origin.files["a.mp3"]
        self.wait(0.35)
        self.get("a.mp3")
        self.revalidation_done("a.mp3")
        code, headers, body = self.get("a.mp3")
        self.assertEqual((code, body), (200, b"x" * 1000))
        self.assertIsNotNone(self.cache.store.get("a.mp3"))
        self.cache.syncer.purge("a.mp3")
        code, _, body = self.get("a.mp3")
        self.assertEqual((code, body), (404, b"no such file"))

    def test_origin_max_age_overrides_the_ttl(self) -> None:
        self.cached("long.mp3", b"x" * 10, extra_headers={"Cache-Control": "max-age=3600"})
        self.cached("now.mp3", b"y" * 10, extra_headers={"Cache-Control": "no-cache"})
        self.wait(0.35)
        self.get("long.mp3")
        self.get("now.mp3")
        self.assertIsNone(self.cache.syncer.fill_for("long.mp3"))
        # no-cache forbids serving it stale: it was revalidated first.
        self.assertEqual((self.origin.counts["long.mp3"], self.origin.counts["now.mp3"]), (1, 2))

    def test_no_store_is_passed_through_and_never_cached(self) -> None:
        data = body_of(100_000)
        self.origin.put("live.mp3", data, extra_headers={"Cache-Control": "no-store"})
        for count in (1, 2):
            code, _, body = self.get("live.mp3")
            self.assertEqual((code, body), (200, data))
            fill = self.cache.syncer.fill_for("live.mp3")
            if fill is not None:
                self.cache.result(fill.when_done())
            self.assertIsNone(self.cache.store.get("live.mp3"))
            self.assertEqual(self.origin.counts["live.mp3"], count)


class ReplacedVersionTests(LoopbackFreshnessTestCase):
    async def test_readers_of_the_old_version_finish_with_the_old_bytes(self) -> None:
        old, new = body_of(8_000_000, "old"), body_of(8_000_000, "new")
        await self.cached("a.mp3", old)
        reader = _PausedReader()
        port = int(self.url.rsplit(":", 1)[1].strip("/"))
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), reader)
        await reader.some
        self.origin.put("a.mp3", new)
        await sleep(0.35)
        self.cache.syncer.status("a.mp3")
        await self.revalidation_done("a.mp3")
        self.assertEqual((await self.get("a.mp3"))[2], new)
        reader.transport.resumeProducing()
        received = await reader.done
        self.assertTrue(received.endswith(old))


class _PausedReader(Protocol):
    """
    GETs /files/a.mp3, then stops reading after the first bytes.
    """

    def __init__(self) -> None:
        self.received = b""
        self.some: Deferred[None] = Deferred()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET /files/a.mp3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.some.called:
            self.transport.pauseProducing()
            self.some.callback(None)

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(self.received)


class OriginDownTests(LoopbackFreshnessTestCase):
    settings = {
        "ttl": 0.2,
        "stale_if_error": 60.0,
        "origin_retries": 1,
        "breaker_threshold": 3,
        "breaker_cooloff": 30.0,
        "origin_timeout": 2.0,
    }

    async def test_stale_if_error_breaker_and_fail_fast(self) -> None:
        data = body_of(1_000_000)
        await self.cached("cached.mp3", data)
        # The origin dies: no new connections, and the pooled one is gone.
        await self.origin.port.stopListening()
        await self.cache.pool.closeCachedConnections()
        await sleep(0.25)
        # Expired, origin down: every request still gets the whole file.
        for _ in range(3):
            code, headers, body = await self.get("cached.mp3")
            self.assertEqual((code, body), (200, data))
            self.assertGreaterEqual(int(headers.getRawHeaders(b"age")[0]), 0)
            await sleep(0.01)
        # Misses feed the breaker until it opens.
        for n in range(3):
            code, _, body = await self.get(f"new{n}.mp3")
            self.assertEqual(code, 502)
        response = await self.client.get(self.url + "healthz")
        health = json.loads(await content(response))
        self.assertEqual(health["origin_breaker"], "open")
        # How fast the answer comes is BreakerTests' business, with a clock.
        code, _, body = await self.get("uncached.mp3")
        self.assertEqual(code, 502)
        self.assertIn("breaker_open", json.loads(body)["message"])
        self.assertEqual(self.metric("cachetier_origin_breaker_open"), 1)
        self.assertGreaterEqual(self.metric('cachetier_requests_total{outcome="stale"}'), 3)


class BreakerTests(FreshnessTestCase):
    settings = {"origin_retries": 1, "breaker_threshold": 3, "breaker_cooloff": 30.0}

    def test_an_open_breaker_fails_fast(self) -> None:
        # In memory, "fast" is with the clock standing still (self.get never
        # moves it): a bound in real time failed on a loaded machine.
        self.cache.origin_down = True
        for n in range(3):
            code, _, _ = self.get(f"new{n}.mp3")
            self.assertEqual(code, 502)
        # The origin is back but hangs: only an open breaker answers now.
        self.cache.origin_down = False
        self.origin.hang.add("uncached.mp3")
        code, _, body = self.get("uncached.mp3")
        self.assertEqual(code, 502)
        self.assertIn("breaker_open", json.loads(body)["message"])
        self.assertEqual(self.origin.counts["uncached.mp3"], 0)


class StaleIfErrorWindowTests(FreshnessTestCase):
    settings = {"ttl": 0.1, "stale_if_error": 0.2, "origin_retries": 1}

    def test_past_the_window_the_stale_copy_is_not_served(self) -> None:
        self.cached("a.mp3", b"x" * 1000)
        self.origin.status["a.mp3"] = 503
        self.wait(0.45)
        code, _, _ = self.get("a.mp3")
        self.assertEqual(code, 503, "the origin's answer, passed on")


class CacheControlTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(parse_cache_control(None), (None, False))
        self.assertEqual(parse_cache_control("public, max-age=600"), (600.0, False))
        self.assertEqual(parse_cache_control("max-age=600, s-maxage=60"), (60.0, False))
        self.assertEqual(parse_cache_control("no-store"), (None, True))
        self.assertEqual(parse_cache_control("private, max-age=60"), (60.0, True))
        self.assertEqual(parse_cache_control("no-cache"), (0.0, False))
        self.assertEqual(parse_cache_control("max-age=bogus"), (0.0, False))
