"""
The origin client in memory: breaker, retries, conditional GETs, and the
agents under it (redirects, signing, S3's rejections).
"""

from __future__ import annotations

from typing import Any

from botocore.credentials import ReadOnlyCredentials
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from cachetier.errors import OriginAnswer, OriginError, Reason
from cachetier.origin import Breaker, Origin, RetryPolicy
from cachetier.origin.auth import S3Signer

from .helpers import TestOrigin, stored_object


class _Script(Resource):
    """
    Answers each GET with the next status of a script (200 at the end).
    """

    isLeaf = True

    def __init__(self, *codes: int) -> None:
        super().__init__()
        self.codes = list(codes)
        self.seen: list[Any] = []

    def render_GET(self, request: Any) -> bytes:
        self.seen.append(request.requestHeaders)
        code = self.codes.pop(0) if self.codes else 200
        request.setResponseCode(code)
        return b"body"


class BreakerTests(SynchronousTestCase):
    def test_opens_probes_and_closes(self) -> None:
        clock = Clock()
        breaker = Breaker(clock, threshold=3, cooloff=10)
        for _ in range(2):
            self.assertTrue(breaker.allow())
            breaker.failed()
        self.assertEqual(breaker.state, "closed")
        breaker.failed()
        self.assertEqual(breaker.state, "open")
        self.assertFalse(breaker.allow())
        clock.advance(10)
        self.assertEqual(breaker.state, "half_open")
        self.assertTrue(breaker.allow(), "one probe after the cool-off")
        self.assertFalse(breaker.allow(), "only one")
        breaker.failed()
        self.assertEqual(breaker.state, "open")
        clock.advance(10)
        self.assertTrue(breaker.allow())
        breaker.succeeded()
        self.assertEqual((breaker.state, breaker.failures), ("closed", 0))
        self.assertTrue(breaker.allow())

    def test_an_abandoned_probe_frees_the_next_one(self) -> None:
        clock = Clock()
        breaker = Breaker(clock, threshold=1, cooloff=1)
        breaker.failed()
        clock.advance(1)
        self.assertTrue(breaker.allow())
        breaker.abandoned()
        self.assertTrue(breaker.allow())


def drive(treq: StubTreq, clock: Clock, d: Any) -> Deferred[Any]:
    """
    Run the coroutine C{d} against an in-memory origin for 50 clock seconds.
    """
    result = Deferred.fromCoroutine(d)
    for _ in range(50):
        treq.flush()
        clock.advance(1)
    return result


class OriginTests(SynchronousTestCase):
    def make(self, resource: Resource, **kwargs: Any) -> Origin:
        self.clock = Clock()
        self.treq = StubTreq(resource)
        return Origin("http://origin.test/", self.treq, self.clock, 30, **kwargs)

    def drive(self, d: Any) -> Deferred[Any]:
        return drive(self.treq, self.clock, d)

    def test_5xx_is_retried_with_backoff_until_success(self) -> None:
        script = _Script(503, 502)
        origin = self.make(script, retry=RetryPolicy(attempts=3, base=0.5, budget=10))
        response = self.successResultOf(self.drive(origin.get("a.mp3")))
        self.assertEqual(response.response.code, 200)
        self.assertEqual(len(script.seen), 3)

    def test_retries_are_bounded_in_count(self) -> None:
        script = _Script(503, 503, 503, 503)
        origin = self.make(script, retry=RetryPolicy(attempts=3, base=0.5, budget=10))
        failure = self.failureResultOf(self.drive(origin.get("a.mp3")), OriginError)
        self.assertEqual(failure.value.label, "http_503")
        self.assertEqual(len(script.seen), 3)

    def test_retries_are_bounded_in_time(self) -> None:
        script = _Script(*[503] * 10)
        origin = self.make(script, retry=RetryPolicy(attempts=10, base=1, budget=4))
        self.failureResultOf(self.drive(origin.get("a.mp3")), OriginError)
        # Waits of about 0.5-1, 1-2, then 2-4 would pass the 4 s budget.
        self.assertLessEqual(len(script.seen), 3)

    def test_not_found_is_not_retried(self) -> None:
        script = _Script(404)
        origin = self.make(script, retry=RetryPolicy(attempts=3))
        failure = self.failureResultOf(self.drive(origin.get("a.mp3")), OriginAnswer)
        self.assertEqual(failure.value.headers.status, 404)
        self.assertEqual(len(script.seen), 1)

    def test_an_open_breaker_fails_at_once_without_a_request(self) -> None:
        script = _Script(500, 500)
        origin = self.make(script, breaker=Breaker(Clock(), threshold=2, cooloff=60))
        for name in ("a.mp3", "b.mp3"):
            self.failureResultOf(self.drive(origin.get(name)), OriginError)
        d = Deferred.fromCoroutine(origin.get("a.mp3"))
        self.assertEqual(self.failureResultOf(d, OriginError).value.reason, Reason.breaker_open)
        self.assertEqual(len(script.seen), 2)

    def test_revalidation_sends_the_origin_validators(self) -> None:
        script = _Script(304)
        origin = self.make(script)
        cached = stored_object(
            etag='"abc"',
            last_modified=1_700_000_000.0,
            expires_at=0.0,
            origin_etag='"abc"',
            origin_last_modified=1_700_000_000.0,
        )
        response = self.successResultOf(self.drive(origin.get("a.mp3", cached)))
        self.assertTrue(response.not_modified)
        headers = script.seen[0]
        self.assertEqual(headers.getRawHeaders(b"if-none-match"), [b'"abc"'])
        self.assertEqual(
            headers.getRawHeaders(b"if-modified-since"), [b"Tue, 14 Nov 2023 22:13:20 GMT"]
        )


