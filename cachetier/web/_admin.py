"""
Who may call the admin API: the holder of the bearer token.
"""

from __future__ import annotations

import hmac

from twisted.web.iweb import IRequest

from ._json import render_error


def refuse(request: IRequest, token: bytes | None) -> bytes | None:
    """
    The error to answer unless C{request} carries the admin token, or
    L{None} when it does.  The token is compared in constant time and never
    echoed or logged.

    @param token: the configured token; L{None} disables the admin API.
    """
    if token is None:
        return render_error(
            request, 403, "forbidden", "the admin API is disabled: no admin token is configured"
        )
    header = request.getHeader(b"authorization")
    if header is None:
        request.setHeader(b"www-authenticate", b'Bearer realm="cachetier admin"')
        return render_error(
            request, 401, "unauthorized", "send the admin token as: Authorization: Bearer <token>"
        )
    scheme, _, given = header.partition(b" ")
    if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), token):
        return render_error(request, 403, "forbidden", "the admin token is wrong")
    return None
