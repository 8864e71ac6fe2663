"""
C{/files/<name>}: the media itself.

L{MediaResponse} decides status and headers for one version of a file:
validators (RFC 9110 section 13, in L{conditional}), ranges (section 14, in
L{ranges}), HEAD; its subclasses supply the body: L{StoredResponse} from
the cache through a shared descriptor, L{FillResponse} from the download
in flight.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import IRequest

from ..errors import OriginAnswer, OriginError, Overloaded, Reason
from ..names import VARIANT_MARK, InvalidName
from ..objects import StoredObject
from ..store import CacheStore, Handle
from ..sync import Fill, Lookup, Outcome, Syncer
from ._json import EndWatch, JSONResource, answer, answerable, render_error
from .access import OncePerSecond
from .addresses import client_address, name_of
from .answers import finish_bodiless, kept_answer_headers, render_answer
from .bodies import FillProducer, PreadProducer, SendfileProducer, SmallBodies, can_sendfile
from .conditional import not_modified, range_still_valid
from .headers import downstream_cache_control, replay
from .ranges import ByteRange, Unsatisfiable, multipart, parse_range

log = Logger()

_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
_descriptors_log = OncePerSecond()


class MediaResponse:
    """
    The response to one request for one version of a file.

    @param size: the body's length, or L{None} while an origin that sent
        none is still downloading it.
    """

    # Whether several ranges are answered as multipart/byteranges (it needs
    # every byte at hand), or with the whole body, as RFC 9110 allows.
    multipart = True

    def __init__(
        self,
        size: int | None,
        content_type: str,
        etag: str | None,
        last_modified: float | None,
        cache_control: bytes,
        age: int | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.extra = extra
        self.size = size
        self.content_type = content_type.encode("latin-1")
        self.etag = etag.encode("latin-1") if etag is not None else None
        self.last_modified = last_modified
        self.cache_control = cache_control
        self.age = age

    def render(self, request: Any) -> bytes | int:
        replay(request, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.extra])
        if self.size is not None:
            request.setHeader(b"accept-ranges", b"bytes")
        if self.etag is not None:
            request.setHeader(b"etag", self.etag)
        if self.last_modified is not None:
            request.setHeader(b"last-modified", http.datetimeToString(int(self.last_modified)))
        request.setHeader(b"cache-control", self.cache_control)
        if self.age is not None:
            request.setHeader(b"age", b"%d" % (self.age,))
        if not_modified(request, self.etag, self.last_modified):
            request.setResponseCode(http.NOT_MODIFIED)
            if self.size is not None:
                # What a 200 would say (RFC 9110 8.6); returning b"" would
                # make Twisted say 0.
                request.setHeader(b"content-length", b"%d" % (self.size,))
            request.finish()
            return server.NOT_DONE_YET
        request.setHeader(b"content-type", self.content_type)
        if request.method == b"HEAD":
            if self.size is not None:
                request.setHeader(b"content-length", b"%d" % (self.size,))
            return b""
        try:
            ranges = self._ranges(request)
        except Unsatisfiable:
            request.setHeader(b"content-range", b"bytes */%d" % (self.size,))
            return render_error(
                request, 416, "range_not_satisfiable", f"the file has {self.size} bytes"
            )
        body = None
        if ranges is not None and len(ranges) > 1:
            body = multipart(ranges, self.size or 0, self.content_type)
            if body.length >= (self.size or 0):
                ranges = None  # the whole file is smaller: send that
        if ranges is None:
            request.setResponseCode(http.OK)
            if self.size is not None:
                request.setHeader(b"content-length", b"%d" % (self.size,))
            self.send(request, [(b"", 0, self.size)])
        elif len(ranges) == 1:
            (r,) = ranges
            request.setResponseCode(http.PARTIAL_CONTENT)
            request.setHeader(b"content-range", r.content_range(self.size or 0))
            request.setHeader(b"content-length", b"%d" % (r.length,))
            self.send(request, [(b"", r.first, r.length)])
        else:
            assert body is not None
            request.setResponseCode(http.PARTIAL_CONTENT)
            request.setHeader(b"content-type", body.content_type)
            request.setHeader(b"content-length", b"%d" % (body.length,))
            segments = [(head, r.first, r.length) for head, r in body.parts]
            self.send(request, segments, body.trailer)
        return server.NOT_DONE_YET

    def _ranges(self, request: Any) -> list[ByteRange] | None:
        header = request.getHeader(b"range")
        if header is None or self.size is None:
            return None
        if not range_still_valid(request, self.etag, self.last_modified):
            return None
        ranges = parse_range(header, self.size)
        if ranges is not None and len(ranges) > 1 and not self.multipart:
            return None
        return ranges

    def send(
        self, request: Any, segments: list[tuple[bytes, int, int | None]], trailer: bytes = b""
    ) -> None:
        """
        Start the body: C{segments} of (literal bytes, offset, length).
        """
        raise NotImplementedError()


class StoredResponse(MediaResponse):
    """
    A complete cached object, read through one shared descriptor per
    version: whole files and single ranges on plain TCP go out with
    C{sendfile}, the rest with C{pread}.

    @param handle: the body, which this response releases.
    """

    def __init__(self, obj: StoredObject, handle: Handle, default_max_age: int, now: float) -> None:
        super().__init__(
            obj.size,
            obj.content_type,
            obj.etag,
            obj.last_modified,
            downstream_cache_control(obj.cache_control, default_max_age, obj.lifetime),
            age=int(obj.age(now)),
            extra=obj.extra,
        )
        self.handle: Handle | None = handle
        # An answer other than the file, kept: replayed as it came.
        self.answer = obj if obj.status != 200 else None

    def _render_answer(self, request: Any, obj: StoredObject) -> bytes | int:
        if not kept_answer_headers(request, obj, self.age or 0):
            return finish_bodiless(request)
        self.send(request, [(b"", 0, obj.size)])
        return server.NOT_DONE_YET

    def render(self, request: Any) -> bytes | int:
        try:
            if self.answer is not None:
                return self._render_answer(request, self.answer)
            return super().render(request)
        finally:
            # Not taken by a producer (a HEAD, a 304, a 416): let it go.
            if self.handle is not None:
                self.handle.release()
                self.handle = None

    def send(
        self, request: Any, segments: list[tuple[bytes, int, int | None]], trailer: bytes = b""
    ) -> None:
        handle, self.handle = self.handle, None
        assert handle is not None
        parts = [(head, offset, length or 0) for head, offset, length in segments]
        if len(parts) == 1 and not trailer and can_sendfile(request):
            _, offset, length = parts[0]
            SendfileProducer(request, handle, offset, length).start()
        else:
            PreadProducer(request, handle, parts, trailer).start()


class FillResponse(MediaResponse):
    """
    An object still downloading: the same headers and ranges as a stored
    one, with a body that follows the download.
    """

    multipart = False

    def __init__(self, fill: Fill, default_max_age: int) -> None:
        headers = fill.headers
        assert headers is not None
        super().__init__(
            fill.length,
            headers.content_type,
            headers.etag,
            headers.last_modified,
            downstream_cache_control(headers.cache_control, default_max_age, headers.max_age),
            age=int(headers.initial_age) or None,  # a shield's Age, passed on
            extra=headers.extra,
        )
        self.fill = fill

    def send(
        self, request: Any, segments: list[tuple[bytes, int, int | None]], trailer: bytes = b""
    ) -> None:
        ((_, offset, length),) = segments
        FillProducer(request, self.fill, offset, length).start()


def _cancelling(result: object, call: Any) -> object:
    """
    A callback that cancels C{call} if it is still pending.
    """
    if call.active():
        call.cancel()
    return result


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
    request: Any,
    obj: StoredObject,
    store: CacheStore,
    small: SmallBodies,
    default_max_age: int,
    now: float,
) -> bytes | int:
    """
    Render a cached object: small ones whole from memory, the rest through
    L{StoredResponse}.  Out of descriptors, the listener gets a 503 to
    retry, never a 500.

    @raise FileNotFoundError: when the object's body is gone (evicted,
        purged or replaced by another process since C{obj} was read).
    """
    try:
        if obj.size <= SmallBodies.max_object and _plain_get(request) and obj.status == 200:
            extra, headers, body = small.get(obj, default_max_age)
            replay(request, extra)
            for name, value in headers:
                request.setHeader(name, value)
            request.setHeader(b"age", b"%d" % (int(obj.age(now)),))
            return body
        handle = store.handles.acquire(obj)
    except OSError as e:
        if e.errno not in _OUT_OF_DESCRIPTORS:
            raise
        _descriptors_log.emit(
            log, "out of file descriptors: answering 503 until some are free ({count} so far)"
        )
        request.outcome = "overloaded"
        request.setHeader(b"retry-after", b"1")
        return render_error(request, 503, "overloaded", "the server is busy; try again")
    return StoredResponse(obj, handle, default_max_age, now).render(request)


class FilesResource(JSONResource):
    """
    C{GET|HEAD /files/<name>}: from the cache when it has the file (stale
    while it revalidates, or while the origin fails); otherwise streamed
    from the download it starts (C{miss="stream"}) or redirected to the
    origin (C{miss="redirect"}).
    """

    isLeaf = True

    def __init__(
        self,
        store: CacheStore,
        syncer: Syncer,
        miss: str,
        max_age: int,
        queue_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.store = store
        self.syncer = syncer
        self.clock = syncer.clock
        self.miss = miss
        self.queue_timeout = queue_timeout
        self.default_max_age = max_age
        self.small = SmallBodies()

    def render_GET(self, request: Any) -> bytes | int:
        try:
            name = name_of(request)
        except InvalidName as e:
            request.outcome = "bad_name"
            return render_error(request, 400, "bad_name", str(e))
        request.cache_name = name
        now = self.clock.seconds()
        lookup = self.syncer.lookup(name, client_address(request), request.requestHeaders)
        if self.miss == "redirect" and not (lookup.servable or lookup.answered):
            return self._redirect(request, name)
        if lookup.fill is None:
            return self._render(request, lookup, now)
        request.outcome = "miss"
        fill = lookup.fill
        started = fill.when_started()
        # A listener waits for a download slot at most queue_timeout; once
        # the download runs, the origin's own deadlines bound the wait.
        watch = EndWatch(request)
        deadline = self.clock.callLater(
            self.queue_timeout, self._still_queued, fill, request, watch
        )
        started.addBoth(_cancelling, deadline)
        request.notifyFinish().addErrback(lambda _: started.cancel())
        started.addCallbacks(
            self._follow, self._start_failed, (request, watch), None, (request, watch)
        )
        started.addErrback(self._broken, request, watch)
        return server.NOT_DONE_YET

    def _still_queued(self, fill: Fill, request: Any, watch: EndWatch) -> None:
        if fill.state != "queued" or not answerable(request, watch):
            return
        error = Overloaded(f"no download slot within {self.queue_timeout:g}s; try again")
        answer(request, watch, self._failed(request, error))

    render_HEAD = render_GET

    def _render(self, request: Any, lookup: Lookup, now: float) -> bytes | int:
        """
        Answer with what a lookup found, other than a download to follow.
        """
        if lookup.outcome is Outcome.CACHED:
            assert lookup.stored is not None
            return self._serve(request, lookup.stored, "hit", now)
        if lookup.outcome is Outcome.STALE:
            assert lookup.stored is not None
            return self._serve(request, lookup.stored, "stale", now)
        if lookup.outcome is Outcome.WITHHELD:
            return self._withheld(request, lookup.error)
        return self._failed(request, lookup.error)

    def _serve(self, request: Any, obj: StoredObject, outcome: str, now: float) -> bytes | int:
        request.outcome = outcome
        self.store.used(obj)
        return serve_stored(request, obj, self.store, self.small, self.default_max_age, now)

    def _redirect(self, request: Any, name: str) -> bytes:
        request.outcome = "redirect"
        request.redirect(self.syncer.origin_url(name).encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return b""

    def _follow(self, fill: Fill, request: Any, watch: EndWatch) -> None:
        if not answerable(request, watch):
            return  # answered already (the listener's wait ran out), or gone
        key = self.syncer.variants.key(request.cache_name, request.requestHeaders)
        if VARIANT_MARK not in fill.name and key != fill.name:
            # The first answer for the name varies, and this request has
            # some of its headers: it gets the variant they select, from a
            # fill that sends them.
            answer(request, watch, self.render_GET(request))
            return
        if fill.readable:
            body = FillResponse(fill, self.default_max_age).render(request)
        elif fill.state == "publishing":  # an answer being kept: wait for it
            follow, failed = (lambda _: self._follow(fill, request, watch)), self._start_failed
            d = fill.when_done().addCallbacks(follow, failed, errbackArgs=(request, watch))
            d.addErrback(self._broken, request, watch)
            return
        elif fill.stored is not None:
            # A revalidation that ended in a 304, or a publish that won
            # the race: the object is in the cache.
            body = self._serve(request, fill.stored, "hit", self.clock.seconds())
        else:
            # Passed through (no-store) or purged before this reader came.
            body = self._failed(request, Overloaded("the download ended; ask again"))
        answer(request, watch, body)

    def _broken(self, failure: Failure, request: Any, watch: EndWatch) -> None:
        """
        A bug while answering a miss: logged, and the listener's connection
        dropped rather than left hanging.
        """
        log.failure("answering {name} failed", failure, name=request.cache_name)
        if answerable(request, watch):
            request.transport.abortConnection()

    def _start_failed(self, failure: Failure, request: Any, watch: EndWatch) -> None:
        if failure.check(CancelledError) or not answerable(request, watch):
            return
        headers = request.requestHeaders
        lookup = self.syncer.after_failure(request.cache_name, failure.value, headers)
        answer(request, watch, self._render(request, lookup, self.clock.seconds()))

    def _withheld(self, request: Any, error: Exception | None) -> bytes:
        """
        The cache has a copy the origin forbids serving stale, and the
        origin could not revalidate it: 504 (RFC 9111 4.2.4).
        """
        request.outcome = "stale_withheld"
        return render_error(
            request,
            504,
            "origin_unavailable",
            f"the cached copy is stale and may not be served without the origin: {error}",
        )

    def _failed(self, request: Any, error: Exception | None) -> bytes | int:
        if isinstance(error, OriginAnswer):
            return render_answer(request, error)
        if isinstance(error, OriginError) and error.reason is Reason.too_large:
            # Not ours to cache: the listener fetches it from the origin.
            return self._redirect(request, request.cache_name)
        if isinstance(error, Overloaded):
            request.outcome = "overloaded"
            request.setHeader(b"retry-after", b"1")
            return render_error(request, 503, "overloaded", str(error))
        if isinstance(error, OriginError) and error.reason is Reason.no_space:
            # Every byte of the quota is held by downloads in progress.
            request.outcome = "no_space"
            request.setHeader(b"retry-after", b"5")
            return render_error(request, 503, "no_space", str(error))
        request.outcome = "error"
        reason = error.label if isinstance(error, OriginError) else "error"
        return render_error(request, 502, "origin_error", f"{reason}: {error}")
