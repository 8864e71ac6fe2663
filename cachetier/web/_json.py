"""
The one way the service answers in JSON, errors included.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import evolve
from twisted.web.error import UnsupportedMethod
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

# Reason phrases Twisted does not know (it says "Unknown Status").
_PHRASES = {508: b"Loop Detected"}  # RFC 5842 section 7.2


def _json_headers(request: IRequest, code: int) -> None:
    request.setResponseCode(code, _PHRASES.get(code))
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")


def _encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def render_json(request: IRequest, body: Any, code: int = 200) -> bytes:
    """
    Set the status and headers of a JSON answer and return its body.
    """
    _json_headers(request, code)
    return _encode(body)


def error_body(error: str, message: str) -> bytes:
    """
    An error in the contract's one shape: C{{"error": code, "message": text}}
    (also written raw by the channel, before there is a request).
    """
    return _encode({"error": error, "message": message})


def render_error(request: IRequest, code: int, error: str, message: str) -> bytes:
    """
    Set the status and headers of a JSON error and return its body.  A
    C{/files/} answer's C{Cache-Status} names the error (L{hops.stamp}),
    with nothing of an upstream's: this node's own answer.
    """
    _json_headers(request, code)
    status = getattr(request, "cache_status", None)
    if status is not None:
        request.cache_status = evolve(
            status, fwd=None, fwd_status=None, stored=False, collapsed=False, detail=error
        )
    return error_body(error, message)


class EndWatch:
    """
    Whether a request has ended, answered or abandoned: a flag set from
    C{notifyFinish()}, as klein keeps one, for work that finishes later
    and must not answer a request that is gone.  Make one while rendering,
    before the request can end.
    """

    ended = False

    def __init__(self, request: IRequest) -> None:
        request.notifyFinish().addBoth(self._end)

    def _end(self, _: object) -> None:
        self.ended = True


def answerable(request: IRequest, watch: EndWatch) -> bool:
    """
    Whether C{request} can still be answered: not answered already, and
    its listener still connected (Twisted raises on finishing it then).
    """
    return not request.finished and not watch.ended


def finish(request: IRequest, watch: EndWatch) -> None:
    """
    End a deferred answer, unless L{answerable} says it cannot be: a listener
    who left is not an error.
    """
    if answerable(request, watch):
        request.finish()


def answer(request: IRequest, watch: EndWatch, body: bytes | int) -> None:
    """
    End a deferred answer with what a render produced: its bytes with their
    length (an empty HEAD's render set the length of what a GET would get),
    or nothing when a producer now owns the response.  See L{finish}.
    """
    if body is NOT_DONE_YET or not answerable(request, watch):
        return
    assert isinstance(body, bytes)
    if request.method != b"HEAD" or body:
        request.setHeader(b"content-length", b"%d" % (len(body),))
    request.write(body)
    request.finish()


class JSONResource(Resource):
    """
    A resource whose method errors are JSON too: C{render_<METHOD>} defines
    what it accepts, anything else is a 405 naming the allowed methods.
    """

    def render(self, request: IRequest) -> bytes | int:
        try:
            return super().render(request)
        except UnsupportedMethod as e:
            allowed = sorted(m.decode("ascii") for m in e.allowedMethods)
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            method = request.method.decode("latin-1")
            return render_error(
                request,
                405,
                "method_not_allowed",
                f"{method} is not allowed here; use {', '.join(allowed)}",
            )


class NotFound(JSONResource):
    """
    The JSON 404 for any path the service does not have.
    """

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        return render_error(request, 404, "not_found", "there is nothing at this path")
