"""
The status page in a real browser: Debian's chromium, headless, driven by
Playwright (never a downloaded browser), against a live server with
traffic.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from treq import content
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest

from .helpers import CacheTestCase, body_of

TOKEN = "d" * 32
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _browser() -> tuple[Any, str]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SkipTest("playwright is not installed (pip install -e '.[test]')") from None
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SkipTest("no chromium: apt-get install chromium (.ci/run does)")
    return sync_playwright, chromium


class DashboardTests(CacheTestCase):
    timeout = 90
    settings = {"admin_token": TOKEN.encode()}

    def setUp(self) -> None:
        self.playwright, self.chromium = _browser()
        super().setUp()

    def look(self, screenshot: str) -> dict[str, Any]:
        """
        Open the page (in a thread: Playwright's API blocks) and read what
        it shows once its charts have a few samples.
        """
        errors: list[str] = []
        with self.playwright() as p:
            browser = p.chromium.launch(executable_path=self.chromium, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{self.url}#token={TOKEN}")
                # Two lines (listeners, origin): three samples at least.
                page.wait_for_selector(
                    "#bandwidth polyline >> nth=1", state="attached", timeout=30_000
                )
                seen = page.evaluate(
                    """() => ({
                    status: document.getElementById('status').textContent,
                    hitRatio: document.getElementById('hit-ratio').textContent,
                    outcomes: Object.fromEntries([...document.querySelectorAll('#outcomes rect')]
                        .map(r => [r.dataset.outcome, Number(r.dataset.count)])),
                    syncs: [...document.querySelectorAll('#syncs tr')].map(r => r.cells[0].textContent),
                    progress: [...document.querySelectorAll('#syncs progress')].map(p => p.value),
                    top: [...document.querySelectorAll('#top tr')].slice(1)
                        .map(r => [r.cells[0].textContent, r.cells[1].textContent]),
                    disk: document.getElementById('disk-text').textContent,
                    diskBar: Number(document.getElementById('disk-used').getAttribute('width')),
                    token: location.hash,
                })"""
                )
                page.screenshot(path=screenshot, full_page=True)
                # As on a phone: nothing wider than the screen.
                page.set_viewport_size({"width": 390, "height": 844})
                seen["phone_overflow"] = page.evaluate(
                    "document.documentElement.scrollWidth > window.innerWidth"
                )
                page.screenshot(path=screenshot.replace(".png", "-phone.png"), full_page=True)
            finally:
                browser.close()
        seen["errors"] = errors
        return seen

    async def test_the_page_shows_the_traffic_under_load(self) -> None:
        for name in ("ep.mp3", "ep2.mp3"):
            self.origin.put(name, body_of(200_000, name))
        player = {"User-Agent": "AppleCoreMedia/1.0"}
        for name in ("ep.mp3", "ep.mp3", "ep.mp3", "ep2.mp3"):
            await content(await self.client.get(self.url + "files/" + name, headers=player))
        # One download in flight all along: a slow origin.
        self.origin.put("slow.mp4", body_of(50_000_000, "slow"))
        self.origin.rate = 100_000
        await content(await self.client.get(self.url + "api/v1/files/slow.mp4"))
        await self.cache.site.analytics.drain()
        load = reactor.callLater(0, lambda: None)

        async def traffic() -> None:
            # Listeners keep coming while the page is open.
            while True:
                await content(await self.client.get(self.url + "files/ep2.mp3"))
                await deferLater(reactor, 0.2, lambda: None)

        from twisted.internet.defer import Deferred

        running = Deferred.fromCoroutine(traffic())
        running.addErrback(lambda _: None)
        screenshot = os.path.abspath("status-page.png")
        try:
            seen = await deferToThread(self.look, screenshot)
        finally:
            running.cancel()
            load.cancel() if load.active() else None
        response = await self.client.get(
            self.url + "api/v1/dashboard", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        truth = json.loads(await content(response))
        self.assertEqual(seen["errors"], [])
        self.assertEqual(seen["token"], "", "the token leaves the address bar")
        self.assertEqual(seen["status"], "ok")
        self.assertEqual(seen["syncs"], ["slow.mp4"])
        self.assertGreater(seen["progress"][0], 0)
        self.assertIn(["ep.mp3", "1"], seen["top"])
        self.assertGreaterEqual(seen["outcomes"]["hit"], 2)
        self.assertEqual(seen["outcomes"]["miss"], truth["requests"]["miss"])
        hits, misses = seen["outcomes"]["hit"], seen["outcomes"]["miss"]
        self.assertEqual(seen["hitRatio"], f"{100 * hits / (hits + misses):.1f} %")
        self.assertIn("cached of", seen["disk"])
        self.assertGreater(seen["diskBar"], 0)
        self.assertFalse(seen["phone_overflow"], "the page fits a phone's width")
        self.assertTrue(os.path.getsize(screenshot) > 10_000)
        print(f"screenshot: {screenshot}")

    async def test_the_data_needs_the_admin_token(self) -> None:
        response = await self.client.get(self.url + "api/v1/dashboard")
        self.assertEqual(response.code, 401)
        await content(response)
        response = await self.client.get(self.url)
        page = await content(response)
        self.assertIn(b"<svg", page)
        self.assertNotIn(b"http://", page.replace(b"http://www.w3.org/2000/svg", b""))
