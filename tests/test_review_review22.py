"""
Review of issue 22 (the shield tier and hops) against DESIGN.md's rules
for data: each test reproduces one problem and fails until it is fixed.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from .helpers import body_of, header, http_client, read_response, start_cachetier, start_origin


class ReviewTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.origin, self.origin_url = start_origin(self)
        self.client = http_client(self)

    async def get(self, url: str, **headers: str) -> tuple[int, Any, bytes]:
        sent = {k.replace("_", "-"): [v] for k, v in headers.items()}
        return await read_response(await self.client.get(url, headers=sent))

    def tier(self) -> tuple[Any, str, Any, str]:
        shield, shield_url = start_cachetier(self, self.origin_url, node_name="shield1")
        edge, edge_url = start_cachetier(
            self, self.origin_url, node_name="edge1", shields=(shield_url,)
        )
        return shield, shield_url, edge, edge_url

    async def test_a_listeners_cdn_loop_does_not_take_the_shield_down(self) -> None:
        """
        Rule 12 (edges are recognised only by the cluster secret; a shield's
        health is the shield's): a listener who names the shield in its
        own CDN-Loop makes the shield answer the edge's fill 508, which the
        edge counts as the shield's own failure: the shield is down for
        every name, every listener, and the origin gets every miss.
        """
        self.origin.put("a.mp3", body_of(1000, "a"))
        self.origin.put("b.mp3", body_of(1000, "b"))
        _, _, _, edge_url = self.tier()
        await self.get(edge_url + "files/a.mp3", cdn_loop="cachetier; node=shield1")
        code, _, body = await self.get(edge_url + "healthz")
        self.assertEqual(json.loads(body)["shields_down"], [])
        # Another listener's miss goes through the shield as before.
        code, headers, _ = await self.get(edge_url + "files/b.mp3")
        self.assertEqual(code, 200)
        self.assertEqual(header(headers, "via"), ["1.1 shield1", "1.1 edge1"])

    async def test_a_long_cdn_loop_member_does_not_stall_the_reactor(self) -> None:
        """
        Rule 9 (every resource bounded; the reactor is one): the CDN-Loop
        a listener sends is parsed on the reactor thread with a regular
        expression that backtracks quadratically on a parameter without
        C{=} (cachetier.hops._PARAMETER), so one 15 kB header stalls the
        node for every listener for about a second; a linear parse takes
        about a millisecond.
        """
        self.origin.put("a.mp3", body_of(1000))
        _, url = start_cachetier(self, self.origin_url, node_name="edge1")
        started = reactor.seconds()
        code, _, _ = await self.get(
            url + "files/a.mp3", cdn_loop="cachetier; " + "a" * 15000 + ", cachetier; node=edge1"
        )
        self.assertEqual(code, 508)
        self.assertLess(reactor.seconds() - started, 0.25)

    async def test_shields_that_left_the_cluster_are_forgotten(self) -> None:
        """
        Rule 9 (every table bounded): with C{--shield=cluster}, every URL
        membership ever named stays in L{Upstreams.shields} and keeps a
        C{cachetier_upstream_up} series in /metrics, so a cluster whose
        shields come back at new addresses (containers) grows the edge's
        table and its metrics without end.
        """
        edge, url = start_cachetier(
            self, self.origin_url, node_name="edge1", shields=("http://127.0.0.1:9/",)
        )
        for n in range(100):
            edge.upstreams.follow([f"http://10.0.{n // 250}.{n % 250 + 1}:8080/"])
        _, _, body = await self.get(url + "metrics")
        series = [
            line for line in body.decode().splitlines() if line.startswith("cachetier_upstream_up{")
        ]
        self.assertLessEqual(len(series), 1)
        self.assertLessEqual(len(edge.upstreams.shields), 1)
