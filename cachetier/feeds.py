"""
Podcast feeds for C{cachetier warm --feed}: the enclosures of a feed, and
the cache names they stand for under the cache's origin.

Most feeds wrap each enclosure in one or more measurement prefixes
(podtrac, op3, chartable, pdst, podscribe...): the listener's app asks the
prefix's host, which counts the request and redirects to the rest of the
URL, with C{https://} added when it was left out.  Such an enclosure names
an origin file when the origin's host and path follow one of its C{/}s
(with or without a scheme); the name is what comes after them, and the
prefix's host is never contacted: the server warms the name from its
origin like any other.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

import feedparser
from attrs import define, field

from .names import InvalidName, validate_name


class FeedError(Exception):
    """
    The feed could not be read.
    """


class Feed:
    """
    A podcast feed (RSS or Atom), polled with its ETag and Last-Modified.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.etag: str | None = None
        self.modified: str | None = None

    def enclosures(self) -> list[str] | None:
        """
        The enclosure URLs, or L{None} when the feed has not changed.
        """
        parsed = feedparser.parse(self.url, etag=self.etag, modified=self.modified)
        if getattr(parsed, "status", 200) == 304:
            return None
        if parsed.bozo and not parsed.entries:
            raise FeedError(f"cannot read the feed {self.url}: {parsed.bozo_exception}")
        self.etag = parsed.get("etag")
        self.modified = parsed.get("modified")
        return [
            link["href"]
            for entry in parsed.entries
            for link in entry.get("enclosures", [])
            if link.get("href")
        ]


def unwrap(url: str, origin: str) -> tuple[str, str] | None:
    """
    The part of C{url} under C{origin}, and the tracking prefix taken off
    to find it (C{""} for a plain origin URL); L{None} when C{url} does
    not lead to the origin.

    @param url: an enclosure URL, without its query or fragment.
    @param origin: the origin's base URL, ending in C{/}.
    """
    if url.startswith(origin):
        return url[len(origin) :], ""
    # The host compares without case, the path as it is.
    host, slash, path = origin.split("://", 1)[1].partition("/")
    host, path = host.lower(), slash + path
    scheme_end = url.find("://")
    start = url.find("/", scheme_end + 3 if scheme_end >= 0 else 0)
    while start >= 0:
        after = start + 1
        for scheme in ("", "https://", "http://"):
            at = after + len(scheme)
            if (
                url[after:at].lower() == scheme
                and url[at : at + len(host)].lower() == host
                and url.startswith(path, at + len(host))
            ):
                return url[at + len(host) + len(path) :], url[:after]
        start = url.find("/", after)
    return None


@define
class FeedNames:
    """
    What a feed's enclosures mean for the cache.

    @ivar names: the cache names, in feed order, each once.
    @ivar skipped: the URLs that name no origin file, with why.
    @ivar prefixes: the tracking prefix stripped from a name's URL.
    """

    names: list[str] = field(factory=list)
    skipped: list[tuple[str, str]] = field(factory=list)
    prefixes: dict[str, str] = field(factory=dict)


def names_from(urls: Iterable[str], origin: str) -> FeedNames:
    """
    The cache names of enclosure C{urls} under the C{origin} base, the
    others with why they were skipped, and the prefixes stripped.
    """
    found = FeedNames()
    for url in urls:
        plain = url.split("#", 1)[0].split("?", 1)[0]
        under = unwrap(plain, origin)
        if under is None:
            host = urlsplit(url).netloc or url
            found.skipped.append((url, f"not under the cache's origin ({host})"))
            continue
        rest, prefix = under
        name = unquote(rest)
        try:
            validate_name(name)
        except InvalidName as e:
            found.skipped.append((url, f"not a valid name: {e}"))
            continue
        if name not in found.names:
            found.names.append(name)
            if prefix:
                found.prefixes[name] = prefix
    return found
