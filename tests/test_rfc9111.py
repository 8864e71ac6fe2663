"""
RFC 9111 (HTTP caching), rule by rule, in memory with a clock (a 304's
raw bytes over a real socket).  Each rule cachetier implements, and the
test that shows it:

=======================================================  ==================================================
rule                                                     test
=======================================================  ==================================================
3    no-store / private: not stored (shared cache)        test_http_semantics CacheControlTests
                                                         .test_private_and_no_store_are_never_sent_as_public
3    a response with Set-Cookie is not stored             test_http_semantics HeaderTests
                                                         .test_a_response_that_sets_a_cookie_is_streamed...
3.1  stored headers: every end-to-end header replayed,    test_http_semantics HeaderTests
     never hop-by-hop ones                               .test_end_to_end_headers_survive_miss_hit_range...
3.1  nor those the Connection header names (RFC 9110     ConnectionOptionsTests
     7.6.1)
4.2.1 lifetime: s-maxage, then max-age                   FreshnessOrderTests.test_s_maxage_over_max_age
4.2.1 lifetime: Expires minus Date                       FreshnessOrderTests.test_expires_minus_date
4.2.1 an invalid or past Expires means stale             ExpiresTests.test_a_past_expires_gets_new_content
4.2.1 of several Expires lines, the first counts          TwoExpiresLinesTests
5.3  an Expires that is no HTTP-date (RFC 9110 5.6.7:     HTTPDateTests
     three forms, GMT only) means stale
4.2.1 a Cache-Control member that is no directive means   MalformedCacheControlTests
     stale, and not stored if it says private/no-store
4.2.1 invalid max-age (quoted, negative) means stale     StaleOnlyWithPermissionTests
4.2.2 heuristic: 10% of Date - Last-Modified, <= --ttl   HeuristicFreshnessTests
4.2.3 Age: the origin's Age counts                       AgeTests.test_age_includes_the_origins_age
4.2.3 Age: corrected for the request's round trip        CorrectedAgeTests
5.1  Age: a list counts by its first member; an invalid  StaleOnlyWithPermissionTests
     one is ignored
4.2.4 stale: revalidated before it is served, one        StaleOnlyWithPermissionTests
     revalidation for all, unless a window allows        .test_concurrent_requests_wait_on_one_revalidation
3.1  Date and Expires stored and replayed                DateExpiresAgeTests
4.2.4 stale on arrival: shared by the requests during    LateJoinerTests
     its transfer; one after it (while it is published)
     waits, and revalidates
4.2.4 must-revalidate: never served stale; revalidated   MustRevalidateTests
     first; a 5xx to it is passed on (4.3.3), no answer  .test_the_first_request_after_expiry_gets_new_content
     at all is a 504                                     .test_a_failed_revalidation_is_the_origins_answer...
                                                         StaleIfErrorTests
4.2.4 proxy-revalidate, s-maxage, no-cache: the same     StalePolicyUnitTests.test_what_forbids_serving_stale
4.2.4 a revalidation the caps refuse is 503, not 504     RefusedRevalidationTests
4.3.2 revalidation: a 304 renews without a download      test_freshness RevalidationTests
                                                         .test_unchanged_file_is_renewed_by_a_304...
4.3.4 a 304 carries the validators and Content-Length    test_workers .test_heads_report_the_true_length
     a 200 would                                         (and NotModifiedTests here)
4.3.4 a 304 updates the stored headers, Content-Type     NotModifiedUpdateTests
     too, but not Content-Encoding, the digests or       UpdatedByTests
     Content-Length (3.2: the stored bytes depend on them)
5.2.2.1 max-age downstream: passed on, never more        test_http_semantics CacheControlTests
                                                         .test_the_origins_max_age_is_passed_on_unchanged
5.2.2.1 none of cachetier's own for an answer it does    DownstreamCacheControlTests
     not reuse (Set-Cookie, Vary: *, no validator)
RFC 5861 stale-while-revalidate=N                        StaleExtensionTests.test_stale_while_revalidate...
RFC 5861 stale-if-error=N                                StaleExtensionTests.test_stale_if_error_window
=======================================================  ==================================================
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http

from cachetier.objects import ObjectHeaders
from cachetier.origin.freshness import (
    StalePolicy,
    freshness_lifetime,
    initial_age,
    stale_policy,
)
from cachetier.origin.freshness import http_date as parse_http_date

from .helpers import CacheTestCase, MemoryCacheTestCase, body_of, header, stored_object

SETTINGS: dict[str, Any] = {"ttl": 3600.0, "origin_retries": 1}


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def http_date(when: float) -> str:
    return http.datetimeToString(int(when)).decode("ascii")


class RFCTestCase(MemoryCacheTestCase):
    settings = SETTINGS


class FreshnessOrderTests(SynchronousTestCase):
    def test_s_maxage_over_max_age(self) -> None:
        self.assertEqual(freshness_lifetime("max-age=600, s-maxage=60", None, None, 0), 60)
        self.assertEqual(freshness_lifetime("max-age=600", http_date(10_000), None, 0), 600)

    def test_expires_minus_date(self) -> None:
        now = 1_700_000_000.0
        self.assertEqual(
            freshness_lifetime(None, http_date(now + 300), http_date(now - 100), now), 400
        )
        self.assertEqual(freshness_lifetime(None, http_date(now + 300), None, now), 300)
        self.assertEqual(freshness_lifetime(None, "not a date", None, now), 0)
        self.assertEqual(freshness_lifetime(None, http_date(now - 3600), None, now), 0)
        self.assertIsNone(freshness_lifetime(None, None, None, now))

    def test_initial_age(self) -> None:
        now = 1_700_000_000.0
        self.assertEqual(initial_age("30", http_date(now - 5), now), 30)
        self.assertEqual(initial_age(None, http_date(now - 5), now), 5)
        self.assertEqual(initial_age(None, None, now), 0)
        self.assertEqual(initial_age("bogus", None, now), 0, "invalid: ignored (RFC 9111 5.1)")


class StalePolicyUnitTests(SynchronousTestCase):
    def test_what_forbids_serving_stale(self) -> None:
        for cc in ("max-age=1, must-revalidate", "proxy-revalidate", "s-maxage=5", "no-cache"):
            self.assertFalse(stale_policy(cc, 100, 100).allowed, cc)
        policy = stale_policy("max-age=1, stale-while-revalidate=30, stale-if-error=600", 5, 100)
        self.assertEqual(
            (policy.allowed, policy.while_revalidating, policy.if_error), (True, 30, 600)
        )
        self.assertEqual(stale_policy(None, 5, 100), StalePolicy(True, 5, 100))
        self.assertEqual(stale_policy('stale-if-error="60"', 5, 100).if_error, 0, "invalid")


class MustRevalidateTests(RFCTestCase):
    def test_the_first_request_after_expiry_gets_new_content(self) -> None:
        self.cached(
            "a.mp3",
            body_of(20_000, "v1"),
            extra_headers={"Cache-Control": "max-age=1, must-revalidate"},
        )
        self.origin.put(
            "a.mp3",
            body_of(20_000, "v2"),
            extra_headers={"Cache-Control": "max-age=1, must-revalidate"},
        )
        self.wait(2.1)
        code, _, body = self.get("a.mp3")
        self.assertEqual((code, body), (200, body_of(20_000, "v2")))

    def test_a_failed_revalidation_is_the_origins_answer_not_stale(self) -> None:
        # RFC 9111 section 4.3.3: a 5xx to a revalidation may be forwarded.
        self.cached(
            "a.mp3", body_of(20_000), extra_headers={"Cache-Control": "max-age=1, must-revalidate"}
        )
        self.origin.status["a.mp3"] = 503
        self.wait(2.1)
        for _ in range(2):  # while revalidating, then with the failure remembered
            code, _, _ = self.get("a.mp3")
            self.assertEqual(code, 503)


class RefusedRevalidationTests(RFCTestCase):
    settings = {**SETTINGS, "max_syncs_per_second": 1}

    def test_a_stale_copy_whose_revalidation_admission_refuses_is_503(self) -> None:
        """
        A stale copy that may not be served without revalidation, when no
        revalidation may start now (the caps are reached): the cache is
        overloaded, not the origin unavailable: 503 with Retry-After, as
        for any request the caps refuse, not 504.
        """
        self.cached("a.mp3", body_of(20_000), extra_headers={"Cache-Control": "max-age=1"})
        self.wait(1.5)
        self.cached("b.mp3", body_of(20_000))  # spends this second's sync
        code, headers, body = self.get("a.mp3")
        self.assertEqual(
            (code, json.loads(body)["error"], headers.getRawHeaders(b"retry-after")),
            (503, "overloaded", [b"1"]),
        )


class ExpiresTests(RFCTestCase):
    def test_a_past_expires_gets_new_content(self) -> None:
        past = http_date(self.clock.seconds() - 3600)
        self.cached("a.mp3", body_of(20_000, "v1"), extra_headers={"Expires": past})
        self.origin.put("a.mp3", body_of(20_000, "v2"), extra_headers={"Expires": past})
        changed = self.clock.seconds()
        while True:
            code, _, body = self.get("a.mp3")
            if body == body_of(20_000, "v2"):
                break
            self.assertLess(self.clock.seconds() - changed, 3.0, "new content within 3 s")
            self.wait(0.2)


class AgeTests(RFCTestCase):
    def test_age_includes_the_origins_age(self) -> None:
        self.cached(
            "a.mp3", body_of(20_000), extra_headers={"Age": "100", "Cache-Control": "max-age=600"}
        )
        _, headers, _ = self.get("a.mp3")
        (age,) = headers.getRawHeaders(b"age")
        self.assertGreaterEqual(int(age), 100)
        self.assertLess(int(age), 110)
        self.assertEqual(self.cache.store.get("a.mp3").lifetime, 600)


class NotModifiedTests(CacheTestCase):
    settings = SETTINGS

    async def test_a_304_carries_validators_and_the_length(self) -> None:
        await self.cached("a.mp3", body_of(20_000))
        etag = self.cache.store.get("a.mp3").etag
        port = int(self.url.rsplit(":", 1)[1].strip("/"))
        request = (
            f"GET /files/a.mp3 HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        # A raw read: Twisted's client hides Content-Length on a 304.
        head = (await deferToThread(_exchange, port, request)).lower()
        self.assertTrue(head.startswith(b"http/1.1 304 "), head)
        self.assertIn(b"etag: " + etag.encode().lower(), head)
        self.assertIn(b"content-length: 20000", head)


class StaleExtensionTests(RFCTestCase):
    def test_stale_while_revalidate_window(self) -> None:
        cc = {"Cache-Control": "max-age=1, stale-while-revalidate=60"}
        self.cached("a.mp3", body_of(20_000, "v1"), extra_headers=cc)
        self.origin.put("a.mp3", body_of(20_000, "v2"), extra_headers=cc)
        self.wait(1.1)
        # The revalidation gets no answer: the listener must not wait for it.
        self.origin.hang.add("a.mp3")
        code, _, body = self.get("a.mp3")
        self.assertEqual(body, body_of(20_000, "v1"), "served stale at once")
        self.assertIsNotNone(self.cache.syncer.fill_for("a.mp3"), "while revalidating")

    def test_stale_if_error_window(self) -> None:
        cc = {"Cache-Control": "max-age=1, stale-if-error=2"}
        self.cached("a.mp3", body_of(20_000), extra_headers=cc)
        self.origin.status["a.mp3"] = 503
        self.wait(1.5)
        self.get("a.mp3")  # starts the revalidation, which fails
        self.settle("a.mp3")
        code, _, body = self.get("a.mp3")
        self.assertEqual((code, body), (200, body_of(20_000)), "within stale-if-error")
        self.wait(2.0)
        code, _, _ = self.get("a.mp3")
        self.assertEqual(code, 503, "past stale-if-error: the origin's answer")


class LoopbackRFCTestCase(CacheTestCase):
    """
    Over real sockets: what a second request gets once the origin has
    changed the file, for each way a response can say it is stale.
    """

    settings = SETTINGS

    async def second_answer(self, headers: dict[str, str], **put: Any) -> bytes:
        """
        Cache C{v1} of a file sent with C{headers}, change it to C{v2} at
        the origin, and ask again: the body the listener gets.
        """
        self.origin.put("a.mp3", body_of(20_000, "v1"), extra_headers=headers, **put)
        code, _, body = await self.get("a.mp3")
        self.assertEqual((code, body), (200, body_of(20_000, "v1")))
        await self.settle("a.mp3")  # published
        self.origin.put("a.mp3", body_of(20_000, "v2"), extra_headers=headers, **put)
        code, _, body = await self.get("a.mp3")
        self.assertEqual(code, 200)
        return body


V1, V2 = body_of(20_000, "v1"), body_of(20_000, "v2")


class StaleOnlyWithPermissionTests(LoopbackRFCTestCase):
    """
    RFC 9111 section 4.2.4: a stale response is revalidated before it is
    served, unless the origin (or the operator) allows serving it stale.
    """

    async def assert_revalidated_first(self, headers: dict[str, str]) -> None:
        self.assertEqual(await self.second_answer(headers), V2, headers)
        self.assertEqual(self.origin.counts["a.mp3"], 2)

    async def test_max_age_0(self) -> None:
        await self.assert_revalidated_first({"Cache-Control": "max-age=0"})

    async def test_a_negative_max_age_is_stale(self) -> None:
        await self.assert_revalidated_first({"Cache-Control": "max-age=-3600"})

    async def test_a_quoted_max_age_is_invalid_so_stale(self) -> None:
        await self.assert_revalidated_first({"Cache-Control": 'max-age="3600"'})

    async def test_a_past_expires(self) -> None:
        await self.assert_revalidated_first({"Expires": http_date(time.time() - 3600)})

    async def test_an_invalid_expires_is_stale(self) -> None:
        await self.assert_revalidated_first({"Expires": "0"})

    async def test_no_cache_revalidates_every_time(self) -> None:
        await self.assert_revalidated_first({"Cache-Control": "max-age=3600, no-cache"})

    async def test_an_expired_max_age_1(self) -> None:
        # Two seconds old on arrival: expired at once, no waiting needed.
        await self.assert_revalidated_first({"Cache-Control": "max-age=1", "Age": "2"})

    async def test_an_age_list_counts_by_its_first_member(self) -> None:
        """
        RFC 9111 section 5.1: of an Age that is a list, the first member
        counts, the rest discarded.
        """
        for age in ("20000, 0", "20000,0"):
            self.origin.counts.clear()
            self.cache.syncer.purge("a.mp3")
            await self.settle("a.mp3")
            await self.assert_revalidated_first({"Cache-Control": "max-age=10000", "Age": age})
        for age in ("0, 20000", "0,20000"):
            self.origin.counts.clear()
            self.cache.syncer.purge("a.mp3")
            await self.settle("a.mp3")
            self.assertEqual(
                await self.second_answer({"Cache-Control": "max-age=10000", "Age": age}), V1
            )

    async def test_an_age_that_is_not_a_delta_seconds_is_ignored(self) -> None:
        """
        RFC 9111 section 5.1: an Age that is then not a delta-seconds
        (non-numeric, negative, fractional, with a parameter) is ignored:
        the answer is as old as its Date says.
        """
        for age in ("abc", "-7200", "7200.0", "7200;foo=bar"):
            self.origin.counts.clear()
            self.cache.syncer.purge("a.mp3")
            await self.settle("a.mp3")
            self.assertEqual(
                await self.second_answer({"Cache-Control": "max-age=10000", "Age": age}), V1
            )
            self.assertEqual(self.origin.counts["a.mp3"], 1, age)

    async def test_of_two_age_field_lines_the_first_counts(self) -> None:
        _send_also(self.origin, (b"age", b"20000"), (b"age", b"0"))
        await self.assert_revalidated_first({"Cache-Control": "max-age=10000"})

    async def test_stale_if_error_is_no_permission_while_the_origin_answers(self) -> None:
        await self.assert_revalidated_first(
            {"Cache-Control": "max-age=1, stale-if-error=600", "Age": "2"}
        )

    async def test_concurrent_requests_wait_on_one_revalidation(self) -> None:
        headers = {"Cache-Control": "max-age=1", "Age": "2"}
        self.origin.put("a.mp3", V1, extra_headers=headers)
        await self.get("a.mp3")
        await self.settle("a.mp3")
        self.origin.put("a.mp3", V2, extra_headers=headers)
        self.origin.rate = 100_000.0  # the revalidation takes a while
        answers = await gatherResults([Deferred.fromCoroutine(self.get("a.mp3")) for _ in range(4)])
        self.assertEqual(sum(body == V2 for _, _, body in answers), 4, "all new")
        self.assertEqual(self.origin.counts["a.mp3"], 2)

    async def test_the_origins_stale_while_revalidate_serves_stale_once(self) -> None:
        headers = {"Cache-Control": "max-age=1, stale-while-revalidate=60", "Age": "2"}
        self.assertEqual(await self.second_answer(headers), V1, "stale, while revalidating")
        await self.settle("a.mp3")
        _, _, body = await self.get("a.mp3")
        self.assertEqual(body, V2)

    async def test_past_its_stale_while_revalidate_it_is_revalidated_first(self) -> None:
        headers = {"Cache-Control": "max-age=1, stale-while-revalidate=5", "Age": "10"}
        await self.assert_revalidated_first(headers)


class LateJoinerTests(LoopbackRFCTestCase):
    """
    RFC 9111 section 4.2.4 and collapsed forwarding: a response stale on
    arrival is shared by the requests that came while it was transferred
    (they asked before it existed), but a request that comes after its last
    byte, while the cache still publishes it (fsync, rename), is answered
    only after a revalidation, as it would be a moment later.
    """

    def hold_publishes(self, *steps: str) -> tuple[Deferred[None], Deferred[None]]:
        """
        Hold the cache's next publish (the first of the blocking C{steps}
        it runs off the reactor thread: a commit by default) until the
        second Deferred returned is fired; the first fires once it is held.
        """
        syncer = self.cache.syncer
        run, held, gate = syncer.run_in_thread, Deferred(), Deferred()
        self.addCleanup(lambda: gate.called or gate.callback(None))

        async def gated(call: Any, *args: Any, **kwargs: Any) -> Any:
            if call.__name__ in (steps or ("commit",)) and not held.called:
                held.callback(None)
                await gate
            return await run(call, *args, **kwargs)

        syncer.run_in_thread = lambda *a, **kw: Deferred.fromCoroutine(gated(*a, **kw))
        return held, gate

    async def ask_while_publishing(self, headers: dict[str, str], changed: bool = False) -> bytes:
        """
        Ask for a file sent with C{headers} once its whole body has reached
        its listener and while its publish is held (the file C{changed} at
        the origin meanwhile): the body the late request gets.
        """
        self.origin.put("a.mp3", V1, extra_headers=headers)
        held, gate = self.hold_publishes()
        self.assertEqual((await self.get("a.mp3"))[::2], (200, V1))
        await held
        if changed:
            self.origin.put("a.mp3", V2, extra_headers=headers)
        late = await self.ask_late()
        gate.callback(None)
        code, _, body = await late
        self.assertEqual(code, 200)
        return body

    async def ask_late(self) -> Deferred[tuple[int, Any, bytes]]:
        """
        Ask for the file while its fill publishes: the answer to come, once
        the cache has looked the request up (it follows that fill, or has
        one of its own).
        """
        syncer = self.cache.syncer
        lookup, looked_up = syncer.lookup, Deferred()

        def watched(*args: Any, **kwargs: Any) -> Any:
            found = lookup(*args, **kwargs)
            reactor.callLater(0, looked_up.callback, None)
            syncer.lookup = lookup
            return found

        syncer.lookup = watched
        late = Deferred.fromCoroutine(self.get("a.mp3"))
        await looked_up
        return late

    def assert_revalidated(self) -> None:
        self.assertEqual(self.origin.counts["a.mp3"], 2, "the late request was not revalidated")
        _, _, sent = self.origin.requests[-1]
        self.assertEqual(header(sent, "if-none-match"), [self.origin.files["a.mp3"].etag])

    async def test_no_cache(self) -> None:
        self.assertEqual(await self.ask_while_publishing({"Cache-Control": "no-cache"}), V1)
        self.assert_revalidated()

    async def test_max_age_0(self) -> None:
        self.assertEqual(await self.ask_while_publishing({"Cache-Control": "max-age=0"}), V1)
        self.assert_revalidated()

    async def test_a_past_expires(self) -> None:
        headers = {"Expires": http_date(time.time() - 3600)}
        self.assertEqual(await self.ask_while_publishing(headers), V1)
        self.assert_revalidated()

    async def test_a_changed_file_is_fetched_anew(self) -> None:
        body = await self.ask_while_publishing({"Cache-Control": "no-cache"}, changed=True)
        self.assertEqual(body, V2)

    async def test_a_purge_stops_the_fill_publishing_and_the_one_after_it(self) -> None:
        self.origin.put("a.mp3", V1, extra_headers={"Cache-Control": "no-cache"})
        held, gate = self.hold_publishes()
        await self.get("a.mp3")
        await held
        publishing = self.cache.syncer.fill_for("a.mp3")
        assert publishing is not None
        late = await self.ask_late()
        self.assertTrue(self.cache.syncer.purge("a.mp3"))
        gate.callback(None)
        code, _, _ = await late
        await publishing.when_done()
        self.assertEqual((code, self.origin.counts["a.mp3"]), (502, 1))  # its fill cancelled
        self.assertIsNone(self.cache.store.get("a.mp3"))

    async def test_a_renewal_by_a_304(self) -> None:
        self.origin.put("a.mp3", V1, extra_headers={"Cache-Control": "no-cache"})
        await self.get("a.mp3")
        await self.settle("a.mp3")
        held, gate = self.hold_publishes("renewed")
        second = Deferred.fromCoroutine(self.get("a.mp3"))
        await held  # the origin said 304: the copy is being renewed
        late = await self.ask_late()
        gate.callback(None)
        answers = [(code, body) for code, _, body in await gatherResults([second, late])]
        self.assertEqual(answers, [(200, V1), (200, V1)])
        self.assertEqual(self.origin.counts["a.mp3"], 3, "the late request was not revalidated")

    async def test_a_kept_answer(self) -> None:
        answer = (404, {"Cache-Control": "no-cache", "ETag": '"gone"'}, b"gone")
        self.origin.answers["a.mp3"] = answer
        held, gate = self.hold_publishes("_commit")
        first = Deferred.fromCoroutine(self.get("a.mp3"))
        await held  # a listener waits for a kept answer's publish
        late = await self.ask_late()
        gate.callback(None)
        answers = [(code, body) for code, _, body in await gatherResults([first, late])]
        self.assertEqual(answers, [(404, b"gone"), (404, b"gone")])
        self.assertEqual(self.origin.counts["a.mp3"], 2, "the late request was not revalidated")

    async def test_a_fresh_answer_is_shared_while_it_is_published(self) -> None:
        body = await self.ask_while_publishing({"Cache-Control": "max-age=3600"})
        self.assertEqual((body, self.origin.counts["a.mp3"]), (V1, 1))


class OperatorGraceTests(LoopbackRFCTestCase):
    settings = {**SETTINGS, "stale_while_revalidate": 60.0}

    async def test_stale_while_revalidate_flag_serves_stale_while_revalidating(self) -> None:
        self.assertEqual(await self.second_answer({"Cache-Control": "max-age=1", "Age": "2"}), V1)
        await self.settle("a.mp3")
        _, _, body = await self.get("a.mp3")
        self.assertEqual(body, V2)

    async def test_the_origin_forbids_it_with_must_revalidate(self) -> None:
        headers = {"Cache-Control": "max-age=1, must-revalidate", "Age": "2"}
        self.assertEqual(await self.second_answer(headers), V2)


class ZeroTTLTests(LoopbackRFCTestCase):
    settings = {**SETTINGS, "ttl": 0.0}

    async def test_ttl_0_revalidates_every_time(self) -> None:
        self.assertEqual(await self.second_answer({}), V2)


class StaleIfErrorTests(LoopbackRFCTestCase):
    settings = {**SETTINGS, "stale_if_error": 0.0}

    async def cached_then_origin_down(self, headers: dict[str, str]) -> tuple[int, bytes]:
        self.origin.put("a.mp3", V1, extra_headers=headers)
        await self.get("a.mp3")
        await self.settle("a.mp3")
        # The origin dies: no new connections, and the pooled one is gone.
        await self.origin.port.stopListening()
        await self.cache.pool.closeCachedConnections()
        code, _, body = await self.get("a.mp3")
        return code, body

    async def test_the_origins_stale_if_error_with_the_origin_down(self) -> None:
        headers = {"Cache-Control": "max-age=1, stale-if-error=600", "Age": "2"}
        self.assertEqual(await self.cached_then_origin_down(headers), (200, V1))

    async def test_without_stale_if_error_a_down_origin_is_504(self) -> None:
        code, _ = await self.cached_then_origin_down({"Cache-Control": "max-age=1", "Age": "2"})
        self.assertEqual(code, 504)


class OperatorStaleIfErrorTests(StaleIfErrorTests):
    settings = {**SETTINGS, "stale_if_error": 600.0}

    async def test_the_operators_stale_if_error_with_the_origin_down(self) -> None:
        headers = {"Cache-Control": "max-age=1", "Age": "2"}
        self.assertEqual(await self.cached_then_origin_down(headers), (200, V1))

    async def test_without_stale_if_error_a_down_origin_is_504(self) -> None:
        headers = {"Cache-Control": "max-age=1, proxy-revalidate", "Age": "2"}
        code, _ = await self.cached_then_origin_down(headers)
        self.assertEqual(code, 504, "the origin forbade it")


class HeuristicFreshnessTests(LoopbackRFCTestCase):
    """
    RFC 9111 section 4.2.2: without explicit freshness, a tenth of the time
    since Last-Modified, at most --ttl; without a validator, none.
    """

    async def test_a_tenth_of_the_time_since_last_modified(self) -> None:
        modified = int(time.time()) - 1000
        self.assertEqual(await self.second_answer({}, last_modified=modified), V1)
        lifetime = self.cache.store.get("a.mp3").lifetime
        self.assertGreaterEqual(lifetime, 99)
        self.assertLessEqual(lifetime, 101)

    async def test_a_miss_says_no_more_freshness_than_a_hit(self) -> None:
        """
        The Cache-Control cachetier sends where the origin sent none is
        capped at the file's own lifetime on the miss as on a hit: a cache
        in front (an edge behind this shield) must not keep for a day what
        is fresh here for 100 s.
        """
        self.origin.put("a.mp3", V1, last_modified=int(time.time()) - 1000)
        for answer in ("miss", "hit"):
            _, headers, _ = await self.get("a.mp3")
            await self.settle("a.mp3")
            [sent] = header(headers, "cache-control")
            max_age = int(sent.removeprefix("public, max-age="))
            self.assertLessEqual(max_age, 101, answer)
            self.assertGreaterEqual(max_age, 98, answer)

    async def test_at_most_the_ttl(self) -> None:
        await self.second_answer({}, last_modified=int(time.time()) - 10 * 86400 * 365)
        self.assertEqual(round(self.cache.store.get("a.mp3").lifetime), 3600)

    async def test_an_etag_without_last_modified_is_fresh_for_the_ttl(self) -> None:
        self.assertEqual(await self.second_answer({}, last_modified=None), V1)
        self.assertEqual(round(self.cache.store.get("a.mp3").lifetime), 3600)

    async def test_no_validator_and_no_freshness_is_never_reused(self) -> None:
        body = await self.second_answer({}, last_modified=None, etag=None)
        self.assertEqual(body, V2)
        self.assertEqual(self.origin.counts["a.mp3"], 2)


class DateExpiresAgeTests(LoopbackRFCTestCase):
    async def test_the_origins_date_and_expires_reach_the_listener(self) -> None:
        now = time.time()
        sent = {"Date": http_date(now - 100), "Expires": http_date(now + 3600)}
        self.origin.put("a.mp3", V1, extra_headers=sent)
        for _ in ("miss", "hit"):
            _, headers, _ = await self.get("a.mp3")
            await self.settle("a.mp3")
            self.assertEqual(headers.getRawHeaders(b"date"), [sent["Date"].encode()])
            self.assertEqual(headers.getRawHeaders(b"expires"), [sent["Expires"].encode()])
        (age,) = headers.getRawHeaders(b"age")
        self.assertGreaterEqual(int(age), 100, "the apparent age counts")
        self.assertLess(int(age), 110)
        self.assertEqual(round(self.cache.store.get("a.mp3").lifetime), 3700)


class CorrectedAgeTests(SynchronousTestCase):
    def test_the_time_the_request_took_is_added_to_the_origins_age(self) -> None:
        now = 1_700_000_000.0
        self.assertEqual(initial_age("30", http_date(now), now, requested=now - 4), 34)
        self.assertEqual(initial_age("30", http_date(now - 60), now, requested=now - 4), 60)
        self.assertEqual(initial_age('"30"', None, now), 0, "quoted: invalid, ignored")


class ForwardedHeaderVaryTests(CacheTestCase):
    # Origin is a plain, forwardable header name (not refused at start-up).
    settings = {"forward_request_headers": ("origin",)}

    async def test_a_forwarded_selecting_header_does_not_make_the_plain_copy(self) -> None:
        """
        A listener's forwarded header that the origin's answer varies on
        selects that answer: it must not be kept as the copy of requests
        without the header (RFC 9111 4.1).
        """
        data = body_of(10_000, "ep")
        self.origin.put("ep.mp3", data, cors=True)
        code, headers, body = await self.get("ep.mp3", origin="https://app.example")
        self.assertEqual(code, 200)
        self.assertEqual(header(headers, "access-control-allow-origin"), ["https://app.example"])
        await self.settle("ep.mp3")
        # A listener without an Origin header: the origin would answer it
        # without Access-Control-Allow-Origin.
        code, headers, body = await self.get("ep.mp3")
        self.assertEqual((code, body), (200, data))
        self.assertEqual(
            header(headers, "access-control-allow-origin"),
            [],
            "a request without Origin got the variant selected by another listener's Origin",
        )


def _send_also(origin: Any, *lines: tuple[bytes, bytes]) -> None:
    """
    Make C{origin} send these header field lines with every answer
    (several lines of one field, as L{TestOrigin.put} cannot).
    """
    render = origin.render_GET

    def render_GET(request: Any) -> Any:
        for name, value in lines:
            request.responseHeaders.addRawHeader(name, value)
        return render(request)

    origin.render_GET = render_GET


class CacheControlFieldLinesTests(CacheTestCase):
    async def test_private_on_its_own_field_line_is_never_stored(self) -> None:
        """
        Cache-Control sent as two field lines is one list (RFC 9110 5.3):
        C{private} on the first line forbids a shared cache to store it.
        """
        data = body_of(10_000, "p")
        self.origin.put("p.mp3", data, etag='"p1"')
        _send_also(self.origin, (b"cache-control", b"private"), (b"cache-control", b"max-age=3600"))
        code, _, body = await self.get("p.mp3")
        self.assertEqual((code, body), (200, data))
        await self.settle("p.mp3")
        self.assertIsNone(
            self.cache.syncer.store.get("p.mp3"), "a private answer was kept by the shared cache"
        )
        code, headers, body = await self.get("p.mp3")
        self.assertEqual(self.origin.counts["p.mp3"], 2, "the second listener got the private copy")


class DateReplayTests(CacheTestCase):
    async def test_a_listener_gets_one_valid_date(self) -> None:
        """
        Date is a singleton field (RFC 9110 6.6.1, 5.3): an origin's
        duplicate or invalid Date must not reach listeners as two Dates or
        as no valid Date at all.
        """
        data = body_of(10_000, "d")
        self.origin.put("d.mp3", data, etag='"d1"', extra_headers={"Cache-Control": "max-age=600"})
        _send_also(self.origin, (b"date", b"Mon, 01 Jan 2024 00:00:00 GMT"), (b"date", b"garbage"))
        await self.get("d.mp3")
        await self.settle("d.mp3")
        code, headers, body = await self.get("d.mp3")
        self.assertEqual((code, body), (200, data))
        self.assertEqual(len(header(headers, "date")), 1, header(headers, "date"))


class StaleAfterRefusalTests(CacheTestCase):
    async def test_a_403_to_a_revalidation_is_not_an_error_to_serve_stale_through(self) -> None:
        """
        stale-if-error (RFC 5861 section 4, and cachetier's
        --stale-if-error) covers an origin failing (5xx, unreachable); an
        origin that answers 403 has answered: the stale copy is not
        served on.
        """
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        data = body_of(10_000, "r")
        self.origin.put("r.mp3", data, etag='"r1"', extra_headers={"Cache-Control": "max-age=1"})
        await self.get("r.mp3")
        await self.settle("r.mp3")
        await deferLater(reactor, 1.2, lambda: None)
        self.origin.status["r.mp3"] = 403
        first, _, _ = await self.get("r.mp3")
        await self.settle("r.mp3")
        second, headers, body = await self.get("r.mp3")
        self.assertEqual(
            (first, second),
            (403, 403),
            "the origin refused, yet the stale copy was served",
        )


class NoStoreOn304Tests(CacheTestCase):
    async def test_a_304_saying_no_store_does_not_renew_the_copy(self) -> None:
        """
        A 304 updates the stored response's headers (RFC 9111 4.3.4); once
        they say no-store, a shared cache may not keep serving it from
        store (RFC 9111 3, 5.2.2.5): the next listener goes to the origin.
        """
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        data = body_of(10_000, "n")
        self.origin.put("n.mp3", data, etag='"n1"', extra_headers={"Cache-Control": "max-age=1"})
        await self.get("n.mp3")
        await self.settle("n.mp3")
        await deferLater(reactor, 1.2, lambda: None)
        self.origin.files["n.mp3"].extra_headers = {"Cache-Control": "no-store"}
        await self.get("n.mp3")  # revalidated: 304 with no-store
        await self.settle("n.mp3")
        before = self.origin.counts["n.mp3"]
        code, headers, body = await self.get("n.mp3")
        await self.settle("n.mp3")
        self.assertEqual((code, body), (200, data))
        self.assertEqual(
            self.origin.counts["n.mp3"],
            before + 1,
            f"served from store though its headers say {header(headers, 'cache-control')}",
        )


class AbsurdDateTests(CacheTestCase):
    async def test_an_absurd_last_modified_does_not_break_serving(self) -> None:
        """
        An HTTP-date Twisted parses but no time_t can hold: the file is
        still served (the date ignored or passed on), on a miss and a hit.
        """
        data = body_of(10_000, "lm")
        absurd = "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"
        self.origin.put(
            "lm.mp3",
            data,
            etag='"lm1"',
            last_modified=None,
            extra_headers={"Last-Modified": absurd, "Cache-Control": "max-age=600"},
        )
        miss = await self.get("lm.mp3")
        await self.settle("lm.mp3")
        hit = await self.get("lm.mp3")
        self.assertEqual((miss[0], miss[2], hit[0], hit[2]), (200, data, 200, data))


class AgeCountsTheDownloadTests(CacheTestCase):
    async def test_the_time_a_download_took_counts_in_the_age(self) -> None:
        """
        RFC 9111 4.2.3: resident_time = now - response_time, response_time
        being when the response was received (its header section), not
        when its body was finished and committed.  A 2 s download of a
        max-age=1 file is stale once cached: no hit, and Age >= 2.
        """
        data = body_of(40_000, "age")
        self.origin.put("age.mp3", data, etag='"a1"', extra_headers={"Cache-Control": "max-age=1"})
        self.origin.rate = 20_000.0
        code, _, body = await self.get("age.mp3")
        self.assertEqual((code, body), (200, data))
        await self.settle("age.mp3")
        self.origin.rate = None
        before = self.origin.counts["age.mp3"]
        code, headers, body = await self.get("age.mp3")
        self.assertEqual((code, body), (200, data))
        ages = header(headers, "age")
        self.assertTrue(
            self.origin.counts["age.mp3"] > before or int(ages[0]) >= 2,
            f"served as fresh with Age {ages}, though 2 s old and max-age=1",
        )


class StaleStatusTests(CacheTestCase):
    async def test_a_stale_copy_is_reported_cached_and_stale(self) -> None:
        """
        The status API reports a copy that must be revalidated before it
        is served as cached and stale (the cache has the file, a 304 away),
        not missing: the client helper sends listeners to it.
        """
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        self.origin.put("s.mp3", body_of(1000), extra_headers={"Cache-Control": "max-age=1"})
        await self.get("s.mp3")
        await self.settle("s.mp3")
        await deferLater(reactor, 1.2, lambda: None)
        for query in ("?sync=0", ""):
            response = await self.client.get(self.url + "api/v1/files/s.mp3" + query)
            status = json.loads(await response.content())
            self.assertEqual(
                (status["state"], status["available"], status["stale"]), ("cached", True, True)
            )


class ConnectionOptionsTests(CacheTestCase):
    async def test_headers_named_in_connection_are_neither_stored_nor_forwarded(self) -> None:
        """
        RFC 9110 7.6.1: a proxy removes every header field the Connection
        header names before it forwards a message, and RFC 9111 3.1 keeps
        them out of the store: not on the miss, not on the hit.
        """
        data = body_of(10_000, "c")
        self.origin.put(
            "c.mp3",
            data,
            extra_headers={
                "Cache-Control": "max-age=3600",
                "Connection": "X-Hop, x-other",
                "X-Hop": "1",
                "X-Other": "2",
                "X-Kept": "3",
            },
        )
        for attempt in ("miss", "hit"):
            code, headers, body = await self.get("c.mp3")
            await self.settle("c.mp3")
            self.assertEqual((code, body), (200, data), attempt)
            self.assertEqual(
                (header(headers, "x-hop"), header(headers, "x-other"), header(headers, "x-kept")),
                ([], [], ["3"]),
                attempt,
            )
        self.assertEqual(self.origin.counts["c.mp3"], 1)


class NotModifiedUpdateTests(CacheTestCase):
    """
    RFC 9111 4.3.4 and 3.2: a 304 replaces the stored header fields it
    carries, Content-Type among them (the stored bytes do not change with
    their label), but not those the stored bytes depend on: their
    Content-Encoding and their digest.
    """

    settings = SETTINGS

    async def revalidated(self, name: str, data: bytes, **changes: Any) -> Any:
        """
        Cache C{name}, let it go stale, change the origin's headers (not its
        body or ETag) by C{changes}, and return the headers of the answer
        revalidated by the origin's 304, then of a hit after it.
        """
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await self.get(name)
        await self.settle(name)
        await deferLater(reactor, 1.2, lambda: None)
        f = self.origin.files[name]
        for key, value in changes.items():
            setattr(f, key, value)
        answers = []
        for _ in range(2):
            code, headers, body = await self.get(name)
            await self.settle(name)
            self.assertEqual((code, body), (200, data))
            answers.append(headers)
        self.assertEqual(self.origin.counts[name], 2, "one download and one 304")
        return answers

    async def test_a_304_updates_the_content_type(self) -> None:
        data = body_of(10_000, "t")
        self.origin.put(
            "t.txt",
            data,
            content_type="text/plain",
            extra_headers={"Cache-Control": "max-age=1"},
        )
        for headers in await self.revalidated(
            "t.txt", data, content_type="text/plain;charset=utf-8"
        ):
            self.assertEqual(header(headers, "content-type"), ["text/plain;charset=utf-8"])

    async def test_a_304_does_not_change_the_encoding_or_the_digest_of_the_bytes(self) -> None:
        data = body_of(10_000, "e")
        self.origin.put_with_md5(
            "e.bin", data, extra_headers={"Cache-Control": "max-age=1", "Content-Encoding": "br"}
        )
        # A 304 with another digest does not make the stored bytes corrupt.
        for headers in await self.revalidated(
            "e.bin",
            data,
            content_md5=hashlib.md5(b"other").digest(),
            extra_headers={"Cache-Control": "max-age=60", "Content-Encoding": "zstd"},
        ):
            self.assertEqual(header(headers, "content-encoding"), ["br"])


class ContentMD5Tests(CacheTestCase):
    async def test_a_malformed_content_md5_is_not_a_reason_to_refuse_the_body(self) -> None:
        """
        Content-MD5 is no longer HTTP (RFC 7231 appendix B): a well-formed
        one is still checked as the body's digest (test_web_files), one
        that is not the base64 of 16 bytes is no digest at all.
        """
        from twisted.logger import formatEvent, globalLogPublisher

        events: list[str] = []
        observer = lambda event: events.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        data = body_of(10_000, "m")
        self.origin.put(
            "m.mp3",
            data,
            extra_headers={"Cache-Control": "max-age=3600", "Content-MD5": "ANANANANANANANA"},
        )
        for attempt in ("miss", "hit"):
            code, _, body = await self.get("m.mp3")
            await self.settle("m.mp3")
            self.assertEqual((code, body), (200, data), attempt)
        self.assertEqual(self.origin.counts["m.mp3"], 1, "kept")
        self.assertEqual(
            len([e for e in events if "ANANANANANANANA" in e]), 1, "said once, for its download"
        )


class DownstreamCacheControlTests(CacheTestCase):
    async def test_no_cache_control_is_invented_for_an_answer_cachetier_does_not_reuse(
        self,
    ) -> None:
        """
        Without a Cache-Control of the origin's, cachetier tells listeners
        C{public, max-age=} of its own only for what it reuses itself: an
        answer that sets a cookie, varies by everything, or has neither
        freshness nor a validator goes on as the origin sent it, without
        one (a CDN in front must not share a Set-Cookie answer).
        """
        cases = {
            "cookie.mp3": ({"Set-Cookie": "session=1"}, {}),
            "star.mp3": ({"Vary": "*"}, {}),
            "bare.mp3": ({}, {"etag": None, "last_modified": None}),
        }
        for name, (extra, kwargs) in cases.items():
            self.origin.put(name, body_of(1000, name), extra_headers=extra, **kwargs)
            for attempt in ("first", "second"):
                code, headers, body = await self.get(name)
                await self.settle(name)
                self.assertEqual((code, body), (200, body_of(1000, name)))
                self.assertEqual(header(headers, "cache-control"), [], f"{name}, {attempt}")


class UpdatedByTests(SynchronousTestCase):
    def test_a_304_leaves_every_field_the_stored_bytes_depend_on(self) -> None:
        """
        The digests S3 sends describe the stored bytes as Content-Encoding
        does: a 304 does not replace them (RFC 9111 3.2), while it does
        replace any other field it carries.
        """
        kept = (
            ("content-encoding", "gzip"),
            ("x-amz-checksum-sha256", "c2hh"),
            ("x-amz-checksum-crc32", "Y3Jj"),
            ("x-amz-checksum-type", "FULL_OBJECT"),
        )
        stored = stored_object(extra=(*kept, ("x-note", "old")))
        sent = tuple((name, "changed") for name, _ in kept) + (("x-note", "new"),)
        updated = stored.updated_by(ObjectHeaders("audio/mpeg", extra=sent))
        self.assertEqual(sorted(updated.extra), sorted((*kept, ("x-note", "new"))))


class MalformedCacheControlTests(CacheTestCase):
    """
    A Cache-Control that does not parse (review of issue 21).
    """

    settings = {"ttl": 3600.0, "origin_retries": 1}

    async def test_a_max_age_not_followed_by_a_comma_is_not_replaced_by_the_heuristic(
        self,
    ) -> None:
        """
        S3 object metadata is free text, and "max-age=1; public" (a
        semicolon for a comma) is a common mistake.  The field has an
        invalid max-age: RFC 9111 section 4.2.1 (and the README: "a quoted,
        negative or otherwise invalid value means stale") says stale, or
        at most the 1 s the origin meant; cachetier drops the member and
        makes the file fresh for the heuristic --ttl (an hour here).
        """
        data = body_of(10_000, "m")
        self.origin.put("m.mp3", data, extra_headers={"Cache-Control": "max-age=1; public"})
        await self.get("m.mp3")
        await self.settle("m.mp3")
        await deferLater(reactor, 1.2, lambda: None)
        code, _, body = await self.get("m.mp3")
        await self.settle("m.mp3")
        self.assertEqual((code, body), (200, data))
        stored = self.cache.store.get("m.mp3")
        self.assertLessEqual(
            stored.lifetime,
            1,
            "an invalid max-age made the file fresh for the heuristic lifetime",
        )
        self.assertEqual(self.origin.counts["m.mp3"], 2, "the stale copy was served unrevalidated")

    async def test_private_followed_by_a_semicolon_is_not_stored(self) -> None:
        """
        "private; max-age=600": the member that names private is not one
        token, and cachetier drops it, so the shared cache keeps and
        shares what the origin marked private (RFC 9111 section 5.2.2.7;
        nginx finds "private" anywhere in the field and does not cache).
        """
        data = body_of(10_000, "p")
        self.origin.put("p.mp3", data, extra_headers={"Cache-Control": "private; max-age=600"})
        await self.get("p.mp3")
        await self.settle("p.mp3")
        self.assertIsNone(
            self.cache.syncer.store.get("p.mp3"),
            "a response marked private (with a semicolon) was kept by the shared cache",
        )


class TwoExpiresLinesTests(CacheTestCase):
    """
    Two Expires field lines (review of issue 21).
    """

    settings = {"ttl": 3600.0, "origin_retries": 1}

    async def test_of_two_expires_field_lines_the_first_counts_or_it_is_stale(self) -> None:
        """
        Two Expires field lines (nginx's "expires" with an upstream's own
        Expires passed on): RFC 9111 section 4.2.1 says use the first, or
        consider the response stale.  cachetier takes the last (here, an
        hour ahead), so a response that expired a day ago is fresh.
        """
        now = time.time()
        data = body_of(10_000, "e")
        self.origin.put("e.mp3", data)
        render = self.origin.render_GET

        def render_GET(request: Any) -> Any:
            request.responseHeaders.addRawHeader(b"expires", http_date(now - 86400))
            request.responseHeaders.addRawHeader(b"expires", http_date(now + 3600))
            return render(request)

        self.origin.render_GET = render_GET
        await self.get("e.mp3")
        await self.settle("e.mp3")
        await self.get("e.mp3")
        await self.settle("e.mp3")
        self.assertEqual(
            self.origin.counts["e.mp3"],
            2,
            "a response whose first Expires is a day past was served unrevalidated",
        )


class HTTPDateTests(SynchronousTestCase):
    """
    RFC 9110 section 5.6.7: an HTTP-date is an IMF-fixdate, or one of the
    two obsolete forms; anything else is no date, so an Expires of that
    kind means stale (RFC 9111 section 5.3).
    """

    def test_the_three_forms(self) -> None:
        for text in (
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "SUN, 06 NOV 1994 08:49:37 gmt",  # names in any case, as most caches
        ):
            self.assertEqual(parse_http_date(text), 784111777.0, text)

    def test_what_is_no_http_date(self) -> None:
        for text in (
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 2050 02:01:18 AEST",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "Thu, 31 Feb 2050 02:01:18 GMT",
            "0",
            "Thu, 01 Jan 2099 00:00:99 GMT",
        ):
            self.assertIsNone(parse_http_date(text, strict=True), text)

    def test_elsewhere_a_recipient_is_lenient(self) -> None:
        # Java's RFC 1123 formatter writes a one-digit day (Last-Modified).
        self.assertEqual(parse_http_date("Wed, 1 Oct 2025 07:28:00 GMT"), 1759303680.0)
        self.assertIsNone(parse_http_date("Wed, 1 Oct 2025 07:28:00 GMT", strict=True))

    def test_an_expires_that_is_no_http_date_means_stale(self) -> None:
        self.assertEqual(freshness_lifetime(None, "Thu, 18 Aug 2050 2:01:18 GMT", None, 0), 0.0)


class InvalidExpiresTests(CacheTestCase):
    """
    An Expires is an RFC 9110 section 5.6.7 date or means stale (review 5).
    """

    async def test_an_expires_with_second_99_is_invalid(self) -> None:
        """
        C{second = 2DIGIT} is 00..60 (60 for a leap second); 99 is no
        HTTP-date, so the Expires means already stale (RFC 9111 section
        5.3) and the second request revalidates; http_date reads it as
        second 59 of 2099, and the copy is fresh for 73 years.
        """
        self.origin.put(
            "e.mp3", body_of(1000, "e"), extra_headers={"Expires": "Thu, 01 Jan 2099 00:00:99 GMT"}
        )
        await self.get("e.mp3")
        await self.settle("e.mp3")
        code, headers, _ = await self.get("e.mp3")
        self.assertEqual(
            (code, self.origin.counts["e.mp3"]),
            (200, 2),
            f"an invalid Expires made the copy fresh: {header(headers, 'cache-status')}",
        )


class LenientLastModifiedTests(CacheTestCase):
    """
    Last-Modified is read leniently: strictness is for Expires (review 5).
    """

    async def test_a_java_style_last_modified_is_passed_on_and_validates(self) -> None:
        """
        Java's DateTimeFormatter.RFC_1123_DATE_TIME writes a one-digit day
        (C{Wed, 1 Oct 2025 07:28:00 GMT}); Twisted's parser took it.  Now
        it is no date at all: the Last-Modified the origin sent never
        reaches the listener (the HTTP contract: every end-to-end header
        replayed; it is stored only as the parsed time), and a file with
        no other validator has no heuristic freshness (RFC 9111 section
        4.2.2), so every request fetches it whole again (rule 7).  RFC
        9110 section 5.6.7: recipients are encouraged to be robust in
        parsing timestamps where the field does not say otherwise.
        """
        self.origin.put(
            "lm.mp3",
            body_of(100_000, "l"),
            etag=None,
            last_modified=None,
            extra_headers={"Last-Modified": "Wed, 1 Oct 2025 07:28:00 GMT"},
        )
        _, headers, _ = await self.get("lm.mp3")
        await self.settle("lm.mp3")
        await self.get("lm.mp3")
        await self.settle("lm.mp3")
        self.assertEqual(
            (header(headers, "last-modified"), self.origin.counts["lm.mp3"]),
            (["Wed, 01 Oct 2025 07:28:00 GMT"], 1),
            "the origin's Last-Modified was dropped, and the file fetched again",
        )


class MalformedMustRevalidateTests(CacheTestCase):
    """
    A Cache-Control with a member that is no directive means stale
    (f78f199), and no-store or private anywhere in it is honoured; a
    must-revalidate in it is not.
    """

    async def test_a_malformed_must_revalidate_is_not_served_stale_on_error(self) -> None:
        """
        C{max-age=1; must-revalidate}: what the field meant cannot be known,
        yet it is read as having no must-revalidate at all, so the default
        --stale-if-error (7 days) serves the copy stale when the origin
        fails (RFC 9111 section 4.2.4 and 5.2.2.2; rule 11: stale only with
        permission).
        """
        data = body_of(20_000, "r")
        await self.cached(
            "r.mp3", data, extra_headers={"Cache-Control": "max-age=1; must-revalidate"}
        )
        stored = self.cache.store.get("r.mp3")
        await deferLater(
            reactor, stored.expires_at - self.cache.syncer.clock.seconds() + 0.1, lambda: None
        )
        self.origin.status["r.mp3"] = 503
        code, headers, body = await self.get("r.mp3")
        self.assertEqual(
            (code, len(body)),
            (503, len(b"origin says no")),
            f"a copy whose Cache-Control says must-revalidate was served stale: {header(headers, 'cache-status')}",
        )
