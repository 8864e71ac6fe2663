"""
L{Origin}: one treq GET per sync, streamed, with deadlines; retried as the
L{RetryPolicy} allows, each answer's status mapped to an outcome, and the
L{Breaker} told of each.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from attrs import evolve
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer

from ..errors import OriginAnswer, OriginError, Reason
from ..hops import CDN_LOOP, VIA, upstream
from ..names import origin_url, split_variant
from ..objects import StoredObject
from .agents import CoroutineAgent, S3Rejections, SigningAgent, WithinOrigin
from .auth import HeaderFile, S3Signer
from .body import BodyReceiver, abandon, read_answer, read_body
from .breaker import RETRYABLE, RETRYABLE_STATUSES, Breaker, RetryPolicy
from .response import CHECKSUM_MODE, OriginResponse, parse_response

log = Logger()


class Origin:
    """
    The configured origin, reached through an injected treq client.

    Each request goes down a stack of agents: redirects followed within the
    origin (L{WithinOrigin}), S3's rejections read (L{S3Rejections}, when
    signing for S3), secret headers and signature added (L{SigningAgent},
    when there are any), and at the bottom the client, with its deadline.

    @param base: the origin base URL (see L{cachetier.names.normalise_base}).
    @param timeout: seconds allowed to receive the response headers, and
        the longest silence tolerated inside a body.
    @param min_rate: bytes a second a body must keep up over every
        C{rate_window} seconds (0: no minimum).
    @param forward_headers: names of a listener's request headers sent with
        the fill its request starts (C{--forward-request-header}).
    @param node_name: this node's, in every request's C{Via} and C{CDN-Loop}.
    @param secret: the cluster secret, sent with every request: for a
        shield only, never the origin.
    @param generation_of: the cluster's generation of a name and the epoch
        of the log it is of, sent with the secret (C{CacheTier-Generation}),
        so that a shield holding an older copy treats the request as a
        miss.
    @param body_timeout: the longest silence tolerated inside a body, when
        it differs from C{timeout} (a shield's).
    @param own_failure: whether a 5xx answer is this upstream's own failure
        (counted against its breaker), not one it passes on.
    @param loop: whether an answer is this upstream's 508 to a request that
        named it in C{CDN-Loop} (a shield's; never the origin's).
    """

    def __init__(
        self,
        base: str,
        client: HTTPClient,
        clock: IReactorTime,
        timeout: float,
        breaker: Breaker | None = None,
        retry: RetryPolicy | None = None,
        min_rate: int = 0,
        rate_window: float = 30.0,
        signer: S3Signer | None = None,
        header_file: HeaderFile | None = None,
        run_in_thread: Callable[..., Deferred[Any]] | None = None,
        forward_headers: tuple[str, ...] = (),
        node_name: str = "cachetier",
        secret: bytes | None = None,
        body_timeout: float | None = None,
        own_failure: Callable[[Any], bool] = lambda response: True,
        loop: Callable[[Any], bool] = lambda response: False,
        generation_of: Callable[[str], tuple[str, int]] = lambda name: ("", 0),
    ) -> None:
        self._node = node_name
        self._secret = secret
        self._generation_of = generation_of
        self._body_timeout = timeout if body_timeout is None else body_timeout
        self._own_failure = own_failure
        self._loop = loop
        self._forward_headers = [name.lower().encode("ascii") for name in forward_headers]
        self._min_rate = min_rate
        self._rate_window = rate_window
        self.base = base
        self._clock = clock
        self._timeout = timeout
        self.breaker = breaker or Breaker(clock)
        self.retry = retry or RetryPolicy(attempts=1)
        self._agent: IAgent = _Send(client, clock, timeout, self.breaker)
        self._signing: SigningAgent | None = None
        if signer is not None or header_file is not None:
            self._signing = SigningAgent(self._agent, signer, header_file, run_in_thread)
            self._agent = self._signing
        # The listener's headers this origin's requests carry too.
        self._forwarded: tuple[tuple[bytes, bytes], ...] = ()
        self._rejections: S3Rejections | None = None
        if signer is not None:
            self._rejections = S3Rejections(self._agent, clock, timeout)
            self._agent = self._rejections

    @property
    def rejected(self) -> tuple[float, str] | None:
        """
        The last time the origin refused our credentials, and why: for
        /healthz.
        """
        return None if self._rejections is None else self._rejections.rejected

    def forwarded(self, request_headers: Headers | None) -> tuple[tuple[bytes, bytes], ...]:
        """
        The headers of a listener's request to send with a fill it starts:
        those C{--forward-request-header} names, and its hops (C{Via} and
        C{CDN-Loop}), which this node's entries follow.
        """
        if request_headers is None:
            return ()
        return tuple(
            (key, value)
            for key in (*self._forward_headers, VIA, CDN_LOOP)
            for value in request_headers.getRawHeaders(key, [])
        )

    def forwarding(self, headers: tuple[tuple[bytes, bytes], ...]) -> Origin:
        """
        This origin (its agents, breaker and retries shared), sending
        C{headers} with every request too: a listener's, named by
        C{--forward-request-header}, for the fill its request starts.
        """
        origin = copy.copy(self)
        origin._forwarded = headers
        return origin

    def url_for(self, name: str) -> str:
        return origin_url(self.base, name)

    async def get(
        self,
        name: str,
        validators: StoredObject | None = None,
        byte_range: tuple[int, int, str] | None = None,
    ) -> OriginResponse:
        """
        GET C{name} and wait for the headers of a 200 (or, when revalidating
        C{validators}, a 304), retrying as the L{RetryPolicy} allows.

        @param byte_range: C{(first, last, validator)}: ask for those bytes
            of the version C{validator} names (C{If-Range}); the answer is a
            206 with its C{content_range}, or a 200 (the whole object: the
            origin ignores ranges, or the object changed).
        @raise OriginAnswer: for any other status (but a 412 to a range:
            C{changed}), with its headers and body, to pass on.
        @raise OriginError: for an answer too big to pass on, a timeout, a
            connection failure, or the breaker being open.
        """
        started = self._clock.seconds()
        attempt = 0
        while True:
            try:
                return await self._get_once(name, validators, byte_range)
            except OriginError as e:
                attempt += 1
                retryable = e.reason in RETRYABLE or e.status in RETRYABLE_STATUSES
                delay = self.retry.delay(attempt - 1)
                spent = self._clock.seconds() - started
                if (
                    not retryable
                    or attempt >= self.retry.attempts
                    or spent + delay > self.retry.budget
                ):
                    raise
                log.info(
                    "retrying {name} in {delay:.2f}s after {reason}",
                    name=name,
                    delay=delay,
                    reason=e.label,
                )
                await deferLater(self._clock, delay, lambda: None)

    async def _get_once(
        self,
        name: str,
        validators: StoredObject | None,
        byte_range: tuple[int, int, str] | None = None,
    ) -> OriginResponse:
        if not self.breaker.allow():
            raise OriginError(
                Reason.breaker_open, "the origin is failing; not contacting it for now"
            )
        probe = self.breaker.probe
        try:
            return await self._ask(name, validators, byte_range)
        finally:
            self.breaker.settle(probe)

    async def _ask(
        self,
        name: str,
        validators: StoredObject | None,
        byte_range: tuple[int, int, str] | None,
    ) -> OriginResponse:
        agent = WithinOrigin(self._agent, self.base, self._clock, self._timeout, name)
        requested = self._clock.seconds()
        response = await agent.request(
            b"GET",
            self.url_for(name).encode("utf-8"),
            _request_headers(
                validators,
                byte_range,
                split_variant(name)[1],
                self._forwarded,
                upstream(self._node, self._forwarded, self._secret, self._generation_of(name)),
            ),
        )
        if response.code >= 500:
            if self._own_failure(response):
                self.breaker.failed(name)
        else:
            self.breaker.succeeded()
        if (
            response.code == 200
            or (response.code == 304 and validators is not None)
            or (response.code == 206 and byte_range is not None)
        ):
            return parse_response(response, self._clock.seconds(), requested)
        if response.code == 412 and byte_range is not None:
            await read_body(response, 0, self._clock, self._body_timeout)
            raise OriginError(
                Reason.changed, "the object changed at the origin during the download"
            )
        if response.code == 206:
            # A part nobody asked for: never passed on, never kept.
            abandon(response)
            raise OriginError(
                Reason.http_status, "the origin answered 206 to a request without Range", 206
            )
        parsed = parse_response(response, self._clock.seconds()).headers
        headers = evolve(parsed, status=response.code)
        body = await read_answer(response, self._clock, self._body_timeout)
        raise OriginAnswer(headers, body, looped=self._loop(response))

    def abandon(self, response: OriginResponse) -> None:
        """
        Give up on a response's body without reading it: its connection is
        closed, not left waiting for a reader.
        """
        abandon(response.response)

    def stream(self, response: OriginResponse, write: Callable[[bytes], None]) -> Deferred[None]:
        """
        Deliver the body of C{response} to C{write}, chunk by chunk, never
        holding more than one chunk in memory.

        @return: a L{Deferred} that fires when the body is complete, fails
            with L{OriginError}, and aborts the download when cancelled.
        """
        receiver: BodyReceiver

        def cancel(d: Deferred[None]) -> None:
            receiver.abort(OriginError(Reason.cancelled, "the download was cancelled"))

        def broke(failure: Failure) -> Failure:
            if failure.check(OriginError) and failure.value.reason in (
                Reason.timeout,
                Reason.truncated,
            ):
                self.breaker.failed()
            return failure

        done: Deferred[None] = Deferred(cancel)
        receiver = BodyReceiver(
            write, done, self._clock, self._body_timeout, self._min_rate, self._rate_window
        )
        response.response.deliverBody(receiver)
        return done.addErrback(broke)


def _request_headers(
    validators: StoredObject | None,
    byte_range: tuple[int, int, str] | None,
    selecting: tuple[tuple[str, str | None], ...] = (),
    forwarded: tuple[tuple[bytes, bytes], ...] = (),
    hops: tuple[tuple[bytes, bytes], ...] = (),
) -> Headers:
    """
    What a GET asks for: the object's checksum, or a range of the version a
    validator names; with the cached copy's validators when revalidating,
    and for a variant, the request headers that select it; with the
    C{forwarded} headers of the listener that started the fill, but its
    hops, which C{hops} (L{cachetier.hops.upstream}) carry on.
    """
    headers = {CHECKSUM_MODE: [b"ENABLED"]}
    if byte_range is not None:
        first, last, validator = byte_range
        headers = {
            b"range": [b"bytes=%d-%d" % (first, last)],
            b"if-range": [validator.encode("latin-1")],
        }
    for name, value in selecting:
        if value is not None:
            headers[name.encode("latin-1")] = [value.encode("latin-1")]
    if validators is not None:
        if validators.origin_etag:
            headers[b"if-none-match"] = [validators.origin_etag.encode("latin-1")]
        if validators.origin_last_modified:
            headers[b"if-modified-since"] = [datetimeToString(int(validators.origin_last_modified))]
    sent = Headers(headers)
    for key, value in forwarded:
        if not sent.hasHeader(key) and key not in (VIA, CDN_LOOP):
            sent.addRawHeader(key, value)
    for key, value in hops:
        sent.setRawHeaders(key, [value])
    return sent


class _Send(CoroutineAgent):
    """
    The bottom of an origin request's stack: one request through the
    origin's treq client (its body left unread, no redirect followed),
    with the deadline for its response's headers.  A failure to reach the
    origin counts against the breaker.
    """

    def __init__(
        self, client: HTTPClient, clock: IReactorTime, timeout: float, breaker: Breaker
    ) -> None:
        self._client = client
        self._clock = clock
        self._timeout = timeout
        self._breaker = breaker

    async def _request(
        self, method: bytes, uri: bytes, headers: Headers | None, body: IBodyProducer | None
    ) -> Any:
        d = self._client.request(
            method.decode("ascii"),
            uri.decode("utf-8"),
            headers=headers,
            data=body,
            unbuffered=True,
            allow_redirects=False,
        )
        d.addTimeout(self._timeout, self._clock, onTimeoutCancel=_timed_out)
        try:
            return await d
        except Exception as e:
            if _cancelled(e):
                # No verdict; if this was the probe, Origin settles it.
                raise CancelledError() from None
            self._breaker.failed()
            if isinstance(e, OriginError):
                raise
            raise OriginError(
                Reason.connection, f"could not reach the origin: {_describe(e)}"
            ) from None


def _timed_out(result: object, timeout: float) -> Failure:
    # A cancelled request fails in whatever way the agent chooses; say
    # plainly that it was the deadline.
    return Failure(OriginError(Reason.timeout, f"the origin did not answer within {timeout:g}s"))


def _cancelled(error: BaseException) -> bool:
    """
    Whether C{error} is a cancellation, which the agent may report wrapped
    (C{ResponseNeverReceived([CancelledError])}).
    """
    if isinstance(error, CancelledError):
        return True
    return isinstance(error, ResponseFailed) and any(r.check(CancelledError) for r in error.reasons)


def _describe(error: Exception) -> str:
    if isinstance(error, ResponseFailed):
        return "; ".join(str(r.value) for r in error.reasons) or "response failed"
    return str(error) or type(error).__name__
