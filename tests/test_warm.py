"""
Release day: warming files ahead of listeners, through the admin API and
the C{cachetier warm} command (a real subprocess against a real server).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from treq import content
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase

from cachetier.feeds import names_from, unwrap

from .helpers import CacheTestCase, ProcessOutput, body_of, child_environment

TOKEN = "t" * 32


def feed(base: str, items: list[str]) -> bytes:
    entries = "".join(
        f"<item><title>{url}</title><guid>{url}</guid>"
        f'<enclosure url="{url}" length="1000" type="audio/mpeg"/></item>'
        for url in items
    )
    return (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>show</title>'
        f"<link>{base}</link><description>d</description>{entries}</channel></rss>"
    ).encode()


class WarmTestCase(CacheTestCase):
    timeout = 60

    def setUp(self) -> None:
        self.settings = {"admin_token": TOKEN.encode(), **self.settings}
        super().setUp()

    def command(self, *args: str) -> tuple[Any, ProcessOutput]:
        protocol = ProcessOutput()
        argv = [sys.executable, "-m", "cachetier.cli", "warm", f"--server={self.url}", *args]
        env = dict(child_environment(), CACHETIER_ADMIN_TOKEN=TOKEN, COLUMNS="200")
        process = reactor.spawnProcess(protocol, argv[0], argv, env=env)

        async def stop() -> None:
            if not protocol.ended.called:
                process.signalProcess("KILL")
                await protocol.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        return process, protocol

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        response = await self.client.request(
            method,
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        return response.code, json.loads(await content(response))


class WarmAPITests(WarmTestCase):
    settings = {"max_concurrent_syncs": 4}

    async def test_warm_is_admin_only(self) -> None:
        response = await self.client.post(self.url + "api/v1/warm", data=b'{"files": []}')
        self.assertEqual(response.code, 401)
        await content(response)

    async def test_warm_ups_never_take_the_last_slots(self) -> None:
        self.origin.rate = 200_000
        names = [f"ep{i}.mp3" for i in range(8)]
        for name in names:
            self.origin.put(name, body_of(400_000, name))
        code, body = await self.admin("POST", "api/v1/warm", {"files": names})
        self.assertEqual(code, 200)
        self.assertEqual({f["state"] for f in body["files"]}, {"syncing", "queued"})
        # A quarter of the slots (here one) stays free for listeners.
        self.assertEqual(self.cache.syncer.in_flight, 3)
        code, syncs = await self.admin("GET", "api/v1/syncs")
        self.assertEqual(len(syncs["syncs"]), 3)
        self.assertEqual(len(syncs["warm_queue"]), 5)
        self.origin.put("listener.mp3", body_of(1000))
        response = await self.client.get(self.url + "files/listener.mp3")
        self.assertEqual(await content(response), body_of(1000))
        for _ in range(200):
            if all(self.cache.store.get(n) is not None for n in names):
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(all(self.cache.store.get(n) is not None for n in names))
        code, body = await self.admin("POST", "api/v1/warm", {"files": names})
        self.assertEqual({f["state"] for f in body["files"]}, {"cached"})


class WarmCommandTests(WarmTestCase):
    async def test_a_feed_is_warmed_once_and_other_hosts_are_skipped(self) -> None:
        episodes = [f"show/ep{i:02}.mp3" for i in range(20)]
        for name in episodes:
            self.origin.put(name, body_of(50_000, name))
        urls = [self.origin_url + n for n in episodes] + ["https://elsewhere.example/ad.mp3"]
        self.origin.put("feed.xml", feed(self.origin_url, urls), content_type="application/rss+xml")
        process, protocol = self.command(f"--feed={self.origin_url}feed.xml", "--jobs=4")
        ended = await protocol.ended
        output = protocol.output.decode()
        self.assertEqual(ended.exitCode, 0, output)
        self.assertTrue(all(self.cache.store.get(n) is not None for n in episodes), output)
        self.assertIn("skipped", output)
        self.assertIn("elsewhere.example", output)
        counts = dict(self.origin.counts)
        process, protocol = self.command(f"--feed={self.origin_url}feed.xml")
        ended = await protocol.ended
        self.assertEqual(ended.exitCode, 0)
        self.assertEqual(protocol.output.decode().count("cached show/ep"), 20)
        # Only the feed was fetched again: every file counted as done at once.
        counts["feed.xml"] += 1
        self.assertEqual(dict(self.origin.counts), counts)

    async def test_enclosures_behind_tracking_prefixes_are_warmed_by_their_names(self) -> None:
        hostpath = self.origin_url.split("://", 1)[1]
        prefixes = {
            "ep1.mp3": "https://dts.podtrac.com/redirect.mp3/",
            "ep2.mp3": "https://op3.dev/e/https://",
            "ep3.mp3": "https://chrt.fm/track/ABC123/",
            "ep4.mp3": "https://pdst.fm/e/",
            "ep5.mp3": "https://verifi.podscribe.com/rss/p/",
            # Chained prefixes, the way networks stack them.
            "ep6.mp3": "https://dts.podtrac.com/redirect.mp3/chrt.fm/track/X9/op3.dev/e/",
        }
        for name in prefixes:
            self.origin.put(name, body_of(20_000, name))
        urls = [prefix + hostpath + name + "?ref=feed" for name, prefix in prefixes.items()]
        self.origin.put("feed.xml", feed(self.origin_url, urls), content_type="application/rss+xml")
        process, protocol = self.command(f"--feed={self.origin_url}feed.xml")
        ended = await protocol.ended
        output = protocol.output.decode()
        self.assertEqual(ended.exitCode, 0, output)
        for name in prefixes:
            self.assertIsNotNone(self.cache.store.get(name), output)
        self.assertNotIn("skipped", output)
        for host in ("dts.podtrac.com", "op3.dev", "chrt.fm", "pdst.fm", "verifi.podscribe.com"):
            self.assertIn(f"tracking prefix https://{host}/", output)
        # Only the origin was asked, each file once: the names went to the
        # server, never a URL of a prefix's host.
        self.assertEqual(dict(self.origin.counts), {"feed.xml": 1, **dict.fromkeys(prefixes, 1)})

    async def test_help_is_plain_text(self) -> None:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "cachetier.cli", "--help"], env=child_environment()
        )
        self.assertEqual(code, 0, err)
        self.assertNotRegex(out.decode(), r"[CLIB]\{")
        self.assertIn(b"cachetier's admin", out)

    async def test_a_missing_file_makes_the_exit_status_non_zero(self) -> None:
        self.origin.put("here.mp3", body_of(1000))
        process, protocol = self.command("here.mp3", "gone.mp3")
        ended = await protocol.ended
        self.assertEqual(ended.exitCode, 1, protocol.output.decode())
        self.assertIn("not_found", protocol.output.decode())

    async def test_watch_warms_new_episodes(self) -> None:
        self.origin.put("ep1.mp3", body_of(1000, "1"))
        self.origin.put("feed.xml", feed(self.origin_url, [self.origin_url + "ep1.mp3"]))
        process, protocol = self.command(f"--feed={self.origin_url}feed.xml", "--watch=0.5")
        for _ in range(100):
            if self.cache.store.get("ep1.mp3") is not None:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.origin.put("ep2.mp3", body_of(1000, "2"))
        self.origin.put(
            "feed.xml", feed(self.origin_url, [self.origin_url + n for n in ("ep1.mp3", "ep2.mp3")])
        )
        for _ in range(100):
            if self.cache.store.get("ep2.mp3") is not None:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertIsNotNone(self.cache.store.get("ep2.mp3"), protocol.output.decode())
        self.assertIn("new in the feed: ep2.mp3", protocol.output.decode())


class UnwrapTests(SynchronousTestCase):
    ORIGIN = "https://media.example.com/pod/"

    def test_the_origin_after_a_prefix_is_found_and_nothing_else(self) -> None:
        cases = {
            "https://media.example.com/pod/a.mp3": ("a.mp3", ""),
            "https://pdst.fm/e/MEDIA.Example.com/pod/a.mp3": ("a.mp3", "https://pdst.fm/e/"),
            "https://op3.dev/e/http://media.example.com/pod/a.mp3": (
                "a.mp3",
                "https://op3.dev/e/",
            ),
            # The path compares as it is; a longer host is another host.
            "https://pdst.fm/e/media.example.com/Pod/a.mp3": None,
            "https://pdst.fm/e/media.example.com.evil/pod/a.mp3": None,
            "https://media.example.com.evil/pod/a.mp3": None,
            "https://elsewhere.example/a.mp3": None,
        }
        for url, expected in cases.items():
            self.assertEqual(unwrap(url, self.ORIGIN), expected, url)

    def test_skipped_urls_say_why_and_prefixes_are_kept_by_name(self) -> None:
        found = names_from(
            [
                "https://chrt.fm/track/X/media.example.com/pod/a.mp3?x=1",
                "https://media.example.com/pod/a.mp3",
                "https://chrt.fm/track/X/media.example.com/pod/../b.mp3",
                "https://elsewhere.example/c.mp3",
            ],
            self.ORIGIN,
        )
        self.assertEqual(found.names, ["a.mp3"])
        self.assertEqual(found.prefixes, {"a.mp3": "https://chrt.fm/track/X/"})
        self.assertEqual(
            [why.split(":")[0] for _, why in found.skipped],
            ["not a valid name", "not under the cache's origin (elsewhere.example)"],
        )
