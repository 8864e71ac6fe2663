"""
/files/: the headers, ranges and validators of a cached file in memory; a
miss and its failures over real loopback sockets, against the real test
origin.
"""

from __future__ import annotations

import hashlib
import os

from treq import content
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed
from twisted.web.http import datetimeToString
from twisted.web.test.requesthelper import DummyRequest

from cachetier.web.conditional import not_modified, range_still_valid

from .helpers import (
    CacheTestCase,
    MemoryCacheTestCase,
    body_of,
    filled,
    header,
    read_then_hang_up,
)


class FilesTestCase(CacheTestCase):
    """
    A test origin, a cachetier in front of it and an HTTP client.
    """

    async def assert_never_whole(self, name: str) -> None:
        """
        The response for C{name} must break (before or after its headers),
        never end cleanly.
        """
        with self.assertRaises(ResponseFailed):
            response = await self.client.get(self.url + "files/" + name)
            await content(response)


class CachedFileTests(MemoryCacheTestCase):
    def test_single_range(self) -> None:
        data = body_of(100_000)
        self.cached("a.mp3", data)
        code, headers, body = self.get("a.mp3", range="bytes=1000-1999")
        self.assertEqual((code, body), (206, data[1000:2000]))
        self.assertEqual(header(headers, "content-range"), ["bytes 1000-1999/100000"])

    def test_multiple_ranges(self) -> None:
        data = body_of(100_000)
        self.cached("a.mp3", data)
        code, headers, body = self.get("a.mp3", range="bytes=0-9,500-509")
        self.assertEqual(code, 206)
        self.assertIn("multipart/byteranges", header(headers, "content-type")[-1])
        self.assertIn(data[0:10], body)
        self.assertIn(data[500:510], body)

    def test_unsatisfiable_range_is_416(self) -> None:
        self.cached("a.mp3", body_of(1000))
        code, headers, _ = self.get("a.mp3", range="bytes=5000-")
        self.assertEqual((code, header(headers, "content-range")), (416, ["bytes */1000"]))

    def test_if_none_match_is_304(self) -> None:
        self.cached("a.mp3", body_of(1000))
        etag = self.cache.store.get("a.mp3").etag
        code, _, body = self.get("a.mp3", if_none_match=etag)
        self.assertEqual((code, body), (304, b""))
        code, _, _ = self.get("a.mp3", if_none_match='"other"')
        self.assertEqual(code, 200)

    def test_if_modified_since_is_304(self) -> None:
        self.cached("a.mp3", body_of(1000))
        code, _, _ = self.get("a.mp3", if_modified_since=datetimeToString(1_700_000_000).decode())
        self.assertEqual(code, 304)
        code, _, _ = self.get("a.mp3", if_modified_since=datetimeToString(1_600_000_000).decode())
        self.assertEqual(code, 200)

    def test_if_range_with_old_etag_gets_the_whole_file(self) -> None:
        data = body_of(5000)
        self.cached("a.mp3", data)
        code, _, body = self.get("a.mp3", range="bytes=0-9", if_range='"old"')
        self.assertEqual((code, body), (200, data))
        etag = self.cache.store.get("a.mp3").etag
        code, _, body = self.get("a.mp3", range="bytes=0-9", if_range=etag)
        self.assertEqual((code, body), (206, data[:10]))

    def test_head_has_headers_and_no_body(self) -> None:
        self.cached("a.mp3", body_of(1234))
        code, headers, body = self.get("a.mp3", "HEAD")
        self.assertEqual(code, 200)
        self.assertEqual(header(headers, "content-length"), ["1234"])
        self.assertEqual(body, b"")


