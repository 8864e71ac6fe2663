"""
The cluster (issue 23): its flags, its Redis connection, and the purge
log between real C{twistd} nodes and a real C{redis-server}.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from treq import content
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseFailed

from cachetier.cluster import position
from cachetier.cluster.bus import Bus
from cachetier.cluster.connection import connect
from cachetier.cluster.generations import Generations, agree
from cachetier.cluster.log import Entry, PurgeLog, Snapshot, stream_id
from cachetier.cluster.position import Position
from cachetier.config import SettingError, Settings, from_json, to_json
from cachetier.config.tiers import cluster_settings
from cachetier.hops import GENERATION, generation, upstream

from .helpers import CacheTestCase, body_of, header, http_client, read_response, start_origin
from .nodes import Node, restart_node, start_node, until
from .redis_server import start_redis

FLAGS = {
    "cluster": None,
    "cluster-name": "cachetier",
    "cluster-password-file": None,
    "node-url": None,
    "role": "edge",
    "cluster-stream-length": "100000",
    "cluster-max-lag": "5s",
}


def flags(**changed: str | None) -> dict[str, str | None]:
    return {**FLAGS, **{key.replace("_", "-"): value for key, value in changed.items()}}


class FlagTests(SynchronousTestCase):
    def refusal(self, listen: tuple[str, ...] = ("tcp:8080",), **changed: str | None) -> str:
        with self.assertRaises(SettingError) as caught:
            cluster_settings(flags(**changed), listen)
        return str(caught.exception)

    def test_without_cluster_nothing_changes(self) -> None:
        settings = cluster_settings(flags(), ("tcp:8080:interface=10.0.0.5",))
        self.assertIsNone(settings["cluster"])
        self.assertEqual(settings["node_url"], "http://10.0.0.5:8080/")
        self.assertEqual(settings["cluster_stream_length"], 100000)
        self.assertEqual(settings["cluster_max_lag"], 5.0)

    def test_redis_urls(self) -> None:
        for url in ("redis://r:6379/0", "rediss://r.example/2", "unix:///run/redis.sock?db=3"):
            self.assertEqual(cluster_settings(flags(cluster=url), ("tcp:1",))["cluster"], url)

    def test_refusals(self) -> None:
        self.assertIn("not a Redis URL", self.refusal(cluster="http://r:6379/"))
        self.assertIn(
            "--cluster-password-file, not the URL", self.refusal(cluster="redis://:pw@r:6379/0")
        )
        self.assertIn("names no socket", self.refusal(cluster="unix://"))
        self.assertIn("not in 1-65535", self.refusal(cluster="redis://r:99999/0"))
        self.assertIn("needs --cluster", self.refusal(cluster_password_file="/x"))
        self.assertIn("--cluster-name: not a cluster name", self.refusal(cluster_name="a b"))
        self.assertIn("--role must be 'edge' or 'shield'", self.refusal(role="origin"))
        self.assertIn("--cluster-stream-length", self.refusal(cluster_stream_length="10"))
        self.assertIn("--cluster-max-lag: at least 1s", self.refusal(cluster_max_lag="0.5"))
        self.assertIn("--node-url:", self.refusal(node_url="ftp://x/"))

    def test_node_url_by_default_from_the_first_listener(self) -> None:
        def url(*listen: str) -> str | None:
            return cluster_settings(flags(), listen)["node_url"]

        self.assertEqual(url("tcp6:80:interface=\\:\\:1"), "http://[::1]:80/")
        self.assertEqual(url("ssl:443:privateKey=k.pem:interface=1.2.3.4"), "https://1.2.3.4:443/")
        self.assertIsNone(url("tcp:0:interface=127.0.0.1"))
        self.assertIsNone(url("systemd:domain=INET:index=0"))
        self.assertEqual(
            cluster_settings(flags(node_url="http://edge1:8080"), ("tcp:1",))["node_url"],
            "http://edge1:8080/",
        )

    def test_the_password_from_a_file_never_in_repr_nor_json(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("s3cret-redis-pw\n")
        fields = cluster_settings(flags(cluster="redis://r/0", cluster_password_file=path), ("x",))
        self.assertEqual(fields["cluster_password"], "s3cret-redis-pw")
        settings = Settings(origin="http://o/", **fields)
        self.assertNotIn("s3cret", repr(settings))
        self.assertNotIn("s3cret", to_json(settings))
        self.assertIsNone(from_json(to_json(settings)).cluster_password)
        self.assertIn(
            "cannot read", self.refusal(cluster="redis://r/0", cluster_password_file="/no")
        )


class EntryTests(SynchronousTestCase):
    def test_entries_as_the_log_holds_them(self) -> None:
        entry = Entry.of(
            "5-1", {"kind": "names", "names": '["a.mp3", "b"]', "node": "n1", "gens": "[3, 1]"}
        )
        self.assertEqual(entry, Entry("5-1", "names", ("a.mp3", "b"), node="n1", gens=(3, 1)))
        entry = Entry.of("6-0", {"kind": "prefix", "prefix": "show/", "node": "n2"})
        self.assertEqual(entry, Entry("6-0", "prefix", prefix="show/", node="n2"))

    def test_an_entry_this_version_cannot_read_is_passed_over(self) -> None:
        empty_prefix = {"kind": "prefix", "prefix": "", "node": "n"}
        unreadable = ({}, {"kind": "names", "names": "not json", "node": "n"}, {"kind": "x"})
        for fields in (*unreadable, empty_prefix):
            self.assertEqual(Entry.of("7-0", fields).kind, "unknown")

    def test_ids_order_as_redis_orders_them(self) -> None:
        self.assertLess(stream_id("9-5"), stream_id("10-0"))
        self.assertLess(stream_id("10-2"), stream_id("10-10"))


class ConnectionTests(TestCase):
    async def test_connect_with_the_password_file(self) -> None:
        redis = await start_redis(self, "--requirepass", "pw-from-the-file")
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("pw-from-the-file\n")
        fields = cluster_settings(flags(cluster=redis.url, cluster_password_file=path), ("x",))
        client = connect(Settings(origin="http://o/", **fields))
        self.addCleanup(client.close)
        self.assertTrue(await deferToThread(client.ping))
        self.assertEqual(await deferToThread(client.client_getname), "cachetier:cachetier")

    async def test_a_refused_password_names_the_flag_to_check(self) -> None:
        """
        A node whose password Redis refuses (none given, where Redis asks
        for one) says so in /healthz, naming --cluster-password-file, not
        as an unreachable Redis; a purge's 503 says the same.
        """
        redis = await start_redis(self, "--requirepass", "pw-the-node-lacks")
        nodes = ClusterNodes(self)
        node = await start_node(
            self,
            "http://127.0.0.1:9/",
            f"--cluster={redis.url}",
            f"--admin-token-file={nodes.token_file}",
        )

        async def refused() -> bool:
            return any(
                "--cluster-password-file" in r for r in (await nodes.health(node))["reasons"]
            )

        await until(refused, within=10.0)
        response = await nodes.client.delete(
            node.url + "api/v1/files/a.mp3", headers={"Authorization": [f"Bearer {TOKEN}"]}
        )
        self.assertEqual(response.code, 503)
        message = json.loads(await content(response))["message"]
        self.assertIn("Redis refused this node (AuthenticationError)", message)
        self.assertIn("check --cluster-password-file", message)


class DoubtTests(CacheTestCase):
    """
    A bus, never started, on a clock of its own, over a real cache.
    """

    def bus(self) -> tuple[Bus, Clock]:
        clock = Clock()
        settings = Settings(
            origin=self.origin_url,
            cache_dir=os.path.abspath(self.mktemp()),
            cluster="redis://127.0.0.1:1/0",
            cluster_max_lag=1.0,
        )
        return Bus(settings, self.cache.syncer, clock, deferToThread, Generations()), clock

    async def test_a_hit_is_revalidated_from_the_moment_the_log_is_late(self) -> None:
        """
        Once C{/healthz} says every hit is revalidated, every hit is: the
        syncer asks the bus when it looks a copy up, not a judgement made
        on a timer that may not have run yet.
        """
        bus, clock = self.bus()
        bus.received([], caught_up=True)
        await self.cached("ep.mp3", b"version one")
        clock.advance(1.5)
        self.assertEqual(bus.status()[0], "degraded")
        self.assertEqual((await self.get("ep.mp3"))[::2], (200, b"version one"))
        conditional = [h for _, n, h in self.origin.requests if h.hasHeader(b"if-none-match")]
        self.assertEqual(len(conditional), 1)
        bus.received([], caught_up=True)
        self.assertEqual(bus.status()[0], "ok")
        self.assertEqual((await self.get("ep.mp3"))[::2], (200, b"version one"))
        self.assertEqual(len(self.origin.requests), 2, "a hit again once level with the log")


TOKEN = "cluster-admin-token-0123456789"


class PurgeLogTests(TestCase):
    """
    Real C{twistd} nodes on 127.0.0.x and a real C{redis-server}: a purge
    taken by any node reaches every node, in order, whatever stopped.
    """

    timeout = 90

    async def setup_cluster(self, count: int, *args: str) -> list[Node]:
        self.origin, self.origin_url = start_origin(self)
        self.redis = await start_redis(self)
        token_file = os.path.abspath(self.mktemp())
        with open(token_file, "w") as f:
            f.write(TOKEN)
        self.args = (f"--cluster={self.redis.url}", f"--admin-token-file={token_file}", *args)
        self.client = http_client(self)
        nodes = []
        for n in range(count):
            nodes.append(await self.start(f"node{n + 2}", f"127.0.0.{n + 2}"))
        for node in nodes:
            await self.level(node)
        return nodes

    async def start(self, name: str, host: str) -> Node:
        return await start_node(self, self.origin_url, *self.args, name=name, host=host)

    async def get(self, node: Node, name: str) -> bytes:
        response = await self.client.get(node.url + "files/" + name)
        self.assertEqual(response.code, 200)
        return bytes(await content(response))

    async def api(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": [f"Bearer {TOKEN}"]}
        data = None if body is None else json.dumps(body).encode()
        response = await self.client.request(method, url, headers=headers, data=data)
        return response.code, json.loads(await content(response))

    async def health(self, node: Node) -> dict[str, Any]:
        response = await self.client.get(node.url + "healthz")
        return dict(json.loads(await content(response)))

    async def level(self, node: Node, entry: str | None = None) -> None:
        """
        Wait until C{node} is level with the log (past C{entry}).
        """

        async def there() -> bool:
            cluster = (await self.health(node))["cluster"]
            if cluster["status"] != "ok":
                return False
            return entry is None or stream_id(cluster["applied"] or "0-0") >= stream_id(entry)

        await until(there, within=15.0)

    async def cached(self, node: Node, name: str) -> bool:
        _, status = await self.api("GET", f"{node.url}api/v1/files/{name}?sync=0")
        return bool(status["state"] == "cached")

    async def test_a_purge_on_one_node_is_applied_on_every_node_within_a_second(self) -> None:
        nodes = await self.setup_cluster(3)
        self.origin.put("ep.mp3", b"version one")
        for node in nodes:
            self.assertEqual(await self.get(node, "ep.mp3"), b"version one")
        self.origin.put("ep.mp3", b"version two")
        code, answer = await self.api("DELETE", nodes[0].url + "api/v1/files/ep.mp3")
        self.assertEqual(code, 200)
        self.assertTrue(answer["purged"])
        entry = answer["cluster"]["id"]
        await until(lambda: _every(self.level_past(node, entry) for node in nodes[1:]), within=1.0)
        for node in nodes:
            self.assertEqual(await self.get(node, "ep.mp3"), b"version two")

    async def level_past(self, node: Node, entry: str) -> bool:
        applied = (await self.health(node))["cluster"]["applied"]
        return applied is not None and stream_id(applied) >= stream_id(entry)

    async def test_a_node_killed_during_purges_catches_up_when_restarted(self) -> None:
        taker, killed = await self.setup_cluster(2)
        names = [f"ep{i}.mp3" for i in range(20)]
        for name in names:
            self.origin.put(name, b"old " + name.encode())
            await self.get(killed, name)
        for i, name in enumerate(names):
            if i == 5:
                killed.kill()
                await killed.ended()
            self.origin.put(name, b"new " + name.encode())
            code, answer = await self.api("DELETE", taker.url + "api/v1/files/" + name)
            self.assertEqual(code, 200)
        again = await restart_node(self, killed, self.origin_url)
        await self.level(again, answer["cluster"]["id"])
        for name in names:
            self.assertFalse(await self.cached(again, name), name)
            self.assertEqual(await self.get(again, name), b"new " + name.encode())

    async def test_a_node_the_trimmed_log_no_longer_reaches_resyncs(self) -> None:
        taker, stopped = await self.setup_cluster(2)
        names = [f"ep{i}.mp3" for i in range(6)]
        for name in names:
            self.origin.put(name, b"old " + name.encode())
            await self.get(stopped, name)
        # SIGTERM: the reader thread stops with the rest, and twistd ends
        # cleanly (re-raising the signal it stopped for).
        self.assertEqual((await stopped.stop()).signal, signal.SIGTERM)
        self.assertIn("Server Shut Down.", stopped.output)
        for name in names[:3]:
            self.origin.put(name, b"new " + name.encode())
            code, answer = await self.api("DELETE", taker.url + "api/v1/files/" + name)
            self.assertEqual(code, 200)
        redis = self.redis.client()
        self.addCleanup(redis.close)
        await deferToThread(redis.xtrim, "cachetier:purges", maxlen=0, approximate=False)
        again = await restart_node(self, stopped, self.origin_url)
        await self.level(again)
        for name in names[:3]:
            self.assertFalse(await self.cached(again, name), name)
            self.assertEqual(await self.get(again, name), b"new " + name.encode())
        for name in names[3:]:
            self.assertTrue(await self.cached(again, name), f"{name} was never purged")
        self.assertIn("resynced from the purge log", again.output)

    async def test_a_prefix_purge_everywhere(self) -> None:
        nodes = await self.setup_cluster(3)
        for name in ("show/a.mp3", "show/b.mp3", "other.mp3"):
            self.origin.put(name, name.encode())
            for node in nodes:
                await self.get(node, name)
        code, answer = await self.api(
            "POST", nodes[1].url + "api/v1/purge?wait=5", {"prefix": "show/"}
        )
        self.assertEqual(code, 200)
        self.assertEqual(answer["purged"], ["show/a.mp3", "show/b.mp3"])
        for node in nodes:
            await self.level(node, answer["cluster"]["id"])
            self.assertFalse(await self.cached(node, "show/a.mp3"))
            self.assertFalse(await self.cached(node, "show/b.mp3"))
            self.assertTrue(await self.cached(node, "other.mp3"))

    async def test_wait_names_the_live_nodes_that_have_not_applied(self) -> None:
        (node,) = await self.setup_cluster(1)
        redis = self.redis.client()
        self.addCleanup(redis.close)
        heartbeat = json.dumps({"name": "ghost", "applied": "0-0"})
        await deferToThread(redis.set, "cachetier:node:ghost", heartbeat, ex=30)
        code, answer = await self.api("POST", node.url + "api/v1/purge?wait=0.3", {"files": []})
        self.assertEqual(code, 200)
        self.assertEqual(answer["cluster"]["pending"], ["ghost"])
        code, answer = await self.api("POST", node.url + "api/v1/purge?wait=x", {"files": []})
        self.assertEqual((code, answer["error"]), (400, "bad_wait"))

    async def test_without_redis_hits_go_on_revalidated_and_purges_are_refused(self) -> None:
        taker, other = await self.setup_cluster(2, "--cluster-max-lag=1s")
        self.origin.put("ep.mp3", b"version one")
        for node in (taker, other):
            self.assertEqual(await self.get(node, "ep.mp3"), b"version one")
        await self.redis.kill()

        async def degraded() -> bool:
            return bool((await self.health(other))["status"] == "degraded")

        await until(degraded, within=10.0)
        reasons = (await self.health(other))["reasons"]
        self.assertTrue(any("purge log" in reason for reason in reasons), reasons)
        before = self.conditional_requests()
        self.assertEqual(await self.get(other, "ep.mp3"), b"version one")
        self.assertEqual(await self.get(other, "ep.mp3"), b"version one")
        self.assertEqual(self.conditional_requests(), before + 2)
        code, answer = await self.api("DELETE", taker.url + "api/v1/files/ep.mp3")
        self.assertEqual((code, answer["error"]), (503, "cluster_unavailable"))
        self.assertNotIn(str(self.redis.port), json.dumps(answer))
        await self.redis.start()
        for node in (taker, other):
            await self.level(node)
        # Redis came back empty: a log that no longer reaches back, so what
        # was held before is revalidated once before it is served again.
        before = self.conditional_requests()
        self.assertEqual(await self.get(other, "ep.mp3"), b"version one")
        self.assertEqual(await self.get(other, "ep.mp3"), b"version one")
        self.assertEqual(self.conditional_requests(), before + 1)
        self.assertIn("the rest is revalidated before it is served", other.output)
        self.origin.put("ep.mp3", b"version two")
        code, answer = await self.api("DELETE", taker.url + "api/v1/files/ep.mp3")
        self.assertEqual(code, 200)
        await self.level(other, answer["cluster"]["id"])
        self.assertEqual(await self.get(other, "ep.mp3"), b"version two")

    def conditional_requests(self) -> int:
        return sum(
            1
            for _, name, headers in self.origin.requests
            if name == "ep.mp3" and headers.hasHeader(b"if-none-match")
        )


class FrozenNodeTests(TestCase):
    """
    A node frozen (SIGSTOP) while the log is trimmed past its position
    keeps its connection: its next read must notice the entries it
    missed, and resync, before it serves a purged copy as current.
    """

    timeout = 90
    setup_cluster = PurgeLogTests.setup_cluster
    start = PurgeLogTests.start
    get = PurgeLogTests.get
    api = PurgeLogTests.api
    health = PurgeLogTests.health
    level = PurgeLogTests.level
    cached = PurgeLogTests.cached

    async def test_a_frozen_node_the_trimmed_log_skipped_resyncs(self) -> None:
        taker, frozen = await self.setup_cluster(2, "--cluster-stream-length=100")
        mine = [f"frozen/{i}.mp3" for i in range(20)]
        others = [f"other/{i}.mp3" for i in range(180)]
        for name in mine:
            self.origin.put(name, b"old " + name.encode())
            self.assertEqual(await self.get(frozen, name), b"old " + name.encode())
        frozen.kill(signal.SIGSTOP)
        self.addCleanup(frozen.kill, signal.SIGCONT)
        ids = []
        # Its names first, then enough others that the log (about 100
        # entries) no longer holds the purges of its names.
        for name in mine + others:
            self.origin.put(name, b"new " + name.encode())
            code, answer = await self.api("DELETE", taker.url + "api/v1/files/" + name)
            self.assertEqual(code, 200)
            ids.append(answer["cluster"]["id"])
        redis = self.redis.client()
        self.addCleanup(redis.close)
        first = await deferToThread(redis.xrange, "cachetier:purges", count=1)
        self.assertGreater(stream_id(first[0][0]), stream_id(ids[len(mine) - 1]))
        frozen.kill(signal.SIGCONT)
        await self.level(frozen, ids[-1])
        for name in mine:
            self.assertFalse(await self.cached(frozen, name), name)
            self.assertEqual(await self.get(frozen, name), b"new " + name.encode())
        self.assertIn("trimmed past this node's position", frozen.output)
        self.assertIn("resynced from the purge log", frozen.output)

    async def test_the_log_says_whether_it_follows_on_from_a_position(self) -> None:
        server = await start_redis(self)
        client = server.client()
        self.addCleanup(client.close)
        purges = PurgeLog(client, "c:", 100)

        def check() -> None:
            self.assertEqual(purges.follows_on("0-0"), (None, True))  # nothing yet
            ids = [purges.append("n1", [f"ep{i}.mp3"])[0] for i in range(3)]
            epoch = purges.epoch()
            self.assertEqual(purges.follows_on("0-0"), (epoch, True))
            self.assertEqual(purges.follows_on(ids[0]), (epoch, True))
            client.xtrim("c:purges", maxlen=1, approximate=False)
            self.assertEqual(purges.follows_on("0-0"), (epoch, False))
            self.assertEqual(purges.follows_on(ids[0]), (epoch, False))  # ids[1] is gone
            self.assertEqual(purges.follows_on(ids[2]), (epoch, True))
            client.xtrim("c:purges", maxlen=0, approximate=False)
            # Trimmed to nothing: the snapshot reads on from the last entry
            # ever added, which still follows on (no resync after resync).
            snapshot = purges.snapshot()
            self.assertEqual((snapshot.last, snapshot.gens["ep1.mp3"]), (ids[2], 1))
            self.assertEqual(purges.follows_on(snapshot.last), (epoch, True))
            self.assertEqual(purges.follows_on(ids[1]), (epoch, False))

        await deferToThread(check)


async def _every(checks: Any) -> bool:
    for check in checks:
        if not await check:
            return False
    return True


class TierAgreementTests(TestCase):
    """
    Tiers agree (issue 23): an edge's requests to its shield carry the
    cluster's generation of the name, so a purge that reached the edge
    before the shield leaves no old bytes at the edge.
    """

    timeout = 90

    async def test_a_purge_at_the_edge_before_its_shield_leaves_no_old_bytes(self) -> None:
        origin, origin_url = start_origin(self)
        redis = await start_redis(self)
        secret_file, token_file = os.path.abspath(self.mktemp()), os.path.abspath(self.mktemp())
        for path, text in ((secret_file, "tier-secret-" + "s" * 20), (token_file, TOKEN)):
            with open(path, "w") as f:
                f.write(text)
        secret = f"--cluster-secret-file={secret_file}"
        cluster = (f"--cluster={redis.url}", f"--admin-token-file={token_file}")
        # The shield is in no cluster: it never hears of the purge itself.
        shield = await start_node(self, origin_url, secret, name="shield1", host="127.0.0.2")
        edge = await start_node(
            self,
            origin_url,
            f"--shield={shield.url}",
            secret,
            *cluster,
            name="edge1",
            host="127.0.0.3",
        )
        taker = await start_node(self, origin_url, *cluster, name="taker1", host="127.0.0.4")
        client = http_client(self)

        async def get(node: Node) -> bytes:
            response = await client.get(node.url + "files/ep.mp3")
            self.assertEqual(response.code, 200)
            return bytes(await content(response))

        async def applied(node: Node, entry: str) -> bool:
            health = json.loads(await content(await client.get(node.url + "healthz")))
            return stream_id(health["cluster"]["applied"] or "0-0") >= stream_id(entry)

        origin.put("ep.mp3", b"version one")
        self.assertEqual(await get(edge), b"version one")
        origin.put("ep.mp3", b"version two")
        response = await client.delete(
            taker.url + "api/v1/files/ep.mp3", headers={"Authorization": [f"Bearer {TOKEN}"]}
        )
        entry = json.loads(await content(response))["cluster"]["id"]
        await until(lambda: applied(edge, entry), within=15.0)
        self.assertEqual(await get(edge), b"version two")
        self.assertEqual(await get(edge), b"version two")
        self.assertEqual(await get(shield), b"version two")
        self.assertEqual(origin.counts["ep.mp3"], 2)
        sent = [headers for _, name, headers in origin.requests if name == "ep.mp3"]
        self.assertFalse(any(h.hasHeader(b"cachetier-generation") for h in sent))


class _Purges:
    """
    Stands in for the syncer: the names purged, in order.
    """

    def __init__(self) -> None:
        self.purged: list[str] = []
        self.doubt_before = 0.0

    def purge(self, name: str) -> bool:
        self.purged.append(name)
        return True


class GenerationNewsTests(SynchronousTestCase):
    """
    The bus applies an entry's purge of a name only when its generation is
    news to the node: one an edge told it of was purged then.
    """

    def test_an_entry_purges_the_names_whose_generation_is_news(self) -> None:
        generations = Generations()
        generations.learn("a.mp3", 2)
        syncer = _Purges()
        settings = Settings(
            origin="http://o/", cache_dir=self.mktemp(), cluster="redis://127.0.0.1:9/0"
        )
        bus = Bus(settings, syncer, Clock(), None, generations)  # type: ignore[arg-type]
        bus.received(
            [
                Entry("1-0", "names", ("a.mp3", "b.mp3"), gens=(2, 1)),
                Entry("2-0", "names", ("a.mp3",), gens=(3,)),
                Entry("3-0", "names", ("c.mp3",)),
            ],
            True,
        )
        self.assertEqual(syncer.purged, ["b.mp3", "a.mp3", "c.mp3"])
        self.assertEqual([generations.of(n) for n in ("a.mp3", "b.mp3", "c.mp3")], [3, 1, 0])


class PurgeTakenHereTests(TestCase):
    """
    A purge taken by a node: the node knows the names' new generations
    before it answers, not only once its reader applies the entry.
    """

    async def test_the_new_generations_are_known_and_purged_before_the_answer(self) -> None:
        redis = await start_redis(self)
        generations = Generations()
        syncer = _Purges()
        settings = Settings(origin="http://o/", cache_dir=self.mktemp(), cluster=redis.url)
        bus = Bus(settings, syncer, Clock(), deferToThread, generations)  # type: ignore[arg-type]
        self.addCleanup(deferToThread, bus._log.client.close)
        entry = await bus.purge(["a.mp3", "b.mp3"])
        self.assertEqual(syncer.purged, ["a.mp3", "b.mp3"])
        self.assertEqual([generations.of("a.mp3"), generations.of("b.mp3")], [1, 1])
        await bus.purge(["a.mp3"])
        self.assertEqual(generations.of("a.mp3"), 2)
        # Its reader's entry, when it comes, is no news.
        bus.received([Entry(entry, "names", ("a.mp3", "b.mp3"), gens=(1, 1))], True)
        self.assertEqual(syncer.purged, ["a.mp3", "b.mp3", "a.mp3"])
        await bus.purge(purge_prefix="a")
        self.assertEqual(syncer.purged, ["a.mp3", "b.mp3", "a.mp3"])


SECRET = "tier-secret-" + "s" * 20


class ClusterNodes:
    """
    Files and helpers shared by the tests: an admin token, a cluster
    secret, and a client.
    """

    def __init__(self, test: TestCase) -> None:
        self.test = test
        self.secret_file = os.path.abspath(test.mktemp())
        self.token_file = os.path.abspath(test.mktemp())
        for path, text in ((self.secret_file, SECRET), (self.token_file, TOKEN)):
            with open(path, "w") as f:
                f.write(text)
        self.client = http_client(test)

    async def get(self, node: Node, name: str, **headers: str) -> bytes:
        sent = {key: [value] for key, value in headers.items()}
        response = await self.client.get(node.url + "files/" + name, headers=sent)
        self.test.assertEqual(response.code, 200)
        return bytes(await content(response))

    async def health(self, node: Node) -> dict:
        response = await self.client.get(node.url + "healthz")
        return json.loads(await content(response))

    async def applied(self, node: Node, entry: str) -> bool:
        cluster = (await self.health(node))["cluster"]
        return stream_id(cluster["applied"] or "0-0") >= stream_id(entry)

    async def purge(self, node: Node, name: str) -> str:
        response = await self.client.delete(
            node.url + "api/v1/files/" + name, headers={"Authorization": [f"Bearer {TOKEN}"]}
        )
        self.test.assertEqual(response.code, 200)
        return str(json.loads(await content(response))["cluster"]["id"])

    def flags(self, redis: Any) -> tuple[str, str]:
        """
        A node's flags for the cluster in C{redis}, with the admin token.
        """
        return (f"--cluster={redis.url}", f"--admin-token-file={self.token_file}")

    async def until_level(self, node: Node, entry: str | None = None) -> None:
        """
        Wait until C{node} is level with the log (and has applied C{entry},
        or resynced into a new log's start when C{entry} is C{"0-0"}).
        """

        async def level() -> bool:
            cluster = (await self.health(node))["cluster"]
            if entry == "0-0":
                return cluster["status"] == "ok" and cluster["applied"] == "0-0"
            applied = stream_id(cluster["applied"] or "0-0")
            return cluster["status"] == "ok" and (entry is None or applied >= stream_id(entry))

        await until(level, within=20.0)


class EmptyPrefixEntryTests(TestCase):
    """
    An entry of the log whose prefix is empty (which the API refuses) is
    passed over as one this version cannot read, never applied as a purge
    of every file the node holds; a resync passes over an empty key of
    C{prefixes} alike.
    """

    timeout = 60

    async def test_an_entry_with_an_empty_prefix_purges_nothing(self) -> None:
        origin, origin_url = start_origin(self)
        redis = await start_redis(self)
        nodes = ClusterNodes(self)
        node = await start_node(self, origin_url, *nodes.flags(redis))
        origin.put("ep.mp3", b"version one")
        self.assertEqual(await nodes.get(node, "ep.mp3"), b"version one")
        fields = {"kind": "prefix", "prefix": "", "node": "someone"}
        entry = await deferToThread(redis.client().xadd, "cachetier:purges", fields)
        await until(lambda: nodes.applied(node, entry), within=15.0)
        self.assertEqual(await nodes.get(node, "ep.mp3"), b"version one")
        self.assertEqual(origin.counts["ep.mp3"], 1)


class MalformedSnapshotTests(TestCase):
    """
    A field of the cluster's C{gens} or C{prefixes} hash that cannot be read
    is passed over with a warning naming it, on the safe side (its name or
    prefix purged), never failing the resync: a node that resyncs is level
    with the log all the same.
    """

    timeout = 60

    async def test_a_malformed_generation_does_not_keep_a_node_from_the_log(self) -> None:
        _, origin_url = start_origin(self)
        redis = await start_redis(self)
        client = redis.client()
        await deferToThread(client.hset, "cachetier:gens", "ep.mp3", "not-a-number")
        await deferToThread(client.hset, "cachetier:gens", "other.mp3", "3")
        await deferToThread(client.hset, "cachetier:prefixes", "show/", "not-an-id")
        nodes = ClusterNodes(self)
        node = await start_node(self, origin_url, *nodes.flags(redis))
        await nodes.until_level(node)

    def test_what_cannot_be_read_is_purged(self) -> None:
        snapshot = Snapshot(
            "e", "9-0", {"a.mp3": 1}, {"old/": "3-0", "new/": "12-0", "bad/": "x"}, ("b.mp3",)
        )
        self.assertEqual(snapshot.prefixes_after("9-0"), ["new/", "bad/"])


class DoubtAcrossRestartTests(TestCase):
    """
    A node that finds the cluster's log emptied (another epoch) revalidates
    every copy it held before it serves it, since purges it had not applied
    may be lost; that doubt is kept with its position in the log
    (C{cluster.json}), saved with the new epoch, so a restart keeps it.
    """

    timeout = 120

    async def test_a_restart_does_not_forget_that_copies_are_in_doubt(self) -> None:
        origin, origin_url = start_origin(self)
        redis = await start_redis(self)
        nodes = ClusterNodes(self)
        cluster = nodes.flags(redis)
        edge = await start_node(self, origin_url, *cluster, name="edge1", host="127.0.0.2")
        taker = await start_node(self, origin_url, *cluster, name="taker1", host="127.0.0.4")
        origin.put("ep.mp3", b"version one")
        self.assertEqual(await nodes.get(edge, "ep.mp3"), b"version one")
        await edge.stop()
        # While the edge is down, ep.mp3 is purged; then the cluster's
        # Redis restarts empty, so the edge never reads that purge.
        origin.put("ep.mp3", b"version two")
        await nodes.purge(taker, "ep.mp3")
        await redis.kill()
        await redis.start()
        edge = await restart_node(self, edge, origin_url)
        await nodes.until_level(edge)
        # Restarted once more before anyone asked for ep.mp3.
        await edge.stop()
        edge = await restart_node(self, edge, origin_url)
        await nodes.until_level(edge)
        self.assertEqual(await nodes.get(edge, "ep.mp3"), b"version two")

    def test_the_doubt_is_kept_with_the_position(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        position.save(directory, Position("e1", "5-0", 12.5))
        self.assertEqual(position.load(directory), Position("e1", "5-0", 12.5))
        with open(os.path.join(directory, position.FILE), "w") as f:
            json.dump({"epoch": "e1", "applied": "5-0"}, f)
        self.assertEqual(position.load(directory), Position("e1", "5-0", 0.0))


class StaleGenerationTests(TestCase):
    """
    Generations of different epochs are never compared: a shield passes
    over a generation an edge sends of another epoch of the log (the edge
    still knows the generations of the cluster's Redis before it was
    emptied), so it cannot skip a purge of the new log as no news.
    """

    timeout = 120

    async def test_a_stale_edge_generation_does_not_make_a_shield_skip_purges(self) -> None:
        origin, origin_url = start_origin(self)
        redis = await start_redis(self)
        nodes = ClusterNodes(self)
        cluster = nodes.flags(redis)
        shield = await start_node(
            self,
            origin_url,
            f"--cluster-secret-file={nodes.secret_file}",
            "--role=shield",
            *cluster,
            name="shield1",
            host="127.0.0.2",
        )
        taker = await start_node(self, origin_url, *cluster, name="taker1", host="127.0.0.4")
        # Two purges: the edges learn generation 2 of ep.mp3.
        for _ in range(2):
            taken = await nodes.purge(taker, "ep.mp3")
            await until(lambda taken=taken: nodes.applied(shield, taken), within=15.0)
        old_epoch = await deferToThread(redis.client().get, "cachetier:epoch")
        # The cluster's Redis is emptied (a restart without persistence);
        # the shield resyncs to the new, empty log.
        await deferToThread(redis.client().flushall)

        async def resynced() -> bool:
            cluster = (await nodes.health(shield))["cluster"]
            return cluster["applied"] == "0-0" and cluster["status"] == "ok"

        await until(resynced, within=15.0)
        origin.put("ep.mp3", b"version one")
        # An edge that has not resynced yet asks with what it knew.
        stale = {"cachetier-secret": SECRET, "cachetier-generation": f"{old_epoch}:2"}
        self.assertEqual(await nodes.get(shield, "ep.mp3", **stale), b"version one")
        origin.put("ep.mp3", b"version two")
        # The first purge of the new log: generation 1.
        entry = await nodes.purge(taker, "ep.mp3")
        await until(lambda: nodes.applied(shield, entry), within=15.0)
        self.assertEqual(await nodes.get(shield, "ep.mp3"), b"version two")

    def test_the_generation_header_says_the_epoch(self) -> None:
        headers = dict(upstream("edge1", (), b"secret", ("ab12", 7)))
        self.assertEqual(headers[GENERATION], b"ab12:7")
        self.assertEqual(generation([headers[GENERATION]]), ("ab12", 7))
        self.assertEqual(generation([b"7"]), ("", 7))
        for bad in (b"ab12:", b"ab12:x7", b"a b:7", b""):
            self.assertEqual(generation([bad]), ("", 0), bad)
        self.assertNotIn(GENERATION, dict(upstream("edge1", (), b"secret", ("", 7))))

    def test_a_generation_of_another_epoch_is_passed_over(self) -> None:
        generations = Generations()
        generations.replace({"a.mp3": 1}, "new")
        syncer = _Purges()
        self.assertFalse(agree(generations, syncer, "a.mp3", "old", 5))  # type: ignore[arg-type]
        self.assertEqual((generations.of("a.mp3"), syncer.purged), (1, []))
        self.assertEqual(generations.stamp("a.mp3"), ("new", 1))


class HungRedisTests(TestCase):
    """
    A silent dependency holds no resource it shares with the serving
    path: the Redis calls of purges, ?wait's polls, the heartbeat and the
    node list run in a pool of their own, not the reactor's, where a
    download's disk writes and its publish run; a Redis that stops
    answering held a thread for its timeout per call there, so a burst of
    purges (one DELETE a file, as a CMS sends them) stalled every fill.
    """

    timeout = 120

    async def test_purges_to_a_hung_redis_do_not_stall_fills(self) -> None:
        origin, origin_url = start_origin(self)
        redis = await start_redis(self)
        nodes = ClusterNodes(self)
        node = await start_node(self, origin_url, *nodes.flags(redis))
        await nodes.until_level(node)
        origin.put("new.mp3", b"x" * 65536)
        redis._process.signalProcess(signal.SIGSTOP)
        self.addCleanup(redis._process.signalProcess, signal.SIGCONT)
        answered = []

        def purge(i: int) -> None:
            d = nodes.client.delete(
                node.url + f"api/v1/files/p{i}.mp3",
                headers={"Authorization": [f"Bearer {TOKEN}"]},
            )
            d.addCallback(lambda response: answered.append(response.code))
            d.addCallback(lambda _: None)
            self.addCleanup(lambda: d)

        for i in range(40):
            purge(i)
        self.assertEqual(await nodes.get(node, "new.mp3"), b"x" * 65536)
        # The fill needed no Redis: it is done long before the purges,
        # which each wait for Redis's timeout, are answered.
        self.assertLessEqual(len(answered), 20)


class CrossEpochGenerationTests(TestCase):
    """
    Rule 10 (a node that missed part of the log resyncs before it serves):
    a copy's C{cluster_generation} is of the log's epoch it was fetched in;
    a 304 that renews it after the log came back empty keeps that old
    number, which a resync in the new epoch then compares with the new
    epoch's (smaller) generations.
    """

    timeout = 120

    async def test_a_copy_renewed_after_an_epoch_change_survives_a_resync_of_its_purge(
        self,
    ) -> None:
        origin, origin_url = start_origin(self)
        redis = await start_redis(self)
        meddle = redis.client()
        self.addCleanup(meddle.close)
        nodes = ClusterNodes(self)
        cluster = nodes.flags(redis)
        node = await start_node(self, origin_url, *cluster, name="edge1", host="127.0.0.2")
        taker = await start_node(self, origin_url, *cluster, name="taker1", host="127.0.0.4")

        async def get(n: Node, name: str) -> tuple[bytes, list[str]]:
            response = await nodes.client.get(n.url + "files/" + name)
            code, headers, body = await read_response(response)
            self.assertEqual(code, 200)
            return body, header(headers, "cache-status")

        # Epoch 1: three purges of ep.mp3 (generation 3), then a copy.
        for _ in range(3):
            entry = await nodes.purge(taker, "ep.mp3")
        await nodes.until_level(node, entry)
        origin.put("ep.mp3", b"version one")
        self.assertEqual((await get(node, "ep.mp3"))[0], b"version one")
        # The cluster's Redis comes back empty: epoch 2; the node doubts
        # its copies and revalidates ep.mp3 (a 304: unchanged).
        await deferToThread(meddle.flushall)
        await nodes.until_level(node, "0-0")
        body, status = await get(node, "ep.mp3")
        self.assertEqual(body, b"version one")
        self.assertEqual(origin.counts["ep.mp3"], 2)  # the revalidation
        # The node stops; ep.mp3 changes and is purged (generation 1 of
        # epoch 2); the log is trimmed past that purge before it returns.
        await node.stop()
        origin.put("ep.mp3", b"version two")
        await nodes.purge(taker, "ep.mp3")
        await deferToThread(meddle.xtrim, "cachetier:purges", maxlen=0, approximate=False)
        node = await restart_node(self, node, origin_url)
        await nodes.until_level(node)
        body, status = await get(node, "ep.mp3")
        self.assertTrue(
            body == b"version two",
            f"after resyncing past the purge, the node served the purged copy: {body!r} {status}",
        )


class DownloadAcrossEpochTests(TestCase):
    """
    A download under way when the log comes back empty (review 3).
    """

    timeout = 120

    async def test_a_download_under_way_when_the_log_is_emptied_is_doubted_too(self) -> None:
        """
        Rule 10 (once a purge's API call has answered, no node serves the
        purged version): a node that finds the cluster's log emptied
        (another epoch) doubts every copy fetched before it found out,
        since purges it never read are lost.  A download of ep.mp3 that
        began before a lost purge of it and is published after the resync
        is as much in doubt as a copy held then; it must not be served as
        fresh.
        """
        origin, origin_url = start_origin(self)
        redis = await start_redis(self)
        meddle = redis.client()
        self.addCleanup(meddle.close)
        nodes = ClusterNodes(self)
        cluster, client = nodes.flags(redis), nodes.client
        node = await start_node(self, origin_url, *cluster, name="edge1", host="127.0.0.2")
        taker = await start_node(self, origin_url, *cluster, name="taker1", host="127.0.0.4")
        await nodes.until_level(node)
        v1, v2 = body_of(400_000, "v1"), body_of(400_000, "v2")
        origin.put("ep.mp3", v1)
        origin.rate = 100_000
        first = client.get(node.url + "files/ep.mp3")
        first.addCallback(content)
        await deferLater(reactor, 0.5, lambda: None)
        # The node is cut off (stopped) while ep.mp3 changes and is purged,
        # and the cluster's Redis then comes back empty: that purge is lost.
        node.kill(signal.SIGSTOP)
        self.addCleanup(lambda: node.kill(signal.SIGCONT))
        await deferLater(reactor, 1.0, lambda: None)
        origin.put("ep.mp3", v2)
        await nodes.purge(taker, "ep.mp3")
        await deferToThread(meddle.flushall)
        node.kill(signal.SIGCONT)
        await nodes.until_level(node, "0-0")
        # The download that began before is dropped: its listener sees a
        # clean abort, never a short 200 (or the whole v1, had it ended).
        try:
            self.assertEqual(await first, v1)
        except ResponseFailed:
            pass
        await deferLater(reactor, 0.5, lambda: None)
        origin.rate = None
        code, headers, got = await read_response(await client.get(node.url + "files/ep.mp3"))
        self.assertEqual(code, 200)
        self.assertTrue(
            got == v2,
            f"the purged v1, downloaded across the lost purge, is served: "
            f"{header(headers, 'cache-status')}",
        )


class ResyncKeepsHeldCopiesTests(TestCase):
    """
    A revalidation under way when the log comes back empty is stopped,
    its copy kept (review 4).
    """

    timeout = 120

    async def test_a_revalidation_under_way_at_an_epoch_change_keeps_its_copy(self) -> None:
        """
        Rule 7 (every byte is fetched from the origin at most once per
        version): the node holds ep.mp3 (stale) and is revalidating it
        when the cluster's log comes back empty.  The copy is in doubt and
        is to be revalidated before it is served, as every other copy
        held then is; the revalidation may be dropped, but not the copy.
        The next request then revalidates it (a 304, the file unchanged)
        instead of fetching its every byte from the origin again.
        """
        origin, origin_url = start_origin(self)
        redis = await start_redis(self)
        meddle = redis.client()
        self.addCleanup(meddle.close)
        nodes = ClusterNodes(self)
        node = await start_node(self, origin_url, *nodes.flags(redis))
        await nodes.until_level(node)
        body = body_of(300_000, "held")
        origin.put("ep.mp3", body, extra_headers={"Cache-Control": "max-age=1"})
        self.assertEqual(await nodes.get(node, "ep.mp3"), body)
        await deferLater(reactor, 1.2, lambda: None)
        # A revalidation under way (the origin slow to answer it)...
        origin.hang.add("ep.mp3")
        waiting = nodes.client.get(node.url + "files/ep.mp3")
        waiting.addCallback(content)
        waiting.addErrback(lambda _: None)

        async def asked() -> bool:
            return origin.counts["ep.mp3"] >= 2

        await until(asked, within=5.0)
        # ...when the cluster's Redis comes back empty (another epoch).
        await deferToThread(meddle.flushall)
        await nodes.until_level(node, "0-0")
        origin.hang.discard("ep.mp3")
        await waiting.addTimeout(5, reactor)
        code, headers, got = await read_response(await nodes.client.get(node.url + "files/ep.mp3"))
        self.assertEqual((code, got), (200, body))
        self.assertEqual(
            origin.sent["ep.mp3"],
            len(body),
            f"the unchanged file was fetched whole again after the resync:"
            f" {header(headers, 'cache-status')}",
        )
