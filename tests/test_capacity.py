"""
Disk capacity (quota, reservations, LRU eviction, write failures), the
object size limit and the flood caps, over real sockets (the flood of
status calls in memory, with a clock).
"""

from __future__ import annotations

import errno
import json
import os

from treq import content
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed

from cachetier.errors import Reason
from cachetier.objects import ObjectHeaders
from cachetier.store import META_BYTES, CacheStore

from .helpers import CacheTestCase, MemoryCacheTestCase, body_of


def disk_usage(root: str) -> int:
    """
    Bytes of every file under C{root}, as C{du -sb} would count them.  A
    file renamed or removed between the listing and its C{stat} (a commit
    or an eviction in a thread) is counted where it is found, or not at all.
    """
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except FileNotFoundError:
                pass
    return total


MiB = 1 << 20


class CapacityTestCase(CacheTestCase):
    def fetch(self, name: str) -> Deferred[tuple[int, bytes]]:
        """
        GET C{name} without following a redirect: its status and body.
        """

        async def fetch() -> tuple[int, bytes]:
            response = await self.client.get(self.url + "files/" + name, allow_redirects=False)
            return response.code, await content(response)

        return Deferred.fromCoroutine(fetch())

    def sample_disk(self) -> list[int]:
        samples: list[int] = []
        sampler = LoopingCall(lambda: samples.append(disk_usage(self.cache.store.root)))
        sampler.start(0.005)
        self.addCleanup(sampler.stop)
        return samples


class EvictionTests(CapacityTestCase):
    settings = {"max_size": 350_000}

    async def test_least_recently_used_files_are_evicted(self) -> None:
        for name in ("a", "b", "c", "d", "e"):
            self.origin.put(name, body_of(100_000, name))
        samples = self.sample_disk()
        for name in ("a", "b", "c"):
            await self.fetch(name)
            await self.settle(name)
        await self.fetch("a")  # a is now the most recently used
        await self.fetch("d")
        await self.settle("d")
        self.assertEqual(sorted(self.cache.store.names()), ["a", "c", "d"])
        await self.fetch("e")
        await self.settle("e")
        self.assertEqual(sorted(self.cache.store.names()), ["a", "d", "e"])
        self.assertLessEqual(max(samples), 350_000)
        self.assertEqual(self.cache.store.total_bytes, 300_000)

    async def test_concurrent_fills_never_overshoot_the_quota(self) -> None:
        for name in ("x", "y", "z"):
            self.origin.put(name, body_of(150_000, name))
        self.origin.rate = 1_000_000
        samples = self.sample_disk()
        results = await gatherResults([self.fetch(n) for n in ("x", "y", "z")])
        codes = sorted(code for code, _ in results)
        self.assertEqual(codes, [200, 200, 503], "the third does not fit next to the first two")
        refused = [body for code, body in results if code == 503][0]
        self.assertEqual(json.loads(refused)["error"], "no_space")
        for name in ("x", "y", "z"):
            await self.settle(name)
        self.assertLessEqual(max(samples), 350_000)
        self.assertEqual(self.cache.store.reserved, 0)


def allocated(root: str) -> int:
    """
    Bytes every file under C{root} takes on disk, as C{du} counts them
    (a sparse fill's body is laid out at full length, mostly holes).
    """
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


class LeftoverTests(CapacityTestCase):
    settings = {"max_size": 64 * MiB}

    async def test_leftovers_of_stopped_fills_count_and_are_evicted(self) -> None:
        for n in range(4):
            self.origin.put(
                f"cut{n}.mp4", body_of(20 * MiB, str(n)), ranges=True, die_after=12 * MiB
            )
            await self.cache.syncer.start(f"cut{n}.mp4").when_done().addErrback(lambda _: None)
        leftovers = [f for f in os.listdir(os.path.join(self.cache.store.root, "tmp"))]
        self.assertEqual(len(leftovers), 8, "four resumable leftovers and their records")
        for n in range(2):
            data = body_of(20 * MiB, f"whole{n}")
            self.origin.put(f"whole{n}.mp4", data, ranges=True)
            await self.cache.syncer.start(f"whole{n}.mp4").when_done()
        self.assertLessEqual(allocated(self.cache.store.root), 64 * MiB)
        self.assertEqual(sorted(self.cache.store.names()), ["whole0.mp4", "whole1.mp4"])


