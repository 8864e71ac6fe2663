"""
The test origin, and the plumbing to run cachetier against it, on loopback
(L{CacheTestCase}) or in memory (L{MemoryCacheTestCase}).

L{TestOrigin} is a real Twisted web server that counts requests per name,
throttles, fails with any status, lies about Content-Length, dies mid-body,
hangs, and changes files, so every failure the cache must survive can be
staged over a real socket.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from typing import Any
from urllib.parse import unquote

from attrs import define, field
from treq import content
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web import http, server
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from twisted.web.resource import Resource
from zope.interface import implementer

import cachetier
from cachetier.assembly import Assembly, assemble, syncer_for
from cachetier.config import Settings
from cachetier.metrics import Metrics
from cachetier.objects import StoredObject
from cachetier.origin import Breaker, Origin, RetryPolicy
from cachetier.store import CacheStore
from cachetier.web import build_root

log = Logger()


@define
class OriginFile:
    """
    One file the test origin serves, and how it misbehaves.

    @ivar lie_length: a Content-Length to claim instead of the true one.
    @ivar die_after: abort the connection after this many body bytes.
    @ivar chunked: send no Content-Length (HTTP/1.1 chunked).
    @ivar content_md5: send a Content-MD5 header (this digest, base64).
    @ivar ranges: say C{Accept-Ranges: bytes} and answer a single Range
        (honouring If-Range) with a 206.
    @ivar ignore_ranges: say C{Accept-Ranges: bytes} but answer every
        Range request with the whole file.
    @ivar ignore_if_range: with C{ranges}, honour a Range even when its
        If-Range names another version (such origins exist).
    @ivar range_status: answer every Range request with this status.
    @ivar cors: answer as S3 does with a CORS rule: C{Vary: Origin,
        Access-Control-Request-Headers, Access-Control-Request-Method}, and
        C{Access-Control-Allow-Origin} for a request with an C{Origin}.
    """

    body: bytes
    content_type: str = "audio/mpeg"
    etag: str | None = None
    last_modified: int | None = 1_700_000_000
    lie_length: int | None = None
    die_after: int | None = None
    chunked: bool = False
    content_md5: bytes | None = None
    extra_headers: dict[str, str] = field(factory=dict)
    ranges: bool = False
    ignore_ranges: bool = False
    ignore_if_range: bool = False
    range_status: int | None = None
    cors: bool = False


def body_of(size: int, seed: str = "x") -> bytes:
    """
    C{size} bytes that differ per position and per seed, so a byte in the
    wrong place or from the wrong file is caught by a comparison.
    """
    block = hashlib.sha256(seed.encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


class TestOrigin(Resource):
    """
    A misbehaving-on-demand origin.

    @ivar counts: GET requests per name.
    @ivar rate: bytes per second per response, or L{None} for full speed.
    @ivar status: names answered with this status instead of the file.
    @ivar answers: names answered with this status, these headers and this
        body instead of the file.
    @ivar hang: names that never get an answer.
    @ivar redirects: names answered 302 to this Location.
    @ivar plus_is_space: read C{+} in a path as a space, as S3 does.
    @ivar paths: the raw paths requested, as they arrived.
    @ivar sent: body bytes written per name (to the transport).
    @ivar most_at_once: the most bodies it was sending at one time.
    @ivar clock: where its Date header comes from, if not the wall clock.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, OriginFile] = {}
        self.counts: Counter[str] = Counter()
        self.requests: list[tuple[bytes, str, http.Headers]] = []
        self.rate: float | None = None
        self.status: dict[str, int] = {}
        self.answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.hang: set[str] = set()
        self.redirects: dict[str, str] = {}
        self.plus_is_space = False
        self.paths: list[bytes] = []
        self.sent: Counter[str] = Counter()
        self.sending = 0
        self.most_at_once = 0
        self._hanging: list[Any] = []
        self.port: Any = None
        self.clock: Clock | None = None

    def put(self, name: str, body: bytes, **kwargs: Any) -> OriginFile:
        """
        Create or change a file; a changed file gets a new ETag.
        """
        kwargs.setdefault("etag", f'"v-{hashlib.sha1(body).hexdigest()[:16]}"')
        f = self.files[name] = OriginFile(body=body, **kwargs)
        return f

    def put_with_md5(self, name: str, body: bytes, **kwargs: Any) -> OriginFile:
        return self.put(name, body, content_md5=hashlib.md5(body).digest(), **kwargs)

    def render_GET(self, request: server.Request) -> bytes | int:
        self.paths.append(request.path)
        path = request.path.decode("utf-8")[1:]
        name = unquote(path.replace("+", " ") if self.plus_is_space else path)
        self.counts[name] += 1
        log.info(
            "origin {method} {name} #{count}",
            method=request.method.decode(),
            name=name,
            count=self.counts[name],
        )
        self.requests.append((request.method, name, request.requestHeaders.copy()))
        if self.clock is not None:
            request.setHeader(b"date", http.datetimeToString(self.clock.seconds()))
        if name in self.hang:
            self._hanging.append(request)
            return server.NOT_DONE_YET
        if name in self.redirects:
            request.redirect(self.redirects[name].encode("utf-8"))
            return b""
        if name in self.status:
            request.setResponseCode(self.status[name])
            return b"origin says no"
        if name in self.answers:
            code, headers, body = self.answers[name]
            request.setResponseCode(code)
            for key, value in headers.items():
                request.setHeader(key.encode(), value.encode())
            return body
        f = self.files.get(name)
        if f is None:
            request.setResponseCode(404)
            return b"no such file"
        request.setHeader(b"content-type", f.content_type.encode())
        if f.etag:
            request.setHeader(b"etag", f.etag.encode())
        if f.last_modified is not None:
            request.setHeader(b"last-modified", http.datetimeToString(f.last_modified))
        if f.content_md5 is not None:
            request.setHeader(b"content-md5", base64.b64encode(f.content_md5))
        for key, value in f.extra_headers.items():
            request.setHeader(key.encode(), value.encode())
        if f.cors:
            vary = b"Origin, Access-Control-Request-Headers, Access-Control-Request-Method"
            request.setHeader(b"vary", vary)
            if request.getHeader(b"origin") is not None:
                request.setHeader(b"access-control-allow-origin", request.getHeader(b"origin"))
        if f.etag and request.setETag(f.etag.encode()) is http.CACHED:
            return b""
        if f.ranges or f.ignore_ranges:
            request.setHeader(b"accept-ranges", b"bytes")
        if f.range_status is not None and request.getHeader(b"range") is not None:
            request.setResponseCode(f.range_status)
            return b"origin says no to ranges"
        first, end = 0, len(f.body)
        wanted = _single_range(request, f) if f.ranges else None
        if wanted is not None:
            first, end = wanted
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (first, end - 1, len(f.body)))
            request.setHeader(b"content-length", b"%d" % (end - first))
        elif not f.chunked:
            length = f.lie_length if f.lie_length is not None else len(f.body)
            request.setHeader(b"content-length", b"%d" % length)
        if request.method == b"HEAD":
            return b""
        _Sender(request, f, self.rate, first, end, lambda n: self._count(name, n), self).start()
        return server.NOT_DONE_YET

    def _count(self, name: str, sent: int) -> None:
        self.sent[name] += sent

    render_HEAD = render_GET

    def release_hanging(self) -> None:
        """
        Drop the connections of requests left hanging.
        """
        for request in self._hanging:
            request.transport.abortConnection()
        self._hanging.clear()


