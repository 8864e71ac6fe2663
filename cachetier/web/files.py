"""
C{/files/<name>}: the media itself, from the cache or the download in
flight (L{cachetier.web.media}), or the origin's answer passed on.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.iweb import IRequest

from ..errors import OriginAnswer, OriginError, Overloaded, Reason
from ..hops import CDN_LOOP
from ..names import VARIANT_MARK, InvalidName
from ..objects import StoredObject
from ..store import CacheStore
from ..sync import Fill, Lookup, Outcome, Syncer
from ..sync.variants import forwarded_elsewise
from ._json import EndWatch, JSONResource, answer, answerable, render_error
from .access import OncePerSecond
from .addresses import client_address, name_of
from .answers import render_answer
from .bodies import SmallBodies
from .headers import replay
from .hops import Hops, collapsing, fetched, redirected, served
from .media import FillResponse, StoredResponse

log = Logger()

_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
_descriptors_log = OncePerSecond()


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
    served(request, obj, now)
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
        hops: Hops | None = None,
    ) -> None:
        super().__init__()
        self.hops = hops or Hops("cachetier")
        self.store = store
        self.syncer = syncer
        self.clock = syncer.clock
        self.miss = miss
        self.queue_timeout = queue_timeout
        self.default_max_age = max_age
        self.small = SmallBodies()

    def render(self, request: Any) -> bytes | int:
        return self.hops.receive(request) or super().render(request)

    def render_GET(self, request: Any) -> bytes | int:
        try:
            name = name_of(request)
        except InvalidName as e:
            request.outcome = "bad_name"
            return render_error(request, 400, "bad_name", str(e))
        request.cache_name = name
        self.hops.agree(request, name)
        now = self.clock.seconds()
        # An edge's fills are its listeners': not capped as one client's.
        client = None if request.peer == "edge" else client_address(request)
        joined = self.syncer.fill_for(name)
        lookup = self.syncer.lookup(name, client, request.requestHeaders)
        if self.miss == "redirect" and not (lookup.servable or lookup.answered):
            return self._redirect(request, name)
        if lookup.fill is None:
            return self._render(request, lookup, now)
        request.outcome = "miss"
        fill = lookup.fill
        collapsing(request, fill is joined)
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
            self._follow, self._start_failed, (request, watch), None, (request, watch, fill)
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
        redirected(request)
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
        headers = fill.headers
        if headers and forwarded_elsewise(fill.forwarded, headers.extra, request.requestHeaders):
            # Its answer is the variant of the listener whose headers it
            # forwarded: this request gets a fill of its own, as will those
            # that come from now on.
            fill.joinable = False
            answer(request, watch, self.render_GET(request))
            return
        fetched(request, fill)
        if fill.readable:
            fresh = self.syncer.fresh_for(fill.headers)
            now = self.clock.seconds()
            body = FillResponse(fill, self.default_max_age, fresh, now).render(request)
        elif fill.state == "publishing":  # an answer being kept: wait for it
            follow, failed = (lambda _: self._follow(fill, request, watch)), self._start_failed
            d = fill.when_done().addCallbacks(follow, failed, errbackArgs=(request, watch, fill))
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

    def _start_failed(self, failure: Failure, request: Any, watch: EndWatch, fill: Fill) -> None:
        if failure.check(CancelledError) or not answerable(request, watch):
            return
        headers = request.requestHeaders
        error = failure.value
        if isinstance(error, OriginAnswer) and error.looped and not same_loop(fill, headers):
            # A shield's 508 to the listener whose CDN-Loop named it, not to
            # this one, who joined its fill: a fill of its own.
            answer(request, watch, self.render_GET(request))
            return
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
        if isinstance(error, OriginError) and error.reason is Reason.timeout and error.shield:
            # No shield answered in time, and no origin to fall back on.
            return render_error(request, 504, "shield_timeout", str(error))
        reason = error.label if isinstance(error, OriginError) else "error"
        return render_error(request, 502, "origin_error", f"{reason}: {error}")


def same_loop(fill: Fill, headers: Any) -> bool:
    """
    Whether a request with C{headers} carries the C{CDN-Loop} that C{fill}
    forwarded (that of the listener who started it).
    """
    sent = [value for key, value in fill.forwarded if key == CDN_LOOP]
    return headers.getRawHeaders(CDN_LOOP, []) == sent
