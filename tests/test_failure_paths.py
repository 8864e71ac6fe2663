"""
Every failure path the never-falls-over work named, each staged at a seam:
nothing is leaked, nothing lost, no reader left hanging.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Any

from treq import content
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from cachetier.errors import OriginError, Reason
from cachetier.objects import ObjectHeaders
from cachetier.origin import Origin, OriginResponse
from cachetier.store import GENERATION_FILE, CacheStore, Handle
from cachetier.sync import Fill, Syncer
from cachetier.web.api import FileStatusResource, PurgeResource
from cachetier.web.health import Health
from cachetier.web.proxy import PrimaryProxy

from .helpers import TestOrigin, body_of, http_client, start_cachetier, start_origin


def files_under(root: str) -> list[str]:
    """
    The files of objects and downloads under a store's root.
    """
    return sorted(
        os.path.relpath(os.path.join(dirpath, f), root)
        for dirpath, _, files in os.walk(root)
        for f in files
        if f != GENERATION_FILE
    )


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


class _Faults:
    """
    C{os.open} and C{os.fsync} stand-ins that fail with C{errno} when a
    switch is on: the seams a store takes.
    """

    def __init__(self) -> None:
        self.fail_temp = 0
        self.fail_dir_fsync = 0
        # Each directory fsynced, with what it held then.
        self.synced_dirs: list[tuple[str, list[str]]] = []

    def open_file(self, path: str, flags: int, *args: Any) -> int:
        if path.endswith(".part") and self.fail_temp:
            raise OSError(self.fail_temp, os.strerror(self.fail_temp))
        return os.open(path, flags, *args)

    def fsync(self, fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            if self.fail_dir_fsync:
                raise OSError(self.fail_dir_fsync, os.strerror(self.fail_dir_fsync))
            path = os.readlink(f"/proc/self/fd/{fd}")
            self.synced_dirs.append((path, sorted(os.listdir(path))))
        os.fsync(fd)


class SyncFailureTests(SynchronousTestCase):
    def make(self, run_in_thread: Any = None, **kwargs: Any) -> Syncer:
        self.clock = Clock()
        self.origin = TestOrigin()
        self.treq = StubTreq(self.origin)
        self.faults = _Faults()
        self.store = CacheStore.open(
            os.path.abspath(self.mktemp()),
            now=self.clock.seconds,
            open_file=self.faults.open_file,
            fsync=self.faults.fsync,
            **kwargs,
        )
        origin = Origin("http://origin.test/", self.treq, self.clock, timeout=30)
        return Syncer(
            origin,
            self.store,
            self.clock,
            run_in_thread or (lambda f, *a: maybeDeferred(f, *a)),
            ttl=60,
        )

    def sync(self, syncer: Syncer, name: str) -> Deferred[Any]:
        done = syncer.start(name).when_done()
        self.treq.flush()
        return done

    def test_a_failed_temp_file_create_releases_its_reservation(self) -> None:
        syncer = self.make(max_size=1_000_000)
        self.origin.put("a.mp3", body_of(300_000))
        self.faults.fail_temp = errno.EMFILE
        self.failureResultOf(self.sync(syncer, "a.mp3"))
        self.assertEqual(self.store.reserved, 0)
        self.faults.fail_temp = 0
        syncer.purge("a.mp3")
        self.successResultOf(self.sync(syncer, "a.mp3"))
        self.assertEqual(self.store.reserved, 0)

    def test_a_commit_failing_after_the_rename_leaves_no_body_behind(self) -> None:
        syncer = self.make(max_size=1_000_000)
        self.origin.put("a.mp3", body_of(100_000))
        self.faults.fail_dir_fsync = errno.EIO
        for _ in range(3):
            syncer.purge("a.mp3")
            self.failureResultOf(self.sync(syncer, "a.mp3"))
        self.assertIsNone(self.store.get("a.mp3"))
        self.assertEqual(self.store.reserved, 0)
        self.assertEqual(files_under(self.store.root), [])

    def hold(self) -> tuple[Any, Any]:
        """
        A run_in_thread that holds each call until C{release}.
        """
        held: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

        def hold(f: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            held.append((d, f, args))
            return d

        def release() -> int:
            count = len(held)
            while held:
                d, f, args = held.pop(0)
                d.callback(f(*args))
                self.treq.flush()
            return count

        return hold, release

    def test_a_purge_during_a_publish_is_durable(self) -> None:
        hold, release = self.hold()
        syncer = self.make(run_in_thread=hold)
        self.origin.put("a.mp3", body_of(10_000))
        done = self.sync(syncer, "a.mp3")
        self.assertEqual(syncer.fill_for("a.mp3").state, "publishing")
        self.assertTrue(syncer.purge("a.mp3"))
        self.faults.synced_dirs.clear()
        release()  # the commit: rename, metadata, directory fsync
        self.successResultOf(done)
        self.assertIsNone(self.store.get("a.mp3"))
        self.assertEqual(files_under(self.store.root), [])
        last = dict(self.faults.synced_dirs)
        bucket = [path for path in last if "/objects/" in path]
        self.assertEqual([last[path] for path in bucket], [[]], "last fsynced with its files")

    def test_a_purge_while_a_sparse_fill_records_its_start_stops_it(self) -> None:
        hold, release = self.hold()
        syncer = self.make(run_in_thread=hold)
        self.origin.put("v.mp4", body_of(9 << 20), ranges=True)
        old = syncer.start("v.mp4")
        self.treq.flush()  # the first answer; its first record is being saved
        self.assertTrue(syncer.purge("v.mp4"))
        written = old.written
        while release():
            pass
        failure = self.failureResultOf(old.when_done(), OriginError)
        self.assertIs(failure.value.reason, Reason.cancelled)
        self.assertLess(old.written - written, 1 << 20, "the purged fill went on downloading")

    def test_the_health_probe_touches_the_disk_in_a_thread(self) -> None:
        hold, release = self.hold()
        syncer = self.make(run_in_thread=hold)
        health = Health(self.store, syncer)
        self.store.writable = lambda: "Read-only file system"  # type: ignore[method-assign]
        self.assertEqual(health.verdict()["status"], "ok", "the disk was not asked yet")
        self.assertEqual(release(), 1, "asked in a thread")
        self.clock.advance(1)
        self.assertEqual(health.verdict()["status"], "failing")

    def test_a_304_after_a_purge_writes_no_metadata(self) -> None:
        held: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

        def hold(f: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            held.append((d, f, args))
            return d

        def release() -> None:
            while held:
                d, f, args = held.pop(0)
                d.callback(f(*args))

        syncer = self.make(run_in_thread=hold)
        self.origin.put("a.mp3", body_of(10_000))
        done = self.sync(syncer, "a.mp3")
        release()
        self.successResultOf(done)
        self.clock.advance(61)
        syncer.status("a.mp3")  # starts the revalidation: the origin says 304
        self.treq.flush()
        syncer.purge("a.mp3")  # while the renewal is on its way to the disk
        release()
        self.assertEqual(files_under(self.store.root), [])
        self.assertIsNone(self.store.get("a.mp3"))

    def admin(self, syncer: Syncer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        api = Resource()
        api.putChild(b"files", FileStatusResource(syncer, None, b"token"))
        api.putChild(b"purge", PurgeResource(syncer, b"token"))
        treq = StubTreq(api)
        response = self.successResultOf(
            treq.request(
                method,
                "http://cache.test/" + path,
                headers={b"authorization": [b"Bearer token"]},
                data=None if body is None else json.dumps(body).encode(),
            )
        )
        return response.code, self.successResultOf(content(response))

    def test_a_purge_is_durable_before_it_is_answered(self) -> None:
        syncer = self.make()
        for method, path, body in (
            ("DELETE", "files/a.mp3", None),
            ("POST", "purge", {"files": ["a.mp3"]}),
            ("POST", "purge", {"prefix": "a."}),
        ):
            self.origin.put("a.mp3", body_of(10_000))
            self.successResultOf(self.sync(syncer, "a.mp3"))
            bucket = os.path.dirname(self.store.get("a.mp3").path)  # type: ignore[union-attr]
            self.faults.synced_dirs.clear()
            code, reply = self.admin(syncer, method, path, body)
            self.assertEqual(code, 200, reply)
            self.assertIn(b"a.mp3", reply)
            # The directory was fsynced once its files were gone.
            synced = self.faults.synced_dirs
            self.assertIn((bucket, []), synced, f"{method} {path} {body}: fsynced {synced}")

    def test_a_purge_that_cannot_be_made_durable_is_not_answered_purged(self) -> None:
        syncer = self.make()
        self.origin.put("a.mp3", body_of(10_000))
        self.successResultOf(self.sync(syncer, "a.mp3"))
        generation = self.store.generation.value  # type: ignore[union-attr]
        self.faults.fail_dir_fsync = errno.EIO
        code, reply = self.admin(syncer, "DELETE", "files/a.mp3")
        self.assertEqual(code, 500, reply)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        # Forgotten all the same, in every process.
        self.assertIsNone(self.store.get("a.mp3"))
        self.assertGreater(self.store.generation.value, generation)  # type: ignore[union-attr]
        self.assertEqual(files_under(self.store.root), [])

    def test_a_404_while_revalidating_keeps_the_stale_copy(self) -> None:
        """
        The copy stays, unharmed; but an origin that answers 404 has not
        failed, so stale-if-error does not serve it: the status says what
        a listener gets, the origin's 404.
        """
        syncer = self.make()
        self.origin.put("a.mp3", body_of(10_000))
        stored = self.successResultOf(self.sync(syncer, "a.mp3"))
        self.clock.advance(61)
        self.origin.status["a.mp3"] = 404
        syncer.status("a.mp3")
        self.treq.flush()
        self.assertEqual(self.store.get("a.mp3"), stored)
        self.assertEqual(syncer.status("a.mp3").state, "not_found")
        del self.origin.status["a.mp3"]
        self.clock.advance(61)
        syncer.status("a.mp3")
        self.treq.flush()
        self.assertEqual(syncer.status("a.mp3").state, "cached")


class FillDescriptorTests(SynchronousTestCase):
    def test_following_a_fill_takes_no_new_descriptor(self) -> None:
        store = CacheStore.open(os.path.abspath(self.mktemp()))
        fd, path = store.new_temp()
        self.addCleanup(store.discard_temp, path)
        fill = Fill("a.mp3", 0.0)
        response = OriginResponse(ObjectHeaders("audio/mpeg"), 10, None, None)
        download = Handle(fd)
        fill.begin(response, download, store.write)
        before = open_descriptors()
        followers = [object() for _ in range(5)]
        handles = [fill.follow(f) for f in followers]  # type: ignore[arg-type]
        self.assertEqual(open_descriptors(), before)
        # The download and the fill let go: the followers still read.
        download.release()
        fill.close()
        for follower, handle in zip(followers, handles, strict=True):
            self.assertEqual(os.fstat(handle.fd).st_size, 0)
            fill.unfollow(follower)  # type: ignore[arg-type]
            handle.release()
        self.assertEqual(open_descriptors(), before - 1)


class MinFreeTests(SynchronousTestCase):
    def test_bytes_already_written_are_not_counted_twice(self) -> None:
        disk = {"free": 1_500_000}
        store = CacheStore.open(
            os.path.abspath(self.mktemp()), min_free=1_000_000, free_bytes=lambda: disk["free"]
        )
        first = store.reserve(400_000)
        assert first is not None
        first.ensure(400_000)
        disk["free"] -= 400_000  # the download wrote its bytes
        first.wrote(400_000)
        # 1.1 MB free, nothing more promised: 50 KB more leave 1.05 MB.
        self.assertIsNotNone(store.reserve(50_000))

    def test_min_free_never_evicts_a_body_still_open(self) -> None:
        root = os.path.abspath(self.mktemp())

        def free() -> int:
            # A file system of 1.5 MB: bodies on disk, and unlinked ones
            # still held open, take space.
            used = sum(os.path.getsize(os.path.join(root, f)) for f in files_under(root))
            if os.fstat(reader.fd).st_nlink == 0:
                used += 200_000
            return 1_500_000 - used

        store = CacheStore.open(root, min_free=1_000_000, free_bytes=free)
        for name in ("open", "closed"):
            fd, temp = store.new_temp()
            os.write(fd, b"x" * 200_000)
            store.install(store.commit(name, fd, temp, 200_000, ObjectHeaders("a/b"), 60))
            os.close(fd)
        reader = store.handles.acquire(store.get("open"))  # type: ignore[arg-type]
        self.addCleanup(reader.release)
        self.assertIsNotNone(store.reserve(150_000))
        self.assertEqual(store.names(), ["open"])


class _FailingAgent:
    def request(self, *args: Any) -> Deferred[Any]:
        def cancel(d: Deferred[Any]) -> None:
            d.errback(ResponseNeverReceived([Failure(Exception("cancelled mid-connect"))]))

        return Deferred(cancel)


class _ListenerRequest(DummyRequest):
    """
    A request whose listener can go away, after which finishing it raises,
    as L{twisted.web.http.Request.finish} does.
    """

    _gone = False

    def lose(self) -> None:
        self._gone = True
        observers, self._finishedDeferreds = self._finishedDeferreds, None
        for d in observers:
            d.errback(Failure(Exception("listener went away")))

    def finish(self) -> None:
        if self._gone:
            raise RuntimeError("Request.finish called after its connection was lost")
        super().finish()


class RelayTests(SynchronousTestCase):
    def test_a_listener_that_gives_up_is_not_answered(self) -> None:
        proxy = PrimaryProxy(_FailingAgent())  # type: ignore[arg-type]
        request = _ListenerRequest([b"files", b"a.mp3"])
        request.uri = b"/files/a.mp3"
        proxy.render(request)
        request.lose()
        self.assertEqual(request.finished, 0)
        self.assertEqual(request.written, [])
        self.assertEqual(self.flushLoggedErrors(), [])


class OriginHeaderTests(TestCase):
    timeout = 10

    async def test_a_non_ascii_content_type_is_served_and_cached(self) -> None:
        origin, origin_url = start_origin(self)
        cache, url = start_cachetier(self, origin_url)
        client = http_client(self)
        origin.put("a.mp3", body_of(5_000), content_type="audio/mpeg; name=caf\xe9")
        for method in ("GET", "HEAD", "GET"):
            response = await client.request(method, url + "files/a.mp3")
            self.assertEqual(response.code, 200, method)
            self.assertEqual(
                response.headers.getRawHeaders(b"content-type"),
                ["audio/mpeg; name=caf\xc3\xa9".encode("latin-1")],
            )
            body = await content(response)
            self.assertEqual(body, b"" if method == "HEAD" else body_of(5_000))
            fill = cache.syncer.fill_for("a.mp3")
            if fill is not None:
                await fill.when_done()
        self.assertIsNotNone(cache.store.get("a.mp3"))
