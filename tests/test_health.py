"""
C{/healthz} tells a load balancer the truth, in memory with a clock.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from .helpers import MemoryCacheTestCase, body_of


class HealthTests(MemoryCacheTestCase):
    settings = {"origin_retries": 1}

    def health(self) -> tuple[int, dict[str, Any], bytes]:
        self.wait(1.05)  # past the cached verdict
        code, _, body = self.request("GET", "healthz")
        return code, json.loads(body), body

    def test_ok_when_all_is_well(self) -> None:
        code, verdict, _ = self.health()
        self.assertEqual((code, verdict["status"], verdict["reasons"]), (200, "ok", []))

    def test_degraded_while_the_origin_is_down(self) -> None:
        self.origin.put("a.mp3", body_of(1000))
        self.get("a.mp3")
        self.cache.origin_down = True
        code, _, _ = self.get("b.mp3")
        self.assertEqual(code, 502)
        code, verdict, _ = self.health()
        self.assertEqual((code, verdict["status"]), (200, "degraded"))
        self.assertIn("origin errors in the last minute: connection", verdict["reasons"])
        code, _, _ = self.get("a.mp3")
        self.assertEqual(code, 200, "the cache still serves")

    def test_failing_when_the_cache_directory_takes_no_file(self) -> None:
        tmp = os.path.join(self.cache.store.root, "tmp")
        shutil.rmtree(tmp)
        with open(tmp, "w"):
            pass  # a file where the directory was: every create fails
        self.addCleanup(os.unlink, tmp)
        code, verdict, body = self.health()
        self.assertEqual((code, verdict["status"]), (503, "failing"))
        self.assertEqual(
            verdict["reasons"], ["the cache directory takes no new file (Not a directory)"]
        )
        self.assertNotIn(self.cache.store.root.encode(), body)
