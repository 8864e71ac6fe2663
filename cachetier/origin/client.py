"""
L{Origin}: one treq GET per sync, streamed, with deadlines.
"""

from __future__ import annotations

import base64
import binascii
import errno
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

from attrs import frozen
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss, datetimeToString, stringToDatetime
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent
from zope.interface import implementer

from ..errors import NotFoundAtOrigin, OriginError, Reason
from ..names import origin_url
from ..objects import ObjectHeaders, StoredObject
from .auth import CredentialsError, HeaderFile, S3Signer
from .breaker import RETRYABLE, RETRYABLE_STATUSES, Breaker, RetryPolicy
from .freshness import freshness_lifetime, initial_age, parse_cache_control

log = Logger()

_PLAIN_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
NOT_FOUND_CODES = frozenset({403, 404, 410})
_WRITE_ERRORS = {errno.ENOSPC: Reason.no_space, errno.EFBIG: Reason.too_large}


@frozen
class OriginResponse:
    """
    A 200 (whose body has not been read yet) or a 304 from the origin.

    @ivar length: the promised Content-Length, or L{None} when not given.
    @ivar checksum: C{(algorithm, digest)} the body must have, when the
        origin certainly gave one (see L{_expected_checksum}).
    """

    headers: ObjectHeaders
    length: int | None
    checksum: tuple[str, bytes] | None
    response: Any
    not_modified: bool = False
    # Whether the origin takes byte ranges (Accept-Ranges: bytes), and the
    # validator an If-Range names this version by: a strong ETag, else the
    # Last-Modified date as sent.
    ranges: bool = False
    validator: str | None = None
    # For a 206: the first byte sent and the whole object's length.
    content_range: tuple[int, int] | None = None


# Connection-level headers (RFC 9110 7.6.1), never stored or replayed.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Headers the cache answers with values of its own (from the fields of
# ObjectHeaders, or computed per response), so not replayed verbatim.
_OWN = frozenset(
    {
        "content-length",
        "content-range",
        "content-type",
        "etag",
        "last-modified",
        "cache-control",
        "accept-ranges",
        "age",
        "date",
        "expires",
        "server",
        "content-md5",
        "x-cachetier-content-encoding",
        # The real one arrives under ORIGIN_CONTENT_ENCODING; what is left
        # here is treq's decoder's empty placeholder.
        "content-encoding",
    }
)
# Where IdentityAgent puts the origin's Content-Encoding, out of sight of
# treq's decoder.
ORIGIN_CONTENT_ENCODING = b"x-cachetier-content-encoding"
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@implementer(IAgent)
class IdentityAgent:
    """
    The innermost agent of the origin's treq client.  treq wraps every
    agent in a C{ContentDecoderAgent}, which asks for gzip and decodes it;
    a cache must store the origin's bytes exactly.  So this asks for
    C{identity}, and moves any C{Content-Encoding} the origin sends anyway
    (an object stored gzip-encoded) to a header of its own, where the
    decoder does not look; L{parse_response} puts it back.
    """

    def __init__(self, agent: IAgent) -> None:
        self._agent = agent

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        headers = Headers() if headers is None else headers.copy()
        headers.setRawHeaders(b"accept-encoding", [b"identity"])
        d = self._agent.request(method, uri, headers, bodyProducer)
        return d.addCallback(self._hide_encoding)

    @staticmethod
    def _hide_encoding(response: Any) -> Any:
        encoding = response.headers.getRawHeaders(b"content-encoding")
        if encoding:
            response.headers.removeHeader(b"content-encoding")
            response.headers.setRawHeaders(ORIGIN_CONTENT_ENCODING, encoding)
        return response


