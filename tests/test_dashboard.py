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
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from cachetier.web.dashboard import SyncSpeeds, top_episodes

from .helpers import CacheTestCase, body_of, start_origin
from .nodes import start_node, until
from .redis_server import start_redis
from .test_membership import TOKEN as MEMBER_TOKEN
from .test_membership import start_member

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


# What a person sees, read from the page.
SEEN = """() => {
  const texts = q => [...document.querySelectorAll(q)].map(e => e.textContent);
  const visible = q => [...document.querySelectorAll(q)].every(e => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && r.right <= innerWidth + 1 && r.left >= -1;
  });
  return {
    status: texts('#status')[0],
    bandwidthY: texts('#bandwidth text.y'), bandwidthX: texts('#bandwidth text.x'),
    requestsY: texts('#requests text.y'), requestsX: texts('#requests text.x'),
    lines: texts('#bandwidth polyline').length,
    outRate: texts('#out-rate')[0],
    outcomes: Object.fromEntries([...document.querySelectorAll('#outcome-legend b')]
        .map(b => [b.dataset.outcome, Number(b.textContent)])),
    hitRatio: texts('#hit-ratio')[0], byteRatio: texts('#byte-ratio')[0],
    syncs: [...document.querySelectorAll('#syncs .sync')].map(s =>
        ['.file', '.done', '.speed', '.left'].map(q => s.querySelector(q).textContent)),
    origin: texts('#origin-text')[0],
    disk: texts('#disk-text')[0] + ' / ' + texts('#disk-limit')[0],
    top: [...document.querySelectorAll('#top tbody tr')].map(r => [...r.cells].map(c => c.textContent)),
    token: location.hash,
    overflow: document.documentElement.scrollWidth > innerWidth,
    allVisible: visible('#bandwidth text.y') && visible('#syncs .sync span') && visible('#top td'),
  };
}"""
# A sync's numbers once its speed is known.
SYNC_READY = """() => [...document.querySelectorAll('#syncs .left')]
    .some(c => /\\d+:\\d\\d left$/.test(c.textContent))"""
SIZES = {"laptop": (1280, 800), "phone": (390, 844)}


def screenshots() -> str:
    """
    Where the screenshots go: under the trial's temp directory, kept after
    the run as the test's artefacts.
    """
    path = os.path.abspath("screenshots")
    os.makedirs(path, exist_ok=True)
    return path


def open_page(test: Any, url: str, token: str, look: Any) -> Any:
    """
    Open the page at C{url} with C{token} (in a thread: Playwright's API
    blocks) and return what C{look(page)} reads, failing C{test} on any
    script error.
    """
    errors: list[str] = []
    with test.playwright() as p:
        browser = p.chromium.launch(executable_path=test.chromium, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}#token={token}")
            seen = look(page)
        finally:
            browser.close()
    # A refused token is a 403 the console reports; nothing else.
    test.assertEqual([e for e in errors if "403" not in e], [])
    return seen


