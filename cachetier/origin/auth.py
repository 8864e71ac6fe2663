"""
Private origins: what is added to every origin request so the origin lets
us read, held by the cache tier alone.

  - L{S3Signer}: AWS Signature Version 4 with botocore's C{S3SigV4Auth} and
    C{UNSIGNED-PAYLOAD}, for S3 and S3-compatible services.  Credentials
    come from botocore's default chain (environment, shared credentials
    and config files, container and instance metadata), never from the
    command line;
  - L{HeaderFile}: secret headers (C{Authorization: Bearer ...}) from a
    file, for plain HTTP origins.

Every request is signed as it is sent (the URL signed is the URL sent,
the Host signed the Host sent), so redirects within the origin and
retries are signed anew.  No credential, signature or header value is
ever logged or shown.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import BotoCoreError
from twisted.logger import Logger

log = Logger()

# botocore logs canonical requests and signatures at DEBUG.
logging.getLogger("botocore").setLevel(logging.WARNING)

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


class CredentialsError(Exception):
    """
    No usable credentials (none found, or a refresh failed).
    """


class CredentialSource:
    """
    botocore's default credential chain, resolved again when it may have
    changed: credentials that refresh themselves (instance or container
    roles, SSO) are asked each time, and botocore refreshes them before
    they expire; static ones are resolved anew when the shared credentials
    or config file changes, or on L{reset} (SIGHUP).

    L{frozen} may block (a metadata request, a file read): call it in a
    thread.

    @param session_factory: makes a botocore session (tests pass one with
        their own files).
    """

    def __init__(self, session_factory: Callable[[], Any] | None = None) -> None:
        if session_factory is None:
            from botocore.session import get_session

            session_factory = get_session
        self._session_factory = session_factory
        self._session: Any = None
        self._credentials: Any = None
        self._stamp: tuple[float, ...] = ()
        self._key: str | None = None

    def _file_stamp(self) -> tuple[float, ...]:
        """
        When the shared credentials and config files (where the session
        looks: AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE, ~/.aws) last
        changed.
        """
        if self._session is None:
            self._session = self._session_factory()
        stamp = []
        for variable in ("credentials_file", "config_file"):
            path = os.path.expanduser(self._session.get_config_variable(variable) or "")
            try:
                stamp.append(os.stat(path).st_mtime_ns)
            except OSError:
                stamp.append(-1)
        return tuple(stamp)

    def reset(self) -> None:
        self._credentials = None

    def frozen(self) -> ReadOnlyCredentials:
        """
        Key, secret and token that belong together, for one request.

        @raise CredentialsError: when there are none, or a refresh failed.
        """
        stamp = self._file_stamp()
        if self._credentials is None or stamp != self._stamp:
            self._stamp = stamp
            try:
                self._session = self._session_factory()
                self._credentials = self._session.get_credentials()
            except (BotoCoreError, OSError, ValueError) as e:
                raise CredentialsError(f"cannot load credentials: {type(e).__name__}") from None
        if self._credentials is None:
            raise CredentialsError(
                "no AWS credentials found (environment, shared files or instance role)"
            )
        try:
            frozen = self._credentials.get_frozen_credentials()
        except Exception as e:  # botocore raises many kinds on a failed refresh
            raise CredentialsError(f"refreshing credentials failed: {type(e).__name__}") from None
        if frozen.access_key != self._key:
            if self._key is not None:
                log.info(
                    "origin credentials changed (method: {method})",
                    method=getattr(self._credentials, "method", "?"),
                )
            self._key = frozen.access_key
        return frozen


class S3Signer:
    """
    Signs origin requests with SigV4 for C{region} (C{auto} for R2).
    """

    def __init__(self, region: str, credentials: CredentialSource) -> None:
        self.region = region
        self.credentials = credentials

    def sign(
        self, method: str, url: str, headers: dict[bytes, list[bytes]], frozen: ReadOnlyCredentials
    ) -> dict[bytes, list[bytes]]:
        """
        The headers to send for C{url}, signed: C{Host} (as sent, port
        included), C{x-amz-content-sha256}, C{x-amz-date}, any session
        token and C{Authorization}.
        """
        host = _host(url)
        plain = {k.decode("latin-1"): b", ".join(v).decode("latin-1") for k, v in headers.items()}
        plain["host"] = host
        plain["x-amz-content-sha256"] = UNSIGNED_PAYLOAD
        request = AWSRequest(method=method, url=url, headers=plain)
        S3SigV4Auth(frozen, "s3", self.region).add_auth(request)
        return {
            k.lower().encode("latin-1"): [v.encode("latin-1")] for k, v in request.headers.items()
        }


def _host(url: str) -> str:
    """
    The Host header Twisted's Agent would send for C{url}: the port only
    when it is not the scheme's default.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


_HEADER_LINE = re.compile(r"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$")


class HeaderFile:
    """
    Secret headers for every origin request, from a file of C{Name: value}
    lines (blank lines and C{#} comments skipped), read at start and again
    by L{reload} (SIGHUP).  A file that fails to parse on reload leaves the
    headers in use unchanged.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.headers = self._read()

    def _read(self) -> dict[bytes, list[bytes]]:
        headers: dict[bytes, list[bytes]] = {}
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                match = _HEADER_LINE.match(line.rstrip("\r\n"))
                if match is None or not match.group(2):
                    # The line itself may hold a secret: never shown.
                    raise ValueError(f"line {number} is not 'Name: value'")
                name = match.group(1).lower().encode("latin-1")
                if name in (b"host", b"content-length", b"transfer-encoding", b"connection"):
                    raise ValueError(f"line {number}: that header cannot be set")
                headers.setdefault(name, []).append(match.group(2).encode("latin-1"))
        return headers

    def reload(self) -> None:
        self.headers = self._read()
        log.info("origin headers reloaded from {path}", path=self.path)
