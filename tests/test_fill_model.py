"""
A model-based test of the fill: hypothesis drives a real L{Syncer} over a
real L{CacheStore} with random interleavings of its actors' moves, and
checks the rules for data after every step.

Everything runs in memory and in one thread: the origin is a fake at the
transfer seam (the interface L{cachetier.origin.Origin} offers the sync
code) that holds each request and each body until a rule answers it,
fails it or delivers its next chunk; time is a L{Clock}; the syncer's
thread work runs inline.  So every interleaving of readers, origin
answers, purges and restarts is reachable, and each counterexample
replays (hypothesis runs derandomized, with no example database; the one
thing that varies from run to run is the order in which the code under
test iterates its sets of transfers and followers).

The rules for data, checked after every step:
  - every byte a listener gets is the byte at that offset of the one
    origin version its response's headers named;
  - every published body is, byte for byte, the version its metadata
    names; a leftover partial that a resume would take holds, in the
    intervals its record claims, the bytes of the version it names;
  - a fill fails only for something the origin or the operator did (the
    disk never fails here); nothing is logged as an error;
  - with --max-size, the bytes on disk stay within it;
  - once no fill runs: every download slot is free (borrowed ones too),
    no origin request or body is left open, no descriptor is open on the
    cache but the listeners' own, and tmp/ holds nothing but resumable
    leftovers (a body with its record).

The machine runs in three configurations (see L{MACHINES}): the whole of
it with parallel fills, and two that keep only the moves a purge, or an
origin that ignores If-Range, needs, so that the defect the whole machine
finds first cannot hide the others within the examples CI runs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cachetier.errors import OriginError, Reason
from cachetier.objects import ObjectHeaders, StoredObject
from cachetier.origin import OriginResponse
from cachetier.store import META_BYTES, CacheStore, Handle
from cachetier.sync import Syncer
from cachetier.sync.fill import Fill
from cachetier.sync.sparse import SLICE

MiB = 1 << 20
# Objects big enough to be filled sparsely (more than two slices).
SIZES = {"a.mp3": 2 * SLICE + 1 * MiB + 12345, "b.mp3": 3 * SLICE, "c.mp3": 4 * SLICE - 777}
NAMES = sorted(SIZES)
CHUNK = 1 * MiB
MAX_CONCURRENT = 4
# Room for two of the objects at once, never three.
QUOTA = 32 * MiB
# The moves of the operator, of time and of the origin's objects.
ACTIONS = frozenset({"replace", "toggle_ranges", "purge", "tick", "restart"})
# How a fill may fail here: for the origin's doing, a stop, or a full quota.
# The disk never fails in this model, so a write_error is a defect.
EXPLAINED = frozenset(
    {"http_503", "timeout", "truncated", "changed", "cancelled", "no_space", "too_large"}
)

_bodies: dict[tuple[str, int], bytes] = {}


def _body(name: str, generation: int) -> bytes:
    """
    Version C{generation} of C{name}: random bytes, so that two versions
    (or a version and zeros) differ at almost every offset.
    """
    key = (name, generation)
    if key not in _bodies:
        _bodies[key] = random.Random(f"{name}/{generation}").randbytes(SIZES[name])
    return _bodies[key]


def _etag(name: str, generation: int) -> str:
    return f'"{name}-v{generation}"'


class _Body:
    """
    One origin answer's body: not yet claimed, streaming, or over.

    @ivar state: C{open} (answered, nobody streams or abandons it yet),
        C{streaming}, C{done}, C{failed}, C{cancelled} or C{abandoned}.
    """

    def __init__(self, etag: str, data: bytes, start: int) -> None:
        self.etag = etag
        self.data = data
        self.start = start
        self.sent = 0
        self.state = "open"
        self.write: Any = None
        self.done: Deferred[None] | None = None

    def __repr__(self) -> str:
        sent = f"{self.sent}/{len(self.data)}"
        return f"<body {self.etag} from {self.start}, {sent} sent, {self.state}>"


class _Request:
    def __init__(self, name: str, validators: Any, byte_range: Any, d: Deferred[Any]) -> None:
        self.name = name
        self.validators = validators
        self.byte_range = byte_range
        self.deferred = d

    def __repr__(self) -> str:
        return f"<GET {self.name} range={self.byte_range}>"


class FakeOrigin:
    """
    The origin at the transfer seam: C{get} and C{stream} return Deferreds
    that only rules fire.

    @ivar ignores_if_range: answer a Range request with a 206 of the
        current version whatever its C{If-Range} names (some origins do).
    @ivar refuses_ranges: answer every request with a 200 for the whole
        object, and advertise no ranges.
    """

    def __init__(self, ignores_if_range: bool) -> None:
        self.ignores_if_range = ignores_if_range
        self.refuses_ranges = False
        self.generation = {name: 0 for name in NAMES}
        self.versions = {_etag(n, 0): (n, 0) for n in NAMES}
        self.requests: list[_Request] = []
        self.bodies: list[_Body] = []
        self.misuse: list[str] = []

    def version_bytes(self, etag: str | None) -> bytes | None:
        if etag not in self.versions:
            return None
        return _body(*self.versions[etag])

    def replace(self, name: str) -> None:
        generation = self.generation[name] = self.generation[name] + 1
        self.versions[_etag(name, generation)] = (name, generation)

    # --- the interface of cachetier.origin.Origin ------------------------

    def url_for(self, name: str) -> str:
        return "http://origin.test/" + name

    def get(
        self,
        name: str,
        validators: StoredObject | None = None,
        byte_range: tuple[int, int, str] | None = None,
    ) -> Deferred[OriginResponse]:
        request: _Request

        def cancel(d: Deferred[OriginResponse]) -> None:
            self.requests.remove(request)

        request = _Request(name, validators, byte_range, Deferred(cancel))
        self.requests.append(request)
        return request.deferred

    def stream(self, response: OriginResponse, write: Any) -> Deferred[None]:
        body = response.response

        def cancel(d: Deferred[None]) -> None:
            body.state = "cancelled"
            self.bodies.remove(body)

        if body.state != "open":
            self.misuse.append(f"streamed {body!r}")
        body.state, body.write = "streaming", write
        body.done = Deferred(cancel)
        return body.done

    def abandon(self, response: OriginResponse) -> None:
        body = response.response
        if body.state != "open":
            self.misuse.append(f"abandoned {body!r}")
        body.state = "abandoned"
        self.bodies.remove(body)

    # --- what rules do -----------------------------------------------------

    def answer(self, request: _Request) -> None:
        """
        Answer with the current version: a 206 for a Range request the
        origin takes, else a 200 for the whole object.
        """
        self.requests.remove(request)
        name = request.name
        generation = self.generation[name]
        etag, data = _etag(name, generation), _body(name, generation)
        ranged = request.byte_range is not None and not self.refuses_ranges
        if ranged:
            first, last, validator = request.byte_range
            ranged = validator == etag or self.ignores_if_range
        if ranged:
            body = _Body(etag, data[first : last + 1], first)
            content_range: tuple[int, int] | None = (first, len(data))
        else:
            body, content_range = _Body(etag, data, 0), None
        self.bodies.append(body)
        request.deferred.callback(
            OriginResponse(
                headers=ObjectHeaders(content_type="audio/mpeg", etag=etag),
                length=len(body.data),
                checksum=None,
                response=body,
                ranges=ranged or not self.refuses_ranges,
                validator=etag,
                content_range=content_range,
            )
        )

    def fail(self, request: _Request, how: str) -> None:
        self.requests.remove(request)
        if how.startswith("http_"):
            error = OriginError(Reason.http_status, f"the fake origin: {how}", int(how[5:]))
        else:
            error = OriginError(Reason(how), f"the fake origin: {how}")
        request.deferred.errback(error)

    def deliver(self, body: _Body, chunks: int) -> None:
        """
        Send up to C{chunks} more chunks of a body being streamed.
        """
        for _ in range(chunks):
            if body.state != "streaming":
                return
            data = body.data[body.sent : body.sent + CHUNK]
            body.sent += len(data)
            try:
                body.write(data)
            except OSError as e:
                self.break_off(body, OriginError(Reason.write_error, str(e)))
                return
            if body.state == "streaming" and body.sent == len(body.data):
                body.state = "done"
                self.bodies.remove(body)
                assert body.done is not None
                body.done.callback(None)

    def break_off(self, body: _Body, error: OriginError) -> None:
        body.state = "failed"
        self.bodies.remove(body)
        assert body.done is not None
        body.done.errback(error)

    def open(self) -> list[_Request | _Body]:
        """
        The requests and bodies nobody has finished with.
        """
        return [*self.requests, *self.bodies]

    def streaming(self) -> list[_Body]:
        return [b for b in self.bodies if b.state == "streaming"]


class Reader:
    """
    A listener following a fill from C{position} to the end, the way
    L{cachetier.web.bodies.FillProducer} does, keeping what it read.
    While C{paused} (a client not reading), it reads nothing.
    """

    def __init__(self, model: FillMachine, fill: Fill, position: int, paused: bool) -> None:
        self.model = model
        self.fill = fill
        self.position = position
        self.paused = paused
        assert fill.headers is not None and fill.length is not None
        self.etag = fill.headers.etag
        self.end = fill.length
        self.ended: str | None = None
        self.handle: Handle | None = fill.follow(self)

    def fill_progressed(self) -> None:
        if not self.paused:
            self.pump()

    def pump(self) -> None:
        fill = self.fill
        while self.ended is None:
            if fill.state == "failed":
                self.close("aborted")
                return
            limit = min(self.end, fill.readable_until(self.position))
            if self.position >= limit:
                if self.position >= self.end or fill.state == "done":
                    self.close("finished")
                else:
                    fill.wait(self)
                    fill.need(self.position)
                return
            assert self.handle is not None
            data = os.pread(self.handle.fd, min(CHUNK, limit - self.position), self.position)
            if not data:
                # FillProducer would spin here for good.
                self.model.violations.append(
                    f"a reader of {fill.name} read nothing at {self.position}, where the fill"
                    f" says bytes are on disk up to {limit}"
                )
                self.close("stuck")
                return
            self.model.got("a reader", fill.name, self.etag, self.position, data)
            self.position += len(data)

    def close(self, why: str) -> None:
        self.ended = why
        self.fill.unfollow(self)
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.release()


def _where(data: bytes, offset: int, origin: FakeOrigin, name: str) -> str:
    """
    What a wrong run of bytes is instead, for the failure message.
    """
    if not data.strip(b"\0"):
        return f"zeros ({len(data)} bytes)"
    for etag, version in origin.versions.items():
        if version[0] == name and _body(*version)[offset : offset + len(data)] == data:
            return f"version {etag}"
    return "a mix of versions, or of a version and zeros"


def _differences(data: bytes, version: bytes) -> str:
    """
    Where C{data} departs from C{version}, by MiB, for the failure message.
    """
    if len(data) != len(version):
        return f"{len(data)} bytes, not {len(version)}"
    wrong = [
        f"[{i}, {i + MiB})" + (" zeros" if not data[i : i + MiB].strip(b"\0") else "")
        for i in range(0, len(data), MiB)
        if data[i : i + MiB] != version[i : i + MiB]
    ]
    return "wrong in " + ", ".join(wrong)


class FillMachine(RuleBasedStateMachine):
    """
    Readers, the origin, purges and restarts around one real L{Syncer}.
    """

    def __init__(self, base: str) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(dir=base)
        self.clock = Clock()
        self.violations: list[str] = []
        self.logged: list[str] = []
        globalLogPublisher.addObserver(self._observe)
        self.readers: list[Reader] = []
        self.waiting: list[Deferred[Any]] = []
        self.fills: list[Fill] = []
        self.origin = FakeOrigin(False)
        self.store: CacheStore | None = None
        self.syncer: Syncer | None = None
        self._published: dict[tuple[str, int, int], bool] = {}

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            failure = event.get("log_failure")
            self.logged.append(repr(failure.value if failure is not None else event))

    def teardown(self) -> None:
        globalLogPublisher.removeObserver(self._observe)
        for reader in self.readers:
            if reader.ended is None:
                reader.close("teardown")
        if self.syncer is not None:
            self.syncer.stop()
        for d in self.waiting:
            d.addErrback(lambda _: None)
        if self.store is not None and self.store.generation is not None:
            self.store.generation.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # The objects at the origin, and the moves besides those of listeners
    # and of the origin's transfers (see the configurations below).
    names: tuple[str, ...] = tuple(NAMES)
    actions = ACTIONS

    def start(self, connections: int, ignores_if_range: bool, quota: int | None) -> None:
        self.connections = connections
        self.quota = quota
        self.origin.ignores_if_range = ignores_if_range
        self._open()
        # A first listener, so that every example has a download to act on.
        self._ask(self.names[0], 0, False)

    def _open(self) -> None:
        # A restart here is a process's, not a power cut: what was written
        # stays, so fsyncs would only cost time.
        self.store = CacheStore.open(
            self.root, max_size=self.quota, now=self.clock.seconds, fsync=lambda fd: None
        )
        self.syncer = Syncer(
            self.origin,  # type: ignore[arg-type]
            self.store,
            self.clock,
            lambda f, *a: maybeDeferred(f, *a),
            max_concurrent=MAX_CONCURRENT,
            max_new_per_second=1e9,
            max_new_per_client=1e9,
            fill_connections=self.connections,
        )
        self.fills = []

    def got(self, who: str, name: str, etag: str | None, offset: int, data: bytes) -> None:
        """
        Rule: every byte a listener gets is the byte at its offset of the
        one version its response's headers named.
        """
        who = f"{who} on {name}"
        version = self.origin.version_bytes(etag)
        if version is None:
            self.violations.append(f"{who} got bytes under an ETag the origin never sent: {etag}")
        elif version[offset : offset + len(data)] != data:
            self.violations.append(
                f"{who} got [{offset}, {offset + len(data)}) of {etag} but they are"
                f" {_where(data, offset, self.origin, name)}"
            )

    # --- readers -----------------------------------------------------------

    def _name(self, obj: int) -> str:
        return self.names[obj % len(self.names)]

    @rule(obj=st.integers(0, 2), at=st.integers(0, 15), paused=st.booleans())
    def join(self, obj: int, at: int, paused: bool) -> None:
        """
        A listener asks for object C{obj} from byte C{at} MiB on.
        """
        self._ask(self._name(obj), at, paused)

    def _ask(self, name: str, at: int, paused: bool) -> None:
        assert self.syncer is not None
        offset = min(at * MiB, SIZES[name] - 1)
        status = self.syncer.status(name)
        if status.state == "cached":
            assert status.stored is not None
            self._read_stored(status.stored, offset)
        elif status.state == "syncing":
            assert status.fill is not None
            d = status.fill.when_started()
            self.waiting.append(d)
            d.addCallbacks(self._follow, lambda _: None, (offset, paused))

    def _follow(self, fill: Fill, offset: int, paused: bool) -> None:
        if fill.readable:
            reader = Reader(self, fill, offset, paused)
            self.readers.append(reader)
            if not paused:
                reader.pump()
        elif fill.stored is not None:
            self._read_stored(fill.stored, offset)

    def _read_stored(self, stored: StoredObject, offset: int) -> None:
        with open(stored.path, "rb") as f:
            f.seek(offset)
            data = f.read()
        self.got("a hit", stored.name, stored.origin_etag, offset, data)

    def _live(self) -> list[Reader]:
        return [r for r in self.readers if r.ended is None]

    @rule(
        reader=st.integers(0, 7),
        what=st.sampled_from(["seek", "pause_or_resume"]),
        at=st.integers(0, 15),
    )
    def listener(self, reader: int, what: str, at: int) -> None:
        """
        A listener seeks (its request ends and a new one asks from byte
        C{at} MiB on), or stops or starts reading.
        """
        live = self._live()
        if not live:
            return
        chosen = live[reader % len(live)]
        if what == "seek":
            chosen.close("seeked")
            self._ask(chosen.fill.name, at, chosen.paused)
            return
        chosen.paused = not chosen.paused
        if not chosen.paused:
            chosen.pump()

    # --- the origin -----------------------------------------------------------

    def _pending(self) -> list[_Request | _Body]:
        # In an order of their own: the code under test iterates sets of
        # transfers and followers, whose order changes from run to run.
        requests = sorted(self.origin.requests, key=lambda r: (r.name, r.byte_range or ()))
        bodies = sorted(self.origin.streaming(), key=lambda b: (b.etag, b.start, b.sent))
        return [*requests, *bodies]

    @rule(
        pick=st.integers(0, 7),
        how=st.sampled_from(["go", "go", "go", "http_503", "timeout"]),
        chunks=st.integers(1, 16),
    )
    def origin_acts(self, pick: int, how: str, chunks: int) -> None:
        """
        The origin goes on with one of its requests or bodies: it answers a
        request waiting for its headers (C{go}) or fails it (C{http_503},
        C{timeout}); it sends the next C{chunks} MiB of a body (C{go}) or
        the connection breaks mid-body.
        """
        pending = self._pending()
        if not pending:
            return
        chosen = pending[pick % len(pending)]
        if isinstance(chosen, _Request):
            if how == "go":
                self.origin.answer(chosen)
            else:
                self.origin.fail(chosen, how)
        elif how == "go":
            self.origin.deliver(chosen, chunks)
        else:
            self.origin.break_off(chosen, OriginError(Reason.truncated, "the connection broke"))

    @precondition(lambda self: "replace" in self.actions)
    @rule(obj=st.integers(0, 2))
    def replace(self, obj: int) -> None:
        """
        The origin's object becomes another of the same length.
        """
        name = self._name(obj)
        if self.origin.generation[name] < 3:
            self.origin.replace(name)

    @precondition(lambda self: "toggle_ranges" in self.actions)
    @rule()
    def toggle_ranges(self) -> None:
        """
        The origin starts or stops ignoring Range requests (and stops or
        starts advertising them).
        """
        self.origin.refuses_ranges = not self.origin.refuses_ranges

    # --- the operator and time --------------------------------------------------

    @precondition(lambda self: "purge" in self.actions)
    @rule(obj=st.integers(0, 2), ask_again=st.booleans())
    def purge(self, obj: int, ask_again: bool) -> None:
        """
        The operator purges the object, and (C{ask_again}) a listener asks
        for it at once.
        """
        assert self.syncer is not None
        name = self._name(obj)
        self.syncer.purge(name)
        if ask_again:
            self._ask(name, 0, False)

    @precondition(lambda self: "tick" in self.actions)
    @rule()
    def tick(self) -> None:
        self.clock.advance(1.0)

    @precondition(lambda self: "restart" in self.actions)
    @rule()
    def restart(self) -> None:
        """
        Stop the syncer (its listeners go with the process) and start a new
        one over the same directory.
        """
        assert self.syncer is not None and self.store is not None
        stopped = self.syncer.stop()
        if not stopped.called:
            self.violations.append("the syncer's stop did not finish with the origin idle")
        for reader in self._live():
            reader.close("restart")
        if self.origin.open():
            self.violations.append(f"origin connections outlived the stop: {self.origin.open()}")
        self.origin.requests, self.origin.bodies = [], []
        assert self.store.generation is not None
        self.store.generation.close()
        self._open()

    # --- the rules for data --------------------------------------------------------

    @invariant()
    def rules_hold(self) -> None:
        if self.syncer is None:
            return
        for fill in self.syncer.syncs():
            if fill not in self.fills:
                self.fills.append(fill)
        assert not self.violations, self.violations[0]
        assert not self.origin.misuse, self.origin.misuse[0]
        assert not self.logged, f"logged an error: {self.logged[0]}"
        for fill in self.fills:
            reason = getattr(fill.error, "label", None)
            assert fill.state != "failed" or reason in EXPLAINED, (
                f"the fill of {fill.name} failed with no fault of the origin: "
                f"{reason}: {fill.error}"
            )
        self._check_published()
        self._check_quota()
        if all(fill.state in ("done", "failed") for fill in self.fills):
            self._check_idle()
            self._check_partials()

    def _check_published(self) -> None:
        """
        Every published body is, byte for byte, a version the origin sent.
        """
        assert self.store is not None
        for name in self.store.names():
            obj = self.store.get(name)
            assert obj is not None
            st_ = os.stat(obj.path)
            key = (obj.path, st_.st_mtime_ns, st_.st_size)
            if key not in self._published:
                with open(obj.path, "rb") as f:
                    data = f.read()
                version = self.origin.version_bytes(obj.origin_etag) or b""
                self._published[key] = data == version
                assert self._published[key], (
                    f"published {name} as {obj.origin_etag} but its body is"
                    f" {_where(data, 0, self.origin, name)}: {_differences(data, version)}"
                )

    def _tmp(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.root, "tmp")))

    def _check_partials(self) -> None:
        """
        A leftover's record claims only bytes on disk of the version it
        names: a resume would publish them.
        """
        tmp = os.path.join(self.root, "tmp")
        for filename in self._tmp():
            if not filename.endswith(".partial.json"):
                continue
            try:
                with open(os.path.join(tmp, filename), "rb") as f:
                    record = json.load(f)
                fd = os.open(os.path.join(tmp, filename[: -len(".json")]), os.O_RDONLY)
            except FileNotFoundError:
                continue  # unpaired: see _check_idle
            if os.fstat(fd).st_size != record["length"]:
                os.close(fd)
                continue  # not resumable: Layout.partial drops it
            try:
                version = self.origin.version_bytes(record["validator"])
                assert version is not None, f"a leftover of no version: {record['validator']}"
                for start, end in record["intervals"]:
                    data = os.pread(fd, end - start, start)
                    assert data == version[start:end], (
                        f"the leftover record of {record['name']} claims [{start}, {end}) of"
                        f" {record['validator']} but the file holds"
                        f" {_where(data, start, self.origin, record['name'])}"
                    )
            finally:
                os.close(fd)

    def _check_quota(self) -> None:
        """
        Bytes on disk (bodies, their metadata, temp files) stay within
        --max-size.
        """
        if self.quota is None:
            return
        used = 0
        for directory, _, files in os.walk(os.path.join(self.root, "objects")):
            for filename in files:
                if not filename.endswith(".json"):
                    used += os.stat(os.path.join(directory, filename)).st_size + META_BYTES
        tmp = os.path.join(self.root, "tmp")
        for filename in self._tmp():
            st_ = os.stat(os.path.join(tmp, filename))
            if not filename.endswith(".json"):
                used += min(st_.st_size, st_.st_blocks * 512)
        assert used <= self.quota, f"{used} bytes on disk, over the --max-size of {self.quota}"

    def _check_idle(self) -> None:
        """
        With no fill running: every download slot is free, no origin
        connection is open, no descriptor is open on the cache but the
        readers', and tmp/ holds only resumable leftovers (a body and its
        record).
        """
        assert self.syncer is not None
        assert self.syncer.in_flight == 0, (
            f"{self.syncer.in_flight} download slots in use with no download running"
        )
        assert not self.origin.open(), (
            f"origin connections open with no download running: {self.origin.open()}"
        )
        held = {r.handle.fd for r in self._live() if r.handle is not None}
        open_here = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            # The store's own: the generation counter's mapping.
            if target.startswith(self.root + os.sep) and not target.endswith("/generation"):
                open_here[int(fd)] = target
        stray = {fd: target for fd, target in open_here.items() if fd not in held}
        assert not stray, f"descriptors open on the cache with no owner: {stray}"
        files = set(self._tmp())
        for filename in files:
            if filename.endswith(".partial"):
                paired = filename + ".json" in files
            elif filename.endswith(".partial.json"):
                paired = filename[: -len(".json")] in files
            else:
                paired = False
            assert paired, f"tmp/{filename} outlived its download: {sorted(files)}"


def configured(
    connections: st.SearchStrategy[int],
    ignores_if_range: st.SearchStrategy[bool],
    quota: st.SearchStrategy[int | None],
    actions: frozenset[str] = ACTIONS,
    names: tuple[str, ...] = tuple(NAMES),
) -> type[FillMachine]:
    """
    The machine with its configuration drawn from these strategies, these
    moves of the operator and the origin (besides those of listeners and
    transfers), over these objects.
    """

    class Configured(FillMachine):
        @initialize(connections=connections, ignores_if_range=ignores_if_range, quota=quota)
        def start(self, connections: int, ignores_if_range: bool, quota: int | None) -> None:
            super().start(connections, ignores_if_range, quota)

    Configured.actions = actions
    Configured.names = names
    return Configured


SETTINGS = settings(
    stateful_step_count=40,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# The whole machine, with parallel fills; and two with fewer moves, so that
# a defect found early in the whole one cannot hide these within the
# examples CI runs: a purge during a fill of one object, and an origin that
# ignores If-Range replacing its one object.
MACHINES = {
    "parallel": configured(st.integers(2, 4), st.booleans(), st.sampled_from([None, QUOTA])),
    "purge": configured(
        st.just(1), st.just(False), st.just(None), frozenset({"purge"}), ("a.mp3",)
    ),
    "if_range_ignored": configured(
        st.just(1), st.just(True), st.just(None), frozenset({"replace"}), ("a.mp3",)
    ),
}


class FillModelTests(SynchronousTestCase):
    def run_machine(self, machine: type[FillMachine], examples: int) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        try:
            run_state_machine_as_test(
                lambda: machine(base), settings=settings(SETTINGS, max_examples=examples)
            )
        except BaseException as e:
            # Hypothesis attaches the steps as notes, which trial does not show.
            _print_notes(e)
            raise

    def test_parallel(self) -> None:
        self.run_machine(MACHINES["parallel"], 100)

    def test_purge(self) -> None:
        self.run_machine(MACHINES["purge"], 250)

    def test_if_range_ignored(self) -> None:
        self.run_machine(MACHINES["if_range_ignored"], 400)


def _print_notes(error: BaseException) -> None:
    if not hasattr(error, "exceptions"):
        print(f"{type(error).__name__}: {error}")
    for note in getattr(error, "__notes__", ()):
        print(note)
    for inner in getattr(error, "exceptions", ()):
        _print_notes(inner)
