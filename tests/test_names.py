"""
The naming rules, including properties over arbitrary names.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cachetier.config import parse_duration, parse_size
from cachetier.names import (
    MAX_NAME_BYTES,
    InvalidName,
    name_from_path,
    normalise_base,
    origin_url,
    quote_name,
    validate_name,
)
from cachetier.store import CacheStore

BASE = "https://media.example.com/podcasts/"


class NameRuleTests(SynchronousTestCase):
    def test_ordinary_names_pass(self) -> None:
        for name in ("a.mp3", "episodes/2024/100.mp3", "Ep 1 – Intro.mp3", "x/y%z.mp3"):
            self.assertEqual(validate_name(name), name)

    def test_names_are_case_sensitive(self) -> None:
        self.assertNotEqual(origin_url(BASE, "A.mp3"), origin_url(BASE, "a.mp3"))

    def assertRejected(self, raw: bytes, why: str) -> None:
        with self.assertRaises(InvalidName) as caught:
            name_from_path(raw)
        self.assertIn(why, str(caught.exception))

    def test_rejections(self) -> None:
        self.assertRejected(b"", "empty")
        self.assertRejected(b"a//b", "empty path segment")
        self.assertRejected(b"a/", "empty path segment")
        self.assertRejected(b"/etc/passwd", "absolute paths")
        self.assertRejected(b"../secret", "'..'")
        self.assertRejected(b"a/./b", "'.'")
        self.assertRejected(b"%2e%2e/secret", "'..'")
        self.assertRejected(b"a/%2E%2E", "'..'")
        self.assertRejected(b"..%2fsecret", "encoded slashes")
        self.assertRejected(b"a%5cb", "backslashes")
        self.assertRejected(b"a\\b", "backslashes")
        self.assertRejected(b"a%00b", "control characters")
        self.assertRejected(b"a%0d%0ab", "control characters")
        self.assertRejected(b"a%ffb", "UTF-8")
        self.assertRejected(b"a" * (MAX_NAME_BYTES + 1), "longer than")

    def test_absolute_name_is_rejected(self) -> None:
        with self.assertRaises(InvalidName):
            validate_name("/etc/passwd")

    def test_query_and_fragment_characters_are_quoted(self) -> None:
        self.assertEqual(origin_url(BASE, "a?b#c.mp3"), BASE + "a%3Fb%23c.mp3")

    def test_bases(self) -> None:
        self.assertEqual(normalise_base("http://o.example"), "http://o.example/")
        for bad in ("ftp://o/", "o.example", "http://o/?x=1", "http://u:p@o/", "http:///x"):
            with self.assertRaises(ValueError):
                normalise_base(bad)


names = st.lists(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
    min_size=1,
    max_size=6,
).map("/".join)


class NamePropertyTests(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(names)
    def test_accepted_names_stay_under_the_origin_base(self, name: str) -> None:
        try:
            validate_name(name)
        except InvalidName:
            return
        url = origin_url(BASE, name)
        parts = urlsplit(url)
        self.assertTrue(url.startswith(BASE))
        self.assertEqual((parts.scheme, parts.netloc), ("https", "media.example.com"))
        self.assertEqual((parts.query, parts.fragment), ("", ""))
        self.assertNotIn("/../", parts.path + "/")
        self.assertNotIn("/./", parts.path + "/")
        # The quoted path reads back as the very same name.
        self.assertEqual(name_from_path(quote_name(name).encode("ascii")), name)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=60))
    def test_any_raw_path_is_either_rejected_or_a_valid_name(self, raw: bytes) -> None:
        try:
            name = name_from_path(raw)
        except InvalidName:
            return
        self.assertEqual(validate_name(name), name)

    @settings(max_examples=300, deadline=None)
    @given(names)
    def test_accepted_names_map_to_a_store_path_under_the_cache_dir(self, name: str) -> None:
        try:
            validate_name(name)
        except InvalidName:
            return
        path = CacheStore("/srv/cache").data_path(name, "v1")
        self.assertTrue(os.path.normpath(path).startswith("/srv/cache/objects/"))


class ParseTests(SynchronousTestCase):
    def test_sizes(self) -> None:
        self.assertEqual(parse_size("1024"), 1024)
        self.assertEqual(parse_size("300M"), 300 * 1024**2)
        self.assertEqual(parse_size("50G"), 50 * 1024**3)
        self.assertEqual(parse_size("1.5k"), 1536)
        self.assertEqual(parse_size("2GiB"), 2 * 1024**3)
        for bad in ("", "M", "-1G", "10X", "10MB", "10mib", "10KB", "1 0M"):
            with self.assertRaises(ValueError):
                parse_size(bad)

    def test_durations(self) -> None:
        self.assertEqual(parse_duration("30"), 30.0)
        self.assertEqual(parse_duration("24h"), 86400.0)
        self.assertEqual(parse_duration("7d"), 7 * 86400.0)
        self.assertEqual(parse_duration("250ms"), 0.25)
        for bad in ("", "h", "-1s", "1w"):
            with self.assertRaises(ValueError):
                parse_duration(bad)