class DashboardTests(CacheTestCase):
    timeout = 120
    settings = {"admin_token": TOKEN.encode(), "min_free": 64 * 1024 * 1024}

    def setUp(self) -> None:
        self.playwright, self.chromium = _browser()
        super().setUp()

    def open(self, token: str, look: Any) -> Any:
        return open_page(self, self.url, token, look)

    def at_both_sizes(self, page: Any) -> dict[str, Any]:
        page.wait_for_function(SYNC_READY, timeout=60_000)
        # Two lines (listeners, origin) of two points at least.
        page.wait_for_selector("#bandwidth polyline >> nth=1", state="attached", timeout=30_000)
        seen = {}
        for size, (width, height) in SIZES.items():
            page.set_viewport_size({"width": width, "height": height})
            page.wait_for_timeout(100)  # one frame: the charts redraw on resize
            seen[size] = page.evaluate(SEEN)
            path = os.path.join(screenshots(), f"status-page-{size}.png")
            page.screenshot(path=path, full_page=True)
            seen[size]["screenshot"] = path
            print(f"screenshot ({size}, {width}x{height}): {path}")
        return seen

    async def test_the_page_shows_the_traffic_under_load(self) -> None:
        self.cache.flush()  # the service's sample a second, taken before the traffic
        for name in ("ep.mp3", "ep2.mp3"):
            self.origin.put(name, body_of(200_000, name))
        player = {"User-Agent": "AppleCoreMedia/1.0"}
        for name in ("ep.mp3", "ep.mp3", "ep.mp3", "ep2.mp3"):
            await content(await self.client.get(self.url + "files/" + name, headers=player))
        # Requested, never downloaded: a crawler's request is no download.
        self.origin.put("crawled.mp3", body_of(1000, "crawled"))
        bot = {"User-Agent": "Googlebot/2.1"}
        await content(await self.client.get(self.url + "files/crawled.mp3", headers=bot))
        # One download in flight all along: a slow origin.
        self.origin.put("slow.mp4", body_of(50_000_000, "slow"))
        self.origin.rate = 200_000
        await content(await self.client.get(self.url + "api/v1/files/slow.mp4"))
        await self.cache.site.analytics.drain()

        async def traffic() -> None:
            # Listeners keep coming while the page is open.
            while True:
                await content(await self.client.get(self.url + "files/ep2.mp3"))
                await deferLater(reactor, 0.2, lambda: None)

        running = Deferred.fromCoroutine(traffic())
        running.addErrback(lambda _: None)
        try:
            seen = await deferToThread(self.open, TOKEN, self.at_both_sizes)
        finally:
            running.cancel()
        for size, view in seen.items():
            with self.subTest(size=size):
                self.assertEqual(view["token"], "", "the token leaves the address bar")
                self.assertEqual(view["status"], "ok")
                self.assertFalse(view["overflow"], "the page fits the screen's width")
                self.assertTrue(view["allVisible"], "axis labels, syncs and top rows are on screen")
                self.assertGreaterEqual(len(view["bandwidthY"]), 2)
                for label in view["bandwidthY"]:
                    self.assertRegex(label, r"^\d+(\.\d+)? (B|KiB|MiB|GiB)/s$")
                for label in view["requestsY"]:
                    self.assertRegex(label, r"^\d+(\.\d+)? req/s$")
                self.assertGreaterEqual(len(view["bandwidthX"]), 2, "a time axis of 15 minutes")
                for label in view["bandwidthX"] + view["requestsX"]:
                    self.assertRegex(label, r"^\d\d:\d\d$")
                self.assertEqual(view["lines"], 2)
                self.assertRegex(view["outRate"], r"^\d+(\.\d)? (B|KiB|MiB)/s$")
                self.assertGreaterEqual(view["outcomes"]["hit"], 2)
                self.assertGreaterEqual(view["outcomes"]["miss"], 3)
                self.assertRegex(view["hitRatio"], r"^\d+\.\d %$")
                self.assertRegex(view["byteRatio"], r"^\d+\.\d %$")
                [(file, done, speed, left)] = view["syncs"]
                self.assertEqual(file, "slow.mp4")
                self.assertRegex(done, r"^\d+\.\d of 47\.7 MiB \(\d+ %\)$")
                self.assertRegex(speed, r"^\d+\.\d (KiB|MiB)/s$")
                self.assertRegex(left, r"^(\d+:)?\d+:\d\d left$")
                self.assertIn("breaker: closed", view["origin"])
                self.assertIn("errors in the last minute: 0", view["origin"])
                self.assertIn("no --max-size", view["disk"])
                self.assertIn("--min-free 64.0 MiB", view["disk"])
                files = [row[0] for row in view["top"]]
                self.assertEqual(sorted(files), ["ep.mp3", "ep2.mp3"], "no row without a download")
                # One listener's three requests: one download.
                self.assertIn(["ep.mp3", "1", "585.9 KiB"], view["top"])
                self.assertGreater(os.path.getsize(view["screenshot"]), 10_000)

    async def test_a_wrong_token_says_so(self) -> None:
        def look(page: Any) -> dict[str, Any]:
            page.wait_for_selector("#login-message.bad", timeout=30_000)
            path = os.path.join(screenshots(), "status-page-wrong-token.png")
            page.screenshot(path=path)
            print(f"screenshot (wrong token): {path}")
            seen = {
                "message": page.inner_text("#login-message"),
                "board": page.is_visible("#board"),
                "login": page.is_visible("#token"),
            }
            # Typed into the box, wrong again: said again.
            page.fill("#token", "still-not-it")
            page.click("#login button")
            page.wait_for_function(
                "() => document.getElementById('login-message').textContent.includes('refused')",
                timeout=30_000,
            )
            page.fill("#token", "")
            page.click("#login button")
            seen["empty"] = page.inner_text("#login-message")
            return seen

        seen = await deferToThread(self.open, "not-the-token", look)
        self.assertIn("That admin token was refused", seen["message"])
        self.assertIn("the admin token is wrong", seen["message"])
        self.assertTrue(seen["login"])
        self.assertFalse(seen["board"])
        self.assertEqual(seen["empty"], "Enter the admin token.")

    async def test_the_data_needs_the_admin_token(self) -> None:
        response = await self.client.get(self.url + "api/v1/dashboard")
        self.assertEqual(response.code, 401)
        await content(response)
        response = await self.client.get(self.url)
        page = await content(response)
        self.assertIn(b"<svg", page)
        self.assertNotIn(b"http://", page.replace(b"http://www.w3.org/2000/svg", b""))


