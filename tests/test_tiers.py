"""
A shield tier: real C{twistd} nodes on loopback addresses of their own (an
edge's fills go to the shield that ranks first for the name, which fetches
from the test origin once), against the real test origin.
"""

from __future__ import annotations

import json
import os
import tempfile
from types import SimpleNamespace
from typing import Any

from treq import content
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import http
from twisted.web.http_headers import Headers

from cachetier.assembly import assemble
from cachetier.client import rank as client_rank
from cachetier.config import SettingError, Settings, from_json, to_json
from cachetier.config.tiers import tiers
from cachetier.objects import ObjectHeaders, StoredObject
from cachetier.origin.shields import COOLOFF, ShieldHealth, own_failure
from cachetier.rendezvous import rank
from cachetier.sync.versions import older

from .helpers import (
    body_of,
    filled,
    header,
    http_client,
    read_response,
    start_cachetier,
    start_origin,
)
from .nodes import Node, restart_node, start_node, until


class ShieldTierTests(TestCase):
    """
    One shield and edges in front of it.
    """

    timeout = 60

    def setUp(self) -> None:
        self.origin, self.origin_url = start_origin(self)
        self.client = http_client(self)

    async def shield_and_edges(self, edges: int, *args: str) -> tuple[Node, list[Node]]:
        shield = await start_node(self, self.origin_url, name="shield1", host="127.0.0.2")
        started = [
            await start_node(
                self,
                self.origin_url,
                f"--shield={shield.url}",
                *args,
                name=f"edge{i}",
                host=f"127.0.0.{3 + i}",
            )
            for i in range(edges)
        ]
        return shield, started

    async def get(self, url: str, **headers: str) -> tuple[int, Any, bytes]:
        sent = {k.replace("_", "-"): [v] for k, v in headers.items()}
        return await read_response(await self.client.get(url, headers=sent))

    async def health(self, node: Node) -> dict[str, Any]:
        code, _, body = await self.get(node.url + "healthz")
        verdict: dict[str, Any] = json.loads(body)
        return verdict

    async def test_listeners_over_three_edges_cost_the_origin_one_fetch(self) -> None:
        """
        Thirty listeners spread over three edges ask for one cold file at
        once: each edge asks the shield, the shield asks the origin once,
        and every listener gets the exact bytes.
        """
        body = body_of(3 << 20, "one fetch")
        self.origin.put("ep/one.mp3", body)
        self.origin.rate = 4 << 20
        _, edges = await self.shield_and_edges(3)
        results = await DeferredList(
            [
                Deferred.fromCoroutine(self.get(edges[i % 3].url + "files/ep/one.mp3"))
                for i in range(30)
            ],
            consumeErrors=True,
        )
        for ok, result in results:
            self.assertTrue(ok, result)
            code, _, got = result
            self.assertEqual((code, len(got)), (200, len(body)))
            self.assertEqual(got, body)
        self.assertEqual(self.origin.counts["ep/one.mp3"], 1)

    async def test_a_shield_that_refuses_is_skipped_for_the_origin(self) -> None:
        """
        A shield that refuses connections (none listens there): the edge
        asks the origin instead, and the listener gets the file.
        """
        body = body_of(100_000, "refused")
        self.origin.put("refused.mp3", body)
        edge = await start_node(
            self, self.origin_url, "--shield=http://127.0.0.2:9/", name="edge1", host="127.0.0.3"
        )
        code, _, got = await self.get(edge.url + "files/refused.mp3")
        self.assertEqual((code, got), (200, body))
        self.assertEqual(self.origin.counts["refused.mp3"], 1)

    async def metric(self, node: Node, sample: str) -> float:
        _, _, text = await self.get(node.url + "metrics")
        for line in text.decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
        return 0.0

    async def test_a_shield_down_before_the_request_sends_it_to_the_origin(self) -> None:
        """
        The shield is down: the edge's fill goes to the origin, its
        /healthz says degraded, naming the shield; once the shield is back
        and its /healthz answers, the edge is ok again and asks it.
        """
        shield, [edge] = await self.shield_and_edges(1)
        await shield.stop()
        self.origin.put("down.mp3", body_of(200_000, "down"))
        code, _, got = await self.get(edge.url + "files/down.mp3")
        self.assertEqual((code, got), (200, body_of(200_000, "down")))
        self.assertEqual(self.origin.counts["down.mp3"], 1)
        verdict = await self.health(edge)
        self.assertEqual(verdict["status"], "degraded")
        self.assertIn(f"shield {shield.url} is down", " ".join(verdict["reasons"]))
        await restart_node(self, shield, self.origin_url)

        async def ok() -> bool:
            return (await self.health(edge))["status"] == "ok"

        await until(ok, within=15)
        self.origin.put("back.mp3", body_of(1000, "back"))
        code, _, got = await self.get(edge.url + "files/back.mp3")
        self.assertEqual((code, got), (200, body_of(1000, "back")))
        fetched = await self.metric(shield, "cachetier_origin_requests_total")
        self.assertEqual(fetched, 1, "the shield, back, fetched back.mp3 for the edge")

    async def test_a_seek_ahead_on_a_cold_file_is_a_range_request_through_the_tier(self) -> None:
        """
        A listener seeks far into a cold file at an edge (the default of
        one fill connection): the edge asks the shield for that range, the
        shield asks the origin for it, the listener gets the right bytes,
        and the origin sends the file about once.
        """
        size, mib = 24 << 20, 1 << 20
        body = body_of(size, "seek")
        self.origin.put("seek.m4a", body, ranges=True)
        self.origin.rate = 4 * mib
        _, [edge] = await self.shield_and_edges(1)
        code, headers, got = await self.get(
            edge.url + "files/seek.m4a", Range=f"bytes={20 * mib}-{21 * mib - 1}"
        )
        self.assertEqual(code, 206)
        self.assertEqual(got, body[20 * mib : 21 * mib])
        ranged = [
            h.getRawHeaders(b"range")[0]
            for _, n, h in self.origin.requests
            if n == "seek.m4a" and h.hasHeader(b"range")
        ]
        self.assertTrue(ranged, "the shield asked the origin for the range")

        async def cached() -> bool:
            _, _, status = await self.get(edge.url + "api/v1/files/seek.m4a?sync=0")
            return bool(json.loads(status)["available"])

        await until(cached, within=20)
        code, _, whole = await self.get(edge.url + "files/seek.m4a")
        self.assertEqual((code, whole), (200, body))
        self.assertLessEqual(self.origin.sent["seek.m4a"], size + 8 * mib)

    async def test_a_fill_over_several_connections_takes_ranges_from_the_shield(self) -> None:
        """
        --fill-connections=3 at the edge: its sparse fill asks the shield
        for ranges over several connections, the listener gets the exact
        bytes, and the origin sends the file about once.
        """
        size, mib = 24 << 20, 1 << 20
        body = body_of(size, "parallel")
        self.origin.put("parallel.m4a", body, ranges=True)
        self.origin.rate = 8 * mib
        shield, [edge] = await self.shield_and_edges(1, "--fill-connections=3")
        code, _, got = await self.get(edge.url + "files/parallel.m4a")
        self.assertEqual((code, got), (200, body))
        asked = await self.metric(
            edge, f'cachetier_upstream_requests_total{{upstream="{shield.url}"}}'
        )
        self.assertGreaterEqual(asked, 2)
        self.assertLessEqual(self.origin.sent["parallel.m4a"], size + 8 * mib)

    async def test_revalidation_goes_through_the_shield_and_age_counts(self) -> None:
        """
        The shield's Age counts at the edge (its copy lives only for what
        is left of the origin's max-age), and once both copies are stale
        the edge revalidates with the shield, which revalidates with the
        origin: 304s all the way, no body fetched twice.

        The edge's copy may go stale up to a second before the shield's
        (RFC 9111 4.2.3: its age counts the Date's whole seconds and its
        own request's time); a revalidation in between is answered 304 by
        the shield from its still fresh copy, without the origin, which is
        right too.  So the edge is asked again only when each node says
        its own copy is stale.
        """
        self.origin.put(
            "fresh.mp3", body_of(10_000, "fresh"), extra_headers={"Cache-Control": "max-age=4"}
        )
        shield, [edge] = await self.shield_and_edges(1)
        code, _, _ = await self.get(shield.url + "files/fresh.mp3")
        self.assertEqual(code, 200)

        async def aged() -> bool:
            _, headers, _ = await self.get(shield.url + "files/fresh.mp3")
            return int(headers.getRawHeaders(b"age", [b"0"])[0]) >= 2

        await until(aged, within=5)
        code, headers, got = await self.get(edge.url + "files/fresh.mp3")
        self.assertEqual((code, got), (200, body_of(10_000, "fresh")))
        self.assertGreaterEqual(int(headers.getRawHeaders(b"age")[0]), 2)

        async def stale(node: Node) -> bool:
            _, _, status = await self.get(node.url + "api/v1/files/fresh.mp3?sync=0")
            return bool(json.loads(status)["stale"])

        async def both_stale() -> bool:
            return await stale(edge) and await stale(shield)

        await until(both_stale, within=10)
        code, _, got = await self.get(edge.url + "files/fresh.mp3")
        self.assertEqual((code, got), (200, body_of(10_000, "fresh")))
        not_modified = 'cachetier_revalidations_total{result="not_modified"}'
        self.assertEqual(await self.metric(edge, not_modified), 1)
        self.assertEqual(await self.metric(shield, not_modified), 1)
        conditional = [
            h
            for _, n, h in self.origin.requests
            if n == "fresh.mp3" and h.hasHeader(b"if-none-match")
        ]
        self.assertEqual((self.origin.counts["fresh.mp3"], len(conditional)), (2, 1))

    async def test_a_shield_killed_mid_transfer_leaves_no_short_200(self) -> None:
        """
        The shield is killed (SIGKILL) while edges stream a big file from
        it: the edge's fill goes on from the origin with a Range request
        (If-Range) for what it lacks, and every listener gets the whole,
        correct file (or a clean abort, never a short 200).
        """
        size, mib = 12 << 20, 1 << 20
        body = body_of(size, "killed")
        self.origin.put("killed.mp3", body, ranges=True)
        self.origin.rate = 3 * mib
        shield, [edge] = await self.shield_and_edges(1)
        listeners = [
            Deferred.fromCoroutine(self.get(edge.url + "files/killed.mp3")) for _ in range(3)
        ]

        async def under_way() -> bool:
            return self.origin.sent["killed.mp3"] >= 4 * mib

        await until(under_way, within=10)
        before = len(self.origin.requests)
        shield.kill()
        results = await DeferredList(listeners, consumeErrors=True)
        whole = 0
        for ok, result in results:
            if ok:
                code, _, got = result
                self.assertEqual(code, 200)
                self.assertEqual(len(got), size, "never a short 200")
                self.assertEqual(got, body)
                whole += 1
        self.assertEqual(whole, 3, "the fill went on from the origin")
        resumed = [h for _, n, h in self.origin.requests[before:] if n == "killed.mp3"]
        self.assertTrue(resumed)
        for headers in resumed:
            self.assertTrue(headers.getRawHeaders(b"range")[0].startswith(b"bytes="))
            self.assertEqual(
                headers.getRawHeaders(b"if-range"), [self.origin.files["killed.mp3"].etag.encode()]
            )


