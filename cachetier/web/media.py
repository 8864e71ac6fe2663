"""
The answer for one version of a file: L{MediaResponse} decides status and
headers (validators, RFC 9110 section 13, in L{conditional}; ranges,
section 14, in L{ranges}; HEAD); its subclasses supply the body:
L{StoredResponse} from the cache through a shared descriptor,
L{FillResponse} from the download in flight.
"""

from __future__ import annotations

from typing import Any

from twisted.web import http, server

from ..objects import StoredObject
from ..store import Handle
from ..sync import Fill
from ._json import render_error
from .answers import finish_bodiless, kept_answer_headers
from .bodies import FillProducer, PreadProducer, SendfileProducer, can_sendfile
from .conditional import not_modified, range_still_valid
from .headers import downstream_cache_control, fill_cache_control, replay
from .ranges import ByteRange, Unsatisfiable, multipart, parse_range


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
        cache_control: bytes | None,
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
        if self.cache_control is not None:
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
    one, with a body that follows the download.  Its C{Age} is computed
    at C{now}, as a stored one's is: the age the answer arrived with (a
    shield's C{Age}, or the time since its C{Date}) plus how long ago it
    arrived, so a listener joining late is not told the answer is younger
    than it is (RFC 9111 section 4.2.3); none while that is under a
    second.
    """

    multipart = False

    def __init__(self, fill: Fill, default_max_age: int, lifetime: float, now: float) -> None:
        headers = fill.headers
        assert headers is not None
        age = headers.initial_age
        if fill.answered_at is not None:
            age += max(0.0, now - fill.answered_at)
        super().__init__(
            fill.length,
            headers.content_type,
            headers.etag,
            headers.last_modified,
            fill_cache_control(headers, default_max_age, lifetime),
            age=int(age) or None,
            extra=headers.extra,
        )
        self.fill = fill

    def send(
        self, request: Any, segments: list[tuple[bytes, int, int | None]], trailer: bytes = b""
    ) -> None:
        ((_, offset, length),) = segments
        FillProducer(request, self.fill, offset, length).start()
