"""
The origin's answers other than the file, over real sockets: every status
class passed on as the origin gave it (status, end-to-end headers, body),
which of them are kept (RFC 9110 section 15.1, RFC 9111 section 3), and
how the status API reports them.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.web.http_headers import Headers

from .helpers import CacheTestCase, MemoryCacheTestCase, body_of, header, read_response
from .test_vary import VaryTestCase

_AWAY = "http://elsewhere.test/x"
# The most of an answer's body cachetier passes on.
MAX_ANSWER_BODY = 1 << 20


class AnswerTestCase(CacheTestCase):
    # One try, and a breaker that never opens: each answer is the origin's.
    settings: dict[str, Any] = {"origin_retries": 1, "breaker_threshold": 1000}

    def answer(self, name: str, status: int, body: bytes = b"", **headers: str) -> None:
        """
        Have the origin answer C{name} with C{status}, C{headers} (names
        with C{_} for C{-}) and C{body}, and say so in C{X-Origin-Says}.
        """
        sent = {k.replace("_", "-"): v for k, v in headers.items()}
        sent.setdefault("Content-Type", "text/plain")
        sent["X-Origin-Says"] = str(status)
        self.origin.answers[name] = (status, sent, body)

    async def fetch(self, name: str, method: str = "GET") -> tuple[int, Headers, bytes]:
        """
        C{method} C{/files/name}, following no redirect.
        """
        response = await self.client.request(
            method, self.url + "files/" + name, allow_redirects=False
        )
        return await read_response(response)

    async def until_stale(self, name: str) -> None:
        """
        Wait (on the real clock) until the object kept for C{name} expires.
        """
        stored = self.cache.store.get(name)
        assert stored is not None
        clock = self.cache.syncer.clock
        while clock.seconds() < stored.expires_at:
            await deferLater(reactor, stored.expires_at - clock.seconds() + 0.01, lambda: None)

    async def status_of(self, name: str) -> dict[str, Any]:
        response = await self.client.get(self.url + "api/v1/files/" + name + "?sync=0")
        _, _, body = await read_response(response)
        result: dict[str, Any] = json.loads(body)
        return result


class PassedOnTests(AnswerTestCase):
    async def test_every_status_class_is_passed_on_as_it_came(self) -> None:
        statuses = (203, 299, 300, 301, 302, 303, 307, 308, 400, 403, 404, 410, 499)
        for status in statuses + (500, 501, 502, 503, 504, 599):
            name = f"s{status}.mp3"
            location = f"http://elsewhere.test/{name}"
            self.answer(name, status, b"the origin's %d" % status, Location=location)
            code, headers, body = await self.fetch(name)
            self.assertEqual((code, body), (status, b"the origin's %d" % status))
            self.assertEqual(header(headers, "x-origin-says"), [str(status)])
            self.assertEqual(header(headers, "content-type"), ["text/plain"])
            self.assertEqual(header(headers, "location"), [location], "as it came")
        self.assertEqual(len(self.origin.paths), len(statuses) + 6, "no redirect followed")

    async def test_a_204_is_passed_on_without_a_body(self) -> None:
        self.answer("empty.mp3", 204, ETag='"e1"')
        code, headers, body = await self.fetch("empty.mp3")
        self.assertEqual((code, body), (204, b""))
        self.assertEqual(header(headers, "etag"), ['"e1"'])
        self.assertEqual(header(headers, "x-origin-says"), ["204"])

    async def test_a_head_gets_the_answers_status_and_length(self) -> None:
        self.answer("gone.mp3", 410, b"gone for good")  # kept
        self.answer("down.mp3", 503, b"down")  # passed on
        for name, status, length in (("gone.mp3", 410, "13"), ("down.mp3", 503, "4")):
            code, headers, body = await self.fetch(name, "HEAD")
            self.assertEqual((code, body), (status, b""))
            self.assertEqual(header(headers, "content-length"), [length])
            self.assertEqual(header(headers, "x-origin-says"), [str(status)])

    async def test_an_answer_over_the_cap_is_cachetiers_own_502(self) -> None:
        self.answer("big.mp3", 500, body_of(MAX_ANSWER_BODY + 1))
        code, headers, body = await self.fetch("big.mp3")
        self.assertEqual((code, json.loads(body)["error"]), (502, "origin_error"))
        self.assertEqual(header(headers, "x-origin-says"), [])
        self.assertIn("over 1048576 bytes", json.loads(body)["message"])

    async def test_an_answer_is_remembered_with_its_body_or_not_at_all(self) -> None:
        # Up to 100,000 names are remembered: 1 MiB each would be no bound,
        # and a body-less answer is not what the origin said.
        self.answer("down.mp3", 503, body_of(MAX_ANSWER_BODY))
        self.answer("busy.mp3", 503, b"<Error>SlowDown</Error>")
        for name in ("down.mp3", "busy.mp3"):
            code, _, body = await self.fetch(name)
            self.assertEqual(code, 503)
            await self.settle(name)
        self.assertIsNone(self.cache.syncer.recent_failure("down.mp3"))
        remembered = self.cache.syncer.recent_failure("busy.mp3")
        self.assertEqual((remembered.status, remembered.body), (503, b"<Error>SlowDown</Error>"))
        code, headers, body = await self.fetch("busy.mp3")  # the remembered answer, whole
        self.assertEqual((code, body), (503, b"<Error>SlowDown</Error>"))
        self.assertEqual(header(headers, "content-length"), ["23"])

    async def test_a_redirect_without_location_is_passed_on(self) -> None:
        # Nothing to follow: the origin's answer, as it came (and a 301 kept).
        for status in (301, 302, 303, 307, 308):
            name = f"nowhere{status}.mp3"
            self.answer(name, status, b"moved, but where?")
            code, headers, body = await self.fetch(name)
            self.assertEqual((code, body), (status, b"moved, but where?"))
            self.assertEqual(header(headers, "location"), [])
            self.assertEqual(self.origin.counts[name], 1)

    async def test_a_redirect_within_the_origin_is_still_followed(self) -> None:
        self.origin.put("new.mp3", body_of(1000))
        self.answer("old.mp3", 301, Location=self.origin_url + "new.mp3")
        code, _, body = await self.fetch("old.mp3")
        self.assertEqual((code, body), (200, body_of(1000)))


class KeptTests(AnswerTestCase):
    async def assert_kept(self, name: str, status: int, kept: bool) -> None:
        """
        Two requests for C{name} get the origin's answer; the second reaches
        the origin only if the first was not kept.
        """
        for _ in range(2):
            code, headers, body = await self.fetch(name)
            expected = b"" if status == 204 else b"answer %d" % status
            self.assertEqual((code, body), (status, expected), name)
            self.assertEqual(header(headers, "x-origin-says"), [str(status)], name)
            await self.settle(name)
        if kept:
            self.assertEqual(len(header(headers, "age")), 1, "a kept answer says its Age")
        self.assertEqual(self.origin.counts[name], 1 if kept else 2, name)
        self.assertEqual(self.cache.store.get(name) is not None, kept, name)

    async def test_heuristically_cacheable_statuses_are_kept(self) -> None:
        for status in (204, 301, 308, 404, 405, 410, 414, 501):
            name = f"h{status}.mp3"
            self.answer(name, status, b"answer %d" % status, ETag='"a1"', Location=_AWAY)
            await self.assert_kept(name, status, kept=True)

    async def test_other_statuses_are_kept_only_with_explicit_freshness(self) -> None:
        for status in (203, 302, 403):
            self.answer(
                f"f{status}.mp3",
                status,
                b"answer %d" % status,
                Cache_Control="max-age=60",
                Location=_AWAY,
            )
            await self.assert_kept(f"f{status}.mp3", status, kept=True)
            self.answer(
                f"n{status}.mp3", status, b"answer %d" % status, ETag='"a1"', Location=_AWAY
            )
            await self.assert_kept(f"n{status}.mp3", status, kept=False)

    async def test_5xx_and_no_store_are_never_kept(self) -> None:
        for status in (500, 503, 599):
            self.answer(f"e{status}.mp3", status, b"answer %d" % status, Cache_Control="max-age=60")
            await self.assert_kept(f"e{status}.mp3", status, kept=False)
        self.answer("private.mp3", 404, b"answer 404", Cache_Control="no-store")
        await self.assert_kept("private.mp3", 404, kept=False)

    async def test_a_404_is_kept_for_the_negative_ttl(self) -> None:
        self.answer("nope.mp3", 404, b"answer 404")
        await self.fetch("nope.mp3")
        await self.settle("nope.mp3")
        stored = self.cache.store.get("nope.mp3")
        assert stored is not None
        self.assertEqual(stored.expires_at - stored.fetched_at, 60.0, "the default --negative-ttl")

    async def test_a_kept_answer_is_replaced_by_the_file_once_stale(self) -> None:
        self.answer("soon.mp3", 404, b"not yet", Cache_Control="max-age=1")
        code, _, _ = await self.fetch("soon.mp3")
        self.assertEqual(code, 404)
        await self.settle("soon.mp3")
        del self.origin.answers["soon.mp3"]
        self.origin.put("soon.mp3", body_of(1000))
        await self.until_stale("soon.mp3")
        await self.fetch("soon.mp3")  # stale: revalidated
        await self.settle("soon.mp3")
        code, _, body = await self.fetch("soon.mp3")
        self.assertEqual((code, body), (200, body_of(1000)))


class StatusAPITests(AnswerTestCase):
    async def test_the_status_api_reports_the_origins_status(self) -> None:
        self.origin.put("here.mp3", body_of(10))
        self.answer("nope.mp3", 404, b"no")
        self.answer("moved.mp3", 301, Location="http://elsewhere.test/")
        self.answer("broken.mp3", 503, b"down")
        for name in ("here.mp3", "nope.mp3", "moved.mp3", "broken.mp3"):
            await self.fetch(name)
            await self.settle(name)
        found = {}
        for name in ("here", "nope", "moved", "broken"):
            body = await self.status_of(name + ".mp3")
            found[name] = (body["state"], body["available"], body["status"])
        self.assertEqual(
            found,
            {
                "here": ("cached", True, 200),
                "nope": ("not_found", False, 404),
                "moved": ("error", False, 301),
                "broken": ("error", False, 503),
            },
        )
        self.assertIn("http_503", (await self.status_of("broken.mp3"))["error"])
        self.assertIn("http_301", (await self.status_of("moved.mp3"))["error"])


class RevalidationRedirectTests(MemoryCacheTestCase):
    """
    A revalidation answered by a redirect outside the origin (a 302, 303
    or 307: not storable without freshness) is passed on, and the cached
    file stays (stale): a failed revalidation harms no cached file.
    """

    settings = {"origin_retries": 1}

    def test_a_temporary_redirect_does_not_remove_the_cached_file(self) -> None:
        data = body_of(5000)
        self.cached("ep.mp3", data, extra_headers={"Cache-Control": "max-age=60"})
        # The origin is under maintenance for a moment: its pages redirect
        # elsewhere, temporarily.
        self.origin.redirects["ep.mp3"] = "http://status.example/maintenance"
        self.wait(120)
        self.get("ep.mp3")  # stale: served while revalidated
        self.settle("ep.mp3")
        self.assertIsNotNone(
            self.cache.store.get("ep.mp3"),
            "a failed revalidation (a 302) removed the cached file",
        )

    def test_the_copy_still_serves_within_stale_if_error_after_a_302(self) -> None:
        data = body_of(5000)
        self.cached("ep.mp3", data, extra_headers={"Cache-Control": "max-age=60"})
        self.origin.redirects["ep.mp3"] = "http://status.example/maintenance"
        self.wait(120)
        self.get("ep.mp3")
        self.settle("ep.mp3")
        # Then the origin goes down altogether: stale-if-error (the default
        # --stale-if-error, a week) lets the copy be served.
        del self.origin.redirects["ep.mp3"]
        self.cache.origin_down = True
        self.wait(10)
        code, _, body = self.get("ep.mp3")
        self.assertEqual((code, body), (200, data))


class UnaskedPartialContentTests(VaryTestCase):
    """
    An origin's 206 to a request without Range (a misbehaving origin, or a
    proxy in front of it) is a part nobody asked for: never passed on
    without its Content-Range, never kept as the name's object.
    """

    async def test_an_unasked_206_is_never_served_without_its_content_range(self) -> None:
        data = body_of(1000)
        self.origin.answers["ep.mp3"] = (
            206,
            {
                "Content-Range": "bytes 0-99/1000",
                "Cache-Control": "max-age=600",
                "Content-Type": "audio/mpeg",
            },
            data[:100],
        )
        for _ in range(2):
            code, got, body = await self.fetch("ep.mp3")
            if code == 206:
                self.assertEqual(header(got, "content-range"), ["bytes 0-99/1000"])
        self.assertEqual(self.kept(), [], "a part of a file kept as the name's object")


class KeptAnswerCommitWindowTests(VaryTestCase):
    """
    A listener arriving while an answer other than the file is committed
    in a thread gets that answer once it is kept, not a 503 "the download
    ended".  The commit is slowed (as a busy disk does) to open the window.
    """

    async def test_a_listener_during_the_commit_of_a_kept_404_gets_the_404(self) -> None:
        syncer = self.cache.syncer
        fast = syncer.run_in_thread

        def slow(f, *args):  # type: ignore[no-untyped-def]
            return deferLater(reactor, 0.5, lambda: None).addCallback(lambda _: fast(f, *args))

        syncer.run_in_thread = slow
        first = self.get("gone.mp3")

        async def later() -> tuple[int, Headers, bytes]:
            await deferLater(reactor, 0.25, lambda: None)
            return await self.get("gone.mp3")

        results = await gatherResults(
            [Deferred.fromCoroutine(first), Deferred.fromCoroutine(later())]
        )
        self.assertEqual([code for code, _, _ in results], [404, 404], results[1][2])


class RememberedAnswerTests(CacheTestCase):
    """
    The origin's 5xx to a revalidation of a copy that may not be served
    stale is passed on (c9880f2, RFC 9111 section 4.3.3).
    """

    async def test_the_second_listener_gets_the_origins_answer_too(self) -> None:
        """
        The first listener gets the origin's 500 and its body; the second,
        answered from the remembered failure, got a 500 with an empty body
        and Content-Length: 0 (the remembered answer kept no body), an
        answer the origin never gave (review 5).
        """
        data = body_of(20_000, "m")
        await self.cached(
            "m.mp3", data, extra_headers={"Cache-Control": "max-age=1, must-revalidate"}
        )
        stored = self.cache.store.get("m.mp3")
        await deferLater(
            reactor, stored.expires_at - self.cache.syncer.clock.seconds() + 0.1, lambda: None
        )
        self.origin.status["m.mp3"] = 500
        first = await self.get("m.mp3")
        second = await self.get("m.mp3")
        head = await self.get("m.mp3", method="HEAD")
        seen = [
            (code, header(headers, "content-length"), body)
            for code, headers, body in (first, second, head)
        ]
        self.assertEqual(
            seen,
            [
                (500, ["14"], b"origin says no"),
                (500, ["14"], b"origin says no"),
                (500, ["14"], b""),
            ],
            "the origin's 500 to a revalidation, passed on to three listeners in turn",
        )


async def _later(syncer, name: str) -> bool:
    stored = syncer.store.get(name)
    return stored is not None and syncer.clock.seconds() > stored.expires_at + 0.1