def _header(response: Any, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[-1].decode("latin-1") if values else None


# Asked for on every origin request: S3 then sends the object's full
# checksum (other servers ignore the header).
CHECKSUM_MODE = b"x-amz-checksum-mode"


def _b64(value: str | None, size: int) -> bytes | None:
    if not value:
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except binascii.Error:
        return None
    return digest if len(digest) == size else None


def _expected_checksum(response: Any, etag: str | None) -> tuple[str, bytes] | None:
    """
    The digest the body must have, where the origin certainly gave one: a
    Content-MD5; from S3, a full-object C{x-amz-checksum-sha256}, C{-sha1}
    or C{-crc32} (CRC32C is not checked: no standard-library hash), or an
    ETag that is a plain MD5 (not a multipart ETag with a C{-}, not SSE-KMS
    or SSE-C, whose ETags are not the body's MD5).  Any other 32-hex ETag
    is only an opaque validator.
    """
    digest = _b64(_header(response, b"content-md5"), 16)
    if digest is not None:
        return "md5", digest
    s3 = _header(response, b"server") == "AmazonS3" or response.headers.hasHeader(
        b"x-amz-request-id"
    )
    if not s3:
        return None
    if _header(response, b"x-amz-checksum-type") != "COMPOSITE":
        for algorithm, size in (("sha256", 32), ("sha1", 20), ("crc32", 4)):
            digest = _b64(_header(response, b"x-amz-checksum-" + algorithm.encode()), size)
            if digest is not None:
                return algorithm, digest
    if not etag:
        return None
    if _header(
        response, b"x-amz-server-side-encryption"
    ) == "aws:kms" or response.headers.hasHeader(
        b"x-amz-server-side-encryption-customer-algorithm"
    ):
        return None
    match = _PLAIN_MD5_ETAG.match(etag)
    return ("md5", bytes.fromhex(match.group(1))) if match else None


def _end_to_end(response: Any) -> tuple[tuple[str, str], ...]:
    """
    The origin's headers to store and replay: every end-to-end header but
    those the cache answers itself; the Content-Encoding as the origin sent
    it.
    """
    kept = []
    for name, values in response.headers.getAllRawHeaders():
        key = name.decode("latin-1").lower()
        if key in HOP_BY_HOP or key in _OWN or key == "set-cookie":
            continue
        kept.extend((key, v.decode("latin-1")) for v in values)
    for value in response.headers.getRawHeaders(ORIGIN_CONTENT_ENCODING, []):
        kept.append(("content-encoding", value.decode("latin-1")))
    return tuple(kept)


def parse_response(response: Any, received: float) -> OriginResponse:
    """
    Read what a 200 or 304 response says about the body.

    @param received: when it arrived (POSIX time), for its age and for an
        Expires without a Date.
    """
    etag = _header(response, b"etag")
    last_modified: float | None = None
    raw_lm = _header(response, b"last-modified")
    if raw_lm:
        try:
            last_modified = float(stringToDatetime(raw_lm.encode("latin-1")))
        except ValueError:
            last_modified = None
    content_type = _header(response, b"content-type") or "application/octet-stream"
    length = None if response.length is UNKNOWN_LENGTH else int(response.length)
    cache_control = _header(response, b"cache-control")
    _, no_store = parse_cache_control(cache_control)
    date = _header(response, b"date")
    lifetime = freshness_lifetime(cache_control, _header(response, b"expires"), date, received)
    # A response that sets a cookie is somebody's: streamed, never stored.
    no_store = no_store or response.headers.hasHeader(b"set-cookie")
    validator = etag if etag and not etag.startswith("W/") else raw_lm
    accept = (_header(response, b"accept-ranges") or "").lower()
    return OriginResponse(
        ranges="bytes" in [a.strip() for a in accept.split(",")] or response.code == 206,
        validator=validator,
        # Some S3 servers (rclone's) answer a range 200 with a Content-Range.
        content_range=_content_range(response) if response.code in (200, 206) else None,
        headers=ObjectHeaders(
            content_type=content_type,
            etag=etag,
            last_modified=last_modified,
            max_age=lifetime,
            no_store=no_store,
            initial_age=initial_age(_header(response, b"age"), date, received),
            cache_control=cache_control,
            extra=_end_to_end(response),
        ),
        length=length,
        checksum=_expected_checksum(response, etag),
        response=response,
        not_modified=response.code == 304,
    )


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$")


def _content_range(response: Any) -> tuple[int, int] | None:
    match = _CONTENT_RANGE.match(_header(response, b"content-range") or "")
    if match is None:
        return None
    return int(match.group(1)), int(match.group(3))


class _BodyReceiver(Protocol):
    """
    Hands each body chunk to C{write} as it arrives; gives up when the origin
    is silent for C{idle} seconds, or sends less than C{min_rate} bytes a
    second over any C{window} seconds (a trickle holds a slot, a temp file
    and its listeners forever otherwise).
    """

    def __init__(
        self,
        write: Callable[[bytes], None],
        done: Deferred[None],
        clock: IReactorTime,
        idle: float,
        min_rate: int = 0,
        window: float = 30.0,
    ) -> None:
        self._write = write
        self._done = done
        self._clock = clock
        self._idle = idle
        self._min_rate = min_rate
        self._window = window
        self._in_window = 0
        self._timer: IDelayedCall | None = None
        self._rate_check: IDelayedCall | None = None
        self._error: OriginError | None = None

    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(self._idle, self._timed_out)
        if self._min_rate:
            self._rate_check = self._clock.callLater(self._window, self._check_rate)

    def _timed_out(self) -> None:
        self._timer = None
        self.abort(OriginError(Reason.timeout, f"the origin sent nothing for {self._idle:g}s"))

    def _check_rate(self) -> None:
        self._rate_check = None
        rate = self._in_window / self._window
        if rate < self._min_rate:
            self.abort(
                OriginError(
                    Reason.too_slow,
                    f"the origin sent {rate:.0f} bytes/s over {self._window:g}s,"
                    f" under the minimum of {self._min_rate}",
                )
            )
            return
        self._in_window = 0
        self._rate_check = self._clock.callLater(self._window, self._check_rate)

    def abort(self, error: OriginError) -> None:
        self._error = error
        self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        if self._timer is not None:
            self._timer.reset(self._idle)
        self._in_window += len(data)
        try:
            self._write(data)
        except OSError as e:
            reason = _WRITE_ERRORS.get(e.errno or 0, Reason.write_error)
            self.abort(OriginError(reason, f"writing to the cache failed: {e.strerror}"))

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        for timer in (self._timer, self._rate_check):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._rate_check = None
        if self._done.called:
            # Cancelled: Deferred.cancel has already failed it.
            return
        if self._error is not None:
            self._done.errback(self._error)
        elif reason.check(ResponseDone):
            self._done.callback(None)
        elif reason.check(PotentialDataLoss):
            self._done.errback(
                OriginError(Reason.unframed, "the origin closed the body without a length to check")
            )
        else:
            self._done.errback(
                OriginError(Reason.truncated, "the origin connection broke mid-body")
            )


class Origin:
    """
    The configured origin, reached through an injected treq client.

    @param base: the origin base URL (see L{cachetier.names.normalise_base}).
    @param timeout: seconds allowed to receive the response headers, and
        the longest silence tolerated inside a body.
    @param min_rate: bytes a second a body must keep up over every
        C{rate_window} seconds (0: no minimum).
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
    ) -> None:
        self._signer = signer
        self._header_file = header_file
        self._run_in_thread = run_in_thread or _call_now
        # The last time the origin refused our credentials, and why: for
        # /healthz.
        self.rejected: tuple[float, str] | None = None
        self._min_rate = min_rate
        self._rate_window = rate_window
        self.base = base
        self._client = client
        self._clock = clock
        self._timeout = timeout
        self.breaker = breaker or Breaker(clock)
        self.retry = retry or RetryPolicy(attempts=1)

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
        @raise NotFoundAtOrigin: for 403, 404 and 410.
        @raise OriginError: for any other status (C{changed} for a 412 to a
            range), a timeout, a connection failure, or the breaker being
            open.
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
        headers = {CHECKSUM_MODE: [b"ENABLED"]}
        if byte_range is not None:
            first, last, validator = byte_range
            headers = {
                b"range": [b"bytes=%d-%d" % (first, last)],
                b"if-range": [validator.encode("latin-1")],
            }
        if validators is not None:
            if validators.origin_etag:
                headers[b"if-none-match"] = [validators.origin_etag.encode("latin-1")]
            if validators.origin_last_modified:
                headers[b"if-modified-since"] = [
                    datetimeToString(int(validators.origin_last_modified))
                ]
        url = self.url_for(name)
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._request(url, headers)
            # Whether the body was read already (to look for an S3 error).
            read = False
            if self._signer is not None and response.code in _S3_ERROR_CODES:
                await self._check_s3_error(response)
                read = True
            if response.code not in _REDIRECTS:
                break
            location = _header(response, b"location") or ""
            if not read:
                await self._discard(response)
            target = self._within_origin(url, location)
            if target is None:
                log.warn(
                    "the origin redirected {name} to {location}, outside the origin: not followed",
                    name=name,
                    location=location,
                )
                raise OriginError(Reason.origin_redirect, "the origin redirected outside itself")
            url = target
        else:
            raise OriginError(Reason.origin_redirect, f"more than {MAX_REDIRECTS} redirects")
        if response.code >= 500:
            self.breaker.failed(name)
        else:
            self.breaker.succeeded()
        if (
            response.code == 200
            or (response.code == 304 and validators is not None)
            or (response.code == 206 and byte_range is not None)
        ):
            return parse_response(response, self._clock.seconds())
        if response.code == 412 and byte_range is not None:
            await self._discard(response)
            raise OriginError(
                Reason.changed, "the object changed at the origin during the download"
            )
        if not read:
            await self._discard(response)
        if response.code in NOT_FOUND_CODES:
            raise NotFoundAtOrigin(response.code)
        raise OriginError(Reason.http_status, f"the origin answered {response.code}", response.code)

    async def _check_s3_error(self, response: Any) -> None:
        """
        Raise an C{auth} error for an S3 answer that says our credentials
        or signature are wrong (never a 404 to remember): the rest are left
        to the caller.  The error body is read (at most 8 KiB).
        """
        body = await self._read_body(response, 8192)
        code = _xml_field(body, "Code")
        if code not in _AUTH_CODES:
            return
        message = _xml_field(body, "Message") or ""
        hint = _AUTH_CODES[code]
        text = f"origin rejects our signature: {code}: {message[:200]}" + (
            f" ({hint})" if hint else ""
        )
        self.rejected = (self._clock.seconds(), text)
        raise OriginError(Reason.auth, text)

    async def _read_body(self, response: Any, keep: int) -> bytes:
        """
        Read an error body to its end (so its connection goes back to the
        pool, or is closed, before the sync reports the error), keeping
        its first C{keep} bytes.
        """
        chunks: list[bytes] = []
        done: Deferred[None] = Deferred()
        response.deliverBody(_Collect(chunks, done, keep))
        done.addTimeout(self._timeout, self._clock)
        try:
            await done
        except Exception:
            pass
        return b"".join(chunks)

    async def _headers_for(
        self, url: str, headers: dict[bytes, list[bytes]]
    ) -> dict[bytes, list[bytes]]:
        """
        What to send to C{url}: the secret headers and the signature, made
        for this very URL (so a redirect or a retry is signed anew).
        """
        if self._header_file is not None:
            headers = {**headers, **self._header_file.headers}
        if self._signer is None:
            return headers
        try:
            frozen = await self._run_in_thread(self._signer.credentials.frozen)
        except CredentialsError as e:
            raise OriginError(Reason.credentials, str(e)) from None
        return self._signer.sign("GET", url, headers, frozen)

    async def _request(self, url: str, headers: dict[bytes, list[bytes]]) -> Any:
        headers = await self._headers_for(url, headers)
        d = self._client.get(url, headers=headers, unbuffered=True, allow_redirects=False)
        d.addTimeout(self._timeout, self._clock, onTimeoutCancel=self._timed_out)
        try:
            return await d
        except Exception as e:
            if _cancelled(e):
                self.breaker.abandoned()
                raise CancelledError() from None
            self.breaker.failed()
            if isinstance(e, OriginError):
                raise
            raise OriginError(
                Reason.connection, f"could not reach the origin: {_describe(e)}"
            ) from None

    def _within_origin(self, url: str, location: str) -> str | None:
        """
        Where a redirect from C{url} to C{location} leads, if that is still
        the origin: the same scheme, host and port, under the base path.
        Nothing else is followed, so no request (and no credential) ever
        goes to another host.
        """
        target = urlsplit(urljoin(url, location))
        base = urlsplit(self.base)
        if (target.scheme, target.hostname, _port(target)) != (
            base.scheme,
            base.hostname,
            _port(base),
        ) or not target.path.startswith(base.path):
            return None
        return urlunsplit(target._replace(fragment=""))

    def abandon(self, response: OriginResponse) -> None:
        """
        Give up on a response's body without reading it: its connection is
        closed, not left waiting for a reader.
        """
        response.response.deliverBody(_Abandon())

    async def _discard(self, response: Any) -> None:
        await self._read_body(response, 0)

    def _timed_out(self, result: object, timeout: float) -> Failure:
        # A cancelled request fails in whatever way the agent chooses;
        # say plainly that it was the deadline.
        return Failure(
            OriginError(Reason.timeout, f"the origin did not answer within {timeout:g}s")
        )

    def stream(self, response: OriginResponse, write: Callable[[bytes], None]) -> Deferred[None]:
        """
        Deliver the body of C{response} to C{write}, chunk by chunk, never
        holding more than one chunk in memory.

        @return: a L{Deferred} that fires when the body is complete, fails
            with L{OriginError}, and aborts the download when cancelled.
        """
        receiver: _BodyReceiver

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
        receiver = _BodyReceiver(
            write, done, self._clock, self._timeout, self._min_rate, self._rate_window
        )
        response.response.deliverBody(receiver)
        return done.addErrback(broke)


# S3 error codes that mean "your credentials or signature", and what to
# check.  A 403 AccessDenied may also be a missing key without
# s3:ListBucket: never remembered as a 404 either way.
_AUTH_CODES = {
    "SignatureDoesNotMatch": "check the secret key",
    "InvalidAccessKeyId": "check the access key",
    "AccessDenied": "check the key's permissions (s3:GetObject)",
    "RequestTimeTooSkewed": "check this machine's clock",
    "AuthorizationHeaderMalformed": "check --s3-region",
    "PermanentRedirect": "check --s3-region and the origin URL",
    "IncorrectEndpoint": "check --s3-region and the origin URL",
    "ExpiredToken": "the session token expired",
    "InvalidToken": "check the session token",
    "AllAccessDisabled": "",
}
_S3_ERROR_CODES = frozenset({301, 307, 400, 403})


def _xml_field(body: bytes, field: str) -> str | None:
    match = re.search(rb"<" + field.encode() + rb">([^<]{0,1000})</", body)
    return match.group(1).decode("utf-8", "replace").strip() if match else None


def _call_now(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args)


class _Collect(Protocol):
    """
    Keeps the first C{limit} bytes of a body.
    """

    def __init__(self, chunks: list[bytes], done: Deferred[None], limit: int) -> None:
        self.chunks = chunks
        self.done = done
        self.left = limit

    def dataReceived(self, data: bytes) -> None:
        if self.left > 0:
            self.chunks.append(data[: self.left])
            self.left -= len(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if not self.done.called:
            self.done.callback(None)


class _Abandon(Protocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()


def _port(url: SplitResult) -> int | None:
    return url.port or {"http": 80, "https": 443}.get(url.scheme)


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
