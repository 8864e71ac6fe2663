"""
The ground floor: the value types every room shares (what the origin said
about a body, a published object, a sparse fill's record) and the table of
checksums a body is verified with.  Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Callable
from typing import Any

from attrs import evolve, frozen


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
    @ivar cache_control: the origin's Cache-Control, passed downstream.
    @ivar extra: the origin's other end-to-end headers, replayed.
    @ivar expires_at: when the object stops being fresh and must be
        revalidated.
    @ivar status: the origin's status: 200 for a file, another for an
        answer kept as it came (a 404, a 301...).
    @ivar cluster_generation: the cluster's generation of its name when it
        was published (0: none known): a node whose purge log no longer
        reaches back drops the copies older than the cluster's.
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
    cache_control: str | None = None
    extra: tuple[tuple[str, str], ...] = ()
    initial_age: float = 0.0
    status: int = 200
    cluster_generation: int = 0

    def updated_by(self, headers: ObjectHeaders) -> StoredObject:
        """
        This object as a 304 for its version, carrying C{headers}, updates
        it (RFC 9111 section 4.3.4): each header the 304 carries replaces
        the stored one of that name, the others stay; the body is
        untouched.
        """
        sent = {name for name, _ in headers.extra}
        changes: dict[str, Any] = {
            "extra": tuple(pair for pair in self.extra if pair[0] not in sent) + headers.extra
        }
        if headers.cache_control is not None:
            changes["cache_control"] = headers.cache_control
        # The validators stay: a 304 is used only when it names this
        # version (L{confirmed_by}).
        return evolve(self, **changes)

    def confirmed_by(self, headers: ObjectHeaders) -> bool:
        """
        Whether a 304 carrying C{headers} is for this version (RFC 9111
        section 4.3.4): its strong ETag, or else its Last-Modified, if it
        sends one, is the stored one.
        """
        etag = headers.etag
        if etag is not None and not etag.startswith("W/") and self.origin_etag is not None:
            return etag == self.origin_etag
        if headers.last_modified is not None and self.origin_last_modified is not None:
            return headers.last_modified == self.origin_last_modified
        return True

    @property
    def lifetime(self) -> float:
        """
        Its whole freshness lifetime, counted from its origin's Date.
        """
        return self.expires_at - self.fetched_at + self.initial_age

    def age(self, now: float) -> float:
        """
        Its current age (RFC 9111 4.2.3): as old as it arrived, plus how
        long it has been here.
        """
        return self.initial_age + max(0.0, now - self.fetched_at)

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
            "cache_control": self.cache_control,
            "extra": [list(pair) for pair in self.extra],
            "initial_age": self.initial_age,
            "status": self.status,
            "cluster_generation": self.cluster_generation,
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
            # Objects cached before these were kept have none.
            cache_control=raw.get("cache_control"),
            extra=tuple((str(k), str(v)) for k, v in raw.get("extra", ())),
            initial_age=float(raw.get("initial_age", 0.0)),
            status=int(raw.get("status", 200)),
            cluster_generation=int(raw.get("cluster_generation", 0)),
        )


@frozen
class ObjectHeaders:
    """
    What the origin said about a body, kept with it once it is published.

    @ivar max_age: the freshness lifetime the origin gave (C{s-maxage},
        else C{max-age}, else C{Expires} minus C{Date}), or L{None} to use
        the configured TTL.
    @ivar initial_age: how old the response already was on arrival (its
        Age, or the time since its Date).
    @ivar no_store: the origin forbids caching (C{no-store}, C{private}, or
        a C{Set-Cookie}).
    @ivar cache_control: the origin's Cache-Control, as it sent it.
    @ivar extra: the origin's other end-to-end headers (lower-case names),
        Content-Encoding, Content-Disposition and CORS among them.
    @ivar status: the origin's status (200 for a 206 or 304 about the
        file).
    """

    content_type: str
    etag: str | None = None
    last_modified: float | None = None
    max_age: float | None = None
    no_store: bool = False
    initial_age: float = 0.0
    cache_control: str | None = None
    extra: tuple[tuple[str, str], ...] = ()
    status: int = 200


@frozen
class Partial:
    """
    A sparse fill's body on disk, as its sidecar describes it: enough to
    resume it after a restart, with Range requests for the version
    C{validator} names.

    @ivar intervals: the byte ranges C{[start, end)} known to be on disk
        (fsynced before they were recorded).
    """

    name: str
    length: int
    validator: str
    headers: ObjectHeaders
    checksum: tuple[str, str] | None
    intervals: tuple[tuple[int, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        headers = {
            "content_type": self.headers.content_type,
            "etag": self.headers.etag,
            "last_modified": self.headers.last_modified,
            "max_age": self.headers.max_age,
            "no_store": self.headers.no_store,
            "initial_age": self.headers.initial_age,
            "cache_control": self.headers.cache_control,
            "extra": [list(pair) for pair in self.headers.extra],
        }
        return {
            "name": self.name,
            "length": self.length,
            "validator": self.validator,
            "headers": headers,
            "checksum": list(self.checksum) if self.checksum else None,
            "intervals": [list(i) for i in self.intervals],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Partial:
        headers = dict(data["headers"])
        headers["extra"] = tuple((str(k), str(v)) for k, v in headers["extra"])
        checksum = data["checksum"]
        return cls(
            name=str(data["name"]),
            length=int(data["length"]),
            validator=str(data["validator"]),
            headers=ObjectHeaders(**headers),
            checksum=(str(checksum[0]), str(checksum[1])) if checksum else None,
            intervals=tuple((int(a), int(b)) for a, b in data["intervals"]),
        )


class _CRC32:
    """
    CRC32 with hashlib's interface, big-endian as S3 sends it.
    """

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


# The algorithms a body's checksum may be given in, by the name the origin
# response uses; each makes a fresh hasher.
HASHERS: dict[str, Callable[[], Any]] = {
    "md5": lambda: hashlib.md5(usedforsecurity=False),
    "sha1": lambda: hashlib.sha1(usedforsecurity=False),
    "sha256": hashlib.sha256,
    "crc32": _CRC32,
}