class MissTests(FilesTestCase):
    async def test_miss_then_hit_is_byte_identical_and_one_origin_request(self) -> None:
        data = body_of(3 * 1024 * 1024 + 17)
        self.origin.put("episodes/2024/100.mp3", data)
        code, headers, body = await self.get("episodes/2024/100.mp3")
        self.assertEqual(
            (code, hashlib.sha256(body).digest()), (200, hashlib.sha256(data).digest())
        )
        self.assertEqual(header(headers, "content-type"), ["audio/mpeg"])
        # The fill publishes after the last byte is sent; wait for it.
        fill = self.cache.syncer.fill_for("episodes/2024/100.mp3")
        if fill is not None:
            await fill.when_done()
        code, headers, body = await self.get("episodes/2024/100.mp3")
        self.assertEqual((code, body), (200, data))
        self.assertEqual(self.origin.counts["episodes/2024/100.mp3"], 1)
        self.assertEqual(header(headers, "content-length"), [str(len(data))])
        self.assertEqual(header(headers, "accept-ranges"), ["bytes"])
        self.assertEqual(header(headers, "etag"), [self.origin.files["episodes/2024/100.mp3"].etag])
        self.assertEqual(
            header(headers, "last-modified"), [datetimeToString(1_700_000_000).decode()]
        )
        self.assertEqual(header(headers, "cache-control"), ["public, max-age=86400"])

    async def test_concurrent_misses_make_one_origin_request(self) -> None:
        data = body_of(2 * 1024 * 1024)
        self.origin.put("big.mp3", data)
        self.origin.rate = 8 * 1024 * 1024
        results = await gatherResults(
            [Deferred.fromCoroutine(self.get("big.mp3")) for _ in range(10)]
        )
        self.assertEqual(self.origin.counts["big.mp3"], 1)
        for code, _, body in results:
            self.assertEqual(code, 200)
            self.assertEqual(body, data)

    async def test_range_of_an_object_still_downloading(self) -> None:
        data = body_of(1024 * 1024)
        self.origin.put("big.mp3", data)
        self.origin.rate = 2 * 1024 * 1024
        whole = Deferred.fromCoroutine(self.get("big.mp3"))
        code, headers, body = await self.get("big.mp3", range="bytes=100-199")
        self.assertEqual((code, body), (206, data[100:200]))
        self.assertEqual(header(headers, "content-range"), [f"bytes 100-199/{len(data)}"])
        self.assertFalse(whole.called, "the range was answered before the download ended")
        await whole
        self.assertEqual(self.origin.counts["big.mp3"], 1)

    async def test_origin_dying_mid_body_aborts_readers_and_publishes_nothing(self) -> None:
        data = body_of(600_000)
        self.origin.put("bad.mp3", data, die_after=300_000)
        await self.assert_never_whole("bad.mp3")
        self.assertIsNone(self.cache.store.get("bad.mp3"))
        self.assertEqual(os.listdir(os.path.join(self.cache.store.root, "tmp")), [])

    async def test_origin_lying_about_length_is_never_published(self) -> None:
        data = body_of(100_000)
        self.origin.put("liar.mp3", data, lie_length=200_000)
        await self.assert_never_whole("liar.mp3")
        self.assertIsNone(self.cache.store.get("liar.mp3"))

    async def test_md5_mismatch_is_never_published(self) -> None:
        data = body_of(100_000)
        self.origin.put("corrupt.mp3", data, content_md5=hashlib.md5(b"other").digest())
        await self.assert_never_whole("corrupt.mp3")
        self.assertIsNone(self.cache.store.get("corrupt.mp3"))

    async def test_md5_match_is_published(self) -> None:
        data = body_of(100_000)
        self.origin.put_with_md5("good.mp3", data)
        code, _, body = await self.get("good.mp3")
        self.assertEqual((code, body), (200, data))
        await self.settle("good.mp3")
        self.assertIsNotNone(self.cache.store.get("good.mp3"))

    async def test_origin_404_is_passed_on_and_kept(self) -> None:
        code, headers, body = await self.get("nope.mp3")
        self.assertEqual((code, body), (404, b"no such file"))
        self.assertEqual(header(headers, "content-type"), ["text/html"])
        await self.get("nope.mp3")
        self.assertEqual(self.origin.counts["nope.mp3"], 1)

    async def test_origin_500_is_passed_on_never_kept(self) -> None:
        self.origin.status["err.mp3"] = 500
        code, _, body = await self.get("err.mp3")
        self.assertEqual((code, body), (500, b"origin says no"))

    async def test_chunked_origin_body_is_served_and_published(self) -> None:
        data = body_of(300_000)
        self.origin.put("chunked.mp3", data, chunked=True)
        code, headers, body = await self.get("chunked.mp3")
        self.assertEqual((code, body), (200, data))
        self.assertEqual(header(headers, "content-length"), [])
        await self.settle("chunked.mp3")
        self.assertEqual(self.cache.store.get("chunked.mp3").size, len(data))

    async def test_client_disconnect_does_not_cancel_the_download(self) -> None:
        data = body_of(1024 * 1024)
        self.origin.put("big.mp3", data)
        self.origin.rate = 4 * 1024 * 1024
        received = await read_then_hang_up(self.url, "/files/big.mp3", 1000)
        self.assertGreaterEqual(len(received), 1000)
        fill = self.cache.syncer.fill_for("big.mp3")
        stored = await fill.when_done()
        self.assertEqual(stored.size, len(data))


