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

import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator

from attrs import evolve, frozen
from twisted.logger import Logger

log = Logger()

_DIR_MODE = 0o700
_FILE_MODE = 0o600


@frozen
class StoredObject:
    """
    A complete, verified object on disk.

    @ivar path: the body file; stable for the life of this version.
    @ivar etag: the origin's ETag, or one made from the version when the
        origin sent none (so conditional requests always work).
    @ivar last_modified: the origin's Last-Modified as a POSIX time, or the
        fetch time when it sent none.
    """

    name: str
    path: str
    size: int
    etag: str
    last_modified: float
    content_type: str
    fetched_at: float

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "data": os.path.basename(self.path),
            "size": self.size,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "content_type": self.content_type,
            "fetched_at": self.fetched_at,
        }


@frozen
class ObjectHeaders:
    """
    What the origin said about a body, kept with it once it is published.
    """

    content_type: str
    etag: str | None = None
    last_modified: float | None = None


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
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._tmp = os.path.join(self.root, "tmp")
        self._objects = os.path.join(self.root, "objects")
        self._index: dict[str, StoredObject] = {}
        self.total_bytes = 0

    @classmethod
    def open(cls, root: str) -> CacheStore:
        """
        Create the directories if needed, recover from any crash and load the
        index.
        """
        store = cls(root)
        for path in (store.root, store._tmp, store._objects):
            os.makedirs(path, mode=_DIR_MODE, exist_ok=True)
            os.chmod(path, _DIR_MODE)
        store._recover()
        return store

    # --- lookups ---------------------------------------------------------

    def get(self, name: str) -> StoredObject | None:
        return self._index.get(name)

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[StoredObject]:
        return iter(list(self._index.values()))

    # --- writing ---------------------------------------------------------

    def new_temp(self) -> tuple[int, str]:
        """
        Create an empty temp file for a download.

        @return: a read-write file descriptor and the file's path.
        """
        path = os.path.join(self._tmp, secrets.token_hex(16) + ".part")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        return fd, path

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
        self, name: str, fd: int, temp_path: str, size: int, headers: ObjectHeaders
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
        now = time.time()
        obj = StoredObject(
            name=name,
            path=data_path,
            size=size,
            etag=headers.etag or f'"ct-{version}"',
            last_modified=headers.last_modified or now,
            content_type=headers.content_type,
            fetched_at=now,
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

    def install(self, obj: StoredObject) -> None:
        """
        Make a committed object visible, retiring the version it replaces.
        """
        old = self._index.get(obj.name)
        self._index[obj.name] = obj
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
        self.total_bytes -= obj.size
        directory = os.path.dirname(obj.path)
        self._unlink(os.path.join(directory, _key(name) + ".json"))
        self._unlink(obj.path)
        return obj

    def touch(self, obj: StoredObject, **changes: object) -> StoredObject:
        """
        Rewrite an object's metadata (for example a renewed fetch time)
        without touching its body.
        """
        new = evolve(obj, **changes)
        key = _key(obj.name)
        self._write_meta(os.path.dirname(obj.path), key, new)
        self._index[obj.name] = new
        return new

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    # --- startup ---------------------------------------------------------

    def _recover(self) -> None:
        for entry in os.scandir(self._tmp):
            log.info("removing leftover temp file {path}", path=entry.path)
            self._unlink(entry.path)
        for bucket in os.scandir(self._objects):
            if bucket.is_dir():
                self._recover_bucket(bucket.path)
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
                raw = json.load(f)
            obj = StoredObject(
                name=raw["name"],
                path=os.path.join(directory, raw["data"]),
                size=raw["size"],
                etag=raw["etag"],
                last_modified=raw["last_modified"],
                content_type=raw["content_type"],
                fetched_at=raw["fetched_at"],
            )
            if filename != _key(obj.name) + ".json":
                raise ValueError("metadata file does not match its name")
            if os.stat(obj.path).st_size != obj.size:
                raise ValueError("body size does not match metadata")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warn("dropping unusable cache entry {path}: {why}", path=path, why=str(e))
            return None
        return obj
