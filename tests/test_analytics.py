"""
Download analytics: a scripted day of listeners against hand-computed
IAB-style counts, over HTTP; the 24-hour window; what is (not) stored.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import os
import re
import sqlite3
import sys
from typing import Any

from treq import content
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import server

from cachetier.analytics import DB_FILE, DEFAULT_MINUTE_BYTES, Analytics, Event
from cachetier.tap import Options
from cachetier.web.api import StatsResource

from .helpers import (
    body_of,
    child_environment,
    http_client,
    listen,
    start_cachetier,
    start_origin,
)

TOKEN = "s" * 32
EP = 3_000_000
SHORT = 500_000


class ScriptedDayTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.origin, self.origin_url = start_origin(self)
        self.origin.put("ep.mp3", body_of(EP, "ep"))
        self.origin.put("short.mp3", body_of(SHORT, "short"))
        self.cache_dir = os.path.abspath(self.mktemp())
        self.client = http_client(self)
        self.start()

    def start(self) -> None:
        self.cache, self.url = start_cachetier(
            self,
            self.origin_url,
            cache_dir=self.cache_dir,
            admin_token=TOKEN.encode(),
            # Listener addresses come from X-Forwarded-For, as behind a proxy.
            trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),),
        )

    async def listen(self, ip: str, agent: str, name: str, byte_range: str | None = None) -> int:
        headers = {"X-Forwarded-For": ip, "User-Agent": agent}
        if byte_range:
            headers["Range"] = byte_range
        response = await self.client.get(self.url + "files/" + name, headers=headers)
        return len(await content(response))

    async def stats(self, query: str = "") -> Any:
        await self.cache.site.analytics.drain()
        response = await self.client.get(
            self.url + "api/v1/stats" + query, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        body = await content(response)
        return json.loads(body) if b"{" in body[:1] else body.decode()

    async def test_a_scripted_day_matches_hand_computed_counts(self) -> None:
        # ep.mp3 has no duration to read: one minute is 960,000 bytes.
        self.assertEqual(DEFAULT_MINUTE_BYTES, 960_000)
        sent = 0
        sent += await self.listen("198.51.100.1", "AppleCoreMedia/1.0", "ep.mp3")  # 1 download
        sent += await self.listen("198.51.100.2", "Overcast/3.0", "ep.mp3", "bytes=0-499999")
        sent += await self.listen("198.51.100.2", "Overcast/3.0", "ep.mp3", "bytes=500000-999999")
        # ... 1,000,000 bytes over two ranges: 1 download
        sent += await self.listen("198.51.100.3", "Podcasts/1.0", "ep.mp3", "bytes=0-99999")
        # ... 100,000 bytes: none
        sent += await self.listen(
            "198.51.100.4", "Mozilla/5.0 (compatible; Googlebot/2.1)", "ep.mp3"
        )
        # ... a bot: none, and not a complete download
        sent += await self.listen("198.51.100.1", "AppleCoreMedia/1.0", "ep.mp3")
        # ... the same listener again within 24 h: none
        sent += await self.listen("198.51.100.1", "Spotify/8.9", "ep.mp3")
        # ... the same address, another app: another listener, 1 download
        await self.listen("198.51.100.5", "Castro/2024", "short.mp3")
        # ... a file shorter than a minute: the whole file is a download
        rows = {(r["file"], r["day"]): r for r in (await self.stats())["rows"]}
        self.assertEqual(len(rows), 2)
        (ep,) = [r for (f, _), r in rows.items() if f == "ep.mp3"]
        (short,) = [r for (f, _), r in rows.items() if f == "short.mp3"]
        self.assertEqual(
            (ep["requests"], ep["bytes"], ep["complete"], ep["downloads"]), (7, sent, 3, 3)
        )
        self.assertEqual(
            (short["requests"], short["bytes"], short["complete"], short["downloads"]),
            (1, SHORT, 1, 1),
        )
        # CSV, totals by file, and the command line.
        csv_text = await self.stats("?format=csv&group=file")
        self.assertEqual(csv_text.splitlines()[0], "file,requests,bytes,complete,downloads")
        self.assertIn(f"ep.mp3,7,{sent},3,3", csv_text)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "cachetier.cli", "stats", f"--server={self.url}", "--group=file"],
            env=dict(child_environment(), CACHETIER_ADMIN_TOKEN=TOKEN, COLUMNS="150"),
            reactor=reactor,
        )
        self.assertEqual(code, 0, err)
        self.assertRegex(out.decode(), r"ep\.mp3\s*│\s*7\s*│\s*[\d,]+\s*│\s*3\s*│\s*3")
        # Nothing stored names an address.
        with open(os.path.join(self.cache_dir, DB_FILE), "rb") as f:
            self.assertNotIn(b"198.51.100", f.read())
        # A restart keeps them.
        await self.cache.stop()
        self.start()
        self.assertEqual(
            [r["downloads"] for r in (await self.stats("?group=file"))["rows"]], [3, 1]
        )

    async def test_stats_are_admin_only_and_check_their_query(self) -> None:
        response = await self.client.get(self.url + "api/v1/stats")
        self.assertEqual(response.code, 401)
        await content(response)
        for query, key in (
            ("from=2026-13-01", "from"),
            ("from=yesterday", "from"),
            ("to=2026-02-30", "to"),
        ):
            response = await self.client.get(
                self.url + "api/v1/stats?" + query, headers={"Authorization": f"Bearer {TOKEN}"}
            )
            self.assertEqual(response.code, 400, query)
            error = json.loads(await content(response))
            self.assertEqual(error["error"], "bad_date")
            self.assertIn(key, error["message"])

    async def command(self, *args: str) -> tuple[str, str, int]:
        """
        C{cachetier stats} with C{args}, its output piped (not a terminal).
        """
        env = {k: v for k, v in child_environment().items() if k != "COLUMNS"}
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "cachetier.cli", "stats", f"--server={self.url}", *args],
            env=dict(env, CACHETIER_ADMIN_TOKEN=TOKEN),
            reactor=reactor,
        )
        return out.decode(), err.decode(), code

    async def test_a_bad_day_is_one_line_and_exit_status_2(self) -> None:
        out, err, code = await self.command("--from=2026-13-01")
        self.assertEqual(code, 2, out + err)
        self.assertEqual(out, "")
        self.assertEqual(err, "cachetier stats: from must be a day of the calendar, YYYY-MM-DD\n")

    async def test_piped_stats_keep_whole_names_as_a_table_or_csv(self) -> None:
        name = "shows/the-long-running-show/" + "an-episode-with-a-long-title-" * 4 + "100.mp3"
        self.origin.put(name, body_of(SHORT, "long"))
        await self.listen("198.51.100.9", "AppleCoreMedia/1.0", name)
        await self.cache.site.analytics.drain()
        out, err, code = await self.command("--group=file")
        self.assertEqual(code, 0, err)
        self.assertRegex(out, re.escape(name) + r"\s*│\s*1\s*│\s*500,000\s*│\s*1\s*│\s*1")
        out, err, code = await self.command("--group=file", "--format=csv")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, f"file,requests,bytes,complete,downloads\n{name},1,{SHORT},1,1\n")


class BotsFileTests(TestCase):
    timeout = 60

    async def test_an_operators_bots_are_added_and_read_again_on_sighup(self) -> None:
        origin, origin_url = start_origin(self)
        origin.put("short.mp3", body_of(SHORT, "short"))
        bots_file = os.path.abspath(self.mktemp())
        with open(bots_file, "w", encoding="utf-8") as f:
            f.write("# our uptime checker\nHouseProbe\n")
        cache, url = start_cachetier(
            self,
            origin_url,
            admin_token=TOKEN.encode(),
            trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),),
            bots_file=bots_file,
        )
        client = http_client(self)

        async def listen(ip: str, agent: str) -> None:
            headers = {"X-Forwarded-For": ip, "User-Agent": agent}
            await content(await client.get(url + "files/short.mp3", headers=headers))

        async def downloads() -> int:
            await cache.site.analytics.drain()
            response = await client.get(
                url + "api/v1/stats?group=file", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            (row,) = json.loads(await content(response))["rows"]
            return int(row["downloads"])

        await listen("198.51.100.1", "HouseProbe/2.0")  # the operator's: none
        await listen("198.51.100.2", "curl/8.5.0")  # the shipped list's: none
        await listen("198.51.100.3", "NewChecker/1.0")  # not a bot yet: 1
        self.assertEqual(await downloads(), 1)
        with open(bots_file, "a", encoding="utf-8") as f:
            f.write("newchecker\n")
        # What SIGHUP runs (CacheService.reopen): every reloadable.
        for reload in cache.reloadables:
            reload()
        await listen("198.51.100.4", "NewChecker/1.0")  # now a bot: none
        await listen("198.51.100.5", "HouseProbe/2.0")
        await listen("198.51.100.6", "Overcast/3.0")  # a listener: 2
        self.assertEqual(await downloads(), 2)
        # A list that cannot be read on SIGHUP leaves the last one in place.
        os.remove(bots_file)
        for reload in cache.reloadables:
            reload()
        await listen("198.51.100.7", "NewChecker/1.0")
        self.assertEqual(await downloads(), 2)

    def test_an_unreadable_bots_file_is_refused_at_start(self) -> None:
        with self.assertRaises(UsageError) as caught:
            Options().parseOptions(
                [
                    "--origin=https://media.example.com/",
                    f"--cache-dir={self.mktemp()}",
                    "--bots-file=/nonexistent/bots.txt",
                ]
            )
        self.assertIn("--bots-file: cannot read /nonexistent/bots.txt", str(caught.exception))


class WindowTests(SynchronousTestCase):
    def test_a_listener_counts_again_after_24_hours_and_salts_rotate(self) -> None:
        directory = self.mktemp()
        os.mkdir(directory)
        analytics = Analytics(directory, maybeDeferred, lambda name: None)
        day = 1_800_000_000.0  # 2027-01-15

        def hear(when: float, sent: int = EP) -> None:
            analytics.record(Event("ep.mp3", "203.0.113.9", "App/1", sent, 200, when, size=EP))
            analytics.flush()

        hear(day)
        hear(day + 3600)  # the same window
        hear(day + 25 * 3600)  # a new one, the next day, with the next day's salt
        rows = analytics.stats(group="file")
        self.assertEqual(rows[0]["downloads"], 2)
        db = sqlite3.connect(os.path.join(directory, DB_FILE))
        self.assertEqual(db.execute("SELECT COUNT(*) FROM salts").fetchone()[0], 2)
        hear(day + 4 * 86400)
        self.assertEqual(db.execute("SELECT COUNT(*) FROM salts").fetchone()[0], 1)
        db.close()


class StatsListenerGoneTests(TestCase):
    async def test_a_listener_gone_before_the_answer_is_not_answered(self) -> None:
        queries: list[tuple[Deferred[Any], Any, dict[str, Any]]] = []

        def hold(f: Any, **kwargs: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            queries.append((d, f, kwargs))
            return d

        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        site = server.Site(StatsResource(Analytics(directory, hold), TOKEN.encode()))
        gone: Deferred[None] = Deferred()

        class Request(server.Request):
            def connectionLost(self, reason: Any) -> None:
                super().connectionLost(reason)
                gone.callback(None)

        site.requestFactory = Request
        port = listen(self, site).getHost().port
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())
        client.transport.write(
            b"GET /?group=file HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
        )
        while not queries:
            await deferLater(reactor, 0.01)
        client.transport.abortConnection()
        await gone
        d, f, kwargs = queries.pop()
        d.callback(f(**kwargs))
        del d
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])
