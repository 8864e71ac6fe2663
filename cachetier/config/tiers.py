"""
The flags that place a node among others: its name (C{--node-name}), in
logs, in the C{Via}, C{CDN-Loop} and C{Cache-Status} headers and in
metrics; its shields (C{--shield}, C{--shield-fallback},
C{--shield-timeout}), the nodes its fills ask before the origin; the
secret that marks an edge's requests to its shields
(C{--cluster-secret-file}); and the cluster it joins (C{--cluster} and the
flags beside it).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..names import normalise_base
from . import SettingError, parse_duration, parse_endpoint

# An sf-token (RFC 8941 section 3.3.4) that is also a Via pseudonym
# (RFC 9110 section 7.6.3, a token): a letter, then letters, digits and
# "._-", as host names are spelled.
_NODE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,62}\Z")


def node_name(text: str | None) -> str:
    """
    C{--node-name}: the name given, or this host's name (its first label
    when the whole is not a valid name).
    """
    if text is None:
        host = socket.gethostname()
        for candidate in (host, host.split(".")[0]):
            if _NODE_NAME.match(candidate):
                return candidate
        return "cachetier"
    if not _NODE_NAME.match(text):
        raise SettingError(
            f"--node-name: not a node name: {text!r} (a letter, then letters, digits,"
            " '.', '_' or '-'; at most 63)"
        )
    return text


# What a header value may hold (RFC 9110 section 5.5), less whitespace.
_SECRET = re.compile(rb"[\x21-\x7e]{16,1024}\Z")


def cluster_secret(path: str | None) -> bytes | None:
    """
    C{--cluster-secret-file}: the secret every node of a cluster shares,
    from a file (never the command line); the message of a refusal never
    shows it.
    """
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as e:
        raise SettingError(f"--cluster-secret-file: cannot read {path}: {e.strerror}") from None
    if not _SECRET.match(secret):
        raise SettingError(
            "--cluster-secret-file: the secret must be 16 to 1024 printable ASCII"
            " characters, without spaces"
        )
    return secret


def tiers(flags: Mapping[str, Any]) -> dict[str, Any]:
    """
    The settings of a node's place among others: its name, its shields
    and the cluster secret.

    @raise SettingError: naming the flag refused.
    """
    shields: list[str] = []
    for url in flags["shield"]:
        if url == "cluster":
            continue  # the cluster's live shields (cluster_settings checks)
        try:
            base = normalise_base(url)
        except ValueError as e:
            raise SettingError(f"--shield: {e}") from None
        if base in shields:
            raise SettingError(f"--shield: {url!r} is given twice")
        shields.append(base)
    fallback = flags["shield-fallback"]
    if fallback not in ("origin", "none"):
        raise SettingError(f"--shield-fallback must be 'origin' or 'none', not {fallback!r}")
    try:
        timeout = parse_duration(flags["shield-timeout"])
    except ValueError as e:
        raise SettingError(f"--shield-timeout: {e}") from None
    if timeout <= 0:
        raise SettingError(
            f"--shield-timeout: must be longer than 0, not {flags['shield-timeout']!r}"
        )
    return {
        "node_name": node_name(flags["node-name"]),
        "shields": tuple(shields),
        "shields_from_cluster": "cluster" in flags["shield"],
        "shield_fallback": fallback,
        "shield_timeout": timeout,
        "cluster_secret": cluster_secret(flags.get("cluster-secret-file")),
    }


# Every key of a cluster is under "<name>:": letters, digits, "._-".
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_ROLES = ("edge", "shield")


def cluster_settings(flags: Mapping[str, Any], listen: tuple[str, ...]) -> dict[str, Any]:
    """
    The cluster's settings: C{--cluster}, C{--cluster-name},
    C{--cluster-password-file}, C{--node-url}, C{--role},
    C{--cluster-stream-length} and C{--cluster-max-lag}, each checked.

    @param listen: the C{--listen} descriptions, the first of which gives
        the default C{--node-url}.
    """
    url = flags["cluster"]
    if url is not None:
        cluster_url(url)
    elif flags["cluster-password-file"] is not None:
        raise SettingError("--cluster-password-file needs --cluster")
    elif "cluster" in flags.get("shield", ()):
        raise SettingError("--shield=cluster needs --cluster")
    name = flags["cluster-name"]
    if not _CLUSTER_NAME.match(name):
        raise SettingError(
            f"--cluster-name: not a cluster name: {name!r} (letters, digits, '.', '_' or '-')"
        )
    if flags["role"] not in _ROLES:
        raise SettingError(f"--role must be 'edge' or 'shield', not {flags['role']!r}")
    length = flags["cluster-stream-length"]
    if not length.isdigit() or int(length) < 100:
        raise SettingError(f"--cluster-stream-length: a whole number, at least 100, not {length!r}")
    try:
        max_lag = parse_duration(flags["cluster-max-lag"])
    except ValueError as e:
        raise SettingError(f"--cluster-max-lag: {e}") from None
    if max_lag < 1:
        raise SettingError("--cluster-max-lag: at least 1s (the stream is heard once a second)")
    return {
        "cluster": url,
        "cluster_name": name,
        "cluster_password": cluster_password(flags["cluster-password-file"]),
        "node_url": node_url(flags["node-url"], listen),
        "role": flags["role"],
        "cluster_stream_length": int(length),
        "cluster_max_lag": max_lag,
    }


def cluster_url(url: str) -> None:
    """
    Refuse a C{--cluster} that is not a Redis URL redis-py takes
    (C{redis://}, C{rediss://}, C{unix://}), or that holds a password:
    a command line is readable by every user of the machine.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise SettingError(
            f"--cluster: not a Redis URL: {url!r} (redis://host:port/db, rediss://..."
            " or unix:///path?db=N)"
        )
    if parts.password is not None:
        raise SettingError("--cluster: put the password in --cluster-password-file, not the URL")
    if parts.scheme == "unix" and not parts.path:
        raise SettingError(f"--cluster: {url!r} names no socket (unix:///path/to/redis.sock)")
    if parts.scheme != "unix" and not parts.hostname:
        raise SettingError(f"--cluster: {url!r} names no host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise SettingError(f"--cluster: {url!r}: the port is not in 1-65535")


def cluster_password(path: str | None) -> str | None:
    """
    The Redis password, from a file (its first line): never from the
    command line.
    """
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            password = f.readline().strip()
    except OSError as e:
        raise SettingError(f"--cluster-password-file: cannot read {path}: {e.strerror}") from None
    except ValueError:
        raise SettingError(f"--cluster-password-file: {path} is not UTF-8 text") from None
    if not password:
        raise SettingError(f"--cluster-password-file: {path} is empty")
    return password


def node_url(text: str | None, listen: tuple[str, ...]) -> str | None:
    """
    C{--node-url}, how the other nodes reach this one; by default from the
    first C{--listen} (its interface, else this host's name, and its
    port); L{None} where that cannot say (a port chosen at bind time, a
    socket handed over by systemd).
    """
    if text is not None:
        try:
            return normalise_base(text)
        except ValueError as e:
            raise SettingError(f"--node-url: {e}") from None
    kind, positional, named = parse_endpoint(listen[0])
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    port = named.get("port", positional[0] if positional else "0")
    if port in ("", "0"):
        return None
    host = named.get("interface", "")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    scheme = "https" if kind == "ssl" else "http"
    return f"{scheme}://{host}:{port}/"
