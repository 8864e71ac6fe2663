"""
Hops (issue 22): C{Via} and C{CDN-Loop} on every request upstream, a loop
answered 508 at once, C{Cache-Status} (RFC 9211) and C{Via} on every
C{/files/} answer, and the cluster secret that marks an edge's requests
at a shield.  One node in process over real sockets here; several real
C{twistd} nodes in L{TierTests}.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import time
from functools import partial
from typing import Any

from attrs import define, field
from treq import content
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cachetier.config import SettingError, Settings, to_json
from cachetier.config.forwarding import forward_request_header
from cachetier.config.tiers import cluster_secret
from cachetier.hops import CacheStatus, names_node
from cachetier.metrics import Metrics
from cachetier.store import GENERATION_FILE, CacheStore, Generation
from cachetier.web import CacheSite
from cachetier.web.proxy import PrimaryProxy, primary_agent, primary_pool
from cachetier.web.worker import WorkerFiles, build_worker_root

from .helpers import (
    CacheTestCase,
    body_of,
    header,
    http_client,
    listen,
    read_response,
    start_cachetier,
    start_origin,
)
from .nodes import Node, start_node, until

SECRET = "s3cr3t-" + "x" * 25
TOKEN = "admin-token-" + "t" * 20
# A listener's app, as analytics sees one (an HTTP library's is a bot's).
PODCAST_APP = "AppleCoreMedia/1.0.0.21E236 (iPhone; U; CPU OS 17_4 like Mac OS X; en_us)"


class WireFormatTests(SynchronousTestCase):
    def test_cache_status_entries_are_sf_items_of_tokens_and_integers(self) -> None:
        self.assertEqual(CacheStatus(hit=True, ttl=-3).entry("edge1"), b"edge1; hit; ttl=-3")
        self.assertEqual(
            CacheStatus(fwd="miss", fwd_status=200, stored=True, collapsed=True).entry("e.1"),
            b"e.1; fwd=miss; fwd-status=200; stored; collapsed",
        )
        self.assertEqual(
            CacheStatus(detail="loop_detected").entry("edge1"), b"edge1; detail=loop_detected"
        )
        # A detail that is no token is a string, escaped.
        self.assertEqual(CacheStatus(detail='a "b"').entry("edge1"), b'edge1; detail="a \\"b\\""')

    def test_a_loop_names_this_node_whatever_the_spelling(self) -> None:
        for value in (
            b"cachetier; node=edge1",
            b"foo, cachetier;node=edge1",
            b'CacheTier; a="x, y"; node="edge1"',
            b"other.example, cachetier; node=shield1 , cachetier ; node = edge1",
        ):
            self.assertTrue(names_node([value], "edge1"), value)
        for value in (
            b"cachetier; node=edge10",
            b"othercdn; node=edge1",
            b'cachetier; a="node=edge1"',
            b"edge1",
            b"cachetier; x node=edge1",
        ):
            self.assertFalse(names_node([value], "edge1"), value)

    def test_what_a_listener_sends_cannot_hide_this_nodes_entry(self) -> None:
        """
        Every node adds its entry after what it received: a listener's
        members, however many, long or badly quoted, come first.
        """
        entry = b", cachetier; node=edge1"
        for sent in (
            b"cachetier; " + b"a" * 15000,
            b'cachetier; a="' + b"x" * 15000,
            b'"\\' * 5000,
            b'"' * 15001,
            b"a;b, " * 3000,
        ):
            self.assertTrue(names_node([sent + entry], "edge1"), sent[:20])
            self.assertFalse(names_node([sent], "edge1"), sent[:20])
        self.assertTrue(names_node([b"x" * 100, b"cachetier; node=edge1"], "edge1"))

    def test_the_secret_is_refused_without_showing_it_and_kept_out_of_repr_and_json(
        self,
    ) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("short secret\n")
        with self.assertRaises(SettingError) as raised:
            cluster_secret(path)
        self.assertNotIn("short", str(raised.exception))
        with open(path, "w") as f:
            f.write(SECRET + "\n")
        self.assertEqual(cluster_secret(path), SECRET.encode())
        with self.assertRaises(SettingError):
            cluster_secret(path + ".missing")
        settings = Settings(origin="http://o/", cluster_secret=SECRET.encode())
        self.assertNotIn(SECRET, repr(settings))
        self.assertNotIn(SECRET, to_json(settings))

    def test_hop_headers_are_never_forwardable(self) -> None:
        for name in ("CacheTier-Secret", "CacheTier-Generation", "Via", "CDN-Loop"):
            with self.assertRaises(SettingError):
                forward_request_header(name)


@define
class _Downloads:
    """
    Stands in for the analytics: the downloads recorded.
    """

    events: list[object] = field(factory=list)

    def record(self, event: object) -> None:
        self.events.append(event)


class HopHeaderTests(CacheTestCase):
    settings = {"node_name": "edge1", "cluster_secret": SECRET.encode()}

    def sent_upstream(self, name: str) -> list[dict[str, list[str]]]:
        return [
            {k.decode().lower(): [v.decode() for v in vs] for k, vs in h.getAllRawHeaders()}
            for _, n, h in self.origin.requests
            if n == name
        ]

    async def test_requests_upstream_carry_the_listeners_hops_then_this_nodes(self) -> None:
        self.origin.put("a.mp3", body_of(1000))
        code, _, _ = await self.get("a.mp3", via="1.0 player-proxy", cdn_loop="othercdn")
        self.assertEqual(code, 200)
        (sent,) = self.sent_upstream("a.mp3")
        self.assertEqual(sent["via"], ["1.0 player-proxy, 1.1 edge1"])
        self.assertEqual(sent["cdn-loop"], ["othercdn, cachetier; node=edge1"])
        # A warm has no listener: this node's entries alone.
        self.origin.put("b.mp3", body_of(1000))
        await self.cache.syncer.start("b.mp3").when_done()
        (sent,) = self.sent_upstream("b.mp3")
        self.assertEqual(sent["via"], ["1.1 edge1"])
        self.assertEqual(sent["cdn-loop"], ["cachetier; node=edge1"])

    async def test_the_secret_never_goes_to_the_origin(self) -> None:
        self.origin.put("a.mp3", body_of(1000))
        code, _, _ = await self.get("a.mp3", cachetier_secret=SECRET)
        self.assertEqual(code, 200)
        (sent,) = self.sent_upstream("a.mp3")
        self.assertNotIn("cachetier-secret", sent)
        self.assertNotIn(SECRET, repr(sent))

    async def test_a_request_naming_this_node_is_a_508_at_once(self) -> None:
        self.origin.put("a.mp3", body_of(1000))
        self.origin.hang.add("a.mp3")
        for loop in ("cachetier; node=edge1", 'shield, cachetier; node="edge1"'):
            for method in ("GET", "HEAD"):
                code, headers, body = await self.get("a.mp3", method, cdn_loop=loop)
                self.assertEqual(code, 508)
                self.assertEqual(header(headers, "cache-status"), ["edge1; detail=loop_detected"])
                self.assertEqual(header(headers, "via"), [])
                if method == "GET":
                    self.assertEqual(json.loads(body)["error"], "loop_detected")
        response = await self.client.get(
            self.url + "files/a.mp3", headers={"CDN-Loop": ["cachetier; node=edge1"]}
        )
        await read_response(response)
        self.assertEqual(response.phrase, b"Loop Detected", "RFC 5842's reason phrase")
        self.assertEqual(self.origin.counts["a.mp3"], 0)
        self.assertIsNone(self.cache.syncer.fill_for("a.mp3"))
        # Another node's name is no loop.
        self.origin.hang.clear()
        code, _, _ = await self.get("a.mp3", cdn_loop="cachetier; node=edge10")
        self.assertEqual(code, 200)

    async def test_a_long_cdn_loop_member_does_not_stall_the_reactor(self) -> None:
        """
        Rule 9 (bounded work per request; the reactor is one): a 15 kB
        CDN-Loop member without C{=} is parsed in one pass, not by a
        pattern that backtracks quadratically (a second of the reactor's
        time): the loop behind it is still seen.  Measured in this
        process's CPU time, which other processes' load does not stretch.
        """
        self.origin.put("a.mp3", body_of(1000))
        started = time.process_time()
        code, _, _ = await self.get(
            "a.mp3", cdn_loop="cachetier; " + "a" * 15000 + ", cachetier; node=edge1"
        )
        self.assertEqual(code, 508)
        self.assertLess(time.process_time() - started, 0.25)

    async def test_cache_status_and_via_on_a_miss_a_hit_and_what_a_hit_answers(self) -> None:
        self.origin.put(
            "a.mp3",
            body_of(100_000),
            extra_headers={
                "cache-control": "max-age=300",
                "via": "1.1 origin-proxy",
                "cache-status": "upstream; hit",
            },
        )
        code, headers, _ = await self.get("a.mp3")
        self.assertEqual(code, 200)
        self.assertEqual(
            header(headers, "cache-status"),
            ["upstream; hit", "edge1; fwd=miss; fwd-status=200; stored"],
        )
        self.assertEqual(header(headers, "via"), ["1.1 origin-proxy", "1.1 edge1"])
        await self.settle("a.mp3")
        for method, extra, status in (
            ("GET", {}, 200),
            ("HEAD", {}, 200),
            ("GET", {"range": "bytes=0-9"}, 206),
            ("GET", {"if_none_match": self.origin.files["a.mp3"].etag or ""}, 304),
        ):
            code, headers, _ = await self.get("a.mp3", method, **extra)
            self.assertEqual(code, status)
            upstream, mine = header(headers, "cache-status")
            self.assertEqual(upstream, "upstream; hit")
            match = re.fullmatch(r"edge1; hit; ttl=(\d+)", mine)
            self.assertIsNotNone(match, mine)
            assert match is not None
            self.assertTrue(295 <= int(match.group(1)) <= 300, mine)
            self.assertEqual(header(headers, "via"), ["1.1 origin-proxy", "1.1 edge1"])

    async def test_a_revalidation_and_the_origins_answers_are_forwarded_not_own(self) -> None:
        self.origin.put("a.mp3", body_of(1000), extra_headers={"cache-control": "no-cache"})
        await self.get("a.mp3")
        await self.settle("a.mp3")
        code, headers, _ = await self.get("a.mp3")
        self.assertEqual(code, 200)
        self.assertEqual(
            header(headers, "cache-status"), ["edge1; fwd=stale; fwd-status=304; ttl=0"]
        )
        # A 404 kept for a while, then served from the cache.
        code, headers, _ = await self.get("gone.mp3")
        self.assertEqual(code, 404)
        (status,) = header(headers, "cache-status")
        self.assertRegex(status, r"^edge1; fwd=miss; fwd-status=404; stored; ttl=(59|60)$")
        code, headers, _ = await self.get("gone.mp3")
        (status,) = header(headers, "cache-status")
        self.assertRegex(status, r"^edge1; hit; ttl=(59|60)$")
        # An answer not kept is relayed as it came.
        self.origin.answers["private.mp3"] = (403, {"cache-control": "no-store"}, b"no")
        code, headers, _ = await self.get("private.mp3")
        self.assertEqual(code, 403)
        self.assertEqual(header(headers, "cache-status"), ["edge1; fwd=uri-miss; fwd-status=403"])
        self.assertEqual(header(headers, "via"), ["1.1 edge1"])

    async def test_own_errors_say_so_without_fwd_status(self) -> None:
        await self.origin.port.stopListening()
        code, headers, body = await self.get("a.mp3")
        self.assertEqual(code, 502)
        self.assertEqual(header(headers, "cache-status"), ["edge1; detail=origin_error"])
        self.assertEqual(header(headers, "via"), [])
        code, headers, _ = await self.get("..%2Fetc")
        self.assertEqual(code, 400)
        self.assertEqual(header(headers, "cache-status"), ["edge1; detail=bad_name"])

    async def test_a_request_that_joins_a_fill_in_flight_is_collapsed(self) -> None:
        self.origin.put("a.mp3", body_of(200_000))
        self.origin.rate = 400_000
        gets = [Deferred.fromCoroutine(self.get("a.mp3")) for _ in range(2)]
        results = await DeferredList(gets, consumeErrors=True)
        statuses = sorted(header(r[1][1], "cache-status")[-1] for r in results)
        self.assertEqual(
            statuses,
            [
                "edge1; fwd=miss; fwd-status=200; stored",
                "edge1; fwd=miss; fwd-status=200; stored; collapsed",
            ],
        )
        self.assertEqual(self.origin.counts["a.mp3"], 1)

    async def test_a_listener_joining_a_fill_late_is_told_its_age(self) -> None:
        """
        RFC 9111 section 4.2.3 (DESIGN: "Age computed"): a listener that
        joins a fill under way gets the Age the answer has when it joins,
        the time since the upstream answered included, as a listener of
        the stored copy would, not the age it had when the fill began: a
        cache below would keep the copy that much longer.
        """
        self.origin.put(
            "long.mp3", body_of(100_000), extra_headers={"Cache-Control": "max-age=600"}
        )
        self.origin.rate = 20_000
        first = await self.client.get(self.url + "files/long.mp3")
        self.assertEqual(first.code, 200)
        await deferLater(reactor, 2.2, lambda: None)
        code, headers, _ = await self.get("long.mp3")
        self.assertEqual(code, 200)
        self.assertEqual(header(headers, "cache-status")[-1].split(";")[1].strip(), "fwd=miss")
        await content(first)
        self.assertGreaterEqual(int((header(headers, "age") or ["0"])[0]), 2)


class EdgeTests(CacheTestCase):
    """
    A node with the cluster secret, as a shield sees its edges.
    """

    settings = {
        "node_name": "shield1",
        "cluster_secret": SECRET.encode(),
        "max_syncs_per_client": 1.0,
    }

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.settings = {"access_log": self.path, **self.settings}
        super().setUp()
        self.downloads = _Downloads()
        self.cache.site.analytics = self.downloads  # type: ignore[assignment]

    def access_lines(self) -> list[str]:
        assert self.cache.access_file is not None
        self.cache.access_file.flush()
        with open(self.path) as f:
            return f.read().splitlines()

    async def test_an_edge_is_not_a_listener_and_a_wrong_secret_makes_none(self) -> None:
        for n in range(3):
            self.origin.put(f"{n}.mp3", body_of(1000))
        for n in range(3):
            code, _, _ = await self.get(f"{n}.mp3", cachetier_secret=SECRET)
            self.assertEqual(code, 200, "an edge is not capped as one client")
        await deferLater(reactor, 0, lambda: None)
        self.assertEqual(self.downloads.events, [])
        lines = self.access_lines()
        self.assertEqual(len(lines), 3)
        self.assertTrue(all(" - edge [" in line for line in lines), lines)
        for n in range(3, 5):
            self.origin.put(f"{n}.mp3", body_of(1000))
        codes = [
            (await self.get(f"{n}.mp3", cachetier_secret=SECRET[:-1] + "y"))[0] for n in (3, 4)
        ]
        self.assertEqual(codes, [200, 503], "a wrong secret is a listener's, capped")
        await deferLater(reactor, 0, lambda: None)
        self.assertEqual(len(self.downloads.events), 1)
        lines = self.access_lines()
        self.assertTrue(all(" - - [" in line for line in lines[3:]), lines)
        self.assertNotIn(SECRET[:-1], "\n".join(lines))


class GenerationTests(CacheTestCase):
    """
    A shield told by its edges the cluster's generation of a name
    (C{CacheTier-Generation}, issue 23's "tiers agree").
    """

    settings = {"node_name": "shield1", "cluster_secret": SECRET.encode()}

    async def test_an_edges_newer_generation_makes_an_older_copy_a_miss(self) -> None:
        await self.cached("ep.mp3", b"version one")
        self.origin.put("ep.mp3", b"version two")
        for headers in (
            {"cachetier_generation": "3"},
            {"cachetier_generation": "3", "cachetier_secret": SECRET[:-1] + "y"},
            {"cachetier_generation": "x3", "cachetier_secret": SECRET},
            {"cachetier_secret": SECRET},
        ):
            code, _, body = await self.get("ep.mp3", **headers)
            self.assertEqual((code, body), (200, b"version one"), headers)
        code, headers, body = await self.get(
            "ep.mp3", cachetier_secret=SECRET, cachetier_generation="3"
        )
        self.assertEqual((code, body), (200, b"version two"))
        self.assertEqual(
            header(headers, "cache-status"), ["shield1; fwd=miss; fwd-status=200; stored"]
        )
        await self.settle("ep.mp3")
        stored = self.cache.store.get("ep.mp3")
        assert stored is not None
        self.assertEqual(stored.cluster_generation, 3)
        for generation in ("3", "2"):
            code, headers, body = await self.get(
                "ep.mp3", cachetier_secret=SECRET, cachetier_generation=generation
            )
            self.assertEqual((code, body), (200, b"version two"))
            self.assertRegex(header(headers, "cache-status")[0], r"^shield1; hit")
        self.assertEqual(self.origin.counts["ep.mp3"], 2)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class TierTests(TestCase):
    """
    Real C{twistd} nodes on loopback addresses of their own.
    """

    timeout = 60

    def setUp(self) -> None:
        self.origin, self.origin_url = start_origin(self)
        self.client = http_client(self)
        self.secret_file = os.path.abspath(self.mktemp())
        with open(self.secret_file, "w") as f:
            f.write(SECRET + "\n")
        self.token_file = os.path.abspath(self.mktemp())
        with open(self.token_file, "w") as f:
            f.write(TOKEN)

    async def get(self, url: str, **headers: str) -> tuple[int, Any, bytes]:
        sent = {k.replace("_", "-"): [v] for k, v in headers.items()}
        return await read_response(await self.client.get(url, headers=sent))

    async def test_two_edges_as_each_others_shield_end_within_a_second(self) -> None:
        body = body_of(100_000, "loop")
        self.origin.put("ep/loop.mp3", body)
        a, b = ("127.0.0.3", _free_port("127.0.0.3")), ("127.0.0.4", _free_port("127.0.0.4"))
        nodes = [
            await start_node(
                self,
                self.origin_url,
                f"--shield=http://{other[0]}:{other[1]}/",
                name=name,
                host=mine[0],
                port=mine[1],
            )
            for name, mine, other in (("loopa", a, b), ("loopb", b, a))
        ]
        started = reactor.seconds()
        code, headers, got = await self.get(nodes[0].url + "files/ep/loop.mp3")
        self.assertLess(reactor.seconds() - started, 1.0)
        self.assertIn(code, (200, 508))
        if code == 200:
            self.assertEqual(got, body)
        self.assertLessEqual(self.origin.counts["ep/loop.mp3"], 1)
        self.assertEqual(header(headers, "cache-status")[-1].split(";")[0], "loopa")
        # loopa answered loopb's request, which named it, with a 508.
        self.assertRegex(nodes[0].output, r'"GET /files/ep/loop\.mp3 HTTP/1\.1" 508 .* loop ')

    async def test_hops_through_a_shield_and_an_edge_and_the_edges_secret(self) -> None:
        """
        A listener at the edge: the origin sees both nodes' Via and
        CDN-Loop and no secret; the answer shows where its bytes came
        from; the download counts once, at the edge; the shield logs the
        edge as C{edge}; the secret is in no node's log.
        """
        body = body_of(300_000, "tier")
        self.origin.put("ep/tier.mp3", body)
        common = (
            f"--cluster-secret-file={self.secret_file}",
            f"--admin-token-file={self.token_file}",
        )
        shield = await start_node(self, self.origin_url, *common, name="shield1", host="127.0.0.2")
        edge = await start_node(
            self, self.origin_url, f"--shield={shield.url}", *common, name="edge1", host="127.0.0.3"
        )
        code, headers, got = await self.get(
            edge.url + "files/ep/tier.mp3", via="1.0 player", user_agent=PODCAST_APP
        )
        self.assertEqual((code, got), (200, body))
        self.assertEqual(
            header(headers, "cache-status"),
            [
                "shield1; fwd=miss; fwd-status=200; stored",
                "edge1; fwd=miss; fwd-status=200; stored",
            ],
        )
        self.assertEqual(header(headers, "via"), ["1.1 shield1", "1.1 edge1"])
        ((_, _, sent),) = [r for r in self.origin.requests if r[1] == "ep/tier.mp3"]
        self.assertEqual(header(sent, "via"), ["1.0 player, 1.1 edge1, 1.1 shield1"])
        self.assertEqual(
            header(sent, "cdn-loop"), ["cachetier; node=edge1, cachetier; node=shield1"]
        )
        self.assertEqual(header(sent, "cachetier-secret"), [])
        await until(lambda: self.counted(edge, requests=1, downloads=1))
        code, headers, _ = await self.get(edge.url + "files/ep/tier.mp3", user_agent=PODCAST_APP)
        self.assertEqual(code, 200)
        upstream, mine = header(headers, "cache-status")
        self.assertEqual(upstream, "shield1; fwd=miss; fwd-status=200; stored")
        self.assertRegex(mine, r"^edge1; hit; ttl=-?\d+$")
        # The same listener again within the day: a request, not a download.
        await until(lambda: self.counted(edge, requests=2, downloads=1))
        self.assertTrue(await self.counted(shield, requests=0, downloads=0))
        self.assertRegex(shield.output, r' - edge \[[^]]+\] "GET /files/ep/tier\.mp3 ')
        for node in (shield, edge):
            self.assertNotIn(SECRET, node.output)

    async def counted(self, node: Node, **expected: int) -> bool:
        """
        Whether C{node}'s analytics count, over every file, the C{expected}
        C{requests}, C{downloads}...
        """
        response = await self.client.get(
            node.url + "api/v1/stats?group=file", headers={"Authorization": [f"Bearer {TOKEN}"]}
        )
        rows = json.loads(await content(response))["rows"]
        return all(sum(row[key] for row in rows) == count for key, count in expected.items())


class WorkerTests(TestCase):
    """
    A worker (C{--workers}) answers as its primary does, holding no secret.
    """

    async def test_a_worker_stamps_its_hits_and_leaves_edges_and_loops_to_the_primary(
        self,
    ) -> None:
        origin, origin_url = start_origin(self)
        path = os.path.abspath(self.mktemp())
        cache, _ = start_cachetier(
            self, origin_url, node_name="shield1", cluster_secret=SECRET.encode(), access_log=path
        )
        downloads = _Downloads()
        cache.site.analytics = downloads  # type: ignore[assignment]
        socket_path = os.path.join(tempfile.mkdtemp(), "primary.sock")
        port = reactor.listenUNIX(socket_path, cache.site)
        self.addCleanup(port.stopListening)
        pool = primary_pool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        files = WorkerFiles(
            CacheStore(cache.store.root),
            Generation(os.path.join(cache.store.root, GENERATION_FILE)),
            reactor,
            PrimaryProxy(primary_agent(reactor, socket_path, pool)),
            60,
            partial(deferToThreadPool, reactor, reactor.getThreadPool()),
            "shield1",
        )
        worker = listen(self, CacheSite(build_worker_root(files), Metrics(), reactor=reactor))
        url = f"http://127.0.0.1:{worker.getHost().port}/files/ep.mp3"
        client = http_client(self)
        origin.put("ep.mp3", body_of(100_000))
        await cache.syncer.start("ep.mp3").when_done()
        for _ in range(100):
            response = await client.get(url)
            await content(response)
            if "ep.mp3" in files.touched:
                break
            await deferLater(reactor, 0.02, lambda: None)
        self.assertIn("ep.mp3", files.touched, "the worker serves its hits")
        (status,) = header(response.headers, "cache-status")
        self.assertRegex(status, r"^shield1; hit; ttl=\d+$")
        self.assertEqual(header(response.headers, "via"), ["1.1 shield1"])
        files.touched.clear()
        counted = len(downloads.events)
        response = await client.get(url, headers={"CacheTier-Secret": [SECRET]})
        await content(response)
        response = await client.get(url, headers={"CDN-Loop": ["cachetier; node=shield1"]})
        await content(response)
        self.assertEqual(response.code, 508)
        self.assertEqual(
            header(response.headers, "cache-status"), ["shield1; detail=loop_detected"]
        )
        self.assertEqual(files.touched, set(), "both went to the primary")
        assert cache.access_file is not None
        cache.access_file.flush()
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual(len([line for line in lines if " - edge [" in line]), 1, lines)
        self.assertEqual(len(downloads.events), counted, "an edge's fetch is no download")