class FakeShieldTests(TestCase):
    """
    An edge in this process whose shield is the test origin under
    C{shield/}: it answers C{shield/files/<name>} as a shield would, with
    whatever status and C{Cache-Status} a test gives it.
    """

    def setUp(self) -> None:
        self.origin, self.origin_url = start_origin(self)
        self.client = http_client(self)
        self.shield_url = self.origin_url + "shield/"

    def edge(self, **settings: Any) -> str:
        settings.setdefault("shields", (self.shield_url,))
        self.cache, url = start_cachetier(self, self.origin_url, **settings)
        return url

    async def get(self, url: str) -> tuple[int, Any, bytes]:
        return await read_response(await self.client.get(url))

    def shield_fails(self, name: str, status: int, cache_status: str | None) -> None:
        headers = {"Content-Type": "application/json"}
        if cache_status is not None:
            headers["Cache-Status"] = cache_status
        self.origin.answers[f"shield/files/{name}"] = (status, headers, b'{"error":"x"}')

    async def test_a_5xx_of_the_shields_own_sends_the_fill_to_the_origin(self) -> None:
        """
        A 503 the shield made itself (its own Cache-Status entry has no
        fwd-status): the shield is skipped, the edge asks the origin, and
        the edge's /healthz is degraded, naming the shield.
        """
        self.origin.put("own.mp3", body_of(5000, "own"))
        self.shield_fails("own.mp3", 503, "shield1; detail=overloaded")
        url = self.edge()
        code, _, body = await self.get(url + "files/own.mp3")
        self.assertEqual((code, body), (200, body_of(5000, "own")))
        self.assertEqual(self.origin.counts["own.mp3"], 1)
        _, _, health = await self.get(url + "healthz")
        verdict = json.loads(health)
        self.assertEqual(verdict["status"], "degraded")
        self.assertIn(f"shield {self.shield_url} is down", " ".join(verdict["reasons"]))
        self.assertEqual(verdict["shields_down"], [self.shield_url])

    async def test_a_5xx_the_shield_relays_is_the_answer(self) -> None:
        """
        A 502 the shield relays from the origin (fwd-status in its entry)
        is the origin's answer, not the shield's failure: passed on, the
        shield stays up, the origin is not asked by the edge.
        """
        self.origin.put("relayed.mp3", body_of(10))
        self.shield_fails("relayed.mp3", 502, "shield1; fwd=miss; fwd-status=502")
        url = self.edge()
        code, _, _ = await self.get(url + "files/relayed.mp3")
        self.assertEqual(code, 502)
        self.assertEqual(self.origin.counts["relayed.mp3"], 0)
        _, _, health = await self.get(url + "healthz")
        self.assertEqual(json.loads(health)["shields_down"], [])
        self.assertEqual(self.cache.syncer.origin.breaker.state, "closed")

    async def test_a_shield_that_does_not_answer_in_time_is_skipped(self) -> None:
        """
        A shield's answer headers are bounded by --origin-timeout plus
        --shield-timeout (what its own fill may wait on the origin, and
        then some): one that hangs past both is skipped for the origin.
        """
        self.origin.put("slow.mp3", body_of(100, "slow"))
        self.origin.hang.add("shield/files/slow.mp3")
        url = self.edge(shield_timeout=0.5, origin_timeout=0.5)
        code, _, body = await self.get(url + "files/slow.mp3")
        self.assertEqual((code, body), (200, body_of(100, "slow")))
        metrics = (await self.get(url + "metrics"))[2].decode()
        self.assertIn(
            f'cachetier_upstream_errors_total{{reason="timeout",upstream="{self.shield_url}"}} 1.0',
            metrics,
        )
        self.assertIn(f'cachetier_upstream_up{{upstream="{self.shield_url}"}} 0.0', metrics)
        self.assertEqual(self.cache.syncer.origin.origin.breaker.failures, 0)

    async def test_without_fallback_no_shield_is_a_502(self) -> None:
        """
        --shield-fallback=none: when no shield answers, the listener gets
        cachetier's JSON 502, and the origin is never asked.
        """
        self.origin.put("none.mp3", body_of(10))
        url = self.edge(shields=("http://127.0.0.1:9/",), shield_fallback="none")
        code, _, body = await self.get(url + "files/none.mp3")
        self.assertEqual(code, 502)
        self.assertIn("error", json.loads(body))
        self.assertEqual(self.origin.counts["none.mp3"], 0)

    async def test_without_fallback_a_shield_that_timed_out_is_a_504(self) -> None:
        """
        --shield-fallback=none: when the last shield asked did not answer
        in time (--origin-timeout plus --shield-timeout), the listener gets
        a JSON 504, as nginx gives one when its upstreams timed out; the
        origin is never asked.
        """
        self.origin.put("late.mp3", body_of(10))
        self.origin.hang.add("shield/files/late.mp3")
        url = self.edge(shield_timeout=0.5, origin_timeout=0.5, shield_fallback="none")
        code, headers, body = await self.get(url + "files/late.mp3")
        self.assertEqual(code, 504)
        self.assertEqual(json.loads(body)["error"], "shield_timeout")
        self.assertRegex(header(headers, "cache-status")[-1], r"; detail=shield_timeout$")
        self.assertEqual(self.origin.counts["late.mp3"], 0)

    async def test_requests_to_a_shield_carry_no_origin_secret(self) -> None:
        """
        --origin-header-file's headers go to the origin only, never to a
        shield.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("Authorization: Bearer sk-live-secret\n")
        self.origin.put("shield/files/secret.mp3", body_of(10))
        url = self.edge(origin_header_file=path)
        code, _, _ = await self.get(url + "files/secret.mp3")
        self.assertEqual(code, 200)
        [(_, _, headers)] = [r for r in self.origin.requests if r[1] == "shield/files/secret.mp3"]
        self.assertFalse(headers.hasHeader(b"authorization"))

    async def test_each_name_goes_to_the_shield_that_ranks_first_for_it(self) -> None:
        """
        With two shields, each name goes to the one rendezvous hashing
        ranks first, by the same function the fail-open client uses, so
        every edge sends a name to the same shield.
        """
        shields = (self.origin_url + "s1/", self.origin_url + "s2/")
        url = self.edge(shields=shields)
        for i in range(12):
            name = f"ep{i}.mp3"
            for shield in shields:
                self.origin.put(shield[len(self.origin_url) :] + "files/" + name, body_of(10))
            code, _, _ = await self.get(url + "files/" + name)
            self.assertEqual(code, 200)
            first = rank(shields, name)[0][len(self.origin_url) :]
            self.assertEqual(
                [n for n in self.origin.counts if n.endswith(name)], [first + "files/" + name]
            )
        self.assertIs(rank, client_rank)

    async def test_a_shield_failing_on_its_own_sends_the_name_to_the_next_shield(self) -> None:
        """
        The first-ranked shield answers a 503 of its own: the next shield
        is asked, not the origin.
        """
        shields = (self.origin_url + "s1/", self.origin_url + "s2/")
        first, second = (s[len(self.origin_url) :] for s in rank(shields, "next.mp3"))
        self.origin.answers[first + "files/next.mp3"] = (503, {}, b'{"error":"overloaded"}')
        self.origin.put(second + "files/next.mp3", body_of(10, "next"))
        url = self.edge(shields=shields)
        code, _, body = await self.get(url + "files/next.mp3")
        self.assertEqual((code, body), (200, body_of(10, "next")))
        self.assertEqual(self.origin.counts["next.mp3"], 0)

    async def test_a_small_file_cut_off_by_its_shield_goes_on_from_the_origin(self) -> None:
        """
        A shield breaks off a file too small for a parallel fill: the fill
        goes on from the origin with a Range request for the bytes it
        lacks (If-Range: the same version), and its listener gets the
        whole file, no error and no byte twice.
        """
        body = body_of(300_000, "cut")
        # Both say Accept-Ranges, as a shield does for a file whose length
        # it knows, and the same validator.
        self.origin.put("shield/files/cut.mp3", body, die_after=100_000, ranges=True, etag='"c"')
        self.origin.put("cut.mp3", body, ranges=True, etag='"c"')
        url = self.edge()
        code, _, got = await self.get(url + "files/cut.mp3")
        self.assertEqual((code, got), (200, body))
        [asked] = [h for _, n, h in self.origin.requests if n == "cut.mp3"]
        self.assertRegex(asked.getRawHeaders(b"range", [b""])[0], rb"^bytes=[1-9]\d*-")
        self.assertTrue(asked.hasHeader(b"if-range"))
        _, _, health = await self.get(url + "healthz")
        reasons = " ".join(json.loads(health)["reasons"])
        self.assertIn("is down (truncated)", reasons)
        self.assertNotIn("origin errors", reasons)

    async def test_a_shields_older_answer_to_a_revalidation_is_not_kept(self) -> None:
        """
        Rule 2 (a copy is replaced only by a newer version; RFC 9111
        section 4: the most recent response): the edge holds v2; its
        revalidation gets a 200 from the shield whose Last-Modified is
        older.  The edge drops it and asks the origin, which confirms v2
        with a 304: the listener gets v2, and v2 stays the copy.
        """
        v1, v2 = body_of(5000, "v1"), body_of(5000, "v2")
        stale = {"Cache-Control": "max-age=0"}
        self.origin.put("shield/files/r.mp3", v2, last_modified=1_700_000_100, extra_headers=stale)
        self.origin.put("r.mp3", v2, last_modified=1_700_000_100, extra_headers=stale)
        url = self.edge()
        self.assertEqual((await self.get(url + "files/r.mp3"))[2], v2)
        await filled(self.cache, "r.mp3")
        self.origin.put("shield/files/r.mp3", v1, extra_headers=stale)
        code, headers, got = await self.get(url + "files/r.mp3")
        self.assertEqual((code, got), (200, v2))
        [asked] = [h for _, n, h in self.origin.requests if n == "r.mp3"]
        etag = self.origin.files["r.mp3"].etag
        self.assertEqual(asked.getRawHeaders(b"if-none-match"), [etag.encode()])
        self.assertEqual(self.origin.sent["r.mp3"], 0)
        stored = self.cache.store.get("r.mp3")
        assert stored is not None
        self.assertEqual(stored.origin_etag, etag)
        _, _, health = await self.get(url + "healthz")
        self.assertEqual(json.loads(health)["shields_down"], [])

    async def test_without_fallback_an_older_answer_fails_and_leaves_the_copy(self) -> None:
        """
        Rule 2 with --shield-fallback=none: the origin is not the edge's to
        ask, so a revalidation the shield answers with an older version
        fails, as when no shield answers (a stale copy is not served
        without permission: 504), and the copy stays.
        """
        v1, v2 = body_of(5000, "v1"), body_of(5000, "v2")
        stale = {"Cache-Control": "max-age=0"}
        self.origin.put("shield/files/r.mp3", v2, last_modified=1_700_000_100, extra_headers=stale)
        url = self.edge(shield_fallback="none")
        self.assertEqual((await self.get(url + "files/r.mp3"))[2], v2)
        await filled(self.cache, "r.mp3")
        copy = self.cache.store.get("r.mp3")
        self.origin.put("shield/files/r.mp3", v1, extra_headers=stale)
        code, _, got = await self.get(url + "files/r.mp3")
        self.assertEqual((code, json.loads(got)["error"]), (504, "origin_unavailable"))
        self.assertIn("older than the copy", json.loads(got)["message"])
        self.assertEqual(self.cache.store.get("r.mp3"), copy)
        self.assertEqual(self.origin.counts["r.mp3"], 0)


class InProcessTierTests(TestCase):
    """
    A shield and an edge in this process (L{start_cachetier}), over real
    sockets, in front of the real test origin.
    """

    timeout = 60

    def setUp(self) -> None:
        self.origin, self.origin_url = start_origin(self)
        self.client = http_client(self)

    async def get(self, url: str, **headers: str) -> tuple[int, Any, bytes]:
        sent = {k.replace("_", "-"): [v] for k, v in headers.items()}
        return await read_response(await self.client.get(url, headers=sent))

    async def test_an_origin_slower_than_the_shield_timeout_is_fetched_once(self) -> None:
        """
        Rule 7 (every byte fetched from the origin at most once per
        version): --shield-timeout bounds connecting to a shield; its
        answer may take --origin-timeout more, since a shield waiting on a
        slow origin has not failed.  A cold file whose origin takes longer
        than --shield-timeout to answer is fetched once, by the shield, and
        the shield stays up.
        """
        self.origin.put("slow.mp3", body_of(1000))
        self.origin.hang.add("slow.mp3")
        _, shield_url = start_cachetier(self, self.origin_url, node_name="shield1")
        _, edge_url = start_cachetier(
            self, self.origin_url, node_name="edge1", shields=(shield_url,), shield_timeout=0.3
        )
        asked = self.client.get(edge_url + "files/slow.mp3")
        asked.addErrback(lambda failure: None)
        self.addCleanup(asked.cancel)
        # Bounded: six shield timeouts, at most.
        for _ in range(36):
            if self.origin.counts["slow.mp3"] > 1:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.origin.counts["slow.mp3"], 1)
        code, _, body = await self.get(edge_url + "healthz")
        self.assertEqual(json.loads(body)["shields_down"], [])

    async def test_an_edge_does_not_go_back_to_an_older_version_from_its_shield(self) -> None:
        """
        Rule 2 (a cached file is replaced only by a complete newer
        version): the shield holds v1, fresh for ten minutes; the file
        changes at the origin while the shield is unreachable, so the
        edge fetches v2 from the origin.  When v2 goes stale the edge
        revalidates it with the shield, which answers v1 from its cache
        (If-None-Match names v2): older, so the edge asks the origin,
        which confirms v2, and serves v2.
        """
        v1, v2 = body_of(2000, "v1"), body_of(2000, "v2")
        self.origin.put("r.mp3", v1, extra_headers={"Cache-Control": "max-age=600"})
        shield = assemble(
            Settings(
                origin=self.origin_url,
                cache_dir=tempfile.mkdtemp(dir="."),
                node_name="shield1",
            ),
            reactor,
        )
        self.addCleanup(shield.stop)
        port = reactor.listenTCP(0, shield.site, interface="127.0.0.1")
        number = port.getHost().port
        shield_url = f"http://127.0.0.1:{number}/"
        code, _, got = await self.get(shield_url + "files/r.mp3")
        self.assertEqual((code, got), (200, v1))
        _, edge_url = start_cachetier(
            self, self.origin_url, node_name="edge1", shields=(shield_url,)
        )
        self.origin.put(
            "r.mp3", v2, last_modified=1_700_000_100, extra_headers={"Cache-Control": "max-age=1"}
        )
        await port.stopListening()
        code, _, got = await self.get(edge_url + "files/r.mp3")
        self.assertEqual((code, got), (200, v2))
        port = reactor.listenTCP(number, shield.site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        async def shield_back() -> bool:
            _, _, body = await self.get(edge_url + "healthz")
            return json.loads(body)["shields_down"] == []

        await until(shield_back, within=15)
        code, headers, got = await self.get(edge_url + "files/r.mp3")
        self.assertEqual(code, 200)
        self.assertEqual(
            header(headers, "cache-status")[-1].split(";")[:2], ["edge1", " fwd=stale"]
        )
        self.assertTrue(got == v2, "the edge served v1, older than the v2 it had")

    async def edge_newer_than_its_shield(self, get: Any) -> tuple[str, bytes, bytes]:
        """
        A shield (in this process) holding v1 of r.mp3 without ETag, fresh
        for ten minutes, and an edge holding v2, fetched from the origin
        while the shield was away, now stale, the shield back: the edge's
        URL, v1 and v2.
        """
        v1, v2 = body_of(2000, "v1"), body_of(2000, "v2")
        self.origin.put("r.mp3", v1, etag=None, extra_headers={"Cache-Control": "max-age=600"})
        shield = assemble(
            Settings(
                origin=self.origin_url, cache_dir=tempfile.mkdtemp(dir="."), node_name="shield1"
            ),
            reactor,
        )
        self.addCleanup(shield.stop)
        port = reactor.listenTCP(0, shield.site, interface="127.0.0.1")
        number = port.getHost().port
        shield_url = f"http://127.0.0.1:{number}/"
        code, _, got = await get(shield_url + "files/r.mp3")
        self.assertEqual((code, got), (200, v1))
        _, edge_url = start_cachetier(
            self, self.origin_url, node_name="edge1", shields=(shield_url,)
        )
        self.origin.put(
            "r.mp3",
            v2,
            etag=None,
            last_modified=1_700_000_100,
            extra_headers={"Cache-Control": "max-age=1"},
        )
        await port.stopListening()
        code, _, got = await get(edge_url + "files/r.mp3")
        self.assertEqual((code, got), (200, v2))
        port = reactor.listenTCP(number, shield.site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        async def shield_back() -> bool:
            _, _, body = await get(edge_url + "healthz")
            return json.loads(body)["shields_down"] == []

        await until(shield_back, within=15)
        await deferLater(reactor, 1.1, lambda: None)
        return edge_url, v1, v2

    async def test_a_listeners_cdn_loop_does_not_take_the_shield_down(self) -> None:
        """
        Rule 12 (a shield's health is the shield's; edges are known by the
        secret alone): a listener whose C{CDN-Loop} names the shield gets
        the shield's 508, which is the answer to that request, not the
        shield's failure: the shield stays up for every other name and
        listener, and the looping request is not sent on to the origin.
        """
        self.origin.put("a.mp3", body_of(1000, "a"))
        self.origin.put("b.mp3", body_of(1000, "b"))
        _, shield_url = start_cachetier(self, self.origin_url, node_name="shield1")
        _, edge_url = start_cachetier(
            self, self.origin_url, node_name="edge1", shields=(shield_url,)
        )
        code, headers, _ = await self.get(
            edge_url + "files/a.mp3", cdn_loop="cachetier; node=shield1"
        )
        self.assertEqual(code, 508)
        shield_entry, edge_entry = header(headers, "cache-status")
        self.assertEqual(shield_entry, "shield1; detail=loop_detected")
        self.assertIn("fwd-status=508", edge_entry.split("; "))
        self.assertEqual(self.origin.counts["a.mp3"], 0)
        code, _, body = await self.get(edge_url + "healthz")
        self.assertEqual(json.loads(body)["shields_down"], [])
        # Other listeners go through the shield as before, for that name too.
        for name in ("b.mp3", "a.mp3"):
            code, headers, _ = await self.get(edge_url + "files/" + name)
            self.assertEqual(code, 200)
            self.assertEqual(header(headers, "via"), ["1.1 shield1", "1.1 edge1"])
        self.assertEqual(self.origin.counts["a.mp3"], 1)

    async def test_shields_that_left_the_cluster_are_forgotten(self) -> None:
        """
        Rule 9 (every table bounded): a shield no longer followed (with
        C{--shield=cluster}, one that left) leaves L{Upstreams.shields} and
        every C{cachetier_upstream_*} series at once, so shields that come
        back at new addresses (containers) grow neither; a fill under way
        with it finishes with it, whole.
        """
        body = body_of(200_000, "left")
        self.origin.put("left.mp3", body)
        _, shield_url = start_cachetier(self, self.origin_url, node_name="shield1")
        edge, url = start_cachetier(self, self.origin_url, node_name="edge1", shields=(shield_url,))
        self.origin.rate = 400_000
        response = await self.client.get(url + "files/left.mp3")
        self.assertEqual(response.code, 200)
        for n in range(100):
            edge.upstreams.follow([f"http://10.0.{n // 250}.{n % 250 + 1}:8080/"])
        self.assertEqual(await content(response), body)
        self.assertEqual(self.origin.counts["left.mp3"], 1)
        _, _, metrics = await self.get(url + "metrics")
        named = {
            line.split('upstream="')[1].split('"')[0]
            for line in metrics.decode().splitlines()
            if line.startswith("cachetier_upstream_") and 'upstream="' in line
        }
        self.assertEqual(named, {"http://10.0.0.100:8080/"})
        self.assertEqual(list(edge.upstreams.shields), ["http://10.0.0.100:8080/"])

    async def test_a_listeners_loop_at_the_shield_is_no_origin_failure(self) -> None:
        """
        Rule 11 (stale only with permission: the origin's directives, an
        operator's choice, or the origin unreachable within
        stale-if-error): one listener whose C{CDN-Loop} names the shield
        gets the shield's 508 for its revalidation.  That answer is to its
        request alone: it must not count as the origin failing, so the
        next listener's request revalidates and gets the origin's v2, not
        v1 served stale "under stale-if-error" while the origin is up.
        """
        v1, v2 = body_of(1000, "v1"), body_of(1000, "v2")
        self.origin.put("s.mp3", v1, extra_headers={"Cache-Control": "max-age=1"})
        _, shield_url = start_cachetier(self, self.origin_url, node_name="shield1")
        _, edge_url = start_cachetier(
            self, self.origin_url, node_name="edge1", shields=(shield_url,)
        )
        code, _, got = await self.get(edge_url + "files/s.mp3")
        self.assertEqual((code, got), (200, v1))
        self.origin.put(
            "s.mp3", v2, last_modified=1_700_000_100, extra_headers={"Cache-Control": "max-age=1"}
        )
        await deferLater(reactor, 2.2, lambda: None)
        code, headers, _ = await self.get(
            edge_url + "files/s.mp3", cdn_loop="cachetier; node=shield1"
        )
        looped = (code, header(headers, "cache-status"))
        self.assertEqual(code, 508, "the looping listener is told of its loop")
        code, headers, got = await self.get(edge_url + "files/s.mp3")
        self.assertEqual(code, 200)
        self.assertTrue(
            got == v2,
            f"after a listener's loop ({looped}), the next listener got v1 stale:"
            f" {header(headers, 'cache-status')}",
        )
        _, _, health = await self.get(edge_url + "healthz")
        self.assertNotIn("origin", json.dumps(json.loads(health).get("reasons", [])))

    async def test_a_listeners_loop_is_no_origin_error_in_healthz(self) -> None:
        """
        Rule 12 / the HTTP contract (/healthz degraded when the origin
        fails): the shield's 508 to a listener whose C{CDN-Loop} names it
        is that listener's answer; the origin was never asked, so the
        edge's /healthz must not report origin errors.
        """
        origin, origin_url = self.origin, self.origin_url
        client = self.client
        origin.put("a.mp3", body_of(1000, "a"))
        _, shield_url = start_cachetier(self, origin_url, node_name="shield1")
        _, edge_url = start_cachetier(self, origin_url, node_name="edge1", shields=(shield_url,))
        response = await client.get(
            edge_url + "files/a.mp3", headers={"CDN-Loop": ["cachetier; node=shield1"]}
        )
        code, _, _ = await read_response(response)
        self.assertEqual(code, 508)
        self.assertEqual(origin.counts["a.mp3"], 0)
        await deferLater(reactor, 1.1, lambda: None)  # past the cached verdict
        _, _, health = await read_response(await client.get(edge_url + "healthz"))
        verdict = json.loads(health)
        self.assertEqual((verdict["status"], verdict["reasons"]), ("ok", []))

    async def test_a_refetch_after_a_shields_304_of_another_version_is_checked_too(
        self,
    ) -> None:
        """
        Rule 2 (a cached file is replaced only by a complete newer
        version): as in test_tiers' test of an older version from the
        shield, but the origin sends no ETag (Last-Modified only).  The
        shield holds v1, fresh; the edge holds v2 (fetched from the origin
        while the shield was away).  The edge's revalidation
        (If-Modified-Since v2's date) gets the shield's 304 naming v1's
        Last-Modified: another version, so the edge fetches the file whole
        from the shield, and that 200 of v1 must not replace v2.
        """
        client = self.client

        async def get(url: str) -> tuple[int, Any, bytes]:
            return await read_response(await client.get(url))

        edge_url, v1, v2 = await self.edge_newer_than_its_shield(get)
        code, headers, got = await get(edge_url + "files/r.mp3")
        self.assertEqual(code, 200)
        code, headers, got = await get(edge_url + "files/r.mp3")
        self.assertTrue(
            got == v2,
            f"the edge went back to v1, older than its v2: {header(headers, 'cache-status')}"
            f" last-modified {header(headers, 'last-modified')}",
        )

    async def test_an_origins_own_508_is_an_origin_failure_within_stale_if_error(self) -> None:
        """
        Rule 11 / the HTTP contract (stale-if-error: the origin failing
        with a 5xx): no shield here, and the listener's request names no
        node; the origin itself answers 508.  That is the origin failing,
        as any 5xx is: the copy, within its stale-if-error window, is
        served, and /healthz reports origin errors.  C{looped} takes any
        508 for a shield's answer to a listener's loop.
        """
        origin, origin_url = self.origin, self.origin_url
        client = self.client
        v1 = body_of(1000, "v1")
        origin.put("s.mp3", v1, extra_headers={"Cache-Control": "max-age=1, stale-if-error=600"})
        _, edge_url = start_cachetier(self, origin_url, node_name="edge1")
        code, _, got = await read_response(await client.get(edge_url + "files/s.mp3"))
        self.assertEqual((code, got), (200, v1))
        await deferLater(reactor, 1.2, lambda: None)
        origin.status["s.mp3"] = 508
        code, headers, got = await read_response(await client.get(edge_url + "files/s.mp3"))
        await deferLater(reactor, 1.1, lambda: None)  # past the cached verdict
        _, _, health = await read_response(await client.get(edge_url + "healthz"))
        verdict = json.loads(health)
        self.assertEqual(
            (code, got == v1, verdict["status"]),
            (200, True, "degraded"),
            f"the origin's own 508 is no origin failure: {header(headers, 'cache-status')},"
            f" healthz {verdict}",
        )

    async def test_a_304_of_the_origins_naming_another_version_does_not_loop(self) -> None:
        """
        Rule 9 (downloads have deadlines; every resource a bound) and rule
        7: the shield holds v1 (Last-Modified t1), fresh; the edge holds v2
        (t2), fetched from the origin while the shield was away; the
        origin has since gone back to v1 (t1, a restore), so asked
        If-Modified-Since t2 it says 304 with t1.  The edge's revalidation
        gets the shield's 304 (t1), refetches whole from the shield (v1,
        older), asks the origin (304, t1): C{changed}, and the syncer
        starts the fill over, which runs the same course, without end:
        the origin and the shield are asked again and again.
        """
        origin = self.origin
        client = self.client

        async def get(url: str) -> tuple[int, Any, bytes]:
            return await read_response(await client.get(url))

        edge_url, v1, v2 = await self.edge_newer_than_its_shield(get)
        # The origin went back to v1: asked If-Modified-Since t2, a 304 (t1).
        origin.answers["r.mp3"] = (
            304,
            {"Last-Modified": http.datetimeToString(1_700_000_000).decode()},
            b"",
        )
        before = origin.counts["r.mp3"]
        asked = client.get(edge_url + "files/r.mp3")
        asked.addCallback(content)
        asked.addTimeout(4, reactor)
        asked.addErrback(lambda _: None)
        await deferLater(reactor, 3.0, lambda: None)
        after = origin.counts["r.mp3"]
        await asked
        self.assertLessEqual(
            after - before,
            3,
            f"one listener's request made the edge ask the origin {after - before} times"
            " in 3 seconds (the fill restarts without end)",
        )

    async def test_a_listener_joining_a_looping_listeners_fill_is_not_told_of_a_loop(
        self,
    ) -> None:
        """
        Rule 12 (a request naming its own node is a loop, 508) / the HTTP
        contract: listener A's request names the shield in its
        C{CDN-Loop}; listener B's names nothing.  Both ask the edge for
        a.mp3 while the edge's one download slot is busy, so B joins A's
        queued fill, which goes to the shield with A's hops.  B's request
        does not loop: it must get the file, not the shield's 508.
        """
        origin, origin_url = self.origin, self.origin_url
        client = self.client
        body = body_of(1000, "a")
        origin.put("a.mp3", body)
        origin.put("busy.mp3", body_of(1000, "busy"))
        origin.hang.add("busy.mp3")
        _, shield_url = start_cachetier(self, origin_url, node_name="shield1")
        _, edge_url = start_cachetier(
            self, origin_url, node_name="edge1", shields=(shield_url,), max_concurrent_syncs=1
        )
        busy = client.get(edge_url + "files/busy.mp3")
        busy.addErrback(lambda _: None)

        async def busy_asked() -> bool:
            return origin.counts["busy.mp3"] >= 1

        await until(busy_asked, within=5.0)
        looping = client.get(
            edge_url + "files/a.mp3", headers={"CDN-Loop": ["cachetier; node=shield1"]}
        )
        await deferLater(reactor, 0.3, lambda: None)
        plain = client.get(edge_url + "files/a.mp3")
        await deferLater(reactor, 0.3, lambda: None)
        origin.hang.discard("busy.mp3")
        origin.release_hanging()  # busy.mp3 fails: the slot is free
        code_a, _, _ = await read_response(await looping)
        code, headers, got = await read_response(await plain)
        await busy
        self.assertEqual(code_a, 508)
        self.assertTrue(
            (code, got) == (200, body),
            f"a listener whose request named no node got {code}:"
            f" {header(headers, 'cache-status')} {got[:80]!r}",
        )


class ShieldSettingsTests(SynchronousTestCase):
    """
    --shield, --shield-fallback and --shield-timeout, checked.
    """

    flags = {
        "node-name": "edge1",
        "shield": [],
        "shield-fallback": "origin",
        "shield-timeout": "2s",
    }

    def refusal(self, **flags: Any) -> str:
        with self.assertRaises(SettingError) as caught:
            tiers({**self.flags, **flags})
        return str(caught.exception)

    def test_shields_are_base_urls_in_the_order_given(self) -> None:
        settings = tiers({**self.flags, "shield": ["http://10.0.0.2:8080", "https://s2/x/"]})
        self.assertEqual(settings["shields"], ("http://10.0.0.2:8080/", "https://s2/x/"))
        self.assertEqual((settings["shield_fallback"], settings["shield_timeout"]), ("origin", 2.0))

    def test_bad_values_are_refused_naming_the_flag(self) -> None:
        self.assertIn("--shield: 'ftp://x'", self.refusal(shield=["ftp://x"]))
        self.assertIn("given twice", self.refusal(shield=["http://a/", "http://a"]))
        self.assertIn("--shield-fallback must be", self.refusal(**{"shield-fallback": "next"}))
        self.assertIn("--shield-timeout", self.refusal(**{"shield-timeout": "0s"}))
        self.assertIn("--shield-timeout", self.refusal(**{"shield-timeout": "soon"}))

    def test_a_worker_gets_the_shields(self) -> None:
        settings = Settings(origin="http://127.0.0.1:9/", shields=("http://127.0.0.2:8080/",))
        self.assertEqual(from_json(to_json(settings)), settings)


class ShieldHealthTests(SynchronousTestCase):
    """
    A shield's health on a L{Clock}: down at its first failure of its own,
    back only when its /healthz says so.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.checks: list[Deferred[bool]] = []
        self.health = ShieldHealth("http://s1/", self.clock, self.check)

    def check(self) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.checks.append(d)
        return d

    def test_down_until_its_healthz_answers(self) -> None:
        self.health.failed()
        self.assertEqual((self.health.up, self.health.allow()), (False, False))
        self.clock.advance(COOLOFF - 0.1)
        self.assertEqual(self.checks, [])
        self.clock.advance(0.1)
        self.checks[0].callback(False)
        self.clock.advance(COOLOFF)
        self.checks[1].errback(ConnectionRefusedError())
        self.assertFalse(self.health.up)
        self.clock.advance(COOLOFF)
        self.health.succeeded()  # an answer in flight says nothing
        self.assertFalse(self.health.up)
        self.checks[2].callback(True)
        self.assertEqual((self.health.up, self.health.reason), (True, ""))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopping_ends_the_probes(self) -> None:
        self.health.down("timeout")
        self.health.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        health = ShieldHealth("http://s2/", self.clock, self.check)
        health.down("truncated")
        self.clock.advance(COOLOFF)
        health.stop()
        self.assertTrue(self.checks[-1].called, "the probe in flight is cancelled")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_only_an_answer_without_fwd_status_is_the_shields_own(self) -> None:
        def answer(*lines: bytes, code: int = 503) -> Any:
            headers = Headers()
            if lines:
                headers.setRawHeaders(b"cache-status", list(lines))
            return SimpleNamespace(code=code, headers=headers)

        self.assertTrue(own_failure(answer()))
        self.assertTrue(own_failure(answer(b"shield1; detail=overloaded")))
        self.assertFalse(own_failure(answer(b"shield1; fwd=miss; fwd-status=503")))
        self.assertTrue(
            own_failure(answer(b"origin-cdn; fwd=miss; fwd-status=503", b'shield1; detail="a, b"'))
        )
        self.assertFalse(
            own_failure(answer(b'up; detail="x, fwd-status=1", shield1; fwd=stale; fwd-status=502'))
        )
        # A loop is the answer to the request that looped, whoever made it.
        self.assertFalse(own_failure(answer(b"shield1; detail=loop_detected", code=508)))


