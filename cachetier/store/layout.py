"""
The cache's files on disk: complete objects (and answers kept as they came),
their metadata, publishing, recovery.  Under the root (0700, files 0600)::

    tmp/<random>.part                   bodies being downloaded
    tmp/<key>.<version>.partial(.json)  a sparse body, what of it is on disk
    tmp/<random>.gone                   retired bodies, unlinked in a thread
    objects/<k2>/<key>.json             metadata: the commit point of an object
    objects/<k2>/<key>.<version>        the body the metadata names

C{key} is the SHA-256 of the name: any valid name maps to one safe path, and
C{a} and C{a/b} can both be cached.  A publish renames the fsynced body to a
fresh versioned name, then replaces the metadata atomically: a crash at any
step leaves the old metadata naming the old body or the new the new; startup
removes what nothing names.  Readers of a replaced body finish with its bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from attrs import evolve
from twisted.logger import Logger

from ..objects import ObjectHeaders, Partial, StoredObject

log = Logger()

_DIR_MODE = 0o700
_FILE_MODE = 0o600

# A sparse fill's leftover not resumed within this long is removed at start.
PARTIAL_MAX_AGE = 24 * 3600.0


def _key(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


class Layout:
    """
    The directories under the cache root and every file operation on them.
    Methods that fsync or rename are blocking and may run in a thread: they
    touch only the files of the object they are given.

    @param now: the clock for fetch and expiry times (thread-safe).
    @param open_file: L{os.open}, or a stand-in that fails on demand.
    @param fsync: L{os.fsync}, or a stand-in that fails on demand.
    """

    def __init__(
        self,
        root: str,
        now: Callable[[], float] = time.time,
        open_file: Callable[..., int] = os.open,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        self._now = now
        self._open = open_file
        self._fsync = fsync
        self.generation_of: Callable[[str], int] = lambda name: 0  # the cluster's, recorded
        self.root = os.path.abspath(root)
        self._tmp = os.path.join(self.root, "tmp")
        self._objects = os.path.join(self.root, "objects")

    def create(self) -> None:
        """
        Create the directories, 0700, if needed.
        """
        for path in (self.root, self._tmp, self._objects):
            os.makedirs(path, mode=_DIR_MODE, exist_ok=True)
            os.chmod(path, _DIR_MODE)

    # --- downloads -------------------------------------------------------

    def new_temp(self) -> tuple[int, str]:
        """
        Create an empty temp file for a download.

        @return: a read-write file descriptor and the file's path.
        """
        path = os.path.join(self._tmp, secrets.token_hex(16) + ".part")
        fd = self._open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        return fd, path

    def _partial_path(self, name: str, validator: str) -> str:
        # A partial's identity is its name and the version it fills: two
        # fills of one name never share a file.
        return os.path.join(self._tmp, f"{_key(name)}.{_key(validator)[:16]}.partial")

    def partial(self, name: str) -> Partial | None:
        """
        What a sparse fill of C{name} left on disk, if anything usable: the
        newest leftover (of whichever version); older ones are dropped.
        """
        prefix = _key(name) + "."
        records = [
            entry
            for entry in os.scandir(self._tmp)
            if entry.name.startswith(prefix) and entry.name.endswith(".partial.json")
        ]
        records.sort(key=lambda entry: entry.stat().st_mtime, reverse=True)
        found = None
        for entry in records:
            try:
                with open(entry.path, "rb") as f:
                    partial = Partial.from_json(json.load(f))
                body = self._partial_path(partial.name, partial.validator)
                same = partial.name == name and body + ".json" == entry.path
                if not same or os.stat(body).st_size != partial.length:
                    raise ValueError("the leftover does not match its record")
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warn(
                    "dropping an unusable partial body of {name}: {why}", name=name, why=str(e)
                )
                unlink(entry.path)
                unlink(entry.path[: -len(".json")])
                continue
            if found is None:
                found = partial
            else:
                self.discard_partial(partial)
        return found

    def leftovers(self) -> list[tuple[Partial, int, float]]:
        """
        Every resumable leftover in tmp/ (after L{recover}): its record,
        its allocated bytes and when it was last recorded.
        """
        found = []
        for entry in os.scandir(self._tmp):
            if not entry.name.endswith(".partial.json"):
                continue
            try:
                with open(entry.path, "rb") as f:
                    partial = Partial.from_json(json.load(f))
                at = entry.stat().st_mtime
            except (OSError, ValueError, KeyError, TypeError):
                continue  # the next fill of its name drops it
            size = self.allocated(partial)
            if size is not None:
                found.append((partial, size, at))
        return found

    def allocated(self, partial: Partial) -> int | None:
        """
        The bytes a leftover's body takes on disk (it is sparse), or
        L{None} if it is gone.
        """
        try:
            return os.stat(self._partial_path(partial.name, partial.validator)).st_blocks * 512
        except FileNotFoundError:
            return None

    def open_partial(self, name: str, validator: str, fresh: bool) -> tuple[int, str]:
        """
        Open the body of a sparse fill of C{name}'s version C{validator}:
        the leftover one, or (C{fresh}) a new empty one in its place.
        """
        path = self._partial_path(name, validator)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if fresh else 0)
        if fresh:
            unlink(path + ".json")
        return self._open(path, flags, _FILE_MODE), path

    def save_partial(self, fd: int, partial: Partial) -> None:
        """
        Record what of a sparse body is on disk: the body is fsynced first,
        so the record never claims bytes a power cut could lose.  Blocking.
        """
        self._fsync(fd)
        path = self._partial_path(partial.name, partial.validator)
        self._replace_json(path + ".json", partial.to_json())

    def _replace_json(self, path: str, data: dict[str, Any]) -> None:
        """
        Atomically replace the file at C{path} with C{data} as JSON, fsynced.
        """
        temp = path + ".tmp"
        fd = self._open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _FILE_MODE)
        try:
            os.write(fd, json.dumps(data).encode("utf-8"))
            self._fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)

    def discard_partial(self, partial: Partial, body: bool = True) -> None:
        """
        Forget a sparse fill's leftover: its record, and (C{body}) its body.
        """
        path = self._partial_path(partial.name, partial.validator)
        unlink(path + ".json")
        if body:
            unlink(path)

    def writable(self) -> str | None:
        """
        Whether a download could create its temp file now: L{None}, or why
        not (no path in it: it may be shown to anyone).
        """
        try:
            fd, path = self.new_temp()
        except OSError as e:
            return e.strerror or type(e).__name__
        os.close(fd)
        unlink(path)
        return None

    def write(self, fd: int, data: bytes, offset: int) -> None:
        """
        Write C{data} at C{offset} of a temp file: the one place downloads
        write, so a full disk or an I/O error surfaces here as L{OSError}.
        """
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written

    def discard_temp(self, path: str) -> None:
        unlink(path)

    # --- objects ---------------------------------------------------------

    def data_path(self, name: str, version: str) -> str:
        """
        Where version C{version} of C{name}'s body lives: under the root
        whatever the name holds, because the name only enters as a hash.
        """
        key = _key(name)
        return os.path.join(self._objects, key[:2], f"{key}.{version}")

    def _fsync_dir(self, path: str) -> None:
        fd = self._open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def _meta_path(self, name: str) -> str:
        key = _key(name)
        return os.path.join(self._objects, key[:2], key + ".json")

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

        Blocking; safe to call from a thread because it touches no other
        object's files.  The object is not visible until it is installed in
        the index.
        """
        self._fsync(fd)
        version = secrets.token_hex(8)
        data_path = self.data_path(name, version)
        directory = os.path.dirname(data_path)
        os.makedirs(directory, mode=_DIR_MODE, exist_ok=True)
        os.rename(temp_path, data_path)
        try:
            return self._record(name, data_path, version, size, headers, lifetime)
        except BaseException:
            # Nothing may name, count or keep a body that failed to commit.
            if self._meta_names(name, data_path):
                unlink(self._meta_path(name))
            unlink(self._meta_path(name) + ".tmp")
            unlink(data_path)
            raise

    def _record(
        self,
        name: str,
        data_path: str,
        version: str,
        size: int,
        headers: ObjectHeaders,
        lifetime: float,
    ) -> StoredObject:
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
            cache_control=headers.cache_control,
            extra=headers.extra,
            initial_age=headers.initial_age,
            status=headers.status,
            cluster_generation=self.generation_of(name),
        )
        self.write_meta(obj)
        return obj

    def _meta_names(self, name: str, data_path: str) -> bool:
        obj = self.read(name)
        return obj is not None and obj.path == data_path

    def write_meta(self, obj: StoredObject) -> None:
        """
        Durably make C{obj} what its name's metadata says.
        """
        meta_path = self._meta_path(obj.name)
        self._replace_json(meta_path, obj.to_json())
        self._fsync_dir(os.path.dirname(meta_path))

    def renewed(self, obj: StoredObject, headers: ObjectHeaders, lifetime: float) -> StoredObject:
        """
        Durably record that the origin confirmed C{obj} with a 304 carrying
        C{headers}: its stored headers updated by them, fresh for
        C{lifetime} more seconds, as old as the 304 was, body untouched,
        confirmed at the cluster's generation of its name now (that of its
        fetch may be of a log since lost).  Blocking, like L{commit}.
        """
        now, generation = self._now(), self.generation_of(obj.name)
        new = evolve(obj.updated_by(headers), fetched_at=now, expires_at=now + lifetime)
        new = evolve(new, initial_age=headers.initial_age, cluster_generation=generation)
        self.write_meta(new)
        return new

    def delete(self, obj: StoredObject) -> str | None:
        """
        Delete C{obj}'s metadata and retire its body (see L{retire}), whose
        new path this returns.  Readers with the body open finish reading
        it.
        """
        unlink(self._meta_path(obj.name))
        return self.retire(obj.path)

    def sync_deletion(self, obj: StoredObject) -> None:
        """
        fsync the directory C{obj} was deleted from, so the deletion
        survives a power cut once this returns (a purge; an eviction need
        not).
        """
        self._fsync_dir(os.path.dirname(self._meta_path(obj.name)))

    def retire(self, path: str) -> str | None:
        """
        Move a body out of the objects (a rename: at once, however big it
        is) into tmp/, where L{recover} removes it after a crash; the slow
        unlink of a big file is left to the caller, off the reactor thread.

        @return: where it went, or L{None} if it was gone.
        """
        retired = os.path.join(self._tmp, secrets.token_hex(16) + ".gone")
        try:
            os.rename(path, retired)
        except FileNotFoundError:
            return None
        return retired

    def read(self, name: str) -> StoredObject | None:
        """
        C{name}'s object as its metadata file says now, without the index:
        for processes that serve from a store another process writes.
        """
        path = self._meta_path(name)
        try:
            with open(path, "rb") as f:
                obj = StoredObject.from_json(os.path.dirname(path), json.load(f))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return obj if obj.name == name else None

    def recover(self) -> list[StoredObject]:
        """
        Remove what a crash left behind (temp files, bodies no metadata
        names, unusable metadata) and return the objects that are whole.
        """
        found: list[StoredObject] = []
        now = self._now()
        entries = {entry.name: entry for entry in os.scandir(self._tmp)}
        for filename, entry in entries.items():
            record = entries.get(filename + ".json")
            if (
                filename.endswith(".partial")
                and record is not None
                and now - record.stat().st_mtime < PARTIAL_MAX_AGE
            ):
                continue  # resumable: the next request for it goes on from there
            if filename.endswith(".partial.json") and filename[: -len(".json")] in entries:
                if now - entry.stat().st_mtime < PARTIAL_MAX_AGE:
                    continue
            log.info("removing leftover temp file {path}", path=entry.path)
            unlink(entry.path)
        for bucket in os.scandir(self._objects):
            if bucket.is_dir():
                found.extend(self._recover_bucket(bucket.path))
        return found

    def _recover_bucket(self, directory: str) -> list[StoredObject]:
        names = os.listdir(directory)
        found = []
        named: set[str] = set()
        for filename in names:
            if not filename.endswith(".json"):
                continue
            obj = self._load_meta(directory, filename)
            if obj is None:
                unlink(os.path.join(directory, filename))
            else:
                named.add(os.path.basename(obj.path))
                found.append(obj)
        for filename in names:
            if not filename.endswith(".json") and filename not in named:
                # An interrupted publish or replacement: nothing names it.
                unlink(os.path.join(directory, filename))
        return found

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


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
