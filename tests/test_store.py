"""
The on-disk store: atomic publish, crash recovery, permissions.
"""

from __future__ import annotations

import json
import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from cachetier.objects import ObjectHeaders, Partial
from cachetier.store import BIG_BODY, CacheStore

HEADERS = ObjectHeaders(content_type="audio/mpeg", etag='"abc"', last_modified=1_700_000_000.0)


def publish(store: CacheStore, name: str, body: bytes) -> str:
    fd, temp = store.new_temp()
    os.write(fd, body)
    obj = store.commit(name, fd, temp, len(body), HEADERS, lifetime=3600)
    os.close(fd)
    store.install(obj)
    return obj.path


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.store = CacheStore.open(self.root)

    def reopen(self) -> CacheStore:
        return CacheStore.open(self.root)

    def test_directories_are_private_and_files_not_world_readable(self) -> None:
        path = publish(self.store, "a.mp3", b"data")
        for directory in (self.root, os.path.dirname(path)):
            self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                mode = stat.S_IMODE(os.stat(os.path.join(dirpath, f)).st_mode)
                self.assertEqual(mode & 0o077, 0, f)

    def test_restart_keeps_published_objects(self) -> None:
        publish(self.store, "a.mp3", b"aaaa")
        publish(self.store, "dir/b.mp3", b"bb")
        again = self.reopen()
        self.assertEqual(len(again), 2)
        self.assertEqual(again.total_bytes, 6)
        obj = again.get("dir/b.mp3")
        self.assertEqual((obj.size, obj.etag, obj.content_type), (2, '"abc"', "audio/mpeg"))
        with open(obj.path, "rb") as f:
            self.assertEqual(f.read(), b"bb")

    def test_a_name_and_a_name_below_it_can_both_be_cached(self) -> None:
        publish(self.store, "a", b"1")
        publish(self.store, "a/b", b"2")
        self.assertEqual(len(self.reopen()), 2)

    def test_temp_files_are_never_visible_and_removed_at_startup(self) -> None:
        fd, temp = self.store.new_temp()
        os.write(fd, b"partial")
        os.close(fd)
        self.assertEqual(len(self.store), 0)
        again = self.reopen()
        self.assertEqual(len(again), 0)
        self.assertFalse(os.path.exists(temp))

    def test_crash_after_body_rename_before_metadata(self) -> None:
        """
        The body is in place but no metadata names it: startup drops it.
        """
        fd, temp = self.store.new_temp()
        os.write(fd, b"body")
        os.close(fd)
        orphan = self.store.data_path("a.mp3", "deadbeef")
        os.makedirs(os.path.dirname(orphan), exist_ok=True)
        os.rename(temp, orphan)
        again = self.reopen()
        self.assertIsNone(again.get("a.mp3"))
        self.assertFalse(os.path.exists(orphan))

    def test_crash_during_replacement_keeps_the_old_version(self) -> None:
        """
        A new body and a half-written metadata file: the old version wins.
        """
        old_path = publish(self.store, "a.mp3", b"old!")
        directory = os.path.dirname(old_path)
        new_body = self.store.data_path("a.mp3", "feedface")
        with open(new_body, "wb") as f:
            f.write(b"new body")
        meta = [n for n in os.listdir(directory) if n.endswith(".json")][0]
        with open(os.path.join(directory, meta + ".tmp"), "w") as f:
            f.write('{"name": "a.mp3", "da')
        again = self.reopen()
        obj = again.get("a.mp3")
        self.assertEqual(obj.path, old_path)
        self.assertEqual(sorted(os.listdir(directory)), sorted([meta, os.path.basename(old_path)]))

    def test_metadata_whose_body_disagrees_is_dropped(self) -> None:
        path = publish(self.store, "a.mp3", b"1234")
        with open(path, "ab") as f:
            f.write(b"5")
        self.assertIsNone(self.reopen().get("a.mp3"))

    def test_corrupt_metadata_is_dropped(self) -> None:
        path = publish(self.store, "a.mp3", b"1234")
        meta = [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".json")][0]
        with open(os.path.join(os.path.dirname(path), meta), "w") as f:
            json.dump({"name": "a.mp3"}, f)
        self.assertIsNone(self.reopen().get("a.mp3"))

    def test_replacement_keeps_the_old_bytes_for_open_readers(self) -> None:
        publish(self.store, "a.mp3", b"old version")
        reader = open(self.store.get("a.mp3").path, "rb")
        self.addCleanup(reader.close)
        publish(self.store, "a.mp3", b"new!")
        self.assertEqual(reader.read(), b"old version")
        self.assertEqual(self.store.total_bytes, 4)
        with open(self.store.get("a.mp3").path, "rb") as f:
            self.assertEqual(f.read(), b"new!")
        self.assertEqual(len(self.reopen()), 1)

    def test_remove(self) -> None:
        path = publish(self.store, "a.mp3", b"1234")
        self.store.remove("a.mp3")
        self.assertIsNone(self.store.get("a.mp3"))
        self.assertEqual(self.store.total_bytes, 0)
        self.assertFalse(os.path.exists(path))
        self.assertEqual(len(self.reopen()), 0)

    def test_read_sees_what_another_process_published(self) -> None:
        reader = CacheStore(self.root)  # a worker's view: no recovery, no index
        self.assertIsNone(reader.read("a.mp3"))
        publish(self.store, "a.mp3", b"1234")
        obj = reader.read("a.mp3")
        self.assertEqual((obj.size, obj.path), (4, self.store.get("a.mp3").path))
        self.store.remove("a.mp3")
        self.assertIsNone(reader.read("a.mp3"))


class LeastRecentlyUsedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = [1000.0]
        self.store = CacheStore.open(os.path.abspath(self.mktemp()), now=lambda: self.now[0])

    def add(self, name: str, used_at: float | None = None) -> None:
        fd, temp = self.store.new_temp()
        os.write(fd, b"x")
        obj = self.store.commit(name, fd, temp, 1, HEADERS, lifetime=60)
        os.close(fd)
        self.store.install(obj, used_at)

    def tick(self) -> None:
        self.now[0] += 1

    def test_order_follows_the_last_request_not_the_publish(self) -> None:
        self.add("a")
        self.tick()
        asked_for_b = self.now[0]
        self.tick()
        self.store.used(self.store.get("a"))
        self.tick()
        # b's download started before a was last served, and ends now.
        self.add("b", used_at=asked_for_b)
        self.assertEqual(self.store.names(), ["b", "a"])

    def test_replacing_keeps_the_recency(self) -> None:
        self.add("a")
        self.tick()
        self.add("b")
        self.tick()
        self.add("a")  # a new version of a, not a request for it
        self.assertEqual(self.store.names(), ["a", "b"])

    def test_eviction_takes_the_least_recently_used_and_charges_metadata(self) -> None:
        self.store.max_size = 3 + 3 * 4096
        for name in ("a", "b", "c"):
            self.add(name)
            self.tick()
        self.store.used(self.store.get("a"))
        reservation = self.store.reserve(1)
        self.assertIsNotNone(reservation)
        self.assertEqual(self.store.names(), ["c", "a"])


class LeftoverExpiryTests(SynchronousTestCase):
    def test_a_leftover_nobody_resumes_is_removed_after_a_day_while_running(self) -> None:
        now = [1_800_000_000.0]
        store = CacheStore.open(os.path.abspath(self.mktemp()), now=lambda: now[0])
        partial = Partial("ep.mp3", 1 << 20, '"v1"', ObjectHeaders("audio/mpeg"), None)
        fd, _ = store.open_partial("ep.mp3", '"v1"', fresh=True)
        os.ftruncate(fd, 1 << 20)
        os.pwrite(fd, b"x" * 65536, 0)
        store.save_partial(fd, partial)
        os.close(fd)
        store.keep_partial(partial)
        tmp = os.path.join(store.root, "tmp")
        self.assertEqual(len(os.listdir(tmp)), 2)
        now[0] += 23 * 3600
        store.expire_partials()
        self.assertIsNotNone(store.partial("ep.mp3"), "younger than a day: kept")
        now[0] += 2 * 3600
        store.expire_partials()
        self.assertEqual(os.listdir(tmp), [])


class RetiredBodyTests(SynchronousTestCase):
    """
    Unlinking a multi-gigabyte body can take seconds: the store only moves
    it aside (a rename) and hands the unlink to its C{discard}, which the
    service runs in a thread.
    """

    def test_replaced_evicted_and_purged_bodies_are_unlinked_by_discard(self) -> None:
        root = os.path.abspath(self.mktemp())
        discarded: list[str] = []
        store = CacheStore.open(root, max_size=3 * BIG_BODY, discard=discarded.append)
        big = b"x" * BIG_BODY
        old = publish(store, "a.mp3", big)
        publish(store, "a.mp3", big)  # replaced
        publish(store, "b.mp3", big)
        self.assertIsNotNone(store.reserve(2 * BIG_BODY))  # evicts a, then b
        publish(store, "c.mp3", big)
        publish(store, "small.mp3", b"s")
        store.remove("c.mp3", durable=True)  # purged
        store.remove("small.mp3", durable=True)  # small: unlinked at once
        self.assertEqual(len(discarded), 4)
        for path in discarded:
            self.assertEqual(os.path.dirname(path), os.path.join(root, "tmp"))
            self.assertTrue(os.path.exists(path), "left to discard to unlink")
        self.assertFalse(os.path.exists(old))
        self.assertEqual(store.names(), [])
        self.assertEqual(
            sorted(os.listdir(os.path.join(CacheStore.open(root).root, "tmp"))),
            [],
            "a restart removes what was retired but not yet unlinked",
        )
