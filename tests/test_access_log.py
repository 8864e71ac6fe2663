"""
What an operator reads: the access log (one line per response, aborted
ones included, with the bytes really sent) and the metrics.
"""

from __future__ import annotations

import ipaddress
import os
import re
from types import SimpleNamespace
from typing import Any

from treq import content
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogPublisher, formatTime, textFileLogObserver
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from cachetier.web.access import TwistdAccessLog

from .helpers import CacheTestCase, body_of, read_then_hang_up

LINE = re.compile(
    r'^(?P<client>\S+) - - \[(?P<time>[^]]+)\] "(?P<request>[^"]*)" (?P<status>\d+)'
    r' (?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)" "(?P<range>[^"]*)"'
    r" (?P<outcome>\S+) (?P<ms>[\d.]+)ms (?P<completion>OK|aborted)$"
)


class AccessLogTestCase(CacheTestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.settings = {"access_log": self.path, **self.settings}
        super().setUp()

    def lines(self) -> list[dict[str, str]]:
        self.cache.access_file.flush()
        with open(self.path) as f:
            found = []
            for line in f.read().splitlines():
                match = LINE.match(line)
                self.assertIsNotNone(match, f"not an access line: {line!r}")
                assert match is not None
                found.append(match.groupdict())
            return found

    async def metric(self, name: str) -> float:
        response = await self.client.get(self.url + "metrics")
        text = (await content(response)).decode()
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        self.assertIsNotNone(match, f"{name} is not in /metrics")
        assert match is not None
        return float(match.group(1))


class AccessLineTests(AccessLogTestCase):
    async def test_the_line_has_what_nginx_combined_has_and_more(self) -> None:
        self.origin.put("a.mp3", body_of(10_000))
        await self.cache.syncer.start("a.mp3").when_done()
        response = await self.client.get(
            self.url + "files/a.mp3",
            headers={
                "User-Agent": 'Podcast "App"/1.0',
                "Referer": "https://example.com/episode",
                "Range": "bytes=100-199",
            },
        )
        self.assertEqual(len(await content(response)), 100)
        [line] = self.lines()
        self.assertEqual(line["client"], "127.0.0.1")
        self.assertEqual(line["request"], "GET /files/a.mp3 HTTP/1.1")
        self.assertEqual((line["status"], line["bytes"]), ("206", "100"))
        self.assertEqual(line["agent"], r"Podcast \x22App\x22/1.0")
        self.assertEqual(line["referer"], "https://example.com/episode")
        self.assertEqual(line["range"], "bytes=100-199")
        self.assertEqual((line["outcome"], line["completion"]), ("hit", "OK"))

    async def test_an_abandoned_response_is_logged_and_counted_with_what_was_sent(self) -> None:
        size = 8_000_000
        self.origin.put("big.mp3", body_of(size))
        await self.cache.syncer.start("big.mp3").when_done()
        received = await read_then_hang_up(self.url, "/files/big.mp3", 100_000)
        for _ in range(100):
            if os.path.getsize(self.path) or self.cache.access_file._lines:
                break
            await deferLater(reactor, 0.02, lambda: None)
        [line] = self.lines()
        self.assertEqual((line["status"], line["completion"]), ("200", "aborted"))
        sent = int(line["bytes"])
        # What reached the kernel, not the Content-Length: at least what the
        # client read, and less than the whole body.
        self.assertGreaterEqual(sent, len(received) - 500)
        self.assertLess(sent, size)
        self.assertEqual(await self.metric("cachetier_responses_aborted_total"), 1.0)
        self.assertEqual(await self.metric("cachetier_aborted_bytes_total"), float(sent))

    async def test_a_listener_gone_before_the_answer_is_a_499(self) -> None:
        self.origin.put("slow.mp3", body_of(1000))
        self.origin.hang = {"slow.mp3"}
        port = int(self.url.rsplit(":", 1)[1].strip("/"))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        listener = await connectProtocol(endpoint, Protocol())
        listener.transport.write(b"GET /files/slow.mp3 HTTP/1.1\r\nHost: x\r\n\r\n")
        # Waited for, not slept on: the request has reached the origin, and
        # then its line has been written.
        while not self.origin.counts["slow.mp3"]:
            await deferLater(reactor, 0.02, lambda: None)
        listener.transport.abortConnection()
        while self.cache.site.connections:
            await deferLater(reactor, 0.02, lambda: None)
        [line] = self.lines()
        self.assertEqual(
            (line["status"], line["bytes"], line["completion"]), ("499", "0", "aborted")
        )
        self.origin.release_hanging()


class TrustedProxyTests(AccessLogTestCase):
    settings = {"trusted_proxies": (ipaddress.ip_network("127.0.0.0/8"),)}

    async def test_the_client_comes_from_x_forwarded_for_behind_a_trusted_proxy(self) -> None:
        await content(
            await self.client.get(
                self.url + "healthz",
                headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.9, 127.0.0.5"},
            )
        )
        # Spoofed hops before the last untrusted one are not believed.
        self.assertEqual(self.lines()[0]["client"], "203.0.113.9")


class UntrustedProxyTests(AccessLogTestCase):
    async def test_x_forwarded_for_is_ignored_from_anyone_else(self) -> None:
        await content(
            await self.client.get(self.url + "healthz", headers={"X-Forwarded-For": "203.0.113.9"})
        )
        self.assertEqual(self.lines()[0]["client"], "127.0.0.1")


class MetricsTests(AccessLogTestCase):
    async def test_durations_first_bytes_disk_and_build(self) -> None:
        self.origin.put("m.mp3", body_of(50_000))
        response = await self.client.get(self.url + "files/m.mp3")
        await content(response)
        self.assertEqual(await self.metric("cachetier_miss_first_byte_seconds_count"), 1.0)
        self.assertGreaterEqual(await self.metric("cachetier_request_duration_seconds_count"), 1.0)
        self.assertGreater(await self.metric("cachetier_disk_free_bytes"), 0)
        self.assertGreater(await self.metric("cachetier_disk_quota_bytes"), 0)
        self.assertGreater(await self.metric("process_open_fds"), 0)
        response = await self.client.get(self.url + "metrics")
        self.assertRegex((await content(response)).decode(), r'cachetier_build_info\{.*version="')


class NeverFitsTests(AccessLogTestCase):
    settings = {"max_size": 1 << 20}

    async def test_a_file_bigger_than_the_whole_cache_goes_to_the_origin(self) -> None:
        self.origin.put("huge.mp4", body_of(2 << 20))
        response = await self.client.get(self.url + "files/huge.mp4", allow_redirects=False)
        await content(response)
        self.assertEqual(response.code, 302)
        self.assertEqual(
            response.headers.getRawHeaders(b"location"), [(self.origin_url + "huge.mp4").encode()]
        )


class TwistdLogTests(SynchronousTestCase):
    """
    The default access log writes the line into twistd's log finished when
    that log is a file and its only observer, and as an event otherwise:
    the same text either way.
    """

    when = 1_700_000_000.25

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.log_file = LogFile.fromFullPath(self.path, rotateLength=None)
        self.addCleanup(self.log_file.close)
        self.reactor = MemoryReactorClock()
        self.reactor.advance(self.when)

    def log(self, *others: Any) -> TwistdAccessLog:
        publisher = LogPublisher(textFileLogObserver(self.log_file), *others)
        access_log = TwistdAccessLog(self.reactor, publisher)
        access_log(self.request())
        return access_log

    def request(self) -> SimpleNamespace:
        return SimpleNamespace(
            client_address="192.0.2.1",
            method=b"GET",
            uri=b"/files/a.mp3",
            clientproto=b"HTTP/1.1",
            cache_name="a.mp3",
            code=206,
            startedWriting=True,
            sent=100,
            requestHeaders=Headers({b"range": [b"bytes=0-99"], b"referer": [b'"x"']}),
            user_agent="Podcast/1.0",
            outcome="hit",
            duration=0.0123,
            aborted=False,
        )

    def written(self) -> str:
        self.log_file.flush()
        with open(self.path, encoding="utf-8") as f:
            return f.read()

    def test_the_finished_line_is_the_text_twistd_writes_for_the_event(self) -> None:
        events: list[dict[str, Any]] = []
        self.log(events.append)
        event = self.written()
        self.log()
        self.reactor.advance(0)
        finished = self.written()[len(event) :]
        stamp, _, text = finished.partition(" ")
        self.assertEqual(stamp, formatTime(self.when))
        self.assertEqual(text, event.partition(" ")[2])
        self.assertEqual(
            text,
            '[cachetier.web._site#info] 192.0.2.1 - - [14/Nov/2023:22:13:20 +0000] "GET'
            ' /files/a.mp3 HTTP/1.1" 206 100 "\\x22x\\x22" "Podcast/1.0" "bytes=0-99" hit'
            " 12.3ms OK\n",
        )
        [fields] = events
        self.assertEqual(
            (fields["status"], fields["bytes"], fields["range"]), (206, 100, "bytes=0-99")
        )

    def test_the_lines_of_a_turn_go_out_when_it_ends_and_at_shutdown(self) -> None:
        access_log = self.log()
        self.assertEqual(self.written(), "")
        self.reactor.advance(0)
        self.assertEqual(len(self.written().splitlines()), 1)
        access_log(self.request())
        [(flush, _, _)] = self.reactor.triggers["after"]["shutdown"]
        flush()
        self.assertEqual(len(self.written().splitlines()), 2)
