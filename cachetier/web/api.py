"""
C{/api/v1/files/<name>}: the JSON status of one file.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from ..names import InvalidName
from ..origin import OriginError
from ..sync import FileStatus, Syncer
from ._json import JSONResource, render_error, render_json
from ._site import download_url, name_of

_NO = (b"0", b"false", b"no")


def status_body(status: FileStatus, download: str, origin: str) -> dict[str, Any]:
    """
    The contract's status fields for one file.
    """
    body: dict[str, Any] = {
        "file": status.name,
        "available": status.state == "cached",
        "state": status.state,
        "size": None,
        "bytes_synced": 0,
        "etag": None,
        "last_modified": None,
        "content_type": None,
        "download_url": download,
        "origin_url": origin,
        "error": None,
    }
    if status.stored is not None:
        obj = status.stored
        body.update(
            size=obj.size,
            bytes_synced=obj.size,
            etag=obj.etag,
            last_modified=obj.last_modified,
            content_type=obj.content_type,
        )
    elif status.fill is not None:
        fill = status.fill
        body.update(size=fill.length, bytes_synced=fill.written)
        if fill.headers is not None:
            body.update(
                etag=fill.headers.etag,
                last_modified=fill.headers.last_modified,
                content_type=fill.headers.content_type,
            )
    if status.error is not None:
        reason = status.error.reason if isinstance(status.error, OriginError) else "not_found"
        body["error"] = f"{reason}: {status.error}"
    return body


class FileStatusResource(JSONResource):
    """
    C{GET /api/v1/files/<name>}: is it cached?  Asking starts a sync unless
    C{?sync=0}.
    """

    isLeaf = True

    def __init__(self, syncer: Syncer, public_url: str | None) -> None:
        super().__init__()
        self.syncer = syncer
        self.public_url = public_url

    def render_GET(self, request: IRequest) -> bytes:
        try:
            name = name_of(request)
        except InvalidName as e:
            return render_error(request, 400, "bad_name", str(e))
        start = request.args.get(b"sync", [b"1"])[-1].lower() not in _NO
        status = self.syncer.status(name, start=start)
        return render_json(
            request,
            status_body(
                status,
                download_url(request, self.public_url, name),
                self.syncer.origin.url_for(name),
            ),
        )