def _single_range(request: server.Request, f: OriginFile) -> tuple[int, int] | None:
    """
    The C{[first, end)} a request's single byte range asks for, if it is
    to be honoured (no If-Range, or one naming this version).
    """
    header = request.getHeader(b"range")
    if header is None:
        return None
    if_range = request.getHeader(b"if-range")
    if (
        if_range is not None
        and not f.ignore_if_range
        and if_range
        not in (
            (f.etag or "").encode(),
            http.datetimeToString(f.last_modified),
        )
    ):
        return None
    unit, _, spec = header.decode("latin-1").partition("=")
    first_text, _, last_text = spec.partition("-")
    if unit.strip() != "bytes" or "," in spec or not first_text.strip().isdigit():
        return None
    first = int(first_text)
    last = int(last_text) if last_text.strip() else len(f.body) - 1
    if first >= len(f.body):
        return None
    return first, min(last, len(f.body) - 1) + 1


@implementer(IPushProducer)
class _Sender:
    """
    Sends a body with backpressure: as fast as the client takes it, or in
    timed slices at C{rate} bytes a second; dies or lies on demand.
    """

    tick = 0.01

    def __init__(
        self,
        request: server.Request,
        f: OriginFile,
        rate: float | None,
        first: int = 0,
        end: int | None = None,
        count: Any = lambda n: None,
        origin: Any = None,
    ) -> None:
        self.origin = origin
        self.request = request
        self.file = f
        self.view = memoryview(f.body)
        self.first = self.sent = first
        end = len(f.body) if end is None else end
        self.end = end if f.die_after is None else min(end, first + f.die_after)
        self.count = count
        self.rate = rate
        self.paused = False
        self.call: Any = None
        self.done = False

    def start(self) -> None:
        if self.origin is not None:
            self.origin.sending += 1
            self.origin.most_at_once = max(self.origin.most_at_once, self.origin.sending)
        self.started = reactor.seconds()
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addErrback(lambda _: self._stop())
        self._send()

    def _budget(self) -> int:
        if not self.rate:
            return self.end - self.sent
        elapsed = reactor.seconds() - self.started + self.tick
        return int(self.rate * elapsed) - (self.sent - self.first)

    def _send(self) -> None:
        self.call = None
        budget = self._budget()
        while not self.done and not self.paused and budget > 0:
            if self.sent >= self.end:
                self._end()
                return
            chunk = self.view[self.sent : min(self.end, self.sent + 65536, self.sent + budget)]
            self.sent += len(chunk)
            budget -= len(chunk)
            self.count(len(chunk))
            self.request.write(bytes(chunk))
        if self.sent >= self.end and not self.done and not self.paused:
            self._end()
        elif self.rate and not self.done and not self.paused:
            self.call = reactor.callLater(self.tick, self._send)

    def _ended(self) -> None:
        if self.origin is not None and not self.done:
            self.origin.sending -= 1

    def _end(self) -> None:
        self._ended()
        self.done = True
        self.request.unregisterProducer()
        f = self.file
        short = f.die_after is not None or (f.lie_length is not None and f.lie_length > len(f.body))
        if short:
            self.request.transport.abortConnection()
        else:
            self.request.finish()

    def _stop(self) -> None:
        self._ended()
        self.done = True
        if self.call is not None:
            self.call.cancel()
            self.call = None

    def pauseProducing(self) -> None:
        self.paused = True
        if self.call is not None:
            self.call.cancel()
            self.call = None

    def resumeProducing(self) -> None:
        self.paused = False
        if self.call is None:
            self._send()

    def stopProducing(self) -> None:
        self._stop()


