"""
Settings, and the parsers for the human-friendly values operators type
(L{cachetier.config.flags} checks the flags with them).
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from attrs import asdict, field, frozen

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# K, M, G, T (either case, as nginx takes them) or KiB, MiB, GiB, TiB:
# "10MB" is refused, since it could mean 10**7 as well as 10 * 2**20.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KMGTkmgt])|([KMGT])iB)?\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


class SettingError(ValueError):
    """
    A flag's value refused: the message names the flag and says why.
    """


def parse_size(text: str) -> int:
    """
    Parse a byte count such as C{"300M"}, C{"50G"} or C{"1024"}.

    Suffixes are binary (C{K} = 1024), because operators size caches against
    disks and C{df -h} counts that way.

    @raise ValueError: when C{text} is not a size.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(
            f"not a size: {text!r} (a number with K, M, G or T, or KiB, MiB, GiB or TiB:"
            " 300M, 50GiB)"
        )
    number, letter, binary = match.groups()
    return int(float(number) * _SIZE_UNITS[(letter or binary or "").upper()])


# Fields of an endpoint description are separated by unescaped colons
# (see twisted.internet.endpoints.quoteStringArgument).
_ENDPOINT_FIELD = re.compile(r"(?<!\\):")


def parse_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    Split an endpoint description such as C{tcp6:8080:interface=\\:\\:1}
    into its kind, positional and named fields, unescaped.
    """
    parts = _ENDPOINT_FIELD.split(description)
    values = [p.replace("\\:", ":").replace("\\\\", "\\") for p in parts[1:]]
    positional, named = [], {}
    for part in values:
        key, eq, value = part.partition("=")
        if eq:
            named[key] = value
        else:
            positional.append(part)
    return parts[0], positional, named


def default_backlog(path: str = "/proc/sys/net/core/somaxconn") -> int:
    """
    The backlog a TCP or TLS listener gets unless its C{--listen} says
    C{backlog=}: the kernel's cap (C{somaxconn}), so a burst of new
    connections (a push notification's listeners) waits in the accept queue,
    not in SYN retries; 511, as nginx, where the cap cannot be read.
    """
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 511


def parse_rate(text: str) -> int:
    """
    Parse a transfer rate such as C{"10K"} or C{"10K/s"} into bytes a second.

    @raise ValueError: when C{text} is not a rate.
    """
    number, _, per = text.partition("/")
    if per and per.strip() != "s":
        raise ValueError(f"not a rate: {text!r} (examples: 10K, 10K/s, 1M/s)")
    return parse_size(number)


def parse_duration(text: str) -> float:
    """
    Parse a duration such as C{"30"}, C{"30s"}, C{"24h"} or C{"7d"} into seconds.

    @raise ValueError: when C{text} is not a duration.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (examples: 30, 30s, 24h, 7d)")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit or ""]


@frozen
class Settings:
    """
    Everything the service is configured with, validated.

    @ivar origin: the origin base URL, always ending in C{/}.
    @ivar public_url: base for C{download_url}, or L{None} to derive it from
        each request's Host header.
    @ivar miss: C{"stream"} (serve while filling) or C{"redirect"} (302 to
        the origin and sync in the background).
    """

    origin: str
    cache_dir: str = "cachetier-cache"
    listen: tuple[str, ...] = ("tcp:8080",)
    public_url: str | None = None
    miss: str = "stream"
    max_concurrent_syncs: int = 8
    origin_timeout: float = 30.0
    cache_control_max_age: int = 86400
    negative_ttl: float = 60.0
    max_variants: int = 8
    ttl: float = 86400.0
    stale_if_error: float = 7 * 86400.0
    # Served stale while revalidating where the origin does not say: a
    # deviation from RFC 9111 the operator opts into (Varnish's grace).
    stale_while_revalidate: float = 0.0
    max_size: int | None = None
    min_free: int = 0
    max_object_size: int | None = None
    max_queued_syncs: int = 1000
    max_syncs_per_second: float = 50.0
    origin_retries: int = 3
    breaker_threshold: int = 5
    breaker_cooloff: float = 30.0
    workers: int = 1
    # Connections: headers (and keep-alive idleness) and stalled responses.
    idle_timeout: float = 60.0
    send_timeout: float = 60.0
    # None: as many as the descriptor limit allows (see limits.connection_cap).
    max_connections: int | None = None
    # Downloads slower than this many bytes a second over a window are
    # abandoned; listeners wait this long for a queued sync to start.
    origin_min_rate: int = 10 * 1024
    origin_min_rate_window: float = 30.0
    queue_timeout: float = 30.0
    # New syncs one client address may start a second.
    max_syncs_per_client: float = 25.0
    # None: access events go to twistd's log; "off": none; else a file.
    access_log: str | None = None
    # A listener's request headers sent with the fill it starts.
    forward_request_headers: tuple[str, ...] = ()
    # Proxies whose X-Forwarded-For names the client (--trusted-proxy).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # How long responses in flight may take to finish on SIGTERM.
    shutdown_grace: float = 30.0
    # Origin connections one fill may use (Range requests in parallel).
    fill_connections: int = 1
    # Private origins: "s3" signs every request (SigV4) for s3_region with
    # credentials from botocore's chain; a header file adds secret headers.
    origin_auth: str = "none"
    s3_region: str | None = None
    s3_addressing: str = "path"
    origin_header_file: str | None = None
    # Download analytics are kept this many days (None: not kept).
    analytics_retention_days: int | None = 400
    # An operator's bots list, added to the shipped one (--bots-file).
    bots_file: str | None = None
    # This node's name in logs, hop headers (Via, CDN-Loop, Cache-Status)
    # and metrics (--node-name; default: the host name).
    node_name: str = "cachetier"
    # The cluster (--cluster): a Redis URL, or None for a single node; the
    # prefix of its keys, how others reach this node and its role; how
    # long the purge log keeps entries and how long without hearing from
    # it before every hit is revalidated.
    cluster: str | None = None
    cluster_name: str = "cachetier"
    cluster_password: str | None = field(default=None, repr=False)
    node_url: str | None = None
    role: str = "edge"
    cluster_stream_length: int = 100000
    cluster_max_lag: float = 5.0
    # Other nodes' base URLs that fills ask before the origin (--shield),
    # whether the origin is asked when none answers, and how long a
    # shield may take to connect and to answer.
    shields: tuple[str, ...] = ()
    # --shield=cluster: the cluster's live nodes whose role is shield too.
    shields_from_cluster: bool = False
    shield_fallback: str = "origin"
    shield_timeout: float = 2.0
    # Secrets: kept out of repr() so they can never reach a log.
    admin_token: bytes | None = field(default=None, repr=False)
    # The cluster secret (--cluster-secret-file): edges send it to their
    # shields, which recognise them by it.
    cluster_secret: bytes | None = field(default=None, repr=False)


_SECRETS = frozenset({"admin_token", "cluster_secret", "cluster_password"})


def to_json(settings: Settings) -> str:
    """
    C{settings} as JSON for a worker process, all but the secrets: a
    worker relays every admin request, and every request that carries the
    cluster secret, to the primary (which alone holds the cluster's
    connection), and a secret has no place in a child's environment.
    """

    def plain(_instance: object, _attribute: object, value: Any) -> Any:
        if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            return str(value)
        return value

    return json.dumps(
        asdict(settings, filter=lambda a, _: a.name not in _SECRETS, value_serializer=plain)
    )


def from_json(text: str) -> Settings:
    """
    The L{Settings} that L{to_json} wrote.
    """
    fields = json.loads(text)
    fields["listen"] = tuple(fields["listen"])
    fields["trusted_proxies"] = tuple(ipaddress.ip_network(n) for n in fields["trusted_proxies"])
    fields["forward_request_headers"] = tuple(fields["forward_request_headers"])
    fields["shields"] = tuple(fields["shields"])
    return Settings(**fields)