class RedirectModeTests(FilesTestCase):
    settings = {"miss": "redirect"}

    async def test_miss_redirects_to_origin_and_syncs(self) -> None:
        data = body_of(10_000)
        self.origin.put("ep 1.mp3", data)
        response = await self.client.get(self.url + "files/ep%201.mp3", allow_redirects=False)
        self.assertEqual(response.code, 302)
        self.assertEqual(
            response.headers.getRawHeaders(b"location"), [(self.origin_url + "ep%201.mp3").encode()]
        )
        await filled(self.cache, "ep 1.mp3")
        code, _, body = await self.get("ep%201.mp3")
        self.assertEqual((code, body), (200, data))


class UnreadableConditionalTests(FilesTestCase):
    """
    A conditional header that is empty or not a date is ignored (RFC 9110
    section 13.1.3), on a hit and on a miss: the listener gets the whole file
    (an If-Range that names no version matches none, so its Range is ignored).
    """

    CASES = [
        {"if_modified_since": ""},
        {"if_modified_since": "not a date"},
        {"range": "bytes=0-9", "if_range": ""},
        {"range": "bytes=0-9", "if_range": "not a date"},
    ]

    async def test_on_a_hit_they_are_ignored(self) -> None:
        data = body_of(5000)
        self.origin.put("a.mp3", data)
        await self.cache.syncer.start("a.mp3").when_done()
        for headers in self.CASES:
            code, _, body = await self.get("a.mp3", **headers)
            self.assertEqual((code, body), (200, data), headers)
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_on_a_miss_they_are_ignored(self) -> None:
        data = body_of(300_000)
        for i, headers in enumerate(self.CASES):
            self.origin.put(f"{i}.mp3", data)
            code, _, body = await self.get(f"{i}.mp3", **headers)
            self.assertEqual((code, body), (200, data), headers)
            await filled(self.cache, f"{i}.mp3")
        self.assertEqual(self.flushLoggedErrors(), [])


class UnreadableValidatorTests(SynchronousTestCase):
    def request(self, name: bytes, value: bytes) -> DummyRequest:
        request = DummyRequest([b"a.mp3"])
        request.requestHeaders.setRawHeaders(name, [value])
        return request

    def test_an_unreadable_if_modified_since_never_matches(self) -> None:
        for value in (b"", b" ", b"not a date", b"Sun, 06 Nov 1994 08:49 GMT", b"\xff"):
            request = self.request(b"if-modified-since", value)
            self.assertFalse(not_modified(request, b'"v1"', 1_700_000_000.0), value)

    def test_an_unreadable_if_range_matches_no_version(self) -> None:
        for value in (b"", b" ", b"not a date", b"\xff"):
            request = self.request(b"if-range", value)
            self.assertFalse(range_still_valid(request, b'"v1"', 1_700_000_000.0), value)
