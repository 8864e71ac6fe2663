"""
C{--forward-request-header}: which of a listener's request headers may go
to the origin with the fill its request starts.
"""

from __future__ import annotations

import re

from .flags import SettingError

# Never forwarded: secrets (RFC 9110 section 11.6.2, and a listener's
# cookies are its own), and what cachetier asks the origin itself.
_NOT_FORWARDED = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "host",
        "range",
        "if-range",
        "if-none-match",
        "if-modified-since",
        "if-match",
        "if-unmodified-since",
        "accept-encoding",
        "connection",
        "content-length",
        "transfer-encoding",
        "te",
        "upgrade",
        "x-amz-checksum-mode",
        "via",
        "cdn-loop",
        "cachetier-secret",
        "cachetier-generation",
    }
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def forward_request_header(name: str) -> str:
    """
    A C{--forward-request-header}: a header name, lower-cased, that is not
    a secret nor one cachetier sets itself.
    """
    if not _TOKEN.match(name):
        raise SettingError(f"--forward-request-header: not a header name: {name!r}")
    if name.lower() in _NOT_FORWARDED or name.lower().startswith("x-amz-"):
        raise SettingError(f"--forward-request-header: {name} is never forwarded")
    return name.lower()
