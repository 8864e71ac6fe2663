"""
The JSON status API, the cache-tier 1.0.4 routes, health, metrics and the
error contract: in memory, but for a download in progress, the upstream
client, and what the site counts and logs (over real sockets).
"""

from __future__ import annotations

import json
import os
from typing import Any

from treq import content
from twisted.internet.threads import deferToThread

from .helpers import CacheTestCase, MemoryCacheTestCase, body_of, read_response


class APITestCase(MemoryCacheTestCase):
    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        code, headers, body = self.request(method, path, **kwargs)
        self.assertEqual(
            headers.getRawHeaders(b"content-type"),
            [b"application/json"],
            f"{method} {path} must answer JSON",
        )
        return code, headers, json.loads(body)


class LoopbackAPITestCase(CacheTestCase):
    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        response = await self.client.request(method, self.url + path, **kwargs)
        code, headers, body = await read_response(response)
        self.assertEqual(
            headers.getRawHeaders(b"content-type"),
            [b"application/json"],
            f"{method} {path} must answer JSON",
        )
        return code, headers, json.loads(body)


class StatusAPITests(APITestCase):
    def test_status_starts_a_sync_then_reports_cached(self) -> None:
        data = body_of(50_000)
        self.origin.put("ep/1.mp3", data)
        code, headers, body = self.call("GET", "api/v1/files/ep/1.mp3")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertIn(body["state"], ("syncing", "cached"))
        self.assertEqual(body["origin_url"], self.origin_url + "ep/1.mp3")
        self.assertEqual(body["download_url"], self.url + "files/ep/1.mp3")
        fill = self.cache.syncer.fill_for("ep/1.mp3")
        if fill is not None:
            self.cache.result(fill.when_done())
        code, _, body = self.call("GET", "api/v1/files/ep/1.mp3")
        self.assertEqual(
            {k: body[k] for k in ("file", "available", "state", "size", "bytes_synced", "error")},
            {
                "file": "ep/1.mp3",
                "available": True,
                "state": "cached",
                "size": 50_000,
                "bytes_synced": 50_000,
                "error": None,
            },
        )
        self.assertEqual(body["etag"], self.origin.files["ep/1.mp3"].etag)
        self.assertEqual(body["content_type"], "audio/mpeg")
        self.assertEqual(self.origin.counts["ep/1.mp3"], 1)

    def test_sync_0_only_asks(self) -> None:
        self.origin.put("a.mp3", b"x")
        code, _, body = self.call("GET", "api/v1/files/a.mp3?sync=0")
        self.assertEqual((code, body["state"], body["available"]), (200, "missing", False))
        self.assertEqual(self.origin.counts["a.mp3"], 0)

    def test_not_found_at_origin(self) -> None:
        self.call("GET", "api/v1/files/none.mp3")
        self.cache.result(
            self.cache.syncer.fill_for("none.mp3").when_done().addErrback(lambda _: None)
        )
        _, _, body = self.call("GET", "api/v1/files/none.mp3")
        self.assertEqual((body["state"], body["available"]), ("not_found", False))
        self.assertIn("404", body["error"])

    def test_origin_error(self) -> None:
        self.origin.status["bad.mp3"] = 503
        self.call("GET", "api/v1/files/bad.mp3")
        for _ in range(3):
            self.wait(1.0)  # three tries, with a backoff before each retry
        self.settle("bad.mp3")
        _, _, body = self.call("GET", "api/v1/files/bad.mp3")
        self.assertEqual(body["state"], "error")
        self.assertIn("http_503", body["error"])


class PublicURLTests(APITestCase):
    settings = {"public_url": "https://cdn.example.com/media/"}

    def test_download_url_uses_the_public_url(self) -> None:
        _, _, body = self.call("GET", "api/v1/files/a%20b.mp3?sync=0")
        self.assertEqual(body["download_url"], "https://cdn.example.com/media/files/a%20b.mp3")


class ErrorContractTests(APITestCase):
    bad_paths = [
        ("%2e%2e/etc/passwd", "'..'"),
        ("a/../b", "'..'"),
        ("a%00b", "control characters"),
        ("a%5cb", "backslashes"),
        ("a//b", "empty path segment"),
        ("a%2fb", "encoded slashes"),
        ("x" * 1100, "longer than"),
    ]

    def test_bad_names_are_400_with_a_json_reason(self) -> None:
        for route in ("files/", "api/v1/files/"):
            for path, why in self.bad_paths:
                code, headers, body = self.call("GET", route + path)
                self.assertEqual((code, body["error"]), (400, "bad_name"), route + path)
                self.assertIn(why, body["message"])
                self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(sum(self.origin.counts.values()), 0)

    def test_unknown_paths_are_json_404(self) -> None:
        for path in ("nope", "api", "api/v2/files/a", "api/v1/nope"):
            code, _, body = self.call("GET", path)
            self.assertEqual((code, body["error"]), (404, "not_found"), path)

    def test_wrong_methods_are_json_405(self) -> None:
        for method, path in (
            ("POST", "files/a.mp3"),
            ("PUT", "api/v1/files/a.mp3"),
            ("PUT", "healthz"),
        ):
            code, headers, body = self.call(method, path)
            self.assertEqual((code, body["error"]), (405, "method_not_allowed"), path)
            self.assertIn(b"GET", headers.getRawHeaders(b"allow")[0])