class VersionOrderTests(SynchronousTestCase):
    """
    Which of a copy and an answer is the older version (RFC 9111 section
    4: the most recent response is used).
    """

    def copy(self, last_modified: float | None, date: str | None) -> StoredObject:
        extra = () if date is None else (("date", date),)
        return StoredObject(
            name="a.mp3",
            path="/cache/a.mp3",
            size=1,
            etag='"e"',
            last_modified=0.0,
            content_type="audio/mpeg",
            fetched_at=0.0,
            expires_at=0.0,
            origin_last_modified=last_modified,
            extra=extra,
        )

    def answer(self, last_modified: float | None, date: str | None) -> ObjectHeaders:
        extra = () if date is None else (("date", date),)
        return ObjectHeaders("audio/mpeg", last_modified=last_modified, extra=extra)

    def test_last_modified_first_then_date(self) -> None:
        early, late = "Tue, 14 Nov 2023 22:13:20 GMT", "Tue, 14 Nov 2023 22:15:00 GMT"
        self.assertTrue(older(self.answer(100.0, late), self.copy(200.0, early)))
        self.assertFalse(older(self.answer(200.0, early), self.copy(100.0, late)))
        # The same Last-Modified, or none: the Date says.
        self.assertTrue(older(self.answer(100.0, early), self.copy(100.0, late)))
        self.assertTrue(older(self.answer(None, early), self.copy(100.0, late)))
        self.assertFalse(older(self.answer(None, late), self.copy(None, early)))
        # Nothing to tell them apart by (or no date): not older.
        self.assertFalse(older(self.answer(None, None), self.copy(None, late)))
        self.assertFalse(older(self.answer(None, "yesterday"), self.copy(None, late)))


