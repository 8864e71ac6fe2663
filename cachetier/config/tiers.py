"""
The flags that place a node among others: its name (C{--node-name}), in
logs, in the C{Via}, C{CDN-Loop} and C{Cache-Status} headers and in
metrics; and its shields (C{--shield}, C{--shield-fallback},
C{--shield-timeout}), the nodes its fills ask before the origin.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from typing import Any

from ..names import normalise_base
from . import SettingError, parse_duration

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


def tiers(flags: Mapping[str, Any]) -> dict[str, Any]:
    """
    The settings of a node's place among others: its name and its shields.

    @raise SettingError: naming the flag refused.
    """
    shields: list[str] = []
    for url in flags["shield"]:
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
        "shield_fallback": fallback,
        "shield_timeout": timeout,
    }
