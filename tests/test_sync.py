"""
The syncer in memory: StubTreq for the origin, a Clock for time.
"""

from __future__ import annotations

import os
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import server
from twisted.web.resource import Resource

from cachetier.errors import OriginError, Reason
from cachetier.origin import Origin, RetryPolicy
from cachetier.store import CacheStore
from cachetier.sync import Lookup, Outcome, Syncer

from .helpers import TestOrigin, body_of


class _Stall(Resource):
    """
    Sends the headers and C{sent} body bytes of a bigger body, then nothing.
    """

    isLeaf = True

    def __init__(self, sent: bytes | None) -> None:
        super().__init__()
        self.sent = sent
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> int:
        self.requests.append(request)
        if self.sent is not None:
            request.setHeader(b"content-length", b"1000000")
            request.write(self.sent)
        return server.NOT_DONE_YET


def _stop(syncer: Syncer, treq: StubTreq) -> None:
    """
    End what a test left running (stalled downloads), so that nothing of
    it is collected, half-run, during a later test.
    """
    syncer.stop().addErrback(lambda _: None)
    treq.flush()


class SyncerTests(SynchronousTestCase):
    def make(
        self,
        resource: Resource,
        run_in_thread: Any = None,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Syncer:
        self.clock = Clock()
        self.treq = StubTreq(resource)
        self.store = CacheStore.open(os.path.abspath(self.mktemp()), now=self.clock.seconds)
        origin = Origin("http://origin.test/", self.treq, self.clock, timeout=30, retry=retry)
        syncer = Syncer(
            origin,
            self.store,
            self.clock,
            run_in_thread or (lambda f, *a: maybeDeferred(f, *a)),
            **kwargs,
        )
        self.addCleanup(_stop, syncer, self.treq)
        return syncer

    def test_a_sync_publishes_the_body(self) -> None:
        origin = TestOrigin()
        origin.put("a.mp3", body_of(70_000))
        syncer = self.make(origin)
        done = syncer.start("a.mp3").when_done()
        self.treq.flush()
        stored = self.successResultOf(done)
        with open(stored.path, "rb") as f:
            self.assertEqual(f.read(), body_of(70_000))
        self.assertEqual(syncer.status("a.mp3").state, "cached")

    def test_one_flight_per_name(self) -> None:
        stall = _Stall(b"x" * 10)
        syncer = self.make(stall)
        fills = {id(syncer.start("a.mp3")) for _ in range(5)}
        fills |= {id(syncer.status("a.mp3").fill) for _ in range(5)}
        self.treq.flush()
        self.assertEqual(len(fills), 1)
        self.assertEqual(len(stall.requests), 1)

    def test_concurrency_cap_queues_the_rest(self) -> None:
        stall = _Stall(None)
        syncer = self.make(stall, max_concurrent=2)
        for n in range(5):
            syncer.start(f"f{n}")
        self.assertEqual((syncer.in_flight, syncer.queued), (2, 3))
        self.assertEqual(len(stall.requests), 2)
        self.assertEqual(syncer.status("f4", start=False).state, "syncing")

    def test_no_answer_times_out(self) -> None:
        syncer = self.make(_Stall(None))
        done = syncer.start("a.mp3").when_done()
        self.clock.advance(29)
        self.assertNoResult(done)
        self.clock.advance(2)
        failure = self.failureResultOf(done, OriginError)
        self.assertEqual(failure.value.reason, Reason.timeout)
        status = syncer.status("a.mp3")
        self.assertEqual(status.state, "error")

    def test_silence_mid_body_times_out_and_leaves_no_temp(self) -> None:
        syncer = self.make(_Stall(b"x" * 1000))
        fill = syncer.start("a.mp3")
        done = fill.when_done()
        self.treq.flush()
        self.assertEqual(fill.written, 1000)
        self.clock.advance(31)
        self.treq.flush()
        self.assertEqual(self.failureResultOf(done, OriginError).value.reason, Reason.timeout)
        self.assertEqual(os.listdir(os.path.join(self.store.root, "tmp")), [])
        self.assertIsNone(self.store.get("a.mp3"))

    def test_not_found_is_kept_for_the_negative_ttl(self) -> None:
        origin = TestOrigin()
        syncer = self.make(origin, negative_ttl=60)
        done = syncer.start("gone.mp3").when_done()
        self.treq.flush()
        self.assertEqual(self.successResultOf(done).status, 404)
        self.assertEqual(syncer.status("gone.mp3").state, "not_found")
        self.clock.advance(61)
        origin.put("gone.mp3", b"uploaded")
        syncer.status("gone.mp3")
        self.treq.flush()
        self.assertEqual(syncer.status("gone.mp3").state, "cached")
        self.assertEqual(origin.counts["gone.mp3"], 2)

    def test_errors_are_remembered_briefly(self) -> None:
        origin = TestOrigin()
        origin.status["a.mp3"] = 503
        syncer = self.make(origin, error_ttl=5)
        syncer.start("a.mp3")
        self.treq.flush()
        status = syncer.status("a.mp3")
        self.assertEqual((status.state, status.error.label), ("error", "http_503"))
        self.assertEqual(syncer.status("a.mp3").state, "error")
        self.assertEqual(origin.counts["a.mp3"], 1)
        self.clock.advance(6)
        del origin.status["a.mp3"]
        origin.put("a.mp3", b"back")
        syncer.status("a.mp3")
        self.treq.flush()
        self.assertEqual(syncer.status("a.mp3").state, "cached")
        self.assertEqual(origin.counts["a.mp3"], 2)

    def test_status_without_start_does_not_sync(self) -> None:
        origin = TestOrigin()
        origin.put("a.mp3", b"1")
        syncer = self.make(origin)
        self.assertEqual(syncer.status("a.mp3", start=False).state, "missing")
        self.assertEqual(origin.counts["a.mp3"], 0)

    def test_stop_cancels_downloads(self) -> None:
        syncer = self.make(_Stall(b"x" * 10), max_concurrent=1)
        first = syncer.start("a").when_done()
        queued = syncer.start("b").when_done()
        self.treq.flush()
        stopped = syncer.stop()
        self.treq.flush()
        self.successResultOf(stopped)
        self.assertEqual(self.failureResultOf(first, OriginError).value.reason, Reason.cancelled)
        self.assertEqual(self.failureResultOf(queued, OriginError).value.reason, Reason.cancelled)
        self.assertEqual(os.listdir(os.path.join(self.store.root, "tmp")), [])

    def test_stop_lets_a_publish_in_progress_finish(self) -> None:
        origin = TestOrigin()
        origin.put("a.mp3", b"complete")
        pending: list[Deferred[Any]] = []

        def in_thread(f: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append(d)
            d.addCallback(lambda _: f(*args))
            return d

        syncer = self.make(origin, run_in_thread=in_thread)
        done = syncer.start("a.mp3").when_done()
        self.treq.flush()
        stopped = syncer.stop()
        self.assertNoResult(stopped)
        pending[0].callback(None)
        self.successResultOf(stopped)
        self.assertEqual(self.successResultOf(done).size, 8)
        self.assertIsNotNone(self.store.get("a.mp3"))

    def test_a_cancelled_request_is_not_retried(self) -> None:
        stall = _Stall(None)
        syncer = self.make(stall, retry=RetryPolicy(attempts=3, base=0.1))
        done = syncer.start("a.mp3").when_done()
        stopped = syncer.stop()
        self.successResultOf(stopped)
        self.assertEqual(self.failureResultOf(done, OriginError).value.reason, Reason.cancelled)
        self.clock.advance(60)
        self.assertEqual(len(stall.requests), 1)

    def test_stop_starts_nothing_queued(self) -> None:
        stall = _Stall(None)
        syncer = self.make(stall, max_concurrent=1)
        fills = [syncer.start(f"q{n}") for n in range(3)]
        self.successResultOf(syncer.stop())
        self.assertEqual(len(stall.requests), 1)
        self.assertEqual([f.error.reason for f in fills], [Reason.cancelled] * 3)


class LookupTests(SynchronousTestCase):
    """
    What a request for a name gets: one L{Lookup}, decided by the syncer.
    """

    make = SyncerTests.make

    def cached(self, cache_control: str, **kwargs: Any) -> tuple[TestOrigin, Syncer]:
        """
        A syncer with C{a.mp3} cached for 10 seconds, and now stale.
        """
        origin = TestOrigin()
        origin.put("a.mp3", body_of(1000), extra_headers={"cache-control": cache_control})
        syncer = self.make(origin, **kwargs)
        syncer.start("a.mp3")
        self.treq.flush()
        self.assertIs(syncer.lookup("a.mp3").outcome, Outcome.CACHED)
        self.clock.advance(11)
        return origin, syncer

    def test_a_miss_is_a_fill_to_follow(self) -> None:
        syncer = self.make(_Stall(b"x" * 10))
        lookup = syncer.lookup("a.mp3")
        self.assertEqual((lookup.outcome, lookup.fill), (Outcome.FILL, syncer.fill_for("a.mp3")))
        self.assertFalse(lookup.servable)

    def test_the_origins_404_is_kept_and_served(self) -> None:
        syncer = self.make(TestOrigin())
        syncer.lookup("gone.mp3")
        self.treq.flush()
        lookup = syncer.lookup("gone.mp3")
        assert lookup.stored is not None
        self.assertEqual((lookup.outcome, lookup.stored.status), (Outcome.CACHED, 404))

    def test_a_stale_copy_is_served_while_it_revalidates(self) -> None:
        origin, syncer = self.cached("max-age=10, stale-while-revalidate=60")
        origin.hang.add("a.mp3")
        lookup = syncer.lookup("a.mp3")
        self.assertEqual((lookup.outcome, lookup.stored), (Outcome.STALE, self.store.get("a.mp3")))
        self.assertIsNotNone(syncer.fill_for("a.mp3"))

    def test_a_copy_that_must_revalidate_waits_for_it(self) -> None:
        origin, syncer = self.cached("max-age=10, must-revalidate")
        origin.hang.add("a.mp3")
        lookup = syncer.lookup("a.mp3")
        self.assertEqual(
            (lookup.outcome, lookup.fill), (Outcome.MUST_WAIT, syncer.fill_for("a.mp3"))
        )

    def test_a_copy_that_must_revalidate_is_not_served_while_the_origin_fails(self) -> None:
        origin, syncer = self.cached("max-age=10, must-revalidate")
        origin.status["a.mp3"] = 503
        lookup = syncer.lookup("a.mp3")
        assert isinstance(lookup.error, OriginError)
        # The origin's answer is passed on (RFC 9111 section 4.3.3)...
        self.assertEqual((lookup.outcome, lookup.error.label), (Outcome.ERROR, "http_503"))
        again = syncer.after_failure("a.mp3", lookup.error)
        self.assertEqual(again, Lookup(Outcome.ERROR, error=lookup.error))
        # ...and no answer at all withholds the copy (a 504).
        silent = OriginError(Reason.timeout, "no answer")
        self.assertEqual(
            syncer.after_failure("a.mp3", silent), Lookup(Outcome.WITHHELD, error=silent)
        )

    def test_a_stale_copy_is_served_while_the_origin_fails(self) -> None:
        origin, syncer = self.cached("max-age=10", stale_if_error=60)
        origin.status["a.mp3"] = 503
        stored = self.store.get("a.mp3")
        lookup = syncer.lookup("a.mp3")
        self.assertEqual((lookup.outcome, lookup.stored), (Outcome.STALE, stored))
        error = syncer.recent_failure("a.mp3")
        assert error is not None
        self.assertEqual(syncer.after_failure("a.mp3", error), Lookup(Outcome.STALE, stored))
        self.clock.advance(60)
        self.assertIs(syncer.lookup("a.mp3").outcome, Outcome.ERROR, "the origin's 503, passed on")

    def test_after_a_failed_miss_there_is_nothing_to_serve(self) -> None:
        syncer = self.make(TestOrigin())
        error = OriginError(Reason.internal, "a bug")
        self.assertEqual(syncer.after_failure("a.mp3", error), Lookup(Outcome.ERROR, error=error))
