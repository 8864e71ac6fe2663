"""
C{Vary} (RFC 9111 section 4.1), over real sockets: variants kept apart by
the request headers the origin's Vary names, at most C{--max-variants} a
name; a C{*} never matches; S3's CORS Vary.
"""

from __future__ import annotations

import json
import time

from attrs import evolve
from treq import content
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from cachetier.objects import ObjectHeaders, StoredObject
from cachetier.sync import variants as variants_module

from .helpers import CacheTestCase, body_of, header, read_response, start_cachetier, stored_object
from .nodes import until

BROWSER = "https://app.example"
TOKEN = "d" * 32


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


class VaryForgottenTests(VaryTestCase):
    """
    An answer without Vary to a variant's fill (a 503, a 404) does not make
    the syncer forget that the name varies: browsers never get the podcast
    apps' plain copy, without the CORS header.
    """

    async def cached_for_apps(self) -> bytes:
        data = body_of(1000)
        self.origin.put("ep.mp3", data, cors=True)
        # A podcast app: the plain copy, varying by Origin, no ACAO.
        code, got, _ = await self.fetch("ep.mp3")
        self.assertEqual((code, header(got, "access-control-allow-origin")), (200, []))
        return data

    async def test_a_browser_is_not_given_the_plain_copy_while_the_origin_fails(self) -> None:
        await self.cached_for_apps()
        self.origin.status["ep.mp3"] = 503  # S3's SlowDown: no Vary
        code, got, _ = await self.fetch("ep.mp3", origin=BROWSER)
        # A 503 passed on is right; the app's copy without ACAO is not.
        if code == 200:
            self.assertEqual(header(got, "access-control-allow-origin"), [BROWSER])

    async def test_a_browser_gets_its_variant_once_the_origin_is_well(self) -> None:
        data = await self.cached_for_apps()
        self.origin.status["ep.mp3"] = 404  # e.g. a brief S3 policy mistake
        await self.fetch("ep.mp3", origin=BROWSER)
        del self.origin.status["ep.mp3"]
        for fill in self.cache.syncer.syncs():
            await fill.when_done().addErrback(lambda _: None)
        code, got, body = await self.fetch("ep.mp3", origin=BROWSER)
        self.assertEqual((code, body), (200, data))
        self.assertEqual(
            header(got, "access-control-allow-origin"),
            [BROWSER],
            f"origin asked with Origin: {self.seen('ep.mp3', 'origin')}; kept: {self.kept()}",
        )


class PurgeVariantFillTests(VaryTestCase):
    """
    A purge of a name stops a variant's fill in flight too: it never
    publishes the purged version after the purge has answered.
    """

    async def test_a_purge_stops_a_variant_fill_under_way(self) -> None:
        old, new = body_of(400_000, "old"), body_of(400_000, "new")
        self.origin.put("ep.mp3", old, cors=True)
        await self.fetch("ep.mp3")  # the apps' copy; the name varies
        self.origin.rate = 200_000  # two seconds a body
        lookup = self.cache.syncer.lookup("ep.mp3", None, Headers({b"origin": [BROWSER]}))
        fill = lookup.fill
        self.assertIsNotNone(fill, "a browser's variant is being fetched")
        await fill.when_started()
        # The file changes at the origin; the operator purges it.
        self.origin.put("ep.mp3", new, cors=True)
        self.assertTrue(self.cache.syncer.purge("ep.mp3"))
        await fill.when_done().addErrback(lambda _: None)
        self.origin.rate = None
        code, got, body = await self.fetch("ep.mp3", origin=BROWSER)
        self.assertEqual(code, 200)
        self.assertTrue(body == new, f"served the purged version; kept: {self.kept()}")


