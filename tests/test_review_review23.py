"""
Review of issue 23 (the cluster) against DESIGN.md's rules for data: each
test reproduces one problem and fails on the code reviewed.
"""

from __future__ import annotations

import json
import os
import signal

from treq import content
from twisted.trial.unittest import TestCase

from cachetier.cluster.log import stream_id

from .helpers import http_client, start_origin
from .nodes import Node, start_node, until
from .redis_server import start_redis

TOKEN = "review-admin-token-0123456789"
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


class HungRedisTests(TestCase):
    """
    DESIGN.md: a slow or silent dependency holds no resource it shares
    with the serving path.  Every Redis call of a purge (and of ?wait's
    polls, the heartbeat, the node list) runs in the reactor's thread
    pool, the very pool a download's disk writes and its publish run in;
    a Redis that stops answering holds a thread for its timeout per call,
    so a burst of purges (one DELETE a file, as a CMS sends them) stalls
    every fill of the node behind them.
    """

    timeout = 120

    async def test_purges_to_a_hung_redis_do_not_stall_fills(self) -> None:
        origin, origin_url = start_origin(self)
        redis = await start_redis(self)
        nodes = ClusterNodes(self)
        node = await start_node(
            self, origin_url, f"--cluster={redis.url}", f"--admin-token-file={nodes.token_file}"
        )

        async def level() -> bool:
            return (await nodes.health(node))["cluster"]["status"] == "ok"

        await until(level, within=20.0)
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
