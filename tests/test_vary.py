"""
C{Vary} (RFC 9111 section 4.1), over real sockets: variants kept apart by
the request headers the origin's Vary names, at most C{--max-variants} a
name; a C{*} never matches; S3's CORS Vary.
"""

from __future__ import annotations

import json

from twisted.web.http_headers import Headers

from .helpers import CacheTestCase, body_of, header, start_cachetier


class VaryTestCase(CacheTestCase):
    def seen(self, name: str, header_name: str) -> list[str | None]:
        """
        The value of C{header_name} in each request for C{name} the origin
        saw, in order (L{None}: absent).
        """
        values = []
        for _, asked, headers in self.origin.requests:
            if asked == name:
                raw = headers.getRawHeaders(header_name.encode())
                values.append(None if raw is None else raw[-1].decode())
        return values

    async def fetch(self, name: str, **headers: str) -> tuple[int, Headers, bytes]:
        code, got, body = await self.get(name, **headers)
        for fill in self.cache.syncer.syncs():
            await fill.when_done().addErrback(lambda _: None)
        return code, got, body

    def kept(self) -> list[str]:
        """
        The keys the store holds.
        """
        return sorted(self.cache.store.names())


class VariantTests(VaryTestCase):
    async def test_variants_are_kept_apart_by_the_headers_vary_names(self) -> None:
        data = body_of(1000)
        self.origin.put("a.mp3", data, extra_headers={"Vary": "Accept-Language"})
        # The first answer tells how the name varies; this request, with
        # the header, gets its own variant.
        code, _, body = await self.fetch("a.mp3", accept_language="en")
        self.assertEqual((code, body), (200, data))
        for language in ("en", "fr", None, "en", "fr", None):
            headers = {} if language is None else {"accept_language": language}
            code, _, body = await self.fetch("a.mp3", **headers)
            self.assertEqual((code, body), (200, data))
        # One request for each variant, with the header that selects it;
        # the first, plain, is the variant of requests without one.
        self.assertEqual(self.seen("a.mp3", "accept-language"), [None, "en", "fr"])
        self.assertEqual(len(self.kept()), 3)

    async def test_values_match_with_whitespace_normalised(self) -> None:
        self.origin.put("a.mp3", body_of(10), extra_headers={"Vary": "Accept-Language"})
        for value in ("en,fr", "en,  fr", "en , fr", "en ,fr"):
            await self.fetch("a.mp3", accept_language=value)
        self.assertEqual(self.origin.counts["a.mp3"], 2, "learned, then one variant")

    async def test_without_vary_one_copy_serves_every_request(self) -> None:
        self.origin.put("a.mp3", body_of(10))
        for language in ("en", "fr", None):
            headers = {} if language is None else {"accept_language": language}
            await self.fetch("a.mp3", **headers)
        self.assertEqual(self.origin.counts["a.mp3"], 1)
        self.assertEqual(self.kept(), ["a.mp3"])

    async def test_a_purge_drops_every_variant(self) -> None:
        self.origin.put("a.mp3", body_of(10), extra_headers={"Vary": "Accept-Language"})
        for language in ("en", "en", "fr"):
            await self.fetch("a.mp3", accept_language=language)
        self.assertEqual(len(self.cache.store), 3, "the plain answer, en and fr")
        self.assertTrue(self.cache.syncer.purge("a.mp3"))
        self.assertEqual(self.kept(), [])
        await self.fetch("a.mp3", accept_language="fr")
        self.assertEqual(self.origin.counts["a.mp3"], 4, "fetched again after the purge")

    async def test_a_restart_keeps_the_variants_and_how_the_name_varies(self) -> None:
        self.origin.put("a.mp3", body_of(10), extra_headers={"Vary": "Accept-Language"})
        for language in ("en", "en", "fr"):
            await self.fetch("a.mp3", accept_language=language)
        self.cache, self.url = start_cachetier(self, self.origin_url, self.cache.store.root)
        for language in ("en", "fr"):
            code, _, body = await self.fetch("a.mp3", accept_language=language)
            self.assertEqual((code, body), (200, body_of(10)))
        self.assertEqual(self.origin.counts["a.mp3"], 3, "both from the cache")

    async def test_a_purge_by_prefix_names_the_name_once(self) -> None:
        self.origin.put("a.mp3", body_of(10), extra_headers={"Vary": "Accept-Language"})
        for language in ("en", "en", "fr"):
            await self.fetch("a.mp3", accept_language=language)
        self.assertEqual(self.cache.syncer.purge_prefix("a."), ["a.mp3"])
        self.assertEqual(self.kept(), [])


