"""
C{/healthz} tells a load balancer the truth, over real sockets.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from treq import content
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from .helpers import body_of, http_client, start_cachetier, start_origin


class HealthTests(TestCase):
    def setUp(self) -> None:
        self.origin, self.origin_url = start_origin(self)
        self.cache, self.url = start_cachetier(self, self.origin_url, origin_retries=1)
        self.client = http_client(self)

    async def health(self) -> tuple[int, dict[str, Any], bytes]:
        await deferLater(reactor, 1.05, lambda: None)  # past the cached verdict
        response = await self.client.get(self.url + "healthz")
        body = await content(response)
        return response.code, json.loads(body), body

    async def test_ok_when_all_is_well(self) -> None:
        code, verdict, _ = await self.health()
        self.assertEqual((code, verdict["status"], verdict["reasons"]), (200, "ok", []))

    async def test_degraded_while_the_origin_is_down(self) -> None:
        self.origin.put("a.mp3", body_of(1000))
        await self.client.get(self.url + "files/a.mp3")
        await self.origin.port.stopListening()
        await self.cache.pool.closeCachedConnections()  # no kept-alive way in
        response = await self.client.get(self.url + "files/b.mp3")
        self.assertEqual(response.code, 502)
        await content(response)
        code, verdict, _ = await self.health()
        self.assertEqual((code, verdict["status"]), (200, "degraded"))
        self.assertIn("origin errors in the last minute: connection", verdict["reasons"])
        response = await self.client.get(self.url + "files/a.mp3")
        self.assertEqual(response.code, 200, "the cache still serves")
        await content(response)

    async def test_failing_when_the_cache_directory_takes_no_file(self) -> None:
        tmp = os.path.join(self.cache.store.root, "tmp")
        shutil.rmtree(tmp)
        with open(tmp, "w"):
            pass  # a file where the directory was: every create fails
        self.addCleanup(os.unlink, tmp)
        code, verdict, body = await self.health()
        self.assertEqual((code, verdict["status"]), (503, "failing"))
        self.assertEqual(
            verdict["reasons"], ["the cache directory takes no new file (Not a directory)"]
        )
        self.assertNotIn(self.cache.store.root.encode(), body)