def listen(test: TestCase, site: server.Site) -> Any:
    """
    Listen on 127.0.0.1 on a free port for the length of C{test}.

    @return: the listening port.
    """
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    test.addCleanup(lambda: port.connected and port.stopListening())
    return port


def start_origin(test: TestCase) -> tuple[TestOrigin, str]:
    """
    A L{TestOrigin} on loopback, and its base URL.  C{origin.port} is its
    listening port, for tests that take the origin down.
    """
    origin = TestOrigin()
    origin.port = listen(test, server.Site(origin))
    test.addCleanup(origin.release_hanging)
    return origin, f"http://127.0.0.1:{origin.port.getHost().port}/"


def start_cachetier(
    test: TestCase, origin_url: str, cache_dir: str | None = None, **settings: Any
) -> tuple[Assembly, str]:
    """
    A cachetier site on loopback in front of C{origin_url}, and its base URL.
    """
    if cache_dir is None:
        cache_dir = tempfile.mkdtemp(dir=os.getcwd())
    assembly = assemble(Settings(origin=origin_url, cache_dir=cache_dir, **settings), reactor)
    port = listen(test, assembly.site)
    test.addCleanup(assembly.stop)
    return assembly, f"http://127.0.0.1:{port.getHost().port}/"


async def filled(cache: Assembly, name: str) -> None:
    """
    Wait for the download of C{name} to end well, if it is still in flight:
    a small one may end before its listener has its answer, and then it
    has no fill to wait for.  Either way C{name} is then in the store.
    """
    fill = cache.syncer.fill_for(name)
    if fill is not None:
        await fill.when_done()
    if cache.store.get(name) is None:
        raise AssertionError(f"{name} was not stored")


