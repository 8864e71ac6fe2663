"""
Membership (issue 23): heartbeats in Redis and C{GET /api/v1/cluster},
between real C{twistd} nodes and a real C{redis-server}.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseNeverReceived

from cachetier.cluster.membership import Identity, Membership
from cachetier.web.cluster import merge_rows, why_unanswered

from .helpers import body_of, child_environment, http_client, read_response, start_origin
from .nodes import Node, start_node, until
from .redis_server import RedisServer, start_redis

TOKEN = "membership-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def token_file(test: TestCase) -> str:
    path = os.path.abspath(test.mktemp())
    with open(path, "w") as f:
        f.write(TOKEN)
    return path


async def start_member(
    test: TestCase, origin_url: str, redis: RedisServer, name: str, host: str, *args: str
) -> Node:
    """
    A node in C{redis}'s cluster, with the admin token L{TOKEN} and its
    C{--node-url}.
    """
    port = free_port(host)
    return await start_node(
        test,
        origin_url,
        f"--cluster={redis.url}",
        f"--node-url=http://{host}:{port}/",
        f"--admin-token-file={token_file(test)}",
        *args,
        name=name,
        host=host,
        port=port,
    )


class MembershipTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.redis = await start_redis(self)
        self.origin, self.origin_url = start_origin(self)
        self.http = http_client(self)

    async def cluster(self, node: Node) -> dict[str, Any]:
        response = await self.http.get(node.url + "api/v1/cluster", headers=ADMIN)
        code, _, body = await read_response(response)
        self.assertEqual(code, 200, body)
        return json.loads(body)

    async def nodes(self, node: Node) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in (await self.cluster(node))["nodes"]}

    async def test_every_node_lists_every_node_and_a_killed_one_is_gone_within_seconds(
        self,
    ) -> None:
        a = await start_member(self, self.origin_url, self.redis, "a", "127.0.0.1")
        b = await start_member(self, self.origin_url, self.redis, "b", "127.0.0.2")
        c = await start_member(self, self.origin_url, self.redis, "c", "127.0.0.3", "--role=shield")

        async def all_alive() -> bool:
            nodes = await self.nodes(b)
            return [(n, v["alive"]) for n, v in nodes.items()] == [
                ("a", True),
                ("b", True),
                ("c", True),
            ]

        await until(all_alive, within=15)

        async def a_level() -> bool:
            # A node is degraded until its bus first catches up with the
            # purge log; its next heartbeat (once a second) says when.
            return (await self.nodes(a))["a"]["status"] == "ok"

        await until(a_level, within=15)
        view = await self.cluster(a)
        self.assertEqual((view["cluster"], view["node"]), ("cachetier", "a"))
        nodes = await self.nodes(a)
        self.assertEqual((nodes["a"]["role"], nodes["c"]["role"]), ("edge", "shield"))
        self.assertEqual(nodes["b"]["url"], b.url)
        self.assertEqual(nodes["a"]["lag"], {"entries": 0, "seconds": 0.0})
        for field in ("version", "disk_used", "disk_quota", "hit_ratio"):
            self.assertIn(field, nodes["a"])

        c.kill()
        await c.ended()
        killed_at = await deferToThread(self.redis.client().time)

        async def c_gone() -> bool:
            return (await self.nodes(a))["c"]["alive"] is False

        await until(c_gone, within=10)
        gone = (await self.nodes(a))["c"]
        self.assertIsNone(gone["lag"])
        self.assertLessEqual(gone["last_seen"], killed_at[0] + 1)

        await b.stop()
        nodes = await self.nodes(a)
        self.assertFalse(nodes["b"]["alive"], "a node that stops leaves at once")
        self.assertTrue(nodes["a"]["alive"])

    async def test_lag_counts_the_purges_a_node_has_not_applied(self) -> None:
        a = await start_member(self, self.origin_url, self.redis, "a", "127.0.0.1")
        client = self.redis.client()
        await until(lambda: deferToThread(client.exists, "cachetier:node:a"), within=15)
        # Purges another node appended, and the record of a node z that
        # applied only the first: not a's own, which a's heartbeat (once a
        # second, and at once when a applies them) would write over.
        entry = {"kind": "names", "names": '["x"]', "node": "b"}
        first = client.xadd("cachetier:purges", entry)
        for _ in range(4):
            client.xadd("cachetier:purges", entry)
        record = json.loads(client.get("cachetier:node:a"))
        record.update(name="z", applied=first)
        client.set("cachetier:node:z", json.dumps(record), ex=60)
        client.zadd("cachetier:nodes", {"z": client.time()[0]})
        view = await self.cluster(a)
        self.assertEqual(view["stream"]["length"], 5)
        lag = {n["name"]: n for n in view["nodes"]}["z"]["lag"]
        self.assertEqual(lag["entries"], 4)
        self.assertGreaterEqual(lag["seconds"], 0.0)

    async def test_metrics_carry_the_nodes_lag_behind_the_purge_log(self) -> None:
        a = await start_member(self, self.origin_url, self.redis, "a", "127.0.0.1")

        async def metered_level() -> bool:
            _, _, body = await read_response(await self.http.get(a.url + "metrics"))
            found = re.search(rb"^cachetier_cluster_lag_seconds (\S+)$", body, re.M)
            self.assertIsNotNone(found, "the gauge is there from the start")
            return float(found.group(1)) < 5.0

        await until(metered_level, within=15)
        await self.redis.kill()

        async def metered_behind() -> bool:
            _, _, body = await read_response(await self.http.get(a.url + "metrics"))
            found = re.search(rb"^cachetier_cluster_lag_seconds (\S+)$", body, re.M)
            return float(found.group(1)) > 5.0

        await until(metered_behind, within=15)

    async def test_outside_a_cluster_the_endpoint_says_so(self) -> None:
        node = await start_node(self, self.origin_url, f"--admin-token-file={token_file(self)}")
        response = await self.http.get(node.url + "api/v1/cluster", headers=ADMIN)
        code, _, body = await read_response(response)
        self.assertEqual((code, json.loads(body)["error"]), (404, "no_cluster"))
        code, _, _ = await read_response(await self.http.get(node.url + "api/v1/cluster"))
        self.assertEqual(code, 401)

    async def test_redis_gone_the_endpoint_answers_503_and_the_node_serves(self) -> None:
        a = await start_member(self, self.origin_url, self.redis, "a", "127.0.0.1")
        await self.redis.kill()
        response = await self.http.get(a.url + "api/v1/cluster", headers=ADMIN)
        code, _, body = await read_response(response)
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["error"], "cluster_unreachable")
        self.assertNotIn(b"127.0.0.1", body)
        code, _, _ = await read_response(await self.http.get(a.url + "healthz"))
        self.assertEqual(code, 200)


class MergeRowsTests(SynchronousTestCase):
    def test_counts_of_one_file_and_day_are_summed_in_the_nodes_order(self) -> None:
        a = [
            {
                "file": "x",
                "day": "2026-12-01",
                "requests": 2,
                "bytes": 10,
                "complete": 1,
                "downloads": 1,
            },
            {
                "file": "y",
                "day": "2026-12-02",
                "requests": 1,
                "bytes": 5,
                "complete": 0,
                "downloads": 1,
            },
        ]
        b = [
            {
                "file": "x",
                "day": "2026-12-01",
                "requests": 3,
                "bytes": 7,
                "complete": 2,
                "downloads": 2,
            }
        ]
        self.assertEqual(
            merge_rows([a, b], "day"),
            [
                {
                    "file": "x",
                    "day": "2026-12-01",
                    "requests": 5,
                    "bytes": 17,
                    "complete": 3,
                    "downloads": 3,
                },
                {
                    "file": "y",
                    "day": "2026-12-02",
                    "requests": 1,
                    "bytes": 5,
                    "complete": 0,
                    "downloads": 1,
                },
            ],
        )
        totals = [
            [{"file": "y", "requests": 9, "bytes": 1, "complete": 0, "downloads": 4}],
            [{"file": "x", "requests": 1, "bytes": 1, "complete": 1, "downloads": 3}],
        ]
        self.assertEqual([r["file"] for r in merge_rows(totals, "file")], ["y", "x"])


class ClusterStatsTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.redis = await start_redis(self)
        self.origin, self.origin_url = start_origin(self)
        self.origin.put("ep.mp3", body_of(200_000))
        self.http = http_client(self)

    async def test_every_live_nodes_counts_merged_saying_which_did_not_answer(self) -> None:
        a = await start_member(self, self.origin_url, self.redis, "a", "127.0.0.1")
        b = await start_member(self, self.origin_url, self.redis, "b", "127.0.0.2")
        c = await start_member(self, self.origin_url, self.redis, "c", "127.0.0.3")
        player = {"User-Agent": "AppleCoreMedia/1.0"}
        for node in (a, b, c):
            await read_response(await self.http.get(node.url + "files/ep.mp3", headers=player))

        async def stats() -> dict[str, Any]:
            response = await self.http.get(
                a.url + "api/v1/stats?scope=cluster&group=file", headers=ADMIN
            )
            code, _, body = await read_response(response)
            self.assertEqual(code, 200, body)
            return json.loads(body)

        async def all_counted() -> bool:
            body = await stats()
            return body["nodes"] == ["a", "b", "c"] and [
                (r["file"], r["downloads"]) for r in body["rows"]
            ] == [("ep.mp3", 3)]

        await until(all_counted, within=20)
        c.kill()
        await c.ended()
        body = await stats()  # c's heartbeat has not expired yet
        self.assertEqual(body["nodes"], ["a", "b"])
        self.assertEqual(body["unanswered"], [{"node": "c", "error": "connection refused"}])
        self.assertEqual(body["rows"][0]["downloads"], 2)

        argv = [
            sys.executable, "-m", "cachetier.cli", "stats", "--cluster", "--group=file",
            f"--server={a.url}", f"--admin-token-file={token_file(self)}", "--format=csv",
        ]  # fmt: skip
        done = await deferToThread(
            subprocess.run, argv, env=child_environment(), capture_output=True, text=True
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(
            done.stdout.splitlines(),
            ["file,requests,bytes,complete,downloads", "ep.mp3,2,400000,2,2"],
        )
        self.assertIn("cachetier stats: c did not answer: connection refused", done.stderr)

    def test_why_a_node_did_not_answer_in_words(self) -> None:
        timed_out = ResponseNeverReceived([Failure(CancelledError())])
        self.assertEqual(why_unanswered(Failure(timed_out)), "no answer within 5 s")
        lost = ResponseNeverReceived([Failure(ConnectionLost())])
        self.assertEqual(why_unanswered(Failure(lost)), "the connection was lost before its answer")
        self.assertEqual(why_unanswered(Failure(ValueError("HTTP 403: no"))), "HTTP 403: no")

    async def test_scope_cluster_outside_a_cluster(self) -> None:
        node = await start_node(self, self.origin_url, f"--admin-token-file={token_file(self)}")
        for query, code, error in (
            ("scope=cluster", 404, "no_cluster"),
            ("scope=world", 400, "bad_request"),
        ):
            response = await self.http.get(node.url + "api/v1/stats?" + query, headers=ADMIN)
            got, _, body = await read_response(response)
            self.assertEqual((got, json.loads(body)["error"]), (code, error))


class HeartbeatTests(TestCase):
    """
    The heartbeat's pace, with a real Redis and a thread pool that runs
    each job only when the test says.
    """

    async def setUp(self) -> None:
        self.redis = (await start_redis(self)).client()
        self.addCleanup(self.redis.close)
        self.jobs: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []
        self.clock = Clock()
        self.applied: str | None = None
        self.membership = Membership(
            self.redis,
            "cachetier:",
            Identity("a", "http://a/", "edge"),
            lambda: {"applied": self.applied},
            self.held,
            self.clock,
            lambda: self.applied,
        )

    def held(self, f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((f, args, d))
        return d

    def run_job(self) -> None:
        f, args, d = self.jobs.pop(0)
        d.callback(f(*args))

    def test_a_slow_redis_gets_one_write_at_a_time(self) -> None:
        self.membership.beat()
        self.membership.beat()
        self.membership.beat()
        self.assertEqual(len(self.jobs), 1)
        self.run_job()
        self.assertEqual(json.loads(self.redis.get("cachetier:node:a"))["url"], "http://a/")
        self.assertEqual(self.redis.zrange("cachetier:nodes", 0, -1), ["a"])
        self.assertLessEqual(self.redis.ttl("cachetier:node:a"), 5)
        self.membership.beat()
        self.assertEqual(len(self.jobs), 1, "the next one, once the last is written")

    def test_a_purge_applied_is_told_at_once(self) -> None:
        self.membership.start()
        self.clock.advance(0.02)
        self.assertEqual(self.jobs, [], "nothing new to tell")
        self.applied = "5-0"
        self.clock.advance(0.02)
        self.run_job()
        self.assertEqual(json.loads(self.redis.get("cachetier:node:a"))["applied"], "5-0")
        self.clock.advance(0.02)
        self.assertEqual(self.jobs, [], "told once")


class ClusterShieldsTests(TestCase):
    """
    C{--shield=cluster}: an edge's fills go to the cluster's live shields,
    as membership lists them, and no longer to one that left.
    """

    timeout = 120

    async def test_an_edge_follows_the_clusters_live_shields(self) -> None:
        redis = await start_redis(self)
        origin, origin_url = start_origin(self)
        http = http_client(self)
        shield = await start_member(
            self, origin_url, redis, "shield1", "127.0.0.2", "--role=shield"
        )
        edge = await start_member(self, origin_url, redis, "edge1", "127.0.0.3", "--shield=cluster")

        async def health() -> dict[str, Any]:
            response = await http.get(edge.url + "healthz")
            return json.loads((await read_response(response))[2])

        async def following() -> bool:
            metrics = (await read_response(await http.get(edge.url + "metrics")))[2]
            return f'cachetier_upstream_up{{upstream="{shield.url}"}} 1.0'.encode() in metrics

        await until(following, within=15)
        origin.put("ep.mp3", body_of(100_000, "ep"))
        response = await http.get(edge.url + "files/ep.mp3")
        code, headers, body = await read_response(response)
        self.assertEqual((code, body), (200, body_of(100_000, "ep")))
        entries = ", ".join(headers.getRawHeaders("cache-status", []))
        self.assertRegex(entries, r"^shield1; fwd=miss.*, edge1; fwd=miss")

        # A shield that leaves the cluster is no longer asked, nor down.
        await shield.stop()

        async def let_go() -> bool:
            return not await following() and (await health())["status"] == "ok"

        await until(let_go, within=15)
        origin.put("ep2.mp3", body_of(100_000, "ep2"))
        response = await http.get(edge.url + "files/ep2.mp3")
        code, headers, body = await read_response(response)
        self.assertEqual((code, body), (200, body_of(100_000, "ep2")))
        entries = ", ".join(headers.getRawHeaders("cache-status", []))
        self.assertNotIn("shield1", entries)
        self.assertIn("shields from the cluster: none", edge.output)
