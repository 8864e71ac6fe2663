"""
C{/api/v1/files/<name>}: the JSON status of one file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import date
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from ..analytics import Analytics, to_csv
from ..cluster.bus import Bus, ClusterUnavailable
from ..errors import OriginError, Overloaded, Reason
from ..names import InvalidName, split_variant, validate_name
from ..sync import FileStatus, Syncer
from ._admin import refuse
from ._json import EndWatch, JSONResource, answer, render_error, render_json
from .addresses import client_address, download_url, name_of
from .cluster import ClusterStats

log = Logger()

_NO = (b"0", b"false", b"no")


def status_body(status: FileStatus, download: str, origin: str) -> dict[str, Any]:
    """
    The contract's status fields for one file.
    """
    body: dict[str, Any] = {
        "file": split_variant(status.name)[0],
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
        "stale": status.stale,
        "status": status.status,
    }
    if status.stored is not None and status.state != "cached":
        # An answer other than the file is kept (a 404, a redirect...).
        body["error"] = f"http_{status.status}: the origin answered {status.status}"
    elif status.stored is not None:
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
        body["error"] = f"{_reason(status.error)}: {status.error}"
    return body


def _reason(error: Exception) -> str:
    if isinstance(error, OriginError):
        return error.label
    return (Reason.overloaded if isinstance(error, Overloaded) else Reason.internal).value


class FileStatusResource(JSONResource):
    """
    C{GET /api/v1/files/<name>}: is it cached?  Asking starts a sync unless
    C{?sync=0}.  C{DELETE} (admin) purges it.
    """

    isLeaf = True

    def __init__(
        self,
        syncer: Syncer,
        public_url: str | None,
        admin_token: bytes | None,
        bus: Bus | None = None,
    ) -> None:
        super().__init__()
        self.syncer = syncer
        self.public_url = public_url
        self.admin_token = admin_token
        self.bus = bus

    def render_DELETE(self, request: IRequest) -> bytes | int:
        refusal = refuse(request, self.admin_token)
        if refusal is not None:
            return refusal
        try:
            name = name_of(request)
        except InvalidName as e:
            return render_error(request, 400, "bad_name", str(e))
        return purge(
            request, self.bus, lambda: {"file": name, "purged": self.syncer.purge(name)}, [name]
        )

    def render_GET(self, request: IRequest) -> bytes:
        try:
            name = name_of(request)
        except InvalidName as e:
            return render_error(request, 400, "bad_name", str(e))
        start = request.args.get(b"sync", [b"1"])[-1].lower() not in _NO
        status = self.syncer.status(name, start=start, client=client_address(request))
        stored = self.syncer.store.get(status.name)
        if status.stored is None and status.state in ("syncing", "missing") and stored:
            # A stale copy that is revalidated before it is served: the
            # cache has the file (a 304 away, usually).
            status = FileStatus.of(status.name, stored, stale=True)
        body = status_body(
            status, download_url(request, self.public_url, name), self.syncer.origin_url(name)
        )
        # For a name that varies: the variants kept (the rest is of the
        # one for a request without the headers it varies by).
        body["variants"] = len(self.syncer.variants.keys_of(name))
        return render_json(request, body)


def _admin_body(request: IRequest, token: bytes | None) -> Any:
    """
    The JSON body of an admin call, or the error to answer (bytes).  The
    channel has capped the body at MAX_ADMIN_BODY.
    """
    refusal = refuse(request, token)
    if refusal is not None:
        return refusal
    try:
        return json.loads(request.content.read())
    except ValueError:
        return render_error(request, 400, "bad_json", "the body is not JSON")


def _names(request: IRequest, files: Any) -> list[str] | bytes:
    """
    C{files} if it is a list of valid names, or the error to answer.
    """
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return render_error(request, 400, "bad_request", 'send {"files": [names]}')
    for name in files:
        try:
            validate_name(name)
        except InvalidName as e:
            return render_error(request, 400, "bad_name", f"{name!r}: {e}")
    return files


# The longest ?wait a purge takes, in seconds.
MAX_WAIT = 60.0


def purge(
    request: IRequest,
    bus: Bus | None,
    here: Callable[[], dict[str, Any]],
    names: list[str] | None = None,
    prefix: str = "",
) -> bytes | int:
    """
    Answer a purge: C{here()}, the purge on this node, which says what to
    answer; in a cluster (a C{bus}), once the purge of C{names} or
    C{prefix} is in the cluster's log too (every node applies it from
    there), and with C{?wait=SECONDS} once every live node has applied it
    or the time is up, saying which have not.  A purge the log does not
    take is a 503: this node alone purged, and the caller sends it again.
    """
    if bus is None:
        return render_json(request, here())
    wait = request.args.get(b"wait", [b"0"])[-1].decode("ascii", "replace")
    try:
        seconds = float(wait)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT:
        return render_error(
            request, 400, "bad_wait", f"wait is a number of seconds from 0 to {MAX_WAIT:.0f}"
        )
    watch = EndWatch(request)
    # Here first: this node's own reader may apply the entry before the
    # append returns, and then there would be nothing left to tell of.
    body = here()

    async def logged() -> None:
        try:
            entry = await bus.purge(names, prefix)
            body["cluster"] = {"id": entry}
            if seconds:
                applied, pending = await bus.wait(entry, seconds)
                body["cluster"].update(applied=applied, pending=pending)
        except ClusterUnavailable as e:
            request.setHeader(b"retry-after", b"1")
            answer(request, watch, render_error(request, 503, "cluster_unavailable", str(e)))
            return
        answer(request, watch, render_json(request, body))

    def failed(failure: Any) -> None:
        log.failure("a purge failed", failure)
        answer(request, watch, render_error(request, 500, "internal", "the purge failed"))

    Deferred.fromCoroutine(logged()).addErrback(failed)
    return NOT_DONE_YET


class _SyncerAdmin(JSONResource):
    """
    An admin resource over the syncer.
    """

    isLeaf = True

    def __init__(self, syncer: Syncer, admin_token: bytes | None) -> None:
        super().__init__()
        self.syncer = syncer
        self.admin_token = admin_token


class PurgeResource(_SyncerAdmin):
    """
    C{POST /api/v1/purge} (admin) with C{{"files": [names]}} or
    C{{"prefix": "episodes/2024/"}}; in a cluster, every node purges
    (see L{purge}).
    """

    def __init__(self, syncer: Syncer, admin_token: bytes | None, bus: Bus | None = None) -> None:
        super().__init__(syncer, admin_token)
        self.bus = bus

    def render_POST(self, request: IRequest) -> bytes | int:
        body = _admin_body(request, self.admin_token)
        if isinstance(body, bytes):
            return body
        if not isinstance(body, dict) or len(body.keys() & {"files", "prefix"}) != 1:
            return render_error(
                request, 400, "bad_request", 'send {"files": [names]} or {"prefix": "..."}'
            )
        if "prefix" in body:
            prefix = body["prefix"]
            if not isinstance(prefix, str) or not prefix:
                return render_error(
                    request, 400, "bad_request", "prefix must be a non-empty string"
                )

            def here() -> dict[str, Any]:
                purged = self.syncer.purge_prefix(prefix)
                return {"purged": purged, "count": len(purged)}

            return purge(request, self.bus, here, prefix=prefix)
        files = _names(request, body["files"])
        if isinstance(files, bytes):
            return files

        def here_names() -> dict[str, Any]:
            purged = [name for name in files if self.syncer.purge(name)]
            return {"purged": purged, "count": len(purged)}

        return purge(request, self.bus, here_names, files)


# Names one warm-up call may carry.
MAX_WARM_NAMES = 1000


class WarmResource(_SyncerAdmin):
    """
    C{POST /api/v1/warm} (admin) with C{{"files": [names]}}: sync them
    ahead of listeners, at low priority (see L{Syncer.warm}).  Answers each
    name's state now.
    """

    def render_POST(self, request: IRequest) -> bytes:
        body = _admin_body(request, self.admin_token)
        if isinstance(body, bytes):
            return body
        files = _names(request, body.get("files") if isinstance(body, dict) else None)
        if isinstance(files, bytes):
            return files
        if len(files) > MAX_WARM_NAMES:
            return render_error(request, 400, "too_many", f"at most {MAX_WARM_NAMES} names a call")
        states = []
        for name in files:
            try:
                state = self.syncer.warm(name)
            except Overloaded as e:
                return render_error(request, 503, "overloaded", str(e))
            states.append({"file": name, "state": state})
        return render_json(request, {"files": states})


class SyncsResource(_SyncerAdmin):
    """
    C{GET /api/v1/syncs} (admin): the downloads under way or waiting for a
    slot, with their progress, and the names waiting to be warmed.
    """

    def render_GET(self, request: IRequest) -> bytes:
        refusal = refuse(request, self.admin_token)
        if refusal is not None:
            return refusal
        syncs = [
            {
                "file": split_variant(fill.name)[0],
                "state": fill.state,
                "bytes_synced": fill.written,
                "size": fill.length,
            }
            for fill in self.syncer.syncs()
        ]
        warm_queue = [split_variant(key)[0] for key in self.syncer.warming.queue]
        return render_json(request, {"syncs": syncs, "warm_queue": warm_queue})


_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _is_day(text: str) -> bool:
    """
    Whether C{text} is a day of the calendar, as YYYY-MM-DD.
    """
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return _DAY.match(text) is not None


class StatsResource(JSONResource):
    """
    C{GET /api/v1/stats?file=&from=&to=&group=day|file&format=json|csv}
    (admin): download counts (see L{cachetier.analytics});
    C{&scope=cluster}: every live node's, merged (see L{ClusterStats}).
    """

    isLeaf = True

    def __init__(
        self,
        analytics: Analytics | None,
        admin_token: bytes | None,
        cluster: ClusterStats | None = None,
    ) -> None:
        super().__init__()
        self.analytics = analytics
        self.admin_token = admin_token
        self.cluster = cluster

    def render_GET(self, request: IRequest) -> bytes | int:
        refusal = refuse(request, self.admin_token)
        if refusal is not None:
            return refusal
        args = {k.decode(): v[-1].decode("utf-8", "replace") for k, v in request.args.items()}
        group, fmt = args.pop("group", "day"), args.pop("format", "json")
        scope = args.pop("scope", "node")
        if group not in ("day", "file") or fmt not in ("json", "csv"):
            return render_error(
                request, 400, "bad_request", "group is day or file; format is json or csv"
            )
        if scope not in ("node", "cluster"):
            return render_error(request, 400, "bad_request", "scope is node or cluster")
        for key in ("from", "to"):
            if key in args and not _is_day(args[key]):
                return render_error(
                    request, 400, "bad_date", f"{key} must be a day of the calendar, YYYY-MM-DD"
                )
        if scope == "cluster":
            if self.cluster is None:
                return render_error(
                    request, 404, "no_cluster", "this node is in no cluster (see --cluster)"
                )
            query = {k: args[k] for k in ("file", "from", "to") if args.get(k)}
            return self.cluster.render(request, {**query, "group": group}, fmt)
        if self.analytics is None:
            return render_error(request, 404, "no_analytics", "analytics are off")
        watch = EndWatch(request)
        d = self.analytics.query(
            file=args.get("file") or None, start=args.get("from"), end=args.get("to"), group=group
        )

        def send(rows: list[dict[str, Any]]) -> None:
            if fmt == "csv":
                request.setHeader(b"content-type", b"text/csv; charset=utf-8")
                answer(request, watch, to_csv(rows).encode("utf-8"))
            else:
                answer(request, watch, render_json(request, {"rows": rows}))

        def failed(failure: Any) -> None:
            log.failure("stats query failed", failure)
            answer(request, watch, render_error(request, 500, "internal", "the stats query failed"))

        d.addCallbacks(send, failed)
        return NOT_DONE_YET
