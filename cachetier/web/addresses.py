"""
Where a request comes from and where its answers point: the client's
address (through trusted proxies and the workers' relay) and the URLs
listeners are given.
"""

from __future__ import annotations

import functools
import ipaddress

from twisted.web.iweb import IRequest

from ..names import name_from_path, quote_name

# Set by a worker on requests it relays to the primary over the private
# UNIX socket: the listener's address, which the primary would otherwise
# see as the worker's.
RELAYED_FOR = b"x-cachetier-relayed-for"

Trusted = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

# A hit's name is validated once per path, not once a request: the names
# listeners ask for most stay in it (at most a few MiB of paths).
_name_from_path = functools.lru_cache(maxsize=1024)(name_from_path)


def client_address(request: IRequest) -> str:
    """
    The address a request came from; for a request a worker relayed over
    the primary's private socket, the listener's address it names.

    When that address is one of the C{trusted} proxies (C{--trusted-proxy}),
    the client is the last address in X-Forwarded-For that is not, as
    nginx's C{real_ip_recursive}.
    """
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    if host is None:
        relayed = request.getHeader(RELAYED_FOR)
        return relayed.decode("latin-1") if relayed else "local"
    host = str(host)
    trusted = getattr(getattr(request, "site", None), "trusted_proxies", ())
    if trusted and _is_trusted(host, trusted):
        forwarded = b",".join(request.requestHeaders.getRawHeaders(b"x-forwarded-for", []))
        for hop in reversed(forwarded.decode("latin-1").split(",")):
            hop = hop.strip()
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break  # garbage: stop at the last address we could trust
            host = hop
            if not _is_trusted(hop, trusted):
                break
    return host


def _is_trusted(host: str, trusted: Trusted) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def name_of(request: IRequest) -> str:
    """
    The validated file name below the resource that is rendering
    C{request}, read from the still-encoded path.

    @raise cachetier.names.InvalidName: when the path is not a valid name.
    """
    segments = request.path.split(b"/")
    return _name_from_path(b"/".join(segments[1 + len(request.prepath) :]))


def public_base(request: IRequest, configured: str | None) -> str:
    """
    The base URL listeners reach this server at: the configured one, or the
    scheme and Host of C{request}.
    """
    if configured is not None:
        return configured
    scheme = "https" if request.isSecure() else "http"
    host = request.getHeader(b"host")
    if host is None:
        address = request.getHost()
        host = f"{address.host}:{address.port}".encode("ascii")
    return f"{scheme}://{host.decode('latin-1')}/"


def download_url(request: IRequest, configured: str | None, name: str) -> str:
    return public_base(request, configured) + "files/" + quote_name(name)