class BreakerByNameTests(SynchronousTestCase):
    def make(self) -> tuple[Origin, TestOrigin]:
        self.clock = Clock()
        origin = TestOrigin()
        self.treq = StubTreq(origin)
        breaker = Breaker(self.clock, threshold=3, cooloff=10)
        return Origin("http://origin.test/", self.treq, self.clock, 30, breaker=breaker), origin

    def get(self, origin: Origin, name: str) -> None:
        d = Deferred.fromCoroutine(origin.get(name))
        self.treq.flush()
        self.failureResultOf(d, OriginError)

    def test_one_names_5xx_never_opens_the_breaker(self) -> None:
        origin, test_origin = self.make()
        test_origin.status["broken.mp3"] = 503
        for _ in range(10):
            self.get(origin, "broken.mp3")
        self.assertEqual(origin.breaker.state, "closed")

    def test_5xx_from_several_names_opens_it(self) -> None:
        origin, test_origin = self.make()
        for name in ("a", "b", "c"):
            test_origin.status[name] = 502
            self.get(origin, name)
        self.assertEqual(origin.breaker.state, "open")


class _S3Error(Resource):
    """
    Answers every GET with C{code} and an S3 error body naming C{error}.
    """

    isLeaf = True

    def __init__(self, code: int, error: str) -> None:
        super().__init__()
        self.code = code
        self.error = error

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        body = f"<Error><Code>{self.error}</Code><Message>no</Message></Error>"
        return body.encode()


class _Credentials:
    def frozen(self) -> ReadOnlyCredentials:
        return ReadOnlyCredentials("AKIDEXAMPLE", "secret", None)