class ForgottenShieldTests(TestCase):
    """
    Rule 9 (every table bounded): a shield no longer followed is dropped
    with its metric series; a request to it that was in flight then must
    not bring them back when it fails.
    """

    timeout = 60

    def setUp(self) -> None:
        self.origin, self.origin_url = start_origin(self)
        self.client = http_client(self)
        self.shield_url = self.origin_url + "shield/"

    async def test_a_shield_forgotten_mid_request_leaves_no_series(self) -> None:
        self.origin.put("slow.mp3", body_of(100, "slow"))
        self.origin.hang.add("shield/files/slow.mp3")
        cache, url = start_cachetier(
            self,
            self.origin_url,
            shields=(self.shield_url,),
            shield_timeout=0.3,
            origin_timeout=0.5,
        )
        asked = self.client.get(url + "files/slow.mp3")
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(self.origin.counts["shield/files/slow.mp3"], 1)
        # The shield leaves the cluster (--shield=cluster): forgotten.
        assert cache.upstreams is not None
        cache.upstreams.follow(["http://127.0.0.1:9/"])
        code, _, body = await read_response(await asked)
        self.assertEqual((code, body), (200, body_of(100, "slow")))
        _, _, metrics = await read_response(await self.client.get(url + "metrics"))
        left = [
            line
            for line in metrics.decode().splitlines()
            if not line.startswith("#") and f'upstream="{self.shield_url}"' in line
        ]
        self.assertEqual(left, [], "a forgotten shield's series came back")
        self.assertNotIn(self.shield_url, cache.upstreams.shields)


