"""
The client helper discovers nodes from a cluster's membership
(C{cluster="redis://..."}): real C{twistd} nodes, a real C{redis-server},
the three transports.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cachetier.client import AsyncioCacheTierClient, BlockingCacheTierClient, CacheTierClient
from cachetier.client._discovery import live_edges
from cachetier.client._policy import Policy

from .helpers import body_of, child_environment, start_origin
from .nodes import Node, until
from .redis_server import start_redis
from .test_client import run_asyncio
from .test_client_policy import status
from .test_membership import start_member


def record(url: str, role: str = "edge") -> bytes:
    return json.dumps({"name": "n", "url": url, "role": role, "status": "ok"}).encode()


class LiveEdgesTests(SynchronousTestCase):
    def test_only_the_live_edges_with_a_url(self) -> None:
        records = [
            record("http://b:8080"),
            None,  # expired: gone
            record("http://s:8080/", role="shield"),
            b"not json",
            json.dumps({"name": "x", "role": "edge"}).encode(),  # no --node-url
            record("http://a:8080/"),
            record("http://a:8080/"),
        ]
        self.assertEqual(live_edges(records), ["http://a:8080/", "http://b:8080/"])


class SetNodesTests(SynchronousTestCase):
    def test_nodes_that_stay_keep_their_state_and_those_that_leave_lose_theirs(self) -> None:
        a, b, c = "http://a/", "http://b/", "http://c/"
        policy = Policy([a, b], lambda: 0.0)
        policy.succeeded(a, "on-a", status("on-a", True))
        policy.succeeded(b, "on-b", status("on-b", True))
        policy.failed(a)
        policy.set_nodes([a, c])
        self.assertTrue(policy.breaker_open(a), "a's breaker is kept")
        self.assertIsNone(policy.cached("on-b"), "b left: its answers go with it")
        self.assertFalse(policy.breaker_open(c))
        self.assertFalse(policy.probe_due(b), "no probes of a node that left")
        policy.failed(b)  # a probe of b that ends after b left is no error

    def test_no_node_known_yet_means_the_origin(self) -> None:
        policy = Policy([], lambda: 0.0)
        self.assertIsNone(policy.choose("a.mp3"))
        self.assertIsNone(policy.home("a.mp3"))


class WithoutRedisTests(SynchronousTestCase):
    def test_cluster_without_redis_py_says_what_to_install(self) -> None:
        # A child whose import of redis fails, as where it is not installed.
        code = (
            "import sys; sys.modules['redis'] = None\n"
            "from cachetier.client import BlockingCacheTierClient\n"
            "try:\n"
            "    BlockingCacheTierClient(cluster='redis://127.0.0.1:1/0')\n"
            "except ImportError as e:\n"
            "    print(e)\n"
            "import cachetier.client\n"
            "print(cachetier.client.BlockingCacheTierClient('http://a/').base_url)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=child_environment(), capture_output=True, text=True
        )
        self.assertEqual(
            done.stdout.splitlines(),
            [
                "CacheTierClient(cluster=...) needs redis-py: pip install 'redis[hiredis]'",
                "http://a/",
            ],
            done.stderr,
        )

    def test_neither_nodes_nor_cluster(self) -> None:
        with self.assertRaises(ValueError):
            BlockingCacheTierClient()


class DiscoveryTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.redis = await start_redis(self)
        self.origin, self.origin_url = start_origin(self)
        self.origin.put("ep/1.mp3", body_of(10_000))
        self.a = await self.member("a", "127.0.0.1")
        self.b = await self.member("b", "127.0.0.2")
        await self.member("s", "127.0.0.3", "--role=shield")

    async def member(self, name: str, host: str, *args: str) -> Node:
        return await start_member(self, self.origin_url, self.redis, name, host, *args)

    async def follows(self, client: Any, nodes: list[str], within: float = 15) -> None:
        async def listed() -> bool:
            return client.policy.nodes == sorted(nodes)

        await until(listed, within=within)

    async def test_blocking_client_follows_membership(self) -> None:
        client = BlockingCacheTierClient(cluster=self.redis.url, discovery_interval=0.2)
        self.addCleanup(deferToThread, client.close)
        await self.follows(client, [self.a.url, self.b.url])  # never the shield

        async def cached() -> bool:
            return bool(await deferToThread(client.verify_file, "ep/1.mp3"))

        await until(cached)
        self.assertIn(
            client.build_download_url("ep/1.mp3"),
            [self.a.url + "files/ep/1.mp3", self.b.url + "files/ep/1.mp3"],
        )

        self.b.kill()
        await self.follows(client, [self.a.url])
        c = await self.member("c", "127.0.0.4")
        await self.follows(client, [self.a.url, c.url])

        await self.redis.kill()

        async def failed() -> bool:
            return client.membership_error is not None

        await until(failed)
        self.assertEqual(client.policy.nodes, sorted([self.a.url, c.url]), "the last list")
        # Lookups go on against the last list (the file's node may be c now).
        await until(cached)

        await self.redis.start()  # empty: the nodes' next heartbeats fill it
        await self.follows(client, [self.a.url, c.url])
        await until(lambda: deferToThread(lambda: client.membership_error is None))

    async def test_twisted_client_follows_membership(self) -> None:
        client = CacheTierClient(cluster=self.redis.url, discovery_interval=0.2)
        self.addCleanup(client.close)
        await self.follows(client, [self.a.url, self.b.url])
        self.b.kill()
        await self.follows(client, [self.a.url])
        c = await self.member("c", "127.0.0.4")
        await self.follows(client, [self.a.url, c.url])

    async def test_asyncio_client_follows_membership(self) -> None:
        both, one = sorted([self.a.url, self.b.url]), [self.a.url]
        seen_both = threading.Event()

        async def poll(condition: Any) -> None:
            for _ in range(300):
                if condition():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("not within 15s")

        async def follow() -> None:
            client = AsyncioCacheTierClient(cluster=self.redis.url, discovery_interval=0.2)
            try:
                await client.verify_file("ep/1.mp3")  # starts the background tasks
                await poll(lambda: client.policy.nodes == both)
                seen_both.set()
                await poll(lambda: client.policy.nodes == one)
            finally:
                await client.close()

        following = run_asyncio(follow)

        async def seen() -> bool:
            return seen_both.is_set() or following.called

        await until(seen, within=20)
        self.b.kill()
        await following


class NoClusterTests(SynchronousTestCase):
    def test_a_static_list_still_works_and_reads_no_redis(self) -> None:
        client = BlockingCacheTierClient(["http://a/", "http://b/"])
        self.assertIsNone(client.membership)
        self.assertEqual(client.base_url, "http://a/")
        client.close()
