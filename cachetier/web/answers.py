"""
The origin's answers other than the file (a 404, a 301, a 503...), as it
gave them: its status, its end-to-end headers and its body, without the
ranges, validators and defaults cachetier adds to a file.
"""

from __future__ import annotations

from typing import Any

from twisted.web import http, server

from ..errors import NOT_FOUND_STATUSES, OriginAnswer
from ..objects import StoredObject
from .headers import replay
from .hops import forwarded

# Statuses that never carry a body, nor a Content-Length of one.
_NO_BODY = frozenset({204, 304})


def answer_headers(
    request: Any,
    status: int,
    content_type: str,
    etag: str | None,
    last_modified: float | None,
    cache_control: str | None,
    extra: tuple[tuple[str, str], ...],
    size: int,
) -> bool:
    """
    Set an answer's status and headers.

    @return: whether its body follows (not for a HEAD, a 204 or a 304).
    """
    request.setResponseCode(status)
    replay(request, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra])
    if etag is not None:
        request.setHeader(b"etag", etag.encode("latin-1"))
    if last_modified is not None:
        request.setHeader(b"last-modified", http.datetimeToString(int(last_modified)))
    if cache_control is not None:
        request.setHeader(b"cache-control", cache_control.encode("latin-1"))
    if status in _NO_BODY:
        return False
    request.setHeader(b"content-type", content_type.encode("latin-1"))
    request.setHeader(b"content-length", b"%d" % (size,))
    return request.method != b"HEAD"


def kept_answer_headers(request: Any, obj: StoredObject, age: int) -> bool:
    """
    Set the status and headers of an answer that was kept, with its Age.

    @return: whether its body follows.
    """
    request.setHeader(b"age", b"%d" % (age,))
    return answer_headers(
        request,
        obj.status,
        obj.content_type,
        obj.origin_etag,
        obj.origin_last_modified,
        obj.cache_control,
        obj.extra,
        obj.size,
    )


def render_answer(request: Any, answer: OriginAnswer) -> bytes | int:
    """
    Pass on an answer that was not kept, as it came.
    """
    headers = answer.headers
    status = headers.status
    forwarded(request, "uri-miss", status)
    if status in NOT_FOUND_STATUSES:
        request.outcome = "not_found"
    else:
        request.outcome = "error" if status >= 500 else "passed"
    body = answer_headers(
        request,
        status,
        headers.content_type,
        headers.etag,
        headers.last_modified,
        headers.cache_control,
        headers.extra,
        len(answer.body),
    )
    return answer.body if body else finish_bodiless(request)


def finish_bodiless(request: Any) -> int:
    """
    End a response whose headers say all (a HEAD, a 204, a 304): returning
    C{b""} would make Twisted add a C{Content-Length} of 0.
    """
    request.finish()
    return server.NOT_DONE_YET