# The cluster card as a person reads it: a row a node.
CLUSTER = """() => ({
  card: !document.getElementById('cluster-card').hidden,
  count: document.getElementById('cluster-count').textContent,
  rows: [...document.querySelectorAll('#cluster tbody tr')].map(r => [...r.cells].map(c => c.textContent)),
})"""


class ClusterCardTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.playwright, self.chromium = _browser()
        self.redis = await start_redis(self)
        self.origin, self.origin_url = start_origin(self)

    async def test_the_page_shows_every_node_alive_or_gone(self) -> None:
        a = await start_member(self, self.origin_url, self.redis, "edge-a", "127.0.0.1")
        b = await start_member(
            self, self.origin_url, self.redis, "shield-b", "127.0.0.2", "--role=shield"
        )
        client = self.redis.client()
        await until(lambda: deferToThread(client.exists, "cachetier:node:shield-b"), within=15)
        b.kill()
        await b.ended()

        def look(page: Any) -> Any:
            page.wait_for_function(
                "() => /gone/.test(document.querySelector('#cluster tr[data-node=shield-b]')?.textContent)",
                timeout=30_000,
            )
            path = os.path.join(screenshots(), "status-page-cluster.png")
            page.screenshot(path=path, full_page=True)
            print(f"screenshot (cluster): {path}")
            return page.evaluate(CLUSTER)

        seen = await deferToThread(open_page, self, a.url, MEMBER_TOKEN, look)
        self.assertTrue(seen["card"])
        self.assertEqual(seen["count"], "(1 of 2 alive)")
        [edge, shield] = seen["rows"]
        self.assertEqual(edge[:4], ["edge-a", "edge", "ok", "0"])
        self.assertRegex(edge[5], r"^\d+ B of \d+(\.\d)? (KiB|MiB|GiB|TiB)$")
        self.assertEqual(shield[:2], ["shield-b", "–"])
        self.assertRegex(shield[2], r"^gone, last seen \d+:\d\d ago$")

    async def test_a_node_in_no_cluster_shows_no_card(self) -> None:
        with open(token_file := os.path.abspath(self.mktemp()), "w") as f:
            f.write(MEMBER_TOKEN)
        node = await start_node(self, self.origin_url, f"--admin-token-file={token_file}")

        def look(page: Any) -> Any:
            page.wait_for_selector("#board:not([hidden])", timeout=30_000)
            page.wait_for_function(
                "() => document.getElementById('status').className === 'ok'", timeout=30_000
            )
            return page.evaluate(CLUSTER)

        seen = await deferToThread(open_page, self, node.url, MEMBER_TOKEN, look)
        self.assertFalse(seen["card"])