class CompatTests(APITestCase):
    def test_verify_matches_the_1_0_4_shape(self) -> None:
        self.origin.put("v.mp3", b"x" * 100)
        code, _, body = self.call("GET", "verify/v.mp3")
        self.assertEqual(code, 200)
        self.assertEqual(set(body), {"available", "file", "error", "error_msg"})
        self.assertEqual((body["file"], body["error"], body["error_msg"]), ("v.mp3", False, None))
        fill = self.cache.syncer.fill_for("v.mp3")
        if fill is not None:
            self.cache.result(fill.when_done())
        _, _, body = self.call("GET", "verify/v.mp3")
        self.assertTrue(body["available"])

    def test_download_redirects_to_origin_then_to_the_cache(self) -> None:
        self.origin.put("d.mp3", b"x" * 100)
        code, headers, _ = self.request("GET", "download/d.mp3", allow_redirects=False)
        self.assertEqual(code, 302)
        self.assertEqual(headers.getRawHeaders(b"location"), [f"{self.origin_url}d.mp3".encode()])
        fill = self.cache.syncer.fill_for("d.mp3")
        if fill is not None:
            self.cache.result(fill.when_done())
        _, headers, _ = self.request("GET", "download/d.mp3", allow_redirects=False)
        self.assertEqual(headers.getRawHeaders(b"location"), [f"{self.url}files/d.mp3".encode()])


class HealthTests(APITestCase):
    def test_healthz(self) -> None:
        code, _, body = self.call("GET", "healthz")
        self.assertEqual((code, body["status"], body["cached_objects"]), (200, "ok", 0))

    def test_status_page(self) -> None:
        code, _, body = self.request("GET", "")
        self.assertEqual(code, 200)
        self.assertIn(b"cachetier", body)


class ProgressTests(LoopbackAPITestCase):
    async def test_syncing_reports_progress(self) -> None:
        self.origin.put("slow.mp3", body_of(2_000_000))
        self.origin.rate = 1_000_000
        await self.call("GET", "api/v1/files/slow.mp3")
        fill = self.cache.syncer.fill_for("slow.mp3")
        await fill.when_started()
        _, _, body = await self.call("GET", "api/v1/files/slow.mp3")
        self.assertEqual((body["state"], body["size"]), ("syncing", 2_000_000))
        self.assertLess(body["bytes_synced"], 2_000_000)
        await fill.when_done()


class UpstreamClientTests(LoopbackAPITestCase):
    async def test_upstream_cache_tier_client_works_unchanged(self) -> None:
        from cache_tier import CacheTierClient

        self.origin.put("upstream.mp3", body_of(10_000))
        client = CacheTierClient(self.url, request_timeout=2.0, enable_local_cache=False)
        first = await deferToThread(client.verify_file, "upstream.mp3")
        self.assertFalse(first)
        fill = self.cache.syncer.fill_for("upstream.mp3")
        if fill is not None:
            await fill.when_done()
        self.assertTrue(await deferToThread(client.verify_file, "upstream.mp3"))
        self.assertEqual(
            client.build_download_url("upstream.mp3"), self.url + "download/upstream.mp3"
        )
        self.assertFalse(await deferToThread(client.verify_file, "never-there.mp3"))
        self.assertEqual(self.origin.counts["upstream.mp3"], 1)
        fill = self.cache.syncer.fill_for("never-there.mp3")
        if fill is not None:
            await fill.when_done().addErrback(lambda _: None)


class MetricsTests(LoopbackAPITestCase):
    async def test_metrics_count_outcomes_and_bytes(self) -> None:
        self.origin.put("m.mp3", b"y" * 5000)
        await self.cache.syncer.start("m.mp3").when_done()
        response = await self.client.get(self.url + "files/m.mp3")
        await content(response)
        response = await self.client.get(self.url + "metrics")
        text = (await content(response)).decode()
        self.assertIn('cachetier_requests_total{outcome="hit"} 1.0', text)
        self.assertIn("cachetier_served_bytes_total 5000.0", text)
        self.assertIn("cachetier_origin_requests_total 1.0", text)
        self.assertIn("cachetier_origin_bytes_total 5000.0", text)
        self.assertIn("cachetier_cached_objects 1.0", text)
        self.assertIn("cachetier_cached_bytes 5000.0", text)
        self.assertIn("cachetier_syncs_in_flight 0.0", text)


class AccessLogFileTests(LoopbackAPITestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.settings = {"access_log": self.path}
        super().setUp()

    async def test_one_line_per_request_in_its_own_file(self) -> None:
        self.origin.put("a.mp3", b"x" * 1234)
        await self.cache.syncer.start("a.mp3").when_done()
        for _ in range(2):
            response = await self.client.get(self.url + "files/a.mp3")
            await content(response)
        await self.call("GET", "nope")
        self.cache.access_file.flush()
        with open(self.path) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 3)
        self.assertRegex(
            lines[0],
            r"^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "
            r'"GET /files/a\.mp3 HTTP/1\.1" 200 1234 "-" "[^"]*" "-" hit \d+\.\dms OK$',
        )
        self.assertRegex(lines[2], r'"GET /nope HTTP/1\.1" 404 \d+ "-" "[^"]*" "-" - ')