class MaxVariantsTests(VaryTestCase):
    settings = {"max_variants": 2}

    async def test_the_least_recently_used_variant_goes_past_max_variants(self) -> None:
        self.origin.put("a.mp3", body_of(10), extra_headers={"Vary": "Accept-Language"})
        for language in ("en", "en", "fr", "en", "de"):
            await self.fetch("a.mp3", accept_language=language)
        kept = {key.rsplit("=", 1)[-1] for key in self.kept()}
        self.assertEqual(kept, {"en", "de"}, "fr was used least recently")
        await self.fetch("a.mp3", accept_language="en")
        self.assertEqual(self.seen("a.mp3", "accept-language"), [None, "en", "fr", "de"])


class S3CorsTests(VaryTestCase):
    async def test_files_stay_cached_for_browsers_with_and_without_origin(self) -> None:
        data = body_of(100_000)
        self.origin.put("ep.mp3", data, cors=True)
        site = "https://podcast.example"
        for _ in range(3):
            code, headers, body = await self.fetch("ep.mp3", origin=site)
            self.assertEqual((code, body), (200, data))
            self.assertEqual(header(headers, "access-control-allow-origin"), [site])
            code, headers, body = await self.fetch("ep.mp3")
            self.assertEqual((code, body), (200, data))
            self.assertEqual(header(headers, "access-control-allow-origin"), [])
        # One fill a variant: the first, asked for without Origin, is the
        # variant of every request without one.
        self.assertEqual(self.origin.counts["ep.mp3"], 2)
        self.assertEqual(len(self.cache.store), 2)
        response = await self.client.get(self.url + "api/v1/files/ep.mp3?sync=0")
        status = json.loads(await response.content())
        self.assertEqual(
            (status["file"], status["state"], status["variants"]), ("ep.mp3", "cached", 2)
        )


class FirstAnswerTests(VaryTestCase):
    async def test_the_first_answer_of_a_name_that_varies_is_kept(self) -> None:
        """
        The first answer for a name, asked for without the headers its
        Vary names, is the variant of every request without them: kept,
        so that a file behind S3's CORS rule is fetched once, not once to
        learn that it varies and once more to keep it.
        """
        data = body_of(100_000)
        self.origin.put("ep.mp3", data, cors=True)
        for _ in range(3):
            code, headers, body = await self.fetch("ep.mp3")
            self.assertEqual((code, body), (200, data))
            self.assertEqual(header(headers, "access-control-allow-origin"), [])
        self.assertEqual(self.origin.counts["ep.mp3"], 1)
        self.assertEqual(self.kept(), ["ep.mp3"])


class RestartTests(VaryTestCase):
    async def test_a_restart_with_only_the_plain_copy_still_knows_it_varies(self) -> None:
        data = body_of(100_000)
        self.origin.put("ep.mp3", data, cors=True)
        await self.fetch("ep.mp3")
        self.cache, self.url = start_cachetier(self, self.origin_url, self.cache.store.root)
        site = "https://podcast.example"
        code, headers, body = await self.fetch("ep.mp3", origin=site)
        self.assertEqual((code, body), (200, data))
        self.assertEqual(header(headers, "access-control-allow-origin"), [site])


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
