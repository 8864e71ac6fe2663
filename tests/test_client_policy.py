"""
The client's policy core: ranking, status cache, breakers.  No I/O.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from cachetier.client import CacheException, FileStatus, rank
from cachetier.client._policy import Policy, check_name

NODES = [f"http://cache{n}.example/" for n in range(4)]


def status(name: str, available: bool) -> FileStatus:
    return FileStatus(
        file=name,
        available=available,
        state="cached" if available else "syncing",
        download_url=f"http://cache0.example/files/{name}",
    )


class RankTests(SynchronousTestCase):
    def test_adding_a_fifth_node_moves_about_a_fifth_of_the_names_and_no_others(self) -> None:
        names = [f"episodes/{n}.mp3" for n in range(10_000)]
        before = {name: rank(NODES, name)[0] for name in names}
        new = "http://cache4.example/"
        after = {name: rank(NODES + [new], name)[0] for name in names}
        moved = [name for name in names if before[name] != after[name]]
        self.assertTrue(all(after[name] == new for name in moved), "moves only to the new node")
        self.assertGreater(len(moved), 0.17 * len(names))
        self.assertLess(len(moved), 0.23 * len(names))

    def test_ranking_is_stable_and_spreads_names(self) -> None:
        self.assertEqual(rank(NODES, "a.mp3"), rank(list(reversed(NODES)), "a.mp3"))
        firsts = [rank(NODES, f"{n}.mp3")[0] for n in range(4000)]
        for node in NODES:
            self.assertGreater(firsts.count(node), 800)


class NameTests(SynchronousTestCase):
    def test_invalid_names_raise(self) -> None:
        for bad in ("", "   ", "a/../b", "a//b", "a\\b", "a\x00b", "x" * 1025):
            with self.assertRaises(CacheException):
                check_name(bad)
        self.assertEqual(check_name(" /ep/1.mp3 "), "ep/1.mp3")


class PolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = 0.0
        self.policy = Policy(
            NODES,
            lambda: self.now,
            local_cache_time=120,
            negative_cache_time=5,
            breaker_threshold=2,
            breaker_cooloff=30,
        )

    def test_positive_answers_are_reused_longer_than_negative_ones(self) -> None:
        node = self.policy.choose("a")
        self.policy.succeeded(node, "a", status("a", True))
        self.policy.succeeded(node, "b", status("b", False))
        self.now = 4.9
        self.policy.probe_succeeded(node)  # its node is known alive
        self.assertTrue(self.policy.cached("a").available)
        self.assertFalse(self.policy.cached("b").available)
        self.now = 5.0
        self.assertIsNone(self.policy.cached("b"))
        self.assertTrue(self.policy.is_stale("b"))
        self.now = 119.9
        self.policy.probe_succeeded(node)  # its node is known alive
        self.assertIsNotNone(self.policy.cached("a"))
        self.now = 120
        self.assertIsNone(self.policy.cached("a"))

    def test_disabled_local_cache_always_asks(self) -> None:
        policy = Policy(NODES, lambda: 0.0, enable_local_cache=False)
        policy.succeeded(NODES[0], "a", status("a", True))
        self.assertIsNone(policy.cached("a"))

    def test_breaker_skips_a_failing_node_then_probes_it_once(self) -> None:
        first, second = rank(NODES, "a")[:2]
        self.policy.failed(first)
        self.assertEqual(self.policy.choose("a"), first, "one failure is not enough")
        self.policy.failed(first)
        self.assertEqual(self.policy.choose("a"), second, "open: fail over to the next")
        self.now = 30
        self.assertEqual(self.policy.choose("a"), first, "the probe")
        self.assertEqual(self.policy.choose("a"), second, "only one probe at a time")
        self.policy.succeeded(first, "a", status("a", True))
        self.assertFalse(self.policy.breaker_open(first))
        self.assertEqual(self.policy.choose("a"), first)

    def test_without_failover_an_open_breaker_fails_open_at_once(self) -> None:
        policy = Policy(NODES, lambda: 0.0, failover=False, breaker_threshold=1)
        policy.failed(rank(NODES, "a")[0])
        self.assertIsNone(policy.choose("a"))

    def test_download_url_is_the_answering_nodes(self) -> None:
        self.assertEqual(
            self.policy.download_url("a b.mp3"), rank(NODES, "a b.mp3")[0] + "files/a%20b.mp3"
        )
        answered = FileStatus("a", True, "cached", "https://cdn.example/files/a")
        self.policy.succeeded(NODES[2], "a", answered)
        self.assertEqual(self.policy.download_url("a"), "https://cdn.example/files/a")

    def test_status_from_json_rejects_garbage(self) -> None:
        for bad in ([], "x", {"available": True}):
            with self.assertRaises(ValueError):
                FileStatus.from_json(bad)
