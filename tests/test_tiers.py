"""
A shield tier: real C{twistd} nodes on loopback addresses of their own (an
edge's fills go to the shield that ranks first for the name, which fetches
from the test origin once), against the real test origin.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import TestCase

from .helpers import body_of, http_client, read_response, start_origin
from .nodes import Node, start_node


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
