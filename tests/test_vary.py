"""
C{Vary}, over real sockets: a response whose Vary has a C{*} never matches
a later request (RFC 9111 section 4.1), so it is passed on and never kept.
"""

from __future__ import annotations

from .helpers import CacheTestCase, body_of


class VaryStarTests(CacheTestCase):
    async def test_a_vary_star_file_is_streamed_and_never_kept(self) -> None:
        for name, vary in (("star.mp3", "*"), ("also.mp3", "Accept-Language, *")):
            self.origin.put(name, body_of(1000, name), extra_headers={"Vary": vary})
            for _ in range(2):
                code, _, body = await self.get(name)
                self.assertEqual((code, body), (200, body_of(1000, name)), name)
                await self.settle(name)
            self.assertEqual(self.origin.counts[name], 2, name)
            self.assertIsNone(self.cache.store.get(name), name)

    async def test_a_vary_star_answer_is_never_kept(self) -> None:
        self.origin.answers["gone.mp3"] = (404, {"Vary": "*"}, b"no")
        for _ in range(2):
            code, _, body = await self.get("gone.mp3")
            self.assertEqual((code, body), (404, b"no"))
            await self.settle("gone.mp3")
        self.assertEqual(self.origin.counts["gone.mp3"], 2)