class WriteFailureTests(CapacityTestCase):
    async def test_a_failing_disk_aborts_the_sync_and_keeps_what_is_cached(self) -> None:
        kept = body_of(50_000, "kept")
        self.origin.put("kept.mp3", kept)
        await self.cache.syncer.start("kept.mp3").when_done()
        store = self.cache.store
        real_write = store.write

        def full_disk(fd: int, data: bytes, offset: int) -> None:
            if offset + len(data) > 100_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_write(fd, data, offset)

        store.write = full_disk  # the store's write seam
        self.origin.put("big.mp3", body_of(1_000_000))
        with self.assertRaises(ResponseFailed):
            await self.fetch("big.mp3")
        status = self.cache.syncer.status("big.mp3", start=False)
        self.assertEqual((status.state, status.error.reason), ("error", Reason.no_space))
        self.assertEqual(os.listdir(os.path.join(store.root, "tmp")), [])
        self.assertEqual(await self.fetch("kept.mp3"), (200, kept))


class ObjectSizeTests(CapacityTestCase):
    settings = {"max_object_size": 100_000}

    async def test_bigger_objects_are_redirected_to_the_origin(self) -> None:
        self.origin.put("huge.mp4", body_of(200_000))
        for _ in range(2):
            response = await self.client.get(self.url + "files/huge.mp4", allow_redirects=False)
            self.assertEqual(response.code, 302)
            self.assertEqual(
                response.headers.getRawHeaders(b"location"),
                [(self.origin_url + "huge.mp4").encode()],
            )
        self.assertEqual(self.origin.counts["huge.mp4"], 1, "the verdict is remembered")
        self.assertIsNone(self.cache.store.get("huge.mp4"))


class FloodTests(MemoryCacheTestCase):
    # In memory: the token bucket refills with its clock, and a real one
    # let a loaded machine's slow loop earn a sixth sync.
    settings = {"max_syncs_per_second": 5}

    def test_a_flood_of_status_calls_is_capped(self) -> None:
        states = []
        for n in range(20):
            _, _, body = self.request("GET", f"api/v1/files/random-{n}.mp3")
            states.append(json.loads(body))
        started = [s for s in states if s["state"] != "missing"]
        refused = [s for s in states if s["state"] == "missing"]
        self.assertEqual(len(started), 5)
        self.assertTrue(all(s["error"].startswith("overloaded") for s in refused))
        code, _, body = self.get("one-more.mp3")
        self.assertEqual((code, json.loads(body)["error"]), (503, "overloaded"))
        for n in range(20):
            self.settle(f"random-{n}.mp3")
        self.assertEqual(sum(self.origin.counts.values()), 5)


class QueueCapTests(CapacityTestCase):
    settings = {"max_concurrent_syncs": 1, "max_queued_syncs": 2}

    async def test_syncs_past_the_queue_are_refused(self) -> None:
        self.origin.hang.update({"q0", "q1", "q2", "q3"})
        states = []
        for n in range(4):
            response = await self.client.get(self.url + f"api/v1/files/q{n}")
            states.append(json.loads(await content(response))["state"])
        self.assertEqual(states, ["syncing", "syncing", "syncing", "missing"])
        self.assertEqual((self.cache.syncer.in_flight, self.cache.syncer.queued), (1, 2))


class MinFreeTests(SynchronousTestCase):
    def test_reservations_keep_min_free_on_the_file_system(self) -> None:
        free = [1_500_000]  # a file system with 1.5 MB free
        store = CacheStore.open(
            os.path.abspath(self.mktemp()), min_free=1_000_000, free_bytes=lambda: free[0]
        )
        fd, temp = store.new_temp()
        os.write(fd, b"x" * 100)
        obj = store.commit("old", fd, temp, 100, ObjectHeaders("audio/mpeg"), lifetime=60)
        os.close(fd)
        store.install(obj)
        first = store.reserve(400_000)
        self.assertIsNotNone(first)
        self.assertIsNone(store.reserve(400_000, keep="old"))
        self.assertIsNotNone(store.get("old"))
        free[0] = 1_900_000
        self.assertIsNotNone(store.reserve(400_000))
        self.assertEqual(store.reserved, 2 * (400_000 + META_BYTES))
