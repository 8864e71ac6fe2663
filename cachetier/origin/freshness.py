"""
How long an origin's response may be kept and served (RFC 9111): pure
functions of its headers.
"""

from __future__ import annotations


def parse_cache_control(value: str | None) -> tuple[float | None, bool]:
    """
    The lifetime a shared cache may give a response, and whether it may
    store it at all.

    @return: C{(s-maxage or max-age or None, no_store)}; C{no-cache} is a
        lifetime of 0 (store, but revalidate every time).
    """
    if not value:
        return None, False
    directives: dict[str, str] = {}
    for part in value.split(","):
        key, _, arg = part.strip().partition("=")
        directives[key.strip().lower()] = arg.strip().strip('"')
    no_store = "no-store" in directives or "private" in directives
    if "no-cache" in directives:
        return 0.0, no_store
    for key in ("s-maxage", "max-age"):
        if key in directives:
            try:
                return max(0.0, float(int(directives[key]))), no_store
            except ValueError:
                return 0.0, no_store
    return None, no_store
