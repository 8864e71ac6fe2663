"""
The agents an origin request goes through, each a small L{IAgent} wrapping
the next, as treq stacks its own:

  - L{WithinOrigin}: follows redirects, but only within the origin;
  - L{S3Rejections}: reads S3's error answers for a rejected signature;
  - L{SigningAgent}: adds the secret headers and the signature, made for
    the very URL sent;
  - L{IdentityAgent}: under the origin's treq client, keeps the origin's
    bytes as they are.

The URI they pass on is the URL's text, UTF-8 encoded: the treq client at
the bottom makes a URI of it, as it does of any URL it is given.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from ..errors import MAX_ANSWER_BODY, OriginError, Reason
from .auth import CredentialsError, HeaderFile, S3Signer
from .body import ReadResponse, read_body
from .response import ORIGIN_CONTENT_ENCODING, drop_connection_options, header

log = Logger()

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@implementer(IAgent)
class CoroutineAgent:
    """
    An agent whose C{request} is the coroutine C{_request}: the agents of
    the stack below L{Origin} are written as coroutines.
    """

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._request(method, uri, headers, bodyProducer))

    async def _request(
        self, method: bytes, uri: bytes, headers: Headers | None, body: IBodyProducer | None
    ) -> Any:
        raise NotImplementedError


@implementer(IAgent)
class IdentityAgent:
    """
    The innermost agent of the origin's treq client.  treq wraps every
    agent in a C{ContentDecoderAgent}, which asks for gzip and decodes it;
    a cache must store the origin's bytes exactly.  So this asks for
    C{identity}, and moves any C{Content-Encoding} the origin sends anyway
    (an object stored gzip-encoded) to a header of its own, where the
    decoder does not look; L{cachetier.origin.response.parse_response}
    puts it back.  It first removes the header fields the origin's
    C{Connection} header names (shown by L{cachetier.web._twisted.QuietPool}).
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
        drop_connection_options(response.headers)
        encoding = response.headers.getRawHeaders(b"content-encoding")
        if encoding:
            response.headers.removeHeader(b"content-encoding")
            response.headers.setRawHeaders(ORIGIN_CONTENT_ENCODING, encoding)
        return response


class SigningAgent(CoroutineAgent):
    """
    Adds what a private origin asks of every request: the secret headers
    of a L{HeaderFile}, and an S3 SigV4 signature made for this very URL
    (so a redirect or a retry is signed anew).

    @param run_in_thread: runs the credential chain, which may block.
    """

    def __init__(
        self,
        agent: IAgent,
        signer: S3Signer | None = None,
        header_file: HeaderFile | None = None,
        run_in_thread: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        self._agent = agent
        self.signer = signer
        self.header_file = header_file
        self._run_in_thread = run_in_thread or _call_now

    async def _request(
        self, method: bytes, uri: bytes, headers: Headers | None, body: IBodyProducer | None
    ) -> Any:
        headers = Headers() if headers is None else headers.copy()
        if self.header_file is not None:
            for name, values in self.header_file.headers.items():
                headers.setRawHeaders(name, values)
        if self.signer is not None:
            try:
                frozen = await self._run_in_thread(self.signer.credentials.frozen)
            except CredentialsError as e:
                raise OriginError(Reason.credentials, str(e)) from None
            plain = {name.lower(): values for name, values in headers.getAllRawHeaders()}
            url = uri.decode("utf-8")
            headers = Headers(self.signer.sign(method.decode("ascii"), url, plain, frozen))
        return await self._agent.request(method, uri, headers, body)


def _call_now(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


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


class S3Rejections(CoroutineAgent):
    """
    Reads S3's error answers before anything above acts on their status:
    one that says our credentials or signature are wrong fails with an
    C{auth} error (never a 404 to pass on, never a redirect to follow); the
    rest go on up with the bodies they came with.

    @ivar rejected: the last time the origin refused our credentials, and
        why: for /healthz.
    """

    def __init__(self, agent: IAgent, clock: IReactorTime, timeout: float) -> None:
        self._agent = agent
        self._clock = clock
        self._timeout = timeout
        self.rejected: tuple[float, str] | None = None

    async def _request(
        self, method: bytes, uri: bytes, headers: Headers | None, body: IBodyProducer | None
    ) -> Any:
        response = await self._agent.request(method, uri, headers, body)
        if response.code not in _S3_ERROR_CODES:
            return response
        # One byte over the most passed on, so that a bigger body stays so.
        answer = await read_body(response, MAX_ANSWER_BODY + 1, self._clock, self._timeout)
        code = _xml_field(answer[:8192], "Code")
        if code not in _AUTH_CODES:
            return ReadResponse(response, answer)
        message = _xml_field(answer, "Message") or ""
        hint = _AUTH_CODES[code]
        text = f"origin rejects our signature: {code}: {message[:200]}" + (
            f" ({hint})" if hint else ""
        )
        self.rejected = (self._clock.seconds(), text)
        raise OriginError(Reason.auth, text)


def _xml_field(body: bytes, field: str) -> str | None:
    match = re.search(rb"<" + field.encode() + rb">([^<]{0,1000})</", body)
    return match.group(1).decode("utf-8", "replace").strip() if match else None


class WithinOrigin(CoroutineAgent):
    """
    Follows the origin's redirects (at most L{MAX_REDIRECTS}) while they
    stay within the origin: the same scheme, host and port, under the base
    path.  Nothing else is followed, so no request (and no credential) ever
    goes to another host: a redirect elsewhere goes on up as it came, to be
    passed on.  Each redirect followed has its body read to its end first.

    Made for one request, as treq makes its redirect agent.

    @param name: the name asked for, for the log.
    """

    def __init__(
        self, agent: IAgent, base: str, clock: IReactorTime, timeout: float, name: str
    ) -> None:
        self._agent = agent
        self._base = base
        self._clock = clock
        self._timeout = timeout
        self._name = name

    async def _request(
        self, method: bytes, uri: bytes, headers: Headers | None, body: IBodyProducer | None
    ) -> Any:
        url = uri.decode("utf-8")
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._agent.request(method, url.encode("utf-8"), headers, body)
            if response.code not in _REDIRECTS:
                return response
            location = header(response, b"location")
            target = None if not location else self._within_origin(url, location)
            if target is None:
                log.info(
                    "the origin redirected {name} to {location}, outside the origin: passed on",
                    name=self._name,
                    location=location or "nowhere (no Location)",
                )
                return response
            await read_body(response, 0, self._clock, self._timeout)
            url = target
        raise OriginError(Reason.origin_redirect, f"more than {MAX_REDIRECTS} redirects")

    def _within_origin(self, url: str, location: str) -> str | None:
        """
        Where a redirect from C{url} to C{location} leads, if that is still
        the origin.
        """
        target = urlsplit(urljoin(url, location))
        base = urlsplit(self._base)
        if (target.scheme, target.hostname, _port(target)) != (
            base.scheme,
            base.hostname,
            _port(base),
        ) or not target.path.startswith(base.path):
            return None
        return urlunsplit(target._replace(fragment=""))


def _port(url: SplitResult) -> int | None:
    return url.port or {"http": 80, "https": 443}.get(url.scheme)