def http_client(test: TestCase) -> HTTPClient:
    """
    A treq client whose connections are closed when C{test} ends.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    test.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


async def read_response(response: IResponse) -> tuple[int, Headers, bytes]:
    """
    A response's status, headers and body.  Twisted's client keeps
    Content-Length out of the headers of a response with a body; it is put
    back, so a test reads every header in one place.  (A 304's is lost: the
    client reports 0.)
    """
    body = await content(response)
    headers = response.headers.copy()
    kept_apart = response.length is not UNKNOWN_LENGTH and response.code != 304
    if kept_apart and not headers.hasHeader(b"content-length"):
        headers.setRawHeaders(b"content-length", [b"%d" % (response.length,)])
    return response.code, headers, body


def stored_object(**fields: Any) -> StoredObject:
    """
    A L{StoredObject} of one byte at no path, for tests of its methods:
    C{fields} replace the defaults.
    """
    defaults: dict[str, Any] = {
        "name": "a.mp3",
        "path": "/nowhere",
        "size": 1,
        "etag": '"e"',
        "last_modified": 0.0,
        "content_type": "audio/mpeg",
        "fetched_at": 0.0,
        "expires_at": 1.0,
    }
    return StoredObject(**{**defaults, **fields})


def header(headers: Headers, name: str) -> list[str]:
    """
    Every value of header C{name}, as text.
    """
    return [v.decode("latin-1") for v in headers.getRawHeaders(name.encode(), [])]


def _request_headers(headers: dict[str, str]) -> dict[str, list[str]]:
    # if_none_match="..." is sent as If-None-Match.
    return {k.replace("_", "-"): [v] for k, v in headers.items()}


class CacheTestCase(TestCase):
    """
    A test origin, a cachetier in front of it and an HTTP client, on
    loopback.

    @cvar settings: the cache's settings, beyond its origin and directory.
    """

    settings: dict[str, Any] = {}

    def setUp(self) -> None:
        self.origin, self.origin_url = start_origin(self)
        self.cache, self.url = start_cachetier(self, self.origin_url, **self.settings)
        self.client = http_client(self)

    async def get(
        self, name: str, method: str = "GET", **headers: str
    ) -> tuple[int, Headers, bytes]:
        """
        C{method} C{/files/name} with C{headers} (see L{read_response}).
        """
        response = await self.client.request(
            method, self.url + "files/" + name, headers=_request_headers(headers)
        )
        return await read_response(response)

    async def cached(self, name: str, data: bytes, **kwargs: Any) -> None:
        """
        Put C{name} on the origin (with L{TestOrigin.put}'s C{kwargs}) and
        sync it into the cache.
        """
        self.origin.put(name, data, **kwargs)
        await self.cache.syncer.start(name).when_done()

    async def settle(self, name: str) -> None:
        """
        Wait for the download of C{name} in flight, if any, however it ends.
        """
        fill = self.cache.syncer.fill_for(name)
        if fill is not None:
            await fill.when_done().addErrback(lambda _: None)


class _AnswersLater(Resource):
    """
    Holds each request to C{origin} until L{answer}: in memory, an exchange
    with the origin would otherwise end inside the call that began it, and
    no listener would ever see a download in flight.
    """

    isLeaf = True

    def __init__(self, origin: TestOrigin) -> None:
        super().__init__()
        self.origin = origin
        self.waiting: list[server.Request] = []

    def render(self, request: server.Request) -> int:
        self.waiting.append(request)
        return server.NOT_DONE_YET

    def answer(self, down: bool = False) -> None:
        """
        Answer what was asked; or, C{down}, drop every connection instead.
        """
        waiting, self.waiting = self.waiting, []
        for request in waiting:
            if down:
                request.transport.abortConnection()
                continue
            body = self.origin.render(request)
            if body is not server.NOT_DONE_YET:
                request.write(body)
                request.finish()


class MemoryCache:
    """
    cachetier's resource tree in memory: it reaches a L{TestOrigin} through
    a L{StubTreq}, listeners reach it through another, and time (its own
    and the origin's Date) is a L{Clock}.

    The origin must send at full speed (no C{rate}): its throttle runs on
    the real reactor.

    @ivar origin_down: drop every connection to the origin, as a host that
        is down does.
    """

    origin_down = False

    def __init__(self, cache_dir: str, **settings: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.origin = TestOrigin()
        self.origin.clock = self.clock
        self._origin = _AnswersLater(self.origin)
        self.origin_client = StubTreq(self._origin)
        self.settings = config = Settings(
            origin="http://origin.test/", cache_dir=cache_dir, **settings
        )
        self.metrics = Metrics()
        self.store = CacheStore.open(
            cache_dir, max_size=config.max_size, min_free=config.min_free, now=self.clock.seconds
        )
        origin = Origin(
            config.origin,
            self.origin_client,
            self.clock,
            config.origin_timeout,
            breaker=Breaker(self.clock, config.breaker_threshold, config.breaker_cooloff),
            retry=RetryPolicy(attempts=config.origin_retries),
            min_rate=config.origin_min_rate,
            rate_window=config.origin_min_rate_window,
        )
        self.syncer = syncer_for(
            config,
            origin,
            self.store,
            self.clock,
            lambda f, *args: maybeDeferred(f, *args),
            self.metrics,
        )
        self.client = StubTreq(build_root(self.store, self.syncer, config, self.metrics))

    def _round(self) -> None:
        self._origin.answer(self.origin_down)
        self.origin_client.flush()
        self.client.flush()

    def flush(self) -> None:
        """
        Deliver everything in flight.  Each round answers what the origin
        was asked, then carries the bytes both ways; no exchange here takes
        more than a few.
        """
        for _ in range(8):
            self._round()

    def result(self, d: Deferred[Any]) -> Any:
        """
        What C{d} fires with, delivering round by round (see L{flush}) only
        until it fires: a listener answered from the cache has its answer
        before the origin answers the revalidation it started, which is then
        still in flight.
        """
        results: list[Any] = []
        d.addBoth(results.append)
        for _ in range(8):
            if results:
                break
            self._round()
        if not results:
            raise AssertionError(f"{d!r} has not fired")
        (result,) = results
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def stop(self) -> None:
        """
        Cancel the downloads in flight (and close their files), as the
        service does when it stops.
        """
        self.result(self.syncer.stop())


class MemoryCacheTestCase(SynchronousTestCase):
    """
    The in-memory counterpart of L{CacheTestCase}, for what goes over no
    socket: a test origin, a cachetier and a client, all in memory, and a
    L{Clock} (C{self.clock}).

    @cvar settings: the cache's settings, beyond its origin and directory.
    """

    settings: dict[str, Any] = {}

    def setUp(self) -> None:
        self.cache = MemoryCache(os.path.abspath(self.mktemp()), **self.settings)
        self.addCleanup(self.cache.stop)
        self.origin = self.cache.origin
        self.origin_url = self.cache.settings.origin
        self.clock = self.cache.clock
        self.url = "http://cachetier.test/"

    def get(self, name: str, method: str = "GET", **headers: str) -> tuple[int, Headers, bytes]:
        """
        C{method} C{/files/name} with C{headers} (see L{read_response}).
        """
        return self.request(method, "files/" + name, headers=_request_headers(headers))

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Headers, bytes]:
        """
        C{method} C{path} (with treq's C{kwargs}): see L{read_response}.
        """
        response = self.cache.client.request(method, self.url + path, **kwargs)
        return self.cache.result(Deferred.fromCoroutine(_read(response)))

    def cached(self, name: str, data: bytes, **kwargs: Any) -> None:
        """
        Put C{name} on the origin (with L{TestOrigin.put}'s C{kwargs}) and
        sync it into the cache.
        """
        self.origin.put(name, data, **kwargs)
        self.cache.result(self.cache.syncer.start(name).when_done())

    def settle(self, name: str) -> None:
        """
        Let the download of C{name} in flight, if any, end however it ends.
        """
        fill = self.cache.syncer.fill_for(name)
        if fill is not None:
            self.cache.result(fill.when_done().addErrback(lambda _: None))

    def wait(self, seconds: float) -> None:
        """
        Let C{seconds} pass: the clock moves, and what is in flight arrives.
        """
        self.clock.advance(seconds)
        self.cache.flush()


async def _read(response: Deferred[IResponse]) -> tuple[int, Headers, bytes]:
    return await read_response(await response)


class _HangUp(Protocol):
    def __init__(self, request: bytes, enough: int, done: Deferred[bytes]) -> None:
        self.request = request
        self.enough = enough
        self.done = done
        self.received = b""

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.enough and not self.done.called:
            self.transport.abortConnection()
            self.done.callback(self.received)

    def connectionLost(self, reason: Any) -> None:
        if not self.done.called:
            self.done.callback(self.received)


async def read_then_hang_up(base_url: str, path: str, enough: int) -> bytes:
    """
    GET C{path} over a raw socket and drop the connection once C{enough}
    bytes (headers included) have arrived: a listener who goes away.
    """
    port = int(base_url.rsplit(":", 1)[1].strip("/"))
    done: Deferred[bytes] = Deferred()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await connectProtocol(endpoint, _HangUp(request, enough, done))
    return await done


def make_tls_certificate(directory: str) -> tuple[str, str, bytes]:
    """
    A self-signed certificate for 127.0.0.1 (IP subject alternative name).

    @return: the key's path, the certificate's path, and the certificate in
        PEM, for a client to trust.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = os.path.join(directory, "key.pem")
    cert_path = os.path.join(directory, "cert.pem")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cert_path, "wb") as f:
        f.write(cert_pem)
    return key_path, cert_path, cert_pem


class ProcessOutput(ProcessProtocol):
    """
    Collects a child process's output (stdout and stderr together) and
    fires C{ended} with how it ended.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[Any] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)


def listen_backlogs(port: int) -> list[int]:
    """
    The backlog of each socket listening on TCP C{port}, as the kernel
    holds it (a listening socket's Send-Q in C{ss}).
    """
    ss = shutil.which("ss")
    if ss is None:
        raise SkipTest("ss is not installed")
    lines = subprocess.run(
        [ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return [int(line.split()[2]) for line in lines]


def somaxconn() -> int:
    """
    The kernel's cap on a listen backlog.
    """
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


def child_environment() -> dict[str, str]:
    """
    The environment of a process a test starts (twistd, and its workers):
    it imports the cachetier under test, not the one installed, since trial
    runs in C{_trial_temp}, whence the source tree is not on the path.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(cachetier.__file__)))
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
