"""
The hop headers' wire format, shared by the requests a node sends upstream
(L{cachetier.origin}) and the answers it gives (L{cachetier.web}):
C{Via} (RFC 9110 section 7.6.3), C{CDN-Loop} (RFC 8586), C{Cache-Status}
(RFC 9211), and the header that carries the cluster secret.
"""

from __future__ import annotations

import re

from attrs import frozen

VIA = b"via"
CDN_LOOP = b"cdn-loop"
CACHE_STATUS = b"cache-status"
# Sent by an edge to its shields only, never to the origin (never
# forwardable either: see cachetier.config.forwarding).
SECRET = b"cachetier-secret"
# Sent with the secret: the cluster's generation of the name asked for, as
# the edge knows it, and the epoch of the log it is of: "<epoch>:<n>" (see
# cachetier.cluster.generations).
GENERATION = b"cachetier-generation"
_EPOCH = re.compile(rb"[!-~]{0,64}")

# The cdn-id of every cachetier node in CDN-Loop; the node is a parameter.
_CDN_ID = "cachetier"

# How many CDN-Loop members, counted from the last, are looked at for this
# node's name.  Every node adds its entry after those it received, so what
# a listener sends comes first and cannot push the nodes' entries out of
# view; a loop of up to this many nodes is caught on its first return.
# The text itself is bounded by Twisted's header limit (16 KiB), and
# parsed in one pass.
_EXAMINED = 64


def via(node: str) -> bytes:
    """
    This node's C{Via} entry.
    """
    return b"1.1 " + node.encode("ascii")


def loop_entry(node: str) -> bytes:
    """
    This node's C{CDN-Loop} entry.
    """
    return f"{_CDN_ID}; node={node}".encode("ascii")


def appended(values: list[bytes], entry: bytes) -> bytes:
    """
    One field line of a list header: the C{values} received, then C{entry}.
    """
    return b", ".join([*(v.strip() for v in values if v.strip()), entry])


def upstream(
    node: str,
    received: tuple[tuple[bytes, bytes], ...],
    secret: bytes | None = None,
    generation: tuple[str, int] = ("", 0),
) -> tuple[tuple[bytes, bytes], ...]:
    """
    The hop headers of a request upstream: C{Via} and C{CDN-Loop}, each the
    values C{received} from the listener whose request started the fill,
    then this node's entry; and for a shield, the cluster C{secret} and
    with it the name's cluster C{generation} (the log's epoch and the
    number), if it has one.
    """
    headers = (
        (VIA, appended([v for k, v in received if k == VIA], via(node))),
        (CDN_LOOP, appended([v for k, v in received if k == CDN_LOOP], loop_entry(node))),
    )
    if secret is None:
        return headers
    epoch = generation[0].encode("latin-1", "replace")
    if generation[1] <= 0 or not epoch or not _EPOCH.fullmatch(epoch):
        return (*headers, (SECRET, secret))
    return (*headers, (SECRET, secret), (GENERATION, b"%s:%d" % (epoch, generation[1])))


def generation(values: list[bytes]) -> tuple[str, int]:
    """
    The epoch and generation a C{CacheTier-Generation} header says (its
    last line, C{<epoch>:<n>}; an epoch of C{""} without one); C{("", 0)}
    when it says none, or nothing a generation can be.
    """
    text = values[-1].strip() if values else b""
    epoch, _, number = text.rpartition(b":")
    if not (number.isdigit() and len(number) <= 18 and _EPOCH.fullmatch(epoch)):
        return "", 0
    return epoch.decode("ascii"), int(number)


def names_node(values: list[bytes], node: str) -> bool:
    """
    Whether the C{CDN-Loop} field lines C{values} name this node: a loop.
    Each of the last L{_EXAMINED} members (RFC 8586 section 2: a cdn-id,
    then parameters whose values are tokens or quoted strings, which may
    hold a comma or a semicolon) whose cdn-id is cachetier's is looked at
    for a C{node} parameter.
    """
    text = ",".join(line.decode("latin-1") for line in values)
    for member in _split(text, ",")[-_EXAMINED:]:
        cdn_id, *parameters = _split(member, ";")
        if cdn_id.strip().lower() != _CDN_ID:
            continue
        for parameter in parameters:
            key, equals, value = parameter.partition("=")
            value = value.strip()
            if value.startswith('"') and value.endswith('"') and len(value) > 1:
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if equals and key.strip().lower() == "node" and value.strip() == node:
                return True
    return False


def _split(text: str, separator: str) -> list[str]:
    """
    C{text} cut at each C{separator} outside a quoted string, in one pass
    (a regular expression that tries a quoted string at every quote takes
    time quadratic in a header full of them).  A quote that is never
    closed is a plain character, and so is every quote after it: no later
    one can be closed either, as its string would have closed the first.
    """
    parts = []
    start = 0
    quoting = True
    i = 0
    while i < len(text):
        c = text[i]
        if c == separator:
            parts.append(text[start:i])
            start = i + 1
        elif c == '"' and quoting:
            closing = _closing_quote(text, i + 1)
            quoting = closing >= 0
            i = max(i, closing)
        i += 1
    parts.append(text[start:])
    return parts


def _closing_quote(text: str, i: int) -> int:
    """
    Where the quoted string that goes on at C{i} closes, or -1.
    """
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i
        else:
            i += 1
    return -1


@frozen
class CacheStatus:
    """
    One node's entry in C{Cache-Status} (RFC 9211 section 2): an sf-item
    whose bare item is the node's name (a token: see
    L{cachetier.config.tiers.node_name}) and whose parameters say what the
    node did.

    @ivar hit: answered from the cache, not forwarded.
    @ivar fwd: why the request went upstream (C{miss}, C{uri-miss},
        C{stale}), or L{None}.
    @ivar fwd_status: the status the upstream answered with.
    @ivar ttl: the remaining freshness, in seconds (negative: stale).
    @ivar stored: whether the answer is kept.
    @ivar collapsed: whether the request joined a fetch already going.
    @ivar detail: for an answer the node made itself, its error code.
    """

    hit: bool = False
    fwd: str | None = None
    fwd_status: int | None = None
    ttl: int | None = None
    stored: bool = False
    collapsed: bool = False
    detail: str | None = None

    def entry(self, node: str) -> bytes:
        """
        The entry, serialized as RFC 8941 section 4.1 says: booleans true
        as bare keys, tokens and integers as they are, a detail that is no
        token as a string.
        """
        parts = [node]
        if self.hit:
            parts.append("hit")
        if self.fwd is not None:
            parts.append(f"fwd={self.fwd}")
        if self.fwd_status is not None:
            parts.append(f"fwd-status={self.fwd_status}")
        if self.stored:
            parts.append("stored")
        if self.collapsed:
            parts.append("collapsed")
        if self.ttl is not None:
            parts.append(f"ttl={self.ttl}")
        if self.detail is not None:
            parts.append(f"detail={_token_or_string(self.detail)}")
        return "; ".join(parts).encode("ascii")


_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+.^_`|~:/0-9A-Za-z-]*\Z")


def _token_or_string(text: str) -> str:
    if _TOKEN.match(text):
        return text
    printable = "".join(c for c in text if " " <= c <= "~")
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'
