"""
The byte-range parser (L{cachetier.web.ranges}) on its own: what a Range
header may make us send, and the multipart body that carries several ranges.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cachetier.web.ranges import MAX_RANGES, ByteRange, Unsatisfiable, multipart, parse_range

# One range of a set: (first, last), (first, None) for "first-", or
# (None, count) for the suffix "-count".
Spec = tuple[int | None, int | None]

_positions = st.integers(0, 1200)
_spec = st.one_of(
    st.tuples(_positions, _positions).map(lambda t: (min(t), max(t))),
    st.tuples(_positions, st.none()),
    st.tuples(st.none(), _positions),
)


def header(specs: list[Spec]) -> bytes:
    return b"bytes=" + b",".join(
        b"%s-%s" % (b"" if a is None else b"%d" % a, b"" if b is None else b"%d" % b)
        for a, b in specs
    )


def wanted(specs: list[Spec], size: int) -> set[int]:
    """
    Every byte of a representation of C{size} bytes that C{specs} ask for.
    """
    found: set[int] = set()
    for first, last in specs:
        if first is None:
            assert last is not None
            found |= set(range(max(0, size - last), size))
        else:
            found |= set(range(first, size if last is None else min(last + 1, size)))
    return found


def parse(text: bytes, size: int) -> list[tuple[int, int]] | None:
    ranges = parse_range(text, size)
    return None if ranges is None else [(r.first, r.last) for r in ranges]


class RangeSetTests(SynchronousTestCase):
    @given(st.lists(_spec, min_size=1, max_size=12), st.integers(0, 1000))
    def test_merged_ranges_are_sorted_apart_and_within_the_file(
        self, specs: list[Spec], size: int
    ) -> None:
        try:
            ranges = parse_range(header(specs), size)
        except Unsatisfiable:
            self.assertEqual(wanted(specs, size), set(), "a byte was there to send")
            return
        if ranges is None:
            # The whole file instead: only when the ranges ask for more.
            requested = sum(len(wanted([spec], size)) for spec in specs)
            self.assertGreater(requested, size)
            return
        self.assertTrue(ranges)
        for r in ranges:
            self.assertLessEqual(0, r.first)
            self.assertLessEqual(r.first, r.last)
            self.assertLess(r.last, size)
        for before, after in zip(ranges, ranges[1:], strict=False):
            self.assertGreater(after.first, before.last + 1, "overlapping or adjacent")
        self.assertLessEqual(sum(r.length for r in ranges), size)
        sent = {b for r in ranges for b in range(r.first, r.last + 1)}
        self.assertEqual(sent, wanted(specs, size))

    @given(st.binary(max_size=40), st.integers(0, 1000))
    def test_any_header_is_answered_within_the_file(self, text: bytes, size: int) -> None:
        try:
            ranges = parse_range(b"bytes=" + text, size)
        except Unsatisfiable:
            return
        if ranges is not None:
            self.assertLessEqual(sum(r.length for r in ranges), size)
            self.assertTrue(all(0 <= r.first <= r.last < size for r in ranges))

    def test_one_range(self) -> None:
        self.assertEqual(parse(b"bytes=0-499", 1000), [(0, 499)])
        self.assertEqual(parse(b"bytes=900-5000", 1000), [(900, 999)], "cut at the end")
        self.assertEqual(parse(b"bytes=999-999", 1000), [(999, 999)])

    def test_open_ended(self) -> None:
        self.assertEqual(parse(b"bytes=500-", 1000), [(500, 999)])
        self.assertEqual(parse(b"bytes=0-", 1000), [(0, 999)])

    def test_suffix(self) -> None:
        self.assertEqual(parse(b"bytes=-100", 1000), [(900, 999)])
        self.assertEqual(parse(b"bytes=-5000", 1000), [(0, 999)], "more than the whole")

    def test_several_are_sorted_and_merged(self) -> None:
        self.assertEqual(parse(b"bytes=500-509,0-9", 1000), [(0, 9), (500, 509)])
        self.assertEqual(parse(b"bytes=0-9,5-14", 1000), [(0, 14)], "overlapping")
        self.assertEqual(parse(b"bytes=0-9,10-19", 1000), [(0, 19)], "adjacent")
        self.assertEqual(parse(b"bytes=0-9,-10", 1000), [(0, 9), (990, 999)])

    def test_unsatisfiable(self) -> None:
        for text in (b"bytes=1000-", b"bytes=5000-6000,7000-", b"bytes=-0"):
            with self.assertRaises(Unsatisfiable, msg=text):
                parse_range(text, 1000)
        for text in (b"bytes=0-", b"bytes=-5"):
            with self.assertRaises(Unsatisfiable, msg=text):
                parse_range(text, 0)
        # One range that fits is enough.
        self.assertEqual(parse(b"bytes=5000-,0-9", 1000), [(0, 9)])

    def test_more_than_the_whole_gets_the_whole(self) -> None:
        # CVE-2011-3192: "bytes=0-,0-,..." must not make a body bigger than
        # the file.
        self.assertIsNone(parse(b"bytes=0-,0-", 1000))
        self.assertIsNone(parse(b"bytes=0-599,400-999", 1000))
        self.assertEqual(parse(b"bytes=0-499,500-999", 1000), [(0, 999)])

    def test_too_many_ranges_get_the_whole(self) -> None:
        fits = b",".join(b"%d-%d" % (2 * n, 2 * n) for n in range(MAX_RANGES))
        self.assertEqual(len(parse(b"bytes=" + fits, 1000) or []), MAX_RANGES)
        self.assertIsNone(parse(b"bytes=" + fits + b",900-900", 1000))
        # Empty list elements count towards the limit too.
        self.assertIsNone(parse(b"bytes=0-0" + b"," * MAX_RANGES, 1000))

    def test_empty_elements_are_skipped(self) -> None:
        self.assertEqual(parse(b"bytes=,0-9,,", 1000), [(0, 9)])
        self.assertIsNone(parse(b"bytes=", 1000))
        self.assertIsNone(parse(b"bytes=,", 1000))

    def test_whitespace_and_case(self) -> None:
        self.assertEqual(parse(b" Bytes =0-9, 20 - 29 ", 1000), [(0, 9), (20, 29)])

    def test_malformed_headers_are_ignored(self) -> None:
        for text in (
            b"items=0-9",
            b"bytes 0-9",
            b"0-9",
            b"bytes=abc",
            b"bytes=5",
            b"bytes=9-5",
            b"bytes=--5",
            b"bytes=+1-5",
            b"bytes=0x1-5",
            b"bytes=0-9,x-y",
            b"bytes=0-9,20",
        ):
            self.assertIsNone(parse(text, 1000), text)


class ByteRangeTests(SynchronousTestCase):
    def test_length_and_content_range(self) -> None:
        r = ByteRange(10, 19)
        self.assertEqual(r.length, 10)
        self.assertEqual(r.content_range(1000), b"bytes 10-19/1000")


class MultipartTests(SynchronousTestCase):
    def test_the_length_is_what_is_sent(self) -> None:
        data = bytes(range(256)) * 4
        ranges = [ByteRange(0, 9), ByteRange(500, 509)]
        body = multipart(ranges, len(data), b"audio/mpeg")
        boundary = body.content_type.split(b"boundary=")[1]
        sent = b"".join(head + data[r.first : r.last + 1] for head, r in body.parts)
        sent += body.trailer
        self.assertEqual(len(sent), body.length)
        self.assertTrue(body.content_type.startswith(b"multipart/byteranges; boundary="))
        self.assertTrue(sent.startswith(b"--" + boundary + b"\r\n"))
        self.assertTrue(sent.endswith(b"\r\n--" + boundary + b"--\r\n"))
        for r in ranges:
            self.assertIn(
                b"Content-Type: audio/mpeg\r\nContent-Range: "
                + r.content_range(len(data))
                + b"\r\n\r\n"
                + data[r.first : r.last + 1],
                sent,
            )

    def test_every_body_has_its_own_boundary(self) -> None:
        ranges = [ByteRange(0, 0), ByteRange(2, 2)]
        self.assertNotEqual(
            multipart(ranges, 10, b"a/b").content_type, multipart(ranges, 10, b"a/b").content_type
        )
