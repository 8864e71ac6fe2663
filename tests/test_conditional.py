"""
Conditional requests (L{cachetier.web.conditional}) on their own: which
validators make a 304, and which If-Range still names the version we have.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import datetimeToString
from twisted.web.test.requesthelper import DummyRequest

from cachetier.web.conditional import not_modified, range_still_valid

ETAG = b'"v-0123"'
MODIFIED = 1_700_000_000


def request(**headers: bytes) -> DummyRequest:
    """
    A request with C{headers} (C{if_none_match} for If-None-Match).
    """
    r = DummyRequest([b"files", b"a.mp3"])
    for name, value in headers.items():
        r.requestHeaders.setRawHeaders(name.replace("_", "-"), [value])
    return r


def date(when: float) -> bytes:
    return datetimeToString(when)


class NotModifiedTests(SynchronousTestCase):
    def test_without_validators_it_is_modified(self) -> None:
        self.assertFalse(not_modified(request(), ETAG, MODIFIED))

    def test_if_none_match(self) -> None:
        self.assertTrue(not_modified(request(if_none_match=ETAG), ETAG, MODIFIED))
        self.assertFalse(not_modified(request(if_none_match=b'"other"'), ETAG, MODIFIED))
        self.assertTrue(not_modified(request(if_none_match=b'"a", ' + ETAG), ETAG, MODIFIED))
        self.assertTrue(not_modified(request(if_none_match=b"  " + ETAG + b" "), ETAG, MODIFIED))

    def test_if_none_match_compares_weakly(self) -> None:
        self.assertTrue(not_modified(request(if_none_match=b"W/" + ETAG), ETAG, MODIFIED))
        self.assertTrue(not_modified(request(if_none_match=ETAG), b"W/" + ETAG, MODIFIED))

    def test_a_star_matches_any_version(self) -> None:
        self.assertTrue(not_modified(request(if_none_match=b"*"), ETAG, MODIFIED))
        self.assertTrue(not_modified(request(if_none_match=b" * "), None, None))

    def test_without_an_etag_no_tag_matches(self) -> None:
        self.assertFalse(not_modified(request(if_none_match=ETAG), None, MODIFIED))

    def test_if_none_match_wins_over_if_modified_since(self) -> None:
        # RFC 9110 13.2.2: with If-None-Match, If-Modified-Since is ignored.
        r = request(if_none_match=b'"other"', if_modified_since=date(MODIFIED))
        self.assertFalse(not_modified(r, ETAG, MODIFIED))

    def test_if_modified_since(self) -> None:
        for since, expected in (
            (MODIFIED, True),
            (MODIFIED + 3600, True),
            (MODIFIED - 1, False),
        ):
            r = request(if_modified_since=date(since))
            self.assertEqual(not_modified(r, ETAG, MODIFIED), expected, since)

    def test_if_modified_since_is_read_to_the_second(self) -> None:
        r = request(if_modified_since=date(MODIFIED))
        self.assertTrue(not_modified(r, ETAG, MODIFIED + 0.75))

    def test_a_length_after_the_date_is_ignored(self) -> None:
        r = request(if_modified_since=date(MODIFIED) + b"; length=1000")
        self.assertTrue(not_modified(r, ETAG, MODIFIED))

    def test_a_bad_date_or_no_date_of_ours_is_modified(self) -> None:
        self.assertFalse(not_modified(request(if_modified_since=b"yesterday"), ETAG, MODIFIED))
        self.assertFalse(not_modified(request(if_modified_since=date(MODIFIED)), ETAG, None))


class RangeStillValidTests(SynchronousTestCase):
    def test_without_if_range_the_range_holds(self) -> None:
        self.assertTrue(range_still_valid(request(), ETAG, MODIFIED))
        self.assertTrue(range_still_valid(request(), None, None))

    def test_an_etag_must_match_strongly(self) -> None:
        self.assertTrue(range_still_valid(request(if_range=ETAG), ETAG, MODIFIED))
        self.assertTrue(range_still_valid(request(if_range=b" " + ETAG + b" "), ETAG, MODIFIED))
        self.assertFalse(range_still_valid(request(if_range=b'"other"'), ETAG, MODIFIED))
        self.assertFalse(range_still_valid(request(if_range=b"W/" + ETAG), ETAG, MODIFIED))
        weak = b"W/" + ETAG
        self.assertFalse(range_still_valid(request(if_range=weak), weak, MODIFIED))
        self.assertFalse(range_still_valid(request(if_range=ETAG), None, MODIFIED))

    def test_a_date_must_be_the_last_modified_one(self) -> None:
        self.assertTrue(range_still_valid(request(if_range=date(MODIFIED)), ETAG, MODIFIED))
        self.assertTrue(range_still_valid(request(if_range=date(MODIFIED)), ETAG, MODIFIED + 0.5))
        self.assertFalse(range_still_valid(request(if_range=date(MODIFIED + 1)), ETAG, MODIFIED))
        self.assertFalse(range_still_valid(request(if_range=date(MODIFIED - 1)), ETAG, MODIFIED))
        self.assertFalse(range_still_valid(request(if_range=date(MODIFIED)), ETAG, None))

    def test_anything_else_is_not_this_version(self) -> None:
        self.assertFalse(range_still_valid(request(if_range=b"v-0123"), ETAG, MODIFIED))
        self.assertFalse(range_still_valid(request(if_range=b"yesterday"), ETAG, MODIFIED))
