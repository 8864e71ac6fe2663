"""
The flags that place a node among others: its name (C{--node-name}), in
logs, in the C{Via}, C{CDN-Loop} and C{Cache-Status} headers and in
metrics; the secret that marks an edge's requests to its shields
(C{--cluster-secret-file}).
"""

from __future__ import annotations

import re
import socket

from . import SettingError

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
