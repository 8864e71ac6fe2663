"""
A worker's way to the primary process: every request a worker cannot
answer from disk is relayed, streaming, over the primary's private UNIX
socket.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory
from twisted.web.resource import Resource
from zope.interface import implementer

from ._json import EndWatch, answer, finish, render_error
from ._site import RELAYED_LENGTH
from .addresses import RELAYED_FOR, client_address

# Connection-level headers, which are not relayed (RFC 9110 7.6.1).
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)


@implementer(IAgentEndpointFactory)
class _UNIXEndpoints:
    def __init__(self, reactor: Any, path: str) -> None:
        self.reactor = reactor
        self.path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(self.reactor, self.path)


def primary_pool(reactor: Any) -> HTTPConnectionPool:
    """
    The connections a worker keeps open to the primary.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 64
    return pool


def primary_agent(reactor: Any, socket_path: str, pool: HTTPConnectionPool | None = None) -> Agent:
    """
    An agent whose every request goes to the primary's UNIX socket.

    @param pool: its connections; by default a L{primary_pool} of its own.
    """
    if pool is None:
        pool = primary_pool(reactor)
    return Agent.usingEndpointFactory(reactor, _UNIXEndpoints(reactor, socket_path), pool=pool)


class PrimaryProxy(Resource):
    """
    Relays any request to the primary and streams its answer back with
    backpressure: a slow listener pauses the relay, which pauses the
    primary, so nothing piles up in the worker.  If the primary's answer
    breaks, the listener's connection is aborted, never ended cleanly.
    """

    isLeaf = True

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.agent = agent

    def render(self, request: Any) -> int:
        request.outcome = "relayed"
        headers = request.requestHeaders.copy()
        for name in _HOP_BY_HOP:
            headers.removeHeader(name)
        # The listener's address, X-Forwarded-For from a trusted proxy
        # already applied.
        headers.setRawHeaders(RELAYED_FOR, [client_address(request).encode("latin-1")])
        body = None
        if request.method in (b"POST", b"PUT", b"PATCH", b"DELETE"):
            request.content.seek(0)
            body = FileBodyProducer(request.content)
        watch = EndWatch(request)
        d = self.agent.request(request.method, b"http://primary" + request.uri, headers, body)
        gone: list[Failure] = []

        def listener_gone(reason: Failure) -> None:
            gone.append(reason)
            d.cancel()

        def failed(failure: Failure) -> None:
            # However the cancelled request fails, a listener who left is
            # not answered.
            if not gone:
                self._failed(failure, request, watch)

        request.notifyFinish().addErrback(listener_gone)
        d.addCallbacks(self._relay, failed, (request, watch))
        return server.NOT_DONE_YET

    def _relay(self, response: Any, request: Any, watch: EndWatch) -> None:
        request.setResponseCode(response.code, response.phrase)
        # Exactly the primary's headers: nothing from an earlier attempt.
        request.responseHeaders = Headers()
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in _HOP_BY_HOP:
                request.responseHeaders.setRawHeaders(name, values)
        length = request.responseHeaders.getRawHeaders(RELAYED_LENGTH)
        request.responseHeaders.removeHeader(RELAYED_LENGTH)
        if request.method == b"HEAD" or response.code in NO_BODY_CODES:
            # Twisted's client says 0 for these; the primary said the truth.
            if length:
                request.responseHeaders.setRawHeaders(b"content-length", length)
        elif response.length is not UNKNOWN_LENGTH:
            request.setHeader(b"content-length", b"%d" % (response.length,))
        if request.method == b"HEAD" or response.code in NO_BODY_CODES:
            response.deliverBody(_Relay(None))
            finish(request, watch)
            return
        response.deliverBody(_Relay(request))

    def _failed(self, failure: Failure, request: Any, watch: EndWatch) -> None:
        answer(
            request,
            watch,
            render_error(request, 502, "primary_unavailable", "the primary process did not answer"),
        )


class _Relay(Protocol):
    """
    Feeds the primary's body to the listener; the primary's connection is
    the listener's producer, so backpressure flows through.
    """

    def __init__(self, request: Any) -> None:
        self.request = request
        if request is not None:
            request.notifyFinish().addErrback(self._listener_gone)

    def _listener_gone(self, reason: Failure) -> None:
        # The channel stops our transport (its producer) by itself.
        self.request = None

    def connectionMade(self) -> None:
        if self.request is not None:
            self.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        if self.request is not None:
            self.request.write(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        request, self.request = self.request, None
        if request is None:
            return
        request.unregisterProducer()
        if reason.check(ResponseDone):
            request.finish()
        else:
            request.transport.abortConnection()
