"""
C{/files/<name>}: the media itself.

A cached object goes out through L{static.File}'s own producers, so Range,
multiple ranges, 416 and HEAD keep Twisted's tested code; this module adds
the validators (ETag, Last-Modified, If-Range) that L{static.File} lacks.
A miss follows the in-flight download with L{FillProducer}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server, static
from twisted.web.iweb import IRequest

from ..names import InvalidName
from ..origin import NotFoundAtOrigin, OriginError
from ..store import CacheStore, StoredObject
from ..sync import Fill, Overloaded, Syncer
from ._json import JSONResource, render_error
from ._site import name_of
from .bodies import FillProducer, SendfileProducer, SmallBodies, can_sendfile
from .conditional import not_modified, range_still_valid

log = Logger()


class MediaFile(static.File):
    """
    A L{static.File} whose metadata comes from the cache, not from a stat
    or the file's extension.
    """

    def __init__(
        self,
        path: str,
        size: int | None,
        content_type: str,
        etag: str | None,
        last_modified: float | None,
        cache_control: bytes,
        age: int | None = None,
    ) -> None:
        static.File.__init__(self, path)
        self.type = content_type
        self.encoding = None
        self._size = size
        self._etag = etag.encode("latin-1") if etag is not None else None
        self._last_modified = last_modified
        self._cache_control = cache_control
        self._age = age

    def getFileSize(self) -> int | None:
        return self._size

    def render_GET(self, request: IRequest) -> bytes | int:
        if self._size is not None:
            request.setHeader(b"accept-ranges", b"bytes")
        if self._etag is not None:
            request.setHeader(b"etag", self._etag)
        if self._last_modified is not None:
            request.setHeader(b"last-modified", http.datetimeToString(int(self._last_modified)))
        request.setHeader(b"cache-control", self._cache_control)
        if self._age is not None:
            request.setHeader(b"age", b"%d" % (self._age,))
        if not_modified(request, self._etag, self._last_modified):
            request.setResponseCode(http.NOT_MODIFIED)
            return b""
        if request.method == b"HEAD":
            if self._size is not None:
                self._setContentHeaders(request)
            else:
                request.setHeader(b"content-type", self.type.encode("latin-1"))
            return b""
        if not range_still_valid(request, self._etag, self._last_modified):
            request.requestHeaders.removeHeader(b"range")
        producer = self.makeProducer(request, self.openForReading())
        producer.start()
        return server.NOT_DONE_YET

    render_HEAD = render_GET


class StoredFile(MediaFile):
    """
    A complete cached object: L{static.File} decides status, headers and
    ranges; whole files and single ranges on plain TCP go out with
    C{sendfile}, the rest through L{static.File}'s own producers.
    """

    def makeProducer(self, request: IRequest, fileForReading: Any) -> Any:
        producer = super().makeProducer(request, fileForReading)
        if not can_sendfile(request):
            return producer
        if isinstance(producer, static.NoRangeStaticProducer):
            return SendfileProducer(request, fileForReading, 0, self._size)
        if isinstance(producer, static.SingleRangeStaticProducer):
            return SendfileProducer(request, fileForReading, producer.offset, producer.size)
        return producer

    def __init__(self, obj: StoredObject, cache_control: bytes, now: float) -> None:
        MediaFile.__init__(
            self,
            obj.path,
            obj.size,
            obj.content_type,
            obj.etag,
            obj.last_modified,
            cache_control,
            age=max(0, int(now - obj.fetched_at)),
        )


class FillFile(MediaFile):
    """
    An object still downloading: the same headers and ranges as a stored
    one, with a body that follows the download.
    """

    def __init__(self, fill: Fill, cache_control: bytes) -> None:
        headers = fill.headers
        assert headers is not None
        MediaFile.__init__(
            self,
            fill.name,
            fill.length,
            headers.content_type,
            headers.etag,
            headers.last_modified,
            cache_control,
        )
        self.fill = fill

    def openForReading(self) -> None:
        # FillProducer follows the fill itself.
        return None

    def makeProducer(self, request: IRequest, fileForReading: None) -> FillProducer:
        offset, size = 0, self._size
        ranges = None
        byte_range = request.getHeader(b"range")
        if byte_range is not None and size is not None:
            try:
                ranges = self._parseRangeHeader(byte_range)
            except ValueError:
                ranges = None
        # Several ranges of a body still arriving are answered whole, as
        # RFC 9110 allows: the multipart producer needs the bytes at hand.
        if ranges is not None and len(ranges) == 1:
            offset, size = self._doSingleRangeRequest(request, ranges[0])
        else:
            request.setResponseCode(http.OK)
        if size is not None:
            self._setContentHeaders(request, size)
        else:
            request.setHeader(b"content-type", self.type.encode("latin-1"))
        return FillProducer(request, self.fill, offset, size)


def _plain_get(request: IRequest) -> bool:
    """
    A GET that wants the whole body, unconditionally.
    """
    headers = request.requestHeaders
    return request.method == b"GET" and not (
        headers.hasHeader(b"range")
        or headers.hasHeader(b"if-none-match")
        or headers.hasHeader(b"if-modified-since")
    )


def serve_stored(
    request: Any, obj: StoredObject, small: SmallBodies, cache_control: bytes, now: float
) -> bytes | int:
    """
    Render a cached object: small ones whole from memory, the rest through
    L{StoredFile}.

    @raise FileNotFoundError: when the object's body is gone (evicted,
        purged or replaced by another process since C{obj} was read).
    """
    if obj.size <= SmallBodies.max_object and _plain_get(request):
        headers, body = small.get(obj, cache_control)
        for name, value in headers:
            request.setHeader(name, value)
        request.setHeader(b"age", b"%d" % (max(0, int(now - obj.fetched_at)),))
        return body
    return StoredFile(obj, cache_control, now).render(request)


class FilesResource(JSONResource):
    """
    C{GET|HEAD /files/<name>}: from the cache when it has the file (stale
    while it revalidates, or while the origin fails); otherwise streamed
    from the download it starts (C{miss="stream"}) or redirected to the
    origin (C{miss="redirect"}).
    """

    isLeaf = True

    def __init__(self, store: CacheStore, syncer: Syncer, miss: str, max_age: int) -> None:
        super().__init__()
        self.store = store
        self.syncer = syncer
        self.clock = syncer.clock
        self.miss = miss
        self.cache_control = b"public, max-age=%d" % (max_age,)
        self.small = SmallBodies()

    def render_GET(self, request: Any) -> bytes | int:
        try:
            name = name_of(request)
        except InvalidName as e:
            request.outcome = "bad_name"
            return render_error(request, 400, "bad_name", str(e))
        request.cache_name = name
        obj = self.store.get(name)
        now = self.clock.seconds()
        if obj is not None and now < obj.expires_at:
            return self._serve(request, obj, "hit", now)
        status = self.syncer.status(name)
        if status.state == "cached":
            assert status.stored is not None
            return self._serve(request, status.stored, "stale" if status.stale else "hit", now)
        if self.miss == "redirect" and status.state != "not_found":
            return self._redirect(request, name)
        if status.fill is None:
            return self._failed(request, status.error)
        request.outcome = "miss"
        started = status.fill.when_started()
        request.notifyFinish().addErrback(lambda _: started.cancel())
        started.addCallbacks(self._follow, self._start_failed, (request,), None, (request,))
        return server.NOT_DONE_YET

    render_HEAD = render_GET

    def _serve(self, request: Any, obj: StoredObject, outcome: str, now: float) -> bytes | int:
        request.outcome = outcome
        self.store.used(obj)
        return serve_stored(request, obj, self.small, self.cache_control, now)

    def _redirect(self, request: Any, name: str) -> bytes:
        request.outcome = "redirect"
        request.redirect(self.syncer.origin.url_for(name).encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return b""

    def _follow(self, fill: Fill, request: Any) -> None:
        if fill.readable:
            body = FillFile(fill, self.cache_control).render(request)
        elif fill.stored is not None:
            # A revalidation that ended in a 304, or a publish that won
            # the race: the object is in the cache.
            body = self._serve(request, fill.stored, "hit", self.clock.seconds())
        else:
            # Passed through (no-store) or purged before this reader came.
            body = self._failed(request, Overloaded("the download ended; ask again"))
        if body is not server.NOT_DONE_YET:
            request.write(body)
            request.finish()

    def _start_failed(self, failure: Failure, request: Any) -> None:
        if failure.check(CancelledError):
            return
        request.write(self._failed(request, failure.value))
        request.finish()

    def _failed(self, request: Any, error: Exception | None) -> bytes:
        if isinstance(error, NotFoundAtOrigin):
            request.outcome = "not_found"
            return render_error(
                request, 404, "not_found", f"the origin has no such file ({error.code})"
            )
        if isinstance(error, OriginError) and error.reason == "too_large":
            # Not ours to cache: the listener fetches it from the origin.
            return self._redirect(request, request.cache_name)
        if isinstance(error, Overloaded):
            request.outcome = "overloaded"
            request.setHeader(b"retry-after", b"1")
            return render_error(request, 503, "overloaded", str(error))
        if isinstance(error, OriginError) and error.reason == "no_space":
            # Every byte of the quota is held by downloads in progress.
            request.outcome = "no_space"
            request.setHeader(b"retry-after", b"5")
            return render_error(request, 503, "no_space", str(error))
        request.outcome = "error"
        reason = error.reason if isinstance(error, OriginError) else "error"
        return render_error(request, 502, "origin_error", f"{reason}: {error}")
