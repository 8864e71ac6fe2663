"""
The on-disk cache: complete objects, their metadata, and an in-memory index.

Layout under the cache root (created 0700, files 0600)::

    tmp/<random>.part                 bodies being downloaded
    objects/<k2>/<key>.json           metadata: the commit point of an object
    objects/<k2>/<key>.<version>      the body the metadata names

C{key} is the SHA-256 of the name, so any valid name maps to one safe path
under the root whatever it contains, and C{a} and C{a/b} can both be cached.

Publishing renames the fsynced body to a fresh versioned name (invisible: no
metadata names it yet), then atomically replaces the metadata file.  A crash
at any step leaves either the old metadata naming the old body or the new
metadata naming the new body; startup removes whatever nothing names.
Replacing an object unlinks the old body only after the new metadata is in
place, and readers holding the old body open finish with the old bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from attrs import evolve, frozen
from twisted.logger import Logger

log = Logger()

_DIR_MODE = 0o700
_FILE_MODE = 0o600
# What each object's metadata file costs against the quota: one block.
META_BYTES = 4096


@frozen
class StoredObject:
    """
    A complete, verified object on disk.

    @ivar path: the body file; stable for the life of this version.
    @ivar etag: the origin's ETag, or one made from the version when the
        origin sent none (so conditional requests always work).
    @ivar last_modified: the origin's Last-Modified as a POSIX time, or the
        fetch time when it sent none.
    @ivar origin_etag: the validators the origin gave, for revalidation
    @ivar origin_last_modified: (L{None} when it gave none).
    @ivar expires_at: when the object stops being fresh and must be
        revalidated.
    """

    name: str
    path: str
    size: int
    etag: str
    last_modified: float
    content_type: str
    fetched_at: float
    expires_at: float
    origin_etag: str | None = None
    origin_last_modified: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "data": os.path.basename(self.path),
            "size": self.size,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "content_type": self.content_type,
            "fetched_at": self.fetched_at,
            "expires_at": self.expires_at,
            "origin_etag": self.origin_etag,
            "origin_last_modified": self.origin_last_modified,
        }

    @classmethod
    def from_json(cls, directory: str, raw: dict[str, Any]) -> StoredObject:
        return cls(
            name=raw["name"],
            path=os.path.join(directory, raw["data"]),
            size=raw["size"],
            etag=raw["etag"],
            last_modified=raw["last_modified"],
            content_type=raw["content_type"],
            fetched_at=raw["fetched_at"],
            expires_at=raw["expires_at"],
            origin_etag=raw["origin_etag"],
            origin_last_modified=raw["origin_last_modified"],
        )


@frozen
class ObjectHeaders:
    """
    What the origin said about a body, kept with it once it is published.

    @ivar max_age: the lifetime the origin gave (C{s-maxage}, else
        C{max-age}), or L{None} to use the configured TTL.
    @ivar no_store: the origin forbids caching (C{no-store} or C{private}).
    """

    content_type: str
    etag: str | None = None
    last_modified: float | None = None
    max_age: float | None = None
    no_store: bool = False


def _key(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CacheStore:
    """
    Complete objects on local disk, indexed in memory.

    L{get} never touches the disk.  L{commit} does all the slow, blocking
    file-system work of a publish and may run in a thread; L{install} makes
    the result visible and must run in the reactor thread, as must every
    other method.

    Capacity: published bytes plus the space reserved by downloads in
    progress never exceed C{max_size}, and reserving never leaves less than
    C{min_free} bytes free on the file system.  Making room evicts the least
    recently used objects; their readers finish, since an unlinked file
    stays readable through open descriptors.

    @param on_evict: called with each object evicted to make room.
    @param now: the clock for fetch and expiry times (thread-safe: L{commit}
        reads it from a thread).
    """

    def __init__(
        self,
        root: str,
        max_size: int | None = None,
        min_free: int = 0,
        on_evict: Callable[[StoredObject], None] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._now = now
        self.root = os.path.abspath(root)
        self._tmp = os.path.join(self.root, "tmp")
        self._objects = os.path.join(self.root, "objects")
        # Least recently used first, kept sorted by _last_used.
        self._index: OrderedDict[str, StoredObject] = OrderedDict()
        self._last_used: dict[str, float] = {}
        self.total_bytes = 0
        self.reserved = 0
        self.max_size = max_size
        self.min_free = min_free
        self._on_evict = on_evict

    @classmethod
    def open(cls, root: str, **kwargs: Any) -> CacheStore:
        """
        Create the directories if needed, recover from any crash and load the
        index.
        """
        store = cls(root, **kwargs)
        for path in (store.root, store._tmp, store._objects):
            os.makedirs(path, mode=_DIR_MODE, exist_ok=True)
            os.chmod(path, _DIR_MODE)
        store._recover()
        return store

    # --- lookups ---------------------------------------------------------

    def get(self, name: str) -> StoredObject | None:
        return self._index.get(name)

    def used(self, obj: StoredObject) -> None:
        """
        Mark C{obj} as just served, for least-recently-used eviction.
        """
        if obj.name in self._index:
            self._index.move_to_end(obj.name)
            self._last_used[obj.name] = self._now()

    def names(self) -> list[str]:
        return list(self._index)

    # --- capacity --------------------------------------------------------

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def reserve(self, size: int, keep: str | None = None) -> Reservation | None:
        """
        Set aside C{size} bytes for a download, evicting least recently used
        objects (never C{keep}) as needed.

        @return: the reservation, or L{None} if that much room cannot be
            made.
        """
        reservation = Reservation(self)
        return reservation if reservation.grow(size + META_BYTES, keep) else None

    def _make_room(self, size: int, keep: str | None) -> bool:
        if self.max_size is not None and size > self.max_size:
            return False
        candidates = iter([n for n in self._index if n != keep])
        while self._over(size):
            victim = next(candidates, None)
            if victim is None:
                return False
            obj = self.remove(victim)
            if obj is not None:
                log.info("evicted {name} ({size} bytes)", name=obj.name, size=obj.size)
                if self._on_evict is not None:
                    self._on_evict(obj)
        return True

    def _over(self, size: int) -> bool:
        charged = self.total_bytes + len(self._index) * META_BYTES + self.reserved + size
        if self.max_size is not None and charged > self.max_size:
            return True
        # Reserved bytes are not on disk yet; keep room for them too.
        return self.min_free > 0 and self.free_bytes() - self.reserved - size < self.min_free

    def __len__(self) -> int:
        return len(self._index)

    # --- writing ---------------------------------------------------------

    def new_temp(self) -> tuple[int, str]:
        """
        Create an empty temp file for a download.

        @return: a read-write file descriptor and the file's path.
        """
        path = os.path.join(self._tmp, secrets.token_hex(16) + ".part")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        return fd, path

    def write(self, fd: int, data: bytes) -> None:
        """
        Append C{data} to a temp file: the one place downloads write, so a
        full disk or an I/O error surfaces here as L{OSError}.
        """
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def discard_temp(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def data_path(self, name: str, version: str) -> str:
        """
        Where version C{version} of C{name}'s body lives: under the root
        whatever the name holds, because the name only enters as a hash.
        """
        key = _key(name)
        return os.path.join(self._objects, key[:2], f"{key}.{version}")

    def commit(
        self,
        name: str,
        fd: int,
        temp_path: str,
        size: int,
        headers: ObjectHeaders,
        lifetime: float,
    ) -> StoredObject:
        """
        Make a complete temp file durable as the next version of C{name}.

        Blocking; safe to call from a thread because it touches neither the
        index nor any other object's files.  The object is not visible until
        L{install}.
        """
        os.fsync(fd)
        version = secrets.token_hex(8)
        data_path = self.data_path(name, version)
        directory = os.path.dirname(data_path)
        os.makedirs(directory, mode=_DIR_MODE, exist_ok=True)
        os.rename(temp_path, data_path)
        now = self._now()
        obj = StoredObject(
            name=name,
            path=data_path,
            size=size,
            etag=headers.etag or f'"ct-{version}"',
            last_modified=headers.last_modified or now,
            content_type=headers.content_type,
            fetched_at=now,
            expires_at=now + lifetime,
            origin_etag=headers.etag,
            origin_last_modified=headers.last_modified,
        )
        self._write_meta(directory, _key(name), obj)
        return obj

    def _write_meta(self, directory: str, key: str, obj: StoredObject) -> None:
        meta_path = os.path.join(directory, key + ".json")
        tmp_path = meta_path + ".tmp"
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _FILE_MODE)
        try:
            os.write(fd, json.dumps(obj.to_json()).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp_path, meta_path)
        _fsync_dir(directory)

    def install(self, obj: StoredObject, used_at: float | None = None) -> None:
        """
        Make a committed object visible, retiring the version it replaces.

        @param used_at: when it was last asked for; a download's object was
            asked for when the download started, not when it was published.
            By default: the time of the version it replaces, or now.
        """
        old = self._index.pop(obj.name, None)
        if used_at is None:
            used_at = self._last_used.get(obj.name, self._now())
        self._index[obj.name] = obj
        self._last_used[obj.name] = used_at
        # Keep the order sorted: whatever was used since goes after it.
        later = []
        for name in reversed(self._index):
            if name != obj.name:
                if self._last_used[name] <= used_at:
                    break
                later.append(name)
        for name in reversed(later):
            self._index.move_to_end(name)
        self.total_bytes += obj.size
        if old is not None:
            self.total_bytes -= old.size
            if old.path != obj.path:
                self._unlink(old.path)

    def remove(self, name: str) -> StoredObject | None:
        """
        Forget C{name} and delete its files.  Readers with the body open
        finish reading it.
        """
        obj = self._index.pop(name, None)
        if obj is None:
            return None
        del self._last_used[name]
        self.total_bytes -= obj.size
        directory = os.path.dirname(obj.path)
        self._unlink(os.path.join(directory, _key(name) + ".json"))
        self._unlink(obj.path)
        return obj

    def renewed(self, obj: StoredObject, lifetime: float) -> StoredObject:
        """
        Durably record that the origin confirmed C{obj} (a 304): fresh for
        C{lifetime} more seconds, body untouched.  Blocking, like
        L{commit}; L{install} the result.
        """
        now = self._now()
        new = evolve(obj, fetched_at=now, expires_at=now + lifetime)
        self._write_meta(os.path.dirname(obj.path), _key(obj.name), new)
        return new

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def read(self, name: str) -> StoredObject | None:
        """
        C{name}'s object as its metadata file says now, without the index:
        for processes that serve from a store another process writes.
        """
        key = _key(name)
        path = os.path.join(self._objects, key[:2], key + ".json")
        try:
            with open(path, "rb") as f:
                obj = StoredObject.from_json(os.path.dirname(path), json.load(f))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return obj if obj.name == name else None

    # --- startup ---------------------------------------------------------

    def _recover(self) -> None:
        for entry in os.scandir(self._tmp):
            log.info("removing leftover temp file {path}", path=entry.path)
            self._unlink(entry.path)
        for bucket in os.scandir(self._objects):
            if bucket.is_dir():
                self._recover_bucket(bucket.path)
        # Without access times from before the restart, the oldest fetch is
        # the first to go.
        self._index = OrderedDict(sorted(self._index.items(), key=lambda kv: kv[1].fetched_at))
        self._last_used = {name: obj.fetched_at for name, obj in self._index.items()}
        log.info(
            "cache at {root}: {count} objects, {bytes} bytes",
            root=self.root,
            count=len(self._index),
            bytes=self.total_bytes,
        )

    def _recover_bucket(self, directory: str) -> None:
        names = os.listdir(directory)
        named: set[str] = set()
        for filename in names:
            if not filename.endswith(".json"):
                continue
            obj = self._load_meta(directory, filename)
            if obj is None:
                self._unlink(os.path.join(directory, filename))
            else:
                named.add(os.path.basename(obj.path))
                self._index[obj.name] = obj
                self.total_bytes += obj.size
        for filename in names:
            if not filename.endswith(".json") and filename not in named:
                # An interrupted publish or replacement: nothing names it.
                self._unlink(os.path.join(directory, filename))

    def _load_meta(self, directory: str, filename: str) -> StoredObject | None:
        path = os.path.join(directory, filename)
        try:
            with open(path, "rb") as f:
                obj = StoredObject.from_json(directory, json.load(f))
            if filename != _key(obj.name) + ".json":
                raise ValueError("metadata file does not match its name")
            if os.stat(obj.path).st_size != obj.size:
                raise ValueError("body size does not match metadata")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warn("dropping unusable cache entry {path}: {why}", path=path, why=str(e))
            return None
        return obj


class Reservation:
    """
    Space set aside for one download, grown as it turns out bigger and
    given back when it ends.
    """

    def __init__(self, store: CacheStore) -> None:
        self._store = store
        self.size = 0

    def grow(self, size: int, keep: str | None = None) -> bool:
        if not self._store._make_room(size, keep):
            return False
        self._store.reserved += size
        self.size += size
        return True

    def ensure(self, total: int) -> None:
        """
        Make sure C{total} bytes are reserved.

        @raise OSError: C{ENOSPC} when no more room can be made.
        """
        needed = total - self.size
        if needed > 0 and not (self.grow(max(needed, 1 << 20)) or self.grow(needed)):
            raise OSError(errno.ENOSPC, "the cache is full")

    def release(self) -> None:
        self._store.reserved -= self.size
        self.size = 0