class DashboardVariantKeyTests(VaryTestCase):
    """
    The dashboard's syncs name files, never a variant's store key (with
    the request header values in it), as /api/v1/syncs does.
    """

    settings = {"admin_token": TOKEN.encode()}

    async def test_the_dashboard_names_files_not_variant_keys(self) -> None:
        self.origin.put("ep.mp3", body_of(400_000), cors=True)
        await self.fetch("ep.mp3")
        self.origin.rate = 200_000
        lookup = self.cache.syncer.lookup("ep.mp3", None, Headers({b"origin": [BROWSER]}))
        await lookup.fill.when_started()
        response = await self.client.get(
            self.url + "api/v1/dashboard", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        body = json.loads(await content(response))
        response = await self.client.get(
            self.url + "api/v1/syncs", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        syncs = json.loads(await content(response))
        self.origin.rate = None
        await lookup.fill.when_done().addErrback(lambda _: None)
        self.assertEqual([s["file"] for s in syncs["syncs"]], ["ep.mp3"])
        self.assertEqual([s["file"] for s in body["syncs"]], ["ep.mp3"])


class LearnedNamesTableTests(VaryTestCase):
    """
    The names whose Vary is learned are at most _MAX_LEARNED, the least
    recently used forgotten (their plain copies say it again): a full
    table never stops new files being kept.  Shown with the cap lowered
    to 2, the same code path.
    """

    async def test_purged_names_do_not_stop_new_files_being_cached(self) -> None:
        self.patch(variants_module, "_MAX_LEARNED", 2)
        for name in ("a.mp3", "b.mp3"):
            self.origin.put(name, body_of(100), cors=True)
            await self.fetch(name)
            self.assertTrue(self.cache.syncer.purge(name))
        self.assertEqual(self.kept(), [])
        self.origin.put("c.mp3", body_of(100), cors=True)
        await self.fetch("c.mp3")
        await self.fetch("c.mp3")
        self.assertEqual(self.kept(), ["c.mp3"])
        self.assertEqual(self.origin.counts["c.mp3"], 1)


class StoredVaryTests(SynchronousTestCase):
    def test_a_stored_object_knows_its_vary_and_a_304_renews_it(self) -> None:
        """
        The Vary of a kept copy is read once, when the object is made (a
        hit on a name whose Vary is not learned reads it, not the
        headers), and again when a 304 brings another.
        """
        obj = stored_object(extra=(("vary", "Origin, accept-LANGUAGE"), ("x-other", "1")))
        self.assertEqual(obj.vary, ("accept-language", "origin"))
        renewed = obj.updated_by(ObjectHeaders("audio/mpeg", extra=(("vary", "*"),)))
        self.assertEqual(renewed.vary, ("*",))
        again = StoredObject.from_json("/", obj.to_json())
        self.assertEqual((again, again.vary), (obj, obj.vary))
        self.assertIsNone(evolve(obj, extra=()).vary)


class NoLongerVariesTests(CacheTestCase):
    """
    A name whose newest answer no longer varies (review of issue 21).
    """

    settings = {"ttl": 3600.0, "origin_retries": 1}

    async def test_a_name_that_no_longer_varies_drops_its_old_variants(self) -> None:
        """
        The plain copy of a name is replaced by a newer response without
        Vary (the bucket's CORS rule removed, the object replaced).  That
        response matches every request; of the stored responses a request
        matches, the most recent is used (RFC 9111 section 4.1), and
        Variants.installed says it drops "the variants of a name that no
        longer varies".  cachetier keeps answering requests with an
        Origin from the old variant: the old body, with the old CORS
        header.
        """
        v1, v2 = body_of(10_000, "v1"), body_of(10_000, "v2")
        stale = {"Cache-Control": "max-age=1", "Age": "5"}
        self.origin.put("v.mp3", v1, cors=True, extra_headers=stale)
        self.assertEqual((await self.get("v.mp3"))[::2], (200, v1))  # kept, stale
        await self.settle("v.mp3")
        self.origin.put("v.mp3", v1, cors=True, extra_headers={"Cache-Control": "max-age=600"})
        code, headers, body = await self.get("v.mp3", origin="https://app.example")
        self.assertEqual((code, body), (200, v1))
        await self.settle("v.mp3")
        # The object is replaced, and no longer varies.
        self.origin.put("v.mp3", v2, extra_headers={"Cache-Control": "max-age=600"})
        self.assertEqual((await self.get("v.mp3"))[::2], (200, v2))
        await self.settle("v.mp3")
        code, headers, body = await self.get("v.mp3", origin="https://app.example")
        self.assertEqual(
            (code, body == v2, header(headers, "access-control-allow-origin")),
            (200, True, []),
            "a request with Origin got the old variant of a name that no longer varies",
        )


class EvictedVariantsTests(CacheTestCase):
    """
    Variants the store evicts are forgotten (review of issue 21).
    """

    settings = {"max_size": 16 << 20}

    async def test_evicted_variants_are_not_counted_or_remembered(self) -> None:
        """
        Variants remembers the kept variants of every name that varies
        (S3 with CORS: every object) and is told of installs and purges,
        never of evictions: what the store evicted stays in its table
        (no bound, rule 9) and the status API's "variants" counts copies
        no longer kept (README, Vary).
        """
        size = 5 << 20
        self.origin.put("a.mp3", body_of(size, "a"), cors=True)
        await self.get("a.mp3")
        await self.settle("a.mp3")
        await self.get("a.mp3", origin="https://app.example")
        for fill in self.cache.syncer.syncs():
            await fill.when_done().addErrback(lambda _: None)
        self.assertEqual(len(self.cache.syncer.variants.keys_of("a.mp3")), 2)
        for other in ("b.mp3", "c.mp3", "d.mp3"):
            self.origin.put(other, body_of(size, other))
            await self.get(other)
            await self.settle(other)
        store = self.cache.syncer.store
        self.assertIsNone(store.get("a.mp3"), "not evicted: the test needs it to be")
        response = await self.client.get(self.url + "api/v1/files/a.mp3?sync=0")
        _, _, body = await read_response(response)
        self.assertEqual(
            json.loads(body)["variants"],
            0,
            "the status API counts variants the store evicted",
        )


class ForwardedVaryJoinerTests(CacheTestCase):
    """
    A fill whose answer varies by a header it forwarded is its starter's
    variant (review of issue 21).
    """

    settings = {"forward_request_headers": ("origin",)}

    async def test_a_joiner_without_the_header_does_not_get_anothers_variant(self) -> None:
        """
        A listener's forwarded Origin starts the plain name's fill; S3 with
        a CORS rule answers with Vary: Origin and that listener's
        Access-Control-Allow-Origin.  A listener without an Origin who
        joins that fill while it runs must not get that variant (RFC 9111
        section 4.1; README: "Never with a download another listener
        started").
        """
        data = body_of(3_000_000, "j")
        self.origin.put("j.mp3", data, cors=True)
        self.origin.rate = 3_000_000
        first = Deferred.fromCoroutine(self.get("j.mp3", origin="https://app.example"))
        syncer = self.cache.syncer

        async def answered() -> bool:
            fill = syncer.fill_for("j.mp3")
            return fill is not None and fill.headers is not None

        await until(answered, within=5.0, every=0.01)
        code, headers, body = await self.get("j.mp3")
        await first
        self.assertEqual((code, len(body)), (200, len(data)))
        self.assertEqual(
            header(headers, "access-control-allow-origin"),
            [],
            "a listener without Origin got the variant another listener's forwarded Origin selected",
        )


class ForwardedVaryStarvationTests(CacheTestCase):
    """
    A joiner sent off a fill whose forwarded Vary header differs
    (web/files.py _follow, fill.joinable = False) gets a fill of its own.
    """

    settings = {"forward_request_headers": ("origin",), "queue_timeout": 1.0}

    async def test_the_joiners_own_fill_does_not_wait_for_the_others_download(self) -> None:
        """
        A joiner without Origin is sent to a fill of its own while the
        other listener's fill still transfers; that fill waits for the whole download (Flights:
        a name's next fill waits for the one leaving), so on large media
        the joiner gets 503 'no download slot' with every slot free
        (rule 9: downloads have deadlines, not a wait on someone else's
        transfer).
        """
        data = body_of(3_000_000, "s")
        self.origin.put("s.mp3", data, cors=True)
        self.origin.rate = 1_000_000  # the first listener's download takes 3 s
        first = Deferred.fromCoroutine(self.get("s.mp3", origin="https://app.example"))
        syncer = self.cache.syncer

        async def answered() -> bool:
            fill = syncer.fill_for("s.mp3")
            return fill is not None and fill.headers is not None

        await until(answered, within=5.0, every=0.01)
        began = time.monotonic()
        code, headers, body = await self.get("s.mp3")
        took = time.monotonic() - began
        await first
        self.assertEqual(
            (code, header(headers, "access-control-allow-origin")),
            (200, []),
            f"a joiner without Origin got {code} {body[:120]!r} after {took:.1f}s",
        )


class ForwardedVaryRenewalTests(CacheTestCase):
    """
    An answer that varies by a forwarded header is that listener's
    variant, not kept (README --forward-request-header; ca89181).
    """

    settings = {"forward_request_headers": ("origin",)}

    async def test_a_304_to_a_forwarded_origin_does_not_rewrite_the_plain_copy(self) -> None:
        """
        S3 with a CORS rule sends Vary: Origin and Access-Control-Allow-Origin
        only to requests with an Origin: the plain copy has neither.  A
        listener with an Origin asks for it once stale; its revalidation
        forwards that Origin, and S3's 304 carries Vary: Origin and that
        listener's Access-Control-Allow-Origin.  The 304 renews the plain
        copy with them (Download.run renews before asking Variants.keeps),
        so a listener without Origin is then served another listener's
        CORS header from the cache (RFC 9111 section 4.1; README: "is that
        listener's variant: it is not kept").
        """
        data = body_of(20_000, "c")
        await self.cached("c.mp3", data, extra_headers={"Cache-Control": "max-age=1"})
        stored = self.cache.store.get("c.mp3")
        await deferLater(
            reactor, stored.expires_at - self.cache.syncer.clock.seconds() + 0.1, lambda: None
        )
        # As S3 does: CORS headers, and Vary, only to a request with Origin.
        served = self.origin.files["c.mp3"]
        plain = dict(served.extra_headers)
        render = self.origin.render_GET

        def as_s3(request):  # type: ignore[no-untyped-def]
            origin = request.getHeader(b"origin")
            if origin is not None:
                served.extra_headers = {
                    **plain,
                    "Vary": "Origin",
                    "Access-Control-Allow-Origin": origin.decode(),
                }
            try:
                return render(request)
            finally:
                served.extra_headers = plain

        self.origin.render_GET = as_s3  # type: ignore[method-assign]
        await self.get("c.mp3", origin="https://app.example")
        code, headers, body = await self.get("c.mp3")
        self.assertEqual(
            (code, len(body), header(headers, "access-control-allow-origin")),
            (200, len(data), []),
            f"a listener without Origin got another listener's CORS header:"
            f" {header(headers, 'cache-status')}",
        )
