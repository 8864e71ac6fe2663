"""
Faithful to the origin (RFC 9110, RFC 9111): what the origin said reaches
listeners unchanged, and the origin is contacted only where it said.  The
headers in memory; bodies as they go over real sockets.
"""

from __future__ import annotations

import base64
import gzip
import hashlib

from treq import content
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, readBody

from cachetier.tap import Options

from .helpers import CacheTestCase, MemoryCacheTestCase, body_of, header, start_origin

KEPT = {
    "content-disposition": 'attachment; filename="episode 100.mp3"',
    "access-control-allow-origin": "https://player.example",
    "x-amz-meta-episode": "100",
    "content-language": "en",
}


class CacheControlTests(MemoryCacheTestCase):
    def test_private_and_no_store_are_never_sent_as_public(self) -> None:
        for cc in ("private, max-age=600", "no-store"):
            name = cc.split(",")[0] + ".mp3"
            self.origin.put(name, body_of(20_000), extra_headers={"Cache-Control": cc})
            for _ in range(2):
                code, headers, body = self.get(name)
                self.assertEqual((code, body), (200, body_of(20_000)))
                self.assertEqual(header(headers, "cache-control"), [cc])
                self.settle(name)
            self.assertIsNone(self.cache.store.get(name), "streamed, not stored")

    def test_the_origins_max_age_is_passed_on_unchanged(self) -> None:
        self.origin.put("a.mp3", body_of(20_000), extra_headers={"Cache-Control": "max-age=60"})
        for _ in range(2):  # miss, then hit
            _, headers, _ = self.get("a.mp3")
            self.assertEqual(header(headers, "cache-control"), ["max-age=60"])
            self.settle("a.mp3")


class DefaultCacheControlTests(MemoryCacheTestCase):
    settings = {"ttl": 30.0}

    def test_without_one_the_default_never_outlives_the_object(self) -> None:
        self.origin.put("a.mp3", body_of(20_000))
        self.get("a.mp3")
        self.settle("a.mp3")
        _, headers, _ = self.get("a.mp3")
        self.assertEqual(header(headers, "cache-control"), ["public, max-age=30"])


class HeaderTests(MemoryCacheTestCase):
    def test_end_to_end_headers_survive_miss_hit_range_and_head(self) -> None:
        for name, size in (("big.mp3", 200_000), ("small.mp3", 2_000)):
            self.origin.put(name, body_of(size), extra_headers=KEPT)
            cases = [
                ("miss", "GET", {}),
                ("hit", "GET", {}),
                ("206", "GET", {"Range": "bytes=0-9"}),
            ]
            cases.append(("HEAD", "HEAD", {}))
            for label, method, request_headers in cases:
                code, headers, _ = self.get(name, method, **request_headers)
                for key, value in KEPT.items():
                    self.assertEqual(header(headers, key), [value], f"{name} {label} {key}")
                self.settle(name)

    def test_a_response_that_sets_a_cookie_is_streamed_not_stored(self) -> None:
        self.origin.put("c.mp3", body_of(5_000), extra_headers={"Set-Cookie": "session=1"})
        code, headers, body = self.get("c.mp3")
        self.assertEqual((code, body), (200, body_of(5_000)))
        self.assertEqual(header(headers, "set-cookie"), [])
        self.settle("c.mp3")
        self.assertIsNone(self.cache.store.get("c.mp3"))


class EncodingTests(CacheTestCase):
    async def test_a_gzip_encoded_object_keeps_its_encoding_and_bytes(self) -> None:
        raw = gzip.compress(body_of(100_000))
        self.origin.put(
            "t.json",
            raw,
            content_type="application/json",
            extra_headers={"Content-Encoding": "gzip"},
        )
        # A plain Agent: treq's client would decode the gzip itself.
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        for label in ("miss", "hit"):
            response = await agent.request(b"GET", (self.url + "files/t.json").encode())
            code, headers, body = response.code, response.headers, await readBody(response)
            self.assertEqual(code, 200)
            self.assertEqual(header(headers, "content-encoding"), ["gzip"], label)
            self.assertEqual(hashlib.sha256(body).digest(), hashlib.sha256(raw).digest(), label)
            await self.settle("t.json")
        _, _, request_headers = self.origin.requests[0]
        self.assertEqual(request_headers.getRawHeaders(b"accept-encoding"), [b"identity"])