class AgentTests(SynchronousTestCase):
    """
    The agents under L{Origin}: redirects followed only within the origin,
    each request signed for its own URL, S3's rejections read.
    """

    def make(self, resource: Resource | None = None, **kwargs: Any) -> Origin:
        self.clock = Clock()
        self.origin = TestOrigin()
        self.treq = StubTreq(resource or self.origin)
        return Origin("http://origin.test/media/", self.treq, self.clock, 30, **kwargs)

    def drive(self, d: Any) -> Deferred[Any]:
        return drive(self.treq, self.clock, d)

    def test_a_redirect_within_the_origin_is_followed(self) -> None:
        origin = self.make()
        self.origin.redirects["media/old.mp3"] = "/media/new.mp3"
        self.origin.put("media/new.mp3", b"x")
        response = self.successResultOf(self.drive(origin.get("old.mp3")))
        origin.abandon(response)
        self.assertEqual(response.response.code, 200)
        self.assertEqual(self.origin.paths, [b"/media/old.mp3", b"/media/new.mp3"])

    def test_a_redirect_off_the_origin_or_its_base_path_is_passed_on(self) -> None:
        origin = self.make()
        away = ("http://elsewhere.test/media/x", "https://origin.test/media/x", "/other/x")
        for location in away:
            self.origin.redirects["media/away.mp3"] = location
            answer = self.failureResultOf(self.drive(origin.get("away.mp3")), OriginAnswer).value
            self.assertEqual(answer.headers.status, 302)
            self.assertIn(("location", location), answer.headers.extra)
        self.assertEqual(self.origin.paths, [b"/media/away.mp3"] * len(away))

    def test_redirects_are_followed_five_times_at_most(self) -> None:
        origin = self.make()
        self.origin.redirects["media/loop.mp3"] = "/media/loop.mp3"
        failure = self.failureResultOf(self.drive(origin.get("loop.mp3")), OriginError)
        self.assertEqual(str(failure.value), "more than 5 redirects")
        self.assertEqual(len(self.origin.paths), 6)

    def test_each_request_is_signed_for_its_own_url(self) -> None:
        origin = self.make(signer=S3Signer("us-east-1", _Credentials()))
        self.origin.redirects["media/old.mp3"] = "/media/new.mp3"
        self.origin.put("media/new.mp3", b"x")
        origin.abandon(self.successResultOf(self.drive(origin.get("old.mp3"))))
        signatures = [h.getRawHeaders(b"authorization") for _, _, h in self.origin.requests]
        self.assertEqual(len(signatures), 2)
        self.assertNotEqual(signatures[0], signatures[1])
        self.assertTrue(all(s and s[0].startswith(b"AWS4-HMAC-SHA256 ") for s in signatures))

    def test_an_s3_rejection_is_an_auth_error_never_a_404(self) -> None:
        origin = self.make(
            _S3Error(403, "SignatureDoesNotMatch"), signer=S3Signer("us-east-1", _Credentials())
        )
        failure = self.failureResultOf(self.drive(origin.get("a.mp3")), OriginError)
        self.assertEqual(failure.value.reason, Reason.auth)
        assert origin.rejected is not None
        self.assertIn("SignatureDoesNotMatch: no (check the secret key)", origin.rejected[1])

    def test_other_s3_errors_are_read_once_and_mapped_by_status(self) -> None:
        signer = S3Signer("us-east-1", _Credentials())
        origin = self.make(_S3Error(403, "NoSuchKey"), signer=signer)
        answer = self.failureResultOf(self.drive(origin.get("a.mp3")), OriginAnswer).value
        self.assertEqual(answer.headers.status, 403)
        self.assertIn(b"<Code>NoSuchKey</Code>", answer.body, "the body read is passed on")
        origin = self.make(_S3Error(400, "InvalidArgument"), signer=signer)
        failure = self.failureResultOf(self.drive(origin.get("a.mp3")), OriginError)
        self.assertEqual(failure.value.label, "http_400")
        self.assertIsNone(origin.rejected)


class ProbeTests(SynchronousTestCase):
    """
    In half-open, the one request let through always ends the probe, with
    a verdict or without one.
    """

    def test_a_probe_ending_without_a_verdict_lets_the_next_request_probe(self) -> None:
        clock = Clock()
        origin = TestOrigin()
        treq = StubTreq(origin)
        breaker = Breaker(clock, threshold=1, cooloff=10)
        client = Origin("http://origin.test/media/", treq, clock, 30, breaker=breaker)
        breaker.failed()
        clock.advance(10)
        self.assertEqual(breaker.state, "half_open")
        # The probe meets a redirect loop: no verdict on the origin.
        origin.redirects["media/away.mp3"] = "/media/away.mp3"
        d = Deferred.fromCoroutine(client.get("away.mp3"))
        treq.flush()
        self.assertEqual(self.failureResultOf(d, OriginError).value.reason, Reason.origin_redirect)
        origin.put("media/a.mp3", b"a")
        d = Deferred.fromCoroutine(client.get("a.mp3"))
        treq.flush()
        client.abandon(self.successResultOf(d))
        self.assertEqual(breaker.state, "closed")

    def test_only_the_probes_own_request_can_end_it(self) -> None:
        breaker = Breaker(Clock(), threshold=1, cooloff=0)
        breaker.failed()
        self.assertTrue(breaker.allow())
        probe = breaker.probe
        breaker.settle(None)  # a request let through before the breaker opened
        self.assertFalse(breaker.allow(), "a second probe while the first is out")
        breaker.settle(probe)
        self.assertTrue(breaker.allow())

    def test_a_request_cancelled_beside_the_probe_does_not_end_it(self) -> None:
        clock = Clock()
        origin = TestOrigin()
        origin.hang.update({"slow.mp3", "probe.mp3"})
        origin.status["bad.mp3"] = 503
        treq = StubTreq(origin)
        breaker = Breaker(clock, threshold=1, cooloff=5)
        client = Origin("http://origin.test/", treq, clock, 30, breaker=breaker)
        early = Deferred.fromCoroutine(client.get("slow.mp3"))  # let through, hangs
        treq.flush()
        self.failureResultOf(Deferred.fromCoroutine(client.get("bad.mp3")), OriginError)
        clock.advance(6)
        probe = Deferred.fromCoroutine(client.get("probe.mp3"))
        treq.flush()
        self.assertIsNotNone(breaker.probe)
        early.cancel()  # a purge of slow.mp3, say
        self.failureResultOf(early)
        self.assertIsNotNone(breaker.probe, "the probe was ended by another request")
        self.assertNoResult(probe)
        origin.release_hanging()
