"""
C{Vary} (RFC 9111 section 4.1): the variants of a name, each kept under a
key of its own (L{variant_key}: the name and the values of the request
headers the response names), single flight per key.

The first response for a name tells which request headers select its
variants; until one has, the name is asked for plainly.  A plain request
sends the origin none of the selecting headers, so its answer is kept
under the plain name as the variant of every request without them (a
browser's request without C{Origin}, a podcast app's).  The request that
starts any other variant's fill sends the origin the headers that select
it (S3 answers a request with an C{Origin} with its CORS headers), so
what is kept under a key is what the origin says to a request with those
values.  Each file is thus fetched once a variant, never once more to
learn that it varies.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ..names import VARIANT_MARK, split_variant, variant_key
from ..objects import StoredObject, vary_names
from ..store import CacheStore

# Selecting headers that are somebody's: a response varying by them is
# never kept (and they are never sent to the origin).
PRIVATE = frozenset({"authorization", "cookie"})
# Names whose Vary is known, at most: a name past it is asked for plainly,
# and no response of it kept.
_MAX_LEARNED = 100_000


def normalised(values: list[bytes] | None) -> str | None:
    """
    A request header's value as a variant is selected by: its field lines
    joined, whitespace runs made one space, none around commas; L{None}
    when it is absent.
    """
    if values is None:
        return None
    joined = ",".join(v.decode("latin-1") for v in values)
    return ",".join(" ".join(part.split()) for part in joined.split(","))


def selects_plain(obj: StoredObject, headers: Any) -> bool:
    """
    Whether a request with C{headers} (a
    L{twisted.web.http_headers.Headers}) is answered by C{obj}, a plain
    name's copy: it does not vary, or the request has none of the headers
    its Vary names.
    """
    vary = obj.vary
    return vary is None or not any(headers.hasHeader(h.encode("latin-1")) for h in vary)


def forwarded_elsewise(forwarded: Any, extra: tuple[tuple[str, str], ...], headers: Any) -> bool:
    """
    Whether the answer (its headers C{extra}) to a fill that sent the
    listener's headers C{forwarded} (C{--forward-request-header}) varies by
    one of them whose value in a request with C{headers} is another: the
    answer is then the variant its starter's headers selected, not this
    request's (RFC 9111 section 4.1).
    """
    vary = vary_names(extra)
    if not vary or not forwarded:
        return False
    sent: dict[str, list[bytes]] = {}
    for key, value in forwarded:
        sent.setdefault(key.decode("latin-1").lower(), []).append(value)
    return any(
        normalised(headers.getRawHeaders(h.encode("latin-1"))) != normalised(sent[h])
        for h in vary
        if h in sent
    )


class Variants:
    """
    Which request headers select each name's variants, and the variants
    kept, most recently used last, at most C{max_variants} a name.

    @ivar store: where the variants are kept.
    """

    def __init__(self, store: CacheStore, max_variants: int = 8) -> None:
        self.store = store
        self.max_variants = max_variants
        self._vary: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._kept: dict[str, OrderedDict[str, None]] = {}
        for key in store.names():
            name, selecting = split_variant(key)
            if selecting:
                self._learn(name, tuple(header for header, _ in selecting))
                self._kept.setdefault(name, OrderedDict())[key] = None
        for name, kept in self._kept.items():
            if store.get(name) is not None:
                kept[name] = None
                kept.move_to_end(name, last=False)
        store.on_evict(lambda obj: self._forget(obj.name))

    def key(self, name: str, headers: Any = None) -> str:
        """
        The key a request for C{name} with C{headers} (a
        L{twisted.web.http_headers.Headers}, or L{None}: none) is answered
        from.
        """
        if VARIANT_MARK in name or headers is None:
            return name
        vary = self._vary.get(name)
        if vary is not None:
            self._vary.move_to_end(name)
        else:
            # Not known (yet, or any more): a plain copy that varies says.
            obj = self.store.get(name)
            vary = None if obj is None else obj.vary
            if vary is None or "*" in vary:
                return name
            self._learn(name, vary)
        get = headers.getRawHeaders
        selecting = tuple((h, normalised(get(h.encode("latin-1")))) for h in vary)
        if all(value is None for _, value in selecting):
            return name  # the plain copy is the variant of a request without them
        return variant_key(name, selecting)

    def keeps(
        self, key: str, extra: tuple[tuple[str, str], ...], sent: frozenset[str] = frozenset()
    ) -> bool:
        """
        Whether a response for C{key} with the headers C{extra} may be kept
        under it: it varies by exactly the headers the key was made of, or
        C{key} is a plain name (asked for without any of the headers the
        response names).  How a name varies is learned from the answers
        to plain requests only: a variant's answer that says otherwise (an
        error without Vary, say) is passed on, not kept, and changes
        nothing for the name's other variants.  C{sent}: the listener's
        headers the request sent (C{--forward-request-header}); a plain
        request that sent one the response varies by got a variant, not
        the plain copy: passed on, not kept.
        """
        name, selecting = split_variant(key)
        vary = vary_names(extra)
        if vary == (tuple(header for header, _ in selecting) or None):
            return True
        if selecting:
            return False
        if vary is None or "*" in vary or PRIVATE & set(vary):
            self._vary.pop(name, None)
            return False
        self._learn(name, vary)
        return not sent.intersection(vary)

    def _learn(self, name: str, vary: tuple[str, ...]) -> None:
        """
        Remember how C{name} varies, forgetting the least recently used
        names beyond L{_MAX_LEARNED} (their plain copies say it again).
        """
        self._vary[name] = vary
        self._vary.move_to_end(name)
        while len(self._vary) > _MAX_LEARNED:
            self._vary.popitem(last=False)

    def used(self, key: str) -> None:
        """
        Mark the variant C{key} as just served.
        """
        kept = self._kept.get(split_variant(key)[0])
        if kept is not None and key in kept:
            kept.move_to_end(key)

    def installed(self, key: str) -> None:
        """
        C{key} is kept now: drop what it displaces, the variants of a name
        that no longer varies, those selected by other headers than it now
        varies by, and its least recently used variants beyond
        C{max_variants} (the plain copy, a request's without any of those
        headers, among them).
        """
        name, selecting = split_variant(key)
        vary = self._vary.get(name)
        plain = None if selecting else self.store.get(key)
        if plain is not None:
            # The most recent answer to a plain request says how the name
            # varies now, whatever was learned meanwhile from the old copy.
            vary = plain.vary
            if vary is None:
                self._vary.pop(name, None)
            else:
                self._learn(name, vary)
        if vary is None:
            for old in self.keys_of(name):
                if old != key:
                    self.drop(old)
            self._kept.pop(name, None)
            return
        kept = self._kept.setdefault(name, OrderedDict())
        kept[key] = None
        kept.move_to_end(key)
        for old in list(kept):
            gone = self.store.get(old) is None  # evicted
            headers = tuple(h for h, _ in split_variant(old)[1])
            if gone or (old != name and headers != vary):
                self.drop(old)
        while len(kept) > self.max_variants:
            self.drop(next(iter(kept)))

    def drop(self, key: str) -> None:
        """
        Stop keeping the variant C{key}.
        """
        self.store.remove(key)
        self._forget(key)

    def _forget(self, key: str) -> None:
        """
        The variant C{key} is no longer kept (dropped, or evicted).
        """
        name = split_variant(key)[0]
        kept = self._kept.get(name)
        if kept is not None:
            kept.pop(key, None)
            if not kept:
                del self._kept[name]

    def keys_of(self, name: str) -> list[str]:
        """
        The kept variants of C{name}.
        """
        return list(self._kept.get(name, ()))