class IntegrityTests(CacheTestCase):
    async def test_a_32_hex_etag_from_a_plain_server_is_no_md5(self) -> None:
        self.origin.put("a.mp3", body_of(50_000), etag='"0123456789abcdef0123456789abcdef"')
        code, _, body = await self.get("a.mp3")
        self.assertEqual((code, body), (200, body_of(50_000)))
        await self.settle("a.mp3")
        self.assertIsNotNone(self.cache.store.get("a.mp3"), "cached on the first GET")

    async def test_an_s3_body_that_fails_its_md5_gives_no_clean_200(self) -> None:
        self.origin.put(
            "bad.mp3",
            body_of(300_000),
            etag='"' + hashlib.md5(b"something else").hexdigest() + '"',
            extra_headers={"Server": "AmazonS3"},
        )
        response = await self.client.get(self.url + "files/bad.mp3")
        with self.assertRaises(ResponseFailed):
            await content(response)
        await self.settle("bad.mp3")
        self.assertIsNone(self.cache.store.get("bad.mp3"))

    async def test_s3_full_object_checksums_are_asked_for_and_checked(self) -> None:
        good, bad = body_of(200_000, "good"), body_of(200_000, "bad")
        for name, body, claimed in (("good.mp3", good, good), ("bad.mp3", bad, b"other")):
            self.origin.put(
                name,
                body,
                extra_headers={
                    "x-amz-request-id": "T35T",
                    "x-amz-checksum-sha256": base64.b64encode(
                        hashlib.sha256(claimed).digest()
                    ).decode(),
                },
            )
        code, _, body = await self.get("good.mp3")
        self.assertEqual((code, body), (200, good))
        await self.settle("good.mp3")
        self.assertIsNotNone(self.cache.store.get("good.mp3"))
        response = await self.client.get(self.url + "files/bad.mp3")
        with self.assertRaises(ResponseFailed):
            await content(response)
        await self.settle("bad.mp3")
        self.assertIsNone(self.cache.store.get("bad.mp3"))
        error = self.cache.syncer.recent_failure("bad.mp3")
        self.assertIn("SHA256", str(error))
        _, _, request_headers = self.origin.requests[0]
        self.assertEqual(request_headers.getRawHeaders(b"x-amz-checksum-mode"), [b"ENABLED"])


class OriginURLTests(CacheTestCase):
    async def test_a_plus_is_percent_encoded(self) -> None:
        self.origin.plus_is_space = True
        self.origin.put("a+b.mp3", body_of(1_000, "plus"))
        self.origin.put("a b.mp3", body_of(1_000, "space"))
        code, _, body = await self.get("a%2Bb.mp3")
        self.assertEqual((code, body), (200, body_of(1_000, "plus")))
        self.assertIn(b"/a%2Bb.mp3", self.origin.paths)

    async def test_redirects_are_followed_only_within_the_origin(self) -> None:
        other, other_url = start_origin(self)
        other.put("x.mp3", body_of(1_000, "other"))
        self.origin.redirects["away.mp3"] = other_url + "x.mp3"
        self.origin.redirects["moved.mp3"] = self.origin_url + "new/moved.mp3"
        self.origin.put("new/moved.mp3", body_of(1_000, "moved"))
        response = await self.client.get(self.url + "files/away.mp3", allow_redirects=False)
        await response.content()
        location = response.headers.getRawHeaders(b"location")
        self.assertEqual((response.code, location), (302, [(other_url + "x.mp3").encode()]))
        self.assertEqual(other.counts["x.mp3"], 0, "the other host saw nothing")
        code, _, body = await self.get("moved.mp3")
        self.assertEqual((code, body), (200, body_of(1_000, "moved")))


class ForwardedHeaderTests(CacheTestCase):
    settings = {"forward_request_headers": ("x-request-id", "traceparent")}

    async def test_the_listener_that_starts_a_fill_sends_its_headers(self) -> None:
        self.origin.put("a.mp3", body_of(20_000), extra_headers={"Cache-Control": "max-age=0"})
        await self.get("a.mp3", x_request_id="first", traceparent="00-abc-01", x_other="no")
        await self.settle("a.mp3")
        (_, _, sent) = self.origin.requests[-1]
        self.assertEqual(sent.getRawHeaders(b"x-request-id"), [b"first"])
        self.assertEqual(sent.getRawHeaders(b"traceparent"), [b"00-abc-01"])
        self.assertFalse(sent.hasHeader(b"x-other"), "only the headers named")
        # The revalidation the next listener starts carries its own, and
        # none of the first listener's.
        await self.get("a.mp3", x_request_id="second")
        (_, _, sent) = self.origin.requests[-1]
        self.assertEqual(sent.getRawHeaders(b"x-request-id"), [b"second"])
        self.assertFalse(sent.hasHeader(b"traceparent"))

    async def test_a_listener_joining_a_fill_sends_nothing(self) -> None:
        self.origin.put("b.mp3", body_of(200_000))
        self.origin.rate = 200_000.0
        first = Deferred.fromCoroutine(self.get("b.mp3", x_request_id="first"))
        while self.cache.syncer.fill_for("b.mp3") is None:
            await deferLater(reactor, 0.01, lambda: None)
        await self.get("b.mp3", x_request_id="second")
        await first
        self.assertEqual(
            [h.getRawHeaders(b"x-request-id") for _, _, h in self.origin.requests], [[b"first"]]
        )


class ForwardedHeaderOptionTests(SynchronousTestCase):
    def test_secrets_and_cachetiers_own_headers_are_refused_at_start_up(self) -> None:
        base = ["--origin=http://127.0.0.1:9/", f"--cache-dir={self.mktemp()}"]
        for name in ("Authorization", "cookie", "Range", "If-None-Match", "x-amz-date", "a b"):
            with self.assertRaises(UsageError) as caught:
                Options().parseOptions([*base, f"--forward-request-header={name}"])
            self.assertIn("--forward-request-header", str(caught.exception))
        options = Options()
        options.parseOptions([*base, "--forward-request-header=X-Request-ID"])
        self.assertEqual(options["settings"].forward_request_headers, ("x-request-id",))
