"""
File names: what a listener may ask for, and where that leads on the origin.

A name is a relative path of one or more non-empty segments
(C{episodes/2024/100.mp3}), case-sensitive, at most L{MAX_NAME_BYTES} bytes
of UTF-8.  Everything here is a pure function so the rules can be
property-tested in isolation.
"""

from __future__ import annotations

from urllib.parse import quote, unquote, unquote_to_bytes, urlsplit

MAX_NAME_BYTES = 1024

# Characters that stay literal in an origin URL path.  Everything else,
# including "%", "?" and "#", is percent-encoded so that a name can never
# change the query, the fragment or the host of the origin URL.
# Only unreserved characters and the slash go unencoded: S3 reads "+" in a
# path as a space, and other servers give other reserved characters other
# meanings, so every one of them is percent-encoded.
_SAFE = "/-._~"


# A variant's key: its name, this mark (never in a name: it would be an
# empty segment), then the request headers that select the variant.
VARIANT_MARK = "//"


def variant_key(name: str, selecting: tuple[tuple[str, str | None], ...]) -> str:
    """
    The key a variant of C{name} is kept under: C{selecting} are the
    request headers its response's Vary names, with their values (L{None}:
    absent), in order.
    """
    parts = [
        quote(header, safe="")
        if value is None
        else f"{quote(header, safe='')}={quote(value, safe='')}"
        for header, value in selecting
    ]
    return name + VARIANT_MARK + "&".join(parts)


def split_variant(key: str) -> tuple[str, tuple[tuple[str, str | None], ...]]:
    """
    The name and the selecting request headers of a key from
    L{variant_key}; a plain name has none.
    """
    name, mark, rest = key.partition(VARIANT_MARK)
    if not mark or not rest:
        return name, ()
    selecting = []
    for part in rest.split("&"):
        header, equals, value = part.partition("=")
        selecting.append((unquote(header), unquote(value) if equals else None))
    return name, tuple(selecting)


class InvalidName(ValueError):
    """
    A requested name breaks the naming rules; C{str(error)} says which one.
    """


def _check_segment(segment: str) -> None:
    if segment == "":
        raise InvalidName("empty path segment")
    if segment in (".", ".."):
        raise InvalidName(f"{segment!r} segments are not allowed")
    if "\\" in segment:
        raise InvalidName("backslashes are not allowed")
    for char in segment:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise InvalidName("control characters are not allowed")


def validate_name(name: str) -> str:
    """
    Check a decoded name against the rules and return it unchanged.

    @raise InvalidName: naming the first rule C{name} breaks.
    """
    if not name:
        raise InvalidName("the name is empty")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidName(f"the name is longer than {MAX_NAME_BYTES} bytes")
    if name.startswith("/"):
        raise InvalidName("absolute paths are not allowed")
    for segment in name.split("/"):
        _check_segment(segment)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("the name is not valid UTF-8") from None
    return name


def name_from_path(raw: bytes) -> str:
    """
    Turn the still-encoded URL path below a route (C{b"episodes/100%20a.mp3"})
    into a validated name.

    Each segment is percent-decoded on its own, so an encoded C{%2F} cannot
    smuggle a separator and an encoded C{%2E%2E} is still a C{..} segment.

    @raise InvalidName: when the decoded name breaks a rule.
    """
    segments = []
    for piece in raw.split(b"/"):
        decoded = unquote_to_bytes(piece)
        if b"/" in decoded:
            raise InvalidName("encoded slashes are not allowed in a segment")
        try:
            segments.append(decoded.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidName("the name is not valid UTF-8") from None
    return validate_name("/".join(segments))


def quote_name(name: str) -> str:
    """
    Percent-encode a validated name for use as a URL path.
    """
    return quote(name, safe=_SAFE)


def normalise_base(url: str) -> str:
    """
    Check an origin or public base URL and return it ending in C{/}.

    @raise ValueError: when C{url} is not an absolute http or https URL
        without a query or fragment.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} must not have a query or fragment")
    if parts.username or parts.password:
        raise ValueError("credentials do not belong in the URL")
    return url if url.endswith("/") else url + "/"


def origin_url(base: str, name: str) -> str:
    """
    The origin URL of C{name}: always the configured base plus the quoted,
    validated name, so no name can point the server at another host.

    @param base: a base from L{normalise_base}.
    @param name: a name, or the key of one of its variants.
    """
    return base + quote_name(validate_name(split_variant(name)[0]))