class DashboardDataTests(CacheTestCase):
    settings = {"admin_token": TOKEN.encode(), "max_size": 10_000_000}

    async def dashboard(self, query: str = "") -> tuple[int, Any]:
        response = await self.client.get(
            self.url + "api/v1/dashboard" + query, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        return response.code, json.loads(await content(response))

    async def test_since_must_be_a_time(self) -> None:
        code, body = await self.dashboard("?since=yesterday")
        self.assertEqual((code, body["error"]), (400, "bad_request"))
        self.assertIn("since", body["message"])

    async def test_the_history_after_since_and_the_quota_that_applies(self) -> None:
        history = self.cache.site.metrics.history
        clock = [1_000_000.0]
        history.clock = lambda: clock[0]
        history.sample()
        await self.cached("a.mp3", body_of(3000, "a"))
        await content(await self.client.get(self.url + "files/a.mp3"))
        clock[0] += 1
        code, body = await self.dashboard()
        self.assertEqual(code, 200)
        [row] = body["history"]
        self.assertEqual(
            (row["t"], row["out"], row["hit"], row["origin"]), (1_000_001, 3000, 1, 3000)
        )
        clock[0] += 1
        code, body = await self.dashboard(f"?since={row['t']}")
        self.assertEqual([r["t"] for r in body["history"]], [1_000_002])
        self.assertEqual(body["disk"]["max_size"], 10_000_000)
        self.assertEqual(
            body["origin"],
            {"breaker": "closed", "consecutive_failures": 0, "errors_last_minute": 0},
        )

    async def test_the_rows_a_page_reads_count_every_request(self) -> None:
        # The page samples when it polls, and so does the service's flush
        # once a second: a row the page has read must never change after,
        # or the requests between the two samples of one second are lost.
        history = self.cache.site.metrics.history
        clock = [1_000_000.0]
        history.clock = lambda: clock[0]
        self.cache.flush()
        rows: list[dict[str, Any]] = []

        async def miss(name: str) -> None:
            self.origin.put(name, body_of(100, name))
            await content(await self.client.get(self.url + "files/" + name))

        async def poll() -> None:
            since = rows[-1]["t"] if rows else 0
            rows.extend((await self.dashboard(f"?since={since}"))[1]["history"])

        await miss("a.mp3")
        clock[0] = 1_000_000.3
        await poll()
        await miss("b.mp3")
        clock[0] = 1_000_000.6
        self.cache.flush()
        await miss("c.mp3")
        clock[0] = 1_000_001.0
        self.cache.flush()
        clock[0] = 1_000_002.3
        await poll()
        self.assertEqual(sum(r["miss"] * r["dt"] for r in rows), 3)

    def test_top_episodes_leave_out_files_never_downloaded(self) -> None:
        rows = [
            {"file": "probe.mp3", "downloads": 0, "bytes": 9_000_000, "requests": 40},
            {"file": "a.mp3", "downloads": 2, "bytes": 100, "requests": 2},
            {"file": "b.mp3", "downloads": 5, "bytes": 50, "requests": 5},
        ]
        self.assertEqual(
            top_episodes(rows),
            [
                {"file": "b.mp3", "downloads": 5, "bytes": 50},
                {"file": "a.mp3", "downloads": 2, "bytes": 100},
            ],
        )


class SyncSpeedsTests(SynchronousTestCase):
    def test_speed_over_the_last_ten_seconds_and_a_new_download_starts_afresh(self) -> None:
        speeds = SyncSpeeds()
        self.assertEqual(speeds.update(100.0, {"a": 0}), {"a": None})
        self.assertEqual(speeds.update(102.0, {"a": 2000}), {"a": 1000.0})
        for t in range(104, 120, 2):
            speeds.update(float(t), {"a": 2000 + (t - 102) * 500})
        # Only the last ten seconds count: 500 bytes a second.
        self.assertEqual(speeds.update(120.0, {"a": 11_000}), {"a": 500.0})
        self.assertEqual(speeds.update(122.0, {"a": 100, "b": 0}), {"a": None, "b": None})
        self.assertEqual(speeds.update(124.0, {"b": 10}), {"b": 5.0})
