"""
The routes of the original cache-tier server (1.0.4), wire-compatible so
existing clients keep working: C{/verify/<name>} and C{/download/<name>}.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from ..names import InvalidName
from ..sync import Syncer
from ._json import JSONResource, render_json
from .addresses import client_address, download_url, name_of


class VerifyResource(JSONResource):
    """
    C{GET /verify/<name>}: C{{"available", "file", "error", "error_msg"}},
    starting a sync when the file is not cached.
    """

    isLeaf = True

    def __init__(self, syncer: Syncer) -> None:
        super().__init__()
        self.syncer = syncer

    def render_GET(self, request: IRequest) -> bytes:
        raw = request.path.split(b"/", 2)[-1].decode("utf-8", "replace")
        try:
            name = name_of(request)
        except InvalidName as e:
            body = {"available": False, "file": raw, "error": True, "error_msg": str(e)}
            return render_json(request, body, 400)
        status = self.syncer.status(name, client=client_address(request))
        error = status.state in ("not_found", "error")
        return render_json(
            request,
            {
                "available": status.state == "cached",
                "file": name,
                "error": error,
                "error_msg": f"{status.state}: {status.error}" if error else None,
            },
        )


class DownloadResource(JSONResource):
    """
    C{GET /download/<name>}: a redirect to the cached copy when there is
    one; otherwise to the origin, starting a sync.
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
            body = {"available": False, "file": None, "error": True, "error_msg": str(e)}
            return render_json(request, body, 400)
        status = self.syncer.status(name, client=client_address(request))
        if status.state == "cached":
            target = download_url(request, self.public_url, name)
        else:
            target = self.syncer.origin_url(name)
        request.redirect(target.encode("latin-1"))
        request.setHeader(b"cache-control", b"no-store")
        return b""
