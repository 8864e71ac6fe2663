"""
The admin API: the token checks and purging in memory; the log, readers and
downloads a purge meets, and bodies the site refuses, over real sockets.
"""

from __future__ import annotations

import json
import os
from typing import Any

from treq import content
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import ResponseFailed

from cachetier.errors import Reason

from .helpers import CacheTestCase, MemoryCacheTestCase, body_of
from .test_freshness import _PausedReader

TOKEN = b"s3cret-admin-token-0123456789"


def admin_call(token: bytes | None, body: Any) -> dict[str, Any]:
    """
    treq's arguments for an admin call with C{token} and C{body} (bytes, or
    a value sent as JSON).
    """
    headers = {} if token is None else {b"authorization": [b"Bearer " + token]}
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return {"headers": headers, "data": data}


class AdminTestCase(MemoryCacheTestCase):
    settings: dict[str, Any] = {"admin_token": TOKEN}

    def admin(
        self, method: str, path: str, token: bytes | None = TOKEN, body: Any = None
    ) -> tuple[int, Any, Any]:
        code, headers, reply = self.request(method, path, **admin_call(token, body))
        return code, headers, json.loads(reply)


class LoopbackAdminTestCase(CacheTestCase):
    settings: dict[str, Any] = {"admin_token": TOKEN}

    async def admin(
        self, method: str, path: str, token: bytes | None = TOKEN, body: Any = None
    ) -> tuple[int, Any, Any]:
        kwargs = admin_call(token, body)
        response = await self.client.request(method, self.url + path, **kwargs)
        return response.code, response.headers, json.loads(await content(response))


class NoTokenTests(AdminTestCase):
    settings: dict[str, Any] = {}

    def test_without_a_configured_token_every_admin_call_is_403(self) -> None:
        self.cached("a.mp3", b"x")
        for method, path, body in (
            ("DELETE", "api/v1/files/a.mp3", None),
            ("POST", "api/v1/purge", {"files": ["a.mp3"]}),
        ):
            code, _, reply = self.admin(method, path, token=b"anything", body=body)
            self.assertEqual((code, reply["error"]), (403, "forbidden"))
            self.assertIn("no admin token is configured", reply["message"])
        self.assertIsNotNone(self.cache.store.get("a.mp3"))


class TokenTests(AdminTestCase):
    def test_missing_wrong_and_right_tokens(self) -> None:
        self.cached("a.mp3", b"x")
        code, headers, reply = self.admin("DELETE", "api/v1/files/a.mp3", token=None)
        self.assertEqual((code, reply["error"]), (401, "unauthorized"))
        self.assertEqual(
            headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="cachetier admin"']
        )
        code, _, reply = self.admin("DELETE", "api/v1/files/a.mp3", token=b"wrong")
        self.assertEqual((code, reply["error"]), (403, "forbidden"))
        self.assertIsNotNone(self.cache.store.get("a.mp3"))
        code, _, reply = self.admin("DELETE", "api/v1/files/a.mp3")
        self.assertEqual((code, reply), (200, {"file": "a.mp3", "purged": True}))
        self.assertIsNone(self.cache.store.get("a.mp3"))


class PurgeTests(AdminTestCase):
    def test_purge_by_name_refetches_on_next_request(self) -> None:
        data = body_of(10_000)
        self.cached("a.mp3", data)
        code, _, reply = self.admin("POST", "api/v1/purge", body={"files": ["a.mp3", "b"]})
        self.assertEqual((code, reply), (200, {"purged": ["a.mp3"], "count": 1}))
        self.assertEqual(self.get("a.mp3")[2], data)
        self.assertEqual(self.origin.counts["a.mp3"], 2)

    def test_purge_by_prefix(self) -> None:
        for name in ("ep/1.mp3", "ep/2.mp3", "epilogue.mp3", "other/ep/3.mp3"):
            self.cached(name, b"x")
        code, _, reply = self.admin("POST", "api/v1/purge", body={"prefix": "ep/"})
        self.assertEqual((code, reply["purged"]), (200, ["ep/1.mp3", "ep/2.mp3"]))
        self.assertEqual(sorted(self.cache.store.names()), ["epilogue.mp3", "other/ep/3.mp3"])

    def test_purging_a_remembered_404_lets_a_new_upload_through(self) -> None:
        code, _, _ = self.get("new.mp3")
        self.assertEqual(code, 404)
        self.origin.put("new.mp3", b"uploaded")
        code, _, _ = self.get("new.mp3")
        self.assertEqual(code, 404, "remembered for the negative TTL")
        code, _, reply = self.admin("DELETE", "api/v1/files/new.mp3")
        self.assertEqual(reply["purged"], True)
        code, _, body = self.get("new.mp3")
        self.assertEqual((code, body), (200, b"uploaded"))


class TokenLogTests(LoopbackAdminTestCase):
    async def test_the_token_never_reaches_the_log(self) -> None:
        events: list[str] = []
        observer = lambda event: events.append(formatEvent(event) + repr(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        await self.admin("DELETE", "api/v1/files/a.mp3", token=TOKEN + b"x")
        await self.admin("DELETE", "api/v1/files/a.mp3")
        self.assertTrue(events)
        self.assertFalse([e for e in events if TOKEN.decode() in e])
        self.assertNotIn(TOKEN.decode(), repr(self.cache.site.resource.children))


class PurgeMeetsTests(LoopbackAdminTestCase):
    async def test_purge_during_a_download_stops_it_and_publishes_nothing(self) -> None:
        data = body_of(1_000_000)
        self.origin.put("slow.mp3", data)
        self.origin.rate = 2_000_000
        response = await self.client.get(self.url + "files/slow.mp3")
        fill = self.cache.syncer.fill_for("slow.mp3")
        code, _, reply = await self.admin("DELETE", "api/v1/files/slow.mp3")
        self.assertEqual(reply["purged"], True)
        # Its reader gets what it had, then a broken connection: never a
        # short body taken for a whole one.
        with self.assertRaises(ResponseFailed):
            await content(response)
        failure = await fill.when_done().addCallbacks(lambda _: None, lambda f: f.value)
        self.assertEqual(failure.reason, Reason.cancelled)
        self.assertIsNone(self.cache.store.get("slow.mp3"))
        self.assertEqual(os.listdir(os.path.join(self.cache.store.root, "tmp")), [])

    async def test_purge_during_a_read_lets_the_reader_finish(self) -> None:
        data = body_of(8_000_000)
        await self.cached("a.mp3", data)
        reader = _PausedReader()
        port = int(self.url.rsplit(":", 1)[1].strip("/"))
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), reader)
        await reader.some
        await self.admin("DELETE", "api/v1/files/a.mp3")
        self.assertEqual(self.cache.store.names(), [])
        reader.transport.resumeProducing()
        self.assertTrue((await reader.done).endswith(data))

    async def test_bad_purge_requests(self) -> None:
        cases = [
            (b"{not json", 400, "bad_json"),
            ({"files": ["a"], "prefix": "b"}, 400, "bad_request"),
            ({"prefix": ""}, 400, "bad_request"),
            ({"files": "a.mp3"}, 400, "bad_request"),
            ({"files": ["../etc/passwd"]}, 400, "bad_name"),
            (b"[" + b"1," * 600_000 + b"1]", 413, "too_large"),
        ]
        for body, status, error in cases:
            code, _, reply = await self.admin("POST", "api/v1/purge", body=body)
            self.assertEqual((code, reply["error"]), (status, error), repr(body)[:40])