class ThreeTierLoopTests(TestCase):
    """
    Only a shield's own 508 is a listener's loop (0887f2d: no fwd-status
    in the last Cache-Status entry).
    """

    timeout = 60

    async def test_a_loop_at_the_shields_shield_is_no_origin_failure(self) -> None:
        """
        edge1 -> shield1 -> shield2 -> origin.  A listener whose CDN-Loop
        names shield2 gets shield2's own 508, relayed by shield1, whose
        entry carries fwd-status=508 as every relayed answer's does: edge1
        takes that for the origin's 508, an origin failure, and serves its
        stale copy under stale-if-error instead of telling the listener of
        its loop (README "Hops and Cache-Status": a loop is no failure of
        the origin's; rule 11, rule 12).
        """
        origin, origin_url = start_origin(self)
        client = http_client(self)

        async def get(url: str, **headers: str) -> tuple[int, object, bytes]:
            sent = {k.replace("_", "-"): [v] for k, v in headers.items()}
            return await read_response(await client.get(url, headers=sent))

        v1, v2 = body_of(1000, "v1"), body_of(1000, "v2")
        origin.put("s.mp3", v1, extra_headers={"Cache-Control": "max-age=1"})
        _, shield2 = start_cachetier(self, origin_url, node_name="shield2")
        _, shield1 = start_cachetier(self, origin_url, node_name="shield1", shields=(shield2,))
        _, edge = start_cachetier(self, origin_url, node_name="edge1", shields=(shield1,))
        code, _, got = await get(edge + "files/s.mp3")
        self.assertEqual((code, got), (200, v1))
        origin.put(
            "s.mp3", v2, last_modified=1_700_000_100, extra_headers={"Cache-Control": "max-age=1"}
        )
        await deferLater(reactor, 2.2, lambda: None)
        code, headers, got = await get(edge + "files/s.mp3", cdn_loop="cachetier; node=shield2")
        _, next_headers, next_got = await get(edge + "files/s.mp3")
        _, _, health = await get(edge + "healthz")
        verdict = json.loads(health)
        self.assertEqual(
            (code, next_got == v2, verdict["status"]),
            (508, True, "ok"),
            f"a listener whose CDN-Loop names shield2 got {code}"
            f" ({'v1 stale' if got == v1 else got[:60]!r}), the next listener"
            f" {'v2' if next_got == v2 else 'v1 stale'}, healthz {verdict['reasons']}",
        )
